/**
 * The only module that imports BullMQ. One queue per pool; the server adds demand, workers lease
 * it. A lease lasts as long as the runner launched for it: a worker that dies stops renewing the
 * lock, BullMQ's stalled check puts the demand back, and another worker takes it.
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Job, Queue, UnrecoverableError, Worker, type JobsOptions, type RedisConnection } from "bullmq";
import { Redis, type RedisOptions } from "ioredis";
import { inOneWrite, TurnBatch } from "../batch.ts";
import { atMost } from "../timers.ts";
import { errorMessage, LeaseLostError, redact } from "../errors.ts";
import type { Demand, DemandEnd } from "../demand.ts";
import { demandId, demandIdOf, demandIdsOf } from "../demand.ts";
import type { ClaimKey } from "../state/deliveries.ts";
import { addressOptions, type RedisAddress } from "./redis-address.ts";

/** How long a redelivered `queued` webhook is still recognised (GitHub keeps deliveries 3 days). */
const SEEN_TTL_SECONDS = 3 * 24 * 3600;
/** How long handing a demand back waits for Redis (see Lease.release). */
const RELEASE_WAIT_MS = 3_000;
/** A lease's lock when the settings name none (`worker.leaseSeconds`' default). */
const DEFAULT_LEASE_MS = 30_000;

/**
 * How long a job attempt queued again (a new `queued` delivery of an attempt seen before: an
 * approval's, or GitHub sending the event twice) keeps its note that it was: a `waiting` delivery
 * handled within it keeps the demand rather than dropping it (see waitsForApproval). As long as
 * the attempt is recognised, GitHub's 3 days: GitHub's own reorderings are seconds apart, but a
 * `waiting` whose first delivery failed comes again only when redelivered (by an operator, or a
 * tool reading the App's deliveries), any time within those 3 days of its sending, which came
 * before the approval's. A wrong note costs one still-queued check, never a runner. One small key
 * per job attempt queued again, expiring as its seen key does.
 */
export const REQUEUED_NOTE_TTL_SECONDS = SEEN_TTL_SECONDS;

const CLAIM_REPLAYED = 0;
const CLAIM_DUPLICATE = 1;
/**
 * Claims each delivery of a batch (KEYS[3i-2]), then the job attempt it asks for (KEYS[3i-1]),
 * atomically and in one command for the whole batch. Measured here, batches of 10 sent in one
 * write: a call of its own per claim cost the process 11-13 µs of CPU per claim, one call for the
 * batch 6-7 µs. ARGV[1] is the attempts' expiry, ARGV[2] the requeued notes'; ARGV[2i+1] and
 * ARGV[2i+2] are delivery i's claim expiry and the pool it names. A replayed delivery never claims
 * the attempt: were the config changed between two copies of one delivery, the attempt could
 * otherwise end up marked seen with no demand behind it. A new delivery of an attempt seen before
 * leaves the attempt's requeued note (KEYS[3i]), in the same step, so that a `waiting` handled
 * after it, however the two raced, knows the job was queued again (waitsForApproval). Per
 * delivery, in order, 0: it was claimed before (by an earlier call, or earlier in this batch); 1:
 * only the attempt was; 2: both are new.
 */
const CLAIM_DELIVERIES_AND_ATTEMPTS = `
local out = {}
for i = 1, #KEYS / 3 do
  if not redis.call('SET', KEYS[3 * i - 2], '1', 'EX', ARGV[2 * i + 1], 'NX') then
    out[i] = ${CLAIM_REPLAYED}
  elseif not redis.call('SET', KEYS[3 * i - 1], ARGV[2 * i + 2], 'EX', ARGV[1], 'NX') then
    redis.call('SET', KEYS[3 * i], '1', 'EX', ARGV[2])
    out[i] = ${CLAIM_DUPLICATE}
  else
    out[i] = 2
  end
end
return out`;

/** One delivery of that script's batch: its claim, the attempt's seen key and requeued note, and the pool it names. */
interface ClaimCall {
  claim: ClaimKey;
  seenKey: string;
  requeuedKey: string;
  pool: string;
}
/** The script as ioredis defines it without a fixed key count: the count comes first. */
type Claiming = { jitrunnerClaimDemands(keyCount: number, ...keysThenArgs: string[]): Promise<number[]> };

export interface QueueSettings {
  redisUrl: string;
  prefix: string;
  attempts: number;
  /**
   * How long a worker's lease lasts unrenewed (renewed every third of it), and how often a worker
   * checks for leases left to lapse: a dead worker's demand comes back within about twice this.
   */
  leaseMs?: number;
}

