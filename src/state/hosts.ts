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
/** The drain mark once that worker left (HostStore.forget): the host stays drained until `drain --undo`. */
const DRAIN_LEFT = "left";

/**
 * A host's drain mark, as kubectl's cordon: `asked` of the worker running on it, which takes no
 * new demand and exits once its jobs finish; `left` behind once it did, so that a worker started
 * on the host later (a restart policy) takes no demand either, and stays up, until the mark goes.
 */
export type DrainMark = "asked" | "left";

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
 * whose record expired has stopped (worker killed, machine gone), and others clean up after it.
 */
export class HostStore {
  readonly #redis: Redis & {
    jitrunnerHoldHost(key: string, instance: string, ttlMs: string): Promise<[number, string, number]>;
    jitrunnerDelIfEquals(key: string, value: string): Promise<number>;
  };
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand("jitrunnerHoldHost", { numberOfKeys: 1, lua: HOLD_HOST });
    redis.defineCommand("jitrunnerDelIfEquals", { numberOfKeys: 1, lua: DEL_IF_EQUALS });
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
    const now = Date.now();
    const value = JSON.stringify({ ...record, heartbeatAt: now });
    const tx = this.#redis.multi().set(this.#key(record.id), value, "PX", ttlMs).sadd(this.#index, record.id).hset(this.#lastBeat, record.id, now);
    if (instance) tx.set(this.#instanceKey(instance), record.id, "PX", ttlMs);
    await tx.exec();
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
    const [held, holder, left] = await this.#redis.jitrunnerHoldHost(this.#holdKey(id), instance, String(ttlMs));
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

  /** Resolves once Redis answers a PING on this store's connection. */
  async ping(): Promise<void> {
    await this.#redis.ping();
  }

  async alive(id: string): Promise<boolean> {
    return (await this.#redis.exists(this.#key(id))) === 1;
  }

  /**
   * Every host that ever heartbeat and has not been cleaned up, alive (with its record) or not,
   * with the time of its last heartbeat (0 if unknown).
   */
  async list(): Promise<Array<{ id: string; record?: HostRecord; lastBeatAt: number }>> {
    const ids = await this.#redis.smembers(this.#index);
    const beats = ids.length > 0 ? await this.#redis.hmget(this.#lastBeat, ...ids) : [];
    const out = [];
    for (const [i, id] of ids.entries()) {
      const raw = await this.#redis.get(this.#key(id));
      const record = raw ? this.#withMark(JSON.parse(raw) as HostRecord, await this.drainMark(id)) : undefined;
      out.push({ id, record, lastBeatAt: record?.heartbeatAt ?? Number(beats[i] ?? 0) });
    }
    return out;
  }

  /** A drained host offers no slots, whatever its worker beats (one started on a marked host beats its capacity). */
  #withMark(record: HostRecord, mark: DrainMark | undefined): HostRecord {
    return mark ? { ...record, draining: true, capacity: 0 } : { ...record, draining: false };
  }

  /**
   * Takes the host out of the fleet. Its drain mark, if any, stays (until it expires or `drain
   * --undo` removes it), as `left`: the host stays drained for a worker started on it later.
   */
  async forget(id: string): Promise<void> {
    await this.#redis
      .multi()
      .srem(this.#index, id)
      .hdel(this.#lastBeat, id)
      .del(this.#key(id))
      .set(this.#drainKey(id), DRAIN_LEFT, "KEEPTTL", "XX")
      .exec();
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

  /** Removes the host's drain mark (`drain --undo`); false if it had none. */
  async undrain(id: string): Promise<boolean> {
    return (await this.#redis.del(this.#drainKey(id))) === 1;
  }
}

const ACQUIRE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1`;

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
 * times, taken and checked in one script, so a burst on many hosts cannot pass the limit. A holder
 * that dies stops refreshing and its place frees itself after the expiry.
 */
export class PoolLimits {
  readonly #redis: Redis & { jitrunnerPoolAcquire(key: string, now: string, until: string, id: string, max: string): Promise<number> };
  readonly #prefix: string;
  /** How long a place lasts unless refreshed, by default. */
  static readonly HOLD_MS = 60_000;
  /** How long a place this instance takes or refreshes lasts unless refreshed again. */
  readonly holdMs: number;

  constructor(redis: Redis, prefix: string, holdMs = PoolLimits.HOLD_MS) {
    redis.defineCommand("jitrunnerPoolAcquire", { numberOfKeys: 1, lua: ACQUIRE });
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

  /** Takes (or refreshes) a place for `holder`; false when the pool is full. */
  async acquire(pool: string, holder: string, max: number): Promise<boolean> {
    const now = Date.now();
    return (await this.#redis.jitrunnerPoolAcquire(this.#key(pool), String(now), String(now + this.holdMs), holder, String(max))) === 1;
  }

  /** Hands `from`'s place to `to` in one step (the count never dips, so no one else slips in). */
  async transfer(pool: string, from: string, to: string): Promise<void> {
    await this.#redis.multi().zrem(this.#key(pool), from).zadd(this.#key(pool), Date.now() + this.holdMs, to).exec();
  }

  /**
   * Waits for Redis at most RELEASE_WAIT_MS (a stop while Redis is away must not wait for it): a
   * place not freed in time frees itself at its expiry.
   */
  async release(pool: string, holder: string): Promise<void> {
    await atMost(this.#redis.zrem(this.#key(pool), holder), RELEASE_WAIT_MS);
  }

  /**
   * Frees the places of every holder of `host` (hostHolder's ids) at once: a host found gone
   * refreshes none, and they would otherwise stay taken until they expire (holdMs).
   */
  async releaseHost(pool: string, host: string): Promise<number> {
    const mine = (await this.#redis.zrange(this.#key(pool), 0, -1)).filter((m) => holderHost(m) === host);
    if (mine.length) await this.#redis.zrem(this.#key(pool), ...mine);
    return mine.length;
  }

  async count(pool: string): Promise<number> {
    await this.#redis.zremrangebyscore(this.#key(pool), "-inf", Date.now());
    return this.#redis.zcard(this.#key(pool));
  }
}
