import type { Redis } from "ioredis";

/** GitHub keeps deliveries, and lets them be redelivered, for 3 days. */
const TTL_SECONDS = 3 * 24 * 3600;

/**
 * Where a read of the App's delivery list that one pass could not finish goes on: GitHub's cursor
 * of the next page to read, and the newest delivery time seen when that read began at the top.
 */
export interface ReadResume {
  cursor: string;
  top: number;
}

/**
 * What the leader's redelivery loop remembers across passes and leaders: how far back the App's
 * delivery list has been read, where an unfinished read goes on, and which redeliveries each event
 * (delivery GUID) has had.
 */
export class RedeliveryLog {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  /** Newest delivery time (ms) of the last read that went all the way down; 0 before the first. */
  async readUpTo(): Promise<number> {
    return Number(await this.#redis.get(`${this.#prefix}:redelivery:read-up-to`)) || 0;
  }

  async setReadUpTo(ms: number): Promise<void> {
    await this.#redis.set(`${this.#prefix}:redelivery:read-up-to`, String(ms), "EX", TTL_SECONDS);
  }

  /** The unfinished read, if any. */
  async resume(): Promise<ReadResume | undefined> {
    const raw = await this.#redis.get(`${this.#prefix}:redelivery:resume`);
    if (!raw) return undefined;
    try {
      const r = JSON.parse(raw) as Partial<ReadResume>;
      return typeof r.cursor === "string" && typeof r.top === "number" ? { cursor: r.cursor, top: r.top } : undefined;
    } catch {
      return undefined;
    }
  }

  /** Saves where the read goes on (`undefined`: the next pass reads from the top again). */
  async setResume(r: ReadResume | undefined): Promise<void> {
    const key = `${this.#prefix}:redelivery:resume`;
    if (r) await this.#redis.set(key, JSON.stringify(r), "EX", TTL_SECONDS);
    else await this.#redis.del(key);
  }

  /**
   * Counts one more redelivery of `guid`, whose latest attempt seen is `attemptId`. False, counting
   * nothing, when a redelivery of that attempt (or a later one) was already asked for: its new
   * attempt is not in what this pass read. False once `max` have already been counted.
   */
  async take(guid: string, attemptId: number, max: number): Promise<boolean> {
    const key = `${this.#prefix}:redelivery:${guid}`;
    if (Number(await this.#redis.get(`${key}:asked`)) >= attemptId) return false;
    const [[, n] = [null, 0]] = (await this.#redis.multi().incr(key).expire(key, TTL_SECONDS).exec()) ?? [];
    return Number(n) <= max;
  }

  /** Notes that GitHub accepted a redelivery of `guid`'s attempt `attemptId`. */
  async asked(guid: string, attemptId: number): Promise<void> {
    await this.#redis.set(`${this.#prefix}:redelivery:${guid}:asked`, String(attemptId), "EX", TTL_SECONDS);
  }
}
