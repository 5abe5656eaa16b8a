import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";

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
 * hold an earlier process of its host id left to lapse) waits for the start to end, to stop then
 * as after any start. A start still going after that has taken no demand: the process exits 1.
 */
export const START_STOP_WAIT_MS = 10_000;

/**
 * Runs until SIGTERM or SIGINT, or until the worker is drained, then closes what `starting`
 * resolves to. The signals are heard from the moment this is called, the start included: in a
 * container this process is PID 1, where a signal nothing listens for is ignored (a `docker stop`
 * would wait its whole grace period for the SIGKILL). Resolves to the exit code: 0 once everything
 * closed, EXIT_SHUTDOWN_INCOMPLETE when the close failed (a supervisor must not take that for a
 * clean stop) or the start did not end within START_STOP_WAIT_MS of the stop. A second signal
 * exits 1 at once. Rejects with the start's error when the start fails.
 */
export function runUntilStopped(
  starting: Stoppable | Promise<Stoppable>,
  logger: Logger,
  signals: NodeJS.EventEmitter = process,
  exitNow: (code: number) => void = (code) => process.exit(code),
  startWaitMs: number = START_STOP_WAIT_MS,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let running: Stoppable | undefined;
    let stopAsked = false;
    let startWait: NodeJS.Timeout | undefined;
    const stop = (r: Stoppable) =>
      r.close().then(
        () => resolve(0),
        (err) => {
          logger.error({ err: errorMessage(err) }, "shutdown incomplete");
          resolve(EXIT_SHUTDOWN_INCOMPLETE);
        },
      );
    let count = 0;
    const onSignal = (signal: string) => {
      if (++count > 1) {
        logger.warn({ signal }, "second signal: exiting now");
        exitNow(1);
        return;
      }
      if (running) {
        logger.info({ signal }, "shutting down: no new demand, finishing in-flight launches");
        void stop(running);
        return;
      }
      stopAsked = true;
      logger.info({ signal, waitSeconds: startWaitMs / 1000 }, "shutting down once started (a second signal exits now)");
      startWait = setTimeout(() => {
        logger.warn({ signal }, "still starting: exiting without a stop (nothing was taken yet)");
        exitNow(EXIT_SHUTDOWN_INCOMPLETE);
      }, startWaitMs);
    };
    signals.on("SIGTERM", onSignal);
    signals.on("SIGINT", onSignal);
    Promise.resolve(starting).then(
      (r) => {
        running = r;
        clearTimeout(startWait);
        if (stopAsked) {
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
        reject(err);
      },
    );
  });
}
