/**
 * A `jitrunner server` (the real composition root) on a Redis of the test's own, with a password
 * in its URL, while that Redis is stopped and while it is frozen (connected, not answering):
 * verified `queued` deliveries are answered 503 within GitHub's patience, /readyz says Redis is
 * the problem, and once Redis is back the same deliveries sent again (GitHub's redelivery: same
 * X-GitHub-Delivery) are queued and their demand is in BullMQ. Meanwhile the status page and
 * /metrics still answer. While Redis answers but refuses writes, the same deliveries get 503 at
 * once, counted, with one log line for all of them. Nothing secret reaches the logs.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { Queue } from "bullmq";
import { createLogger } from "../../src/logger.ts";
import { start, type Running } from "../../src/main.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { testConfig, testPrivateKey, WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type OwnRedis } from "../helpers/redis.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

/** A client that waits longer than GitHub (10 s): no answer by then is the defect. */
const CLIENT_TIMEOUT_MS = 20_000;
const PASSWORD = `redis-secret-${randomBytes(8).toString("hex")}`;

let redis: OwnRedis;
let server: Running;
const lines: string[] = [];
let nextJobId = 7_000_000;

before(async () => {
  redis = await startRedis({ own: true, password: PASSWORD });
  const config = testConfig({
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port: 0 },
    logLevel: "debug",
    pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "x" }],
  });
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  server = await start(config, "server", createLogger("debug", sink));
  await waitFor(async () => (await get("/readyz")).status === 200, 10_000, "the server to be ready");
});

after(async () => {
  await server?.close();
  await redis?.stop();
});

interface Sent {
  jobId: number;
  deliveryId: string;
  body: string;
}

function newDelivery(): Sent {
  const jobId = nextJobId++;
  return { jobId, deliveryId: randomUUID(), body: JSON.stringify(queuedPayload({ jobId, labels: ["self-hosted", "linux"] })) };
}

async function send(d: Sent): Promise<{ status: number; body: { outcome?: string; error?: string } }> {
  const res = await fetch(`${server.url}/webhooks/github`, {
    method: "POST",
    body: d.body,
    headers: signedHeaders("workflow_job", d.body, WEBHOOK_SECRET, d.deliveryId),
    signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS),
  });
  return { status: res.status, body: (await res.json()) as { outcome?: string; error?: string } };
}