/**
 * How long a connection waits for any byte back once a command is out, before it drops the socket
 * and reconnects. Without it, a Redis that goes silent without FIN or RST (a managed Redis failing
 * over behind one DNS name, a NAT or load balancer dropping the flow) is waited on until TCP gives
 * up, about 15 minutes: the server's connection stays `ready` and times out every command (every
 * webhook 503), and a worker's commands (heartbeats, leases) hang. ioredis arms it only while a
 * command awaits its reply, so an idle or subscribed connection is never cut, but a command Redis
 * takes longer to answer would be: it must exceed BullMQ's longest block (its worker's
 * maximumBlockTimeout, 10 s, plus a 1 s watchdog). Recovery takes about this plus a reconnect.
 */
export const REDIS_SOCKET_TIMEOUT_MS = 15_000;
/**
 * TCP keep-alive after this much idleness (the OS default is 2 h): the only check on a connection
 * with no command out, a subscriber's. Node 20 sets only the first probe's delay; the OS's probe
 * interval and count (Linux: 75 s, 9) decide when a dead peer is given up on.
 */
export const REDIS_KEEPALIVE_MS = 10_000;

/**
 * A connection whose socket-timeout timer goes with its socket. ioredis arms that timer when a
 * command is sent and clears it only when data comes back: a connection closed with a command out
 * (a BullMQ worker closed mid-block, a stop while Redis is away) left it running, which held a
 * process that had closed everything alive for up to REDIS_SOCKET_TIMEOUT_MS more. Its duplicates
 * (BullMQ's blocking connections) are of this class too.
 */
class Connection extends Redis {
  constructor(url: string | undefined, options: RedisOptions) {
    if (url === undefined) super(options);
    else super(url, options);
    this.on("close", () => {
      const self = this as unknown as { socketTimeoutTimer?: ReturnType<typeof setTimeout> };
      clearTimeout(self.socketTimeoutTimer);
      self.socketTimeoutTimer = undefined;
    });
  }

  override duplicate(override?: Partial<RedisOptions>): Redis {
    return new Connection(undefined, { ...this.options, ...override });
  }
}

/** A connection to the Redis at `address`: a URL, or an address that may name sentinels (see RedisAddress). */
export function redisConnection(address: string | RedisAddress, extra: RedisOptions = {}): Redis {
  const target = typeof address === "string" ? { url: address } : address;
  // BullMQ needs maxRetriesPerRequest: null on connections it blocks on. BullMQ's own connections
  // (a worker's blocking one) are duplicates of this one, with its timeouts and its sentinels.
  // The ready check is on: through Sentinel, it is what refuses a node that is no longer the master.
  return new Connection(target.url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    socketTimeout: REDIS_SOCKET_TIMEOUT_MS,
    keepAlive: REDIS_KEEPALIVE_MS,
    ...addressOptions(target),
    ...extra,
  });
}

/** How long a command on a fail-fast connection may wait for Redis's answer: well under GitHub's 10 s. */
export const FAIL_FAST_COMMAND_TIMEOUT_MS = 3_000;

/**
 * Options for connections whose callers answer someone who will not wait (the server's webhook
 * route: GitHub gives up after 10 s, and the handler would otherwise keep its delivery in memory
 * for as long as Redis is away). While disconnected, a command fails at once instead of waiting
 * in ioredis's offline queue; on a connection Redis does not answer, it fails after the timeout.
 * maxRetriesPerRequest stays null: BullMQ needs it only on connections it blocks on, and a
 * producer's Queue does not block; the timeout bounds a command in flight when the connection
 * drops.
 */
export const FAIL_FAST: RedisOptions = { enableOfflineQueue: false, commandTimeout: FAIL_FAST_COMMAND_TIMEOUT_MS };

/**
 * Failed demand items kept per pool, newest first. At about 1.5 KB each (one stack trace), at most
 * about 30 MB a pool: a pool that cannot launch at 100,000 jobs a day fills it in about 5 hours.
 */
export const FAILED_ITEMS_KEPT = 20_000;

/** The BullMQ queue of a pool's demand. */
export function queueName(pool: string): string {
  return `demand-${pool}`;
}

/** The BullMQ states a demand item can be in; `failed` ones ran out of launch attempts. */
export const QUEUE_STATES = ["waiting", "delayed", "prioritized", "paused", "active", "failed", "completed"] as const;
export type QueueState = (typeof QUEUE_STATES)[number];
/** The states that mean "not yet taken by a worker". */
const PENDING_STATES: readonly QueueState[] = ["waiting", "delayed", "prioritized", "paused"];
/** Items waitingFor looks at, at most. */
const WAITING_LOOK_MAX = 200;

/**
 * The producer side, used by the server. Claims and adds made in the same turn of the event loop
 * (concurrent deliveries) go to Redis together: one script call for the claims, then one write of
 * adds per pool (see TurnBatch and inOneWrite). Each delivery still gets its own answer, and only
 * once its own add has resolved.
 */
