import { setMaxListeners } from "node:events";

/**
 * Runs `fn` every `ms` after the previous run settles (never two at once), until `stop()`.
 * Timers do not keep the process alive.
 */
export function every(ms: number, fn: () => Promise<void>): { stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const schedule = () => {
    timer = setTimeout(async () => {
      await fn().catch(() => undefined);
      if (!stopped) schedule();
    }, ms);
    timer.unref();
  };
  schedule();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/**
 * `p`, or a rejection with `message` once `ms` have passed, whichever comes first (`p` itself is
 * not stopped). The timer does not keep the process alive.
 */
export function within<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  return raceTimer(p, ms, (_resolve, reject) => reject(new Error(message)));
}

/**
 * Waits for `p` at most `ms`; past that, resolves undefined and leaves `p` to go on (a rejection
 * of it then goes unheard). For best-effort steps whose effect comes about anyway in time: a
 * lease or a place handed back to Redis also lapses by itself.
 */
export function atMost<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  return raceTimer<T | undefined>(p, ms, (resolve) => resolve(undefined));
}

/** `p` against an unref'd timer that, after `ms`, settles the race as `late` says; the timer is cleared either way. */
function raceTimer<T>(p: Promise<T>, ms: number, late: (resolve: (v: T) => void, reject: (err: Error) => void) => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const lateOne = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => late(resolve, reject), ms);
    timer.unref();
  });
  return Promise.race([p, lateOne]).finally(() => clearTimeout(timer));
}

/**
 * A signal that aborts (with the source's reason) once any of `sources` does, or after `ms` when
 * given (with a TimeoutError, as AbortSignal.timeout), and `dispose`, which detaches it from the
 * sources; the time limit detaches it too. In place of AbortSignal.any where a source lives long
 * (a client's or a loop's closing signal, a leader's term) and composites are made per call:
 * Node 20 keeps a record of every composite on its sources for good (nodejs/node#55351), about
 * 90 bytes a call that never come back.
 */
export function linkedSignal(sources: ReadonlyArray<AbortSignal | undefined>, ms?: number): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const attached: Array<[AbortSignal, () => void]> = [];
  let timer: NodeJS.Timeout | undefined;
  const dispose = () => {
    for (const [source, onAbort] of attached.splice(0)) source.removeEventListener("abort", onAbort);
    clearTimeout(timer);
  };
  const abort = (reason: unknown) => {
    dispose();
    controller.abort(reason);
  };
  for (const source of sources) {
    if (!source) continue;
    if (source.aborted) {
      abort(source.reason);
      break;
    }
    const onAbort = () => abort(source.reason);
    // A long-lived source may hold one link per call in flight: no leak warning past 10.
    setMaxListeners(0, source);
    source.addEventListener("abort", onAbort, { once: true });
    attached.push([source, onAbort]);
  }
  if (ms !== undefined && !controller.signal.aborted) {
    timer = setTimeout(() => abort(new DOMException("The operation was aborted due to timeout", "TimeoutError")), ms);
    timer.unref();
  }
  return { signal: controller.signal, dispose };
}
