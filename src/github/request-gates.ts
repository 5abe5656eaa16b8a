import { NotSentError } from "../errors.ts";

/*
 * @octokit/plugin-throttling sends every call through two Bottleneck schedulers: its retry limiter
 * (which repeats a rate-limited call after GitHub's wait) and its global group (at most
 * `github.concurrentCalls` calls of one installation at a time). Bottleneck's local datastore
 * takes a timer turn for each of its steps: about 4.5 ms a scheduler here, 9 ms on every GitHub
 * call, on the critical path of every runner launch. The plugin takes its schedulers from its
 * options (`retryLimiter`, `global`, `auth`, as it takes `write`); the two classes below do the
 * same jobs with no timer between a call and its start. The plugin still decides what is rate
 * limited and how long to wait.
 */

/**
 * The plugin's options that put these schedulers in place of its Bottleneck ones: `global` (calls),
 * `auth` (token requests) and `retryLimiter`. They are outside the plugin's types; it reads them at
 * runtime all the same, assigning its options over its defaults.
 */
export function throttleSchedulers(s: { global: ConcurrencyGroup; auth: ConcurrencyGroup; retryLimiter: RetryScheduler }): object {
  return { global: s.global, auth: s.auth, retryLimiter: s.retryLimiter };
}

/** What the plugin passes a `failed` handler: the error and the scheduled call's arguments. */
export interface FailedInfo {
  args: unknown[];
  retryCount: number;
}

/** Says in how many ms to run the failed call again, or nothing to give up on it. */
export type FailedHandler = (error: unknown, info: FailedInfo) => unknown;

/**
 * The plugin's `retryLimiter` (a Bottleneck's shape as the plugin uses it): `schedule(fn, ...args)`
 * runs `fn` at once; when it fails, the `failed` handler may answer a wait in ms, after which `fn`
 * runs again with the same arguments, else the failure is the call's. Closed, a call waiting for
 * its retry fails at once with NotSentError (the attempt GitHub refused did nothing), and no timer
 * is left behind.
 */
export class RetryScheduler {
  readonly #handlers: FailedHandler[] = [];
  readonly #waits = new Set<{ timer: NodeJS.Timeout; reject(err: unknown): void }>();
  readonly #own: (err: unknown, args: unknown[]) => boolean;
  #closed = false;

  /**
   * `own` says whether a failure is the scheduled call's own: one that is not (a request the call
   * made along the way, retried by itself already) reaches no handler, and is the call's failure.
   */
  constructor(own: (err: unknown, args: unknown[]) => boolean = () => true) {
    this.#own = own;
  }

  on(event: string, handler: FailedHandler): void {
    if (event === "failed") this.#handlers.push(handler);
  }

  async schedule<T>(fn: (...args: never[]) => T | PromiseLike<T>, ...args: unknown[]): Promise<T> {
    // A schedule is a fresh call. The plugin counts a call's rate-limit retries on its request
    // function (args[1]), the same function each time our client's own retries (#send, after a
    // 5xx) send the call again: a count carried over would take the retry for one of the plugin's
    // (weight 0, past the calls-at-once limit) and leave it fewer rate-limit retries.
    const request = args[1] as { retryCount?: number } | undefined;
    if (request && (typeof request === "function" || typeof request === "object")) request.retryCount = 0;
    for (let retryCount = 0; ; retryCount++) {
      if (this.#closed) throw new NotSentError("GitHub call");
      try {
        return await (fn as (...a: unknown[]) => T | PromiseLike<T>)(...args);
      } catch (err) {
        const waitMs = await this.#retryAfter(err, { args, retryCount });
        if (waitMs === undefined) throw err;
        await this.#wait(waitMs);
      }
    }
  }

  /** Fails every call waiting for its retry, and any scheduled later, with NotSentError. */
  close(): void {
    this.#closed = true;
    for (const w of this.#waits) {
      clearTimeout(w.timer);
      w.reject(new NotSentError("GitHub call"));
    }
    this.#waits.clear();
  }

  async #retryAfter(err: unknown, info: FailedInfo): Promise<number | undefined> {
    if (!this.#own(err, info.args)) return undefined;
    for (const handler of this.#handlers) {
      let answer: unknown;
      try {
        answer = await handler(err, info);
      } catch {
        // A handler that fails cannot ask for a retry: the call's own failure stands.
        continue;
      }
      if (typeof answer === "number" && Number.isFinite(answer)) return Math.max(0, answer);
    }
    return undefined;
  }

  #wait(ms: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      // Refused while the client closed: it is not sent again.
      if (this.#closed) {
        reject(new NotSentError("GitHub call"));
        return;
      }
      const w = {
        timer: setTimeout(() => {
          this.#waits.delete(w);
          resolve();
        }, ms),
        reject,
      };
      this.#waits.add(w);
    });
  }
}

