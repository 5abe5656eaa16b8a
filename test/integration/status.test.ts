/**
 * The operators' view over a real Redis: the all-runners index of RunnerStore, the bounded
 * activity log fed by the real ingress (signed webhooks through the real HTTP app), queue depth
 * from the real BullMQ queues, and the tokens on `/` and `/metrics`.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import type { FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import { pino } from "pino";
import { Secret } from "../../src/config/secret.ts";
import { GitHubError } from "../../src/errors.ts";
import { buildApp } from "../../src/http/app.ts";
import { createLogger } from "../../src/logger.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { collectStatus, describeJob } from "../../src/state/status.ts";
import { renderStatusText } from "../../src/cli/status-text.ts";
import { renderStatusPage } from "../../src/http/status-page.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { examplesOf, queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const ADMIN_TOKEN = "admin-token-0123456789abcdef";
const METRICS_TOKEN = "metrics-token-0123456789abcdef";

let redis: TestRedis;
let conn: Redis;
let app: FastifyInstance;
let queues: DemandQueues;
let runners: RunnerStore;
let activity: ActivityLog;
const config = testConfig({
  pools: [
    { name: "default", labels: ["self-hosted", "linux", "x64"], image: "runner:1", isolation: "capabilities" },
    { name: "gpu", labels: ["self-hosted", "linux", "gpu"], image: "runner-gpu:2" },
  ],
});

function record(name: string, o: Partial<RunnerRecord> = {}): RunnerRecord {
  return {
    name,
    pool: "default",
    host: "host-a",
    state: "starting",
    installationId: 1,
    owner: "acme",
    repo: "app",
    demandId: `${name}-1`,
    createdAt: Date.now() - 90_000,
    ...o,
  };
}

/** An ingress of its own under `prefix` (its runners and deliveries there), quiet and unmeasured. */
function ingressUnder(prefix: string, cfg: typeof config, demand: DemandQueues, log: ActivityLog): Ingress {
  return new Ingress({
    config: cfg,
    demand,
    runners: new RunnerStore(conn, prefix),
    deliveries: new DeliveryLog(conn, prefix),
    metrics: new Metrics({ processMetrics: false }),
    logger: pino({ level: "silent" }),
    activity: log,
  });
}

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
  queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
  runners = new RunnerStore(conn, redis.prefix);
  activity = new ActivityLog(conn, redis.prefix, { keepJobs: 5, keepFailures: 3 });
  const metrics = new Metrics({ processMetrics: false });
  const logger = pino({ level: "silent" });
  const ingress = new Ingress({
    config,
    demand: queues,
    runners,
    deliveries: new DeliveryLog(conn, redis.prefix),
    metrics,
    logger,
    activity,
  });
  app = await buildApp({
    logger,
    metrics,
    webhooks: { secret: config.secrets.webhookSecret, bodyLimit: config.server.bodyLimitBytes, ingress },
    readiness: async () => [],
    status: {
      snapshot: () => collectStatus({ pools: config.pools, runners, activity, pending: (p) => queues.pending(p) }),
      adminToken: new Secret(ADMIN_TOKEN),
    },
    metricsToken: new Secret(METRICS_TOKEN),
  });
});

after(async () => {
  await app?.close();
  await queues?.close();
  conn?.disconnect();
  await redis?.stop();
});

function deliver(payload: object) {
  const body = JSON.stringify(payload);
  return app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET) });
}

test("listAll sees every runner on every host and forgets removed ones", async () => {
  await runners.put(record("jitrunner-default-aaaa", { host: "host-a", state: "busy", jobId: 11 }));
  await runners.put(record("jitrunner-gpu-bbbb", { host: "host-b", pool: "gpu", repo: "", createdAt: Date.now() - 5000 }));
  await runners.put(record("jitrunner-default-cccc", { host: "host-b" }));
  assert.deepEqual(
    (await runners.listAll()).map((r) => [r.name, r.host, r.state]),
    [
      ["jitrunner-default-aaaa", "host-a", "busy"],
      ["jitrunner-default-cccc", "host-b", "starting"],
      ["jitrunner-gpu-bbbb", "host-b", "starting"],
    ],
    "oldest first",
  );
  await runners.remove(record("jitrunner-default-cccc", { host: "host-b" }), true);
  assert.deepEqual((await runners.listAll()).map((r) => r.name), ["jitrunner-default-aaaa", "jitrunner-gpu-bbbb"]);
});

