/**
 * A Docker engine that never answers (a hung engine, or a TCP/SSH connection to it that silently
 * dropped), for real: a proxy in front of the real engine holds the worker's container lists
 * unanswered. The host loop's passes must end all the same, each within the time limit of its
 * Docker calls (worker.docker.callTimeoutSeconds), count as errors, and go on: once the engine
 * answers again, the next pass cleans up what was left meanwhile. A create the engine never
 * answers fails the same way, its error free of the JIT config the request carried; a ping it
 * never answers holds no heartbeat past a beat and a half.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { inspect } from "node:util";
import { after, test, type TestContext } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { CREATE_CONTAINER, LIST_CONTAINERS, PING, startDockerProxy } from "../helpers/docker-proxy.ts";
import { waitFor } from "../helpers/process.ts";
import {
  callsTo,
  containersOf,
  demandIn,
  docker,
  fakeRunnerPool,
  firstHostPass,
  hostPasses,
  ourContainer,
  RUNNER_IMAGE,
  scopedRedis,
  startSystem,
  type SystemUnderTest,
  uniqueHost,
  workersForFile,
} from "../helpers/system.ts";
import { Secret } from "../../src/config/secret.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { runnerLabels } from "../../src/docker/labels.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import { DockerError } from "../../src/errors.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { createLogger } from "../../src/logger.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { HostPresence } from "../../src/worker/presence.ts";

const { redis, hosts } = workersForFile();


/** The Docker calls' time limit in this test. */
const LIMIT_SECONDS = 2;

/**
 * A fake GitHub, a Docker proxy in front of the real engine, and `jitrunner MODE` on a host of its
 * own that reaches its engine through the proxy (`over` gets the proxy's socket); all closed after
 * the test, even one that times out.
 */
async function behindProxy(
  t: TestContext,
  tag: string,
  mode: "worker" | "all",
  over: (o: { fake: FakeGitHub; host: string; socketPath: string }) => Partial<ConfigInput>,
) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  let sys: SystemUnderTest | undefined;
  t.after(async () => {
    await sys?.close();
    await proxy.close();
    await fake.close();
  });
  const host = uniqueHost(tag);
  hosts.push(host);
  const r = scopedRedis(redis, tag);
  sys = await startSystem(mode, fake, r, host, over({ fake, host, socketPath: proxy.socketPath }));
  return { fake, proxy, sys, host, r };
}

test(
  "an engine that never answers a container list holds no host loop pass past the call's time limit: each pass ends as an error, the loop goes on, and once the engine answers a stopped container of ours left meanwhile is removed",
  // Without the time limit the first pass held never ends: the waits below fail, and this bounds
  // anything else that might hang. t.after closes everything even then.
  { timeout: 120_000 },
  async (t) => {
    const { proxy, sys: worker, host } = await behindProxy(t, "docker-hang", "worker", ({ host, socketPath }) => ({
      worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 1, docker: { socketPath, callTimeoutSeconds: LIMIT_SECONDS } },
    }));
    // The worker's start ran one pass, with the engine answering.
    await firstHostPass(worker);
    assert.ok((await hostPasses(worker, "ok")) >= 1, "a pass with the engine answering counts ok");
    const errorsBefore = await hostPasses(worker, "error");

    const hang = proxy.hang("GET", LIST_CONTAINERS);
    // Polled finer than waitFor does: the time from the first list held to the pass's end is measured.
    const deadline = Date.now() + 10_000;
    while (hang.held === 0 && Date.now() < deadline) await sleep(20);
    assert.ok(hang.held > 0, "the host loop asked for a container list within 10 s");
    const heldAt = Date.now();
    await waitFor(async () => (await hostPasses(worker, "error")) > errorsBefore, 20_000, "a pass with the container list unanswered to end, as an error");
    const passSeconds = (Date.now() - heldAt) / 1000;
    t.diagnostic(`the pass ended ${passSeconds.toFixed(1)} s after its first list was held (limit ${LIMIT_SECONDS} s a call)`);
    // A pass lists containers twice (its containers, then its records): at most two limits, and slack.
    assert.ok(passSeconds <= 2 * LIMIT_SECONDS + 3, `the pass ended ${passSeconds.toFixed(1)} s after its first list was held`);
    assert.match(worker.logs(), new RegExp(`"err":"Docker engine did not answer 'list containers' within ${LIMIT_SECONDS} s","msg":"listing containers failed`));
    assert.match(worker.logs(), /host reconcile failed: \d items? failed; first: listing containers/);

    // The loop goes on: another pass starts, and ends the same way.
    await waitFor(async () => (await hostPasses(worker, "error")) >= errorsBefore + 2, 20_000, "a second pass with the engine hanging to end, as an error");
    assert.ok(hang.held >= 2, `each pass asked the engine again (${hang.held} lists held)`);

    // Meanwhile a container of ours on this host stopped, with no record: the host loop's to remove.
    const leftName = "jitrunner-default-00hang0001";
    const left = await ourContainer(host, leftName);
    await sleep(LIMIT_SECONDS * 1000 + 500);
    assert.equal((await containersOf(host)).length, 1, "not removed while the engine does not answer lists");

    hang.release();
    const okBefore = await hostPasses(worker, "ok");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "the stopped container removed once the engine answers");
    assert.match(worker.logs(), new RegExp(`"runner":"${leftName}","reason":"reconcile_exited".*"msg":"runner removed"`));
    await waitFor(async () => (await hostPasses(worker, "ok")) > okBefore, 30_000, "a pass with nothing failed");
    assert.equal(await docker.getContainer(left.id).inspect().then(() => true, () => false), false);
  },
);

