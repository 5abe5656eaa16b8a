import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { atMost } from "../timers.ts";
import { DEL_IF_EQUALS } from "./runners.ts";

/**
 * Takes or renews the hold on a host (KEYS[1]) for the worker process ARGV[1] until ARGV[2] ms
 * from now, unless another process holds it: then returns that process and its hold's time left.
 */
const HOLD_HOST = `
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, holder, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1], tonumber(ARGV[2])}`;

/**
 * Takes the host ARGV[1] out of the fleet: out of the index (KEYS[1]) and the last beats (KEYS[2]),
 * its record (KEYS[3]), sweep turn (KEYS[5]) and note of a clean stop (KEYS[6]) deleted, its drain
 * mark (KEYS[4]) made ARGV[2] if it has one. With ARGV[3] '1', nothing when the record is there:
 * the host beat again since another worker found it gone, and the check and the removal must be
 * one step, or a beat in between would be undone. Returns 0 if so, 2 if its worker had noted a
 * clean stop (HostStore.noteStop), 1 otherwise.
 */
const FORGET = `
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[5])
redis.call('SET', KEYS[4], ARGV[2], 'KEEPTTL', 'XX')
return 1 + redis.call('DEL', KEYS[6])`;

/**
 * Notes (KEYS[2]) that the worker process ARGV[1] stopped cleanly on its host ARGV[2], for ARGV[3]
 * seconds (HostStore.noteStop), if it still holds the host (KEYS[1]) and the host is in the fleet
 * (the index, KEYS[3]): a process whose host another took, or one swept already, notes nothing.
 * 1 if noted.
 */
const NOTE_STOP = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return 1`;

/** The sweep of gone host KEYS[1] is ARGV[1]'s for ARGV[2] ms more, unless another's now: 1 if so. */
const SWEEP_TURN = `
local by = redis.call('GET', KEYS[1])
if by and by ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

/**
 * How a host found gone was forgotten: `stopped` if its worker's last process stopped cleanly
 * (SIGTERM: it took no more demand and left its runners running for the next process on the host,
 * which did not come within the host's expiry), `gone` otherwise (killed, crashed, its machine or
 * network lost, a stop cut short); `beats` if it was not, having beaten again.
 */
export type GoneHostEnd = "stopped" | "gone" | "beats";

/**
 * How long the note of a clean stop lasts at most. It goes when the host is forgotten or beats
 * again; the expiry only bounds a note that neither removes (a host swept, or served again, by a
 * worker of a version that knew no such note, during a rolling upgrade). Longer than a host
 * stays listed for a runner's job: GitHub ends a job on a self-hosted runner after 5 days.
 */
const STOP_NOTE_SECONDS = 7 * 24 * 3600;

/** Who holds a host: this process (`held`) or another one, whose hold lasts `ttlMs` more. */
export interface HostHold {
  held: boolean;
  holder: string;
  ttlMs: number;
}

/** How long a drain mark lasts: a host forgotten for so long is taken to be a new machine. */
const DRAIN_MARK_SECONDS = 7 * 24 * 3600;
/** The drain mark while the worker asked to drain still runs (the value of marks from before `left`). */
const DRAIN_ASKED = "1";
/** The drain mark once that worker left (HostStore.forget, leftDrained): the host stays drained until `drain --undo`. */
const DRAIN_LEFT = "left";

/**
 * A host's drain mark, as kubectl's cordon: `asked` of the worker running on it, which takes no
 * new demand and exits once its jobs finish; `left` behind once it did, so that a worker started
 * on the host later (a restart policy) takes no demand either, and stays up, until the mark goes.
 */
export type DrainMark = "asked" | "left";

/** A host as HostStore.list finds it. */
export interface HostListing {
  id: string;
  /** Its live record; none once its beat expired. */
  record?: HostRecord;
  /** Its last beat, in ms on Redis's clock; 0 when unknown. */
  lastBeatAt: number;
  /** How long ago that beat was, on Redis's clock; absent when unknown. */
  beatAgeMs?: number;
  /**
   * With no record: its worker's last process stopped cleanly (noteStop), leaving runners for the
   * next one, which has not come yet. Absent otherwise.
   */
  stoppedCleanly?: true;
}

export interface HostRecord {
  id: string;
  capacity: number;
  used: number;
  pools: string[];
  draining: boolean;
  heartbeatAt: number;
}

