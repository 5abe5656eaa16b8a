/**
 * A webhook secret rotation: with github.previousWebhookSecretFile set, the server accepts
 * deliveries signed with either secret, says once which one GitHub signs with, and refuses any
 * other signature; without it, the old secret's deliveries are refused. The real composition root
 * in server mode, a real Redis, the fake GitHub.
 */
import { randomUUID } from "node:crypto";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const OLD = "old-webhook-secret-7d1e5b2a";
const NEW = "new-webhook-secret-c4a8f0e9";

let redis: TestRedis;
let fake: FakeGitHub;

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
});

after(async () => {
  await fake.close();
  await redis.stop();
});

/** A server whose config holds `secrets`, and a sender of queued deliveries signed with a secret of the caller's. */
async function server(tag: string, secrets: { webhookSecret: string; previousWebhookSecret?: string }) {
  const sys = await startSystem("server", fake, scopedRedis(redis, tag), uniqueHost(tag), secrets);
  let jobId = 1000;
  /** A queued delivery for a new job, signed with `secret`: its status and outcome. */
  const send = async (secret: string) => {
    const body = JSON.stringify(queuedPayload({ jobId: jobId++, labels: ["self-hosted", "linux"] }));
    const res = await fetch(`${sys.url}/webhooks/github`, { method: "POST", body, headers: signedHeaders("workflow_job", body, secret, randomUUID()) });
    return `${res.status} ${((await res.json()) as { outcome?: string }).outcome ?? ""}`.trim();
  };
  return { sys, send };
}

test("during a rotation deliveries signed with either secret are taken, any other refused; which one GitHub signs with is said once each", async () => {
  const { sys, send } = await server("rotation-both", { webhookSecret: NEW, previousWebhookSecret: OLD });
  try {
    assert.equal(await send(OLD), "202 queued", "the old secret's delivery is taken");
    assert.equal(await send(OLD), "202 queued");
    assert.equal(await send(NEW), "202 queued", "the new secret's delivery is taken");
    assert.equal(await send(NEW), "202 queued");
    assert.equal(await send("some-other-secret-0123456789"), "401", "any other signature is refused");
    const said = (re: RegExp) => sys.logs().split("\n").filter((l) => re.test(l)).length;
    assert.equal(said(/signed with the previous webhook secret/), 1, "said once");
    assert.equal(said(/signed with the webhook secret: once GitHub signs with it only, remove github\.previousWebhookSecretFile/), 1, "said once");
    const text = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(text, /jitrunner_webhook_deliveries_total\{event="workflow_job",action="queued",outcome="queued"\} 4/);
    assert.match(text, /jitrunner_webhook_deliveries_total\{event="unverified",action="none",outcome="bad_signature"\} 1/);
    for (const secret of [OLD, NEW]) assert.ok(!sys.logs().includes(secret), "no secret in the log");
  } finally {
    await sys.close();
  }
});

test("without a previous secret the old secret's deliveries are refused, and nothing is said of a rotation", async () => {
  const { sys, send } = await server("rotation-one", { webhookSecret: NEW });
  try {
    assert.equal(await send(OLD), "401");
    assert.equal(await send(NEW), "202 queued");
    assert.doesNotMatch(sys.logs(), /previousWebhookSecret|previous webhook secret/);
  } finally {
    await sys.close();
  }
});
