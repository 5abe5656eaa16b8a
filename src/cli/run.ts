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
 * Runs until SIGTERM or SIGINT, or until the worker is drained, then closes `running`. Resolves
 * to the exit code: 0 once everything closed, EXIT_SHUTDOWN_INCOMPLETE when the close failed (a
 * supervisor must not take that for a clean stop). A second signal exits 1 at once.
 */
export function runUntilStopped(
  running: Stoppable,
  logger: Logger,
  signals: NodeJS.EventEmitter = process,
  exitNow: (code: number) => void = (code) => process.exit(code),
): Promise<number> {
  return new Promise<number>((resolve) => {
    const stop = () =>
      running.close().then(
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
      logger.info({ signal }, "shutting down: no new demand, finishing in-flight launches");
      void stop();
    };
    signals.on("SIGTERM", onSignal);
    signals.on("SIGINT", onSignal);
    void running.drained.then(() => {
      logger.info("drained: every job on this host finished; exiting");
      void stop();
    });
  });
}
