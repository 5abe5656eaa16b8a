import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { NotSentError } from "../errors.ts";
import { within } from "../timers.ts";
import { REDIS_TIMEOUT_MS } from "./token-cache.ts";

/**
 * Writes (JIT configs above all, also runner deletions and redelivery requests) start at most this
 * many times a minute per installation, by default, across every process on one Redis
 * (SharedWriteWindow); `github.writesPerMinute` sets it. A JIT config creates no content (no
 * notification, nothing users see), so GitHub's advice of a second between content-creating
 * requests (@octokit/plugin-throttling's default pace) does not bind it; what does is the points
 * budget of GitHub's secondary rate limits (about 900 points a minute for REST, a write costs 5,
 * so at most ~180 JIT configs a minute). 120 writes (600 points) in any minute leaves a third of
 * the budget for the reads that go with them (one still-queued check per job, the reconcile
 * loops). The window slides (WriteWindow): a burst of up to 120 jobs is registered at once, and a
 * longer one goes on at the pace its first writes leave the window. A rate-limit answer (403/429)
 * is waited out as GitHub says: the plugin retries the refused call after the wait, and the
 * installation's writes wait with it, and its reads too (they ask `pausedFor` before they start).
 */
export const DEFAULT_WRITES_PER_MINUTE = 120;

/** How a write asks for its start. */
export interface WriteOptions {
  /** 0: the throttling plugin's retry of a refused call, which goes first. */
  priority?: number;
  /**
   * A write no job waits for (a runner's deletion): it waits behind the others, and never takes
   * the part of the window kept for them (backgroundShare).
   */
  background?: boolean;
}

/**
 * Starts in any window that background writes may take: all but a quarter of `max` (at least one
 * when `max` is 2 or more). Dozens of deletions at once (warm runners retired, a drain, a gone
 * host's sweep) would otherwise fill the whole window, in every process sharing it, and a job's
 * registration would wait for the window to slide.
 */
export function backgroundShare(max: number): number {
  return max > 1 ? max - Math.max(1, Math.floor(max / 4)) : max;
}

/** A write waiting for its start. */
interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
  /** Its place: retries (0), then writes a job waits for (1), then background writes (2). */
  rank: number;
  /** Starts in the window it may take (the key's max, or backgroundShare of it). */
  share: number;
}

/**
 * The writes of one key waiting for their start, and the one timer set for when the next may
 * start. In line, a refused call's retry goes first, then writes a job waits for (registrations),
 * then background ones (deletions); first come first served within each. `pump` starts what may
 * start. Closed, it fails every write waiting, and any that comes later, with NotSentError.
 */
