import { randomUUID } from "node:crypto";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { pino } from "pino";
import { emitterEventNames } from "@octokit/webhooks";
import { Redis } from "ioredis";
import { Queue } from "bullmq";
import { buildApp } from "../../src/http/app.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandConsumer, DemandQueues, redisConnection, type Lease } from "../../src/queue/demand-queue.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import type { Demand } from "../../src/demand.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { examplesOf, queuedPayload, signedHeaders } from "../helpers/webhooks.ts";
import type { FastifyInstance } from "fastify";

let redis: TestRedis;
let conn: Redis;
let app: FastifyInstance;
let metrics: Metrics;
let queues: DemandQueues;
let runners: RunnerStore;
const config = testConfig({
  pools: [
    { name: "default", labels: ["self-hosted", "linux", "x64"], image: "x" },
    { name: "oss", labels: ["ubuntu-latest", "self-hosted", "k8s", "gpu", "db-app", "dc-03"], image: "x", allowPublicRepositories: true },
  ],
  server: { bodyLimitBytes: 64 * 1024 },
});

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
  metrics = new Metrics({ processMetrics: false });
  queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
  runners = new RunnerStore(conn, redis.prefix);
  const deliveries = new DeliveryLog(conn, redis.prefix);
  const ingress = new Ingress({ config: { ...config }, demand: queues, runners, deliveries, metrics, logger: pino({ level: "silent" }) });
  app = await buildApp({
    logger: pino({ level: "silent" }),
    metrics,
    webhooks: { secret: config.secrets.webhookSecret, bodyLimit: config.server.bodyLimitBytes, ingress },
    readiness: async () => [],
  });
});

after(async () => {
  await app.close();
  await queues.close();
  conn.disconnect();
  await redis.stop();
});

async function waitingJobs(pool: string): Promise<string[]> {
  const q = new Queue(`demand-${pool}`, { connection: conn, prefix: `${redis.prefix}:bull` });
  const jobs = await q.getJobs(["waiting", "delayed", "prioritized"]);
  await q.close();
  return jobs.map((j) => j.id!).sort();
}

function post(body: string, headers: Record<string, string>) {
  return app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers });
}

/** A signed delivery of `action` for a job with those labels, as GitHub sends it before the job has a runner. */
async function sendJob(action: string, jobId: number, labels: string[], deliveryId: string = randomUUID()): Promise<string> {
  const p = queuedPayload({ jobId, labels });
  p.action = action;
  p.workflow_job.status = action;
  const body = JSON.stringify(p);
  return (await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET, deliveryId))).json().outcome;
}

/** Ages `key` by `seconds`: its time to live is that much shorter, and it is gone if that was all of it (as Redis would have it). */
async function age(key: string, seconds: number): Promise<void> {
  const left = await conn.pttl(key);
  assert.ok(left > 0, `${key} exists and expires`);
  if (left <= seconds * 1000) await conn.del(key);
  else await conn.pexpire(key, left - seconds * 1000);
}

/**
 * Leases the demand item `id` of the default pool as a worker would, and hands it to `use`.
 * Earlier tests' demand waits in the same queue: held aside, and handed back after.
 */
