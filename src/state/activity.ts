import type { Redis } from "ioredis";
import { TurnBatch } from "../batch.ts";
import type { Demand } from "../demand.ts";
import { redact } from "../errors.ts";

/**
 * One `workflow_job` delivery as operators see it: what came in and what jitrunner did. Also the
 * reconciler's retry of a still-queued job whose demand had failed for good (action `queued`,
 * outcome `demand_retried`: ActivityLog.demandRetried).
 */
export interface JobEvent {
  at: number;
  jobId: number;
  runAttempt: number;
  /** owner/repo */
  repo: string;
  /**
   * The repository owner's account type (`Organization`, `User`): which pools can serve the job
   * (servesOwner). Absent in entries recorded before it was, and when GitHub did not say.
   */
  ownerType?: string;
  /** The job's name and its workflow's, when GitHub sent them. */
  name?: string;
  workflow?: string;
  labels: string[];
  action: string;
  /** What the ingress did (the `outcome` label of jitrunner_webhook_deliveries_total). */
  outcome: string;
  runner?: string;
  conclusion?: string;
}

/**
 * A runner launch that failed; its demand is retried with backoff unless `retryable` is false (its
 * last attempt, or an error that ends it: shown as final, until the reconciler gives a still-queued
 * job fresh attempts, reconcile.retryFailedDemandSeconds).
 */
export interface LaunchFailure {
  at: number;
  pool: string;
  jobId: number;
  repo: string;
  attempt: number;
  /** The error's code (E_GITHUB, E_DOCKER, E_RUNNER_LOST, ...). */
  reason: string;
  message: string;
  retryable: boolean;
}

/** What the ingress, the worker and the reconciler tell the activity log: one call each. */
export interface ActivityRecorder {
  delivery(delivery: { event: string; payload: unknown; receivedAt: number }, outcome: string): Promise<void>;
  launchFailure(demand: { pool: string; jobId: number; owner: string; repo: string }, attempt: number, err: unknown, final: boolean): Promise<void>;
  demandRetried(demand: Pick<Demand, "jobId" | "runAttempt" | "owner" | "repo" | "labels">): Promise<void>;
}

/**
 * Outcomes not worth an operator's attention, left out so that they cannot push the interesting
 * ones out of the bounded list: jobs for other runners (GitHub-hosted, other pools of other
 * tools), replays, and deliveries that were not acted on. Metrics still count them all.
 */
const NOT_RECORDED = new Set([
  "malformed",
  "replayed",
  "duplicate",
  "not_ours",
  "no_pool",
  "ignored_no_pool",
  "no_labels",
  "ignored_no_labels",
  "ignored_not_queued",
  "ignored_action",
]);

const TEXT_MAX = 200;
const MESSAGE_MAX = 300;

/**
 * LPUSH of a batch of entries and LTRIM to the newest ARGV[1], in one command. A MULTI of the two
 * would be one round trip too, but ioredis copies every script defined on the connection onto
 * each MULTI: measured on a connection with a dozen scripts, a MULTI cost 30-80 µs more of the
 * process's CPU than this script's call, paid once per turn's batch of deliveries.
 */
const PUSH_AND_TRIM = `
local n = redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
return n
`;
type Pushing = { jitrunnerPushAndTrim(key: string, keep: number, ...entries: string[]): Promise<number> };

/**
 * Recent jobs and launch failures, for the status page and `jitrunner status`: two capped Redis
 * lists, newest first. Writes never fail their caller's work (callers ignore the promise's
 * rejection); entries hold no secrets (long token-like strings in error messages are redacted).
 * Job events recorded in the same turn of the event loop (concurrent deliveries) are written
 * together, in one LPUSH; a read through this object waits for what it was told before.
 */
