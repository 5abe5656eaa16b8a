/**
 * What a demand item that ran out of launch attempts keeps in Redis (src/queue/demand-queue.ts):
 * one stack trace, not one per attempt, and only the newest FAILED_ITEMS_KEPT failed items a pool.
 * An item dropped past that cap is as if never added: the reconciler's add (a job GitHub still
 * lists as queued) adds it again with fresh attempts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { demandIdOf, type Demand } from "../../src/demand.ts";
import { DemandConsumer, DemandQueues, FAILED_ITEMS_KEPT, redisConnection, type QueueSettings } from "../../src/queue/demand-queue.ts";
import { waitFor } from "../helpers/process.ts";
import { redisForFile } from "../helpers/redis.ts";

const shared = redisForFile();

function demand(pool: string, jobId: number): Demand {
  return { pool, jobId, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 7, labels: ["self-hosted"], receivedAt: Date.now(), deliveryId: `d-${jobId}` };
}

/** Leases the pool's demand and fails it `times` times (the last one final when `final`). */
async function failLaunches(settings: QueueSettings, pool: string, times: number, final = false, message = (n: number) => `launch ${n} failed`): Promise<void> {
  const conn = redisConnection(settings.redisUrl);
  const consumer = new DemandConsumer(settings, conn, pool, "host-a:1");
  try {
    await consumer.start();
    for (let n = 1; n <= times; n++) {
      // The backoff between attempts is 2 s, then 4 s.
      const lease = await waitFor(() => consumer.next(), 20_000, `launch attempt ${n}`);
      assert.equal(lease.attempt, n);
      await lease.fail(new Error(message(n)), final && n === times);
    }
  } finally {
    await consumer.close();
    conn.disconnect();
  }
}

test("a demand item that ran out of launch attempts keeps one stack trace: its last attempt's", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 3 };
  const queues = new DemandQueues(settings, conn);
  const d = demand("traces", 1);
  try {
    assert.equal(await queues.add(d), "added");
    await failLaunches(settings, d.pool, 3);
    assert.equal((await queues.ended(d))?.outcome, "failed");
    const item = `${redis.prefix}:bull:demand-${d.pool}:${demandIdOf(d)}`;
    const traces = JSON.parse((await conn.hget(item, "stacktrace")) ?? "[]") as string[];
    assert.equal(traces.length, 1, `stack traces kept: ${traces.length}`);
    assert.match(traces[0]!, /launch 3 failed/);
  } finally {
    await queues.close();
  }
});

test("what a failed item keeps of its error is redacted as the status page's: a credential an engine or proxy echoed is not stored", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 3 };
  const queues = new DemandQueues(settings, conn);
  const d = demand("redacted", 3);
  const token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
  const jitConfig = "eyJydW5uZXIiOiJqaXRydW5uZXItZGVmYXVsdC0wMDAwMDAwMDAxIiwiLmNyZWRlbnRpYWxzIjoiZXcwS0lDQWdJQ0p";
  try {
    assert.equal(await queues.add(d), "added");
    // Final: failed at once, as a refusal for good is.
    await failLaunches(settings, d.pool, 1, true, () => `create container failed: proxy said: Authorization: Bearer ${token}; body {"Env":["ACTIONS_RUNNER_INPUT_JITCONFIG=${jitConfig}"]}`);
    assert.equal((await queues.ended(d))?.outcome, "failed");
    const item = `${redis.prefix}:bull:demand-${d.pool}:${demandIdOf(d)}`;
    const [reason, stack] = await conn.hmget(item, "failedReason", "stacktrace");
    assert.match(reason ?? "", /^create container failed: proxy said: Authorization: .*\[redacted\]/);
    assert.match(stack ?? "", /UnrecoverableError: create container failed/);
    assert.match(stack ?? "", /demand-failed-retention\.test\.ts/, "the stack's frames are kept");
    for (const secret of [token, jitConfig]) assert.ok(!`${reason}${stack}`.includes(secret), `stored: ${reason} ${stack}`);
  } finally {
    await queues.close();
  }
});

test(`a failed item older than the newest ${FAILED_ITEMS_KEPT} of its pool is dropped, and its demand can be added again`, async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 1 };
  const queues = new DemandQueues(settings, conn);
  const d = demand("capped", 2);
  const failedSet = `${redis.prefix}:bull:demand-${d.pool}:failed`;
  const item = `${redis.prefix}:bull:demand-${d.pool}:${demandIdOf(d)}`;
  try {
    // The pool's failed set already holds as many items as are kept, all newer than this one's
    // end will be: only their ids (nothing trims them here, and the prefix goes after the test).
    const later = Date.now() + 3_600_000;
    for (let i = 0; i < FAILED_ITEMS_KEPT; i += 5_000) {
      const members = Array.from({ length: Math.min(5_000, FAILED_ITEMS_KEPT - i) }, (_, k) => [later + i + k, `newer-${i + k}`]).flat();
      await conn.zadd(failedSet, ...members);
    }
    assert.equal(await queues.add(d), "added");
    assert.equal(await conn.exists(item), 1);
    await failLaunches(settings, d.pool, 1, true);

    assert.equal(await conn.zcard(failedSet), FAILED_ITEMS_KEPT, "the failed set stays at its cap");
    assert.equal(await conn.exists(item), 0, "the oldest failed item is gone");
    assert.equal(await queues.ended(d), undefined, "a dropped item has not ended: it is not there");
    // Its job still queued on GitHub, the reconciler adds its demand (it has no item): fresh attempts.
    assert.equal(await queues.add(d), "added");
    assert.equal((await queues.pending([d.pool])).get(d.pool), 1);
  } finally {
    await queues.close();
  }
});