async function withLease(id: string, use: (lease: Lease) => Promise<void>): Promise<void> {
  const taker = redisConnection(redis.url);
  const consumer = new DemandConsumer({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, taker, "default", "test-host:1");
  try {
    await consumer.start();
    const others: Lease[] = [];
    let lease: Lease | undefined;
    for (let i = 0; i < 50 && lease?.id !== id; i++) {
      if (lease) others.push(lease);
      lease = await consumer.next();
    }
    await Promise.all(others.map((l) => l.release()));
    assert.equal(lease?.id, id, `${id} leased`);
    await use(lease);
  } finally {
    await consumer.close();
    taker.disconnect();
  }
}

test("missing or wrong signatures get 401 and queue nothing", async () => {
  const body = JSON.stringify(queuedPayload({ jobId: 1, labels: ["self-hosted", "linux"] }));
  const good = signedHeaders("workflow_job", body, WEBHOOK_SECRET);
  const { ["x-hub-signature-256"]: _sig, ...unsigned } = good;
  assert.equal((await post(body, unsigned)).statusCode, 401);
  assert.equal((await post(body, signedHeaders("workflow_job", body, "wrong-secret"))).statusCode, 401);
  assert.equal((await post(body, { ...good, "x-hub-signature-256": "sha1=abcdef" })).statusCode, 401);
  // The signature of another body does not carry over.
  assert.equal((await post(body.replace('"id":1', '"id":2'), good)).statusCode, 401);
  assert.deepEqual(await waitingJobs("default"), []);
});

test("unverified requests add no metric series of their own, whatever X-GitHub-Event they carry", async () => {
  const series = async () => (await metrics.render()).split("\n").filter((l) => l.startsWith("jitrunner_webhook_deliveries_total{"));
  const before = await series();
  const N = 50;
  for (let i = 0; i < N; i++) {
    // Event names as an attacker would pick them: each valid for a label, each new.
    const event = `made_up_${String.fromCharCode(97 + (i % 26))}_${"x".repeat(Math.floor(i / 26) + 1)}`;
    const body = JSON.stringify({ action: "queued", n: i });
    const headers = signedHeaders(event, body, "wrong-secret");
    assert.equal((await post(body, headers)).statusCode, 401);
    const { ["x-hub-signature-256"]: _sig, ...unsigned } = headers;
    assert.equal((await post(body, unsigned)).statusCode, 401);
  }
  const after = await series();
  assert.ok(!after.some((l) => l.includes("made_up_")), "no series names a sender's event");
  const added = after.filter((l) => !before.some((b) => b.replace(/ \S+$/, "") === l.replace(/ \S+$/, "")));
  assert.ok(added.length <= 2, `new series: ${added.join(", ")}`);
  const text = await metrics.render();
  const count = (outcome: string) => Number(new RegExp(`jitrunner_webhook_deliveries_total\\{event="unverified",action="none",outcome="${outcome}"\\} (\\d+)`).exec(text)?.[1]);
  assert.ok(count("bad_signature") >= N, "each request is still counted, under one fixed label");
  assert.ok(count("unsigned") >= N);
});

test("a signed body sent again with made-up X-GitHub-Event names is counted as event=\"other\", adding no series of its own", async () => {
  // The signature covers the body only: anyone who saw one signed delivery can send it with any headers.
  const body = JSON.stringify({ zen: "Design for failure.", hook_id: 1 });
  const signed = signedHeaders("ping", body, WEBHOOK_SECRET);
  const count = async () => Number(/^jitrunner_webhook_deliveries_total\{event="other",action="none",outcome="ignored_event"\} (\d+)$/m.exec(await metrics.render())?.[1] ?? 0);
  const before = await count();
  const N = 30;
  for (let i = 0; i < N; i++) {
    const event = `x${String.fromCharCode(97 + (i % 26))}${"y".repeat(Math.floor(i / 26))}`;
    const res = await post(body, { ...signed, "x-github-event": event });
    assert.deepEqual([res.statusCode, res.json().outcome], [202, "ignored_event"]);
  }
  assert.equal(await count(), before + N, "each counted, under event=\"other\"");
  const events = new Set([...(await metrics.render()).matchAll(/^jitrunner_webhook_deliveries_total\{event="([^"]*)"/gm)].map((m) => m[1]));
  assert.deepEqual([...events].filter((e) => !["workflow_job", "ping", "other", "unverified"].includes(e!)), [], "no series names a sender's event");
});

test("every event GitHub sends (the names @octokit/webhooks lists, projects_v2_item's digits included) other than those we act on is answered 202 and counted as ignored", async () => {
  const body = JSON.stringify({ action: "created", hook_id: 1 });
  const names = [...new Set(emitterEventNames.filter((n: string) => /^[a-z0-9_]+$/.test(n)))].filter((n) => !["workflow_job", "ping", "repository"].includes(n));
  assert.ok(names.length > 50 && names.includes("projects_v2_item"), `${names.length} event names`);
  // Their actions are none of ours to label: `other`, one series however many there are.
  const count = async () => Number(/^jitrunner_webhook_deliveries_total\{event="other",action="other",outcome="ignored_event"\} (\d+)$/m.exec(await metrics.render())?.[1] ?? 0);
  const before = await count();
  for (const name of names) {
    const res = await post(body, signedHeaders(name, body, WEBHOOK_SECRET));
    assert.deepEqual([res.statusCode, res.json().outcome], [202, "ignored_event"], name);
  }
  assert.equal(await count(), before + names.length);
});

test("signed bodies with made-up actions or conclusions add no series of their own: counted as `other`", async () => {
  const sample = (text: string, series: string) => Number(text.split("\n").find((l) => l.startsWith(`${series} `))?.split(" ")[1] ?? 0);
  const before = await metrics.render();
  const send = async (event: string, p: object) => {
    const body = JSON.stringify(p);
    return (await post(body, signedHeaders(event, body, WEBHOOK_SECRET))).json().outcome;
  };
  for (const action of ["zz_a", "zz_b"]) {
    assert.equal(await sendJob(action, 7_400_001, ["self-hosted", "linux"]), "ignored_action");
    // This ingress acts on no `repository` event: counted all the same.
    assert.equal(await send("repository", { action, repository: { name: "app", owner: { login: "acme" } } }), "ignored_event");
  }
  // A job that ran on a runner named as ours (none we know), with a conclusion GitHub never sends.
  const p = queuedPayload({ jobId: 7_400_002, labels: ["self-hosted", "linux", "x64"] });
  p.action = "completed";
  p.workflow_job.status = "completed";
  p.workflow_job.runner_name = `${config.runnerNamePrefix}-default-zzzzzzzzzz`;
  p.workflow_job.conclusion = "zz_x";
  p.workflow_job.started_at = p.workflow_job.created_at;
  p.workflow_job.completed_at = p.workflow_job.created_at;
  assert.equal(await send("workflow_job", p), "runner_unknown");
  const text = await metrics.render();
  assert.doesNotMatch(text, /"zz_/, "no label value a sender made up");
  const added = (series: string) => sample(text, series) - sample(before, series);
  assert.equal(added('jitrunner_webhook_deliveries_total{event="workflow_job",action="other",outcome="ignored_action"}'), 2);
  assert.equal(added('jitrunner_webhook_deliveries_total{event="repository",action="other",outcome="ignored_event"}'), 2);
  assert.equal(added('jitrunner_job_duration_seconds_count{pool="default",conclusion="other"}'), 1);
});

test("a queued job becomes one demand item; replays and redeliveries add nothing", async () => {
  const body = JSON.stringify(queuedPayload({ jobId: 555, runAttempt: 1, labels: ["self-hosted", "Linux"] }));
  const headers = signedHeaders("workflow_job", body, WEBHOOK_SECRET, "delivery-555");
  const first = await post(body, headers);
  assert.equal(first.statusCode, 202);
  assert.equal(first.json().outcome, "queued");
  for (let i = 0; i < 3; i++) {
    // The same delivery id again: a replay, acknowledged and ignored.
    const again = await post(body, headers);
    assert.equal(again.statusCode, 202);
    assert.equal(again.json().outcome, "replayed");
    // A new delivery of the same job attempt (GitHub sent the event twice): no new demand.
    const dup = await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET));
    assert.equal(dup.json().outcome, "duplicate");
  }
  // A new attempt of the same job is new demand.
  const rerun = JSON.stringify(queuedPayload({ jobId: 555, runAttempt: 2, labels: ["self-hosted"] }));
  assert.equal((await post(rerun, signedHeaders("workflow_job", rerun, WEBHOOK_SECRET))).json().outcome, "queued");
  assert.deepEqual(await waitingJobs("default"), ["555-1", "555-2"]);
});

test("a job no pool serves is ignored and counted, never queued", async () => {
  const body = JSON.stringify(queuedPayload({ jobId: 777, labels: ["windows", "self-hosted"] }));
  const res = await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET));
  assert.equal(res.statusCode, 202);
  assert.equal(res.json().outcome, "ignored_no_pool");
  assert.ok(!(await waitingJobs("default")).includes("777-1"));
  const text = await metrics.render();
  assert.match(text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="ignored_no_pool"\} 1/);
});

