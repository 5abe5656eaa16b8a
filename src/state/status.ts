import type { PoolConfig } from "../config/load.ts";
import { errorMessage, redact } from "../errors.ts";
import { matchPoolForOwner } from "../ingress/pools.ts";
import { summarizeJobs, type JobEvent, type JobSummary, type LaunchFailure } from "./activity.ts";
import type { RunnerRecord, RunnerState } from "./runners.ts";

export const RUNNER_STATES: readonly RunnerState[] = ["registering", "starting", "idle", "busy", "completed"];

/** Where the facts come from: Redis through the state stores, and the demand queues. */
export interface StatusSources {
  /** `serveJobsWithoutLabels` as the config says (jobs without labels are matched as the ingress matches them). */
  pools: ReadonlyArray<Pick<PoolConfig, "name" | "labels" | "image" | "isolation" | "scope"> & { serveJobsWithoutLabels?: boolean }>;
  runners: { listAll(): Promise<RunnerRecord[]> };
  activity?: { recentJobEvents(count?: number): Promise<JobEvent[]>; recentFailures(count?: number): Promise<LaunchFailure[]> };
  /** Hosts as their heartbeats show them (HostStore.list), alive or gone. */
  hosts?: { list(): Promise<Array<{ id: string; record?: { capacity: number; used: number; pools: string[]; draining: boolean }; beatAgeMs?: number; stoppedCleanly?: boolean }>> };
  /** Demand not yet taken by a worker, per pool (DemandQueues.pending). */
  pending?: (pools: readonly string[]) => Promise<Map<string, number>>;
  now?: () => number;
}

export type StateCounts = Record<RunnerState, number>;

export interface PoolStatus {
  name: string;
  labels: string[];
  image: string;
  isolation: string;
  scope: string;
  /** Undefined when the queue could not be read. */
  pending?: number;
  runners: StateCounts;
}

/**
 * What a host's heartbeat says: `up` (taking demand), `draining`, `engine_down` (its worker beats
 * but its Docker engine does not answer), `stopped` (no heartbeat within its expiry, its worker
 * having stopped cleanly, leaving runners for the next one), `gone` (no heartbeat within its
 * expiry otherwise: killed, crashed, its machine or network lost).
 */
export type HostHealth = "up" | "draining" | "engine_down" | "stopped" | "gone";

/** A Docker host: from its heartbeat record (when hosts are read) and its runner records. */
export interface HostStatus {
  id: string;
  runners: StateCounts;
  /** The pools the host's worker serves (its heartbeat); for a host without one, those of its runners. */
  pools: string[];
  /** NaN when the host has no runner. */
  oldestCreatedAt: number;
  /** Undefined when heartbeats were not read (or the host is known only by its runners). */
  health?: HostHealth;
  capacity?: number;
  used?: number;
  heartbeatAgeSeconds?: number;
}

export interface RunnerStatus {
  name: string;
  pool: string;
  host: string;
  state: RunnerState;
  createdAt: number;
  ageSeconds: number;
  /** owner/repo for repository runners, the owner for organization runners. */
  scope: string;
  /** The job it runs or ran, when GitHub named it. */
  jobId?: number;
  runnerId?: number;
  /** Short container id, for `docker logs`. */
  container?: string;
}

export interface JobStatus extends JobSummary {
  /**
   * A job still queued whose last launch failure was final (its demand failed: out of launch
   * attempts, or an error that ends it): the failure's code. Its outcome is then `launch_failed`:
   * nothing launches for it until the reconciler gives it fresh attempts
   * (reconcile.retryFailedDemandSeconds: outcome `demand_retried` then), a later attempt fails
   * again (not for good), or it starts.
   */
  launchFailed?: string;
  /**
   * The pool that serves the job, by the ingress's rule (matchPoolForOwner): labels, and the
   * owner's account type where the job's events said it (an organization pool serves no user's
   * repository). Undefined when no pool does.
   */
  pool?: string;
}

export interface StatusSnapshot {
  generatedAt: number;
  pools: PoolStatus[];
  hosts: HostStatus[];
  runners: RunnerStatus[];
  jobs: JobStatus[];
  failures: LaunchFailure[];
  /** Parts that could not be read; the rest of the snapshot is still right. */
  problems: string[];
}

/**
 * Everything operators see, read in one go. Each part is read on its own: one that fails is
 * reported in `problems` and the others are still shown.
 */
