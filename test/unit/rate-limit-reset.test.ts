/**
 * GitHub's `x-ratelimit-reset` put on this host's clock (src/github/rate-limit-reset.ts), which
 * @octokit/plugin-throttling then reads against Date.now().
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { resetOnHostClock } from "../../src/github/rate-limit-reset.ts";

/** The primary wait @octokit/plugin-throttling 11 computes from a reset (seconds). */
const pluginWait = (reset: number, now: number): number => Math.max(Math.ceil((reset * 1000 - now) / 1000) + 1, 0);

test("a reset on GitHub's clock moves by the offset: a host 30 s ahead waits until GitHub's reset", () => {
  const hostNow = 1_700_000_000_250;
  const githubNow = hostNow - 30_000;
  const reset = Math.ceil(githubNow / 1000) + 3;
  assert.equal(pluginWait(reset, hostNow), 0, "unmoved, the plugin would not wait at all");
  const moved = resetOnHostClock(reset, githubNow - hostNow, hostNow);
  assert.equal(moved, reset + 30);
  assert.equal(pluginWait(moved, hostNow), 5, "GitHub's 3.75 s, rounded up, and the plugin's extra second");
  // A host 60 s behind GitHub's clock: the reset comes 60 s sooner on its own.
  const resetAhead = Math.ceil((hostNow + 60_000) / 1000) + 3;
  assert.equal(resetOnHostClock(resetAhead, 60_000, hostNow), resetAhead - 60);
  assert.equal(pluginWait(resetAhead - 60, hostNow), 5);
});

test("a reset already past (or a wait rounded to nothing) still waits at least 1 s", () => {
  for (const hostNow of [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_999]) {
    for (const reset of [0, 1_600_000_000, Math.floor(hostNow / 1000) - 1]) {
      const wait = pluginWait(resetOnHostClock(reset, 0, hostNow), hostNow);
      assert.ok(wait >= 1 && wait <= 2, `reset ${reset} at ${hostNow}: waits ${wait} s`);
    }
  }
});
