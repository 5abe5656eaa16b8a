/**
 * The leader's queued-job loop when the runner launched for a job took another one while its
 * demand is still held (real Redis, BullMQ leases taken as a worker takes them, the fake GitHub):
 * pools `small` [self-hosted, linux] and `large` [self-hosted, linux, large]; the runner launched
 * for a `large` job J comes online first and GitHub hands it the older `small` job X. J's demand
 * stays active as long as that runner lives, so J gets demand of its own once the runner is
 * recorded busy with X (and RENEW_AFTER_MS has passed), not only once X is done; a runner still
 * starting or idle, or taken only a moment ago, gets J no second runner.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Queue } from "bullmq";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { redisForFile } from "../helpers/redis.ts";
import { RUNNER_IMAGE, registerRunner } from "../helpers/system.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandConsumer, DemandQueues, queueName, redisConnection, type Lease, type QueueSettings } from "../../src/queue/demand-queue.ts";
import { githubQueuedLoop, RENEW_AFTER_MS } from "../../src/reconcile/github-queued.ts";
import type { Loop } from "../../src/reconcile/loops.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { githubFor } from "../helpers/github.ts";
import { activeRepos } from "../helpers/active-repos.ts";

const shared = redisForFile();
const DEAD_URL = "http://127.0.0.1:9/";
const POOLS = [
  { name: "small", labels: ["self-hosted", "linux"], image: RUNNER_IMAGE },
  { name: "large", labels: ["self-hosted", "linux", "large"], image: RUNNER_IMAGE },
];
const SMALL = ["self-hosted", "linux"];
const LARGE = ["self-hosted", "large"];

/** One test's fake GitHub, queues, runner records, loop and the leases it took as a worker would. */
interface Setup {
  fake: FakeGitHub;
  queues: DemandQueues;
  runners: RunnerStore;
  metrics: Metrics;
  loop: Loop;
  /** Takes the next demand of a pool, as a worker with a free slot does: its item is active from then on. */
  take(pool: string): Promise<Lease>;
  /** Records the runner launched for a lease, as the worker's launcher does. */
  launched(lease: Lease, name: string, state: RunnerRecord["state"]): Promise<void>;
  pending(pool: string): Promise<number>;
  /** Moves a done item's end back by RENEW_AFTER_MS and more, as if it had ended that long ago (BullMQ's finishedOn). */
  endedLongAgo(pool: string, id: string): Promise<void>;
  /** Drops a done item, as BullMQ does an hour after its end, or sooner once 5,000 more are done (removeOnComplete). */
  dropDone(pool: string, id: string): Promise<void>;
  renewed(): Promise<number>;
  recovered(): Promise<number>;
  pass(): Promise<void>;
  close(): Promise<void>;
}

