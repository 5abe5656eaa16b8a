/**
 * A worker's lease on a demand (src/queue/demand-queue.ts, `worker.leaseSeconds`), on a real Redis:
 * its lock lasts the configured time and is renewed while the lease is held; a worker that can no
 * longer renew (its process died) loses it, and another worker's stalled check takes the demand.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import type { Demand } from "../../src/demand.ts";
import { LeaseLostError } from "../../src/errors.ts";
import { DemandConsumer, DemandQueues, redisConnection, type Lease } from "../../src/queue/demand-queue.ts";
import { waitFor } from "../helpers/process.ts";
import { redisForFile } from "../helpers/redis.ts";
import { cuttingRelay } from "../helpers/relay.ts";

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
      assert.match((await conn.get(lock)) ?? "", /^host-a:1:[0-9a-f-]{36}$/, "the lock is still held");
    }

    // The holder can no longer reach Redis: nothing renews the lock, and it lapses.
    dyingConn.disconnect();
    await heir.start();
    const back: Lease = await waitFor(() => heir.next(), 60_000, "the lapsed lease taken by the other worker");
    assert.equal(back.id, lease.id);
    assert.equal(back.attempt, 1, "a lapsed lease spends no launch attempt");
    assert.match((await conn.get(lock)) ?? "", /^host-b:1:/);
    await back.complete("served");
  } finally {
    await queues.close();
    await heir.close();
    await dying.close();
    heirConn.disconnect();
    dyingConn.disconnect();
  }
});

test("a demand whose leases lapse again and again (its workers killed one after another) stays demand: the queue never fails it for stalling", async () => {
  const { redis, conn } = shared;
  // Short leases: each lapse takes a second or two.
  const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 3, leaseMs: 1_000 };
  const queues = new DemandQueues(settings, conn);
  // A worker that lives throughout: its stalled checks give each lapsed demand back to the queue.
  const heirConn = redisConnection(redis.url);
  const heir = new DemandConsumer(settings, heirConn, POOL, "host-heir:1");
  const conns = [heirConn];
  const consumers = [heir];
  try {
    assert.equal(await queues.add(demand(3)), "added");
    await heir.start();
    // BullMQ's default would fail the demand at its fourth stall, with no launch failed.
    for (let i = 1; i <= 5; i++) {
      const dyingConn = redisConnection(redis.url);
      const dying = new DemandConsumer(settings, dyingConn, POOL, `host-dying-${i}:1`);
      conns.push(dyingConn);
      consumers.push(dying);
      await dying.start();
      const lease = await waitFor(() => dying.next(), 20_000, `the demand leased by dying worker ${i}`);
      assert.equal(lease.id, "3-1");
      // Killed: nothing renews its lock.
      dyingConn.disconnect();
    }
    const back: Lease = await waitFor(() => heir.next(), 20_000, "the demand leased again after its fifth lapse");
    assert.equal(back.id, "3-1");
    assert.equal(back.attempt, 1, "no launch attempt spent");
    await back.complete("served");
  } finally {
    await queues.close();
    for (const c of consumers) await c.close();
    for (const c of conns) c.disconnect();
  }
});

test("demand already waiting is taken at once up to the number asked, each lease with its own lock; with none waiting, none is taken; a lease given back waits again", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:ready`, attempts: 3, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const consumerConn = redisConnection(redis.url);
  const consumer = new DemandConsumer(settings, consumerConn, POOL, "host-a:1");
  const held: Lease[] = [];
  try {
    for (let job = 11; job <= 15; job++) assert.equal(await queues.add(demand(job)), "added");
    await consumer.start();
    held.push(await waitFor(() => consumer.next(), 20_000, "the first demand leased"));
    const three = await consumer.ready(3);
    held.push(...three);
    assert.equal(three.length, 3, "as many as asked, while that many wait");
    assert.equal(new Set(held.map((l) => l.demand.jobId)).size, 4, "each demand leased once");
    const tokens = new Set<string>();
    for (const lease of three) {
      const token = (await conn.get(`${settings.prefix}:bull:demand-${POOL}:${lease.id}:lock`)) ?? "";
      assert.match(token, /^host-a:1:/, `demand ${lease.id} locked for its holder`);
      tokens.add(token);
      assert.equal(lease.attempt, 1);
    }
    assert.equal(tokens.size, 3, "each lease with a token of its own");
    const counts = (await queues.counts([POOL])).get(POOL)!;
    assert.equal(counts.active, 4);
    assert.equal(counts.waiting, 1);

    const rest = await consumer.ready(3);
    held.push(...rest);
    assert.deepEqual(rest.map((l) => l.demand.jobId), [...[11, 12, 13, 14, 15].filter((j) => !held.slice(0, 4).some((l) => l.demand.jobId === j))], "the one left");
    assert.deepEqual(await consumer.ready(3), [], "none waiting: none taken");

    await three[0]!.release();
    assert.equal((await queues.counts([POOL])).get(POOL)!.waiting, 1, "a lease given back waits again");
    const again = await consumer.ready(2);
    assert.deepEqual(again.map((l) => l.demand.jobId), [three[0]!.demand.jobId]);
    assert.equal(again[0]!.attempt, 1, "given back unspent");
    held.push(...again);
  } finally {
    await Promise.all(held.map((l) => l.complete("served").catch(() => undefined)));
    await queues.close();
    await consumer.close();
    consumerConn.disconnect();
  }
});

test("a lease whose lock lapsed, its demand taken again by the same worker, can neither fail nor complete the new lease's demand", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:stale`, attempts: 3, leaseMs: 2_000 };
  const queues = new DemandQueues(settings, conn);
  const consumerConn = redisConnection(redis.url);
  const consumer = new DemandConsumer(settings, consumerConn, POOL, "host-a:1");
  let again: Lease | undefined;
  try {
    assert.equal(await queues.add(demand(21)), "added");
    await consumer.start();
    const stale = await waitFor(() => consumer.next(), 20_000, "the demand leased");
    // Its lock lapses (as while Redis was away for longer than the lease): the stalled check puts
    // the demand back, and the same worker takes it again.
    await conn.del(`${settings.prefix}:bull:demand-${POOL}:${stale.id}:lock`);
    // Its next renewal finds the lock gone: the lease says it is lost, so that a launch not yet
    // under way is not started for a demand that is its next holder's.
    await waitFor(() => stale.lost.aborted, 10_000, "the stale lease known lost at its renewal");
    assert.ok(stale.lost.reason instanceof LeaseLostError);
    again = await waitFor(() => consumer.next(), 30_000, "the demand taken again");
    assert.equal(again.id, stale.id);
    assert.equal(again.lost.aborted, false, "the new lease holds");

    await assert.rejects(stale.fail(new Error("the stale lease's runner idled out"), false), LeaseLostError, "the stale lease's failure is refused, as a lease lost");
    const counts = (await queues.counts([POOL])).get(POOL)!;
    assert.equal(counts.active, 1, "the demand is still the new lease's");
    assert.equal(counts.waiting + counts.delayed + counts.failed, 0, JSON.stringify(counts));
    await again.complete("served");
    assert.equal((await queues.counts([POOL])).get(POOL)!.completed, 1);
  } finally {
    await again?.complete("served").catch(() => undefined);
    await queues.close();
    await consumer.close();
    consumerConn.disconnect();
  }
});

test("a lease whose completion failed cannot then be failed as if that had landed: the first settling call's outcome is every later one's", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:settle`, attempts: 3, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const consumerConn = redisConnection(redis.url);
  const consumer = new DemandConsumer(settings, consumerConn, POOL, "host-a:1");
  try {
    assert.equal(await queues.add(demand(31)), "added");
    await consumer.start();
    const lease = await waitFor(() => consumer.next(), 20_000, "the demand leased");
    // The item is gone from under the lease (as once it went back to the queue and its job's
    // `completed` removed it): BullMQ refuses the completion, which means the lease is lost.
    await conn.del(`${settings.prefix}:bull:demand-${POOL}:${lease.id}`);
    await assert.rejects(lease.complete("served"), LeaseLostError);
    await assert.rejects(lease.fail(new Error("the runner idled out"), false), LeaseLostError, "the failure after it is refused too, not taken for landed");
    await assert.rejects(lease.release(), LeaseLostError);
  } finally {
    await queues.close();
    await consumer.close();
    consumerConn.disconnect();
  }
});

test("a lease of worker.leaseSeconds that is no whole number of ms once multiplied (8.19 s is 8189.999999999999 ms) is renewed all the same", async () => {
  const { redis, conn } = shared;
  const leaseMs = 8.19 * 1000;
  assert.ok(!Number.isInteger(leaseMs));
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:fraction`, attempts: 3, leaseMs };
  const queues = new DemandQueues(settings, conn);
  const consumerConn = redisConnection(redis.url);
  const consumer = new DemandConsumer(settings, consumerConn, POOL, "host-a:1");
  try {
    assert.equal(await queues.add(demand(41)), "added");
    await consumer.start();
    const lease = await waitFor(() => consumer.next(), 20_000, "the demand leased");
    const lock = `${settings.prefix}:bull:demand-${POOL}:${lease.id}:lock`;
    // Past a third of the lease, the renewal has run: the lock's time left is back near the whole.
    await sleep(3_500);
    const ttl = await conn.pttl(lock);
    assert.ok(ttl > 8_190 - 3_000, `the lock renewed: ${ttl} ms left`);
    await lease.complete("served");
  } finally {
    await queues.close();
    await consumer.close();
    consumerConn.disconnect();
  }
});

/**
 * A take whose reply is lost to a dropped connection (after Redis ran it): ioredis sends it again
 * once reconnected, with the same token, and that run takes the next demand too. The lease is the
 * second run's; the demand the first run took must not sit active, leased by none, until its lock
 * lapses and the stalled check gives it back (the lease's length and up to as much again).
 */