/**
 * Worker hosts in Redis. Each worker refreshes its record every few seconds with an expiry; a host
 * whose record expired has stopped (worker killed, machine gone; or its worker stopped cleanly and
 * is not back), and others clean up after it.
 */
export class HostStore {
  readonly #redis: Redis & {
    jitrunnerHoldHost(key: string, instance: string, ttlMs: string): Promise<[number, string, number]>;
    jitrunnerDelIfEquals(key: string, value: string): Promise<number>;
    jitrunnerForgetHost(index: string, lastBeat: string, info: string, drain: string, sweeping: string, stopped: string, id: string, left: string, ifGone: string): Promise<number>;
    jitrunnerNoteStop(hold: string, stopped: string, index: string, instance: string, id: string, seconds: string): Promise<number>;
    jitrunnerSweepTurn(key: string, by: string, ms: string): Promise<number>;
    jitrunnerHeartbeat(numberOfKeys: number, ...keysAndArgs: string[]): Promise<number>;
    jitrunnerBeats(numberOfKeys: number, ...keysAndArgs: string[]): Promise<string[]>;
  };
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand("jitrunnerHoldHost", { numberOfKeys: 1, lua: HOLD_HOST });
    redis.defineCommand("jitrunnerForgetHost", { numberOfKeys: 6, lua: FORGET });
    redis.defineCommand("jitrunnerNoteStop", { numberOfKeys: 3, lua: NOTE_STOP });
    redis.defineCommand("jitrunnerSweepTurn", { numberOfKeys: 1, lua: SWEEP_TURN });
    redis.defineCommand("jitrunnerDelIfEquals", { numberOfKeys: 1, lua: DEL_IF_EQUALS });
    redis.defineCommand("jitrunnerHeartbeat", { lua: HEARTBEAT });
    redis.defineCommand("jitrunnerBeats", { lua: BEATS });
    this.#redis = redis as never;
    this.#prefix = prefix;
  }

  #key(id: string): string {
    return `${this.#prefix}:hostinfo:${id}`;
  }
  #instanceKey(instance: string): string {
    return `${this.#prefix}:worker-instance:${instance}`;
  }
  #holdKey(id: string): string {
    return `${this.#prefix}:host-held-by:${id}`;
  }
  #drainKey(id: string): string {
    return `${this.#prefix}:drain:${id}`;
  }
  #sweepingKey(id: string): string {
    return `${this.#prefix}:sweeping:${id}`;
  }
  /**
   * The note of a clean stop (noteStop): the worker process that stopped. It lasts as long as the
   * host is listed, and goes when the host is forgotten or its worker beats again.
   */
  #stoppedKey(id: string): string {
    return `${this.#prefix}:host-stopped:${id}`;
  }
  get #index(): string {
    return `${this.#prefix}:hosts`;
  }
  /** Last heartbeat time per host, kept after the record expires so a gone host's silence shows. */
  get #lastBeat(): string {
    return `${this.#prefix}:hosts:lastbeat`;
  }

  /**
   * A worker's beat: its host's record and, with `instance`, that the worker process is alive,
   * both until `ttlMs` from now.
   */
  async heartbeat(record: Omit<HostRecord, "heartbeatAt" | "draining">, ttlMs: number, instance?: string): Promise<void> {
    // The record's JSON up to its stamp, which the script adds on Redis's clock (HEARTBEAT).
    const head = `${JSON.stringify(record).slice(0, -1)},"heartbeatAt":`;
    const keys = [this.#key(record.id), this.#index, this.#lastBeat, this.#stoppedKey(record.id), ...(instance ? [this.#instanceKey(instance)] : [])];
    // Whole ms: Redis refuses a PX of 3300.0000000000005 (heartbeatSeconds 1.1, three beats).
    await this.#redis.jitrunnerHeartbeat(keys.length, ...keys, head, String(Math.round(ttlMs)), record.id);
  }

  /** Whether the worker process `instance` has beaten within its heartbeat's expiry and not stopped. */
  async instanceAlive(instance: string): Promise<boolean> {
    return (await this.#redis.exists(this.#instanceKey(instance))) === 1;
  }

  /**
   * One worker process per host: takes or renews `instance`'s hold on host `id` until `ttlMs` from
   * now, or says which process holds it. Two processes serving one host would each take the
   * other's containers for leftovers.
   */
  async hold(id: string, instance: string, ttlMs: number): Promise<HostHold> {
    const [held, holder, left] = await this.#redis.jitrunnerHoldHost(this.#holdKey(id), instance, String(Math.round(ttlMs)));
    return { held: held === 1, holder, ttlMs: left };
  }

  /**
   * The worker process `instance` has stopped: what it left is for others to clean up now, and
   * its host `id` (if it held it) is free for the next process at once.
   */
  async instanceGone(instance: string, id?: string): Promise<void> {
    await this.#redis.del(this.#instanceKey(instance));
    if (id) await this.#redis.jitrunnerDelIfEquals(this.#holdKey(id), instance);
  }

  /**
   * Notes that the worker process `instance` stopped cleanly on host `id` and left the host listed
   * (runners of it still running, or still recorded): should no worker come back to the host
   * within its expiry, the others sweep it as a gone host but count it as stopped, not gone
   * (forgetGone). Nothing if the process no longer holds the host or the host is not listed; the
   * host's next beat removes the note. Call it before `instanceGone`, which frees the hold.
   */
  async noteStop(id: string, instance: string): Promise<boolean> {
    return (await this.#redis.jitrunnerNoteStop(this.#holdKey(id), this.#stoppedKey(id), this.#index, instance, id, String(STOP_NOTE_SECONDS))) === 1;
  }

  /** Resolves once Redis answers a PING on this store's connection. */
  async ping(): Promise<void> {
    await this.#redis.ping();
  }

  async alive(id: string): Promise<boolean> {
    return (await this.#redis.exists(this.#key(id))) === 1;
  }

  /**
   * Every host that ever heartbeat and has not been cleaned up, alive (with its record) or not,
   * with the time of its last heartbeat (0 if unknown) and how long ago that was, both on Redis's
   * clock, and, for one not alive, whether its worker stopped cleanly.
   */
  async list(): Promise<HostListing[]> {
    const ids = await this.#redis.smembers(this.#index);
    const [redisNow, ...beats] = (await this.#redis.jitrunnerBeats(1, this.#lastBeat, ...ids)).map(Number);
    const out: HostListing[] = [];
    for (const [i, id] of ids.entries()) {
      const raw = await this.#redis.get(this.#key(id));
      const record = raw ? this.#withMark(JSON.parse(raw) as HostRecord, await this.drainMark(id)) : undefined;
      const lastBeatAt = record?.heartbeatAt ?? beats[i] ?? 0;
      const stoppedCleanly = !record && (await this.#redis.exists(this.#stoppedKey(id))) === 1;
      out.push({ id, record, lastBeatAt, ...(lastBeatAt > 0 && { beatAgeMs: Math.max(0, redisNow! - lastBeatAt) }), ...(stoppedCleanly && { stoppedCleanly: true as const }) });
    }
    return out;
  }

  /** A drained host offers no slots, whatever its worker beats (one started on a marked host beats its capacity). */
  #withMark(record: HostRecord, mark: DrainMark | undefined): HostRecord {
    return mark ? { ...record, draining: true, capacity: 0 } : { ...record, draining: false };
  }

  /**
   * Takes the host out of the fleet, whether it beats or not (its own worker leaving). Its drain
   * mark, if any, stays (until it expires or `drain --undo` removes it), as `left`: the host stays
   * drained for a worker started on it later.
   */
  async forget(id: string): Promise<void> {
    await this.#forget(id, false);
  }

  /**
   * As `forget`, for a host found gone by another worker: nothing, and `beats`, if it beat again
   * since (a beat that lapsed only briefly: a GC pause, a Redis hiccup), so that its record, its
   * place in the fleet and its drain mark's `asked` stay while its worker runs. Otherwise whether
   * its worker had stopped cleanly (`stopped`: noteStop) or not (`gone`).
   */
  async forgetGone(id: string): Promise<GoneHostEnd> {
    const done = await this.#forget(id, true);
    return done === 0 ? "beats" : done === 2 ? "stopped" : "gone";
  }

  async #forget(id: string, ifGone: boolean): Promise<number> {
    return this.#redis.jitrunnerForgetHost(this.#index, this.#lastBeat, this.#key(id), this.#drainKey(id), this.#sweepingKey(id), this.#stoppedKey(id), id, DRAIN_LEFT, ifGone ? "1" : "0");
  }

  /**
   * Whether worker `by` may sweep gone host `id` now: one worker at a time across the fleet, for
   * `ms` from its last turn (it takes its turn again on each pass). Every worker sweeping every
   * gone host would spend a GitHub write per worker on each runner (all but the first answered
   * 404), and repeat, per worker, the calls a deregistration GitHub keeps refusing costs.
   */
  async sweepTurn(id: string, by: string, ms: number): Promise<boolean> {
    return (await this.#redis.jitrunnerSweepTurn(this.#sweepingKey(id), by, String(ms))) === 1;
  }

  /** Ends `by`'s turn to sweep gone host `id`, if it has it (its worker stopping). */
  async endSweepTurn(id: string, by: string): Promise<void> {
    await this.#redis.jitrunnerDelIfEquals(this.#sweepingKey(id), by);
  }

  /** Asks the host's worker to drain; on a host drained already, the worker started there since too. */
  async drain(id: string): Promise<void> {
    await this.#redis.set(this.#drainKey(id), DRAIN_ASKED, "EX", DRAIN_MARK_SECONDS);
  }

  /**
   * Whether the host's worker was asked to drain: it takes no new demand and exits once its jobs
   * finish. Not so for a mark its worker left behind (drainMark `left`): a worker that exits on it
   * at start would be restarted by its supervisor, again and again.
   */
  async draining(id: string): Promise<boolean> {
    return (await this.drainMark(id)) === "asked";
  }

  /** The host's drain mark: `asked` of its worker, `left` behind by a worker that drained; or none. */
  async drainMark(id: string): Promise<DrainMark | undefined> {
    const value = await this.#redis.get(this.#drainKey(id));
    if (value === null) return undefined;
    return value === DRAIN_LEFT ? "left" : "asked";
  }

  /**
   * Makes the host's drain mark, if it has one, `left` (its expiry kept): its worker drained and
   * exited, but stays listed (a runner of it still recorded: a teardown that failed), so that the
   * fleet's host loops clean up after it; the host stays drained for a worker started on it later,
   * as when it leaves the fleet (forget).
   */
  async leftDrained(id: string): Promise<void> {
    await this.#redis.set(this.#drainKey(id), DRAIN_LEFT, "KEEPTTL", "XX");
  }

  /** Removes the host's drain mark (`drain --undo`); false if it had none. */
  async undrain(id: string): Promise<boolean> {
    return (await this.#redis.del(this.#drainKey(id))) === 1;
  }
}

/**
 * Now in ms on Redis's clock, the one clock every host shares: places' expiry times are written and
 * compared against it alone, as SharedWriteWindow's starts are. With each host's own clock, one
 * ahead by more than a hold would delete everyone's live places as expired (and pass the limit),
 * and one behind would write places the others delete at once.
 */
const REDIS_NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * A worker's beat, stamped on Redis's clock (REDIS_NOW): its record (KEYS[1]) is ARGV[1], the
 * record's JSON up to its `heartbeatAt` value, with the time and the closing brace added, until
 * ARGV[2] ms from now; the host in the index (KEYS[2]) and its last beat (KEYS[3]); the note of
 * an earlier process's clean stop (KEYS[4]) removed: the host is served again, and if this process
 * is killed, its host is gone; with a 5th key, the worker process alive (ARGV[3], its host) as
 * long. Readers on other machines measure the beat's age against the same clock (HostStore.list),
 * so a worker whose clock is behind does not look stale, nor one ahead alive after it died.
 */
const HEARTBEAT = `${REDIS_NOW}
local at = string.format('%.0f', now)
redis.call('SET', KEYS[1], ARGV[1] .. at .. '}', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], at)
redis.call('DEL', KEYS[4])
if KEYS[5] then redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[2]) end
return 1`;

/** Redis's clock now, in ms, with each listed host's last beat: what HostStore.list reads. */
const BEATS = `${REDIS_NOW}
local out = {string.format('%.0f', now)}
for i, id in ipairs(ARGV) do out[i + 1] = redis.call('HGET', KEYS[1], id) or '0' end
return out`;

/**
 * Takes or refreshes the place of ARGV[2] in KEYS[1] for ARGV[1] ms; a new one only while fewer
 * than ARGV[3] are taken, once the place of ARGV[4] (if given) is freed.
 */
const ACQUIRE = `${REDIS_NOW}
local untilMs = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], untilMs, ARGV[2])
  return 1
end
if ARGV[4] then redis.call('ZREM', KEYS[1], ARGV[4]) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], untilMs, ARGV[2])
return 1`;

/** Hands the place of ARGV[1] in KEYS[1] to ARGV[2], held for ARGV[3] ms. */
const TRANSFER = `${REDIS_NOW}
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return 1`;

/** The places in KEYS[1] that have not expired. */
const COUNT = `${REDIS_NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])`;

/** How long freeing a place under a pool limit waits for Redis (see PoolLimits.release). */
const RELEASE_WAIT_MS = 3_000;

/** A new holder id of a place taken on behalf of `host`'s runners (warm runners and spares). */
export function hostHolder(host: string): string {
  return `${host}:${randomUUID()}`;
}

/** The host of a hostHolder id (a host id may itself hold ':'), or undefined for other holders. */
function holderHost(holder: string): string | undefined {
  const m = /^(.+):[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.exec(holder);
  return m?.[1];
}

/**
 * The global limit of runners per pool across every host: a sorted set of holders with expiry
 * times on Redis's clock (REDIS_NOW), taken and checked in one script, so a burst on many hosts
 * cannot pass the limit. A holder that dies stops refreshing and its place frees itself after the
 * expiry.
 */
export class PoolLimits {
  readonly #redis: Redis & {
    jitrunnerPoolAcquire(key: string, holdMs: string, id: string, max: string, from?: string): Promise<number>;
    jitrunnerPoolTransfer(key: string, from: string, to: string, holdMs: string): Promise<number>;
    jitrunnerPoolCount(key: string): Promise<number>;
  };
  readonly #prefix: string;
  /** How long a place lasts unless refreshed, by default. */
  static readonly HOLD_MS = 60_000;
  /** How long a place this instance takes or refreshes lasts unless refreshed again. */
  readonly holdMs: number;

  constructor(redis: Redis, prefix: string, holdMs = PoolLimits.HOLD_MS) {
    redis.defineCommand("jitrunnerPoolAcquire", { numberOfKeys: 1, lua: ACQUIRE });
    redis.defineCommand("jitrunnerPoolTransfer", { numberOfKeys: 1, lua: TRANSFER });
    redis.defineCommand("jitrunnerPoolCount", { numberOfKeys: 1, lua: COUNT });
    this.#redis = redis as never;
    this.#prefix = prefix;
    this.holdMs = holdMs;
  }

  /**
   * The same limits, with places held `holdMs` unrefreshed: a holder must refresh its places well
   * within that (a worker does on each beat, so its hold follows its heartbeat).
   */
  holding(holdMs: number): PoolLimits {
    return holdMs === this.holdMs ? this : new PoolLimits(this.#redis, this.#prefix, holdMs);
  }

  #key(pool: string): string {
    return `${this.#prefix}:pool:${pool}:holders`;
  }

  /**
   * Takes (or refreshes) a place for `holder`; false when the pool is full. With `from`: frees
   * that holder's place first, in the same step (a new holder of the same runner takes it over,
   * and no one else can slip in between).
   */
  async acquire(pool: string, holder: string, max: number, from?: string): Promise<boolean> {
    const args = from === undefined ? [] : [from];
    return (await this.#redis.jitrunnerPoolAcquire(this.#key(pool), String(this.holdMs), holder, String(max), ...args)) === 1;
  }

  /** Hands `from`'s place to `to` in one step (the count never dips, so no one else slips in). */
  async transfer(pool: string, from: string, to: string): Promise<void> {
    await this.#redis.jitrunnerPoolTransfer(this.#key(pool), from, to, String(this.holdMs));
  }

  /**
   * Waits for Redis at most RELEASE_WAIT_MS (a stop while Redis is away must not wait for it): a
   * place not freed in time frees itself at its expiry.
   */
  async release(pool: string, holder: string): Promise<void> {
    await atMost(this.#redis.zrem(this.#key(pool), holder), RELEASE_WAIT_MS);
  }

  /** The holders of `host` (hostHolder's ids) with a place in the pool, expired or not. */
  async heldBy(pool: string, host: string): Promise<string[]> {
    return (await this.#redis.zrange(this.#key(pool), 0, -1)).filter((m) => holderHost(m) === host);
  }

  /**
   * Frees the places of every holder of `host` (hostHolder's ids) at once: a host found gone
   * refreshes none, and they would otherwise stay taken until they expire (holdMs).
   */
  async releaseHost(pool: string, host: string): Promise<number> {
    const mine = await this.heldBy(pool, host);
    if (mine.length) await this.#redis.zrem(this.#key(pool), ...mine);
    return mine.length;
  }

  async count(pool: string): Promise<number> {
    return this.#redis.jitrunnerPoolCount(this.#key(pool));
  }
}
