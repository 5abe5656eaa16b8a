/**
 * Chaos (issue 5), restarts: the webhook server SIGKILLed in the middle of a burst while GitHub
 * keeps sending, and Redis SIGKILLed (append-only, fsync every second) while runners run jobs.
 * After each, every job gets its runner and finishes on a real DinD runner container, no job is
 * served twice, and nothing is left behind.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { assertNothingLeft, metricSample, watchVolumes } from "../helpers/leftovers.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor, type JitrunnerProcess } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { callsTo, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const LABELS = ["self-hosted", "linux"];
/** Short loops, so recovery comes within seconds (the defaults are minutes). */
// Redeliveries tried again 2, 8, 32 s after a failed one (60 s, 4 and 16 minutes in production).
const RECONCILE = { leaderLockSeconds: 3, runnersIntervalSeconds: 2, orphanGraceSeconds: 5, queuedIntervalSeconds: 2, deliveriesIntervalSeconds: 2, deliveriesRetrySeconds: 2 };
const hosts: string[] = [];
let redis: TestRedis;

before(async () => {
  redis = await startRedis();
});
after(async () => {
  for (const h of hosts) await removeContainersOf(h);
  await redis.stop();
});


/** Every job completed successfully, each on a runner of its own, one registration each. */
function assertEachJobRanOnce(fake: FakeGitHub, count: number): void {
  const jobs = fake.jobs();
  assert.equal(jobs.length, count);
  assert.deepEqual(jobs.map((j) => j.conclusion), Array(count).fill("success"), "every job ran and succeeded");
  assert.equal(new Set(jobs.map((j) => j.runner_name)).size, count, "each on a runner of its own");
  assert.equal(callsTo(fake, JIT), count, "one registration per job: none served twice, no spare runner");
}

/** A `jitrunner server` child process on a fixed port, from a config file like an operator's. */
function serverCommand(fake: FakeGitHub, r: TestRedis, port: number, pools: unknown[]): () => JitrunnerProcess {
  const file = writeOperatorConfig(fake, { redis: { url: r.url, prefix: r.prefix }, server: { host: "127.0.0.1", port }, logLevel: "debug", pools });
  return () => runJitrunner(["server", "--config", file]);
}

async function ready(url: string, jr: JitrunnerProcess): Promise<void> {
  await waitFor(async () => (await fetch(`${url}/readyz`)).ok, 30_000, `server ready (output: ${jr.output().slice(-2000)})`);
}

