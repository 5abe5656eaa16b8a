import { isOurRunner } from "./names.ts";

export interface JobSnapshot {
  status: string;
  conclusion: string | null;
  runnerName: string | null;
}

/**
 * Whether a demand still needs a runner, given what GitHub says of its job now.
 *
 * JIT runners are not bound to jobs: a runner launched for job A may take job B. So a job that is
 * already running (or done) on one of OUR runners consumed a runner meant for another job, and
 * that other job still needs this one: launch. Skip only when no runner of ours was used up:
 * the job ended without a runner (cancelled while queued) or ran on a runner that is not ours.
 *
 * A job `waiting` for an approval (an environment's reviewers) needs none yet: it may wait hours,
 * and a runner launched now would idle out. Once approved, GitHub queues it again and its new
 * `queued` delivery adds its demand again (see DemandQueues.add).
 */
export function needsRunner(job: JobSnapshot, prefix: string): boolean {
  if (job.status === "waiting") return false;
  if (job.status === "queued" || job.status === "pending" || job.status === "requested") return true;
  if (!job.runnerName) return job.status !== "completed";
  return isOurRunner(prefix, job.runnerName);
}
