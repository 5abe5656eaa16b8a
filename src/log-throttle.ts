/**
 * Lets a log line that may repeat at a high rate (a refused delivery, a refused job) through once
 * per key per window, and counts those held back, so that the next line let through says how many
 * there were. Keys are bounded (memory): at `maxKeys`, those whose window has passed are dropped,
 * and while it is still full a new key's line is held back, uncounted.
 */
export class LogThrottle {
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  /** Per key: when a line was last let through, and how many were held back since. */
  readonly #keys = new Map<string, { at: number; held: number }>();

  constructor(opts: { windowMs: number; maxKeys?: number; now?: () => number }) {
    this.#windowMs = opts.windowMs;
    this.#maxKeys = opts.maxKeys ?? 1000;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Whether a line for `key` goes out now: undefined when it is held back, else how many times
   * it happened since the last line of this key (this one included: 1 the first time).
   */
  pass(key: string): number | undefined {
    const now = this.#now();
    const seen = this.#keys.get(key);
    if (seen && now - seen.at < this.#windowMs) {
      seen.held++;
      return undefined;
    }
    if (!seen && this.#keys.size >= this.#maxKeys) {
      for (const [k, v] of this.#keys) if (now - v.at >= this.#windowMs) this.#keys.delete(k);
      if (this.#keys.size >= this.#maxKeys) return undefined;
    }
    this.#keys.set(key, { at: now, held: 0 });
    return (seen?.held ?? 0) + 1;
  }
}
