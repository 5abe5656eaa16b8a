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
import { EXIT_SHUTDOWN_INCOMPLETE, REPEATED_SIGNAL_MS, runUntilStopped } from "../../src/cli/run.ts";
import { StartAbortedError } from "../../src/errors.ts";

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
  const code = runUntilStopped(() => ({ drained: never, close: async () => void closes++ }), logger, signals, () => assert.fail("no forced exit"));
  await new Promise((r) => setImmediate(r)); // started
  signals.emit("SIGTERM", "SIGTERM");
  assert.equal(await code, 0);
  assert.equal(closes, 1);
});

test("SIGTERM with a close that fails: 'shutdown incomplete' and exit 1, not 0", async () => {
  const signals = new EventEmitter();
  const { logger, lines } = logged();
  const code = runUntilStopped(() => ({ drained: never, close: () => Promise.reject(new Error("redis gone")) }), logger, signals, () => assert.fail("no forced exit"));
  await new Promise((r) => setImmediate(r));
  signals.emit("SIGTERM", "SIGTERM");
  assert.equal(await code, EXIT_SHUTDOWN_INCOMPLETE);
  assert.equal(EXIT_SHUTDOWN_INCOMPLETE, 1);
  assert.ok(lines.some((l) => l.includes("shutdown incomplete") && l.includes("redis gone")), lines.join(""));
});

test("a drained worker whose close fails exits 1 as well", async () => {
  const { logger } = logged();
  const code = runUntilStopped(() => ({ drained: Promise.resolve(), close: () => Promise.reject(new Error("engine gone")) }), logger, new EventEmitter());
  assert.equal(await code, EXIT_SHUTDOWN_INCOMPLETE);
});

test("a second signal exits 1 at once, without waiting for the close", async () => {
  const signals = new EventEmitter();
  const { logger } = logged();
  const forced: number[] = [];
  void runUntilStopped(() => ({ drained: never, close: () => never }), logger, signals, (c) => forced.push(c));
  await new Promise((r) => setImmediate(r));
  signals.emit("SIGTERM", "SIGTERM");
  signals.emit("SIGINT", "SIGINT");
  assert.deepEqual(forced, [1]);
});

test("the same signal twice at once (a Ctrl-C under npm run start: the terminal's and npm's) is one stop; again later, it exits 1", async (t) => {
  t.mock.timers.enable({ apis: ["Date"], now: 1_000_000 });
  const signals = new EventEmitter();
  const { logger } = logged();
  const forced: number[] = [];
  let closes = 0;
  void runUntilStopped(() => ({ drained: never, close: () => (closes++, never) }), logger, signals, (c) => forced.push(c));
  await new Promise((r) => setImmediate(r));
  signals.emit("SIGINT", "SIGINT");
  signals.emit("SIGINT", "SIGINT");
  assert.deepEqual(forced, [], "the repeat is the same Ctrl-C");
  assert.equal(closes, 1);
  t.mock.timers.tick(REPEATED_SIGNAL_MS);
  signals.emit("SIGINT", "SIGINT");
  assert.deepEqual(forced, [1], "pressed again: exits now");
});

test("a signal while the process starts is heard: the start's signal is aborted, and a start that ends all the same is stopped", async () => {
  const signals = new EventEmitter();
  const { logger, lines } = logged();
  let started!: (s: { drained: Promise<void>; close: () => Promise<void> }) => void;
  let given: AbortSignal | undefined;
  let closes = 0;
  const code = runUntilStopped(
    (signal) => ((given = signal), new Promise((resolve) => (started = resolve))),
    logger,
    signals,
    () => assert.fail("no forced exit"),
  );
  await new Promise((r) => setImmediate(r));
  assert.equal(given?.aborted, false);
  signals.emit("SIGTERM", "SIGTERM");
  assert.equal(given?.aborted, true, "the start is told");
  assert.equal(closes, 0, "nothing to close before the start ends");
  started({ drained: never, close: async () => void closes++ });
  assert.equal(await code, 0);
  assert.equal(closes, 1);
  assert.ok(lines.some((l) => l.includes("shutting down while starting")), lines.join(""));
});

test("a start that gives up for the stop (StartAbortedError) ends the run with 0; one that has not ended within the wait exits 1", async () => {
  const signals = new EventEmitter();
  const { logger, lines } = logged();
  const aborted = runUntilStopped(
    (signal) => new Promise((_, reject) => signal.addEventListener("abort", () => reject(new StartAbortedError()))),
    logger,
    signals,
    () => assert.fail("no forced exit"),
  );
  await new Promise((r) => setImmediate(r));
  signals.emit("SIGINT", "SIGINT");
  assert.equal(await aborted, 0);

  const hung = new EventEmitter();
  const forced: number[] = [];
  void runUntilStopped(() => never as unknown as Promise<never>, logger, hung, (c) => forced.push(c), 50);
  hung.emit("SIGTERM", "SIGTERM");
  assert.deepEqual(forced, [], "not at once: the start may still give up");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(forced, [EXIT_SHUTDOWN_INCOMPLETE]);
  assert.ok(lines.some((l) => l.includes("still starting")), lines.join(""));
});

test("a start that fails otherwise rejects with its error, whether or not a stop was asked for", async () => {
  const { logger } = logged();
  await assert.rejects(runUntilStopped(() => Promise.reject(new Error("port taken")), logger, new EventEmitter()), /port taken/);
  const signals = new EventEmitter();
  let fail!: (err: Error) => void;
  const code = runUntilStopped(() => new Promise<never>((_, reject) => (fail = reject)), logger, signals, () => assert.fail("no forced exit"), 10_000);
  await new Promise((r) => setImmediate(r));
  signals.emit("SIGINT", "SIGINT");
  fail(new Error("redis refused"));
  await assert.rejects(code, /redis refused/);
});
