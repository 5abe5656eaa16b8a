/**
 * `/readyz` needs no token (probes, load balancers), so it answers fixed reasons only: what
 * GitHub, Docker or Redis said (organizations, runner groups, image names, SSH fingerprints,
 * addresses) stays in the log, and a demand's launch failure on the status page behind the admin
 * token. Through the real composition root against the fake GitHub, a real Redis and the real
 * Docker engine, behind a proxy (test/helpers/docker-proxy.ts) that answers the engine's errors
 * with words of the test's own. One system for the file.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { CREATE_CONTAINER, LIST_CONTAINERS, PING, startDockerProxy, type DockerProxy } from "../helpers/docker-proxy.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { removeContainersOf, scopedRedis, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const ADMIN_TOKEN = "readyz-admin-token-9c2e71";
/** Words only the engine says: what an image name, an organization or a key would be. */
const MARKER = "registry.acme-secret-org.example/private/runner:MARKER-5b1d";
/** A credential's shape in the engine's words (an installation token's): redacted wherever they are kept. */
const LEAKED = `ghs_${"Zq8Xw2".repeat(6)}`;

let redis: TestRedis;
let tokenDir: string;
let fake: FakeGitHub;
let proxy: DockerProxy;
let sys: SystemUnderTest;
const host = uniqueHost("readyz");
let r: TestRedis;

before(async () => {
  redis = await startRedis();
  tokenDir = mkdtempSync(join(tmpdir(), "jr-readyz-"));
  writeFileSync(join(tokenDir, "admin-token"), ADMIN_TOKEN);
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  proxy = await startDockerProxy();
  r = scopedRedis(redis, "readyz");
  sys = await startSystem("all", fake, r, host, {
    server: { host: "127.0.0.1", port: 0, adminTokenFile: join(tokenDir, "admin-token") },
    worker: { hostId: host, capacity: 2, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, docker: { socketPath: proxy.socketPath } },
  });
});
after(async () => {
  await sys?.close();
  await proxy?.close();
  await fake?.close();
  await removeContainersOf(host);
  await redis?.stop();
  rmSync(tokenDir, { recursive: true, force: true });
});

async function readyz(): Promise<{ status: number; text: string }> {
  const res = await fetch(`${sys.url}/readyz`);
  return { status: res.status, text: await res.text() };
}

