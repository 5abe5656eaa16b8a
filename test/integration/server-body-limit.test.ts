/**
 * `server.bodyLimitBytes` from the config to the socket: the real composition root (`start()` in
 * server mode) on a real Redis, a small limit, and deliveries over real HTTP. A body over the limit
 * is refused 413 and counted as `too_large`, whether it says its length or comes chunked without
 * one; a body under it is taken. Under Fastify's own 1 MiB default, or the 25 MiB one, the 40 KiB
 * bodies here would be taken: the 413s show the configured limit is the one in force.
 */
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const LIMIT = 16 * 1024;
let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  sys = await startSystem("server", fake, redis, uniqueHost("body-limit"), { server: { host: "127.0.0.1", port: 0, bodyLimitBytes: LIMIT } });
});

after(async () => {
  await sys?.close();
  await fake?.close();
  await redis?.stop();
});

async function tooLarge(): Promise<number> {
  const text = await (await fetch(`${sys.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("jitrunner_webhook_deliveries_total{") && l.includes('outcome="too_large"'));
  return line ? Number(line.split(" ").pop()) : 0;
}

test("a delivery over server.bodyLimitBytes is refused 413 and counted, with a Content-Length or chunked without one; one under it is taken", async () => {
  const url = `${sys.url}/webhooks/github`;
  const before = await tooLarge();
  const small = JSON.stringify(queuedPayload({ jobId: 4001, labels: ["self-hosted", "linux", "x64"] }));
  assert.ok(small.length < LIMIT, `the example payload fits (${small.length} bytes)`);
  const taken = await fetch(url, { method: "POST", headers: signedHeaders("workflow_job", small, WEBHOOK_SECRET), body: small });
  assert.equal(taken.status, 202, await taken.text());

  const payload = queuedPayload({ jobId: 4002, labels: ["self-hosted", "linux", "x64"] });
  const big = JSON.stringify({ ...payload, padding: "x".repeat(2 * LIMIT) });
  const withLength = await fetch(url, { method: "POST", headers: signedHeaders("workflow_job", big, WEBHOOK_SECRET), body: big });
  assert.equal(withLength.status, 413, await withLength.text());

  // Chunked: no Content-Length to refuse it by, so the limit counts bytes as they arrive.
  const chunks = Readable.from([big.slice(0, 10_000), big.slice(10_000)].map((s) => Buffer.from(s)));
  const chunked = await fetch(url, {
    method: "POST",
    headers: signedHeaders("workflow_job", big, WEBHOOK_SECRET),
    body: Readable.toWeb(chunks) as ReadableStream,
    duplex: "half",
  } as RequestInit);
  assert.equal(chunked.status, 413, await chunked.text());
  assert.equal((await tooLarge()) - before, 2, "both counted as too_large");
});
