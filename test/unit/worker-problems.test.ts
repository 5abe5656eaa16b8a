/** The worker's problems (src/worker/unready.ts): each cleared by its own success or lapsing, none by another's. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { PROBLEM_LASTS_MS, Problems, UNREADY } from "../../src/worker/unready.ts";

test("one thing's success clears its own problem only: a launch that succeeds leaves the host loop's failure standing", () => {
  const problems = new Problems();
  assert.equal(problems.note("host", { reason: UNREADY.hostLoop, detail: "list failed" }), true);
  assert.equal(problems.note("launch:a", { reason: UNREADY.launches, detail: "create failed" }), true);
  assert.deepEqual(problems.reasons(), [UNREADY.hostLoop, UNREADY.launches], "the longest standing first");
  problems.clear("launch:a");
  assert.deepEqual(problems.reasons(), [UNREADY.hostLoop]);
  problems.clear("launch:b");
  problems.clear("host");
  assert.deepEqual(problems.reasons(), []);
});

test("two pools failing the same way give one reason, which stays while either fails", () => {
  const problems = new Problems();
  problems.note("demand:a", { reason: UNREADY.takingDemand, detail: "taking demand for pool a failed" });
  problems.note("demand:b", { reason: UNREADY.takingDemand, detail: "taking demand for pool b failed" });
  assert.deepEqual(problems.reasons(), [UNREADY.takingDemand]);
  problems.clear("demand:a");
  assert.deepEqual(problems.reasons(), [UNREADY.takingDemand], "pool b still fails");
  problems.clear("demand:b");
  assert.deepEqual(problems.reasons(), []);
});

test("a failure that nothing follows lapses PROBLEM_LASTS_MS after it was last noted; one noted again lasts from then", () => {
  let now = 1_000_000;
  const problems = new Problems({ now: () => now });
  problems.note("launch:a", { reason: UNREADY.launches, detail: "GitHub refused the JIT config" });
  now += 1000;
  problems.note("limit:a", { reason: UNREADY.poolLimit, detail: "pool limit check failed" });
  now += PROBLEM_LASTS_MS - 1001;
  assert.deepEqual(problems.reasons(), [UNREADY.launches, UNREADY.poolLimit]);
  // Failing again, with the same words: not worth a new log line, and it lasts from now.
  assert.equal(problems.note("launch:a", { reason: UNREADY.launches, detail: "GitHub refused the JIT config" }), false);
  now += 1001;
  assert.deepEqual(problems.reasons(), [UNREADY.launches], "the limit check's lapsed");
  now += PROBLEM_LASTS_MS - 1002;
  assert.deepEqual(problems.reasons(), [UNREADY.launches], "kept from its last failure");
  now += 1;
  assert.deepEqual(problems.reasons(), []);
  assert.equal(problems.note("launch:a", { reason: UNREADY.launches, detail: "GitHub refused the JIT config" }), true, "after it lapsed, worth a log line again");
});

test("new words for the same key are worth a log line; the same words are not", () => {
  const problems = new Problems();
  assert.equal(problems.note("host", { reason: UNREADY.hostLoop, detail: "list failed: 500" }), true);
  assert.equal(problems.note("host", { reason: UNREADY.hostLoop, detail: "list failed: 500" }), false);
  assert.equal(problems.note("host", { reason: UNREADY.hostLoop, detail: "list failed: timeout" }), true);
  assert.equal(problems.note("launch:a", { reason: UNREADY.launches, detail: "list failed: timeout" }), true, "another key's words are its own");
});
