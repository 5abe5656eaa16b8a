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
