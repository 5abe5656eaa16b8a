/**
 * Starts that fail leave nothing behind (fake GitHub, real Redis, the real Docker engine).
 * `jitrunner all` whose port is taken, run as the real CLI, exits 1 naming the port, where it
 * came from and what to do, and leaves nothing in Redis: no host record or hold, no reconcile
 * leader lock, and the demand that was waiting still waits, never leased (a worker started
 * before the listen failed would take it and hold it until its lease lapsed). A worker whose
 * engine cannot be reached, once the port is bound, fails the start and frees the port.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { createLogger } from "../../src/logger.ts";
import { start } from "../../src/main.ts";
import { demandIdOf } from "../../src/demand.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner } from "../helpers/process.ts";
import { callsTo, demandState, fakeRunnerPool, removeContainersOf, scopedRedis, uniqueHost } from "../helpers/system.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";

let redis: TestRedis;
let fake: FakeGitHub;
let dir: string;
let taken: Server;
let port: number;
const host = uniqueHost("port-taken");

before(async () => {
  redis = scopedRedis(await startRedis(), "port-taken");
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  dir = await mkdtemp(join(tmpdir(), "jitrunner-port-taken-"));
  // Another process's port, as Redis's was in the report: held by a listener of the test's own.
  taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
  port = (taken.address() as { port: number }).port;
});

after(async () => {
  await new Promise((resolve) => taken?.close(resolve));
  await removeContainersOf(host);
  await fake?.close();
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("`all` on a port in use exits 1 with what to do, before its worker or reconciler touched Redis", { timeout: 120_000 }, async () => {
  const conn = redisConnection(redis.url);
  try {
    const queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
    const demand = { pool: "default", jobId: 4711, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 1, labels: ["self-hosted", "linux", "x64"], receivedAt: Date.now(), deliveryId: "d-4711" };
    assert.equal(await queues.add(demand), "added");
    await queues.close();

    const file = join(dir, "jitrunner.yml");
    await writeFile(
      file,
      JSON.stringify({
        github: { appId: fake.appId, apiUrl: fake.url },
        redis: { url: redis.url, prefix: redis.prefix },
        server: { host: "127.0.0.1", port: 8080 },
        worker: { hostId: host, capacity: 1, reconcileIntervalSeconds: 2 },
        pools: [fakeRunnerPool(fake)],
      }),
    );
    const p = runJitrunner(["all", "--config", file], {
      JITRUNNER_GITHUB_PRIVATE_KEY: fake.privateKey,
      JITRUNNER_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET,
      JITRUNNER_PORT: String(port),
      JITRUNNER_LOG_LEVEL: "info",
    });
    const code = await p.exited();
    const out = p.output();
    assert.equal(code, 1, out);
    assert.match(out, new RegExp(`^jitrunner: server\\.port ${port} \\(from JITRUNNER_PORT\\) is in use on 127\\.0\\.0\\.1: pick another port or stop the process using it$`, "m"));
    assert.doesNotMatch(out, /worker started|became reconcile leader/, "neither the worker nor the reconciler started");

    const left = (await conn.keys(`${redis.prefix}:*`)).filter((k) => !k.startsWith(`${redis.prefix}:bull:`));
    assert.deepEqual(left.filter((k) => /:(hostinfo|host-held-by|worker-instance|leader)\b/.test(k)), [], `keys left: ${left.join(", ")}`);
    assert.equal(await conn.sismember(`${redis.prefix}:hosts`, host), 0, "the host is not listed");
    const held = await demandState(redis, "default", demandIdOf(demand));
    assert.deepEqual(held && { state: held.state, attempts: held.attempts }, { state: "waiting", attempts: 0 }, "the demand was never leased");
    assert.equal(callsTo(fake, "/repos/{owner}/{repo}/actions/runners/generate-jitconfig"), 0);
  } finally {
    conn.disconnect();
  }
});

test("a worker whose engine cannot be reached fails the start after the listen: the port is freed, no host is recorded", { timeout: 60_000 }, async () => {
  const conn = redisConnection(redis.url);
  const dir2 = await mkdtemp(join(tmpdir(), "jitrunner-noengine-"));
  try {
    const port = await freePort();
    const socketPath = join(dir2, "docker.sock");
    const other = uniqueHost("no-engine");
    const config = testConfig({
      github: { appId: fake.appId, apiUrl: fake.url },
      redis: { url: redis.url, prefix: redis.prefix },
      server: { host: "127.0.0.1", port },
      worker: { hostId: other, docker: { socketPath } },
      pools: [fakeRunnerPool(fake)],
      privateKey: fake.privateKey,
    });
    await assert.rejects(start(config, "worker", createLogger("silent")), (err: Error) => {
      assert.ok(err.message.startsWith(`cannot reach the Docker engine at ${socketPath} (worker.docker.socketPath): no socket there`), err.message);
      return true;
    });
    // The port is free again: the listener bound before the worker's start was closed.
    const probe = createServer();
    await new Promise<void>((resolve, reject) => probe.once("error", reject).listen(port, "127.0.0.1", resolve));
    await new Promise((resolve) => probe.close(resolve));
    assert.equal(await conn.exists(`${redis.prefix}:hostinfo:${other}`, `${redis.prefix}:host-held-by:${other}`), 0);
  } finally {
    conn.disconnect();
    await rm(dir2, { recursive: true, force: true });
  }
});