export class ActivityLog implements ActivityRecorder {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #keepJobs: number;
  readonly #keepFailures: number;
  readonly #jobWrites = new TurnBatch<string, void>(async (entries) => {
    await this.#pushAll(this.#jobsKey, entries, this.#keepJobs);
    return entries.map(() => undefined);
  });
  /** The last batch of job events handed to Redis (settled, never rejected). */
  #lastJobWrite: Promise<void> = Promise.resolve();

  constructor(redis: Redis, prefix: string, opts: { keepJobs?: number; keepFailures?: number } = {}) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#keepJobs = opts.keepJobs ?? 500;
    this.#keepFailures = opts.keepFailures ?? 100;
    redis.defineCommand("jitrunnerPushAndTrim", { numberOfKeys: 1, lua: PUSH_AND_TRIM });
  }

  get #jobsKey(): string {
    return `${this.#prefix}:activity:jobs`;
  }
  get #failuresKey(): string {
    return `${this.#prefix}:activity:failures`;
  }

  async delivery(delivery: { event: string; payload: unknown; receivedAt: number }, outcome: string): Promise<void> {
    if (delivery.event !== "workflow_job" || NOT_RECORDED.has(outcome)) return;
    const entry = jobEventOf(delivery.payload, outcome, delivery.receivedAt);
    if (!entry) return;
    const written = this.#jobWrites.call(JSON.stringify(entry));
    this.#lastJobWrite = written.catch(() => undefined);
    await written;
  }

  /** A failed launch attempt; `final` when the demand is not tried again (its last attempt, or an error that ends it). */
  async launchFailure(demand: { pool: string; jobId: number; owner: string; repo: string }, attempt: number, err: unknown, final: boolean): Promise<void> {
    const e = err as { code?: unknown; message?: unknown } | undefined;
    const entry: LaunchFailure = {
      at: Date.now(),
      pool: demand.pool,
      jobId: demand.jobId,
      repo: `${demand.owner}/${demand.repo}`,
      attempt,
      reason: typeof e?.code === "string" ? e.code : "error",
      message: redact(typeof e?.message === "string" ? e.message : String(err)).slice(0, MESSAGE_MAX),
      retryable: !final,
    };
    await this.#pushAll(this.#failuresKey, [JSON.stringify(entry)], this.#keepFailures);
  }

  /**
   * The reconciler gave a still-queued job whose demand had failed for good fresh launch attempts:
   * a job event of its own (outcome `demand_retried`), so the status no longer shows the job's
   * final failure before it (summarizeJobs' retriedAt), but waiting for a runner again.
   */
  async demandRetried(demand: Pick<Demand, "jobId" | "runAttempt" | "owner" | "repo" | "labels">): Promise<void> {
    const entry: JobEvent = {
      at: Date.now(),
      jobId: demand.jobId,
      runAttempt: demand.runAttempt,
      repo: `${demand.owner}/${demand.repo}`.slice(0, TEXT_MAX),
      labels: demand.labels.slice(0, 20).map((l) => l.slice(0, TEXT_MAX)),
      action: "queued",
      outcome: "demand_retried",
    };
    const written = this.#jobWrites.call(JSON.stringify(entry));
    this.#lastJobWrite = written.catch(() => undefined);
    await written;
  }

  /** Newest first. */
  async recentJobEvents(count = this.#keepJobs): Promise<JobEvent[]> {
    await this.#lastJobWrite;
    return this.#read<JobEvent>(this.#jobsKey, count);
  }

  /** Newest first. */
  async recentFailures(count = this.#keepFailures): Promise<LaunchFailure[]> {
    return this.#read<LaunchFailure>(this.#failuresKey, count);
  }

  /** `entries` oldest first: each lands in front of the one before it. */
  async #pushAll(key: string, entries: string[], keep: number): Promise<void> {
    await (this.#redis as Redis & Pushing).jitrunnerPushAndTrim(key, keep, ...entries);
  }

  async #read<T>(key: string, count: number): Promise<T[]> {
    const out: T[] = [];
    for (const raw of await this.#redis.lrange(key, 0, Math.max(0, count - 1))) {
      try {
        out.push(JSON.parse(raw) as T);
      } catch {
        // A foreign or damaged entry: skip it.
      }
    }
    return out;
  }
}