async function takeCut(name: string, take: (consumer: DemandConsumer) => Promise<Lease[]>): Promise<void> {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:${name}`, attempts: 3, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const relay = await cuttingRelay(new URL(redis.url));
  const cutConn = redisConnection(relay.url);
  const cut = new DemandConsumer(settings, cutConn, POOL, "host-cut:1");
  const otherConn = redisConnection(redis.url);
  const other = new DemandConsumer(settings, otherConn, POOL, "host-b:1");
  const held: Lease[] = [];
  try {
    assert.equal(await queues.add(demand(51)), "added");
    assert.equal(await queues.add(demand(52)), "added");
    await cut.start();
    // The take's command carries its token, which starts with the worker's id.
    relay.cutAfter("host-cut:1:");
    const leases = await take(cut);
    held.push(...leases);
    assert.equal(relay.cuts, 1, "the take's reply was lost, and the take sent again");
    assert.deepEqual(leases.map((l) => l.demand.jobId), [52], "the lease is the second run's: the first took 51");

    // Well within the lease: no lock has lapsed, so no stalled check has given anything back.
    const counts = await waitFor(
      async () => {
        const c = (await queues.counts([POOL])).get(POOL)!;
        return c.active === leases.length && c.waiting === 1 && c;
      },
      LEASE_MS / 2,
      "as many active as leased, the other demand waiting again",
    );
    assert.equal(counts.active + counts.waiting, 2, JSON.stringify(counts));
    assert.match((await conn.get(`${settings.prefix}:bull:demand-${POOL}:${leases[0]!.id}:lock`)) ?? "", /^host-cut:1:/, "the lease's own demand is still its");

    await other.start();
    const rest = await other.ready(1);
    held.push(...rest);
    assert.deepEqual(rest.map((l) => l.demand.jobId), [51], "the first run's demand, taken by another worker");
    assert.equal(rest[0]!.attempt, 1, "given back unspent");
  } finally {
    await Promise.all(held.map((l) => l.complete("served").catch(() => undefined)));
    await queues.close();
    await other.close();
    await cut.close();
    otherConn.disconnect();
    cutConn.disconnect();
    await relay.close();
  }
}

test("a ready() take whose reply was lost and that ioredis sent again leaves no demand active without a lease: the first run's demand waits again at once", async () => {
  await takeCut("cut-ready", (consumer) => consumer.ready(1));
});

test("a next() take whose reply was lost and that ioredis sent again leaves no demand active without a lease: the first run's demand waits again at once", async () => {
  await takeCut("cut-next", async (consumer) => {
    const lease = await consumer.next();
    return lease ? [lease] : [];
  });
});

/**
 * A settling call (complete, fail) whose reply is lost to a dropped connection after Redis ran it:
 * ioredis sends it again once reconnected, and BullMQ refuses that copy, the lock being gone with
 * the first. The settle landed all the same: it must resolve, not reject as a lapsed lease (which
 * made the worker warn of a lapse, and a demand's last failed try go uncounted as failed).
 */
async function settleCut(name: string, settle: (lease: Lease, marker: string) => Promise<void>, states: readonly string[]): Promise<void> {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:${name}`, attempts: 2, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const relay = await cuttingRelay(new URL(redis.url));
  const cutConn = redisConnection(relay.url);
  const cut = new DemandConsumer(settings, cutConn, POOL, "host-cut:1");
  let lease: Lease | undefined;
  try {
    assert.equal(await queues.add(demand(61)), "added");
    await cut.start();
    lease = await waitFor(() => cut.next(), 20_000, "the demand leased");
    // Only the settle carries it (the completion's result, the failure's message).
    const marker = `settle-cut-${name}`;
    relay.cutAfter(marker);
    await settle(lease, marker);
    assert.equal(relay.cuts, 1, "the settle's reply was lost, and the settle sent again");
    const counts = (await queues.counts([POOL])).get(POOL)!;
    assert.equal(counts.active, 0, JSON.stringify(counts));
    assert.equal(states.reduce((n, s) => n + counts[s as keyof typeof counts], 0), 1, `settled as ${states.join(" or ")}: ${JSON.stringify(counts)}`);
  } finally {
    await lease?.release().catch(() => undefined);
    await queues.close();
    await cut.close();
    cutConn.disconnect();
    await relay.close();
  }
}