test("the ingress records what it did with each job; jobs not ours stay out; the list is bounded", async () => {
  assert.equal((await deliver(queuedPayload({ jobId: 7001, labels: ["self-hosted", "gpu"] }))).statusCode, 202);
  // Another tool's job (no pool matches): acknowledged, counted, but not in the operators' list.
  assert.equal((await deliver(queuedPayload({ jobId: 7002, labels: ["ubuntu-latest"] }))).statusCode, 202);
  const inProgress = structuredClone(examplesOf("workflow_job").find((e) => e.action === "in_progress")!);
  inProgress.workflow_job = { ...inProgress.workflow_job, id: 11, run_attempt: 1, runner_name: "jitrunner-default-aaaa" };
  // Where that runner is registered: a delivery from elsewhere naming it is a namesake's (not_ours).
  Object.assign(inProgress, { installation: { id: 1 }, repository: queuedPayload({ jobId: 11, labels: [] }).repository });
  assert.equal((await deliver(inProgress)).statusCode, 202);

  const events = await activity.recentJobEvents();
  assert.deepEqual(
    events.map((e) => [e.jobId, e.action, e.outcome]),
    [
      [11, "in_progress", "runner_busy"],
      [7001, "queued", "queued"],
    ],
  );
  assert.deepEqual(events[1]!.labels, ["self-hosted", "gpu"]);
  assert.equal(events[1]!.repo, "acme/app");

  for (let i = 0; i < 8; i++) await deliver(queuedPayload({ jobId: 8000 + i, labels: ["self-hosted"] }));
  const bounded = await activity.recentJobEvents();
  assert.equal(bounded.length, 5, "keepJobs caps the list");
  assert.equal(bounded[0]!.jobId, 8007, "newest first");
});

test("launch failures are recorded with their code, bounded, and without token-like strings", async () => {
  const demand = { pool: "gpu", jobId: 7001, owner: "acme", repo: "app" };
  const leaky = new GitHubError(`POST generate-jitconfig failed: 502 (token ghs_${"x".repeat(36)})`, 502, { retryable: true });
  await activity.launchFailure(demand, 1, leaky, false);
  await activity.launchFailure(demand, 2, Object.assign(new Error("no such image"), { code: "E_DOCKER" }), true);
  const failures = await activity.recentFailures();
  assert.deepEqual(
    failures.map((f) => [f.attempt, f.reason, f.retryable]),
    [
      [2, "E_DOCKER", false],
      [1, "E_GITHUB", true],
    ],
  );
  assert.ok(!failures[1]!.message.includes("ghs_"), failures[1]!.message);
  assert.match(failures[1]!.message, /502/);
});

