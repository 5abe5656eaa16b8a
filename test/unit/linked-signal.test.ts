/**
 * linkedSignal (src/timers.ts), which stands in for AbortSignal.any where a source lives long: it
 * aborts with its source's reason, or at its time limit with a TimeoutError, and once disposed,
 * aborted or timed out it holds no listener on any source (AbortSignal.any's composites stay
 * recorded on their sources for good on Node 20).
 */
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { test } from "node:test";
import { linkedSignal } from "../../src/timers.ts";

test("aborts with the first source's reason, then lets go of every source", () => {
  const a = new AbortController();
  const b = new AbortController();
  const linked = linkedSignal([a.signal, undefined, b.signal]);
  assert.equal(getEventListeners(a.signal, "abort").length, 1);
  assert.equal(getEventListeners(b.signal, "abort").length, 1);
  a.abort(new Error("stopping"));
  assert.equal(linked.signal.aborted, true);
  assert.equal((linked.signal.reason as Error).message, "stopping");
  assert.equal(getEventListeners(a.signal, "abort").length, 0);
  assert.equal(getEventListeners(b.signal, "abort").length, 0, "the other source let go too");
});

test("a source aborted already aborts it at once; disposed, it no longer follows its sources", () => {
  const gone = new AbortController();
  gone.abort("before");
  assert.equal(linkedSignal([gone.signal]).signal.reason, "before");

  const long = new AbortController();
  for (let i = 0; i < 1000; i++) linkedSignal([long.signal], 60_000).dispose();
  assert.equal(getEventListeners(long.signal, "abort").length, 0, "a thousand links made and let go: none left on the long-lived signal");
  const kept = linkedSignal([long.signal]);
  kept.dispose();
  long.abort();
  assert.equal(kept.signal.aborted, false);
});

test("many links on one long-lived signal at once (calls in flight) raise no listener-leak warning", async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on("warning", onWarning);
  try {
    const long = new AbortController();
    const links = Array.from({ length: 50 }, () => linkedSignal([long.signal]));
    assert.equal(getEventListeners(long.signal, "abort").length, 50);
    await new Promise((r) => setImmediate(r));
    for (const l of links) l.dispose();
  } finally {
    process.off("warning", onWarning);
  }
  assert.deepEqual(warnings, []);
});

test("the time limit aborts it with a TimeoutError and lets go of its sources", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const long = new AbortController();
  const linked = linkedSignal([long.signal], 30_000);
  t.mock.timers.tick(29_999);
  assert.equal(linked.signal.aborted, false);
  t.mock.timers.tick(1);
  assert.equal(linked.signal.aborted, true);
  assert.equal((linked.signal.reason as DOMException).name, "TimeoutError");
  assert.equal(getEventListeners(long.signal, "abort").length, 0);
});
