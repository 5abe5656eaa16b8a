/**
 * Launcher.teardown and the runner ids it knows, against a real Redis, the fake GitHub through the
 * real client and the real Docker engine (the runners here have no container): an id the record
 * lacks (the write that would have noted it refused) but this process holds, and a registration
 * no id was ever noted for, are deleted all the same. And the launch's deletion of an orphaned
 * registration (its name found taken) that GitHub refuses: GitHub's words are logged redacted.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { callsTo, registerRunner, workersForFile } from "../helpers/system.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { Launcher, NotNeeded } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { githubFor } from "../helpers/github.ts";

const { redis } = workersForFile();
const LIST = "/repos/{owner}/{repo}/actions/runners";
const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";

async function setUp(tag: string) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const prefix = `${redis.prefix}-${tag}`;
  const runners = new RunnerStore(conn, prefix);
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const launcher = new Launcher({
    host: `launcher-${tag}`,
    namePrefix: "jitrunner",
    completedGraceSeconds: 5,
    driver: new DockerodeDriver({}),
    github,
    runners,
    events: new RunnerEvents(sub, `${prefix}:events`),
    metrics,
  });
  const record = (name: string, runnerId?: number): RunnerRecord => ({
    name,
    pool: "default",
    host: `launcher-${tag}`,
    state: "idle",
    installationId: fake.installationId,
    owner: "acme",
    repo: "app",
    demandId: "",
    createdAt: Date.now(),
    ...(runnerId === undefined ? {} : { runnerId }),
  });
  const close = async () => {
    github.close();
    await fake.close();
    conn.disconnect();
    sub.disconnect();
  };
  return { fake, runners, launcher, record, close };
}

test("teardown deletes the registration by the id this process knows when the stored record lacks it", async () => {
  const { fake, runners, launcher, record, close } = await setUp("known-id");
  try {
    const name = "jitrunner-default-00tear0001";
    const { id } = await registerRunner(fake, name);
    // The record as Redis holds it: its runnerId update was refused.
    await runners.put(record(name));
    await launcher.teardown(record(name, id), "exited", createLogger("silent"));
    assert.ok(!fake.runners().some((r) => r.id === id), "the registration deleted");
    assert.equal(await runners.get(name), undefined, "the record removed");
  } finally {
    await close();
  }
});

test("teardown deletes by name a registration whose id was never noted, and asks nothing for a launch undone before it registered", async () => {
  const { fake, runners, launcher, record, close } = await setUp("no-id");
  try {
    const name = "jitrunner-default-00tear0002";
    const { id } = await registerRunner(fake, name);
    await runners.put(record(name));
    await launcher.teardown(record(name), "reconcile_no_container", createLogger("silent"));
    assert.ok(!fake.runners().some((r) => r.id === id), "the registration deleted by name");
    assert.equal(await runners.get(name), undefined);

    const listed = callsTo(fake, LIST, "GET");
    const undone = "jitrunner-default-00tear0003";
    await runners.put(record(undone));
    await launcher.teardown(record(undone), "launch_given_up", createLogger("silent"));
    assert.equal(callsTo(fake, LIST, "GET"), listed, "no lookup for a launch that never registered");
    assert.equal(await runners.get(undone), undefined);
  } finally {
    await close();
  }
});

test("a registration orphaned under a name found taken that GitHub refuses to delete: its error is logged with anything secret-looking redacted", async () => {
  const { fake, launcher, close } = await setUp("orphan-log");
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  // As a token would look in GitHub's words (an error that quotes a request's header).
  const secret = `ghs_${"Zq8rT2vX".repeat(5)}`;
  try {
    fake.inject({ route: JIT, status: 409, times: 1 });
    // Twice: the client asks again once with a new token, as a 403 may be a stale one's.
    fake.inject({ route: LIST, method: "GET", status: 403, times: 2, body: { message: `Resource not accessible by integration (authorization: ${secret})` } });
    const pool = testConfig({ pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "jitrunner-test-runner:latest" }] }).pools[0]!;
    const target = { installationId: fake.installationId, owner: "acme", repo: "app", demandId: "4444-1" };
    // Not needed once registered under its new name: no container is made.
    await assert.rejects(launcher.launch(target, pool, createLogger("debug", sink), Promise.resolve(false)), NotNeeded);
    const line = lines.find((l) => l.includes("runner name already registered; registering under a new name"));
    assert.ok(line, lines.join(""));
    assert.match(line, /"orphan":"not deleted: find runner by name failed \(403\): Resource not accessible by integration/);
    assert.ok(!lines.join("").includes(secret.slice(0, 20)), `no secret logged: ${line}`);
  } finally {
    await close();
  }
});