async function get(path: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${server.url}${path}`, { signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) });
  return { status: res.status, text: await res.text() };
}

/** Each delivery is answered 503 with an error that names Redis and carries nothing secret. */
async function assertRefused(sent: Sent[]): Promise<void> {
  const answers = await Promise.all(sent.map(send));
  for (const a of answers) {
    assert.equal(a.status, 503, JSON.stringify(a.body));
    assert.match(a.body.error ?? "", /Redis is unavailable/);
    assert.doesNotMatch(a.body.error ?? "", new RegExp(PASSWORD));
  }
  const ready = await get("/readyz");
  assert.equal(ready.status, 503, ready.text);
  // A fixed reason (/readyz needs no token): Redis's own words, its address among them, are in the log.
  assert.deepEqual(JSON.parse(ready.text), { status: "unready", problems: ["redis: unavailable"] });
  assert.match(lines.join(""), /"err":"redis: [^"]+"[^\n]*"msg":"not ready: redis: unavailable"/, "why, in the log");
  // What operators look at meanwhile still answers, saying what it could not read.
  const page = await get("/");
  assert.equal(page.status, 200);
  assert.match(page.text, /Some facts could not be read/);
  assert.doesNotMatch(page.text, new RegExp(PASSWORD));
  assert.equal((await get("/metrics")).status, 200);
}

/** GitHub's redelivery of each (same body, same X-GitHub-Delivery) is queued; BullMQ holds its demand. */
async function assertTakenAgain(sent: Sent[]): Promise<void> {
  await waitFor(async () => (await get("/readyz")).status === 200, 20_000, "the server to be ready again");
  for (const a of await Promise.all(sent.map(send))) assert.deepEqual(a, { status: 202, body: { outcome: "queued" } });
  await assertHeld(sent);
}

/** BullMQ holds the demand of each, waiting for a worker. */
async function assertHeld(sent: Sent[]): Promise<void> {
  const conn = redisConnection(redis.url);
  const queue = new Queue("demand-default", { connection: conn, prefix: `${redis.prefix}:bull` });
  try {
    for (const d of sent) assert.equal(await queue.getJobState(`${d.jobId}-1`), "waiting", `demand of job ${d.jobId}`);
  } finally {
    await queue.close();
    conn.disconnect();
  }
}

function assertNoSecretLogged(): void {
  const logs = lines.join("");
  assert.doesNotMatch(logs, new RegExp(PASSWORD), "the Redis password");
  assert.ok(!logs.includes(WEBHOOK_SECRET), "the webhook secret");
  assert.ok(!logs.includes(testPrivateKey().split("\n")[1]!), "the App's private key");
}

function warnings(): string[] {
  return lines.filter((l) => l.includes('"level":40') && l.includes("Redis is unavailable"));
}

test("while Redis stays stopped, queued deliveries get 503 once the server's wait for it is over, and their redeliveries are queued once it is back", async () => {
  const sent = Array.from({ length: 5 }, newDelivery);
  await redis.kill("SIGTERM");
  try {
    await assertRefused(sent);
    const metrics = await get("/metrics");
    assert.match(metrics.text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="redis_unavailable"\} 5/);
    assert.equal(warnings().length, 1, "one warning for the outage, not one per delivery");
  } finally {
    await redis.restart();
  }
  await assertTakenAgain(sent);
  assert.match(lines.join(""), /"refused":5,.*"msg":"Redis takes webhook deliveries again"/);
  assertNoSecretLogged();
});

test("while Redis is connected but does not answer, queued deliveries get 503 within the command timeout, and are queued when sent again", async () => {
  const sent = Array.from({ length: 3 }, newDelivery);
  process.kill(redis.pid, "SIGSTOP");
  try {
    await assertRefused(sent);
  } finally {
    process.kill(redis.pid, "SIGCONT");
  }
  // Redis now runs the claims it was sent before the server gave up on them: the redeliveries
  // still add the demand (a claim whose demand BullMQ does not hold does not count).
  await assertTakenAgain(sent);
  assert.equal(warnings().length, 2, "one more warning, for the new reason");
  assertNoSecretLogged();
});

test("a Redis restart within the server's wait (server.redisWaitSeconds, 3 s by default): deliveries sent while it is down wait for it and are queued, not refused", async () => {
  const warned = warnings().length;
  const refusedBefore = refusedCount(await get("/metrics"));
  const sent = Array.from({ length: 5 }, newDelivery);
  await redis.kill("SIGTERM");
  let answers: ReturnType<typeof send>[];
  try {
    answers = sent.map(send);
    // They are waiting, not refused: the server has not answered any while Redis is down.
    await new Promise((r) => setTimeout(r, 200));
  } finally {
    await redis.restart();
  }
  for (const a of await Promise.all(answers)) assert.deepEqual(a, { status: 202, body: { outcome: "queued" } });
  await assertHeld(sent);
  assert.equal(refusedCount(await get("/metrics")), refusedBefore, "none counted as refused");
  assert.equal(warnings().length, warned, "no warning: nothing was refused");
  assertNoSecretLogged();
});

function refusedCount(metrics: { text: string }): number {
  return Number(/^jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="redis_unavailable"\} (\d+)$/m.exec(metrics.text)?.[1] ?? 0);
}

test("while Redis refuses writes (out of memory under noeviction), deliveries get 503 at once, are counted, log one line between them, and are queued when sent again once it accepts writes", async () => {
  const conn = redisConnection(redis.url);
  const from = lines.length;
  const refusals = () => lines.slice(from).filter((l) => l.includes('"level":50') && l.includes("Redis answers webhook deliveries with an error"));
  const sent = Array.from({ length: 4 }, newDelivery);
  // A `completed` delivery meets the refusal on another command (the claim's SET, not the claim script).
  const completed = newDelivery();
  const payload = JSON.parse(completed.body);
  payload.action = payload.workflow_job.status = "completed";
  completed.body = JSON.stringify(payload);
  try {
    await conn.config("SET", "maxmemory-policy", "noeviction");
    await conn.config("SET", "maxmemory", "1");
    for (const d of [...sent.slice(0, 2), completed, ...sent.slice(2)]) {
      const a = await send(d);
      assert.equal(a.status, 503, JSON.stringify(a.body));
      assert.match(a.body.error ?? "", /^Redis refused the command \(OOM\): the delivery was not taken; deliver it again later$/);
    }
    const metrics = await get("/metrics");
    assert.match(metrics.text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="redis_error"\} 4/);
    assert.match(metrics.text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="completed",outcome="redis_error"\} 1/);
    assert.equal(refusals().length, 1, `one line for the refusal, not one per delivery: ${refusals().join("")}`);
    assert.match(refusals()[0]!, /"reply":"OOM command not allowed when used memory > 'maxmemory'\."/);
    assert.ok(!lines.slice(from).some((l) => l.includes('"msg":"request failed"')), "no error line per delivery");
  } finally {
    await conn.config("SET", "maxmemory", "0");
    conn.disconnect();
  }
  for (const a of await Promise.all(sent.map(send))) assert.deepEqual(a, { status: 202, body: { outcome: "queued" } });
  await assertHeld(sent);
  assert.match(lines.slice(from).join(""), /"refused":5,.*"msg":"Redis takes webhook deliveries again"/);
  assertNoSecretLogged();
});
