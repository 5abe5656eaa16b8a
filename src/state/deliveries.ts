import type { Redis } from "ioredis";

/** GitHub keeps deliveries, and lets them be redelivered, for 3 days. */
const TTL_SECONDS = 3 * 24 * 3600;
/**
 * The claim of a delivery that changed nothing (a job not ours, no pool for it, an action ignored):
 * most deliveries of an App installed org-wide, GitHub-hosted jobs among them, and 3 days of their
 * claims would fill Redis for nothing. A replay within the hour is still answered "replayed"; a
 * later one is acted on again, which again changes nothing.
 */
export const NO_CHANGE_TTL_SECONDS = 3600;

/** A delivery's claim as what it is in Redis: a key set with NX and an expiry. */
export interface ClaimKey {
  key: string;
  ttlSeconds: number;
}

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

  /**
   * True the first time an id is claimed within the window: GitHub's 3 days, or as long as given
   * (NO_CHANGE_TTL_SECONDS for a delivery that changed nothing).
   */
  async claim(deliveryId: string, ttlSeconds: number = TTL_SECONDS): Promise<boolean> {
    return (await this.#redis.set(this.#key(deliveryId), "1", "EX", ttlSeconds, "NX")) === "OK";
  }

  /**
   * The claim of a delivery as a key, for the demand queue to take in the same round trip as the
   * job attempt's own (see DemandQueues.add): one Redis round trip less per queued delivery.
   */
  claimKey(deliveryId: string): ClaimKey {
    return { key: this.#key(deliveryId), ttlSeconds: TTL_SECONDS };
  }

  async forget(deliveryId: string): Promise<void> {
    await this.#redis.del(this.#key(deliveryId));
  }

  #key(id: string): string {
    return `${this.#prefix}:delivery:${id}`;
  }
}
