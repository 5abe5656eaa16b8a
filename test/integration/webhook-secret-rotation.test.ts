/**
 * A webhook secret rotation: with github.previousWebhookSecretFile set, the server accepts
 * deliveries signed with either secret, says once which one GitHub signs with, and refuses any
 * other signature; without it, the old secret's deliveries are refused. Real server, real Redis.
 */
import { randomUUID } from "node:crypto";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { pino } from "pino";
import type { FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import { buildApp } from "../../src/http/app.ts";
import { Ingress } from "../../src/ingress/ingress.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { testConfig } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const OLD = "old-webhook-secret-7d1e5b2a";
const NEW = "new-webhook-secret-c4a8f0e9";

let redis: TestRedis;
let conn: Redis;
const closers: Array<() => Promise<unknown>> = [];

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
});

after(async () => {
  for (const close of closers.reverse()) await close();
  conn.disconnect();
  await redis.stop();
});

/** A server whose config holds `secrets`, its log lines and its metrics. */
async function server(tag: string, secrets: { webhookSecret: string; previousWebhookSecret?: string }) {
  const config = testConfig(secrets);
  const prefix = `${redis.prefix}-${tag}`;
  const metrics = new Metrics({ processMetrics: false });
  const queues = new DemandQueues({ redisUrl: redis.url, prefix, attempts: 3 }, conn);
  const lines: string[] = [];
  const logger = pino({ level: "debug" }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
  const ingress = new Ingress({ config, demand: queues, runners: new RunnerStore(conn, prefix), deliveries: new DeliveryLog(conn, prefix), metrics, logger });
  const app: FastifyInstance = await buildApp({
    logger,
    metrics,
    webhooks: { secret: config.secrets.webhookSecret, ...(config.secrets.previousWebhookSecret && { previousSecret: config.secrets.previousWebhookSecret }), bodyLimit: 64 * 1024, ingress },
    readiness: async () => [],
  });
  closers.push(() => queues.close(), () => app.close());
  let jobId = 1000;
  /** A queued delivery for a new job, signed with `secret`: the status and the outcome. */
  const send = async (secret: string) => {
    const body = JSON.stringify(queuedPayload({ jobId: jobId++, labels: ["self-hosted", "linux", "x64"] }));
    const res = await app.inject({ method: "POST", url: "/webhooks/github", payload: body, headers: signedHeaders("workflow_job", body, secret, randomUUID()) });
    return `${res.statusCode} ${(res.json() as { outcome?: string }).outcome ?? ""}`.trim();
  };
  return { send, lines, metrics, config };
}

test("during a rotation deliveries signed with either secret are taken, any other refused; which one GitHub signs with is said once each", async () => {
  const s = await server("both", { webhookSecret: NEW, previousWebhookSecret: OLD });
  assert.equal(s.config.secrets.previousWebhookSecret?.reveal(), OLD);
  assert.equal(await s.send(OLD), "202 queued", "the old secret's delivery is taken");
  assert.equal(await s.send(OLD), "202 queued");
  assert.equal(await s.send(NEW), "202 queued", "the new secret's delivery is taken");
  assert.equal(await s.send(NEW), "202 queued");
  assert.equal(await s.send("some-other-secret-0123456789"), "401", "any other signature is refused");
  const said = (re: RegExp) => s.lines.filter((l) => re.test(l)).length;
  assert.equal(said(/signed with the previous webhook secret/), 1, "said once");
  assert.equal(said(/signed with the webhook secret: once GitHub signs with it only, remove github\.previousWebhookSecretFile/), 1, "said once");
  const text = await s.metrics.render();
  assert.match(text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="queued"\} 4/);
  assert.match(text, /jitrunner_webhook_deliveries_total\{event="unverified",action="none",outcome="bad_signature"\} 1/);
  for (const secret of [OLD, NEW]) assert.ok(!s.lines.join("").includes(secret), "no secret in the log");
});

test("without a previous secret the old secret's deliveries are refused, and nothing is said of a rotation", async () => {
  const s = await server("one", { webhookSecret: NEW });
  assert.equal(s.config.secrets.previousWebhookSecret, undefined);
  assert.equal(await s.send(OLD), "401");
  assert.equal(await s.send(NEW), "202 queued");
  assert.equal(s.lines.filter((l) => /previousWebhookSecret|previous webhook secret/.test(l)).length, 0);
});