/**
 * Calls of one installation a process has out at once, by default (`github.concurrentCalls`).
 * GitHub refuses more than 100 at once (a secondary rate limit, which every process calling for
 * the installation shares): 25 lets half a burst's JIT configs and still-queued checks go out
 * together (each mostly waits for GitHub's answer), and four workers at full tilt stay within
 * about that limit (a retry after a rate-limit wait takes no place, and installation token
 * requests and the App's own calls have gates of their own). The throttling plugin's default is 10.
 */
export const DEFAULT_CONCURRENT_CALLS = 25;

/** Options the plugin passes with each call: a retry has priority 0 and weight 0. */
interface GateOptions {
  priority?: number;
  weight?: number;
}

/**
 * What a gate checks before a call starts (each a failure of which is the call's), given the gate's
 * key (the installation's throttle id):
 * - `before`: every call, once it has its place;
 * - `afterWait`: only a call that waited for its place, and a retry (which takes none). What its
 *   caller checked before the call came to the gate (GitHub's wait, say) may have changed while it
 *   waited: a call that starts at once was checked a moment ago and pays nothing more.
 */
export interface GateChecks {
  before?: (key: string) => Promise<void>;
  afterWait?: (key: string) => Promise<void>;
}

/**
 * The plugin's `global` and `auth` groups (a Bottleneck.Group's shape as the plugin uses it): per
 * key, at most `max` calls running; more wait in order of arrival and start as soon as one ends.
 * A retry (weight 0, as the plugin schedules it) runs at once and takes no place, as in Bottleneck.
 */
export class ConcurrencyGroup {
  readonly #max: number;
  readonly #keys = new Map<string, ConcurrencyGate>();
  readonly #checks: GateChecks;

  constructor(max: number, checks: GateChecks = {}) {
    if (!(max >= 1)) throw new RangeError(`a concurrency gate needs max >= 1 (got ${max})`);
    this.#max = max;
    this.#checks = checks;
  }

  key(id: string): ConcurrencyGate {
    let gate = this.#keys.get(id);
    if (!gate) {
      gate = new ConcurrencyGate(this.#max, id, this.#checks);
      this.#keys.set(id, gate);
    }
    return gate;
  }
}

export class ConcurrencyGate {
  readonly #max: number;
  readonly #key: string;
  readonly #checks: GateChecks;
  readonly #waiting: (() => void)[] = [];
  #running = 0;

  constructor(max: number, key: string, checks: GateChecks = {}) {
    this.#max = max;
    this.#key = key;
    this.#checks = checks;
  }

  /** Calls running now, and calls waiting for a place. */
  get running(): number {
    return this.#running;
  }
  get waiting(): number {
    return this.#waiting.length;
  }

  async schedule<T>(options: GateOptions, fn: (...args: never[]) => T | PromiseLike<T>, ...args: unknown[]): Promise<T> {
    const call = () => (fn as (...a: unknown[]) => T | PromiseLike<T>)(...args);
    if (options.weight === 0) return this.#run(true, call);
    const waited = this.#running >= this.#max;
    if (waited) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    else this.#running++;
    try {
      return await this.#run(waited, call);
    } finally {
      // The place passes straight to the next call waiting, if any.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }

  async #run<T>(waited: boolean, call: () => T | PromiseLike<T>): Promise<T> {
    const { before, afterWait } = this.#checks;
    if (before) await before(this.#key);
    if (waited && afterWait) await afterWait(this.#key);
    return call();
  }
}
