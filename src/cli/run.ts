import type { Logger } from "pino";
import { errorMessage, StartAbortedError } from "../errors.ts";

/** `server`, `worker` or `all` once started (main.ts `Running`): what a run waits on and stops. */
export interface Stoppable {
  /** Resolves when the worker has been drained (`jitrunner drain`). */
  drained: Promise<void>;
  close(): Promise<void>;
}

/** The exit code of a run whose stop could not close everything (`shutdown incomplete`). */
export const EXIT_SHUTDOWN_INCOMPLETE = 1;

/**
 * How long a stop asked for while the process is still starting (waiting for Redis, or for the
 * hold an earlier process of its host id left to lapse) waits for the start to give up at its next
 * step and undo what it began. A step still going after that: the process exits 1, as a crash
 * would (what it began is recovered as after one: its host hold and any demand lease lapse).
 */
export const START_STOP_WAIT_MS = 10_000;

/** The same signal again within this long is the first one delivered twice, not a second signal. */
export const REPEATED_SIGNAL_MS = 1000;

/**
 * Starts with `start` and runs until SIGTERM or SIGINT, or until the worker is drained, then closes
 * what it started. The signals are heard from the moment this is called, the start included: in a
 * container this process is PID 1, where a signal nothing listens for is ignored (a `docker stop`
 * would wait its whole grace period for the SIGKILL). A signal during the start aborts the
 * signal given to `start` (main.ts StartOptions.signal). Resolves to the exit code: 0 once
 * everything closed (or the start gave up for the stop), EXIT_SHUTDOWN_INCOMPLETE when the close
 * failed (a supervisor must not take that for a clean stop) or the start had not ended
 * START_STOP_WAIT_MS after the signal. A second signal exits 1 at once (the same one within
 * REPEATED_SIGNAL_MS is the first delivered twice, and ignored). Rejects with the start's
 * error when the start fails otherwise.
 */
export function runUntilStopped(
  start: (signal: AbortSignal) => Promise<Stoppable> | Stoppable,
  logger: Logger,
  signals: NodeJS.EventEmitter = process,
  exitNow: (code: number) => void = (code) => process.exit(code),
  startWaitMs: number = START_STOP_WAIT_MS,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const aborting = new AbortController();
    let running: Stoppable | undefined;
    let startWait: NodeJS.Timeout | undefined;
    const stop = (r: Stoppable) =>
      r.close().then(
        () => resolve(0),
        (err) => {
          logger.error({ err: errorMessage(err) }, "shutdown incomplete");
          resolve(EXIT_SHUTDOWN_INCOMPLETE);
        },
      );
    let first: { signal: string; at: number } | undefined;
    const onSignal = (signal: string) => {
      if (first) {
        // One Ctrl-C under `npm run start` can arrive twice: the terminal signals the whole
        // process group and npm forwards it to its child as well. Only a later one, or another
        // signal, is a second.
        if (signal === first.signal && Date.now() - first.at < REPEATED_SIGNAL_MS) return;
        logger.warn({ signal }, "second signal: exiting now");
        exitNow(1);
        return;
      }
      first = { signal, at: Date.now() };
      if (running) {
        logger.info({ signal }, "shutting down: no new demand, finishing in-flight launches");
        void stop(running);
        return;
      }
      logger.info({ signal, waitSeconds: startWaitMs / 1000 }, "shutting down while starting: the start stops at its next step (a second signal exits now)");
      aborting.abort();
      startWait = setTimeout(() => {
        logger.warn({ signal }, "still starting: exiting without a stop");
        exitNow(EXIT_SHUTDOWN_INCOMPLETE);
      }, startWaitMs);
    };
    signals.on("SIGTERM", onSignal);
    signals.on("SIGINT", onSignal);
    Promise.resolve()
      .then(() => start(aborting.signal))
      .then(
        (r) => {
          running = r;
          clearTimeout(startWait);
          // Started all the same (its last step ended as the stop came): stopped as after any start.
          if (aborting.signal.aborted) {
            void stop(r);
            return;
          }
          void r.drained.then(() => {
            logger.info("drained: every job on this host finished; exiting");
            void stop(r);
          });
        },
        (err: unknown) => {
          clearTimeout(startWait);
          if (err instanceof StartAbortedError && aborting.signal.aborted) resolve(0);
          else reject(err);
        },
      );
  });
}
