/**
 * The rate-limit gauge holds an installation's count until its window resets, as GitHub's
 * `x-ratelimit-reset` said: a process that stops calling for an installation (a worker whose
 * burst is over, a leader no longer leading) would otherwise report its last low count for good,
 * and the fleet's alert on the lowest would fire for good.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { Metrics } from "../../src/metrics/metrics.ts";

const series = async (m: Metrics) =>
  (await m.registry.metrics())
    .split("\n")
    .filter((l) => l.startsWith("jitrunner_github_rate_limit_remaining{"))
    .sort();

test("an installation's remaining count is shown until its window resets, then not until the next answer", async () => {
  const m = new Metrics({ processMetrics: false });
  m.githubRateLimitRemaining(1, 300, Date.now() + 3000);
  m.githubRateLimitRemaining(0, 4000, Date.now() + 3600_000);
  m.githubRateLimitRemaining(2, 50);
  assert.deepEqual(await series(m), [
    'jitrunner_github_rate_limit_remaining{installation="0"} 4000',
    'jitrunner_github_rate_limit_remaining{installation="1"} 300',
    'jitrunner_github_rate_limit_remaining{installation="2"} 50',
  ]);
  await sleep(3200);
  assert.deepEqual(
    await series(m),
    ['jitrunner_github_rate_limit_remaining{installation="0"} 4000', 'jitrunner_github_rate_limit_remaining{installation="2"} 50'],
    "installation 1's window has reset: its count is gone; one without a known reset stays",
  );
  m.githubRateLimitRemaining(1, 4999, Date.now() + 3600_000);
  assert.ok((await series(m)).includes('jitrunner_github_rate_limit_remaining{installation="1"} 4999'), "the next answer's count");
});
