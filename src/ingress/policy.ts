import type { Config, PoolConfig } from "../config/load.ts";
import type { Demand } from "../demand.ts";
import { matchPool, matchPoolForOwner, unmatchedReason } from "./pools.ts";

/** The parts of a `workflow_job` webhook payload that jitrunner reads. */
export interface WorkflowJobEvent {
  action: string;
  workflow_job: {
    id: number;
    run_id: number;
    /** Absent in some of GitHub's own example payloads: then 1. */
    run_attempt?: number;
    status: string;
    labels: string[];
    runner_name: string | null;
    created_at?: string;
    started_at?: string | null;
    completed_at?: string | null;
    conclusion?: string | null;
  };
  repository: { name: string; full_name: string; private: boolean; visibility?: string; owner: { login: string; type?: string } };
  installation?: { id: number };
}

export type QueuedDecision =
  | { kind: "enqueue"; demand: Demand; pool: PoolConfig }
  | {
      kind: "ignore";
      reason: "not_queued" | "no_pool" | "no_labels" | "owner_not_allowed" | "repo_not_allowed" | "public_repo" | "no_installation" | "user_owner_org_pool";
    };

/** What to do with a `queued` delivery. Pure: policy and pool matching only. */
export function decideQueued(
  event: WorkflowJobEvent,
  config: Pick<Config, "pools" | "policy">,
  meta: { deliveryId: string; receivedAt: number },
): QueuedDecision {
  const job = event.workflow_job;
  if (job.status !== "queued") return { kind: "ignore", reason: "not_queued" };
  const owner = event.repository.owner.login;
  const fullName = event.repository.full_name;
  // Pools first: a job no pool serves (a GitHub-hosted one, another tool's) is none of ours, in a
  // refused repository too, and stays off the status page's recent jobs (see ActivityLog).
  const pool = matchPoolForOwner(job.labels, config.pools, event.repository.owner.type);
  if (!pool) {
    // Only organization pools have the labels, and the owner is no organization (see servesOwner).
    if (matchPool(job.labels, config.pools)) return { kind: "ignore", reason: "user_owner_org_pool" };
    // No labels: only a pool that opts in serves it (see matchPool).
    return { kind: "ignore", reason: unmatchedReason(job.labels) };
  }
  const { allowedOwners, allowedRepositories } = config.policy;
  if (allowedOwners.length > 0 && !allowedOwners.some((o) => o.toLowerCase() === owner.toLowerCase())) {
    return { kind: "ignore", reason: "owner_not_allowed" };
  }
  if (allowedRepositories.length > 0 && !allowedRepositories.some((r) => r.toLowerCase() === fullName.toLowerCase())) {
    return { kind: "ignore", reason: "repo_not_allowed" };
  }
  const publicRepository = isPublicRepository(event.repository);
  if (publicRepository && !pool.allowPublicRepositories) return { kind: "ignore", reason: "public_repo" };
  const installationId = event.installation?.id;
  if (!installationId) return { kind: "ignore", reason: "no_installation" };
  return {
    kind: "enqueue",
    pool,
    demand: {
      pool: pool.name,
      jobId: job.id,
      runId: job.run_id,
      runAttempt: job.run_attempt ?? 1,
      owner,
      repo: event.repository.name,
      installationId,
      publicRepository,
      // Each once: a job's labels go into the demand kept in Redis, however often a payload repeats one.
      labels: [...new Set(job.labels)],
      receivedAt: meta.receivedAt,
      deliveryId: meta.deliveryId,
    },
  };
}

/**
 * Whether anyone may open a pull request whose jobs run in the repository: `visibility` when GitHub
 * sends it (`internal` is not public: only the enterprise's members see it), else `private`.
 * Anything else than private or internal counts as public, and so does a repository that says
 * neither: a value GitHub has not sent before must not open a pool to pull requests.
 */
export function isPublicRepository(repo: { private?: boolean; visibility?: string }): boolean {
  return repo.visibility ? repo.visibility !== "private" && repo.visibility !== "internal" : repo.private !== true;
}
