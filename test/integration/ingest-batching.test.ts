/**
 * The ingest path as main.ts composes it (HTTP app, Ingress, DemandQueues on a connection of its
 * own, the activity log and the active-repository set on another), on a real Redis, under
 * concurrency: the delivery and job-attempt claims of one event-loop turn go to Redis in one
 * write and the adds in another, yet each delivery is answered for itself, a 202 means
 * its demand is in BullMQ, and a delivery whose demand could not be added is acted on when
 * GitHub sends it again.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { Queue } from "bullmq";
import type { FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import { pino } from "pino";
import { buildApp } from "../../src/http/app.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandConsumer, DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { notingActivity } from "../../src/reconcile/repo-activity.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

let redis: TestRedis;
let state: Redis;
let queueConn: Redis;
let app: FastifyInstance;
let queues: DemandQueues;
let activity: ActivityLog;
let repos: ActiveRepos;
const config = testConfig({ pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "x" }] });

before(async () => {
  redis = await startRedis();
  state = redisConnection(redis.url);
  queueConn = redisConnection(redis.url);
  const logger = pino({ level: "silent" });
  const metrics = new Metrics({ processMetrics: false });
  queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, queueConn);
  activity = new ActivityLog(state, redis.prefix, { keepJobs: 1000 });
  repos = new ActiveRepos(state, redis.prefix);
  const ingress = new Ingress({
    config,
    demand: notingActivity(queues, repos, config.pools, logger),
    runners: new RunnerStore(state, redis.prefix),
    deliveries: new DeliveryLog(state, redis.prefix),
    metrics,
    logger,
    activity,
  });
  app = await buildApp({
    logger,
    metrics,
    webhooks: { secret: config.secrets.webhookSecret, bodyLimit: config.server.bodyLimitBytes, ingress },
    readiness: async () => [],
  });
});

after(async () => {
  await app?.close();
  await queues?.close();
  state?.disconnect();
  queueConn?.disconnect();
  await redis?.stop();
});

async function demandIds(): Promise<string[]> {
  const q = new Queue("demand-default", { connection: state, prefix: `${redis.prefix}:bull` });
  const jobs = await q.getJobs(["waiting", "delayed", "prioritized", "active", "completed", "failed"]);
  await q.close();
  return jobs.map((j) => j.id!).sort();
}

function deliver(body: string, deliveryId: string) {
  return app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET, deliveryId) });
}

test("concurrent copies and duplicates of many jobs: one demand per job attempt, each delivery answered for itself", async () => {
  const jobs = Array.from({ length: 40 }, (_, i) => 910_000 + i);
  // Per job: a delivery, the same delivery again (a replay), and a second delivery of the same
  // attempt (GitHub sending the event twice); all 120 at once, in a shuffled order.
  const sends: Array<{ jobId: number; body: string; deliveryId: string }> = [];
  for (const jobId of jobs) {
    const body = JSON.stringify(queuedPayload({ jobId, labels: ["self-hosted", "linux"], owner: "acme", repo: "batch" }));
    const first = randomUUID();
    sends.push({ jobId, body, deliveryId: first }, { jobId, body, deliveryId: first }, { jobId, body, deliveryId: randomUUID() });
  }
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = sends.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [sends[i], sends[j]] = [sends[j]!, sends[i]!];
  }
  const answers = await Promise.all(sends.map(async (s) => ({ jobId: s.jobId, res: await deliver(s.body, s.deliveryId) })));

  const byJob = new Map<number, string[]>();
  for (const { jobId, res } of answers) {
    assert.equal(res.statusCode, 202);
    byJob.set(jobId, [...(byJob.get(jobId) ?? []), res.json().outcome as string]);
  }
  for (const jobId of jobs) {
    // Whatever the order: one copy of the delivery finds it claimed; of the two deliveries that
    // claimed an id, one adds the demand and the other finds the attempt claimed.
    assert.deepEqual(byJob.get(jobId)!.sort(), ["duplicate", "queued", "replayed"], `job ${jobId}`);
  }
  assert.deepEqual(await demandIds(), jobs.map((id) => `${id}-1`).sort());
  // The bookkeeping written after the answers: one activity entry per queued job, the repository noted.
  const events = await activity.recentJobEvents();
  assert.deepEqual(events.map((e) => e.jobId).sort(), [...jobs].sort());
  assert.ok(events.every((e) => e.outcome === "queued"));
  assert.ok((await repos.list(60_000, 10)).some((r) => r.owner === "acme" && r.repo === "batch"));
});

test("a delivery whose demand Redis refused to add answers 503, and is acted on when GitHub sends it again", async () => {
  const jobs = [920_001, 920_002, 920_003];
  const deliveries = jobs.map((jobId) => ({
    jobId,
    id: randomUUID(),
    body: JSON.stringify(queuedPayload({ jobId, labels: ["self-hosted"], owner: "acme", repo: "broken" })),
  }));
  // BullMQ's add script starts by incrementing the queue's id counter: a counter that is not a
  // number makes every add fail before it writes anything, as a Redis refusing writes would.
  const idKey = `${redis.prefix}:bull:demand-default:id`;
  await state.set(idKey, "not-a-number");
  const alone = await deliver(deliveries[0]!.body, deliveries[0]!.id);
  const together = await Promise.all(deliveries.slice(1).map((d) => deliver(d.body, d.id)));
  for (const res of [alone, ...together]) {
    assert.equal(res.statusCode, 503);
    assert.match(res.json().error, /^Redis refused the command \(ERR\): the delivery was not taken/);
  }
  assert.ok(!(await demandIds()).some((id) => id.startsWith("92000")), "nothing was added");

  await state.del(idKey);
  // The redelivery carries the same delivery id: the failed attempt left no claim behind.
  const again = await Promise.all(deliveries.map((d) => deliver(d.body, d.id)));
  assert.deepEqual(again.map((r) => [r.statusCode, r.json().outcome]), jobs.map(() => [202, "queued"]));
  const ids = await demandIds();
  for (const jobId of jobs) assert.equal(ids.filter((id) => id === `${jobId}-1`).length, 1);
});

test("a repository noted a moment ago is not written again; later it is", async () => {
  const r = { installationId: 7, owner: "acme", repo: "renote", scope: "repository" as const };
  const t0 = Date.now() - 60_000;
  const seenAt = async () => (await repos.list(3_600_000, 100)).find((x) => x.repo === "renote")?.seenAt;
  await repos.touch(r, t0);
  await repos.touch(r, t0 + 5_000);
  assert.equal(await seenAt(), t0, "5 s later: the first note stands");
  await repos.touch(r, t0 + 11_000);
  assert.equal(await seenAt(), t0 + 11_000, "11 s later: noted again");
});

/** Redis as a server SIGKILLed between the claim script and BullMQ's add leaves it: both keys set, no demand. */
async function crashedBetweenClaimAndAdd(deliveryId: string, jobId: number): Promise<void> {
  await state.set(`${redis.prefix}:delivery:${deliveryId}`, "1", "EX", 600);
  await state.set(`${redis.prefix}:seen:${jobId}-1`, "default", "EX", 600);
}

