import type { Demand } from "../demand.ts";
import type { GitHubClient, WorkflowJobSummary } from "../github/client.ts";
import { needsRunner, type JobSnapshot } from "./still-queued.ts";

/** Pages of a run's jobs one listing reads at most. */
const RUN_PAGES = 3;

/** The demand fields a still-queued check needs: where the job is, and its run. */
export type CheckedDemand = Pick<Demand, "installationId" | "owner" | "repo" | "jobId" | "runId">;

interface Waiting {
  jobId: number;
  resolve: (job: JobSnapshot) => void;
  reject: (err: unknown) => void;
}

/**
 * A worker's still-queued checks, shared by workflow run. A burst is usually one run's jobs (a
 * matrix), and every check is a GitHub call that waits its turn among the installation's
 * `github.concurrentCalls`, from the installation's 5,000 or more calls an hour: one listing of the
 * run's jobs answers all the checks of that run made in the same turn of the event loop, and those
 * made while it is out. A check alone in its turn asks for its own job, as before (a run of one
 * job costs what it did). A listing reads pages of 100 jobs until it holds every job its turn's
 * checks asked for, at most RUN_PAGES (a matrix has at most 256 jobs): a job it does not hold
 * (further down a larger run, of an attempt that is no longer the latest, not listed yet when
 * the listing started) is asked for by itself. A listing that fails fails the checks that waited
 * on it.
 *
 * A listing is taken at its word only when it says the job needs a runner: a check that joined a
 * listing sent before its job came back to `queued` (an environment's approval: `waiting`, then
 * `queued` again under the same id) would otherwise be told `waiting` and skip a job that needs a
 * runner. Any other answer (waiting, completed, running on a runner not ours) is asked for again,
 * by itself: launching for a job that did not need it costs a runner that idles out, skipping one
 * that did leaves it queued until the leader's queued-jobs loop finds it.
 */
export class JobChecks {
  readonly #github: Pick<GitHubClient, "getJob" | "listRunJobs">;
  readonly #namePrefix: string;
  /** Checks of this turn, by run. */
  #gathering = new Map<string, { demand: CheckedDemand; waiting: Waiting[] }>();
  /** Listings out now, by run. */
  readonly #listing = new Map<string, Promise<Map<number, WorkflowJobSummary>>>();

  /** `namePrefix`: our runners' (needsRunner). */
  constructor(github: Pick<GitHubClient, "getJob" | "listRunJobs">, namePrefix: string) {
    this.#github = github;
    this.#namePrefix = namePrefix;
  }

  /** What GitHub says of the demand's job now. */
  check(demand: CheckedDemand): Promise<JobSnapshot> {
    // A demand with no run (a payload without run_id) has no listing to share.
    if (!(Number.isSafeInteger(demand.runId) && demand.runId > 0)) return this.#job(demand, demand.jobId);
    const run = runKey(demand);
    const listing = this.#listing.get(run);
    if (listing) return listing.then((jobs) => this.#answer(demand, demand.jobId, jobs));
    return new Promise<JobSnapshot>((resolve, reject) => {
      if (this.#gathering.size === 0) setImmediate(() => this.#flush());
      let gathered = this.#gathering.get(run);
      if (!gathered) this.#gathering.set(run, (gathered = { demand, waiting: [] }));
      gathered.waiting.push({ jobId: demand.jobId, resolve, reject });
    });
  }

  #flush(): void {
    const runs = this.#gathering;
    this.#gathering = new Map();
    for (const [run, { demand, waiting }] of runs) {
      if (waiting.length === 1) {
        this.#job(demand, demand.jobId).then(waiting[0]!.resolve, waiting[0]!.reject);
        continue;
      }
      const wanted = new Set(waiting.map((w) => w.jobId));
      const enough = (jobs: readonly WorkflowJobSummary[]) => jobs.filter((j) => wanted.has(j.id)).length >= wanted.size;
      // Started from a promise: a client that throws at once fails these checks, not the flush.
      const listing = Promise.resolve()
        .then(() => this.#github.listRunJobs(demand.installationId, demand.owner, demand.repo, demand.runId, { pages: RUN_PAGES, enough }))
        .then((jobs) => new Map(jobs.map((j) => [j.id, j])));
      this.#listing.set(run, listing);
      // Gone once answered: a check made later asks GitHub anew.
      const done = () => void (this.#listing.get(run) === listing && this.#listing.delete(run));
      listing.then(done, done);
      for (const w of waiting) listing.then((jobs) => this.#answer(demand, w.jobId, jobs)).then(w.resolve, w.reject);
    }
  }

  async #answer(demand: CheckedDemand, jobId: number, jobs: Map<number, WorkflowJobSummary>): Promise<JobSnapshot> {
    const listed = jobs.get(jobId);
    const job = listed && { status: listed.status, conclusion: listed.conclusion, runnerName: listed.runnerName };
    if (job && needsRunner(job, this.#namePrefix)) return job;
    return this.#job(demand, jobId);
  }

  async #job(demand: CheckedDemand, jobId: number): Promise<JobSnapshot> {
    return this.#github.getJob(demand.installationId, demand.owner, demand.repo, jobId);
  }
}

function runKey(d: CheckedDemand): string {
  return `${d.installationId}/${d.owner}/${d.repo}/${d.runId}`;
}
