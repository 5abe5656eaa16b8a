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