test(
  "a container create the engine never answers fails at worker.docker.launchCallTimeoutSeconds, with an error that names the call and not the JIT config, and the request is given up",
  { timeout: 60_000 },
  async (t) => {
    const proxy = await startDockerProxy();
    t.after(() => proxy.close());
    const host = uniqueHost("docker-hang-create");
    hosts.push(host);
    // The launch's own limit (1 s) far below the other calls' (60 s): a create held to the wrong
    // limit would outlast the 10 s this test waits.
    const driver = new DockerodeDriver({ socketPath: proxy.socketPath, callTimeoutSeconds: 60, launchCallTimeoutSeconds: 1 });
    const jit = "jit-config-that-must-not-leak-7d1e";
    const name = "jitrunner-default-00hang0002";
    const hang = proxy.hang("POST", CREATE_CONTAINER);
    const creating = driver
      .create({
        name: `${name}-${host}`,
        image: RUNNER_IMAGE,
        jitConfig: new Secret(jit),
        env: { SOME: "thing" },
        labels: runnerLabels({ pool: "default", host, runnerName: name, demandId: "" }),
        isolation: "capabilities",
        capDrop: ["SYS_RESOURCE"],
        resources: {},
        networkMode: "none",
        mounts: [],
      })
      .then(
        () => assert.fail("the create resolved"),
        (e: unknown) => e,
      );
    const late = sleep(10_000, undefined, { ref: false }).then(() => assert.fail("the create neither resolved nor failed within 10 s"));
    const err = await Promise.race([creating, late]);
    assert.equal(hang.held, 1, "the create reached the engine's side and was held");
    assert.ok(err instanceof DockerError, inspect(err));
    assert.equal(err.message, "Docker engine did not answer 'create container' within 1 s");
    assert.equal(err.retryable, true);
    for (const text of [err.message, err.stack ?? "", inspect(err, { depth: 10 }), JSON.stringify(err)]) assert.ok(!text.includes(jit), `no JIT config in: ${text}`);
    // The request itself was aborted (its connection closed), not only left behind.
    await waitFor(() => hang.waiting === 0, 5_000, "the held create's connection closed by the driver");
    hang.release();
    await sleep(500);
    assert.equal((await containersOf(host)).length, 0, "the engine never created it");
  },
);

test(
  "a ping the engine never answers holds no heartbeat past a beat and a half: the host stays alive to the fleet, unready, and ready again once the engine answers",
  { timeout: 60_000 },
  async (t) => {
    // The calls' limit (5 s) is longer than the host record's expiry (3 beats of 1 s).
    const { proxy, sys: worker, host, r } = await behindProxy(t, "docker-hang-ping", "worker", ({ host, socketPath }) => ({
      worker: { hostId: host, capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 1, docker: { socketPath, callTimeoutSeconds: 5 } },
    }));
    const conn = redisConnection(r.url);
    t.after(() => conn.disconnect());
    const hostStore = new HostStore(conn, r.prefix);
    assert.ok(await hostStore.alive(host));

    const hang = proxy.hang("GET", PING);
    const until = Date.now() + 8_000;
    let lapsed = 0;
    while (Date.now() < until) {
      if (!(await hostStore.alive(host))) lapsed++;
      await sleep(100);
    }
    assert.equal(lapsed, 0, "the host's record never lapsed while its engine did not answer pings");
    assert.ok(hang.held >= 3, `the engine was pinged on each beat (${hang.held} pings held)`);
    const res = await fetch(`${worker.url}/readyz`);
    assert.equal(res.status, 503);
    // A fixed reason only (/readyz needs no token): the engine's words are in the log.
    assert.deepEqual(await res.json(), { status: "unready", problems: ["worker: engine unreachable"] });
    assert.match(worker.logs(), /Docker engine unreachable: Docker engine did not answer 'ping' within 1.5 s/);

    hang.release();
    await waitFor(async () => (await fetch(`${worker.url}/readyz`)).ok, 10_000, "ready again once the engine answers");
  },
);