test("a delivery claimed by a server that died before adding its demand is queued when GitHub sends it again", async () => {
  const body = JSON.stringify(queuedPayload({ jobId: 940_001, labels: ["self-hosted"], owner: "acme", repo: "crash" }));
  const deliveryId = randomUUID();
  await crashedBetweenClaimAndAdd(deliveryId, 940_001);
  assert.ok(!(await demandIds()).includes("940001-1"));

  // GitHub's redelivery carries the same delivery id: the claim is there, the demand is not.
  const again = await deliver(body, deliveryId);
  assert.deepEqual([again.statusCode, again.json().outcome], [202, "queued"]);
  assert.equal((await demandIds()).filter((id) => id === "940001-1").length, 1);
  assert.ok((await state.ttl(`${redis.prefix}:seen:940001-1`)) > 600, "the seen key is set afresh, for 3 days");
  // From now on its copies are recognised again.
  assert.equal((await deliver(body, deliveryId)).json().outcome, "replayed");
  assert.equal((await deliver(body, randomUUID())).json().outcome, "duplicate");
});

test("another delivery of a job attempt whose first delivery's server died before adding it is queued", async () => {
  // The same state, and then GitHub sends the event a second time under a new delivery id.
  await crashedBetweenClaimAndAdd(randomUUID(), 940_002);
  const body = JSON.stringify(queuedPayload({ jobId: 940_002, labels: ["self-hosted"], owner: "acme", repo: "crash" }));
  const res = await deliver(body, randomUUID());
  assert.deepEqual([res.statusCode, res.json().outcome], [202, "queued"]);
  assert.equal((await demandIds()).filter((id) => id === "940002-1").length, 1);
});