class Line {
  readonly waiting: Waiter[] = [];
  readonly #max: number;
  readonly #pump: () => void;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(max: number, pump: () => void) {
    this.#max = max;
    this.#pump = pump;
  }

  join(options: WriteOptions): Promise<void> {
    if (this.#closed) return Promise.reject(new NotSentError("GitHub write"));
    return new Promise<void>((resolve, reject) => {
      const background = options.background === true;
      const rank = options.priority === 0 ? 0 : background ? 2 : 1;
      const at = this.waiting.findIndex((w) => w.rank > rank);
      const waiter = { resolve, reject, rank, share: background ? backgroundShare(this.#max) : this.#max };
      if (at < 0) this.waiting.push(waiter);
      else this.waiting.splice(at, 0, waiter);
      this.#pump();
    });
  }

  /** Pumps again in `ms` (replacing the timer set before). */
  wakeIn(ms: number): void {
    this.stopTimer();
    this.#timer = setTimeout(this.#pump, ms);
  }

  stopTimer(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  close(): void {
    this.#closed = true;
    this.stopTimer();
    for (const w of this.waiting.splice(0)) w.reject(new NotSentError("GitHub write"));
  }
}

/**
 * What @octokit/plugin-throttling calls on its `throttle.write` group (a Bottleneck.Group's shape);
 * it passes `priority` only, `background` is ours.
 */
export interface WriteGate {
  key(id: string): { schedule<T>(options: WriteOptions, fn: () => T | PromiseLike<T>): Promise<T> };
}

/** A write gate that GitHub's "wait" answers pause, per key. */
export interface WriteBudget extends WriteGate {
  /** No write of `id` starts for `ms` from now (a longer pause already set stands). */
  pause(id: string, ms: number): void;
  /**
   * Ms until the pause of `id` ends (0: not paused), for the calls that do not go through this
   * gate (reads) to wait it out as well: GitHub's wait is for every request of the installation.
   */
  pausedFor(id: string): Promise<number>;
  /**
   * The client is closing: every write still waiting, and any asked for later, fails with
   * NotSentError (it never starts), and no timer is left behind.
   */
  close(): void;
}

/**
 * When writes may start, per key (installation): at most `max` starts in any `windowMs` (background
 * writes only backgroundShare of them), none while the key is paused (GitHub said to wait), in the
 * order of their Line.
 *
 * A sliding window, so a burst of demand registers its runners at once and the budget still holds
 * over every window. Bottleneck (which the throttling plugin uses) offers a minimum gap (no burst),
 * a reservoir refreshed per fixed window (twice the budget across a window boundary) or a token
 * bucket (a burst allowance lowers the sustained rate under the same budget); none gives both.
 */
export class WriteWindow implements WriteBudget {
  readonly #keys = new Map<string, KeyWindow>();
  #closed = false;
  readonly #max: number;
  readonly #windowMs: number;

  constructor(max: number, windowMs: number) {
    if (!(max >= 1) || !(windowMs > 0)) throw new RangeError(`a write window needs max >= 1 and windowMs > 0 (got ${max}, ${windowMs})`);
    this.#max = max;
    this.#windowMs = windowMs;
  }

  key(id: string): KeyWindow {
    let k = this.#keys.get(id);
    if (!k) {
      k = new KeyWindow(this.#max, this.#windowMs);
      if (this.#closed) k.close();
      this.#keys.set(id, k);
    }
    return k;
  }

  /** No write of `id` starts for `ms` from now (a longer pause already set stands). */
  pause(id: string, ms: number): void {
    this.key(id).pause(Date.now() + ms);
  }

  pausedFor(id: string): Promise<number> {
    return Promise.resolve(Math.max(0, (this.#keys.get(id)?.pausedUntil ?? 0) - Date.now()));
  }

  close(): void {
    this.#closed = true;
    for (const k of this.#keys.values()) k.close();
  }
}

class KeyWindow {
  readonly #max: number;
  readonly #windowMs: number;
  /** Start times within the last window, oldest first. */
  readonly #starts: number[] = [];
  readonly #line: Line;
  #pausedUntil = 0;

  constructor(max: number, windowMs: number) {
    this.#max = max;
    this.#windowMs = windowMs;
    this.#line = new Line(max, () => this.#pump());
  }

  async schedule<T>(options: WriteOptions, fn: () => T | PromiseLike<T>): Promise<T> {
    await this.#line.join(options);
    return fn();
  }

  close(): void {
    this.#line.close();
  }

  pause(until: number): void {
    this.#pausedUntil = Math.max(this.#pausedUntil, until);
    this.#pump();
  }

  get pausedUntil(): number {
    return this.#pausedUntil;
  }

  /** Starts what may start now, and sets one timer for when the next may. */
  #pump(): void {
    this.#line.stopTimer();
    const now = Date.now();
    const waiting = this.#line.waiting;
    const starts = this.#starts;
    while (starts.length > 0 && starts[0]! <= now - this.#windowMs) starts.shift();
    if (waiting.length === 0) return;
    if (this.#pausedUntil > now) {
      this.#line.wakeIn(this.#pausedUntil - now);
      return;
    }
    // In line order, each write whose share of the window has room: a deletion that finds its
    // share full leaves the deletions behind it waiting, but not a registration.
    for (let i = 0; i < waiting.length; ) {
      if (starts.length < waiting[i]!.share) {
        starts.push(now);
        waiting.splice(i, 1)[0]!.resolve();
      } else i++;
    }
    if (waiting.length === 0) return;
    // The next may start when the window holds fewer starts than the largest share waiting.
    const share = Math.max(...waiting.map((w) => w.share));
    this.#line.wakeIn(starts[starts.length - share]! + this.#windowMs - now);
  }
}

/**
 * Takes up to ARGV[3] starts in the window of KEYS[1] (a sorted set of start times) while it holds
 * fewer than ARGV[2], unless KEYS[2] (a pause, ms since epoch) is still ahead; on Redis's clock, so
 * that hosts whose clocks differ share one window. Returns {starts taken, ms until the next start
 * may be taken}: until the window holds fewer than ARGV[2] (it may hold more, taken under a larger
 * max: registrations' starts, where background writes ask with a smaller one).
 */
const TAKE_STARTS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return {0, paused - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local max = tonumber(ARGV[2])
local card = redis.call('ZCARD', KEYS[1])
local n = math.min(tonumber(ARGV[3]), max - card)
if n > 0 then
  for i = 1, n do redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i) end
  redis.call('PEXPIRE', KEYS[1], window)
  card = card + n
end
if n >= tonumber(ARGV[3]) then return {n, 0} end
local next = redis.call('ZRANGE', KEYS[1], card - max, card - max, 'WITHSCORES')
return {math.max(n, 0), tonumber(next[2]) + window - now}`;

/** Sets the pause of KEYS[1] to ARGV[1] ms from now on Redis's clock, unless a later one is set. */
const PAUSE = `
local t = redis.call('TIME')
local untilMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
if untilMs > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], untilMs, 'PX', ARGV[1]) end
return 0`;

type BudgetRedis = Redis & {
  jitrunnerTakeWriteStarts(starts: string, paused: string, windowMs: string, max: string, want: string, id: string): Promise<[number, number]>;
  jitrunnerPauseWrites(paused: string, ms: string): Promise<number>;
};

/**
 * The same budget as WriteWindow, shared by every process on one Redis (all the workers of a
 * fleet call GitHub as one App): starts are taken from a window in Redis, and a pause that GitHub
 * asked of one process holds the writes of all (and their reads: `pausedFor`). Within a process,
 * writes start in the order of their Line, as with WriteWindow; across processes, whoever asks
 * first, but background writes of any process only up to their share of the window, which keeps
 * the rest for the registrations of all.
 */
export class SharedWriteWindow implements WriteBudget {
  readonly #redis: BudgetRedis;
  readonly #prefix: string;
  readonly #max: number;
  readonly #windowMs: number;
  readonly #onError: (err: unknown) => void;
  readonly #keys = new Map<string, SharedKeyWindow>();
  /** Pauses this process was asked for (ms since epoch, this host's clock): kept when Redis is away. */
  readonly #heard = new Map<string, number>();
  #closed = false;

  /**
   * A Redis failure, or no answer within REDIS_TIMEOUT_MS (the worker's connections queue commands
   * while Redis is away, and wait for ever on one that stopped answering), fails the writes waiting
   * (their callers retry them); `onError` hears of one that lost a pause (GitHub's refusal of the call that asked for it is retried all the same).
   */
  constructor(redis: Redis, prefix: string, max: number, windowMs: number, onError: (err: unknown) => void = () => {}) {
    if (!(max >= 1) || !(windowMs > 0)) throw new RangeError(`a write window needs max >= 1 and windowMs > 0 (got ${max}, ${windowMs})`);
    redis.defineCommand("jitrunnerTakeWriteStarts", { numberOfKeys: 2, lua: TAKE_STARTS });
    redis.defineCommand("jitrunnerPauseWrites", { numberOfKeys: 1, lua: PAUSE });
    this.#redis = redis as BudgetRedis;
    this.#prefix = prefix;
    this.#max = max;
    this.#windowMs = windowMs;
    this.#onError = onError;
  }

  key(id: string): SharedKeyWindow {
    let k = this.#keys.get(id);
    if (!k) {
      // One hash tag per key: both of its Redis keys in one cluster slot.
      const base = `${this.#prefix}:{${id}}`;
      k = new SharedKeyWindow(this.#max, (want, max, callId) =>
        within(
          this.#redis.jitrunnerTakeWriteStarts(`${base}:starts`, `${base}:paused`, String(this.#windowMs), String(max), String(want), callId),
          REDIS_TIMEOUT_MS,
          "redis did not answer the GitHub write budget",
        ),
      );
      if (this.#closed) k.close();
      this.#keys.set(id, k);
    }
    return k;
  }

  pause(id: string, ms: number): void {
    this.#heard.set(id, Math.max(this.#heard.get(id) ?? 0, Date.now() + ms));
    within(this.#redis.jitrunnerPauseWrites(`${this.#prefix}:{${id}}:paused`, String(Math.ceil(ms))), REDIS_TIMEOUT_MS, "redis did not answer the GitHub write budget").catch(
      this.#onError,
    );
  }

  /**
   * The pause that any process sharing this Redis was asked for, or the one this process heard
   * of, whichever ends later. While the connection is not ready, or Redis does not answer within
   * REDIS_TIMEOUT_MS, only this process's own (a read needs no Redis to go out).
   */
  async pausedFor(id: string): Promise<number> {
    const heard = this.#heard.get(id);
    const own = heard === undefined ? 0 : Math.max(0, heard - Date.now());
    if (heard !== undefined && own === 0) this.#heard.delete(id);
    if (this.#redis.status !== "ready") return own;
    // The pause key expires when its pause ends (PAUSE sets it PX the pause): its time to live is what is left.
    const shared = await within(this.#redis.pttl(`${this.#prefix}:{${id}}:paused`), REDIS_TIMEOUT_MS, "redis did not answer the GitHub write budget").catch(
      (err: unknown) => {
        this.#onError(err);
        return 0;
      },
    );
    return Math.max(own, Number(shared) || 0);
  }

  close(): void {
    this.#closed = true;
    for (const k of this.#keys.values()) k.close();
  }
}

type TakeStarts = (want: number, max: number, callId: string) => Promise<[number, number]>;

class SharedKeyWindow {
  readonly #take: TakeStarts;
  readonly #line: Line;
  #pumping = false;
  /** Writes joined the line while it asked Redis: it asks again for them. */
  #joined = false;

  constructor(max: number, take: TakeStarts) {
    this.#take = take;
    this.#line = new Line(max, () => void this.#pump());
  }

  async schedule<T>(options: WriteOptions, fn: () => T | PromiseLike<T>): Promise<T> {
    await this.#line.join(options);
    return fn();
  }

  close(): void {
    this.#line.close();
  }

  /** Takes starts for the writes waiting, and sets one timer for when the next may start. */
  async #pump(): Promise<void> {
    // One ask at a time: writes that join meanwhile are asked for in another round.
    if (this.#pumping) {
      this.#joined = true;
      return;
    }
    this.#pumping = true;
    this.#line.stopTimer();
    const waiting = this.#line.waiting;
    let wakeMs = Infinity;
    try {
      do {
        this.#joined = false;
        wakeMs = Math.min(wakeMs, await this.#round(waiting));
      } while (this.#joined && waiting.length > 0);
      if (waiting.length > 0) this.#line.wakeIn(Math.max(1, wakeMs));
    } catch (err) {
      for (const w of waiting.splice(0)) w.reject(err);
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * Asks Redis for the writes waiting now, in line order, one ask for each run of writes of one
   * share: a run that finds its share of the window full leaves the later writes of that share
   * waiting, but not those of a larger one (a registration behind deletions). Returns the ms until
   * one that still waits may start (Infinity: none waits).
   */
  async #round(waiting: Waiter[]): Promise<number> {
    const line = [...waiting];
    let full = 0;
    let wakeMs = Infinity;
    for (let i = 0; i < line.length; ) {
      const share = line[i]!.share;
      let end = i + 1;
      while (end < line.length && line[end]!.share === share) end++;
      // Left out: writes of a full share, and any the line no longer holds (closed meanwhile).
      const run = share > full ? line.slice(i, end).filter((w) => waiting.includes(w)) : [];
      i = end;
      if (run.length === 0) continue;
      const [taken, waitMs] = await this.#take(run.length, share, randomUUID());
      for (const w of run.slice(0, taken)) {
        const at = waiting.indexOf(w);
        if (at >= 0) waiting.splice(at, 1);
        w.resolve();
      }
      if (taken < run.length) {
        full = share;
        wakeMs = Math.min(wakeMs, waitMs);
      }
    }
    return wakeMs;
  }
}