test(
  "a presence that stops while a beat waits on the engine's ping leaves its host for good: the beat, once its ping times out, writes back neither the host's record nor its hold",
  { timeout: 60_000 },
  async (t) => {
    // HostPresence itself, on a real engine behind the proxy and a real Redis whose connection
    // stays open after the stop (a worker process closes its own right after, which would hide a
    // late write).
    const proxy = await startDockerProxy();
    const conn = redisConnection(redis.url);
    t.after(async () => {
      conn.disconnect();
      await proxy.close();
    });
    const prefix = `${redis.prefix}-presence-stop`;
    const host = uniqueHost("presence-stop");
    hosts.push(host);
    const hostStore = new HostStore(conn, prefix);
    const presence = new HostPresence({
      host,
      instance: `${host}-instance`,
      capacity: 1,
      pools: ["default"],
      heartbeatSeconds: 1,
      hosts: hostStore,
      driver: new DockerodeDriver({ socketPath: proxy.socketPath, callTimeoutSeconds: 5 }),
      logger: createLogger("silent"),
      used: () => 0,
      onBeat: async () => undefined,
    });
    await presence.start();
    const held = async () => (await conn.exists(`${prefix}:host-held-by:${host}`)) === 1;
    assert.ok((await hostStore.alive(host)) && (await held()));

    const hang = proxy.hang("GET", PING);
    t.after(() => hang.release());
    await waitFor(() => hang.held >= 1, 10_000, "a beat waiting on its ping");
    await presence.stop("leave");
    assert.ok(!(await hostStore.alive(host)) && !(await held()), "a clean stop leaves the host");
    // The beat's ping times out 1.5 s after it was sent, and the beat goes on: it must write nothing.
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      assert.ok(!(await hostStore.alive(host)), "the host's record was written back after the stop");
      assert.ok(!(await held()), "the host's hold was taken back after the stop");
      await sleep(100);
    }
  },
);

test(
  "a warm runner whose create the engine holds keeps its places while it launches: each beat refreshes its warm place and its place under maxRunners, as a demand's launch does",
  { timeout: 90_000 },
  async (t) => {
    const { proxy, r } = await behindProxy(t, "warm-hang", "worker", ({ fake, host, socketPath }) => ({
      pools: [fakeRunnerPool(fake, { minIdle: 1, maxRunners: 2, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } })],
      worker: { hostId: host, capacity: 2, heartbeatSeconds: 1, reconcileIntervalSeconds: 30, docker: { socketPath, launchCallTimeoutSeconds: 60 } },
    }));
    const hang = proxy.hang("POST", CREATE_CONTAINER);
    t.after(() => hang.release());
    await waitFor(() => hang.held === 1, 30_000, "the warm runner's create held by the engine");
    const conn = redisConnection(r.url);
    t.after(() => conn.disconnect());
    // Each place's score is when it lapses unrefreshed (Redis's clock, placeHoldMs after a refresh).
    const expiries = async () => {
      const one = async (key: string) => {
        const places = await conn.zrange(`${r.prefix}:pool:${key}:holders`, 0, -1, "WITHSCORES");
        assert.equal(places.length, 2, `one place in ${key}: ${places.join(" ")}`);
        return Number(places[1]);
      };
      return { warm: await one("default:warm"), limit: await one("default") };
    };
    const first = await expiries();
    await sleep(3_500);
    const later = await expiries();
    assert.equal(hang.held, 1, "the create is still held");
    assert.ok(later.warm - first.warm >= 2_000, `the warm place was refreshed (${first.warm} -> ${later.warm})`);
    assert.ok(later.limit - first.limit >= 2_000, `the place under maxRunners was refreshed (${first.limit} -> ${later.limit})`);
    // Let the create through before the stop, which would otherwise wait out its 60 s limit.
    hang.release();
  },
);

