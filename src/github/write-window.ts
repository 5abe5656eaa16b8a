/**
 * Writes (JIT configs above all, also runner deletions and redelivery requests) start at most this
 * many times a minute per installation, by default; `github.writesPerMinute` sets it. A JIT config
 * creates no content (no notification, nothing users see), so GitHub's advice of a second between
 * content-creating requests (@octokit/plugin-throttling's default pace) does not bind it; what does
 * is the points budget of GitHub's secondary rate limits (about 900 points a minute for REST, a
 * write costs 5, so at most ~180 JIT configs a minute). 120 writes (600 points) in any minute leaves
 * a third of the budget for the reads that go with them (one still-queued check per job, the
 * reconcile loops). The window slides (WriteWindow): a burst of up to 120 jobs is registered at
 * once, and a longer one goes on at the pace its first writes leave the window. A rate-limit answer
 * (403/429) is waited out as GitHub says: the plugin retries the refused call after the wait, and
 * the installation's writes wait with it.
 */
export const DEFAULT_WRITES_PER_MINUTE = 120;

/** What @octokit/plugin-throttling calls on its `throttle.write` group (a Bottleneck.Group's shape). */
export interface WriteGate {
  key(id: string): { schedule<T>(options: { priority?: number }, fn: () => T | PromiseLike<T>): Promise<T> };
}

/**
 * When writes may start, per key (installation): at most `max` starts in any `windowMs`, none while
 * the key is paused (GitHub said to wait), first come first served except `priority: 0` (the
 * throttling plugin's retry of a refused call), which goes first.
 *
 * A sliding window, so a burst of demand registers its runners at once and the budget still holds
 * over every window. Bottleneck (which the throttling plugin uses) offers a minimum gap (no burst),
 * a reservoir refreshed per fixed window (twice the budget across a window boundary) or a token
 * bucket (a burst allowance lowers the sustained rate under the same budget); none gives both.
 */
export class WriteWindow implements WriteGate {
  readonly #keys = new Map<string, KeyWindow>();
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
      this.#keys.set(id, k);
    }
    return k;
  }

  /** No write of `id` starts for `ms` from now (a longer pause already set stands). */
  pause(id: string, ms: number): void {
    this.key(id).pause(Date.now() + ms);
  }
}

class KeyWindow {
  readonly #max: number;
  readonly #windowMs: number;
  /** Start times within the last window, oldest first. */
  readonly #starts: number[] = [];
  readonly #waiting: Array<() => void> = [];
  #pausedUntil = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(max: number, windowMs: number) {
    this.#max = max;
    this.#windowMs = windowMs;
  }

  async schedule<T>(options: { priority?: number }, fn: () => T | PromiseLike<T>): Promise<T> {
    await new Promise<void>((resolve) => {
      if (options.priority === 0) this.#waiting.unshift(resolve);
      else this.#waiting.push(resolve);
      this.#pump();
    });
    return fn();
  }

  pause(until: number): void {
    this.#pausedUntil = Math.max(this.#pausedUntil, until);
    this.#pump();
  }

  /** Starts what may start now, and sets one timer for when the next may. */
  #pump(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const now = Date.now();
    while (this.#starts.length > 0 && this.#starts[0]! <= now - this.#windowMs) this.#starts.shift();
    while (this.#waiting.length > 0) {
      const full = this.#starts.length >= this.#max;
      const at = Math.max(this.#pausedUntil, full ? this.#starts[0]! + this.#windowMs : now);
      if (at > now) {
        this.#timer = setTimeout(() => this.#pump(), at - now);
        return;
      }
      this.#starts.push(now);
      this.#waiting.shift()!();
    }
  }
}
