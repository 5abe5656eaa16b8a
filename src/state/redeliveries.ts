import type { Redis } from "ioredis";

/** GitHub keeps deliveries, and lets them be redelivered, for 3 days. */
const TTL_SECONDS = 3 * 24 * 3600;

/**
 * What the leader's redelivery loop remembers across passes and leaders: how far back the App's
 * delivery list has been read, and how many redeliveries each event (delivery GUID) has had.
 */
export class RedeliveryLog {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  /** Newest delivery time (ms) read by a completed pass; 0 before the first. */
  async readUpTo(): Promise<number> {
    return Number(await this.#redis.get(`${this.#prefix}:redelivery:read-up-to`)) || 0;
  }

  async setReadUpTo(ms: number): Promise<void> {
    await this.#redis.set(`${this.#prefix}:redelivery:read-up-to`, String(ms), "EX", TTL_SECONDS);
  }

  /** Counts one more redelivery of `guid`; false once `max` have already been asked for. */
  async take(guid: string, max: number): Promise<boolean> {
    const key = `${this.#prefix}:redelivery:${guid}`;
    const [[, n] = [null, 0]] = (await this.#redis.multi().incr(key).expire(key, TTL_SECONDS).exec()) ?? [];
    return Number(n) <= max;
  }
}