export async function collectStatus(src: StatusSources, opts: { jobs?: number; failures?: number } = {}): Promise<StatusSnapshot> {
  const now = (src.now ?? Date.now)();
  const problems: string[] = [];
  const attempt = async <T>(what: string, fn: () => Promise<T>, fallback: T): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      problems.push(`${what}: ${redact(errorMessage(err))}`);
      return fallback;
    }
  };
  const poolNames = src.pools.map((p) => p.name);
  const [records, beats, pending, events, failures] = await Promise.all([
    attempt("runners", () => src.runners.listAll(), [] as RunnerRecord[]),
    src.hosts ? attempt("hosts", () => src.hosts!.list(), []) : Promise.resolve([]),
    src.pending ? attempt("queue depth", () => src.pending!(poolNames), undefined) : Promise.resolve(undefined),
    src.activity ? attempt("recent jobs", () => src.activity!.recentJobEvents(), [] as JobEvent[]) : Promise.resolve([]),
    // All kept: a job's final failure is looked for among them, beyond the ones shown.
    src.activity ? attempt("recent failures", () => src.activity!.recentFailures(), [] as LaunchFailure[]) : Promise.resolve([]),
  ]);

  const runners: RunnerStatus[] = records.map((r) => ({
    name: r.name,
    pool: r.pool,
    host: r.host,
    state: r.state,
    createdAt: r.createdAt,
    ageSeconds: Number.isFinite(r.createdAt) ? Math.max(0, Math.round((now - r.createdAt) / 1000)) : 0,
    scope: r.repo ? `${r.owner}/${r.repo}` : r.owner,
    // 0: busy with a job GitHub did not name (found busy at a timeout, its webhooks lost).
    ...(r.jobId ? { jobId: r.jobId } : {}),
    runnerId: r.runnerId,
    container: r.containerId?.slice(0, 12),
  }));

  const pools: PoolStatus[] = src.pools.map((p) => ({
    name: p.name,
    labels: [...p.labels],
    image: p.image,
    isolation: p.isolation,
    scope: p.scope,
    pending: pending?.get(p.name),
    runners: countStates(runners.filter((r) => r.pool === p.name)),
  }));

  const hostIds = [...new Set([...beats.map((b) => b.id), ...runners.map((r) => r.host)])].sort();
  const hosts: HostStatus[] = hostIds.map((id) => {
    const mine = runners.filter((r) => r.host === id);
    const beat = beats.find((b) => b.id === id);
    return {
      id,
      runners: countStates(mine),
      // The pools its worker serves, from its heartbeat (an idle host's too); without one (gone,
      // stopped, or beats not read), the pools of the runners recorded on it.
      pools: [...new Set(beat?.record ? beat.record.pools : mine.map((r) => r.pool))].sort(),
      oldestCreatedAt: mine.length ? Math.min(...mine.map((r) => r.createdAt)) : Number.NaN,
      ...(beat && {
        health: hostHealth(beat.record, beat.stoppedCleanly),
        capacity: beat.record?.capacity ?? 0,
        used: beat.record?.used ?? 0,
        // On Redis's clock, as it was written: the reader's and the worker's may differ.
        heartbeatAgeSeconds: beat.beatAgeMs !== undefined ? Math.round(beat.beatAgeMs / 1000) : undefined,
      }),
    };
  });

  const jobs: JobStatus[] = summarizeJobs(events, opts.jobs ?? 30).map((j) => ({
    ...j,
    pool: matchPoolForOwner(j.labels, src.pools, j.ownerType)?.name,
    ...finalFailureOf(j, failures),
  }));
  return { generatedAt: now, pools, hosts, runners, jobs, failures: failures.slice(0, opts.failures ?? 20), problems };
}

/**
 * A job waiting for a runner whose latest launch failure since it was queued (or since the
 * reconciler last retried its failed demand) was final: shown as failed, not waiting (nothing
 * launches for it until the reconciler's retry of failed demand).
 */
function finalFailureOf(job: JobSummary, failures: readonly LaunchFailure[]): Pick<JobStatus, "outcome" | "launchFailed"> | undefined {
  if (job.outcome !== "queued" && job.outcome !== "demand_retried") return undefined;
  // Failures before the reconciler's latest retry of its failed demand are over: it has fresh attempts.
  const since = Math.max(job.queuedAt ?? job.lastAt, job.retriedAt ?? Number.NEGATIVE_INFINITY);
  // Newest first, as read.
  const last = failures.find((f) => f.jobId === job.jobId && f.repo === job.repo && f.at >= since);
  return last && !last.retryable ? { outcome: "launch_failed", launchFailed: last.reason } : undefined;
}

/** What the job's row says of it: its outcome in words (describeOutcome), or its final launch failure. */
export function describeJob(job: Pick<JobStatus, "outcome" | "conclusion" | "launchFailed">): string {
  if (job.outcome === "launch_failed") return `launch failed (final): ${job.launchFailed ?? "error"}`;
  return describeOutcome(job.outcome, job.conclusion);
}

function hostHealth(record: { capacity: number; draining: boolean } | undefined, stoppedCleanly?: boolean): HostHealth {
  if (!record) return stoppedCleanly ? "stopped" : "gone";
  if (record.draining) return "draining";
  return record.capacity > 0 ? "up" : "engine_down";
}

export function countStates(runners: ReadonlyArray<{ state: RunnerState }>): StateCounts {
  const counts = Object.fromEntries(RUNNER_STATES.map((s) => [s, 0])) as StateCounts;
  for (const r of runners) counts[r.state] = (counts[r.state] ?? 0) + 1;
  return counts;
}

/** "42s", "5m 03s", "2h 10m", "3d 4h". */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** What an ingress outcome means for the job, in words. */
export function describeOutcome(outcome: string, conclusion?: string): string {
  switch (outcome) {
    case "queued":
      return "waiting for a runner";
    case "runner_busy":
      return "running";
    case "runner_completed":
      return conclusion ? `completed: ${conclusion}` : "completed";
    case "runner_unknown":
      return "ran on a runner no longer recorded";
    case "demand_cancelled":
      return "ended before pickup; demand dropped";
    case "awaiting_approval":
      return "waiting for an approval";
    case "demand_kept":
      return "approved: waiting for a runner";
    case "demand_retried":
      return "waiting for a runner (failed launches retried)";
    case "no_demand":
      return conclusion ? `ended without our runner: ${conclusion}` : "ended without our runner";
    default:
      return outcome.startsWith("ignored_") ? `ignored: ${outcome.slice("ignored_".length).replace(/_/g, " ")}` : outcome.replace(/_/g, " ");
  }
}