test("GitHub's example workflow_job payloads pass through the real ingress", async () => {
  const outcomes = [];
  for (const example of examplesOf("workflow_job")) {
    const body = JSON.stringify(example);
    const res = await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET));
    assert.equal(res.statusCode, 202, `example ${example.action}/${example.workflow_job.status}`);
    outcomes.push(`${example.action}/${example.workflow_job.status}:${res.json().outcome}`);
  }
  assert.deepEqual(outcomes.sort(), [
    "completed/completed:not_ours",
    "completed/completed:not_ours",
    "in_progress/in_progress:not_ours",
    "in_progress/in_progress:not_ours",
    "in_progress/in_progress:not_ours",
    "queued/queued:queued",
    "queued/waiting:ignored_not_queued",
    // Waiting for an approval: its demand dropped where still waiting (another job's example: none).
    "waiting/waiting:no_demand",
  ]);
  const queuedExample = examplesOf("workflow_job").find((e) => e.action === "queued" && e.workflow_job.status === "queued")!;
  assert.deepEqual(await waitingJobs("oss"), [`${queuedExample.workflow_job.id}-${queuedExample.workflow_job.run_attempt}`]);
});

test("ping 200, other events 202 and counted, malformed 400, wrong type 415, too big 413; those refused unread are counted as unverified", async () => {
  const count = (text: string, labels: string) => Number(new RegExp(`^jitrunner_webhook_deliveries_total\\{${labels}\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
  const before = await metrics.render();
  const ping = JSON.stringify({ zen: "Keep it logically awesome.", hook_id: 1 });
  assert.equal((await post(ping, signedHeaders("ping", ping, WEBHOOK_SECRET))).statusCode, 200);
  const push = JSON.stringify({ ref: "refs/heads/main" });
  const pushRes = await post(push, signedHeaders("push", push, WEBHOOK_SECRET));
  assert.equal(pushRes.statusCode, 202);
  assert.equal(pushRes.json().outcome, "ignored_event");
  const junk = "{not json";
  assert.equal((await post(junk, signedHeaders("workflow_job", junk, WEBHOOK_SECRET))).statusCode, 400);
  const { ["x-github-delivery"]: _d, ...noDelivery } = signedHeaders("workflow_job", ping, WEBHOOK_SECRET);
  assert.equal((await post(ping, noDelivery)).statusCode, 400);
  const shapeless = JSON.stringify({ action: "queued", workflow_job: { id: "x" } });
  assert.equal((await post(shapeless, signedHeaders("workflow_job", shapeless, WEBHOOK_SECRET))).statusCode, 400);
  const form = "payload=%7B%7D";
  assert.equal((await post(form, { ...signedHeaders("workflow_job", form, WEBHOOK_SECRET), "content-type": "application/x-www-form-urlencoded" })).statusCode, 415);
  const { ["content-type"]: _t, ...untyped } = signedHeaders("workflow_job", ping, WEBHOOK_SECRET);
  assert.equal((await post(ping, untyped)).statusCode, 415);
  // No Content-Type and no body at all (Fastify parses nothing): 415 too, not a missing signature.
  const { ["content-type"]: _e, ...emptyUntyped } = signedHeaders("workflow_job", "", WEBHOOK_SECRET);
  assert.equal((await post("", emptyUntyped)).statusCode, 415);
  const { ["x-github-event"]: _v, ...noEvent } = signedHeaders("workflow_job", ping, WEBHOOK_SECRET);
  assert.equal((await post(ping, noEvent)).statusCode, 400);
  // The event header sent twice: Node hands the route both values joined, which names no event.
  const twice = { ...signedHeaders("workflow_job", ping, WEBHOOK_SECRET), "x-github-event": "workflow_job, workflow_job" };
  const refusedTwice = await post(ping, twice);
  assert.equal(refusedTwice.statusCode, 400);
  assert.match(refusedTwice.json().error, /invalid X-GitHub-Event/);
  const big = JSON.stringify({ pad: "x".repeat(100 * 1024) });
  assert.equal((await post(big, signedHeaders("workflow_job", big, WEBHOOK_SECRET))).statusCode, 413);
  const short = { ...signedHeaders("workflow_job", ping, WEBHOOK_SECRET), "content-length": String(Buffer.byteLength(ping) + 10) };
  assert.equal((await post(ping, short)).statusCode, 400, "a body short of its Content-Length");
  const text = await metrics.render();
  const added = (labels: string) => count(text, labels) - count(before, labels);
  assert.equal(added('event="other",action="none",outcome="ignored_event"'), 1);
  assert.equal(added('event="ping",action="none",outcome="pong"'), 1);
  // Refused before the signature is checked, and counted all the same (no header of theirs as a label).
  assert.equal(added('event="unverified",action="none",outcome="unsupported_media_type"'), 3);
  // Verified, but without the headers that say what it is: counted as malformed too.
  assert.equal(added('event="workflow_job",action="none",outcome="malformed"'), 2, "the body that is no JSON, and the one without a delivery id");
  assert.equal(added('event="other",action="none",outcome="malformed"'), 2, "the one without an event name, and the one with it twice");
  assert.equal(added('event="unverified",action="none",outcome="too_large"'), 1);
  assert.equal(added('event="unverified",action="none",outcome="bad_request"'), 1);
});

test("signed payloads with fields of the wrong type are refused 400 and counted, a repository that says neither private nor visibility counts as public, and a demand keeps each label once", async () => {
  // Every action's series: a payload's action is its own.
  const malformed = (text: string) =>
    [...text.matchAll(/^jitrunner_webhook_deliveries_total\{event="workflow_job",action="[a-z_]+",outcome="malformed"\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
  const before = malformed(await metrics.render());
  const send = async (p: object) => {
    const body = JSON.stringify(p);
    return post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET));
  };
  const job = (jobId: number, change: (p: Record<string, any>) => void) => {
    const p = queuedPayload({ jobId, labels: ["self-hosted", "linux"] });
    change(p);
    return p;
  };
  const wrong: Array<[string, (p: Record<string, any>) => void]> = [
    ["runner_name a number", (p) => ((p.action = "in_progress"), (p.workflow_job.runner_name = 123))],
    ["started_at an object", (p) => ((p.action = "in_progress"), (p.workflow_job.started_at = { toString: 1 }))],
    ["conclusion an object", (p) => ((p.action = "completed"), (p.workflow_job.conclusion = {}))],
    ["visibility a number", (p) => (p.repository.visibility = 1)],
    ["private a string", (p) => (p.repository.private = "false")],
    ["installation id a string", (p) => (p.installation = { id: "5" })],
  ];
  for (const [i, [what, change]] of wrong.entries()) assert.equal((await send(job(7_300_001 + i, change))).statusCode, 400, what);
  assert.equal(malformed(await metrics.render()) - before, wrong.length, "each counted as malformed");

  // Neither `private` nor `visibility`: taken for public, so a pool that does not allow public repositories does not get it.
  const unsaid = job(7_300_101, (p) => (delete p.repository.private, delete p.repository.visibility));
  const res = await send(unsaid);
  assert.equal(res.statusCode, 202);
  assert.equal(res.json().outcome, "ignored_public_repo");

  // Labels repeated in the payload are kept once in the demand.
  const repeated = job(7_300_102, (p) => (p.workflow_job.labels = ["self-hosted", "linux", "linux", "self-hosted", "linux"]));
  assert.equal((await send(repeated)).json().outcome, "queued");
  const queue = new Queue("demand-default", { connection: conn, prefix: `${redis.prefix}:bull` });
  const item = await queue.getJob("7300102-1");
  await queue.close();
  assert.deepEqual(item?.data.labels, ["self-hosted", "linux"]);
});

test("in_progress and completed mark our runners and tell their worker", async () => {
  const name = "jitrunner-default-0123456789";
  await runners.put({ name, pool: "default", host: "h1", state: "starting", installationId: 1, owner: "acme", repo: "app", demandId: "9-1", createdAt: Date.now() });
  const sub = redisConnection(redis.url);
  const heard: string[] = [];
  await sub.subscribe(runners.eventsChannel);
  sub.on("message", (_c, m) => heard.push(JSON.parse(m).state));
  const send = async (action: string) => {
    const p = queuedPayload({ jobId: 9, labels: ["self-hosted"] });
    p.action = action;
    p.workflow_job.status = action;
    p.workflow_job.runner_name = name;
    const body = JSON.stringify(p);
    return (await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET))).json().outcome;
  };
  assert.equal(await send("completed"), "runner_completed");
  // Out of order: a late in_progress does not undo completed.
  assert.equal(await send("in_progress"), "runner_busy");
  assert.equal((await runners.get(name))?.state, "completed");
  // A sentinel published after both answers, on the same channel: once it is heard, whatever the
  // two deliveries published has been heard too (one publisher's messages arrive in order).
  await conn.publish(runners.eventsChannel, JSON.stringify({ state: "sentinel" }));
  for (let i = 0; i < 250 && !heard.includes("sentinel"); i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(heard, ["completed", "sentinel"], "completed told once; the late in_progress told nothing");
  sub.disconnect();
});

test("an in_progress or completed delivery whose claim was taken but not acted on (its answer lost) is acted on when GitHub sends it again, and counted once", async () => {
  const name = "jitrunner-default-lostclaim01";
  await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: 1, owner: "acme", repo: "app", demandId: "77-1", createdAt: Date.now() });
  const body = (action: string) => {
    const p = queuedPayload({ jobId: 77, labels: ["self-hosted", "linux", "x64"] });
    p.action = action;
    p.workflow_job.status = action;
    p.workflow_job.runner_name = name;
    p.workflow_job.started_at = p.workflow_job.created_at;
    p.workflow_job.completed_at = p.workflow_job.created_at;
    return JSON.stringify(p);
  };
  const finished = async () =>
    [...(await metrics.render()).matchAll(/^jitrunner_job_duration_seconds_count\{pool="default",conclusion="[a-z_]+"\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
  const before = await finished();
  for (const [action, state, outcome] of [["in_progress", "busy", "runner_busy"], ["completed", "completed", "runner_completed"]] as const) {
    const deliveryId = randomUUID();
    // What a claim whose answer never came leaves: the key, and nothing done.
    await conn.set(`${redis.prefix}:delivery:${deliveryId}`, "1", "EX", 600);
    const res = await post(body(action), signedHeaders("workflow_job", body(action), WEBHOOK_SECRET, deliveryId));
    assert.deepEqual([res.statusCode, res.json().outcome], [202, "replayed"]);
    assert.equal((await runners.get(name))?.state, state, `${action}: the runner is marked all the same`);
    // A delivery sent once, and then again: acted on and counted once, the copy answered "replayed".
    const again = randomUUID();
    assert.equal((await post(body(action), signedHeaders("workflow_job", body(action), WEBHOOK_SECRET, again))).json().outcome, outcome);
    assert.equal((await post(body(action), signedHeaders("workflow_job", body(action), WEBHOOK_SECRET, again))).json().outcome, "replayed");
  }
  assert.equal(await finished(), before + 1, "the job's duration observed once, by the copy that claimed");
});

/** A signed in_progress or completed delivery naming `runner`, as GitHub sends it for a job that ran on it. */
async function sendRan(action: string, runner: string, o: { runnerId: number | null; installationId: number; owner: string; repo?: string }, deliveryId?: string) {
  const p = queuedPayload({ jobId: 31, labels: ["self-hosted"], installationId: o.installationId, owner: o.owner, repo: o.repo ?? "any-repo" });
  p.action = action;
  p.workflow_job.status = action;
  p.workflow_job.runner_name = runner;
  p.workflow_job.runner_id = o.runnerId;
  const body = JSON.stringify(p);
  return (await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET, deliveryId))).json().outcome;
}

test("a delivery naming our runner's name from another runner, installation or owner (a namesake registered elsewhere) leaves the record as it was", async () => {
  // GitHub makes runner names unique per repository or organization only: anyone who administers a
  // repository the App is installed on can register a runner under our name and run a job on it.
  const name = "jitrunner-default-namesake01";
  await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: 1, owner: "my-org", repo: "", runnerId: 1, demandId: "31-1", createdAt: Date.now() });
  const recorded = await runners.get(name);
  for (const [action, from] of [
    ["completed", { runnerId: 2, installationId: 1, owner: "my-org" }],
    ["in_progress", { runnerId: 2, installationId: 1, owner: "my-org" }],
    ["completed", { runnerId: null, installationId: 999, owner: "someone-else" }],
    ["completed", { runnerId: null, installationId: 999, owner: "my-org" }],
    ["in_progress", { runnerId: null, installationId: 1, owner: "someone-else" }],
  ] as const) {
    assert.equal(await sendRan(action, name, from), "not_ours", `${action} from ${JSON.stringify(from)}`);
    assert.deepEqual(await runners.get(name), recorded, "the record unchanged");
  }
  // Its own: the owner's login in another case, any repository of the organization.
  assert.equal(await sendRan("completed", name, { runnerId: 1, installationId: 1, owner: "My-Org" }), "runner_completed");
  assert.equal((await runners.get(name))?.state, "completed");
  assert.equal(await sendRan("completed", name, { runnerId: 1, installationId: 1, owner: "my-org", repo: "other" }), "runner_completed", "a repeat is a no-op");
  assert.equal(await sendRan("in_progress", name, { runnerId: 2, installationId: 1, owner: "my-org" }), "not_ours", "refused after completed as well");
});

test("a repository runner is marked only from its repository; a record without a runner id yet by installation and owner", async () => {
  const name = "jitrunner-default-reporunnr1";
  await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: 1, owner: "acme", repo: "app", demandId: "31-1", createdAt: Date.now() });
  const recorded = await runners.get(name);
  assert.equal(await sendRan("in_progress", name, { runnerId: 7, installationId: 1, owner: "acme", repo: "other" }), "not_ours");
  assert.deepEqual(await runners.get(name), recorded);
  assert.equal(await sendRan("in_progress", name, { runnerId: 7, installationId: 1, owner: "ACME", repo: "App" }), "runner_busy");
  assert.equal((await runners.get(name))?.state, "busy");
});

test("completed for a job that never got a runner drops its waiting demand", async () => {
  const q = JSON.stringify(queuedPayload({ jobId: 4242, labels: ["self-hosted"] }));
  assert.equal((await post(q, signedHeaders("workflow_job", q, WEBHOOK_SECRET))).json().outcome, "queued");
  const p = queuedPayload({ jobId: 4242, labels: ["self-hosted"] });
  p.action = "completed";
  p.workflow_job.status = "completed";
  p.workflow_job.conclusion = "cancelled";
  const body = JSON.stringify(p);
  assert.equal((await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET))).json().outcome, "demand_cancelled");
  assert.ok(!(await waitingJobs("default")).includes("4242-1"));
});

test("completed for a job cancelled while queued drops its waiting renewals too, not only its own demand", async () => {
  // The job's own demand served a runner that took another job (its item completed), and the
  // queued-jobs loop added renewals for it: the cancellation must drop those, or a worker takes one.
  const q = JSON.stringify(queuedPayload({ jobId: 4343, labels: ["self-hosted"] }));
  assert.equal((await post(q, signedHeaders("workflow_job", q, WEBHOOK_SECRET))).json().outcome, "queued");
  await withLease("4343-1", async (lease) => {
    await lease.complete("runner took job 999");
    assert.equal(await queues.add({ ...lease.demand, renewal: 1 }), "added");
    assert.equal(await queues.add({ ...lease.demand, renewal: 2 }), "added");
  });
  assert.deepEqual((await waitingJobs("default")).filter((id) => id.startsWith("4343-")), ["4343-1-r1", "4343-1-r2"]);
  const p = queuedPayload({ jobId: 4343, labels: ["self-hosted"] });
  p.action = "completed";
  p.workflow_job.status = "completed";
  p.workflow_job.conclusion = "cancelled";
  const body = JSON.stringify(p);
  assert.equal((await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET))).json().outcome, "demand_cancelled");
  assert.deepEqual((await waitingJobs("default")).filter((id) => id.startsWith("4343-")), []);
});

test("a job that waits for an approval has its waiting demand dropped", async () => {
  // queued -> waiting (an environment's reviewers) -> queued again once approved.
  assert.equal(await sendJob("queued", 4545, ["self-hosted"]), "queued");
  assert.ok((await waitingJobs("default")).includes("4545-1"));
  assert.equal(await sendJob("waiting", 4545, ["self-hosted"]), "demand_cancelled");
  assert.ok(!(await waitingJobs("default")).includes("4545-1"));
  assert.equal(await sendJob("waiting", 4545, ["self-hosted"]), "no_demand", "nothing left to drop");
  // Approved: the new queued delivery adds the demand again.
  assert.equal(await sendJob("queued", 4545, ["self-hosted"]), "queued");
  assert.ok((await waitingJobs("default")).includes("4545-1"));
});

test("an approval's `queued` handled before the `waiting` it follows leaves the demand waiting, checked with GitHub first", async () => {
  // GitHub sends queued (d1), waiting (d2), queued again once approved (d3), but d3 is handled first:
  // the item is still pending, so d3 answers `duplicate`; the late d2 must not drop it.
  assert.equal(await sendJob("queued", 4960, ["self-hosted"]), "queued");
  assert.equal(await sendJob("queued", 4960, ["self-hosted"]), "duplicate");
  assert.equal(await sendJob("waiting", 4960, ["self-hosted"]), "demand_kept");
  assert.ok((await waitingJobs("default")).includes("4960-1"), "the approved job's demand still waits");
  const queue = new Queue("demand-default", { connection: conn, prefix: `${redis.prefix}:bull` });
  try {
    // Its worker asks GitHub before registering anything: a `queued` sent twice before a real wait would keep it too.
    assert.equal((await queue.getJob("4960-1"))?.data.seenBefore, true);
  } finally {
    await queue.close();
  }
  // A `waiting` whose first delivery failed, redelivered long after the approval (by an operator, a
  // day or more later; GitHub allows 3 days): the note is aged in Redis, as if that time had passed.
  assert.equal(await sendJob("queued", 4962, ["self-hosted"]), "queued");
  assert.equal(await sendJob("queued", 4962, ["self-hosted"]), "duplicate");
  const note = `${redis.prefix}:requeued:4962-1`;
  const day = 24 * 3600;
  assert.ok((await conn.ttl(note)) <= 3 * day, "the note expires: at most GitHub's 3 days");
  await age(note, 3 * day - 60);
  assert.equal(await sendJob("waiting", 4962, ["self-hosted"]), "demand_kept", "a `waiting` redelivered near the end of GitHub's 3 days");
  assert.ok((await waitingJobs("default")).includes("4962-1"), "the approved job's demand still waits");
  // The usual order still drops it at the `waiting` and adds it again at the approval.
  assert.equal(await sendJob("queued", 4961, ["self-hosted"]), "queued");
  assert.equal(await sendJob("waiting", 4961, ["self-hosted"]), "demand_cancelled");
  assert.ok(!(await waitingJobs("default")).includes("4961-1"));
  assert.equal(await sendJob("queued", 4961, ["self-hosted"]), "queued");
  assert.ok((await waitingJobs("default")).includes("4961-1"));
});

test("an approval's `queued` claimed between a `waiting`'s look at the job's note and its drop (two servers at once): the dropped demand is added back", async () => {
  // This server's connection runs the other server's `queued` right after the `waiting` looked at
  // the requeued note and found none: that `queued` finds the item still pending (`duplicate`).
  const hooked = redisConnection(redis.url);
  const racing = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, hooked);
  const deliveries = new DeliveryLog(conn, redis.prefix);
  const demand = (deliveryId: string): Demand => ({
    pool: "default", jobId: 4970, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 1, labels: ["self-hosted"], receivedAt: Date.now(), deliveryId,
  });
  let between: (() => Promise<void>) | undefined;
  const exists = hooked.exists.bind(hooked);
  (hooked as unknown as { exists: (...keys: string[]) => Promise<number> }).exists = async (...keys: string[]) => {
    const found = await exists(...keys);
    const run = between;
    between = undefined;
    if (run && keys.some((k) => k.includes(":requeued:"))) await run();
    return found;
  };
  try {
    const d1 = randomUUID();
    assert.equal(await racing.add(demand(d1), deliveries.claimKey(d1)), "added");
    between = async () => {
      const d3 = randomUUID();
      assert.equal(await queues.add(demand(d3), deliveries.claimKey(d3)), "duplicate");
    };
    assert.equal(await racing.waitsForApproval("default", 4970, 1), "kept");
    assert.equal(between, undefined, "the other server's `queued` ran in between");
    const queue = new Queue("demand-default", { connection: conn, prefix: `${redis.prefix}:bull` });
    try {
      assert.equal((await queue.getJob("4970-1"))?.data.seenBefore, true, "back, checked with GitHub first");
    } finally {
      await queue.close();
    }
    assert.ok((await waitingJobs("default")).includes("4970-1"));
  } finally {
    await racing.close();
    hooked.disconnect();
  }
});

test("a `queued` delivered after the job's `completed` (cancelled while queued) adds demand that asks GitHub first; after a `waiting`, it does not", async () => {
  const data = async (id: string) => {
    const queue = new Queue("demand-default", { connection: conn, prefix: `${redis.prefix}:bull` });
    try {
      return (await queue.getJob(id))?.data as { seenBefore?: boolean } | undefined;
    } finally {
      await queue.close();
    }
  };
  assert.equal(await sendJob("completed", 4951, ["self-hosted"]), "no_demand");
  assert.equal(await sendJob("queued", 4951, ["self-hosted"]), "queued");
  assert.equal((await data("4951-1"))?.seenBefore, true, "checked before anything is registered for it");
  // Waiting for an approval is not over: the approval's `queued` is served as fresh demand.
  assert.equal(await sendJob("waiting", 4952, ["self-hosted"]), "no_demand");
  assert.equal(await sendJob("queued", 4952, ["self-hosted"]), "queued");
  assert.equal((await data("4952-1"))?.seenBefore, undefined);
});

test("a copy of a `waiting` delivery that comes again after the approval does not drop the approval's demand", async () => {
  const waiting = randomUUID();
  assert.equal(await sendJob("queued", 4858, ["self-hosted"]), "queued");
  assert.equal(await sendJob("waiting", 4858, ["self-hosted"], waiting), "demand_cancelled");
  // Approved: GitHub queues the job again; then the `waiting` delivery comes once more.
  assert.equal(await sendJob("queued", 4858, ["self-hosted"]), "queued");
  assert.equal(await sendJob("waiting", 4858, ["self-hosted"], waiting), "replayed");
  assert.ok((await waitingJobs("default")).includes("4858-1"), "the approval's demand still waits");
});

test("a new queued delivery for a job attempt whose demand has ended adds it afresh; a replay of it does not", async () => {
  // The demand ended while the job waited for an approval (taken, its runner idled out): once
  // approved, GitHub queues the same job attempt again under a new delivery id.
  assert.equal(await sendJob("queued", 4646, ["self-hosted"]), "queued");
  await withLease("4646-1", (lease) => lease.complete("idle_timeout"));
  assert.ok(!(await waitingJobs("default")).includes("4646-1"));
  const approved = randomUUID();
  assert.equal(await sendJob("queued", 4646, ["self-hosted"], approved), "queued");
  assert.ok((await waitingJobs("default")).includes("4646-1"), "a fresh item waits");
  assert.equal(await sendJob("queued", 4646, ["self-hosted"], approved), "replayed");
  assert.equal(await sendJob("queued", 4646, ["self-hosted"]), "duplicate", "another delivery while the fresh item waits");
  assert.deepEqual((await waitingJobs("default")).filter((id) => id.startsWith("4646-")), ["4646-1"]);
  // Likewise an item that ran out of launch attempts.
  assert.equal(await sendJob("queued", 4647, ["self-hosted"]), "queued");
  await withLease("4647-1", (lease) => lease.fail(new Error("no engine"), true));
  assert.equal(await sendJob("queued", 4647, ["self-hosted"]), "queued");
  assert.ok((await waitingJobs("default")).includes("4647-1"));
});

test("a job with no labels (runs-on a runner group only) gets no demand unless a pool opts in", async () => {
  assert.equal(await sendJob("queued", 4747, []), "ignored_no_labels");
  assert.equal(await sendJob("completed", 4747, []), "no_labels");
  assert.ok(!(await waitingJobs("default")).includes("4747-1"));
  assert.ok(!(await waitingJobs("oss")).includes("4747-1"));
});

test("deliveries that change nothing are claimed for an hour; those that act, for GitHub's 3 days", async () => {
  const ttl = (deliveryId: string) => conn.ttl(`${redis.prefix}:delivery:${deliveryId}`);
  const HOUR = 3600;
  const DAYS_3 = 3 * 24 * 3600;
  const notOurs = randomUUID();
  const p = queuedPayload({ jobId: 4848, labels: ["self-hosted"] });
  p.action = "in_progress";
  p.workflow_job.status = "in_progress";
  p.workflow_job.runner_name = "github-hosted-runner-7";
  const body = JSON.stringify(p);
  assert.equal((await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET, notOurs))).json().outcome, "not_ours");
  const brief = await ttl(notOurs);
  assert.ok(brief > 0 && brief <= HOUR, `not_ours claimed for ${brief} s`);
  assert.equal((await post(body, signedHeaders("workflow_job", body, WEBHOOK_SECRET, notOurs))).json().outcome, "replayed", "a replay within the hour");
  for (const [action, labels, outcome] of [
    ["queued", ["windows"], "ignored_no_pool"],
    ["queued", [], "ignored_no_labels"],
    ["completed", ["self-hosted"], "no_demand"],
    ["waiting", ["windows"], "no_pool"],
    ["requested", ["self-hosted"], "ignored_action"],
  ] as const) {
    const id = randomUUID();
    assert.equal(await sendJob(action, 4848, [...labels], id), outcome);
    const t = await ttl(id);
    assert.ok(t > 0 && t <= HOUR, `${action} ${outcome}: claimed for ${t} s`);
  }
  // Acting: a runner of ours marked busy, a waiting demand dropped, demand queued.
  const name = "jitrunner-default-claimttl01";
  await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: 1, owner: "acme", repo: "app", demandId: "4848-1", createdAt: Date.now() });
  const marks = randomUUID();
  assert.equal(await sendRan("in_progress", name, { runnerId: null, installationId: 1, owner: "acme", repo: "app" }, marks), "runner_busy");
  const queued = randomUUID();
  assert.equal(await sendJob("queued", 4949, ["self-hosted"], queued), "queued");
  const cancels = randomUUID();
  assert.equal(await sendJob("waiting", 4949, ["self-hosted"], cancels), "demand_cancelled");
  for (const id of [marks, queued, cancels]) {
    const t = await ttl(id);
    assert.ok(t > DAYS_3 - 60 && t <= DAYS_3, `claimed for ${t} s`);
  }
});

test("fuzz: random bodies and headers never crash the server; only verified deliveries queue", async () => {
  const before = (await waitingJobs("default")).length + (await waitingJobs("oss")).length;
  let seed = 0x5eed;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const pick = <T,>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const valid = JSON.stringify(queuedPayload({ jobId: 990001, labels: ["self-hosted"] }));
  const bodies = [
    () => "",
    () => "null",
    () => "[]",
    () => '{"action":"queued"}',
    () => valid.slice(0, Math.floor(rand() * valid.length)),
    () => valid.replace(/[0-9]/g, () => String(Math.floor(rand() * 10))),
    () => Buffer.from(Array.from({ length: Math.floor(rand() * 512) }, () => Math.floor(rand() * 256))).toString("latin1"),
    () => JSON.stringify({ action: "queued", workflow_job: { id: 1e300, labels: [{}], status: "queued" }, repository: null }),
  ];
  const statuses = new Map<number, number>();
  let queued = 0;
  const N = 400;
  for (let i = 0; i < N; i++) {
    const body = pick(bodies)();
    const secret = pick([WEBHOOK_SECRET, "nope"]);
    const signed = signedHeaders(pick(["workflow_job", "ping", "push", "", "workflow_job\u0000"]), body, secret);
    const headers: Record<string, string> = { ...signed };
    let signatureIntact = secret === WEBHOOK_SECRET;
    if (rand() < 0.2) {
      headers["x-hub-signature-256"] = pick(["", "sha256=", "sha256=zz", `sha256=${"0".repeat(64)}`, "md5=1"]);
      signatureIntact = false;
    }
    if (rand() < 0.2) headers["content-type"] = pick(["text/plain", "application/json; charset=utf-8", "application/jsonx", ""]);
    if (rand() < 0.1) delete headers["x-github-event"];
    const res = await post(body, headers);
    statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
    assert.ok(res.statusCode < 500, `request ${i} got ${res.statusCode}`);
    // A wrong media type is refused (415) before the body is read at all; else a bad signature is 401.
    const jsonType = /^application\/json(;|$)/.test(headers["content-type"] ?? "");
    if (!signatureIntact) assert.equal(res.statusCode, jsonType ? 401 : 415, `request ${i}: refused unverified`);
    if (res.statusCode === 202 && res.json().outcome === "queued") {
      assert.ok(signatureIntact, `request ${i} queued without a valid signature`);
      queued++;
    }
  }
  // Demand grows by exactly the verified, well-formed queued jobs, and by nothing else.
  const afterCount = (await waitingJobs("default")).length + (await waitingJobs("oss")).length;
  assert.equal(afterCount - before, queued, `statuses: ${JSON.stringify([...statuses])}`);
  assert.equal((await app.inject({ method: "GET", url: "/healthz" })).statusCode, 200);
});