test("a launch that fails with the engine's words naming private things: /readyz says 'worker: launches failing' only; the words are in the log and on the status page", async () => {
  const refused = proxy.fail("POST", CREATE_CONTAINER, `pull access denied for ${MARKER}; ${LEAKED}`);
  try {
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const unready = await waitFor(async () => {
      const res = await readyz();
      return res.status === 503 && res;
    }, 20_000, "unready after the failed launch");
    assert.ok(refused.answered >= 1, "the engine's side refused the create");
    assert.deepEqual(JSON.parse(unready.text), { status: "unready", problems: ["worker: launches failing"] });
    assert.ok(!unready.text.includes("MARKER"), unready.text);
    assert.ok(!unready.text.includes("default"), "not even the pool's name");
    assert.match(sys.logs(), new RegExp(`launch for pool default failed: create container failed \\(500\\): pull access denied for ${MARKER.replaceAll(".", "\\.")}; \\[redacted\\]`));
    assert.ok(!sys.logs().includes(LEAKED), "the token-like words are not logged");

    const page = await fetch(`${sys.url}/`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(page.status, 200);
    const pageText = await page.text();
    assert.ok(pageText.includes(MARKER), "the status page, behind the token, says why");
    assert.ok(!pageText.includes(LEAKED), "without the token-like words");
    assert.equal((await fetch(`${sys.url}/`)).status, 401, "and only behind it");
  } finally {
    refused.stop();
  }
  // The next attempt launches: ready again.
  await waitFor(async () => (await readyz()).status === 200, 30_000, "ready once a launch succeeds");
});

test("container lists that fail: 'worker: host reconcile failing' on /readyz; ready again after the next pass that succeeds, with no launch", async () => {
  await waitFor(async () => (await readyz()).status === 200, 30_000, "ready before the lists fail");
  const jit = () => fake.requests.filter((q) => q.route.endsWith("/generate-jitconfig")).length;
  const launches = jit();
  const failing = proxy.fail("GET", LIST_CONTAINERS, `list failed near ${MARKER}`);
  try {
    const unready = await waitFor(async () => {
      const res = await readyz();
      return res.status === 503 && res;
    }, 20_000, "unready while the host loop's lists fail");
    assert.deepEqual(JSON.parse(unready.text), { status: "unready", problems: ["worker: host reconcile failing"] });
  } finally {
    failing.stop();
  }
  await waitFor(async () => (await readyz()).status === 200, 20_000, "ready once a pass succeeds");
  assert.equal(jit(), launches, "no launch made it ready");
});

test("one thing's success clears no other's problem: a launch that succeeds while the host loop's lists fail leaves the worker unready", async () => {
  await waitFor(async () => (await readyz()).status === 200, 30_000, "ready before the lists fail");
  const failing = proxy.fail("GET", LIST_CONTAINERS, "list failed");
  try {
    await waitFor(async () => (await readyz()).status === 503, 20_000, "unready while the host loop's lists fail");
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // Every answer from the job's queueing until its runner has run it: never ready, and always
    // for the host loop (a successful launch once cleared every problem until the next pass).
    let answers = 0;
    const deadline = Date.now() + 60_000;
    while (fake.jobs().find((j) => j.id === job.id)?.status !== "completed") {
      assert.ok(Date.now() < deadline, "the job ran within 60 s");
      const res = await readyz();
      answers++;
      assert.equal(res.status, 503, `ready in the middle of the host loop's failures: ${res.text}`);
      assert.ok((JSON.parse(res.text) as { problems: string[] }).problems.includes("worker: host reconcile failing"), res.text);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(answers >= 1, "looked while the job was served");
  } finally {
    failing.stop();
  }
  await waitFor(async () => (await readyz()).status === 200, 20_000, "ready once a pass succeeds");
});

test("an engine that fails its pings and a host taken by another process: fixed reasons on /readyz, the details in the log", async () => {
  const conn = redisConnection(r.url);
  try {
    await waitFor(async () => (await readyz()).status === 200, 30_000, "ready before the engine fails");
    const failing = proxy.fail("GET", PING, `ssh: handshake failed: host key SHA256:${MARKER}`);
    try {
      const engineDown = await waitFor(async () => {
        const res = await readyz();
        return res.status === 503 && res;
      }, 10_000, "unready while pings fail");
      assert.ok(failing.answered >= 1, "the engine's side failed the ping");
      assert.deepEqual(JSON.parse(engineDown.text), { status: "unready", problems: ["worker: engine unreachable"] });
      assert.match(sys.logs(), new RegExp(`Docker engine unreachable: ping failed \\(500\\): ssh: handshake failed: host key SHA256:${MARKER.replaceAll(".", "\\.")}`));
    } finally {
      failing.stop();
    }
    await waitFor(async () => (await readyz()).status === 200, 10_000, "ready once the engine answers");

    const holdKey = `${r.prefix}:host-held-by:${host}`;
    await conn.set(holdKey, "intruder", "PX", 60_000);
    try {
      const taken = await waitFor(async () => {
        const res = await readyz();
        return res.status === 503 && res;
      }, 10_000, "unready while another process holds the host");
      assert.deepEqual(JSON.parse(taken.text), { status: "unready", problems: ["worker: host held by another process"] });
      assert.ok(!taken.text.includes(host), "the host's name is not said");
      assert.match(sys.logs(), /another worker process has taken this host/);
    } finally {
      await conn.del(holdKey);
    }
    await waitFor(async () => (await readyz()).status === 200, 10_000, "ready once the host is free");
  } finally {
    conn.disconnect();
  }
});
