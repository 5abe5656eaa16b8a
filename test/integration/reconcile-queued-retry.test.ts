/**
 * The leader's queued-job loop giving failed demand fresh attempts (src/reconcile/github-queued.ts
 * retryFailed; real Redis, BullMQ leases taken as a worker takes them, the fake GitHub): the note
 * of which runner served the demand is forgotten first, so a worker does not take the demand added
 * again as served; but only the note of the runner it named when the pass found the demand failed.
 * A new `queued` delivery may replace the failed item between the two, and a worker launch a runner
 * for it: that runner's note stays, else the demand, taken again after its lease lapsed, would get
 * a second runner. And the status: the job's row no longer reads `launch failed (final)` once its
 * demand is retried (the activity log told of the retry).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { redisForFile } from "../helpers/redis.ts";
import { demandIdOf, type Demand } from "../../src/demand.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandConsumer, DemandQueues, redisConnection, type Lease, type QueueSettings } from "../../src/queue/demand-queue.ts";
import { GITHUB_QUEUED, retryFailed } from "../../src/reconcile/github-queued.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { collectStatus, describeJob } from "../../src/state/status.ts";
import { activeRepos, queuedLoop } from "../helpers/active-repos.ts";
import { queuedPayload } from "../helpers/webhooks.ts";

const shared = redisForFile();
const DEAD_URL = "http://127.0.0.1:9/";

function demandOf(jobId: number): Demand {
  return { pool: "default", jobId, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 1, labels: ["self-hosted", "linux"], receivedAt: Date.now(), deliveryId: `d-${jobId}` };
}

/** Queues, runner records and leases under one prefix, taken as a worker takes them. */
function setUp(tag: string) {
  const prefix = `${shared.redis.prefix}-${tag}`;
  const settings: QueueSettings = { redisUrl: shared.redis.url, prefix, attempts: 1 };
  const queues = new DemandQueues(settings, shared.conn);
  const runners = new RunnerStore(shared.conn, prefix);
  const consumers: Array<{ consumer: DemandConsumer; conn: ReturnType<typeof redisConnection> }> = [];
  const leases: Lease[] = [];
  return {
    prefix,
    queues,
    runners,
    deps: {
      config: testConfig(),
      demand: queues,
      runners,
      repos: new ActiveRepos(shared.conn, prefix),
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    },
    /** Takes the pool's next demand, as a worker with a free slot does. */
    async take(): Promise<Lease> {
      const conn = redisConnection(shared.redis.url);
      const consumer = new DemandConsumer(settings, conn, "default", `worker-${tag}-${consumers.length}`);
      consumers.push({ consumer, conn });
      await consumer.start();
      const lease = await consumer.next();
      assert.ok(lease, "a demand to take");
      leases.push(lease);
      return lease;
    },
    /** Records the runner launched for a lease, as the worker's launcher does (its note of the demand with it). */
    async launched(lease: Lease, name: string): Promise<void> {
      await runners.put({ name, pool: "default", host: "h1", state: "starting", installationId: 1, owner: "acme", repo: "app", demandId: lease.id, createdAt: Date.now() });
    },
    state: async (d: Demand) => (await queues.ended(d))?.outcome ?? ((await queues.held(d)) ? "pending" : "none"),
    async close() {
      for (const lease of leases) await lease.release().catch(() => undefined);
      for (const { consumer, conn } of consumers) {
        await consumer.close();
        conn.disconnect();
      }
      await queues.close();
    },
  };
}

test("failed demand replaced by a new queued delivery and taken, its runner launched, before the pass retries it: that runner's note stays, and nothing is added", async () => {
  const s = setUp("retry-replaced");
  const d = demandOf(101);
  const id = demandIdOf(d);
  try {
    // Its launch failed for good: the runner's note went with it (the launcher releases it).
    assert.equal(await s.queues.add(d), "added");
    await (await s.take()).fail(new Error("launch failed"), true);
    assert.equal(await s.state(d), "failed");
    // What the pass found: failed, with no runner's note.
    const found = { demand: d, at: Date.now(), ids: { loop: GITHUB_QUEUED, jobId: d.jobId, runId: d.runId, repo: "acme/app", pool: d.pool } };
    assert.equal(await s.runners.findByDemand(id), undefined);

    // Before the pass retries it: GitHub delivers a new `queued` for the job, which replaces the
    // failed item; a worker takes it and launches a runner.
    assert.equal(await s.queues.add(d, { key: `${s.prefix}:delivery:again`, ttlSeconds: 60 }), "added");
    const lease = await s.take();
    assert.equal(lease.id, id);
    await s.launched(lease, "jitrunner-default-00000000b2");

    await retryFailed(s.deps, found);
    assert.equal((await s.runners.findByDemand(id))?.name, "jitrunner-default-00000000b2", "the new runner's note kept: a lapsed lease finds the demand served");
    assert.equal(await s.state(d), "pending", "the taken item left as it is");
  } finally {
    await s.close();
  }
});

