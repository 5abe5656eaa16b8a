import type { Logger } from "pino";
import type { Config } from "../config/load.ts";
import type { Demand, DemandEnd } from "../demand.ts";
import { errorMessage, redisErrorReply, RedisRefusedError, RedisUnavailableError, redisUnavailableReason } from "../errors.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ActivityRecorder } from "../state/activity.ts";
import { NO_CHANGE_TTL_SECONDS, type ClaimKey } from "../state/deliveries.ts";
import type { DeliveredBy } from "../state/runners.ts";
import { LogThrottle } from "../log-throttle.ts";
import { isOurRunner } from "../worker/names.ts";
import { BestEffortWrites } from "./best-effort.ts";
import { decideQueued, type WorkflowJobEvent } from "./policy.ts";
import { matchPoolForOwner, unmatchedReason } from "./pools.ts";

/** Where accepted demand goes (the BullMQ queues in production). */
export interface DemandSink {
  /**
   * Once per job attempt ("duplicate" after that, while its demand is pending or taken). With
   * `claim`, the delivery is claimed in the same round trip, first: "replayed" when it was claimed
   * before, and nothing is added. A claim or seen attempt whose demand is not in the queue (its
   * adder died before adding it, or a `waiting` delivery dropped it) does not count: the demand is
   * added ("added"). Nor does, for a new delivery, a seen attempt whose demand has ended: GitHub
   * queued the job again (after an approval), so it is added afresh ("added").
   */
  add(demand: Demand, claim?: ClaimKey): Promise<"added" | "duplicate" | "replayed">;
  /**
   * Drops the job attempt's demand, and its renewals, where still waiting; false if none was.
   * `over`: the attempt is over, and with none dropped, a later `queued` of it is checked first.
   */
  cancel(pool: string, jobId: number, runAttempt: number, over?: boolean): Promise<boolean>;
  /**
   * The job attempt waits for an approval: its demand still waiting is dropped ("dropped"; "none"
   * if none was), unless a `queued` delivery of it came first (handled before this one, though
   * GitHub sent it after: the approval's), which keeps it ("kept"), to be checked with GitHub
   * before a runner is launched for it.
   */
  waitsForApproval(pool: string, jobId: number, runAttempt: number): Promise<"dropped" | "kept" | "none">;
  /**
   * How the demand's item ended, if it has, and when: `completed` (its runner ran a job, this one
   * or another) or `failed` (it ran out of launch attempts).
   */
  ended(demand: Demand): Promise<DemandEnd | undefined>;
  /**
   * Adds the demand again, with its launch attempts afresh, if its earlier item has ended while
   * GitHub still lists the job as queued (its runner took another job: runners are not bound to
   * jobs; or its launches failed). False if it is still pending.
   */
  addAgain(demand: Demand): Promise<boolean>;
}

/** Where runner state changes from webhooks go (the Redis runner records). */
export interface RunnerMarks {
  /** "not_ours" when the record is another runner than the delivery's (see RunnerStore.markFromWebhook). */
  markFromWebhook(name: string, state: "busy" | "completed", jobId: number, by: DeliveredBy): Promise<"marked" | "unknown" | "not_ours">;
}

/** Delivery ids already acted on (Redis in production). */
export interface DeliveryClaims {
  /** True the first time; kept GitHub's 3 days unless `ttlSeconds` says otherwise. */
  claim(deliveryId: string, ttlSeconds?: number): Promise<boolean>;
  /** The claim as a key, for the demand sink to take together with the job attempt's. */
  claimKey(deliveryId: string): ClaimKey;
  forget(deliveryId: string): Promise<void>;
}

export interface Delivery {
  event: string;
  deliveryId: string;
  payload: unknown;
  receivedAt: number;
}

