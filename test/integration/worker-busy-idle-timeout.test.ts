/**
 * A runner whose deletion GitHub refuses (422) when its idle timeout comes, for real (fake GitHub
 * through the real client, real Redis, a real container on the Docker engine).
 *
 * Busy, its `in_progress` webhook lost: its watch records it busy in Redis, with the time, as the
 * webhook would have, so that the checks of busy runners (the leader's look at GitHub's runner
 * list, for one that hangs after its job) cover it; in memory only, it would stay idle there.
 *
 * Not busy (GitHub answers 422 to invalid or spammed requests too): GitHub, asked then, says the
 * runner is not busy, so it is not recorded busy (a busy record would end its idle check, and
 * nothing else ends a busy runner GitHub still lists: it would hold its slot until a job came),
 * and the next idle check deletes it.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { Redis } from "ioredis";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, ourContainer, registerRunner, uniqueHost, workersForFile } from "../helpers/system.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { Launcher, type Tracked } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { githubFor } from "../helpers/github.ts";

const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
// The last test looks at what the garbage collector can take: gc() for this file.
setFlagsFromString("--expose-gc");
const { redis, hosts } = workersForFile();

/**
 * A launcher on a host of its own, and a runner `name` registered at the fake and running idle in
 * a container of ours (a sleep stands in for the runner program), recorded and tracked idle.
 * `beforeContainer` runs once the runner is registered (to hand it a job at GitHub).
 */
async function idleRunner(
  tag: string,
  name: string,
  beforeContainer?: (fake: FakeGitHub, runner: Awaited<ReturnType<typeof registerRunner>>) => Promise<void>,
  /** A connection without a socket timeout (its timer would fire under mocked timers). */
  plain = false,
) {
  // No webhook URL: the deliveries of a job the runner takes are lost.
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(tag);
  hosts.push(host);
  const conn = plain ? new Redis(redis.url) : redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const runners = new RunnerStore(conn, `${redis.prefix}-${tag}`);
  const events = new RunnerEvents(sub, runners.eventsChannel);
  await events.start();
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver: new DockerodeDriver({}), github, runners, events, metrics });
  const shutdown = new AbortController();
  const close = async () => {
    shutdown.abort();
    github.close();
    await events.close();
    await fake.close();
    conn.disconnect();
  };
  try {
    const runner = await registerRunner(fake, name);
    await beforeContainer?.(fake, runner);
    const container = await ourContainer(host, name, { entrypoint: ["sleep", "300"] });
    await container.start();
    const record: RunnerRecord = {
      name, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: runner.id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: launcher.instance,
    };
    await runners.put(record);
    const tracked: Tracked = { record: { ...record }, state: "idle" };
    launcher.tracked.set(name, tracked);
    const watch = () => launcher.watch(tracked, { idleTimeoutSeconds: 1, startTimeoutSeconds: 600 }, createLogger("silent"), shutdown.signal);
    return { fake, runners, launcher, runner, tracked, shutdown, watch, close };
  } catch (err) {
    await close();
    throw err;
  }
}

test("a runner GitHub refuses to delete at its idle timeout (busy, its webhooks lost) is recorded busy in Redis, with the time, and watched on", { timeout: 60_000 }, async () => {
  const name = "jitrunner-default-00busyidle1";
  const t = await idleRunner("busy-idle", name, async (fake, runner) => {
    // The runner takes a job at GitHub: GitHub now answers 422 to its deletion.
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: name });
    const acquired = await fetch(`${fake.url}/_fake/runners/${runner.id}/acquire`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: runner.token }),
    });
    assert.equal(acquired.status, 200);
  });
  const { fake, runners, runner, tracked, shutdown } = t;
  try {
    const before = Date.now();
    let ended: string | undefined;
    const watching = t.watch().then((reason) => (ended = reason));
    await waitFor(() => callsTo(fake, DELETE, "DELETE") >= 1, 15_000, "the deletion at the idle timeout");
    const stored = await waitFor(async () => {
      const r = await runners.get(name);
      return r?.state === "busy" && r;
    }, 5_000, "the record says busy").catch(async () => assert.fail(`the record says ${(await runners.get(name))?.state} after GitHub answered 422: busy in memory only`));
    assert.ok(stored.busyAt !== undefined && stored.busyAt >= before && stored.busyAt <= Date.now(), `busyAt ${stored.busyAt} is when GitHub said busy`);
    assert.equal(stored.runnerId, runner.id, "the rest of the record as it was");
    assert.equal(tracked.state, "busy");
    assert.equal(ended, undefined, "the runner is watched on: it runs its job");
    assert.equal(callsTo(fake, DELETE, "DELETE"), 1, "no deletion asked again");
    shutdown.abort();
    assert.equal(await watching, "shutdown");
  } finally {
    await t.close();
  }
});

