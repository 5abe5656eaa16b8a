/**
 * How `jitrunner server|worker|all` ends (src/cli/run.ts): exit 0 once a stop (SIGTERM, SIGINT,
 * or the end of a drain) closed everything, 1 when the close failed ("shutdown incomplete"), so
 * a supervisor (systemd's Restart=on-failure, an orchestrator) does not take it for a clean stop.
 */
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { Writable } from "node:stream";
import { test } from "node:test";
import { pino } from "pino";
import { EXIT_SHUTDOWN_INCOMPLETE, runUntilStopped } from "../../src/cli/run.ts";

function logged(): { logger: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { logger: pino({ level: "info" }, sink), lines };
}

const never = new Promise<void>(() => undefined);

test("SIGTERM with a close that completes: exit 0", async () => {
  const signals = new EventEmitter();
  const { logger } = logged();
  let closes = 0;
  const code = runUntilStopped({ drained: never, close: async () => void closes++ }, logger, signals, () => assert.fail("no forced exit"));
  signals.emit("SIGTERM", "SIGTERM");
  assert.equal(await code, 0);
  assert.equal(closes, 1);
});

test("SIGTERM with a close that fails: 'shutdown incomplete' and exit 1, not 0", async () => {
  const signals = new EventEmitter();
  const { logger, lines } = logged();
  const code = runUntilStopped({ drained: never, close: () => Promise.reject(new Error("redis gone")) }, logger, signals, () => assert.fail("no forced exit"));
  signals.emit("SIGTERM", "SIGTERM");
  assert.equal(await code, EXIT_SHUTDOWN_INCOMPLETE);
  assert.equal(EXIT_SHUTDOWN_INCOMPLETE, 1);
  assert.ok(lines.some((l) => l.includes("shutdown incomplete") && l.includes("redis gone")), lines.join(""));
});

test("a drained worker whose close fails exits 1 as well", async () => {
  const { logger } = logged();
  const code = runUntilStopped({ drained: Promise.resolve(), close: () => Promise.reject(new Error("engine gone")) }, logger, new EventEmitter());
  assert.equal(await code, EXIT_SHUTDOWN_INCOMPLETE);
});

test("a second signal exits 1 at once, without waiting for the close", async () => {
  const signals = new EventEmitter();
  const { logger } = logged();
  const forced: number[] = [];
  void runUntilStopped({ drained: never, close: () => never }, logger, signals, (c) => forced.push(c));
  signals.emit("SIGTERM", "SIGTERM");
  signals.emit("SIGINT", "SIGINT");
  assert.deepEqual(forced, [1]);
});
