import assert from "node:assert/strict";
import { test } from "node:test";
import { LogThrottle } from "../../src/log-throttle.ts";

test("a throttled line goes out once per key per window, saying how many happened since; keys are bounded", () => {
  let now = 0;
  const t = new LogThrottle({ windowMs: 1000, maxKeys: 2, now: () => now });
  assert.equal(t.pass("a"), 1);
  assert.equal(t.pass("a"), undefined);
  assert.equal(t.pass("a"), undefined);
  assert.equal(t.pass("b"), 1, "another key has its own window");
  now = 999;
  assert.equal(t.pass("a"), undefined);
  assert.equal(t.pass("c"), undefined, "full, every window open: a new key is held back");
  now = 1000;
  assert.equal(t.pass("a"), 4, "the window passed: this one and the three held back");
  assert.equal(t.pass("a"), undefined);
  assert.equal(t.pass("c"), 1, "b's window passed: dropped, c takes its place");
});
