import type { Logger } from "pino";
import type { Config } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, WorkflowJobSummary, WorkflowRunSummary } from "../github/client.ts";
import type { DemandSink } from "../ingress/ingress.ts";
import { decideQueued, type WorkflowJobEvent } from "../ingress/policy.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ActiveRepo, ActiveRepos } from "../state/active-repos.ts";
import type { Loop } from "./loops.ts";

export const GITHUB_QUEUED = "github-queued";

/** Run statuses that can hold queued jobs: a run in progress can still have jobs waiting. */
const RUN_STATUSES = ["queued", "in_progress"] as const;

/**
 * What a webhook would have said about a queued job, from the REST API's view of it, so the
 * recovered job goes through exactly the policy a webhook does. Pure.
 */
export function queuedEventOf(job: WorkflowJobSummary, run: WorkflowRunSummary, installationId: number): WorkflowJobEvent {
  return {
    action: "queued",
    workflow_job: {
      id: job.id,
      run_id: job.runId,
      run_attempt: job.runAttempt,
      status: job.status,
      labels: job.labels,
      runner_name: job.runnerName,
    },
    repository: {
      name: run.repo,
      full_name: `${run.owner}/${run.repo}`,
      private: run.private,
      visibility: run.visibility,
      owner: { login: run.owner },
    },
    installation: { id: installationId },
  };
}

export interface GitHubQueuedDeps {
  config: Pick<Config, "pools" | "policy">;
  github: Pick<GitHubClient, "listRuns" | "listRunJobs">;
  demand: Pick<DemandSink, "add">;
  repos: Pick<ActiveRepos, "list">;
  intervalMs: number;
  windowMs: number;
  maxRepositories: number;
  metrics: Metrics;
  logger: Logger;
}

/**
 * Leader loop: GitHub's queued jobs against the demand we hold. For each recently active
 * repository, the runs that are queued or in progress, and their latest attempt's jobs; a job still
 * queued that a pool serves is added as demand through the same idempotent path as its webhook
 * (keyed by job id and run attempt), so a job whose `queued` webhook arrived adds nothing, and one
 * whose webhook was lost (or came while we were down) gets its runner.
 */
export function githubQueuedLoop(d: GitHubQueuedDeps): Loop {
  return {
    name: GITHUB_QUEUED,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal) {
      const repos = await d.repos.list(d.windowMs, d.maxRepositories);
      const failed: string[] = [];
      for (const repo of repos) {
        signal.throwIfAborted();
        try {
          await recoverRepo(d, repo, signal);
        } catch (err) {
          if (signal.aborted) throw err;
          failed.push(`${repo.owner}/${repo.repo}: ${errorMessage(err)}`);
        }
      }
      if (failed.length > 0) throw new Error(`checking queued jobs failed for ${failed.length} of ${repos.length} repositories; first: ${failed[0]}`);
    },
  };
}

async function recoverRepo(d: GitHubQueuedDeps, repo: ActiveRepo, signal: AbortSignal): Promise<void> {
  const runs = new Map<number, WorkflowRunSummary>();
  for (const status of RUN_STATUSES) {
    for (const run of await d.github.listRuns(repo.installationId, repo.owner, repo.repo, status, { signal })) runs.set(run.id, run);
  }
  for (const run of runs.values()) {
    signal.throwIfAborted();
    const jobs = await d.github.listRunJobs(repo.installationId, run.owner, run.repo, run.id, { signal });
    for (const job of jobs) {
      if (job.status !== "queued") continue;
      const receivedAt = Date.now();
      const decision = decideQueued(queuedEventOf(job, run, repo.installationId), d.config, { deliveryId: `reconcile-${job.id}`, receivedAt });
      if (decision.kind !== "enqueue") continue;
      signal.throwIfAborted();
      if ((await d.demand.add(decision.demand)) !== "added") continue;
      d.metrics.reconcileAction(GITHUB_QUEUED, "demand_recovered");
      d.logger.info(
        { loop: GITHUB_QUEUED, jobId: job.id, runId: run.id, repo: `${run.owner}/${run.repo}`, pool: decision.pool.name },
        "recovered a queued job that had no demand (its webhook was lost)",
      );
    }
  }
}
