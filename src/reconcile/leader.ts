import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { within } from "../timers.ts";

/** Extends the lock only if this process still holds it (compare-and-extend). */
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`;

/** Deletes the lock only if this process holds it. */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`;

type LockRedis = Redis & {
  jitrunnerLeaderRenew(key: string, token: string, ms: string): Promise<number>;
  jitrunnerLeaderRelease(key: string, token: string): Promise<number>;
};

export interface LeaderElectionDeps {
  redis: Redis;
  prefix: string;
  /** This process's host id: in the lock's value (for operators) and the gauge's label. */
  host: string;
  /** Lock expiry: a leader that stops renewing is replaced about this long after its last renewal. */
  lockMs: number;
  metrics: Metrics;
  logger: Logger;
}

/** What the loops need to know about leadership. */
export interface Leadership {
  readonly isLeader: boolean;
  /** Aborted when the current term ends (lock lost or released); undefined while not leading. */
  readonly term: AbortSignal | undefined;
}

/**
 * One leader among the processes that run it: a Redis key set with NX and an expiry, renewed every
 * third of the expiry with a compare-and-extend script, released on close. A process counts itself
 * leader only until its last successful renewal plus the expiry, less a safety margin, measured from
 * when the renewal was sent; so a leader cut off from Redis stops acting before anyone else can
 * take the lock. Followers retry when the holder's lock would expire.
 */
export class LeaderElection implements Leadership {
  readonly #d: LeaderElectionDeps;
  readonly #redis: LockRedis;
  readonly #key: string;
  readonly #token: string;
  readonly #listeners: Array<(leading: boolean) => void> = [];
  /**
   * Until when this term surely holds, on the monotonic clock (performance.now): the wall clock,
   * stepped back (NTP, a VM resumed), would stretch the term past the lock's expiry on Redis.
   */
  #validUntil = 0;
  #leading = false;
  #term: AbortController | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Ends the term at #validUntil, whatever a round in flight is waiting for. */
  #lapse: NodeJS.Timeout | undefined;
  #closed = false;
  #round: Promise<void> = Promise.resolve();
  #lastError: string | undefined;

  constructor(deps: LeaderElectionDeps) {
    // Whole ms: Redis refuses a PX of 16100.000000000002 (leaderLockSeconds 16.1), and no process would ever lead.
    this.#d = { ...deps, lockMs: Math.round(deps.lockMs) };
    deps.redis.defineCommand("jitrunnerLeaderRenew", { numberOfKeys: 1, lua: RENEW });
    deps.redis.defineCommand("jitrunnerLeaderRelease", { numberOfKeys: 1, lua: RELEASE });
    this.#redis = deps.redis as LockRedis;
    this.#key = `${deps.prefix}:leader`;
    this.#token = `${deps.host}:${process.pid}:${randomBytes(6).toString("hex")}`;
    deps.metrics.leader(deps.host, false);
  }

  get isLeader(): boolean {
    return !this.#closed && performance.now() < this.#validUntil;
  }

  get term(): AbortSignal | undefined {
    return this.isLeader ? this.#term?.signal : undefined;
  }

  /** Called with true when this process becomes leader, false when it stops being leader. */
  onChange(fn: (leading: boolean) => void): void {
    this.#listeners.push(fn);
  }

  async start(): Promise<void> {
    await (this.#round = this.#campaign());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#lapse);
    this.#validUntil = 0;
    this.#transition();
    // A round in flight could still take the lock: wait for it, then release (only if it is ours),
    // so a follower need not wait for the expiry.
    await this.#round;
    await this.#bounded(this.#redis.jitrunnerLeaderRelease(this.#key, this.#token)).catch(() => undefined);
  }

  /** One round: renew (leader) or try to acquire (follower); then schedule the next. */
  async #campaign(): Promise<void> {
    const { lockMs } = this.#d;
    let next = lockMs / 3;
    const sentAt = performance.now();
    try {
      if (await this.#hold()) {
        this.#validUntil = sentAt + lockMs - Math.max(50, lockMs / 10);
      } else {
        this.#validUntil = 0;
        // Try again when the holder's lock would run out, if that is sooner.
        const left = await this.#bounded(this.#redis.pttl(this.#key));
        if (left >= 0) next = Math.min(next, left + 20);
        else next = Math.min(next, 20);
      }
      if (this.#lastError) this.#d.logger.info("leader election: Redis answers again");
      this.#lastError = undefined;
    } catch (err) {
      // Leadership lapses by itself at #validUntil; say so once, not on every round.
      const message = `leader election: ${errorMessage(err)}`;
      if (message !== this.#lastError) this.#d.logger.warn(message);
      this.#lastError = message;
    }
    if (this.#closed) return;
    this.#transition();
    this.#watchLapse();
    // While leading, a renewal that failed is tried again a little before the validity lapses; a
    // Redis that refuses at once (read-only after a failover) is asked every 1/30 of the expiry.
    if (this.#leading) next = Math.min(next, Math.max(lockMs / 30, this.#validUntil - performance.now() - lockMs / 20));
    this.#timer = setTimeout(() => void (this.#round = this.#campaign()), next);
    this.#timer.unref();
  }

  /**
   * While leading, ends the term the moment its validity lapses (renewals failed until then), not
   * at the end of the round that is waiting for Redis by then: that round's renewal may wait a
   * third of the expiry more, and the lock may be another's before it gives up.
   */
  #watchLapse(): void {
    clearTimeout(this.#lapse);
    if (!this.#leading) return;
    this.#lapse = setTimeout(() => {
      this.#transition();
      this.#watchLapse();
    }, Math.max(1, this.#validUntil - performance.now() + 1));
    this.#lapse.unref();
  }

  /** True when this process holds the lock after this call. */
  async #hold(): Promise<boolean> {
    const ms = String(this.#d.lockMs);
    if (this.#leading) return (await this.#bounded(this.#redis.jitrunnerLeaderRenew(this.#key, this.#token, ms))) === 1;
    if ((await this.#bounded(this.#redis.set(this.#key, this.#token, "PX", this.#d.lockMs, "NX"))) === "OK") return true;
    // Ours already, from an earlier attempt whose answer timed out: extend it.
    return (await this.#bounded(this.#redis.jitrunnerLeaderRenew(this.#key, this.#token, ms))) === 1;
  }

  #transition(): void {
    const leading = this.isLeader;
    if (leading === this.#leading) return;
    this.#leading = leading;
    this.#d.metrics.leader(this.#d.host, leading);
    if (leading) {
      this.#term = new AbortController();
      this.#d.logger.info({ lock: this.#key }, "became reconcile leader");
    } else {
      this.#term?.abort(new Error("leadership ended"));
      this.#term = undefined;
      this.#d.logger.info({ lock: this.#key }, this.#closed ? "leadership released" : "leadership lost");
    }
    for (const fn of this.#listeners) fn(leading);
  }

  /** A Redis call that cannot hold a round up longer than a third of the expiry. */
  #bounded<T>(p: Promise<T>): Promise<T> {
    const ms = Math.max(100, this.#d.lockMs / 3);
    return within(p, ms, `Redis did not answer within ${ms} ms`);
  }
}