test("the status page needs the admin token, and shows pools, queue depth, hosts, runners, jobs and failures", async () => {
  assert.equal((await app.inject({ url: "/" })).statusCode, 401);
  const wrong = await app.inject({ url: "/", headers: { authorization: `Bearer ${ADMIN_TOKEN}x` } });
  assert.equal(wrong.statusCode, 401);
  assert.match(String(wrong.headers["www-authenticate"]), /^Bearer/);
  assert.equal((await app.inject({ url: "/", headers: { authorization: `Basic ${ADMIN_TOKEN}` } })).statusCode, 401);
  assert.ok(!wrong.body.includes("jitrunner-default-aaaa"), "nothing leaks without the token");

  const res = await app.inject({ url: "/", headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.statusCode, 200);
  assert.match(String(res.headers["content-type"]), /^text\/html/);
  assert.match(String(res.headers["content-security-policy"]), /default-src 'none'/);
  assert.equal(res.headers["cache-control"], "no-store");
  const body = res.body;
  for (const text of ["jitrunner-default-aaaa", "jitrunner-gpu-bbbb", "host-a", "host-b", "runner-gpu:2", "capabilities", "E_DOCKER", "no such image"]) {
    assert.ok(body.includes(text), `page shows ${text}`);
  }
  // Queue depth per pool from the real queues: 7001 (gpu) and 8000-8007 (default) are waiting.
  const snapshot = await collectStatus({ pools: config.pools, runners, activity, pending: (p) => queues.pending(p) });
  assert.deepEqual(snapshot.pools.map((p) => [p.name, p.pending]), [["default", 8], ["gpu", 1]]);
  assert.deepEqual(snapshot.hosts.map((h) => [h.id, h.runners.busy, h.runners.starting]), [["host-a", 1, 0], ["host-b", 0, 1]]);
  assert.equal(snapshot.jobs.find((j) => j.jobId === 8007)?.pool, "default");
  assert.deepEqual(snapshot.problems, []);
  // No secret of the config is on the page.
  for (const secret of [ADMIN_TOKEN, METRICS_TOKEN, WEBHOOK_SECRET, config.secrets.privateKey.reveal().slice(40, 80)]) {
    assert.ok(!body.includes(secret));
  }
});

test("hosts show their heartbeat: up, draining, engine down, and gone with an ever older last beat", async () => {
  const hosts = new HostStore(conn, `${redis.prefix}:beats`);
  await hosts.heartbeat({ id: "host-up", capacity: 4, used: 1, pools: ["gpu", "default"] }, 60_000);
  await hosts.heartbeat({ id: "host-engine", capacity: 0, used: 0, pools: ["default"] }, 60_000);
  await hosts.heartbeat({ id: "host-drain", capacity: 0, used: 2, pools: ["default"] }, 60_000);
  await hosts.drain("host-drain");
  await hosts.heartbeat({ id: "host-gone", capacity: 4, used: 3, pools: ["default"] }, 50);
  await new Promise((r) => setTimeout(r, 1100));
  const snapshot = await collectStatus({ pools: config.pools, runners, hosts });
  const byId = new Map(snapshot.hosts.map((h) => [h.id, h]));
  assert.deepEqual(
    ["host-up", "host-engine", "host-drain", "host-gone"].map((id) => [id, byId.get(id)?.health, byId.get(id)?.used, byId.get(id)?.capacity]),
    [["host-up", "up", 1, 4], ["host-engine", "engine_down", 0, 0], ["host-drain", "draining", 2, 0], ["host-gone", "gone", 0, 0]],
  );
  assert.ok(byId.get("host-gone")!.heartbeatAgeSeconds! >= 1, "a gone host's last beat keeps its time");
  // Hosts known only by their runners are still listed, with no heartbeat facts.
  assert.equal(byId.get("host-a")?.health, undefined);
  assert.equal(byId.get("host-a")?.runners.busy, 1);
  // POOLS: the pools a host's worker serves, from its heartbeat, though it has no runner; a host
  // known only by its runners (or gone: no record) shows theirs.
  assert.deepEqual(
    ["host-up", "host-engine", "host-gone", "host-a", "host-b"].map((id) => [id, byId.get(id)?.runners.busy ?? 0, byId.get(id)?.pools]),
    [["host-up", 0, ["default", "gpu"]], ["host-engine", 0, ["default"]], ["host-gone", 0, []], ["host-a", 1, ["default"]], ["host-b", 0, ["gpu"]]],
  );
  const shown = renderStatusText(snapshot);
  assert.match(shown, /^HOSTS\nHOST +HEALTH +SLOTS +HEARTBEAT +RUNNERS +POOLS SERVED +OLDEST RUNNER$/m);
  assert.match(shown, /^host-up +up +1\/4 +\S+ ago +none +default,gpu\b/m);

  // The same facts as metrics: a gone host has capacity 0 and an age that grows.
  const metrics = new Metrics({ processMetrics: false });
  metrics.hosts((await hosts.list()).map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, beatAgeMs: h.beatAgeMs })));
  const text = await metrics.render();
  assert.match(text, /jitrunner_host_capacity\{host="host-gone"\} 0/);
  assert.ok(Number(/jitrunner_host_heartbeat_age_seconds\{host="host-gone"\} (\S+)/.exec(text)?.[1]) >= 1);
  // Forgotten (cleaned up) hosts leave no series behind.
  await hosts.forget("host-gone");
  metrics.hosts((await hosts.list()).map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, beatAgeMs: h.beatAgeMs })));
  assert.doesNotMatch(await metrics.render(), /host-gone/);
});

test("queue counts per state come from BullMQ", async () => {
  const counts = await queues.counts(["default", "gpu"]);
  assert.deepEqual(Object.keys(counts.get("default")!).sort(), ["active", "completed", "delayed", "failed", "paused", "prioritized", "waiting"]);
  assert.equal(counts.get("default")!.waiting, (await queues.pending(["default"])).get("default"));
  assert.equal(counts.get("gpu")!.waiting, 1);
});

test("a part that cannot be read is reported on the page; the rest is still shown", async () => {
  // Real queues whose waiting list Redis cannot read as one (a key of another type): the count fails.
  const broken = `${redis.prefix}-broken`;
  const brokenQueues = new DemandQueues({ redisUrl: redis.url, prefix: broken, attempts: 3 }, conn);
  await conn.set(`${broken}:bull:demand-${config.pools[0]!.name}:wait`, "not a list");
  try {
    const snapshot = await collectStatus({ pools: config.pools, runners, activity, pending: (p) => brokenQueues.pending(p) });
    assert.equal(snapshot.problems.length, 1, snapshot.problems.join("; "));
    assert.match(snapshot.problems[0]!, /^queue depth: .*WRONGTYPE/);
    assert.equal(snapshot.pools[0]!.pending, undefined);
    assert.equal(snapshot.runners.length, 2);
  } finally {
    await brokenQueues.close();
  }
});

