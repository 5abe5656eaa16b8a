/**
 * jitrunner through Redis Sentinel, for real: a master, its replica and a sentinel of the test's
 * own (test/helpers/sentinel.ts), the fake GitHub, DinD runners on the real engine. The config
 * names a sentinel that is down and the live one, and the master's name; redis.url gives the
 * password only (its address is a closed port, which nothing may use). A queued job is served;
 * the sentinel fails over to the replica; every connection moves to the new master, /readyz says
 * ready, a job queued after the failover is served too, and `status` reads through the sentinel.
 * Neither password is logged. And with no sentinel to reach: a server warns once, not once per
 * try, and `status` says which master and sentinels it tried.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { test } from "node:test";
import { statusCommand } from "../../src/cli/status.ts";
import { createLogger } from "../../src/logger.ts";
import { start } from "../../src/main.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { waitFor, writeLogTail } from "../helpers/process.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { startSentinelGroup, type SentinelGroup } from "../helpers/sentinel.ts";
import { fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const PASSWORD = "data-pass-Vb2r8";
const SENTINEL_PASSWORD = "sentinel-pass-Kq7m3";

/** What a stream was sent, as text. */
function sink(): Writable & { text(): string } {
  const chunks: string[] = [];
  const w = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return Object.assign(w, { text: () => chunks.join("") });
}

/** How many connections named `name` the group's node on `port` holds (CLIENT LIST), asked on a connection of its own. */
async function clientsNamed(group: SentinelGroup, port: number, name: string): Promise<number> {
  const node = group.node(port);
  node.on("error", () => undefined);
  try {
    const list = String(await node.call("CLIENT", "LIST"));
    return list.split("\n").filter((line) => line.includes(` name=${name} `)).length;
  } finally {
    node.disconnect();
  }
}