export class DemandQueues {
  readonly #settings: QueueSettings;
  readonly #redis: Redis;
  readonly #queues = new Map<string, Queue>();
  readonly #jobOptions: JobsOptions;
  readonly #claims = new TurnBatch<ClaimCall, number>((calls) => this.#claimAll(calls));
  readonly #adds = new Map<string, TurnBatch<Demand, void>>();
  /** This process's adds not yet answered, by demand id (see add). */
  readonly #inFlight = new Map<string, Promise<unknown>>();

  constructor(settings: QueueSettings, redis: Redis) {
    this.#settings = settings;
    this.#redis = redis;
    this.#jobOptions = {
      attempts: settings.attempts,
      backoff: { type: "exponential", delay: 2000 },
      removeOnComplete: { age: 3600, count: 5000 },
      // A failed item is kept while its job may still wait on GitHub (ended, retryFailed), but
      // bounded: a pool that cannot launch fails an item per job, and Redis (noeviction) full
      // refuses every webhook. One stack trace (the last attempt's) instead of one per attempt;
      // a failed item past the cap is as if never added: the reconciler or a redelivery adds it.
      removeOnFail: { age: SEEN_TTL_SECONDS, count: FAILED_ITEMS_KEPT },
      stackTraceLimit: 1,
    };
    redis.defineCommand("jitrunnerClaimDemands", { lua: CLAIM_DELIVERIES_AND_ATTEMPTS });
  }

  #queue(pool: string): Queue {
    let q = this.#queues.get(pool);
    if (!q) {
      // Not waiting for the connection to be ready: on a fail-fast connection, a queue made while
      // Redis is away fails its calls at once. BullMQ's set-up of a queue (a version check) that
      // fails leaves it failing every call for good, so it is dropped and the next call makes another.
      const made = new Queue(queueName(pool), { connection: this.#redis, prefix: `${this.#settings.prefix}:bull`, skipWaitingForReady: true });
      made.waitUntilReady().catch(() => {
        if (this.#queues.get(pool) === made) this.#queues.delete(pool);
        made.close().catch(() => undefined);
      });
      this.#queues.set(pool, made);
      q = made;
    }
    return q;
  }

  /**
   * Adds the demand once per (job id, run attempt): "duplicate" when that attempt was seen before
   * and BullMQ holds its item (in any state; with `claim`, pending or taken). With `claim` (a
   * delivery's claim, see DeliveryLog.claimKey), that delivery is claimed first, in the same round
   * trip as the attempt: "replayed" when it was claimed before and BullMQ holds the item. The
   * answer comes only once BullMQ's add has resolved: "added" means the demand is in Redis.
   *
   * A new delivery (its claim is new) for an attempt whose item has ended (completed or failed)
   * is GitHub saying the job is queued now, typically after an approval (queued, waiting, queued
   * again: the item ended meanwhile, its job not needing a runner). The ended item is replaced by
   * a fresh one, as addAgain does ("added"), rather than leaving the job to the reconciler's
   * queued-jobs loop minutes later; the worker's still-queued check, made before anything is
   * registered (Demand.seenBefore), skips it if no runner is needed after all: a late redelivery,
   * or a captured body sent again under new delivery ids, costs a read each, never a registration.
   * A replay (the same delivery id) stays "replayed".
   *
   * A claim or seen key with no item behind it is not trusted: a process died between the claim
   * and the add, or Redis ran the claim script but its reply was lost and ioredis sent it again
   * (which then found its own keys). Either way no demand will come of the earlier copy, so the
   * seen key is set afresh and the demand added ("added"). Only a replay or duplicate pays for that
   * look (one read); a new delivery pays the claim and the add, as before. It also adds demand
   * again for a replay whose item BullMQ has already dropped (completed items are kept an hour),
   * as the claim-less add (the reconciler's) always has: the worker asks GitHub whether the job
   * still needs a runner before launching one (Worker's still-queued check).
   */
  async add(demand: Demand, claim?: ClaimKey): Promise<"added" | "duplicate" | "replayed"> {
    const id = demandIdOf(demand);
    // Copies handled at once by this process: the earliest claims first (claims go to Redis in
    // call order), and the later ones wait for its add before looking whether BullMQ holds it.
    const earlier = this.#inFlight.get(id);
    const adding = this.#add(demand, id, earlier, claim);
    this.#inFlight.set(id, adding);
    try {
      return await adding;
    } finally {
      if (this.#inFlight.get(id) === adding) this.#inFlight.delete(id);
    }
  }

  async #add(demand: Demand, id: string, earlier: Promise<unknown> | undefined, claim?: ClaimKey): Promise<"added" | "duplicate" | "replayed"> {
    const { pool } = demand;
    const seenKey = `${this.#settings.prefix}:seen:${id}`;
    if (claim) {
      const claimed = await this.#claims.call({ claim, seenKey, requeuedKey: this.#requeuedKey(demand.jobId, demand.runAttempt), pool });
      if (claimed === CLAIM_REPLAYED || claimed === CLAIM_DUPLICATE) {
        // As #held, with the item's state: one read all the same ("unknown" when not held).
        await earlier?.catch(() => undefined);
        const queue = this.#queue(pool);
        const state = await queue.getJobState(id);
        const ended = state === "completed" || state === "failed";
        if (state !== "unknown" && !(ended && claimed === CLAIM_DUPLICATE)) return claimed === CLAIM_REPLAYED ? "replayed" : "duplicate";
        // Not held, or a new delivery for an ended item: a fresh item, as addAgain makes, whose job
        // is checked before anything is registered for it (Demand.seenBefore).
        if (ended) await queue.remove(id);
        await this.#redis.set(seenKey, pool, "EX", SEEN_TTL_SECONDS);
        demand = { ...demand, seenBefore: true };
      }
    } else if ((await this.#redis.set(seenKey, pool, "EX", SEEN_TTL_SECONDS, "NX")) === null && (await this.#held(pool, id, earlier))) {
      // Seen but not held: see above; the reconciler adds only jobs GitHub lists as queued.
      return "duplicate";
    }
    try {
      await this.#addBatch(pool).call(demand);
    } catch (err) {
      // Not waited for: with Redis gone silent, it would hold the 503 for one more command
      // timeout. Sent before any retry of this delivery's claims, it goes to Redis before them.
      void this.#redis.del(seenKey).catch(() => undefined);
      throw err;
    }
    return "added";
  }

  /** Whether BullMQ holds the item, once an add of it this process has in flight has settled. */
  async #held(pool: string, id: string, earlier: Promise<unknown> | undefined): Promise<boolean> {
    await earlier?.catch(() => undefined);
    return (await this.#queue(pool).getJob(id)) !== undefined;
  }

  /** One turn's claims: one call of the script for all of them. */
  async #claimAll(calls: ClaimCall[]): Promise<Array<number | Error>> {
    const keys = calls.flatMap((c) => [c.claim.key, c.seenKey, c.requeuedKey]);
    const args = calls.flatMap((c) => [String(c.claim.ttlSeconds), c.pool]);
    const replies = await (this.#redis as Redis & Claiming).jitrunnerClaimDemands(keys.length, ...keys, String(SEEN_TTL_SECONDS), String(REQUEUED_NOTE_TTL_SECONDS), ...args);
    return calls.map((_c, i) => replies[i] ?? new Error("the claim script returned fewer results than claims"));
  }

  /**
   * One turn's demand for a pool: one BullMQ add each, all in one write. Each add is its own
   * script call, so each delivery learns whether its own demand is in Redis.
   */
  #addBatch(pool: string): TurnBatch<Demand, void> {
    let batch = this.#adds.get(pool);
    if (!batch) {
      const opts = (d: Demand): JobsOptions => ({ ...this.#jobOptions, jobId: demandIdOf(d) });
      batch = new TurnBatch<Demand, void>((demands) => {
        const queue = this.#queue(pool);
        const adds = inOneWrite(this.#redis, () => demands.map((d) => queue.add("runner", d, opts(d))));
        return Promise.all(adds.map((added) => added.then(() => undefined, toError)));
      });
      this.#adds.set(pool, batch);
    }
    return batch;
  }

  /** Whether BullMQ holds the demand's item, in any state: waiting, delayed, active or ended. */
  async held(demand: Demand): Promise<boolean> {
    const id = demandIdOf(demand);
    return this.#held(demand.pool, id, this.#inFlight.get(id));
  }

  async ended(demand: Demand): Promise<DemandEnd | undefined> {
    const held = await this.#queue(demand.pool).getJob(demandIdOf(demand));
    if (!held) return undefined;
    const state = await held.getState();
    if (state !== "completed" && state !== "failed") return undefined;
    return { outcome: state, at: held.finishedOn ?? Date.now() };
  }

  /** See DemandSink.addAgain: an ended item is replaced by a new one under the same id. */
  async addAgain(demand: Demand): Promise<boolean> {
    const id = demandIdOf(demand);
    const queue = this.#queue(demand.pool);
    const state = await queue.getJobState(id);
    if (state !== "completed" && state !== "failed" && state !== "unknown") return false;
    if (state !== "unknown") await queue.remove(id);
    await this.#redis.set(`${this.#settings.prefix}:seen:${id}`, demand.pool, "EX", SEEN_TTL_SECONDS);
    await this.#addBatch(demand.pool).call(demand);
    return true;
  }

  /**
   * Drops a job attempt's demand that is still waiting (its job was cancelled while queued), and
   * its renewals that are (see MAX_RENEWALS): one look per id, all sent at once. False if none
   * was waiting: taken by a worker, ended or gone. `over` (the attempt is over: `completed`): with
   * none dropped, the attempt is marked seen, so that a `queued` delivered after it (GitHub does
   * not keep their order) adds demand whose job is checked before anything is registered for it
   * (Demand.seenBefore), rather than a registration made for a job already over.
   */
  async cancel(pool: string, jobId: number, runAttempt: number, over = false): Promise<boolean> {
    const queue = this.#queue(pool);
    const dropped = await Promise.all(
      demandIdsOf(jobId, runAttempt).map(async (id) => {
        const state = await queue.getJobState(id);
        if (state !== "waiting" && state !== "delayed" && state !== "prioritized") return false;
        return (await queue.remove(id)) === 1;
      }),
    );
    if (dropped.includes(true)) return true;
    if (over) await this.#redis.set(`${this.#settings.prefix}:seen:${demandId(jobId, runAttempt)}`, pool, "EX", SEEN_TTL_SECONDS, "NX");
    return false;
  }

  /**
   * A `waiting` delivery: its job waits for an approval, maybe for hours, so the attempt's demand
   * still waiting (and its renewals) is dropped ("dropped"), as cancel does; "none" if none was.
   * Unless the job was queued again meanwhile: GitHub does not keep its deliveries' order, and an
   * approval's `queued` handled first found the item pending and added nothing (`duplicate`). Its
   * claim left the attempt's requeued note (REQUEUED_NOTE_TTL_SECONDS): then the demand is kept,
   * marked to be checked with GitHub before anything is registered for it (Demand.seenBefore), so
   * that a note left by a `queued` GitHub merely sent twice launches nothing for a job that really
   * waits ("kept"). The note is looked at again after a drop: a `queued` whose claim came between
   * the look and the drop answered `duplicate` too, and the dropped demand is added back. An
   * approval's `queued` that was the first of the attempt handled (the first `queued` never came)
   * leaves no note: a `waiting` after it drops the demand, for the queued-jobs loop to recover.
   */
  async waitsForApproval(pool: string, jobId: number, runAttempt: number): Promise<"dropped" | "kept" | "none"> {
    const queue = this.#queue(pool);
    const note = this.#requeuedKey(jobId, runAttempt);
    const pending = async () => {
      const jobs = await Promise.all(
        demandIdsOf(jobId, runAttempt).map(async (id) => {
          const state = await queue.getJobState(id);
          return state === "waiting" || state === "delayed" || state === "prioritized" ? queue.getJob(id) : undefined;
        }),
      );
      return jobs.filter((j): j is Job => j !== undefined);
    };
    if ((await this.#redis.exists(note)) === 1) {
      const kept = await pending();
      await Promise.all(kept.map((j) => j.updateData({ ...(j.data as Demand), seenBefore: true }).catch(() => undefined)));
      return kept.length > 0 ? "kept" : "none";
    }
    const dropped = (await Promise.all((await pending()).map(async (j) => ((await queue.remove(j.id!)) === 1 ? (j.data as Demand) : undefined)))).filter(
      (d): d is Demand => d !== undefined,
    );
    if (dropped.length === 0) return "none";
    if ((await this.#redis.exists(note)) === 0) return "dropped";
    // Added under the same ids: one a `queued` added meanwhile (the item was gone by its look) stays as it is.
    await Promise.all(dropped.map((d) => this.#addBatch(pool).call({ ...d, seenBefore: true })));
    return "kept";
  }

  #requeuedKey(jobId: number, runAttempt: number): string {
    return `${this.#settings.prefix}:requeued:${demandId(jobId, runAttempt)}`;
  }

  /**
   * Whether demand of `pool` not yet taken by a worker, among the first `max` (oldest first),
   * matches `which`. One read of up to `max` items.
   */
  async waitingFor(pool: string, which: (demand: Demand) => boolean, max = WAITING_LOOK_MAX): Promise<boolean> {
    const jobs = await this.#queue(pool).getJobs([...PENDING_STATES], 0, max - 1, true);
    return jobs.some((job) => job?.data && which(job.data as Demand));
  }

  /** Demand of `pool` a worker holds now (active items), among the first `max`, that `which` picks. One read. */
  async taken(pool: string, which: (demand: Demand) => boolean, max = WAITING_LOOK_MAX): Promise<Demand[]> {
    const jobs = await this.#queue(pool).getJobs(["active"], 0, max - 1, true);
    return jobs.filter((job) => job?.data && which(job.data as Demand)).map((job) => job.data as Demand);
  }

  /** Demand not yet taken by a worker, per pool. */
  async pending(pools: readonly string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const pool of pools) {
      out.set(pool, await this.#queue(pool).getJobCountByTypes(...PENDING_STATES));
    }
    return out;
  }

  /** BullMQ's job counts per pool and state (waiting, delayed, prioritized, paused, active, failed, completed). */
  async counts(pools: readonly string[]): Promise<Map<string, Record<QueueState, number>>> {
    const out = new Map<string, Record<QueueState, number>>();
    for (const pool of pools) out.set(pool, (await this.#queue(pool).getJobCounts(...QUEUE_STATES)) as Record<QueueState, number>);
    return out;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#queues.values()].map((q) => q.close()));
  }
}

/**
 * BullMQ's refusals of a lease's lock token (Scripts.finishedErrors): the lock is gone or another
 * lease's, the item is gone (removed once back in the queue: its job ended), or the stalled check
 * moved the demand out of the active state.
 */
const LOCK_LOST = /^(Missing lock for job|Lock mismatch for job|Missing key for job|Job \S+ is not in the active state)/;

/** A worker's hold on one demand, for the life of the runner launched for it. */
export interface Lease {
  readonly id: string;
  readonly demand: Demand;
  /** 1 on the first try. */
  readonly attempt: number;
  /**
   * Aborted (with a LeaseLostError) once a renewal finds the lease's lock gone: it lapsed, Redis
   * away for longer than the lease, and the demand is back in the queue or another lease's. A
   * launch not yet under way must not start: the demand's next holder launches its own.
   */
  readonly lost: AbortSignal;
  /**
   * Asks Redis once, as a renewal does (and renewing it if so), whether the lease still holds its
   * demand: false, and `lost` aborted, when its lock is gone. A renewal finds that only at its turn
   * (a third of the lease), so `lost` may not say so yet right after Redis came back from an outage
   * longer than the lease. A Redis that does not answer says nothing: true.
   */
  held(): Promise<boolean>;
  /** The tries the demand has in all (worker.launchAttempts): a failed `attempt` this high is its last. */
  readonly attempts: number;
  complete(result: string): Promise<void>;
  /** Give the demand back: retried with backoff while attempts remain, unless `final`. */
  fail(err: Error, final: boolean): Promise<void>;
  /**
   * Hand the demand back for `ms`, spending no attempt (a failure that was not the job's, such as
   * GitHub not answering), counted in its Demand.postponed.
   */
  postpone(ms: number): Promise<void>;
  /**
   * Hand the demand back untouched (shutdown): another worker, or this one restarted, takes it.
   * Waits for Redis a few seconds at most; past that, the demand comes back when its lease lapses.
   */
  release(): Promise<void>;
}

/**
 * How long `close` lets a BullMQ worker's connections finish their handshake. BullMQ closing a
 * connection mid-handshake leaves that handshake's rejection unhandled (taskforcesh/bullmq#3546),
 * which ends the process; past this, Redis is not answering and close goes ahead regardless.
 */
const CLOSE_WAIT_READY_MS = 5_000;

/**
 * A failed attempt's error as BullMQ keeps it (the item's failed reason and stack trace, for as
 * long as the failed item stays): its message redacted as the status page's is, since an engine,
 * a proxy or GitHub may echo what they were sent, and its stack's frames under that message.
 * `final`: an UnrecoverableError, which BullMQ tries no more.
 */
function asKept(err: Error, final: boolean): Error {
  const message = redact(err.message);
  const kept = final ? new UnrecoverableError(message) : new Error(message);
  const head = `${err.name}: ${err.message}`;
  kept.stack = `${kept.name}: ${message}${err.stack?.startsWith(head) ? err.stack.slice(head.length) : ""}`;
  return kept;
}

/**
 * The consumer side for one pool, used by a worker; it takes demand only when asked. Its BullMQ
 * worker (two connections) exists from `start` on, so a process whose start fails before (its
 * Docker engine unreachable, say) opens nothing here.
 */
export class DemandConsumer {
  #worker: Worker<Demand> | undefined;
  readonly #make: () => Worker<Demand>;
  readonly #token: string;
  readonly #leaseMs: number;
  readonly #connection: Redis;
  /** Live leases' tokens, each with its demand's id: from the take's answer until the lease settles or is lost. */
  readonly #leased = new Map<string, string>();
  /** The tokens of takes sent and not yet answered. */
  readonly #taking = new Set<string>();
  /** Takes in flight when the connection closed, which ioredis sends again (see #take). */
  #cut = new Set<string>();
  readonly #onClose = (): void => {
    for (const token of this.#taking) this.#cut.add(token);
  };

  constructor(settings: QueueSettings, connection: Redis, pool: string, workerId: string) {
    this.#token = workerId;
    this.#connection = connection;
    connection.on("close", this.#onClose);
    // Whole ms: BullMQ sends a lock's time to Redis as is, and Redis refuses a PX of 8189.999999999999 (leaseSeconds 8.19).
    const leaseMs = Math.round(settings.leaseMs ?? DEFAULT_LEASE_MS);
    this.#leaseMs = leaseMs;
    this.#make = () => {
      const worker = new Worker<Demand>(queueName(pool), null, {
        connection: connection as unknown as RedisConnection as never,
        prefix: `${settings.prefix}:bull`,
        autorun: false,
        lockDuration: leaseMs,
        // A lapsed lease is never the demand's doing (a worker killed, Redis away for longer than
        // the lease), and a lease that comes back finds any runner launched for it; the demand's
        // own failures are counted by its launch attempts. BullMQ's default would fail it at its
        // fourth lapse, inside the next take, with no launch failed, logged or counted (a worker
        // crash-looping four times would drop every demand it held or took ahead).
        maxStalledCount: Number.MAX_SAFE_INTEGER,
        stalledInterval: leaseMs,
        drainDelay: 2,
        name: workerId,
      });
      worker.on("error", () => undefined);
      return worker;
    };
  }

  async start(): Promise<void> {
    this.#worker ??= this.#make();
    await this.#worker.waitUntilReady();
    await this.#worker.startStalledCheckTimer();
  }

  #started(): Worker<Demand> {
    if (!this.#worker) throw new Error("demand consumer not started");
    return this.#worker;
  }

  /**
   * The lock token of one lease: this worker's id and a token of the lease's own. A lease whose
   * lock lapsed (Redis away for longer than the lease) while the same worker took its demand
   * again can then neither renew, complete nor fail what is now the other lease's.
   */
  #newToken(): string {
    return `${this.#token}:${randomUUID()}`;
  }

  /** Waits up to about two seconds for demand; undefined when there is none. */
  async next(): Promise<Lease | undefined> {
    return this.#take(this.#started(), true);
  }

  /**
   * Demand already waiting, up to `max`, taken at once without waiting for more (a burst's rest,
   * once `next` found some): the calls go to Redis together, each one round trip. A call that
   * fails took nothing (the next `next` hears of a Redis that is away); the leases of those that
   * succeeded are returned all the same.
   */
  async ready(max: number): Promise<Lease[]> {
    const worker = this.#started();
    const taken = await Promise.allSettled(Array.from({ length: max }, () => this.#take(worker, false)));
    return taken.flatMap((t) => (t.status === "fulfilled" && t.value ? [t.value] : []));
  }

  /**
   * One take. When the connection drops after Redis ran it but before its answer came, ioredis
   * sends it again once reconnected, with the same token, and that run takes the next demand
   * too: the answer is that one's, and the demand the first run took would sit active under a
   * lock nothing renews until the stalled check gives it back (up to twice the lease). So once
   * every take cut that way has its answer, demand locked with their tokens but leased by none
   * is given back at once.
   */
  async #take(worker: Worker<Demand>, block: boolean): Promise<Lease | undefined> {
    const token = this.#newToken();
    // Known before it is sent: a close while it is out marks it cut.
    this.#taking.add(token);
    let job: Job<Demand> | undefined;
    try {
      job = (await worker.getNextJob(token, { block })) as Job<Demand> | undefined;
    } finally {
      this.#taking.delete(token);
      if (job?.id) this.#leased.set(token, job.id);
      if (this.#cut.has(token) && ![...this.#cut].some((t) => this.#taking.has(t))) {
        const cut = this.#cut;
        this.#cut = new Set();
        // Best effort: what it misses comes back at the stalled check, as before.
        this.#giveBackUnleased(worker, cut).catch(() => undefined);
      }
    }
    return job?.id ? this.#lease(worker, job, token) : undefined;
  }

  /** Gives back active demand locked with one of `tokens` that no live lease of that token holds. One read of the pool's active demand. */
  async #giveBackUnleased(worker: Worker<Demand>, tokens: Set<string>): Promise<void> {
    const ids = await this.#connection.lrange(worker.toKey("active"), 0, -1);
    if (ids.length === 0) return;
    const locks = await this.#connection.mget(ids.map((id) => `${worker.toKey(id)}:lock`));
    await Promise.all(
      ids.map(async (id, i) => {
        const token = locks[i];
        if (!token || !tokens.has(token) || this.#leased.get(token) === id) return;
        // The token makes it safe against a lease made meanwhile: BullMQ refuses it unless the lock is still this one.
        await (await Job.fromId<Demand>(worker, id))?.moveToWait(token);
      }),
    );
  }

  /**
   * Whether a settle that counts an attempt (complete, fail), refused by BullMQ as if its lease
   * were lost, had landed all the same. When the connection drops after Redis ran it but before
   * its answer came, ioredis sends it again once reconnected; that copy finds the lock gone with
   * the first run, or another lease's once another worker took the demand (a failure with tries
   * left). BullMQ counts an attempt at each settle of that kind (`attemptsMade`) and a take at each
   * take (`attemptsStarted`): with no take since this lease's, or one whose lease still holds the
   * demand, exactly one more attempt counted than at the take is this lease's settle. A lapsed
   * lease's demand never shows that (the stalled check counts neither), nor does one whose later
   * holder settled it too: in doubt, the lease is lost, as before.
   */
  async #landed(worker: Worker<Demand>, id: string, taken: { started: number; made: number }): Promise<boolean> {
    const now = await Job.fromId<Demand>(worker, id).catch(() => undefined);
    if (!now || now.attemptsMade !== taken.made + 1) return false;
    const since = now.attemptsStarted - taken.started;
    if (since !== 0 && since !== 1) return false;
    const state = await now.getState().catch(() => "unknown");
    return since === 0 ? state !== "active" && state !== "unknown" : state === "active";
  }

  #lease(worker: Worker<Demand>, job: Job<Demand>, token: string): Lease {
    const leaseMs = this.#leaseMs;
    const taken = { started: job.attemptsStarted, made: job.attemptsMade };
    const lost = new AbortController();
    // 0: the lock is gone (it lapsed while Redis was away for longer than the lease) or another
    // lease's; BullMQ's stalled check gives the demand back to the queue, if it has not already.
    // A renewal that fails (Redis away) says nothing yet: the next one asks again.
    const renewOnce = (): Promise<void> =>
      job.extendLock(token, leaseMs).then(
        (kept) => {
          if (Number(kept) !== 0 || settling || lost.signal.aborted) return;
          clearInterval(renew);
          this.#leased.delete(token);
          lost.abort(new LeaseLostError(job.id!, new Error("its lock was gone at a renewal")));
        },
        () => undefined,
      );
    const renew = setInterval(() => void renewOnce(), leaseMs / 3);
    renew.unref();
    // The first settling call's outcome is every later one's: after a complete that failed, a fail
    // rejects too, instead of resolving as if it had landed.
    let settling: Promise<void> | undefined;
    // `counted`: a settle that counts an attempt, which #landed can recognise once sent again.
    const settle = (fn: () => Promise<unknown>, counted = false): Promise<void> => {
      clearInterval(renew);
      settling ??= (async () => {
        try {
          await fn();
        } catch (err) {
          if (!LOCK_LOST.test(errorMessage(err))) throw err;
          if (counted && (await this.#landed(worker, job.id!, taken))) return;
          throw new LeaseLostError(job.id!, err);
        } finally {
          this.#leased.delete(token);
        }
      })();
      return settling;
    };
    return {
      id: job.id!,
      demand: job.data,
      lost: lost.signal,
      held: async () => {
        if (!settling && !lost.signal.aborted) await renewOnce();
        return !lost.signal.aborted;
      },
      attempt: job.attemptsMade + 1,
      attempts: job.opts.attempts ?? 1,
      complete: (result) => settle(() => job.moveToCompleted(result, token, false), true),
      fail: (err, final) => settle(() => job.moveToFailed(asKept(err, final), token, false), true),
      // BullMQ's moveToDelayed skips the attempt (attemptsMade stays). The count goes first, best
      // effort: lost, the next wait is only as long as this one.
      postpone: (ms) =>
        settle(async () => {
          await job.updateData({ ...job.data, postponed: (job.data.postponed ?? 0) + 1 }).catch(() => undefined);
          await job.moveToDelayed(Date.now() + ms, token);
        }),
      // Waits for Redis at most RELEASE_WAIT_MS (a stop while Redis is away must not wait for
      // it): a demand not handed back in time comes back all the same once its lease lapses.
      release: () => settle(() => atMost(job.moveToWait(token), RELEASE_WAIT_MS)),
    };
  }

  async close(): Promise<void> {
    this.#connection.off("close", this.#onClose);
    const worker = this.#worker;
    if (!worker) return;
    await Promise.race([worker.waitUntilReady().catch(() => undefined), sleep(CLOSE_WAIT_READY_MS, undefined, { ref: false })]);
    // Forced: no job of ours runs inside BullMQ (leases are taken by hand), and a quit would wait
    // for a Redis that does not answer; its blocking connection is cut instead.
    await worker.close(true);
  }
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