test("a replay of a delivery whose demand BullMQ holds adds nothing, waiting or completed; a new delivery, only while it waits", async () => {
  const q = new Queue("demand-default", { connection: state, prefix: `${redis.prefix}:bull` });
  const consumerConn = redisConnection(redis.url);
  const consumer = new DemandConsumer({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, consumerConn, "default", "test-worker");
  try {
    // The earlier tests' demand out of the way, so that the consumer takes this test's.
    await q.drain();
    const body = JSON.stringify(queuedPayload({ jobId: 940_003, labels: ["self-hosted"], owner: "acme", repo: "held" }));
    const deliveryId = randomUUID();
    assert.equal((await deliver(body, deliveryId)).json().outcome, "queued");
    const first = await q.getJob("940003-1");
    assert.equal(first?.data.deliveryId, deliveryId);
    for (const expected of ["waiting", "completed"]) {
      if (expected === "completed") {
        await consumer.start();
        const lease = await consumer.next();
        assert.equal(lease?.id, "940003-1");
        await lease.complete("served");
      }
      const replay = await deliver(body, deliveryId);
      assert.deepEqual([replay.statusCode, replay.json().outcome], [202, "replayed"], expected);
      const held = await q.getJob("940003-1");
      assert.equal(await held?.getState(), expected, "the item is left as it was");
      assert.equal(held?.timestamp, first?.timestamp, "and is the one the first delivery added");
      // A new delivery id: a duplicate while the item waits; once it has ended, GitHub has queued
      // the job again (after an approval), and a fresh item is added.
      assert.equal((await deliver(body, randomUUID())).json().outcome, expected === "waiting" ? "duplicate" : "queued", expected);
    }
    assert.equal(await (await q.getJob("940003-1"))?.getState(), "waiting", "a fresh item");
  } finally {
    await consumer.close();
    consumerConn.disconnect();
    await q.close();
  }
});

test("a job attempt claimed by a process that died before adding it is added by the next add without a claim (the reconciler's)", async () => {
  const demand = { pool: "default", jobId: 990001, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 1, labels: ["self-hosted"], receivedAt: Date.now(), deliveryId: "d-crash" };
  // What a crash between the claim and BullMQ's add leaves: the attempt's seen key, no demand.
  await queueConn.set(`${redis.prefix}:seen:990001-1`, "default", "EX", 600);
  assert.equal(await queues.add(demand), "added", "the reconciler's add finds no demand behind the seen key and adds it");
  assert.equal(await queues.add(demand), "duplicate", "once added, it is a duplicate again");
  assert.equal(await queues.add(demand, { key: `${redis.prefix}:delivery:d-crash-2`, ttlSeconds: 600 }), "duplicate", "and to a webhook's add");
  const q = new Queue("demand-default", { connection: queueConn, prefix: `${redis.prefix}:bull` });
  try {
    assert.equal(await (await q.getJob("990001-1"))?.getState(), "waiting");
  } finally {
    await q.close();
  }
});

test("one turn's claims reach Redis in one write, as one script call, and its adds in one more", async () => {
  // A server of this test's own: its count of socket reads is this test's traffic alone.
  const own = await startRedis({ own: true });
  const conn = redisConnection(own.url);
  const info = redisConnection(own.url);
  const ownQueues = new DemandQueues({ redisUrl: own.url, prefix: own.prefix, attempts: 3 }, conn);
  const reads = async () => Number(/^total_reads_processed:(\d+)/m.exec(await info.info("stats"))?.[1]);
  const scriptCalls = async () => Number(/^cmdstat_evalsha:calls=(\d+)/m.exec(await info.info("commandstats"))?.[1] ?? 0);
  try {
    const demand = (jobId: number) => ({ pool: "default", jobId, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 1, labels: ["self-hosted"], receivedAt: Date.now(), deliveryId: `d-${jobId}` });
    const claim = (jobId: number) => ({ key: `${own.prefix}:delivery:d-${jobId}`, ttlSeconds: 600 });
    // Warm: BullMQ's scripts loaded, the queue ready.
    assert.equal(await ownQueues.add(demand(930_000), claim(930_000)), "added");
    const jobs = Array.from({ length: 20 }, (_, i) => 930_001 + i);
    const scriptsBefore = await scriptCalls();
    const before = await reads();
    const results = await Promise.all(jobs.map((id) => ownQueues.add(demand(id), claim(id))));
    const used = (await reads()) - before;
    const scripts = (await scriptCalls()) - scriptsBefore;
    assert.deepEqual(results, jobs.map(() => "added"));
    // Two writes (claims, adds) and the second INFO; one write per command would be 40 or more.
    assert.ok(used <= 4, `Redis read ${used} times for 20 deliveries`);
    // BullMQ's add is a script call per demand; the 20 claims are one more, not 20.
    assert.equal(scripts, 21, `Redis ran ${scripts} script calls for 20 deliveries`);
    const q = new Queue("demand-default", { connection: conn, prefix: `${own.prefix}:bull` });
    try {
      assert.equal((await q.getJobs(["waiting"])).length, 21);
    } finally {
      await q.close();
    }
  } finally {
    await ownQueues.close();
    conn.disconnect();
    info.disconnect();
    await own.stop();
  }
});
