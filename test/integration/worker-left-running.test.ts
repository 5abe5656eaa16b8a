/**
 * A runner left running until it exits (of a pool this worker does not serve, and GitHub says it
 * runs a job) holds one of the worker's slots; when other hands remove its container (an
 * operator's `docker rm -f`), the next pass of the host loop frees that slot, for real (fake
 * GitHub, real Redis, real Docker engine). Its record is marked busy, as the webhook GitHub held
 * back would have: should it hang after its job with its webhooks lost, the leader's github-runners
 * loop then marks it completed once GitHub no longer lists it, and the host loop removes it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor, writeLogTail } from "../helpers/process.ts";
import {
  containersOf, demandIn, docker, fakeRunnerPool, hostPasses, ourContainer, registerRunner, scopedRedis, startSystem, uniqueHost, workersForFile, type SystemUnderTest,
} from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const LEFT = "jitrunner-a-00taken0001";
const HUNG = "jitrunner-a-00hung00001";
const { redis, hosts } = workersForFile();

test("a runner left running whose container other hands removed frees its slot at the next pass", { timeout: 120_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("left-running");
  hosts.push(host);
  const r = scopedRedis(redis, "left-running");
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const slots = async () => (await hostStore.list()).find((h) => h.id === host)?.record;
  let sys: SystemUnderTest | undefined;
  try {
    // What a worker process that served pool `a` left behind: a runner of it, registered, recorded
    // idle, its container running (a sleep stands in for the runner program), that GitHub handed a
    // job a moment ago. Webhooks are held: none marks its record busy, so only GitHub says so.
    fake.holdWebhooks();
    const left = await registerRunner(fake, LEFT, ["self-hosted", "pool-a"]);
    const container = await ourContainer(host, LEFT, { pool: "a", entrypoint: ["sleep", "600"] });
    await container.start();
    await runners.put({
      name: LEFT, pool: "a", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: left.id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: "a-stopped-process",
    });
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-a"], onlyRunner: LEFT });
    const acquired = await fetch(`${fake.url}/_fake/runners/${left.id}/acquire`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: left.token }),
    });
    assert.equal(acquired.status, 200);

    // A worker of one slot that serves pool b only: its start runs one pass of the host loop, which
    // asks GitHub to delete the runner's registration (422: busy) and leaves it running, in the slot.
    const poolB = fakeRunnerPool(fake, { name: "b", labels: ["self-hosted", "pool-b"] });
    sys = await startSystem("all", fake, r, host, {
      pools: [poolB], worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 },
    });
    const system = sys;
    const leftLine = new RegExp(`"runner":"${LEFT}","pool":"a","why":"pool not served by this worker".*"msg":"runner running a job left running until it exits; removed then"`);
    await waitFor(() => leftLine.test(system.logs()), 5_000, "the runner logged as left running");
    assert.deepEqual(fake.requests.filter((q) => q.route === DELETE && q.method === "DELETE").map((q) => q.status), [422], "GitHub said it is busy");
    const inspected = await container.inspect();
    assert.ok(inspected.State.Running, "its container is left running");
    await waitFor(async () => {
      const rec = await slots();
      return rec?.capacity === 1 && rec.used === 1;
    }, 10_000, "the heartbeat counts its one slot used");
    const busyOfA = async () => metricSample(await (await fetch(`${system.url}/metrics`)).text(), "jitrunner_runners", `pool="a",host="${host}",state="busy"`);
    assert.equal(await busyOfA(), 1, "counted a busy runner of pool a");

    // A job of pool b is queued; its demand waits, for the slot the left runner holds.
    fake.holdWebhooks(false);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-b"] });
    await demandIn(r, `${job.id}-1`, "waiting", 10_000, "b");
    const passes = await hostPasses(system, "ok");
    await waitFor(async () => (await hostPasses(system, "ok")) >= passes + 2, 20_000, "two more passes of the host loop");
    assert.equal((await demandIn(r, `${job.id}-1`, "waiting", 1_000, "b")).attempts, 0, "the demand still waits, untried");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued", "the job still waits for a runner");
    assert.deepEqual((await containersOf(host)).map((c) => c.Id), [container.id], "no runner of pool b launched");
    assert.equal((await slots())?.used, 1, "the slot still used");

    // Other hands remove the container, through the engine's API (as `docker rm -f` does, which
    // leaves the image's anonymous /var/lib/docker volume: the test removes it, below).
    const anonymous = (await container.inspect()).Mounts.filter((m) => m.Type === "volume").map((m) => m.Name!);
    await docker.getContainer(container.id).remove({ force: true });
    for (const v of anonymous) await docker.getVolume(v).remove().catch(() => undefined);

    // The next pass finds it gone from the engine's list: its slot is free, and the job gets its runner.
    const gone = new RegExp(`"runner":"${LEFT}","pool":"a".*"msg":"runner left running is gone \\(its container removed by other hands\\): its slot is free"`);
    await waitFor(() => gone.test(system.logs()), 20_000, "the slot freed, and said so");
    const served = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status !== "queued"), 45_000, "the queued job taken by a runner");
    assert.match(served.runner_name ?? "", /^jitrunner-b-/, "by a runner of pool b");
    const launched = new RegExp(`"runner":"${served.runner_name}".*"msg":"runner container started"`);
    await waitFor(() => launched.test(system.logs()), 5_000, "the launch logged");
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 30_000, "the job completed");
    assert.equal(done.conclusion, "success");
    // The left runner's record, its container gone, is torn down too; it is no longer counted.
    await waitFor(async () => !(await runners.get(LEFT)), 10_000, "the left runner's record removed");
    assert.equal(await busyOfA(), 0, "no longer counted a busy runner of pool a");
    await waitFor(async () => (await slots())?.used === 0 && (await containersOf(host)).length === 0, 30_000, "the runner of pool b removed, and no slot used");
  } catch (err) {
    if (sys) writeLogTail("the worker", sys.logs());
    throw err;
  } finally {
    await sys?.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a runner left running because GitHub says it is busy is recorded busy; hung after its job, its webhooks lost, it is marked completed and removed", { timeout: 120_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("left-hung");
  hosts.push(host);
  const r = scopedRedis(redis, "left-hung");
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  let sys: SystemUnderTest | undefined;
  try {
    // As above: a runner of pool a recorded idle, its container running, that GitHub handed a job.
    // Every webhook is lost: none marks its record busy, nor completed once its job is over.
    fake.holdWebhooks();
    const hung = await registerRunner(fake, HUNG, ["self-hosted", "pool-a"]);
    const container = await ourContainer(host, HUNG, { pool: "a", entrypoint: ["sleep", "600"] });
    await container.start();
    await runners.put({
      name: HUNG, pool: "a", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: hung.id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: "a-stopped-process",
    });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-a"], onlyRunner: HUNG });
    const runnerCall = (action: string, extra: object = {}) =>
      fetch(`${fake.url}/_fake/runners/${hung.id}/${action}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: hung.token, ...extra }) });
    assert.equal((await runnerCall("acquire")).status, 200);

    // A worker that serves pool b only, and the leader's github-runners loop, quick.
    const poolB = fakeRunnerPool(fake, { name: "b", labels: ["self-hosted", "pool-b"] });
    sys = await startSystem("all", fake, r, host, {
      pools: [poolB],
      worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 },
      reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 2, orphanGraceSeconds: 3, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 0 },
    });
    const system = sys;
    const leftLine = new RegExp(`"runner":"${HUNG}","pool":"a","why":"pool not served by this worker".*"msg":"runner running a job left running until it exits; removed then"`);
    await waitFor(() => leftLine.test(system.logs()), 5_000, "the runner logged as left running");
    assert.deepEqual(fake.requests.filter((q) => q.route === DELETE && q.method === "DELETE").map((q) => q.status), [422], "GitHub said it is busy");
    const marked = await waitFor(async () => {
      const rec = await runners.get(HUNG);
      return rec?.state === "busy" && rec;
    }, 5_000, "the record of the runner left running marked busy");
    assert.equal(marked.jobId, 0, "its job not known");
    assert.ok(marked.busyAt && marked.busyAt >= Date.now() - 30_000, "the time of the mark on the record");

    // Its job ends at GitHub (the ephemeral registration goes with it); the runner hangs, its
    // container still running, and the `completed` webhook is lost.
    assert.equal((await runnerCall("complete", { jobId: job.id, conclusion: "success" })).status, 200);
    assert.ok(!fake.runners().some((x) => x.id === hung.id), "the registration removed itself");
    assert.ok((await container.inspect()).State.Running, "the runner hangs");
    const ended = new RegExp(`"runner":"${HUNG}".*"msg":"runner recorded busy is no longer registered at GitHub \\(its job is over\\) and no completed webhook came; marked completed, its worker removes it"`);
    await waitFor(() => ended.test(system.logs()), 30_000, "the leader's github-runners loop marks it completed");
    await waitFor(async () => (await containersOf(host)).length === 0 && !(await runners.get(HUNG)), 30_000, "its container and record removed by the host loop");
  } catch (err) {
    if (sys) writeLogTail("the system", sys.logs());
    throw err;
  } finally {
    await sys?.close();
    await fake.close();
    conn.disconnect();
  }
});
