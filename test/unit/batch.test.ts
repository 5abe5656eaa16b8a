/**
 * The two helpers the ingest path uses to keep Redis writes off and out of each delivery's way:
 * TurnBatch (calls of one event-loop turn go out together, each answered for itself) and
 * BestEffortWrites (bookkeeping not awaited, but bounded).
 */
import assert from "node:assert/strict";
import { setImmediate as nextTurn } from "node:timers/promises";
import { test } from "node:test";
import { TurnBatch } from "../../src/batch.ts";
import { BestEffortWrites } from "../../src/ingress/best-effort.ts";

test("calls of one turn run as one batch, in call order, and each gets its own result or error", async () => {
  const batches: number[][] = [];
  const batch = new TurnBatch<number, string>(async (inputs) => {
    batches.push(inputs);
    return inputs.map((i) => (i === 3 ? new Error(`no ${i}`) : `got ${i}`));
  });
  const first = [1, 2, 3, 4].map((i) => batch.call(i).then((v) => v, (e: Error) => e.message));
  assert.deepEqual(await Promise.all(first), ["got 1", "got 2", "no 3", "got 4"]);
  // A call in a later turn is a batch of its own.
  assert.equal(await batch.call(5), "got 5");
  assert.deepEqual(batches, [[1, 2, 3, 4], [5]]);
});

test("a batch that throws rejects every call of it, and the next turn starts afresh", async () => {
  let fail = true;
  const batch = new TurnBatch<number, number>(async (inputs) => {
    if (fail) throw new Error("redis went away");
    return inputs.map((i) => i * 10);
  });
  const failed = await Promise.allSettled([batch.call(1), batch.call(2)]);
  assert.deepEqual(failed.map((r) => r.status), ["rejected", "rejected"]);
  assert.equal((failed[0] as PromiseRejectedResult).reason.message, "redis went away");
  fail = false;
  assert.deepEqual(await Promise.all([batch.call(3), batch.call(4)]), [30, 40]);
});

test("a batch holds at most `max` calls; the rest go in the next one", async () => {
  const sizes: number[] = [];
  const batch = new TurnBatch<number, number>(async (inputs) => {
    sizes.push(inputs.length);
    return inputs;
  }, 3);
  const out = await Promise.all([1, 2, 3, 4, 5, 6, 7].map((i) => batch.call(i)));
  assert.deepEqual(out, [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(sizes, [3, 3, 1]);
});

test("best-effort writes are not waited for below the limit, waited for above it, and never reject", async () => {
  const errors: string[] = [];
  const writes = new BestEffortWrites(2, (err) => errors.push((err as Error).message));
  const gates: Array<() => void> = [];
  const held = () => new Promise<void>((resolve) => gates.push(resolve));
  assert.equal(writes.start(held), undefined);
  assert.equal(writes.start(held), undefined);
  const third = writes.start(held);
  assert.ok(third instanceof Promise, "the write past the limit is handed back to wait for");
  assert.equal(writes.inFlight, 3);
  let thirdDone = false;
  void third.then(() => (thirdDone = true));
  await nextTurn();
  assert.equal(thirdDone, false, "it settles with its own write, not before");
  for (const open of gates) open();
  await third;
  assert.equal(writes.inFlight, 0);

  // Failures, thrown or rejected, go to onError; the caller's promise still resolves.
  assert.equal(writes.start(async () => Promise.reject(new Error("lpush failed"))), undefined);
  void writes.start(() => {
    throw new Error("thrown at once");
  });
  await nextTurn();
  assert.deepEqual(errors.sort(), ["lpush failed", "thrown at once"]);
  assert.equal(writes.inFlight, 0);
});