export interface IngressDeps {
  config: Pick<Config, "pools" | "policy" | "runnerNamePrefix">;
  demand: DemandSink;
  runners: RunnerMarks;
  deliveries: DeliveryClaims;
  metrics: Metrics;
  logger: Logger;
  /** Recent jobs for operators (status page, `jitrunner status`); optional. */
  activity?: ActivityRecorder;
  /** Where a repository made public is told to the workers (RunnerStore); absent: `repository` events are ignored. */
  repositories?: { announcePublicized(owner: string, repo: string): Promise<void> };
  /**
   * Resolves true once the Redis connections deliveries use are connected again, or false when
   * they are not within the server's `redisWaitSeconds`; absent: a delivery never waits.
   */
  redisReconnected?: () => Promise<boolean>;
}

/**
 * Activity-log writes in flight at most before a delivery's answer waits for its own: far above
 * what a healthy Redis ever has pending, small enough to bound memory when Redis stalls.
 */
const MAX_BOOKKEEPING_IN_FLIGHT = 1000;

/** Why Redis refused a delivery, when a reconnection may cure it at once (not: connected, no answer). */
const RECONNECTING = new Set(["not connected", "connection lost", "loading its data"]);
/**
 * Deliveries waiting at most for Redis to reconnect; any more are answered 503 at once, so that a
 * storm of them while Redis is away does not pile up in memory.
 */
const MAX_WAITING_FOR_REDIS = 1000;

/**
 * Outcomes of deliveries that changed nothing: claimed for NO_CHANGE_TTL_SECONDS only, not 3 days
 * (most deliveries of an App installed org-wide are of jobs that are not ours). Any other outcome
 * keeps GitHub's 3 days.
 */
const CHANGED_NOTHING = new Set(["not_ours", "runner_unknown", "no_demand", "no_pool", "no_labels", "ignored_action"]);

/**
 * How often a job our pools' labels ask for, refused by the policy, is said at info, per owner
 * (refused for its owner) or repository (for itself) and reason: a job refused where the operator
 * meant it to run (allowedOwners still the example's my-org) shows, and a busy organization the
 * App is installed on but not allowed cannot flood the log.
 */
export const REFUSAL_LOG_WINDOW_MS = 10 * 60_000;

/** The policy's refusals said at info (REFUSAL_LOG_WINDOW_MS), and why, in the config's words. */
const POLICY_REFUSALS: Partial<Record<string, (event: WorkflowJobEvent, pool: string | undefined) => string>> = {
  owner_not_allowed: (e) => `the owner ${e.repository.owner.login} is not in policy.allowedOwners`,
  repo_not_allowed: (e) => `the repository ${e.repository.full_name} is not in policy.allowedRepositories`,
  public_repo: (e, pool) => `the repository ${e.repository.full_name} is public and pool ${pool ?? "?"} does not allow public repositories (allowPublicRepositories)`,
};

/**
 * Acts on one verified, parsed delivery and says what it did. Only `workflow_job` matters;
 * every other event is acknowledged and counted.
 *
 * The answer waits only for what it promises: a `queued` delivery's demand is in Redis (claimed,
 * de-duplicated and added to BullMQ) before `handle` resolves. The activity log is written after,
 * off the answer's path (bounded, see BestEffortWrites). A delivery Redis cannot take (it is
 * unreachable or does not answer: see redisUnavailableReason) rejects with RedisUnavailableError,
 * counted with outcome `redis_unavailable`; one Redis answers with an error reply (it refuses
 * writes: `OOM`, `MISCONF`, `READONLY`...) rejects with RedisRefusedError, counted with outcome
 * `redis_error`. GitHub's redelivery of either is acted on.
 */
export class Ingress {
  readonly #deps: IngressDeps;
  readonly #bookkeeping: BestEffortWrites;
  /** Since the first delivery Redis could not take (unavailable or refused), until one it takes. */
  #redisDown: { reason: string; refused: number } | undefined;
  #waitingForRedis = 0;
  readonly #refusals = new LogThrottle({ windowMs: REFUSAL_LOG_WINDOW_MS });