test("/metrics needs its own token when one is set; the admin token does not open it", async () => {
  assert.equal((await app.inject({ url: "/metrics" })).statusCode, 401);
  assert.equal((await app.inject({ url: "/metrics", headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 401);
  const ok = await app.inject({ url: "/metrics", headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
  assert.equal(ok.statusCode, 200);
  assert.match(ok.body, /jitrunner_webhook_deliveries_total/);
  // Health stays open: orchestrators probe it without credentials.
  assert.equal((await app.inject({ url: "/healthz" })).statusCode, 200);
});

test("without tokens configured, / and /metrics are open; a worker-only app has no page", async () => {
  const logger = pino({ level: "silent" });
  const open = await buildApp({
    logger,
    metrics: new Metrics({ processMetrics: false }),
    readiness: async () => [],
    status: { snapshot: () => collectStatus({ pools: config.pools, runners }) },
  });
  const workerOnly = await buildApp({ logger, metrics: new Metrics({ processMetrics: false }), readiness: async () => [] });
  try {
    assert.equal((await open.inject({ url: "/" })).statusCode, 200);
    assert.equal((await open.inject({ url: "/metrics" })).statusCode, 200);
    assert.equal((await workerOnly.inject({ url: "/" })).statusCode, 404);
  } finally {
    await open.close();
    await workerOnly.close();
  }
});

test("a request that fails with a credential in its error's message gets 500 and a log line with the credential redacted", async () => {
  // Error text can carry what GitHub or a library said; the error handler logs it as a string,
  // which the logger's serializer redacts (an object would pass through it unredacted).
  const token = `ghs_${"A1b2C3d4".repeat(5)}`;
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const failing = await buildApp({
    logger: createLogger("info", sink),
    metrics: new Metrics({ processMetrics: false }),
    readiness: async () => [],
    status: {
      snapshot: async () => {
        throw new Error(`lookup failed with token ${token}`);
      },
    },
  });
  try {
    const res = await failing.inject({ url: "/" });
    assert.equal(res.statusCode, 500);
    assert.ok(!res.body.includes(token));
    const failed = lines.filter((l) => l.includes('"msg":"request failed"'));
    assert.equal(failed.length, 1, lines.join(""));
    assert.match(failed[0]!, /lookup failed with token/);
    assert.ok(!failed[0]!.includes(token), failed[0]);
  } finally {
    await failing.close();
  }
});

test("a runner recorded busy with a job GitHub did not name (job 0: found busy at a timeout) shows no job id; one with its job shows it", async () => {
  const store = new RunnerStore(conn, `${redis.prefix}:job0`);
  await store.put(record("jitrunner-default-0000unkn01", { host: "host-a" }));
  await store.put(record("jitrunner-default-0000known1", { host: "host-a" }));
  assert.ok(await store.mark("jitrunner-default-0000unkn01", "busy", 0));
  assert.ok(await store.mark("jitrunner-default-0000known1", "busy", 42));
  const snapshot = await collectStatus({ pools: config.pools, runners: store });
  assert.deepEqual(
    snapshot.runners.map((r) => [r.name, r.state, r.jobId]),
    [
      ["jitrunner-default-0000unkn01", "busy", undefined],
      ["jitrunner-default-0000known1", "busy", 42],
    ],
  );
});

test("a job's pool on the status is the one the ingress chose: an organization pool serves no user's repository; an entry from before owner types were recorded matches as before", async () => {
  // A job of `self-hosted` fits both pools, and the organization pool has the fewest labels: the
  // ingress gives it to a user's job the repository pool all the same, and ignores a user's job of
  // `self-hosted, linux`, which only the organization pool fits.
  const prefix = `${redis.prefix}:owners`;
  const owned = testConfig({
    pools: [
      { name: "org", labels: ["self-hosted", "linux"], image: "runner:1", scope: "organization" },
      { name: "solo", labels: ["self-hosted", "x64", "big"], image: "runner:1" },
    ],
  });
  const ownedQueues = new DemandQueues({ redisUrl: redis.url, prefix, attempts: 3 }, conn);
  const log = new ActivityLog(conn, prefix);
  const ingress = ingressUnder(prefix, owned, ownedQueues, log);
  try {
    const deliver = (jobId: number, ownerType: "Organization" | "User", labels: string[]) =>
      ingress.handle({ event: "workflow_job", deliveryId: `owners-${jobId}`, receivedAt: Date.now(), payload: queuedPayload({ jobId, labels, ownerType, owner: ownerType === "User" ? "octocat" : "acme" }) });
    assert.equal(await deliver(9101, "User", ["self-hosted"]), "queued");
    assert.equal(await deliver(9102, "User", ["self-hosted", "linux"]), "ignored_user_owner_org_pool");
    assert.equal(await deliver(9103, "Organization", ["self-hosted"]), "queued");
    assert.deepEqual([...(await ownedQueues.pending(["org", "solo"]))], [["org", 1], ["solo", 1]], "the ingress's choice: 9101 to solo, 9103 to org");
    // Written before events said the owner's type: matched by labels alone, as then.
    const old = { at: Date.now(), jobId: 9100, runAttempt: 1, repo: "octocat/app", labels: ["self-hosted"], action: "queued", outcome: "queued" };
    await conn.lpush(`${prefix}:activity:jobs`, JSON.stringify(old));

    const snapshot = await collectStatus({ pools: owned.pools, runners: new RunnerStore(conn, prefix), activity: log });
    const poolOf = (jobId: number) => snapshot.jobs.find((j) => j.jobId === jobId);
    assert.deepEqual(
      [9100, 9101, 9102, 9103].map((id) => [id, poolOf(id)?.ownerType, poolOf(id)?.pool]),
      [
        [9100, undefined, "org"],
        [9101, "User", "solo"],
        [9102, "User", undefined],
        [9103, "Organization", "org"],
      ],
    );
  } finally {
    await ownedQueues.close();
  }
});

test("a job whose launch failed for good shows as failed, not waiting for a runner, until a later attempt or its start says otherwise", async () => {
  const prefix = `${redis.prefix}:final`;
  const finalQueues = new DemandQueues({ redisUrl: redis.url, prefix, attempts: 3 }, conn);
  const log = new ActivityLog(conn, prefix);
  const ingress = ingressUnder(prefix, config, finalQueues, log);
  try {
    const queued = (jobId: number) => ingress.handle({ event: "workflow_job", deliveryId: `final-${jobId}`, receivedAt: Date.now(), payload: queuedPayload({ jobId, labels: ["self-hosted", "gpu"] }) });
    const demand = (jobId: number) => ({ pool: "gpu", jobId, owner: "acme", repo: "app" });
    const missing = Object.assign(new Error("create container failed (404): No such image: runner-gpu:2"), { code: "E_DOCKER" });
    for (const id of [9201, 9202, 9203, 9204]) assert.equal(await queued(id), "queued");
    // 9201: its last attempt failed; 9202: a try that is tried again; 9204: failed for good, then tried again by the reconciler and failing again, not for good.
    await log.launchFailure(demand(9201), 1, missing, false);
    await log.launchFailure(demand(9201), 3, missing, true);
    await log.launchFailure(demand(9202), 1, missing, false);
    await log.launchFailure(demand(9204), 3, missing, true);
    await log.launchFailure(demand(9204), 1, missing, false);
    // 9203: failed for good, then started (the reconciler's fresh attempts launched its runner, its record gone since).
    await log.launchFailure(demand(9203), 3, missing, true);
    const started = structuredClone(examplesOf("workflow_job").find((e) => e.action === "in_progress")!);
    started.workflow_job = { ...started.workflow_job, id: 9203, run_attempt: 1, runner_name: "jitrunner-gpu-0000final1", labels: ["self-hosted", "gpu"] };
    Object.assign(started, { installation: { id: 1 }, repository: queuedPayload({ jobId: 9203, labels: [] }).repository });
    await ingress.handle({ event: "workflow_job", deliveryId: "final-9203-started", receivedAt: Date.now() + 1, payload: started });

    const snapshot = await collectStatus({ pools: config.pools, runners: new RunnerStore(conn, prefix), activity: log });
    const row = (jobId: number) => snapshot.jobs.find((j) => j.jobId === jobId)!;
    assert.deepEqual(
      [9201, 9202, 9203, 9204].map((id) => [id, describeJob(row(id))]),
      [
        [9201, "launch failed (final): E_DOCKER"],
        [9202, "waiting for a runner"],
        [9203, "ran on a runner no longer recorded"],
        [9204, "waiting for a runner"],
      ],
    );
    assert.equal(row(9201).launchFailed, "E_DOCKER");
    assert.match(renderStatusText(snapshot), /^\S+ ago +9201 +acme\/app +.* +gpu +launch failed \(final\): E_DOCKER$/m);
    assert.match(renderStatusPage(snapshot), /<td class="bad">launch failed \(final\): E_DOCKER<\/td>/);
  } finally {
    await finalQueues.close();
  }
});