test("failed demand whose note still names the runner the pass saw: that note forgotten and the demand added again with fresh attempts", async () => {
  const s = setUp("retry-forgets");
  const d = demandOf(102);
  const id = demandIdOf(d);
  try {
    assert.equal(await s.queues.add(d), "added");
    const lease = await s.take();
    // A runner's note left behind (the runner gone, its note kept), then the launch failed for good.
    await s.launched(lease, "jitrunner-default-00000000b3");
    await s.runners.remove({ name: "jitrunner-default-00000000b3", host: "h1", demandId: id }, true);
    await lease.fail(new Error("launch failed"), true);
    assert.equal((await s.runners.findByDemand(id))?.name, "jitrunner-default-00000000b3");

    await retryFailed(s.deps, { demand: d, at: Date.now(), ids: { loop: GITHUB_QUEUED, jobId: d.jobId, runId: d.runId, repo: "acme/app", pool: d.pool }, servedBy: "jitrunner-default-00000000b3" });
    assert.equal(await s.runners.findByDemand(id), undefined, "forgotten: the worker launches a runner rather than taking the demand as served");
    assert.equal(await s.state(d), "pending", "added again");
  } finally {
    await s.close();
  }
});

test("the loop finds failed demand with a runner's note left and retries it: the note forgotten, the demand added again", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.setWebhookUrl(DEAD_URL);
  const s = setUp("retry-loop");
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const d = { ...demandOf(job.id), runId: job.run_id, installationId: fake.installationId };
    const id = demandIdOf(d);
    assert.equal(await s.queues.add(d), "added");
    const lease = await s.take();
    await s.launched(lease, "jitrunner-default-00000000b4");
    await s.runners.remove({ name: "jitrunner-default-00000000b4", host: "h1", demandId: id }, true);
    await lease.fail(new Error("launch failed"), true);

    const repos = await activeRepos(shared.conn, s.prefix, [{ installationId: fake.installationId, owner: "acme", repo: "app" }]);
    const loop = queuedLoop(fake, shared.conn, s.prefix, s.queues, repos, { runners: s.runners, retryFailedAfterMs: 1 });
    await new Promise((res) => setTimeout(res, 10));
    await loop.run(new AbortController().signal);
    assert.equal(await s.runners.findByDemand(id), undefined, "the note the pass saw forgotten");
    assert.equal(await s.state(d), "pending", "added again with fresh attempts");
  } finally {
    await s.close();
    await fake.close();
  }
});

test("a job whose demand failed for good reads `launch failed (final)` on the status until the loop retries it, then waiting for a runner, and final again only once the fresh attempts fail for good", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.setWebhookUrl(DEAD_URL);
  const s = setUp("retry-status");
  const activity = new ActivityLog(shared.conn, s.prefix);
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const d = { ...demandOf(job.id), runId: job.run_id, installationId: fake.installationId };
    // Its `queued` webhook, through the ingress, which tells the activity log.
    const ingress = new Ingress({ config: s.deps.config, demand: s.queues, runners: s.runners, deliveries: new DeliveryLog(shared.conn, s.prefix), metrics: s.deps.metrics, logger: s.deps.logger, activity });
    const payload = queuedPayload({ jobId: job.id, labels: d.labels, installationId: fake.installationId });
    payload.workflow_job.run_id = job.run_id;
    assert.equal(await ingress.handle({ event: "workflow_job", deliveryId: `d-${job.id}`, receivedAt: Date.now(), payload }), "queued");
    // Its launch fails for good, as the worker tells it (the item failed, the failure noted final).
    const missing = Object.assign(new Error("create container failed (404): No such image: jitrunner-test-runner:latest"), { code: "E_DOCKER" });
    const failForGood = async () => {
      const lease = await s.take();
      await lease.fail(missing, true);
      await activity.launchFailure(d, lease.attempt, missing, true);
    };
    await failForGood();
    const row = async () => {
      const job_ = (await collectStatus({ pools: s.deps.config.pools, runners: s.runners, activity })).jobs.find((j) => j.jobId === job.id);
      assert.ok(job_, "the job's row");
      return describeJob(job_);
    };
    assert.equal(await row(), "launch failed (final): E_DOCKER");

    const repos = await activeRepos(shared.conn, s.prefix, [{ installationId: fake.installationId, owner: "acme", repo: "app" }]);
    const loop = queuedLoop(fake, shared.conn, s.prefix, s.queues, repos, { runners: s.runners, retryFailedAfterMs: 1, activity });
    await new Promise((res) => setTimeout(res, 10));
    await loop.run(new AbortController().signal);
    assert.equal(await s.state(d), "pending", "added again with fresh attempts");
    assert.equal(await row(), "waiting for a runner (failed launches retried)", "its final failure is over");

    // The fresh attempts fail for good too: final again.
    await failForGood();
    assert.equal(await row(), "launch failed (final): E_DOCKER");
  } finally {
    await s.close();
    await fake.close();
  }
});
