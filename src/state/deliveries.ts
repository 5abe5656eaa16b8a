import type { Redis } from "ioredis";

/** GitHub keeps deliveries, and lets them be redelivered, for 3 days. */
const TTL_SECONDS = 3 * 24 * 3600;

/**
 * Delivery ids already acted on. A replayed delivery (same X-GitHub-Delivery) is acknowledged
 * and ignored; a delivery whose handling failed is forgotten again, so GitHub's redelivery of it
 * is acted on.
 */
export class DeliveryLog {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  /** True the first time an id is claimed within the window. */
  async claim(deliveryId: string): Promise<boolean> {
    return (await this.#redis.set(this.#key(deliveryId), "1", "EX", TTL_SECONDS, "NX")) === "OK";
  }

  async forget(deliveryId: string): Promise<void> {
    await this.#redis.del(this.#key(deliveryId));
  }

  #key(id: string): string {
    return `${this.#prefix}:delivery:${id}`;
  }
}
