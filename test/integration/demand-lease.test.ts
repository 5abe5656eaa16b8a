/**
 * A worker's lease on a demand (src/queue/demand-queue.ts, `worker.leaseSeconds`), on a real Redis:
 * its lock lasts the configured time and is renewed while the lease is held; a worker that can no
 * longer renew (its process died) loses it, and another worker's stalled check takes the demand.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import type { Demand } from "../../src/demand.ts";
import { DemandConsumer, DemandQueues, redisConnection, type Lease } from "../../src/queue/demand-queue.ts";
import { waitFor } from "../helpers/process.ts";
import { redisForFile } from "../helpers/redis.ts";

const LEASE_MS = 5_000;
const POOL = "default";

const shared = redisForFile();

function demand(jobId: number): Demand {
  return {
    pool: POOL,
    jobId,
    runId: 1,
    runAttempt: 1,
    owner: "acme",
    repo: "app",
    installationId: 7,
    labels: ["self-hosted"],
    receivedAt: Date.now(),
    deliveryId: `delivery-${jobId}`,
  };
}

test("a lease's lock lasts worker.leaseSeconds and is renewed while held; one no longer renewed goes to another worker, no attempt spent", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 3, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const dyingConn = redisConnection(redis.url);
  const dying = new DemandConsumer(settings, dyingConn, POOL, "host-a:1");
  const heirConn = redisConnection(redis.url);
  const heir = new DemandConsumer(settings, heirConn, POOL, "host-b:1");
  try {
    assert.equal(await queues.add(demand(1)), "added");
    await dying.start();
    const lease = await waitFor(() => dying.next(), 20_000, "the demand leased");
    const lock = `${redis.prefix}:bull:demand-${POOL}:${lease.id}:lock`;
    const ttl = await conn.pttl(lock);
    assert.ok(ttl > 0 && ttl <= LEASE_MS, `lock expires in ${ttl} ms, at most the lease's ${LEASE_MS}`);

    // Held for twice its length: only renewal keeps the lock.
    for (const until = Date.now() + 2 * LEASE_MS; Date.now() < until; await sleep(250)) {
      assert.equal(await conn.get(lock), "host-a:1", "the lock is still held");
    }

    // The holder can no longer reach Redis: nothing renews the lock, and it lapses.
    dyingConn.disconnect();
    await heir.start();
    const back: Lease = await waitFor(() => heir.next(), 60_000, "the lapsed lease taken by the other worker");
    assert.equal(back.id, lease.id);
    assert.equal(back.attempt, 1, "a lapsed lease spends no launch attempt");
    assert.equal(await conn.get(lock), "host-b:1");
    await back.complete("served");
  } finally {
    await queues.close();
    await heir.close();
    await dying.close();
    heirConn.disconnect();
    dyingConn.disconnect();
  }
});
