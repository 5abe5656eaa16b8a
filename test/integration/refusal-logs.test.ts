/**
 * What the log says of deliveries refused, through the real app and ingress on a real Redis: jobs
 * our pools' labels ask for that the policy refuses are said at info, once per owner (or
 * repository) and reason within a window, so that an allowedOwners left at the example's my-org
 * shows without a busy organization flooding the log; jobs no pool serves stay at debug. Deliveries
 * refused for their signature are said at warn, the first at once, then once a minute with their
 * count, never with the signature.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { Redis } from "ioredis";
import { buildApp } from "../../src/http/app.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

let redis: TestRedis;
let conn: Redis;
let app: FastifyInstance;
let queues: DemandQueues;
const lines: string[] = [];
const LABELS = ["self-hosted", "linux", "x64"];
/** The webhook route's clock (WebhookRouteOptions.now), moved by the test. */
let now = 1_000_000;

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
  const config = testConfig({
    pools: [{ name: "default", labels: LABELS, image: "x" }],
    policy: { allowedOwners: ["acme", "bigcorp"], allowedRepositories: [] },
  });
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger("debug", sink);
  const metrics = new Metrics({ processMetrics: false });
  queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
  const runners = new RunnerStore(conn, redis.prefix);
  const ingress = new Ingress({ config, demand: queues, runners, deliveries: new DeliveryLog(conn, redis.prefix), metrics, logger });
  app = await buildApp({ logger, metrics, webhooks: { secret: config.secrets.webhookSecret, bodyLimit: 1024 * 1024, ingress, now: () => now }, readiness: async () => [] });
});

after(async () => {
  await app?.close();
  await queues?.close();
  conn?.disconnect();
  await redis?.stop();
});

/** Log lines as objects (pino's levels: 20 debug, 30 info, 40 warn). */
function logged(): Array<Record<string, unknown> & { level: number; msg: string }> {
  return lines.join("").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown> & { level: number; msg: string });
}

let nextJob = 1000;
async function sendQueued(o: { owner: string; labels?: string[]; repo?: string }): Promise<string> {
  const body = JSON.stringify(queuedPayload({ jobId: nextJob++, labels: o.labels ?? LABELS, owner: o.owner, repo: o.repo }));
  const res = await app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET) });
  return res.json().outcome;
}

test("a job refused for its owner is said at info once per owner within the window, with its count; a job no pool serves stays at debug", async () => {
  const refusedInfo = () => logged().filter((l) => l.level === 30 && l.msg.startsWith("queued job refused"));
  assert.equal(await sendQueued({ owner: "my-org" }), "ignored_owner_not_allowed");
  let said = refusedInfo();
  assert.equal(said.length, 1, JSON.stringify(logged()));
  assert.match(said[0]!.msg, /^queued job refused: the owner my-org is not in policy\.allowedOwners; said once per owner every 10 minutes/);
  assert.equal(said[0]!.owner, "my-org");
  assert.equal(said[0]!.reason, "owner_not_allowed");
  assert.equal(said[0]!.refused, 1);

  // Within the window: the same owner's refusals (another repository too) are not said again at info.
  assert.equal(await sendQueued({ owner: "my-org" }), "ignored_owner_not_allowed");
  assert.equal(await sendQueued({ owner: "My-Org", repo: "other" }), "ignored_owner_not_allowed");
  assert.equal(refusedInfo().length, 1, "not said again within the window");
  assert.equal(logged().filter((l) => l.level === 20 && l.msg === "queued job ignored" && l.reason === "owner_not_allowed").length, 2, "those held back at debug");

  // Another owner is said on its own.
  assert.equal(await sendQueued({ owner: "elsewhere" }), "ignored_owner_not_allowed");
  said = refusedInfo();
  assert.equal(said.length, 2);
  assert.equal(said[1]!.owner, "elsewhere");

  // A GitHub-hosted job (no pool has its labels): debug only, whatever its owner.
  assert.equal(await sendQueued({ owner: "my-org", labels: ["ubuntu-latest"] }), "ignored_no_pool");
  assert.equal(refusedInfo().length, 2);
  assert.ok(logged().some((l) => l.level === 20 && l.reason === "no_pool"));
  assert.ok(!logged().some((l) => l.level >= 30 && l.reason === "no_pool"));
});

test("deliveries refused for their signature: one warn line at once, then one a minute with the count since, never the signature", async () => {
  const refusedWarn = () => logged().filter((l) => l.level === 40 && / refused: signature does not match/.test(l.msg));
  const body = JSON.stringify(queuedPayload({ jobId: 1, labels: LABELS, owner: "acme" }));
  const signatures: string[] = [];
  const sendBad = async (secret: string) => {
    const headers = signedHeaders("workflow_job", body, secret);
    signatures.push(headers["x-hub-signature-256"]!.slice("sha256=".length));
    const res = await app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers });
    assert.equal(res.statusCode, 401);
  };
  await sendBad("another-secret-0123456789");
  let said = refusedWarn();
  assert.equal(said.length, 1, "the first said at once");
  assert.equal(
    said[0]!.msg,
    "1 webhook delivery refused: signature does not match github.webhookSecretFile (or JITRUNNER_GITHUB_WEBHOOK_SECRET): GitHub signs with another secret (the App's webhook secret), or the sender is not GitHub",
  );
  for (let i = 0; i < 3; i++) await sendBad(`another-secret-${i}-0123456789`);
  now += 59_000;
  await sendBad("yet-another-secret-0123456789");
  assert.equal(refusedWarn().length, 1, "none more within the minute");
  now += 1_000;
  await sendBad("a-last-secret-0123456789");
  said = refusedWarn();
  assert.equal(said.length, 2, "one more once the minute passed");
  assert.match(said[1]!.msg, /^5 webhook deliveries refused: /);
  assert.equal(said[1]!.refused, 5, "the four held back and this one");
  const all = lines.join("");
  for (const sig of signatures) assert.ok(!all.includes(sig), "no signature in the log");
  assert.ok(!all.includes("another-secret"), "no secret in the log");
  assert.ok(!all.includes('"workflow_job"'), "no body in the log");
});