test("a completion whose reply was lost and that ioredis sent again is taken as landed, not as a lapsed lease", async () => {
  await settleCut("cut-complete", (lease, marker) => lease.complete(marker), ["completed"]);
});

test("a failure with tries left whose reply was lost and that ioredis sent again is taken as landed, not as a lapsed lease", async () => {
  await settleCut("cut-fail", (lease, marker) => lease.fail(new Error(marker), false), ["delayed", "waiting"]);
});

test("a last failure whose reply was lost and that ioredis sent again is taken as landed, not as a lapsed lease", async () => {
  await settleCut("cut-fail-final", (lease, marker) => lease.fail(new Error(marker), true), ["failed"]);
});

test("a failure with tries left whose reply was lost, sent again once another worker took the demand for its next try, is taken as landed, and that worker's lease holds", async () => {
  const { redis, conn } = shared;
  const settings = { redisUrl: redis.url, prefix: `${redis.prefix}:cut-fail-taken`, attempts: 2, leaseMs: LEASE_MS };
  const queues = new DemandQueues(settings, conn);
  const relay = await cuttingRelay(new URL(redis.url));
  const cutConn = redisConnection(relay.url);
  const cut = new DemandConsumer(settings, cutConn, POOL, "host-cut:1");
  const otherConn = redisConnection(redis.url);
  const other = new DemandConsumer(settings, otherConn, POOL, "host-b:1");
  let next: Lease | undefined;
  try {
    assert.equal(await queues.add(demand(71)), "added");
    await cut.start();
    const lease = await waitFor(() => cut.next(), 20_000, "the demand leased");
    const marker = "settle-cut-fail-taken";
    // The reconnect, and the failure sent again with it, wait until the other worker took the demand.
    relay.cutAfter(marker, { hold: true });
    const failing = lease.fail(new Error(marker), false);
    failing.catch(() => undefined);
    await other.start();
    next = await waitFor(() => other.next(), 30_000, "the demand taken by the other worker for its next try");
    assert.equal(next.id, lease.id);
    assert.equal(next.attempt, 2, "the failure landed: its try was counted");
    relay.reopen();
    await failing;
    assert.equal(relay.cuts, 1);
    assert.equal(next.lost.aborted, false, "the other worker's lease holds");
    assert.match((await conn.get(`${settings.prefix}:bull:demand-${POOL}:${next.id}:lock`)) ?? "", /^host-b:1:/);
    await next.complete("served");
    assert.equal((await queues.counts([POOL])).get(POOL)!.completed, 1);
  } finally {
    await next?.release().catch(() => undefined);
    relay.reopen();
    await queues.close();
    await other.close();
    await cut.close();
    otherConn.disconnect();
    cutConn.disconnect();
    await relay.close();
  }
});