async function setUp(tag: string): Promise<Setup> {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  // No webhook reaches us: demand comes only from the loop.
  fake.setWebhookUrl(DEAD_URL);
  const prefix = `${shared.redis.prefix}-${tag}`;
  const settings: QueueSettings = { redisUrl: shared.redis.url, prefix, attempts: 3 };
  const conn = redisConnection(shared.redis.url);
  const queues = new DemandQueues(settings, conn);
  const runners = new RunnerStore(conn, prefix);
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake);
  const loop = githubQueuedLoop({
    config: testConfig({ pools: POOLS }),
    github,
    demand: queues,
    runners,
    repos: await activeRepos(conn, prefix, [{ installationId: fake.installationId, owner: "acme", repo: "app" }]),
    intervalMs: 60_000,
    windowMs: 3600_000,
    maxRepositories: 10,
    maxRunsPerPass: 10,
    retryFailedAfterMs: 0,
    metrics,
    logger: createLogger("silent"),
  });
  const consumers: Array<{ consumer: DemandConsumer; conn: ReturnType<typeof redisConnection> }> = [];
  const leases: Lease[] = [];
  return {
    fake,
    queues,
    runners,
    metrics,
    loop,
    async take(pool) {
      const c = redisConnection(shared.redis.url);
      const consumer = new DemandConsumer(settings, c, pool, `worker-${tag}-${consumers.length}`);
      consumers.push({ consumer, conn: c });
      await consumer.start();
      const lease = await consumer.next();
      assert.ok(lease, `a demand of pool ${pool} to take`);
      leases.push(lease);
      return lease;
    },
    async launched(lease, name, state) {
      await runners.put({ name, pool: lease.demand.pool, host: "h1", state, installationId: fake.installationId, owner: "acme", repo: "app", demandId: lease.id, createdAt: Date.now() });
    },
    async pending(pool) {
      return (await queues.pending([pool])).get(pool) ?? 0;
    },
    async endedLongAgo(pool, id) {
      assert.equal(await conn.hset(`${prefix}:bull:demand-${pool}:${id}`, "finishedOn", String(Date.now() - RENEW_AFTER_MS - 1000)), 0, "an existing item's field");
    },
    async dropDone(pool, id) {
      const queue = new Queue(queueName(pool), { connection: conn, prefix: `${prefix}:bull` });
      try {
        assert.equal(await queue.getJobState(id), "completed");
        await queue.remove(id);
        assert.equal(await queue.getJobState(id), "unknown");
      } finally {
        await queue.close();
      }
    },
    async renewed() {
      return metricSample(await metrics.registry.metrics(), "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_renewed"');
    },
    async recovered() {
      return metricSample(await metrics.registry.metrics(), "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"');
    },
    async pass() {
      await loop.run(new AbortController().signal);
    },
    async close() {
      for (const lease of leases) await lease.release().catch(() => undefined);
      for (const { consumer, conn: c } of consumers) {
        await consumer.close();
        c.disconnect();
      }
      await queues.close();
      conn.disconnect();
      await fake.close();
    },
  };
}

/** The fake runner `name` (labels of pool `large`) comes online and GitHub hands it the oldest job it can run. */
async function takesAJob(fake: FakeGitHub, name: string): Promise<number> {
  const runner = await registerRunner(fake, name, ["self-hosted", "linux", "large"]);
  const call = (action: string) => fetch(`${fake.url}/_fake/runners/${runner.id}/${action}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: runner.token }) });
  assert.equal((await call("online")).status, 200);
  const acquired = await call("acquire");
  assert.equal(acquired.status, 200);
  return ((await acquired.json()) as { job: { id: number } }).job.id;
}

const statusOf = (fake: FakeGitHub, job: FakeJob) => fake.jobs().find((j) => j.id === job.id)?.status;

test("overlapping pools: a job whose runner took another job gets demand of its own while its first demand is still held, once", async () => {
  const s = await setUp("renew-taken");
  try {
    const x = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    const j = await s.fake.queueJob({ owner: "acme", repo: "app", labels: LARGE });
    await s.pass();
    assert.deepEqual([await s.pending("small"), await s.pending("large")], [1, 1], "each job's demand, in its pool");
    const leaseX = await s.take("small");
    const leaseJ = await s.take("large");
    assert.equal(leaseJ.demand.jobId, j.id);
    const rx = "jitrunner-small-00000000a1";
    const rj = "jitrunner-large-00000000b1";
    await s.launched(leaseX, rx, "starting");
    await s.launched(leaseJ, rj, "starting");

    // Control: J's runner is starting, then idle: it may yet take J. Nothing is added.
    await s.pass();
    assert.equal(await s.pending("large"), 0, "a starting runner: no second demand");
    await s.runners.started(rj);
    await s.runners.started(rx);
    await s.pass();
    assert.equal(await s.pending("large"), 0, "an idle runner: no second demand");

    // J's runner comes online first; GitHub hands it X (its labels cover X's), and in_progress marks it busy.
    assert.equal(await takesAJob(s.fake, rj), x.id);
    assert.equal(statusOf(s.fake, j), "queued");
    assert.ok(await s.runners.mark(rj, "busy", x.id));
    // Taken a moment ago: a runner launched for another job meanwhile may still be booting and take J.
    await s.pass();
    assert.equal(await s.pending("large"), 0, "taken just now: no second demand yet");

    // X's own runner cannot run J: it idles out, and X's demand is done (X runs elsewhere).
    await s.runners.remove({ name: rx, host: "h1", demandId: leaseX.id }, true);
    await leaseX.complete("idle_timeout");
    // RENEW_AFTER_MS later (the record says so), J still waits, and its first demand is still held.
    await s.runners.update(rj, { busyAt: Date.now() - RENEW_AFTER_MS - 1000 });
    await s.pass();
    assert.equal(await s.pending("large"), 1, "fresh demand for J, in J's pool");
    assert.equal(await s.renewed(), 1);
    assert.equal(await s.pending("small"), 0, "none for X");

    // Further passes add nothing more: the fresh demand is there.
    await s.pass();
    await s.pass();
    assert.equal(await s.pending("large"), 1, "still one fresh demand");
    assert.equal(await s.renewed(), 1);
  } finally {
    await s.close();
  }
});

test("the fresh demand's runner taken by yet another job: demand again; the first demand's end then adds none", async () => {
  const s = await setUp("renew-chain");
  try {
    const x = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    const y = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    const j = await s.fake.queueJob({ owner: "acme", repo: "app", labels: LARGE });
    await s.pass();
    // X's and Y's demand wait in `small`; J's runner takes X.
    const leaseJ = await s.take("large");
    const rj = "jitrunner-large-00000000c1";
    await s.launched(leaseJ, rj, "idle");
    assert.equal(await takesAJob(s.fake, rj), x.id);
    assert.ok(await s.runners.mark(rj, "busy", x.id));
    await s.runners.update(rj, { busyAt: Date.now() - RENEW_AFTER_MS - 1000 });
    await s.pass();
    assert.equal(await s.pending("large"), 1, "the first fresh demand");

    // The fresh demand's runner takes Y.
    const renewal = await s.take("large");
    assert.equal(renewal.demand.jobId, j.id);
    assert.notEqual(renewal.id, leaseJ.id, "a queue item of its own");
    const rj2 = "jitrunner-large-00000000c2";
    await s.launched(renewal, rj2, "idle");
    assert.equal(await takesAJob(s.fake, rj2), y.id);
    assert.ok(await s.runners.mark(rj2, "busy", y.id));
    await s.pass();
    assert.equal(await s.pending("large"), 0, "taken just now: nothing yet");
    await s.runners.update(rj2, { busyAt: Date.now() - RENEW_AFTER_MS - 1000 });
    await s.pass();
    assert.equal(await s.pending("large"), 1, "a second fresh demand");
    assert.equal(await s.renewed(), 2);

    // X is done: J's first runner ends and its demand completes, long enough ago. J is provided for
    // by the second fresh demand: the first is not added again.
    await s.runners.remove({ name: rj, host: "h1", demandId: leaseJ.id }, true);
    await leaseJ.complete("exited");
    await s.endedLongAgo("large", leaseJ.id);
    await s.pass();
    assert.equal(statusOf(s.fake, j), "queued");
    assert.equal(await s.pending("large"), 1, "still the one fresh demand");
    assert.equal(await s.renewed(), 2);
  } finally {
    await s.close();
  }
});

test("the first demand's done item dropped by BullMQ while the fresh demand still waits: the job gets no demand again", async () => {
  const s = await setUp("renew-dropped");
  try {
    const x = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    const j = await s.fake.queueJob({ owner: "acme", repo: "app", labels: LARGE });
    await s.pass();
    const leaseJ = await s.take("large");
    assert.equal(leaseJ.demand.jobId, j.id);
    const rj = "jitrunner-large-00000000d1";
    await s.launched(leaseJ, rj, "idle");
    assert.equal(await takesAJob(s.fake, rj), x.id);
    assert.ok(await s.runners.mark(rj, "busy", x.id));
    await s.runners.update(rj, { busyAt: Date.now() - RENEW_AFTER_MS - 1000 });
    await s.pass();
    assert.equal(await s.pending("large"), 1, "J's fresh demand, waiting (the pool full, say)");

    // X is done and J's first runner with it; its demand completes, and BullMQ drops the done item
    // while the fresh demand still waits for room.
    await s.runners.remove({ name: rj, host: "h1", demandId: leaseJ.id }, true);
    await leaseJ.complete("exited");
    await s.dropDone("large", leaseJ.id);
    const recovered = await s.recovered();
    await s.pass();
    await s.pass();
    assert.equal(statusOf(s.fake, j), "queued");
    assert.equal(await s.pending("large"), 1, "the fresh demand only: no second runner for J");
    assert.equal(await s.recovered(), recovered, "the first demand not added again");
    assert.equal(await s.renewed(), 1);
  } finally {
    await s.close();
  }
});

test("one pool: a job whose runner took another job whose demand still waits, or is held with a runner that took no job, gets no demand of its own; that demand's runner can take it", async () => {
  const s = await setUp("renew-waiting");
  try {
    const x = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    const j = await s.fake.queueJob({ owner: "acme", repo: "app", labels: SMALL });
    await s.pass();
    assert.equal(await s.pending("small"), 2);
    // A full pool: J's demand is taken, X's goes back to wait for room.
    const taken = [await s.take("small"), await s.take("small")];
    const leaseX = taken.find((l) => l.demand.jobId === x.id)!;
    const leaseJ = taken.find((l) => l.demand.jobId === j.id)!;
    assert.ok(leaseX && leaseJ);
    await leaseX.release();
    const rj = "jitrunner-small-00000000d1";
    await s.launched(leaseJ, rj, "idle");
    // GitHub hands J's runner the older job, X.
    assert.equal(await takesAJob(s.fake, rj), x.id);
    assert.ok(await s.runners.mark(rj, "busy", x.id));
    await s.runners.update(rj, { busyAt: Date.now() - RENEW_AFTER_MS - 1000 });
    await s.pass();
    assert.equal(await s.pending("small"), 1, "X's demand only: the runner launched for it can take J");
    assert.equal(await s.renewed(), 0);

    // X's demand taken, held while the worker waits for room or launches: its runner can still take J.
    const again = await s.take("small");
    assert.equal(again.demand.jobId, x.id);
    await s.pass();
    assert.equal(await s.renewed(), 0, "X's demand is held with no runner yet");
    // Its runner launched and still starting, then idle: no job taken, so it can take J.
    const rx = "jitrunner-small-00000000d2";
    await s.launched(again, rx, "starting");
    await s.pass();
    await s.runners.update(rx, { state: "idle" });
    await s.pass();
    assert.equal(await s.renewed(), 0, "X's runner has taken no job");
    assert.equal(await s.pending("small"), 0);

    // Once that runner has taken another job (Y, say) and J still waits, J gets its own.
    assert.ok(await s.runners.mark(rx, "busy", x.id + j.id + 1000));
    await s.pass();
    assert.equal(await s.renewed(), 1, "no demand is without a job: J's renewal added");
    assert.equal(await s.pending("small"), 1);
  } finally {
    await s.close();
  }
});