test("a 422 at the idle timeout for a runner GitHub says is not busy: not recorded busy, and the next idle check deletes it", { timeout: 90_000 }, async () => {
  const name = "jitrunner-default-00idle4221";
  const t = await idleRunner("idle-422", name);
  const { fake, runners, launcher, tracked } = t;
  try {
    // The first deletion gets GitHub's "Validation Failed" 422; the runner is idle at GitHub.
    fake.inject({ route: DELETE, method: "DELETE", status: 422, times: 1 });
    let ended: string | undefined;
    const watching = t.watch().then((reason) => (ended = reason));
    await waitFor(() => callsTo(fake, DELETE, "DELETE") >= 1, 15_000, "the deletion at the idle timeout");
    await sleep(1_000);
    assert.deepEqual(
      fake.requests.filter((r) => r.route === DELETE).map((r) => `${r.method} ${r.status}`),
      ["DELETE 422", "GET 200"],
      "GitHub asked about the runner after the 422, and nothing more yet",
    );
    assert.equal((await runners.get(name))?.state, "idle", "not recorded busy: GitHub says it is not");
    assert.equal(tracked.state, "idle");
    assert.equal(ended, undefined, "watched on: the next idle check tries again");

    // The next idle check (30 s on) deletes it: the watch ends at the idle timeout.
    assert.equal(await watching, "idle_timeout");
    assert.deepEqual(
      fake.requests.filter((r) => r.route === DELETE).map((r) => `${r.method} ${r.status}`),
      ["DELETE 422", "GET 200", "DELETE 204"],
    );
    assert.equal(fake.runners().length, 0, "its registration deleted");
    await launcher.teardown(tracked.record, ended ?? "", createLogger("silent"));
    assert.equal(await runners.get(name), undefined, "its record removed");
  } finally {
    await t.close();
  }
});

test("a warm runner's watch, waiting with no deadline, keeps no timer that has fired: its idle check every 2 s for days costs no memory", { timeout: 60_000 }, async (tc) => {
  const name = "jitrunner-default-00warmwait1";
  const t = await idleRunner("warm-wait", name, undefined, true);
  const { launcher, tracked, shutdown } = t;
  const gc = runInNewContext("gc") as () => void;
  let finalized = 0;
  const registry = new FinalizationRegistry(() => finalized++);
  tc.mock.timers.enable({ apis: ["setTimeout", "Date"], now: Date.now() });
  const mocked = globalThis.setTimeout;
  try {
    // Every timer the watch sets from now on is watched for being collected.
    globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
      const timer = mocked(...args);
      registry.register(timer, undefined);
      return timer;
    }) as typeof setTimeout;
    const watching = launcher.watch(tracked, { idleTimeoutSeconds: 1, startTimeoutSeconds: 600 }, createLogger("silent"), shutdown.signal, () => Infinity);
    // 250 idle checks (8 min 20 s: before the start timeout's look at GitHub), each setting the next.
    for (let i = 0; i < 250; i++) tc.mock.timers.tick(2_000);
    globalThis.setTimeout = mocked;
    tc.mock.timers.reset();
    for (let i = 0; i < 5 && finalized < 200; i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
    assert.ok(finalized >= 200, `${finalized} of the 250 idle checks' fired timers were collected: the watch keeps them`);
    assert.equal(tracked.state, "idle");
    shutdown.abort();
    assert.equal(await watching, "shutdown", "still watching until the stop");
  } finally {
    globalThis.setTimeout = mocked;
    tc.mock.timers.reset();
    await t.close();
  }
});
