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
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
    timer.unref();
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * Waits for `p` at most `ms`; past that, resolves undefined and leaves `p` to go on (a rejection
 * of it then goes unheard). For best-effort steps whose effect comes about anyway in time: a
 * lease or a place handed back to Redis also lapses by itself.
 */
export function atMost<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
    timer.unref();
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