test("a stop whose launch waits on a container create the engine never answers ends at worker.stopTimeoutSeconds, and reports itself incomplete", { timeout: 90_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const host = uniqueHost("stop-timeout");
  hosts.push(host);
  const r = scopedRedis(redis, "stop-timeout");
  // The create's own limit (60 s) far past the stop's (2 s).
  const sys = await startSystem("all", fake, r, host, {
    pools: [fakeRunnerPool(fake)],
    worker: { hostId: host, capacity: 1, reconcileIntervalSeconds: 30, stopTimeoutSeconds: 2, docker: { socketPath: proxy.socketPath, launchCallTimeoutSeconds: 60 } },
  });
  try {
    const hang = proxy.hang("POST", CREATE_CONTAINER);
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => hang.held === 1, 30_000, "the runner's create held by the engine");
    // Without the stop timeout, the stop waits for the create's own limit (60 s).
    const late = sleep(30_000, undefined, { ref: false }).then(() => "still stopping");
    const outcome = await Promise.race([sys.close().then(() => "stopped", (err: unknown) => String(err)), late]);
    assert.match(outcome, /worker stop incomplete: the stop took over worker\.stopTimeoutSeconds \(2 s\): left to lapse: 1 launch in flight, 1 demand held/);
    assert.match(sys.logs(), /"msg":"the stop took over worker\.stopTimeoutSeconds \(2 s\): stopping without waiting/);
    hang.release();
  } finally {
    await sys.close().catch(() => undefined);
    await proxy.close();
    await fake.close();
  }
});

test("a runner's container wait whose connection drops mid-job (an SSH or TCP link, a proxy's idle timeout) is opened again: the runner finishes its job and exits, and is not removed as lost", { timeout: 180_000 }, async (t) => {
  const { fake, proxy, sys, host, r } = await behindProxy(t, "wait-cut", "all", ({ fake, host, socketPath }) => ({
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "12" } })],
    worker: { hostId: host, capacity: 1, completedGraceSeconds: 30, reconcileIntervalSeconds: 2, docker: { socketPath } },
  }));
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
  await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "in_progress" && d.status === 202), 60_000, "the runner took its job");
  // Cut twice: the wait opened again is cut too, and opened once more.
  assert.ok(proxy.cutWaits() >= 1, "the worker was waiting on its runner's container");
  await waitFor(() => proxy.cutWaits() >= 1, 10_000, "the wait opened again, and cut again");
  assert.equal((await containersOf(host))[0]?.State, "running", "the runner still runs its job");

  const done = await demandIn(r, `${job.id}-1`, "completed", 60_000);
  const ran = fake.jobs().find((j) => j.id === job.id);
  assert.equal(ran?.conclusion, "success", "the job ran to its end");
  assert.equal(done.result, "exited", "the runner ended by exiting, seen through the wait");
  assert.equal(callsTo(fake, "/repos/{owner}/{repo}/actions/runners/generate-jitconfig"), 1, "no second runner");
  assert.doesNotMatch(sys.logs(), /lost track of runner container/);
  await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "the exited runner removed");
});

test(
  "a beat whose place refreshes take long (a large host, a slow Redis) still writes the host's record and hold on time: they never lapse while the worker lives, and refreshes never overlap",
  { timeout: 60_000 },
  async (t) => {
    const conn = redisConnection(redis.url);
    const prefix = `${redis.prefix}-presence-slow`;
    const host = uniqueHost("presence-slow");
    hosts.push(host);
    const hostStore = new HostStore(conn, prefix);
    let running = 0;
    let most = 0;
    let calls = 0;
    const presence = new HostPresence({
      host,
      instance: `${host}-instance`,
      capacity: 1,
      pools: ["default"],
      heartbeatSeconds: 2,
      hosts: hostStore,
      driver: new DockerodeDriver({ callTimeoutSeconds: 5 }),
      logger: createLogger("silent"),
      used: () => 0,
      // Five beats long: the record and hold last three.
      onBeat: async () => {
        calls++;
        most = Math.max(most, ++running);
        await sleep(10_000);
        running--;
      },
    });
    t.after(async () => {
      await presence.stop("leave");
      conn.disconnect();
    });
    await presence.start();
    const until = Date.now() + 14_000;
    while (Date.now() < until) {
      assert.ok(await hostStore.alive(host), "the host's record lapsed while its worker lives");
      assert.equal(await conn.exists(`${prefix}:host-held-by:${host}`), 1, "the host's hold lapsed while its worker lives");
      await sleep(250);
    }
    assert.equal(most, 1, "one refresh at a time");
    assert.ok(calls >= 2, `a refresh on the first beat, and again on a beat after it ended (${calls})`);
  },
);