test("served through Sentinel, before and after a failover: a job queued after it gets its runner, every connection is on the new master, /readyz says ready, status reads it", async () => {
  const group = await startSentinelGroup({ password: PASSWORD, sentinelPassword: SENTINEL_PASSWORD });
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-sentinel-config-"));
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("sentinel");
  let sys: SystemUnderTest | undefined;
  const { master, replica } = group.ports;
  try {
    const passwordFile = join(dir, "sentinel-password");
    writeFileSync(passwordFile, `${SENTINEL_PASSWORD}\n`, { mode: 0o600 });
    // Every connection of the system carries this name (ioredis takes options from the URL's query).
    const connectionName = `jrtest-${host}`;
    const redis = {
      // Nothing listens there: with sentinels, the URL's address is not used.
      url: `redis://:${PASSWORD}@127.0.0.1:${await freePort()}/0?connectionName=${connectionName}`,
      prefix: `jrtest-${host}`,
      // The first sentinel is down: asked first, passed over.
      sentinels: [`127.0.0.1:${await freePort()}`, group.sentinel],
      sentinelName: group.name,
      sentinelPasswordFile: passwordFile,
    };
    sys = await startSystem("all", fake, { ...redis, stop: async () => undefined }, host, {
      redis,
      pools: [fakeRunnerPool(fake)],
      worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    });
    const s = sys;
    const ready = async () => (await fetch(`${s.url}/readyz`, { signal: AbortSignal.timeout(10_000) })).status === 200;
    await waitFor(ready, 30_000, "the system to be ready");

    const served = async (what: string) => {
      const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
      const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 180_000, `${what}: the job completed`);
      assert.equal(done.conclusion, "success", `${what}: its runner ran it`);
      assert.deepEqual(
        fake.deliveries.filter((d) => d.jobId === job.id && d.action === "queued").map((d) => d.status),
        [202],
        `${what}: its queued webhook taken at once`,
      );
    };
    await served("before the failover");
    const before = await clientsNamed(group, master, connectionName);
    assert.ok(before >= 3, `the system's connections are on the master (${before})`);
    assert.equal(await clientsNamed(group, replica, connectionName), 0, "none on the replica");

    await group.failover();
    assert.equal(await group.masterPort(), replica);
    // The sentinel closed the old master's clients; each asked the sentinels again.
    await waitFor(async () => (await clientsNamed(group, master, connectionName)) === 0, 60_000, "no connection left on the old master");
    await waitFor(async () => (await clientsNamed(group, replica, connectionName)) >= before, 60_000, `the system's ${before} connections on the new master`);
    await waitFor(ready, 30_000, "the system to be ready after the failover");
    await served("after the failover");
    // ioredis went on from the last sentinel in the list, the one that answered, ran off its end and
    // asked from the first again: no sentinel was unreachable, and nothing is said at warn.
    const warnedAfter = sys.logs().split("\n").filter((l) => l.includes('"level":40') && l.includes("sentinels are unreachable"));
    assert.deepEqual(warnedAfter, [], "a warning of unreachable sentinels after a failover the sentinels answered");
    await waitFor(async () => fake.runners().length === 0, 60_000, "both runners' registrations removed");

    // `status` reads through the sentinels too.
    const config = testConfig({ redis, pools: [fakeRunnerPool(fake)] });
    const out = sink();
    const err = sink();
    assert.equal(await statusCommand(config, { json: true }, out, err), 0, err.text());
    const status = JSON.parse(out.text()) as { pools: Array<{ name: string }> };
    assert.deepEqual(
      status.pools.map((p) => p.name),
      ["default"],
    );

    const logs = sys.logs();
    for (const secret of [PASSWORD, SENTINEL_PASSWORD]) assert.ok(!logs.includes(secret) && !out.text().includes(secret), "a Redis password in the logs or status");
    assert.match(logs, /"msg":"redis sentinel error"/, "the sentinel that is down was asked, and said so at debug");
    await assertNoSecrets(fake, { logs, sys });
  } catch (e) {
    if (sys) writeLogTail("jitrunner", sys.logs());
    throw e;
  } finally {
    await sys?.close();
    await removeContainersOf(host);
    await fake.close();
    await group.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("status that can reach no sentinel exits 1, naming the master and the sentinels it asked, and no password", async () => {
  const [a, b] = [await freePort(), await freePort()];
  const config = testConfig({
    redis: { url: `redis://:${PASSWORD}@127.0.0.1:6379`, sentinels: [`127.0.0.1:${a}`, `127.0.0.1:${b}`], sentinelName: "mymaster" },
  });
  const out = sink();
  const err = sink();
  assert.equal(await statusCommand(config, { json: true }, out, err), 1);
  assert.match(
    err.text(),
    new RegExp(`^jitrunner status: cannot reach Redis at master 'mymaster' through the sentinels at 127\\.0\\.0\\.1:${a}, 127\\.0\\.0\\.1:${b} \\(redis\\.sentinelName, redis\\.sentinels\\): All sentinels are unreachable\\b.*\\n$`),
  );
  assert.ok(!err.text().includes(PASSWORD));
});

test("a server that can reach no sentinel is unready and warns once, however many times it tries", async () => {
  const config = testConfig({
    redis: { url: `redis://:${PASSWORD}@127.0.0.1:6379`, sentinels: [`127.0.0.1:${await freePort()}`], sentinelName: "mymaster" },
    server: { host: "127.0.0.1", port: 0 },
    logLevel: "debug",
  });
  const logs = sink();
  const server = await start(config, "server", createLogger("debug", logs));
  try {
    const errors = () => logs.text().split("\n").filter((l) => l.includes('"msg":"redis connection error"'));
    // ioredis tries the sentinels again and again, each time after a longer delay that its error names.
    await waitFor(() => errors().length >= 10, 60_000, "ten tries of the sentinels");
    const warned = errors().filter((l) => l.includes('"level":40'));
    assert.equal(warned.length, 1, warned.join("\n"));
    assert.match(warned[0]!, /All sentinels are unreachable\. Retrying from scratch\. Last error/);
    const ready = await fetch(`${server.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.deepEqual(await ready.json(), { status: "unready", problems: ["redis: unavailable"] });
    assert.ok(!logs.text().includes(PASSWORD));
  } finally {
    await server.close();
  }
});