/** The operator-relevant fields of a (verified, well-formed) `workflow_job` payload. */
function jobEventOf(payload: unknown, outcome: string, at: number): JobEvent | undefined {
  const p = payload as {
    action?: unknown;
    workflow_job?: Record<string, unknown>;
    repository?: { full_name?: unknown; owner?: { type?: unknown } };
  };
  const job = p?.workflow_job;
  if (!job || typeof job.id !== "number") return undefined;
  return {
    at,
    jobId: job.id,
    runAttempt: typeof job.run_attempt === "number" ? job.run_attempt : 1,
    repo: text(p.repository?.full_name) ?? "",
    ownerType: text(p.repository?.owner?.type),
    name: text(job.name),
    workflow: text(job.workflow_name),
    labels: Array.isArray(job.labels) ? job.labels.filter((l): l is string => typeof l === "string").slice(0, 20).map((l) => l.slice(0, TEXT_MAX)) : [],
    action: text(p.action) ?? "",
    outcome,
    runner: text(job.runner_name),
    conclusion: text(job.conclusion),
  };
}

function text(value: unknown): string | undefined {
  return typeof value === "string" && value ? value.slice(0, TEXT_MAX) : undefined;
}

/** One row per job attempt, from its events: where it got to and what it ran on. */
export interface JobSummary {
  jobId: number;
  runAttempt: number;
  repo: string;
  /** The owner's account type, when an event of the job said it (JobEvent.ownerType). */
  ownerType?: string;
  name?: string;
  workflow?: string;
  labels: string[];
  /** The latest outcome, and when it happened. */
  outcome: string;
  lastAt: number;
  queuedAt?: number;
  /** When the reconciler last gave the job's failed demand fresh launch attempts (outcome `demand_retried`). */
  retriedAt?: number;
  startedAt?: number;
  completedAt?: number;
  runner?: string;
  conclusion?: string;
}

/** Folds events (newest first, as read) into one summary per job attempt, newest first. */
export function summarizeJobs(events: readonly JobEvent[], limit = 50): JobSummary[] {
  const byJob = new Map<string, JobSummary>();
  for (const e of [...events].sort((a, b) => a.at - b.at)) {
    const key = `${e.jobId}-${e.runAttempt}`;
    const s: JobSummary = byJob.get(key) ?? { jobId: e.jobId, runAttempt: e.runAttempt, repo: e.repo, labels: e.labels, outcome: e.outcome, lastAt: e.at };
    s.repo ||= e.repo;
    s.ownerType ??= e.ownerType;
    s.name ??= e.name;
    s.workflow ??= e.workflow;
    if (e.labels.length) s.labels = e.labels;
    // `completed` is terminal: a late in_progress does not make the job look running again.
    if (!(s.completedAt && e.action !== "completed")) {
      // A `waiting` delivery drops the demand until the approval; what operators need to see is why.
      // One that kept it (`demand_kept`) came after the approval's `queued`: the job is queued.
      s.outcome = e.action === "waiting" && e.outcome !== "demand_kept" ? "awaiting_approval" : e.outcome;
      s.lastAt = e.at;
    }
    if (e.action === "queued" && e.outcome === "queued") s.queuedAt ??= e.at;
    if (e.outcome === "demand_retried") s.retriedAt = e.at;
    if (e.action === "in_progress") s.startedAt ??= e.at;
    if (e.action === "completed") s.completedAt ??= e.at;
    s.runner = e.runner ?? s.runner;
    s.conclusion = e.conclusion ?? s.conclusion;
    byJob.set(key, s);
  }
  return [...byJob.values()].sort((a, b) => b.lastAt - a.lastAt).slice(0, limit);
}