test("the server SIGKILLed mid-burst: failed deliveries are redelivered or the jobs found queued; every job served once, nothing left", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("chaos-server");
  hosts.push(host);
  const r = scopedRedis(redis, "server");
  const pools = [fakeRunnerPool(fake, { idleTimeoutSeconds: 30, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } })];
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const server = serverCommand(fake, r, port, pools);
  let jr = server();
  await ready(url, jr);
  fake.setWebhookUrl(`${url}/webhooks/github`);
  const worker = await startSystem("worker", fake, r, host, {
    worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 },
    pools,
    reconcile: RECONCILE,
  });
  const volumes = watchVolumes([host]);
  try {
    const jobs: FakeJob[] = [];
    const queue = async () => jobs.push(await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS }));
    for (let i = 0; i < 3; i++) await queue();
    jr.child.kill("SIGKILL");
    await jr.stop();
    // GitHub keeps sending while no server answers: three more jobs, and the in_progress and
    // completed of jobs that start and finish meanwhile.
    for (let i = 0; i < 3; i++) await queue();
    await waitFor(
      () => jobs.some((j) => ["in_progress", "completed"].every((a) => fake.deliveries.some((d) => d.jobId === j.id && d.action === a && d.status === 0))),
      60_000,
      "a job ran from start to end while the server was down",
    );
    const lostQueued = fake.deliveries.filter((d) => d.action === "queued" && d.status === 0 && !d.redelivery);
    assert.deepEqual(lostQueued.map((d) => d.jobId), jobs.slice(3).map((j) => j.id), "the queued deliveries after the kill failed");

    // GitHub lists them as failed (no answer) on the App's deliveries.
    const listed = await new FakeGitHubClient(fake).call("GET", "/app/hook/deliveries?per_page=100", { auth: "app" });
    const failedGuids = new Set((listed.body as Array<{ guid: string; status_code: number }>).filter((d) => d.status_code === 0).map((d) => d.guid));
    for (const d of lostQueued) assert.ok(failedGuids.has(d.id), `failed delivery ${d.id} listed`);

    jr = server();
    await ready(url, jr);
    await waitFor(
      () => fake.jobs().every((j) => j.status === "completed"),
      240_000,
      `every job completed (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    assertEachJobRanOnce(fake, 6);

    // The leader asks GitHub to redeliver the failed deliveries, again and again (2, 8, 32 s...
    // apart here) while the server is down; one reaches the restarted server, however long its
    // restart took on a loaded machine.
    await waitFor(() => fake.deliveries.some((d) => d.redelivery && d.status === 202), 180_000, "a redelivery reached the restarted server");
    // Each lost queued job came back: as a redelivery the restarted server accepted, or found
    // queued by the leader (the other path then added nothing while its demand was held). A
    // redelivery that came once the job was served added demand again, which asked GitHub first
    // and registered nothing (Demand.seenBefore): each job still ran once (above).
    const serverMetrics = await (await fetch(`${url}/metrics`)).text();
    const workerMetrics = await (await fetch(`${worker.url}/metrics`)).text();
    const redelivered = metricSample(serverMetrics, "jitrunner_webhook_deliveries_total", 'event="workflow_job",action="queued",outcome="queued"');
    const recovered = metricSample(workerMetrics, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"');
    assert.ok(redelivered + recovered >= 3, `3 lost queued jobs recovered (${redelivered} redelivered, ${recovered} found queued)`);
    assert.ok(
      metricSample(workerMetrics, "jitrunner_reconcile_actions_total", 'loop="github-deliveries",action="delivery_redelivered"') >= 1,
      "the leader asked GitHub to redeliver failed deliveries",
    );

    await assertNothingLeft({ hostIds: [host], fake, redis: r, pools: ["default"], volumes });
    // Failed deliveries, redeliveries and recoveries logged: no secret among them.
    await assertNoSecrets(fake, { logs: worker.logs(), sys: { url: worker.url, statusPage: false }, texts: { "server output": jr.output() } });
    await assertNoSecrets(fake, { sys: { url } });
    assert.equal(await jr.stop(), 0, "the restarted server exits 0 on SIGTERM");
  } finally {
    await volumes.stop();
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(`--- server\n${jr.output()}\n--- worker\n${worker.logs()}`);
    await jr.stop();
    await worker.close();
    await fake.close();
  }
});

test("Redis SIGKILLed (AOF, everysec) while runners run jobs and restarted: every job finishes, nothing lost, nothing left", async () => {
  const own = await startRedis({ own: true, appendOnly: true });
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("chaos-redis");
  hosts.push(host);
  const sys = await startSystem("all", fake, own, host, {
    worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 },
    pools: [fakeRunnerPool(fake, { idleTimeoutSeconds: 30, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "11" } })],
    reconcile: RECONCILE,
  });
  const volumes = watchVolumes([host]);
  try {
    const first: FakeJob[] = [];
    for (let i = 0; i < 3; i++) first.push(await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS }));
    await waitFor(
      () => fake.jobs().every((j) => j.status === "in_progress"),
      120_000,
      `3 runners running jobs (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    await waitFor(() => (sys.logs().match(/"msg":"runner busy"/g)?.length ?? 0) === 3, 10_000, "the 3 in_progress webhooks taken");

    const pid = own.pid;
    await own.kill("SIGKILL");
    // GitHub keeps sending while Redis is down: two more jobs, whose queued deliveries wait for
    // Redis (server.redisWaitSeconds, 3 s) and, Redis being down longer, are answered 503; the
    // leader's loops recover them after.
    const late = [fake.queueJob({ owner: "acme", repo: "app", labels: LABELS }), fake.queueJob({ owner: "acme", repo: "app", labels: LABELS })];
    // Redis stays down until both late queued deliveries have been answered (503 once the server's
    // wait for Redis ran out), not for a fixed time that a slow machine may not fill.
    const firstIds = new Set(first.map((j) => j.id));
    const refusedLate = () => fake.deliveries.filter((d) => d.action === "queued" && !firstIds.has(d.jobId) && d.status === 503);
    await waitFor(
      () => refusedLate().length >= 2,
      30_000,
      `both late queued deliveries answered 503 (have ${JSON.stringify(fake.deliveries.filter((d) => !firstIds.has(d.jobId)).map((d) => [d.action, d.status]))})`,
    );
    assert.ok(fake.jobs().filter((j) => j.status === "in_progress").length >= 1, "runners were mid-job when Redis came back");
    await own.restart();
    assert.notEqual(own.pid, pid, "a new redis-server process");
    assert.ok(existsSync(join(own.dir, "appendonlydir")), "it replayed its append-only files");

    // Nothing written before the crash was lost: the running runners' records (a worker that
    // restarts now adopts them rather than removing them as unknown) and the de-duplication keys
    // (GitHub redelivering the first queued deliveries adds no second demand).
    const conn = redisConnection(own.url);
    try {
      const names = new Set((await new RunnerStore(conn, own.prefix).listAll()).filter((rec) => rec.runnerId).map((rec) => rec.name));
      for (const j of first) assert.ok(names.has(String(fake.jobs().find((x) => x.id === j.id)?.runner_name)), `the record of job ${j.id}'s runner survived`);
    } finally {
      conn.disconnect();
    }
    // The server's connections fail fast and reconnect by themselves: until they have, a delivery
    // is answered 503 (and GitHub's redelivery, asked for by the github-deliveries loop, comes later).
    await waitFor(
      async () => {
        const body = (await (await fetch(`${sys.url}/readyz`)).json()) as { problems?: string[] };
        return !(body.problems ?? []).some((p) => p.startsWith("redis:"));
      },
      30_000,
      "the server connected to Redis again",
    );
    for (const j of first) {
      const queued = fake.deliveries.find((d) => d.jobId === j.id && d.action === "queued")!;
      assert.equal(await fake.redeliver(queued.id), 202);
    }
    await Promise.all(late);

    await waitFor(
      () => fake.jobs().every((j) => j.status === "completed"),
      240_000,
      `every job completed (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    assertEachJobRanOnce(fake, 5);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    const queued = (o: string) => metricSample(metrics, "jitrunner_webhook_deliveries_total", `event="workflow_job",action="queued",outcome="${o}"`);
    const recovered = metricSample(metrics, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"');
    assert.ok(queued("redis_unavailable") >= 2, "the queued deliveries sent while Redis was down were answered 503");
    // Each of those came back: redelivered and queued, or found queued by the leader, or both at
    // once (each then sees no item and adds: BullMQ keeps one per job attempt, and every job ran
    // once, as checked above).
    assert.ok(queued("queued") + recovered >= 5, `5 demands (${queued("queued")} from webhooks, ${recovered} found queued)`);
    assert.equal(queued("replayed"), 3, "the 3 redeliveries recognised after the restart");
    assert.doesNotMatch(sys.logs(), /"reason":"reconcile_unknown"/, "no running runner was taken for unknown and removed");
    await assertNothingLeft({ hostIds: [host], fake, redis: own, pools: ["default"], volumes });
    // Redis errors, 503s and retries logged: no secret among them.
    await assertNoSecrets(fake, { logs: sys.logs(), sys });
  } finally {
    await volumes.stop();
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(sys.logs());
    await sys.close();
    await fake.close();
    await own.stop();
  }
});