  constructor(deps: IngressDeps) {
    this.#deps = deps;
    this.#bookkeeping = new BestEffortWrites(MAX_BOOKKEEPING_IN_FLIGHT, (err) =>
      deps.logger.debug({ err: errorMessage(err) }, "could not write the activity log"),
    );
  }

  async handle(delivery: Delivery): Promise<string> {
    const action = actionOf(delivery.payload);
    let outcome: string;
    const repositories = this.#deps.repositories;
    const payload = delivery.payload;
    if (delivery.event === "ping") outcome = "pong";
    else if (delivery.event === "repository" && repositories) outcome = await this.#takenByRedis(delivery, action, () => this.#repository(delivery, repositories));
    else if (delivery.event !== "workflow_job") outcome = "ignored_event";
    else if (!isWorkflowJob(payload)) outcome = "malformed";
    else outcome = await this.#takenByRedis(delivery, action, () => this.#workflowJobOnceConnected(payload, delivery));
    this.#deps.metrics.delivery(delivery.event, action, outcome);
    const activity = this.#deps.activity;
    if (activity) {
      // Handed over now: the log writes it with this turn's others, and a read through it waits for that.
      const wait = this.#bookkeeping.start(() => activity.delivery(delivery, outcome));
      if (wait) await wait;
    }
    return outcome;
  }

  /**
   * `act`'s outcome; when Redis could not take what it did, its delivery is forgotten (GitHub's
   * redelivery must be acted on), counted, said once, and rejected with RedisUnavailableError or
   * RedisRefusedError (a 503).
   */
  async #takenByRedis(delivery: Delivery, action: string, act: () => Promise<string>): Promise<string> {
    let outcome: string;
    try {
      outcome = await act();
    } catch (err) {
      // Not done, or done but not claimed: GitHub's redelivery of this id must be acted on.
      const forgetting = this.#deps.deliveries.forget(delivery.deliveryId).catch(() => undefined);
      const reason = redisUnavailableReason(err);
      if (reason !== undefined) {
        // Redis is away, so the forget fails as well (or waits for the command timeout): the answer
        // does not wait for it. A claim left behind is no harm: a redelivery whose claim exists but
        // whose demand BullMQ does not hold is added (DemandSink.add).
        this.#deps.metrics.delivery(delivery.event, action, "redis_unavailable");
        this.#redisRefused(reason, delivery.deliveryId);
        throw new RedisUnavailableError(reason, err);
      }
      // Redis answers: the forget gets its answer at once (or the same refusal, harmless as above).
      await forgetting;
      const reply = redisErrorReply(err);
      if (reply === undefined) {
        // Neither Redis's doing: a 500, logged by the server.
        this.#deps.metrics.delivery(delivery.event, action, "error");
        throw err;
      }
      this.#deps.metrics.delivery(delivery.event, action, "redis_error");
      this.#redisErrorReply(reply.message, delivery.deliveryId);
      throw new RedisRefusedError(reply.code, err);
    }
    this.#redisBack();
    return outcome;
  }

  /**
   * A delivery that Redis refused because its connection is down or reconnecting (a Redis restart,
   * a failover) waits for the reconnection, within `redisWaitSeconds`, and is acted on once more
   * rather than answered 503: a redelivery would come only with the github-deliveries loop, a
   * minute or more later. Acting on it again is safe: a claim whose demand BullMQ does not hold
   * does not count, and any other than a `queued` delivery does the same however often it is done
   * (see #workflowJob).
   */
  async #workflowJobOnceConnected(event: WorkflowJobEvent, delivery: Delivery): Promise<string> {
    try {
      return await this.#workflowJob(event, delivery);
    } catch (err) {
      const reconnected = this.#deps.redisReconnected;
      if (!reconnected || !RECONNECTING.has(redisUnavailableReason(err) ?? "") || this.#waitingForRedis >= MAX_WAITING_FOR_REDIS) throw err;
      this.#waitingForRedis++;
      try {
        if (!(await reconnected())) throw err;
      } finally {
        this.#waitingForRedis--;
      }
      return this.#workflowJob(event, delivery);
    }
  }

  /**
   * A repository made public (`publicized`): warm runners registered on it could be handed any
   * pull request's job from now on, so every worker is told at once rather than noticing at its
   * next check of the repository's visibility (up to 5 minutes later). Not claimed: a replay costs
   * one publish here and at most one GitHub call per warm pool per 10 s in each worker
   * (WarmExposure.recheck). Redis failing is a 503, as for a job (see #takenByRedis); the
   * github-deliveries loop asks for redeliveries of `workflow_job` events only, so the workers' own
   * check of the repository (WARM_CHECK_TTL_MS) notices it then. Other actions change nothing
   * jitrunner keeps.
   */
  async #repository(delivery: Delivery, repositories: NonNullable<IngressDeps["repositories"]>): Promise<string> {
    const p = delivery.payload as { action?: unknown; repository?: { name?: unknown; owner?: { login?: unknown } } } | null;
    const owner = p?.repository?.owner?.login;
    const repo = p?.repository?.name;
    if (typeof p?.action !== "string" || typeof owner !== "string" || typeof repo !== "string") return "malformed";
    if (p.action !== "publicized") return "ignored_action";
    await repositories.announcePublicized(owner, repo);
    this.#deps.logger.info({ deliveryId: delivery.deliveryId, repo: `${owner}/${repo}` }, "repository made public: warm runners registered on it are rechecked");
    return "warm_recheck";
  }

  /**
   * One warning when Redis starts refusing deliveries (or its reason changes), not one per
   * delivery: a storm of them while Redis is down would flood the log. Each is still counted
   * (outcome `redis_unavailable`).
   */
  #redisRefused(reason: string, deliveryId: string): void {
    if (this.#notTakenAgain(`unavailable: ${reason}`)) return;
    this.#deps.logger.warn(
      { deliveryId, reason },
      "Redis is unavailable: webhook deliveries are answered 503 until it is back, and GitHub's failed deliveries are redelivered later (github-deliveries loop)",
    );
  }

  /**
   * One error line when Redis starts answering deliveries' commands with an error reply (`OOM`
   * under `noeviction`, `MISCONF`, `READONLY`, `NOAUTH`...), and again when the reply changes, not
   * one per delivery. It needs an operator: Redis will not take deliveries until it is fixed. Each
   * is still counted (outcome `redis_error`).
   */
  #redisErrorReply(reply: string, deliveryId: string): void {
    if (this.#notTakenAgain(`error reply: ${reply}`)) return;
    this.#deps.logger.error(
      { deliveryId, reply },
      "Redis answers webhook deliveries with an error: they are answered 503 and not taken until it accepts them, and GitHub's failed deliveries are redelivered later (github-deliveries loop)",
    );
  }

  /** Counts one more delivery not taken; true when it was for the same reason as the one before. */
  #notTakenAgain(reason: string): boolean {
    const down = this.#redisDown;
    this.#redisDown = { reason, refused: (down?.refused ?? 0) + 1 };
    return down?.reason === reason;
  }

  #redisBack(): void {
    if (!this.#redisDown) return;
    this.#deps.logger.info({ refused: this.#redisDown.refused }, "Redis takes webhook deliveries again");
    this.#redisDown = undefined;
  }

  /**
   * Every delivery id is claimed once: a replay gets "replayed" (within an hour only when the
   * delivery changed nothing: see CHANGED_NOTHING). A `queued` delivery is claimed before it is
   * acted on, in one round trip with its job attempt (see #queued). Any other one is acted on first
   * and claimed after: what it does (a runner marked busy or completed, which never undoes
   * completed; a waiting demand dropped) comes out the same however often it is done, whereas a
   * claim first would lose it for good when the claim was taken but its answer lost (the connection
   * dropped, the command timed out) or the server died before acting: GitHub's redelivery would find
   * the claim and do nothing. Its timings, counted only by the copy that claims it, and its log
   * line, come once.
   */
  async #workflowJob(event: WorkflowJobEvent, delivery: Delivery): Promise<string> {
    if (event.action === "queued") return this.#queued(event, delivery);
    // `waiting` is claimed first, unlike the others: a copy of it acted on again once the job was
    // approved (a redelivery, a replay) would drop the demand the approval's `queued` added, and
    // the job would wait for the reconciler. Lost, it costs little: a claim taken whose answer was
    // lost leaves the demand, and the worker's still-queued check launches no runner for a job
    // that waits. Claimed an hour only when no pool of ours serves the job (it changes nothing).
    const claimedFirst = event.action === "waiting";
    if (claimedFirst) {
      const served = matchPoolForOwner(event.workflow_job.labels, this.#deps.config.pools, event.repository.owner.type) !== undefined;
      if (!(await this.#deps.deliveries.claim(delivery.deliveryId, served ? undefined : NO_CHANGE_TTL_SECONDS))) return "replayed";
    }
    const { outcome, pool } = await this.#act(event);
    const ttl = CHANGED_NOTHING.has(outcome) ? NO_CHANGE_TTL_SECONDS : undefined;
    if (!claimedFirst && !(await this.#deps.deliveries.claim(delivery.deliveryId, ttl))) return "replayed";
    const job = event.workflow_job;
    if (event.action === "in_progress" || event.action === "completed") this.#observeTimes(event, outcome);
    const ids = { deliveryId: delivery.deliveryId, jobId: job.id, action: event.action };
    const { logger } = this.#deps;
    if (outcome === "runner_busy") logger.info({ ...ids, runner: job.runner_name }, "runner busy");
    else if (outcome === "runner_completed") logger.info({ ...ids, runner: job.runner_name }, "runner completed its job");
    else if (outcome === "demand_cancelled" && event.action === "waiting") logger.info({ ...ids, pool }, "demand dropped: job waits for an approval");
    else if (outcome === "demand_kept") logger.info({ ...ids, pool }, "demand kept: the job was queued again before its `waiting` was handled (approved already?); GitHub is asked before a runner is launched");
    else if (outcome === "demand_cancelled") logger.info({ ...ids, pool }, "demand dropped: job ended before it got a runner");
    else if (outcome === "not_ours" && isOurRunner(this.#deps.config.runnerNamePrefix, job.runner_name)) {
      logger.warn(
        { ...ids, runner: job.runner_name, repo: event.repository.full_name },
        "delivery names one of our runners but another runner id, installation, owner or repository: not marked (a runner registered elsewhere under our name?)",
      );
    }
    return outcome;
  }

  /**
   * What a delivery other than `queued` does, the same however often it is done; with the pool
   * whose demand it dropped, if it did.
   */
  async #act(event: WorkflowJobEvent): Promise<{ outcome: string; pool?: string }> {
    const { config } = this.#deps;
    const job = event.workflow_job;
    switch (event.action) {
      case "in_progress": {
        if (!isOurRunner(config.runnerNamePrefix, job.runner_name)) return { outcome: "not_ours" };
        return { outcome: await this.#mark(event, "busy") };
      }
      case "completed": {
        if (isOurRunner(config.runnerNamePrefix, job.runner_name)) return { outcome: await this.#mark(event, "completed") };
        if (job.runner_name) return { outcome: "not_ours" };
        // Completed without a runner: cancelled while queued (perhaps before its `queued` came).
        return this.#cancel(event, true);
      }
      case "waiting":
        // Waiting for an approval, maybe for hours: a runner launched now would idle out. Once
        // approved, GitHub queues the job again, and that delivery adds its demand again; or came
        // first, and the demand is kept (DemandSink.waitsForApproval).
        return this.#waiting(event);
      default:
        return { outcome: "ignored_action" };
    }
  }

  /**
   * Drops the job attempt's demand, and its renewals, where still waiting, in the pool the job's
   * labels and its repository's owner choose (as for a `queued` delivery: no pool for a job without
   * labels unless one opts in, no organization pool for a user's repository).
   */
  async #cancel(event: WorkflowJobEvent, over = false): Promise<{ outcome: string; pool?: string }> {
    const job = event.workflow_job;
    const pool = matchPoolForOwner(job.labels, this.#deps.config.pools, event.repository.owner.type);
    if (!pool) return { outcome: unmatchedReason(job.labels) };
    const dropped = await this.#deps.demand.cancel(pool.name, job.id, job.run_attempt ?? 1, over);
    return { outcome: dropped ? "demand_cancelled" : "no_demand", pool: pool.name };
  }

  /** A `waiting` delivery, in the pool the job's labels and owner choose (as #cancel). */
  async #waiting(event: WorkflowJobEvent): Promise<{ outcome: string; pool?: string }> {
    const job = event.workflow_job;
    const pool = matchPoolForOwner(job.labels, this.#deps.config.pools, event.repository.owner.type);
    if (!pool) return { outcome: unmatchedReason(job.labels) };
    const result = await this.#deps.demand.waitsForApproval(pool.name, job.id, job.run_attempt ?? 1);
    return { outcome: result === "dropped" ? "demand_cancelled" : result === "kept" ? "demand_kept" : "no_demand", pool: pool.name };
  }

  /** Marks the runner the delivery names, if its record is that runner and not a namesake. */
  async #mark(event: WorkflowJobEvent, state: "busy" | "completed"): Promise<string> {
    const job = event.workflow_job;
    // Not in WorkflowJobEvent: only a mark needs it. A number once the job has a runner.
    const runnerId = (job as typeof job & { runner_id?: unknown }).runner_id;
    const installationId = event.installation?.id;
    const by: DeliveredBy = {
      runnerId: Number.isSafeInteger(runnerId) ? (runnerId as number) : undefined,
      installationId: Number.isSafeInteger(installationId) ? installationId : undefined,
      owner: event.repository.owner.login,
      repo: event.repository.name,
    };
    const result = await this.#deps.runners.markFromWebhook(job.runner_name!, state, job.id, by);
    if (result === "marked") return state === "busy" ? "runner_busy" : "runner_completed";
    return result === "unknown" ? "runner_unknown" : "not_ours";
  }

  /**
   * A `queued` delivery the policy accepts costs two Redis round trips before its answer: the
   * delivery and job-attempt claims together, then BullMQ's add. A replay or duplicate costs a
   * look at the queue instead of the add, and the add too if its demand is not there (a server
   * died between claim and add): "queued" then. One the policy ignores is still claimed, for an
   * hour (it changed nothing, see CHANGED_NOTHING), so that its replays say so.
   */
  async #queued(event: WorkflowJobEvent, delivery: Delivery): Promise<string> {
    const { config, logger, deliveries } = this.#deps;
    const { deliveryId, receivedAt } = delivery;
    const decision = decideQueued(event, config, { deliveryId, receivedAt });
    if (decision.kind === "ignore") {
      if (!(await deliveries.claim(deliveryId, NO_CHANGE_TTL_SECONDS))) return "replayed";
      if (!this.#saidRefused(event, decision.reason, deliveryId)) {
        logger.debug({ deliveryId, jobId: event.workflow_job.id, action: event.action, reason: decision.reason }, "queued job ignored");
      }
      return `ignored_${decision.reason}`;
    }
    const result = await this.#deps.demand.add(decision.demand, deliveries.claimKey(deliveryId));
    if (result !== "added") return result;
    logger.info(
      { deliveryId, jobId: event.workflow_job.id, action: event.action, pool: decision.pool.name, repo: event.repository.full_name },
      "demand queued",
    );
    return "queued";
  }

  /**
   * Says at info a job the policy refused (POLICY_REFUSALS), once per owner or repository and
   * reason per REFUSAL_LOG_WINDOW_MS, with how many were refused since it was last said. False
   * when it is not said (another reason, or said already within the window).
   */
  #saidRefused(event: WorkflowJobEvent, reason: string, deliveryId: string): boolean {
    const why = POLICY_REFUSALS[reason];
    if (!why) return false;
    const owner = event.repository.owner.login;
    const repo = event.repository.full_name;
    const refused = this.#refusals.pass(`${reason}:${(reason === "owner_not_allowed" ? owner : repo).toLowerCase()}`);
    if (refused === undefined) return false;
    const pool = matchPoolForOwner(event.workflow_job.labels, this.#deps.config.pools, event.repository.owner.type)?.name;
    this.#deps.logger.info(
      { deliveryId, jobId: event.workflow_job.id, owner, repo, pool, reason, refused },
      `queued job refused: ${why(event, pool)}; said once per ${reason === "owner_not_allowed" ? "owner" : "repository"} every ${REFUSAL_LOG_WINDOW_MS / 60_000} minutes, \`refused\` counts the jobs refused since`,
    );
    return true;
  }

  /**
   * Queue wait and duration of jobs our pools serve (matched by labels, as GitHub routes them, and
   * by owner, as a `queued` delivery is); no duration for a job of a namesake of our runner
   * (`not_ours`).
   */
  #observeTimes(event: WorkflowJobEvent, outcome: string): void {
    const job = event.workflow_job;
    const pool = matchPoolForOwner(job.labels, this.#deps.config.pools, event.repository.owner.type);
    if (!pool) return;
    if (event.action === "in_progress") this.#deps.metrics.jobStarted(pool.name, secondsBetween(job.created_at, job.started_at));
    else if (outcome !== "not_ours" && isOurRunner(this.#deps.config.runnerNamePrefix, job.runner_name)) {
      this.#deps.metrics.jobFinished(pool.name, job.conclusion ?? "unknown", secondsBetween(job.started_at, job.completed_at));
    }
  }
}

/** Seconds between two of GitHub's timestamps, or NaN. */
function secondsBetween(from: string | null | undefined, to: string | null | undefined): number {
  return from && to ? (Date.parse(to) - Date.parse(from)) / 1000 : Number.NaN;
}

function actionOf(payload: unknown): string {
  const action = (payload as { action?: unknown } | null)?.action;
  return typeof action === "string" ? action : "none";
}

function isWorkflowJob(p: unknown): p is WorkflowJobEvent {
  const e = p as WorkflowJobEvent;
  const j = e?.workflow_job;
  return (
    typeof e?.action === "string" &&
    typeof j === "object" && j !== null &&
    Number.isSafeInteger(j.id) &&
    (j.run_id === undefined || Number.isSafeInteger(j.run_id)) &&
    (j.run_attempt === undefined || Number.isSafeInteger(j.run_attempt)) &&
    typeof j.status === "string" &&
    Array.isArray(j.labels) && j.labels.every((l) => typeof l === "string") &&
    typeof e.repository?.name === "string" &&
    typeof e.repository?.full_name === "string" &&
    typeof e.repository?.owner?.login === "string" &&
    (e.repository.owner.type === undefined || typeof e.repository.owner.type === "string") &&
    (e.repository.private === undefined || typeof e.repository.private === "boolean") &&
    (e.repository.visibility === undefined || typeof e.repository.visibility === "string") &&
    (e.installation == null || Number.isSafeInteger(e.installation.id)) &&
    // Read as strings further on (runner names, metric labels, timestamps): anything else is malformed.
    [j.runner_name, j.conclusion, j.created_at, j.started_at, j.completed_at].every((v) => v == null || typeof v === "string")
  );
}
