/**
 * The GitHub client's call schedulers (src/github/request-gates.ts), which take the places of the
 * throttling plugin's Bottleneck retry limiter and global group: places per key, order, retries.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { NotSentError } from "../../src/errors.ts";
import { ConcurrencyGroup, RetryScheduler } from "../../src/github/request-gates.ts";

/** A promise and its resolver, for calls that end when the test says. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

test("a concurrency gate runs max calls of a key at once; the next starts when one ends, in order; other keys and retries do not wait", async () => {
  const group = new ConcurrencyGroup(2);
  const gate = group.key("installation-1");
  const ends = [deferred(), deferred(), deferred(), deferred()];
  const started: number[] = [];
  const calls = ends.map((end, i) =>
    gate.schedule({}, async (n: number) => {
      started.push(n);
      await end.promise;
      return n * 10;
    }, i),
  );
  await Promise.resolve();
  assert.deepEqual(started, [0, 1], "two at once, started without a timer turn");
  assert.equal(gate.running, 2);
  assert.equal(gate.waiting, 2);

  // Another key has its own places; a retry (weight 0) takes none and does not wait.
  assert.equal(await group.key("installation-2").schedule({}, () => "other"), "other");
  assert.equal(await gate.schedule({ priority: 0, weight: 0 }, () => "retry"), "retry");

  ends[1]!.resolve();
  assert.equal(await calls[1], 10);
  await Promise.resolve();
  assert.deepEqual(started, [0, 1, 2], "the first waiting call takes the place");
  assert.equal(gate.running, 2);

  ends[0]!.resolve();
  ends[2]!.resolve();
  ends[3]!.resolve();
  assert.deepEqual(await Promise.all(calls), [0, 10, 20, 30]);
  assert.equal(gate.running, 0);
  assert.equal(gate.waiting, 0);
});

test("a call that fails gives its place back", async () => {
  const gate = new ConcurrencyGroup(1).key("k");
  await assert.rejects(gate.schedule({}, () => Promise.reject(new Error("refused"))), /refused/);
  await assert.rejects(gate.schedule({}, () => {
    throw new Error("thrown");
  }), /thrown/);
  assert.equal(await gate.schedule({}, () => "next"), "next");
  assert.equal(gate.running, 0);
});

test("a gate's checks: `before` runs for every call, with the gate's key; `afterWait` only for a call that waited for its place, and for a retry", async () => {
  const checked: string[] = [];
  const group = new ConcurrencyGroup(1, {
    before: async (key) => void checked.push(`before ${key}`),
    afterWait: async (key) => void checked.push(`afterWait ${key}`),
  });
  const gate = group.key("installation-1");
  const end = deferred();
  const first = gate.schedule({}, () => end.promise);
  const queued = gate.schedule({}, () => "queued");
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(checked, ["before installation-1"], "the first call started at once: no afterWait");
  end.resolve();
  await first;
  assert.equal(await queued, "queued");
  assert.deepEqual(checked, ["before installation-1", "before installation-1", "afterWait installation-1"]);
  checked.length = 0;
  assert.equal(await gate.schedule({ priority: 0, weight: 0 }, () => "retry"), "retry");
  assert.deepEqual(checked, ["before installation-1", "afterWait installation-1"], "a retry takes no place, and is checked again");

  // A check that fails is the call's failure, and the place passes on.
  const failing = new ConcurrencyGroup(1, { afterWait: () => Promise.reject(new NotSentError("GitHub call")) }).key("k");
  const hold = deferred();
  const held = failing.schedule({}, () => hold.promise);
  const refused = failing.schedule({}, () => "sent");
  hold.resolve();
  await held;
  await assert.rejects(refused, NotSentError);
  assert.equal(failing.running, 0);
});

test("the retry scheduler runs a failed call again, with its arguments, after the wait its handler names; without one the failure stands", async () => {
  const retries = new RetryScheduler();
  const seen: { message: string; args: unknown[]; retryCount: number }[] = [];
  retries.on("failed", (err, info) => {
    seen.push({ message: (err as Error).message, args: info.args, retryCount: info.retryCount });
    return (err as Error).message === "limited" && info.retryCount < 2 ? 20 : undefined;
  });
  let attempts = 0;
  const t0 = Date.now();
  const result = await retries.schedule(async (a: string, b: number) => {
    attempts++;
    if (attempts < 3) throw new Error("limited");
    return `${a}${b}`;
  }, "x", 1);
  assert.equal(result, "x1");
  assert.equal(attempts, 3);
  assert.ok(Date.now() - t0 >= 38, "waited twice as told");
  assert.deepEqual(seen, [
    { message: "limited", args: ["x", 1], retryCount: 0 },
    { message: "limited", args: ["x", 1], retryCount: 1 },
  ]);

  // Not a rate limit: the handler answers nothing, and the call's own error is the caller's.
  await assert.rejects(retries.schedule(() => Promise.reject(new Error("gone"))), /gone/);
  // A handler that fails cannot ask for a retry either.
  const failing = new RetryScheduler();
  failing.on("failed", () => Promise.reject(new Error("handler broke")));
  await assert.rejects(failing.schedule(() => Promise.reject(new Error("own"))), /own/);
});

test("closed, the retry scheduler fails a call waiting for its retry at once with NotSentError, leaves no timer, and sends nothing more", async () => {
  const retries = new RetryScheduler();
  retries.on("failed", () => 60_000);
  let attempts = 0;
  const call = retries.schedule(async () => {
    attempts++;
    throw new Error("limited");
  });
  while (attempts === 0) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
  const timersBefore = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  retries.close();
  await assert.rejects(call, (err) => err instanceof NotSentError);
  assert.equal(attempts, 1);
  assert.equal(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length, timersBefore - 1, "the 60 s wait's timer is gone");
  await assert.rejects(retries.schedule(() => "never"), (err) => err instanceof NotSentError);
});

test("a call refused while its client closes is not waited for: NotSentError at once, no timer", async () => {
  const retries = new RetryScheduler();
  retries.on("failed", () => 60_000);
  let refuse!: () => void;
  const call = retries.schedule(() => new Promise((_, reject) => (refuse = () => reject(new Error("limited")))));
  await Promise.resolve();
  retries.close();
  const timersBefore = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  refuse();
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length, timersBefore, "no 60 s wait began");
  const outcome = await Promise.race([call.then(() => "answered", (err: unknown) => err), new Promise((r) => setTimeout(r, 5_000, "still waiting").unref())]);
  assert.ok(outcome instanceof NotSentError, `expected NotSentError at once, got ${String(outcome)}`);
});
