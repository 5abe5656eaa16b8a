/**
 * A demand whose lease another host takes while its runner runs a job on the host that launched
 * it, for real (fake GitHub, real Redis, real Docker engine, two worker hosts): host A stops
 * mid-job (a rolling upgrade) and hands the demand back, host B takes it, and A, restarted, adopts
 * the runner. B waits for that runner's end holding no slot of its own, and the runner holds one
 * place under `maxRunners` between both hosts: B launches another job meanwhile, and the demand
 * completes with no second runner once A's runner is done. B's lease lapsing while it waits ends
 * that wait, and leaves the runner and its place alone.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, containersOf, demandIn, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore, PoolLimits } from "../../src/state/hosts.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const { redis, hosts } = workersForFile();

/**
 * Two worker hosts and a server on one Redis, and host A's worker started: A runs a job's runner
 * (a pool of two places, jobs of 120 s unless ended), B is started by the test when it wants it.
 */
async function twoHosts(tag: string, workerOver: Record<string, unknown> = {}) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const hostA = uniqueHost(`${tag}a`);
  const hostB = uniqueHost(`${tag}b`);
  hosts.push(hostA, hostB);
  const r = scopedRedis(redis, `crosshost-${tag}`);
  const conn = redisConnection(r.url);
  // Two runners at most in the pool: the job running on A and one more.
  const pools = [fakeRunnerPool(fake, { maxRunners: 2, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "120" } })];
  const worker = (hostId: string) => ({ pools, worker: { hostId, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, ...workerOver } });
  const server = await startSystem("server", fake, r, uniqueHost(`${tag}s`), { pools });
  const a1 = await startSystem("worker", fake, r, hostA, worker(hostA));
  return { fake, hostA, hostB, r, conn, hostStore: new HostStore(conn, r.prefix), worker, server, a1 };
}

test("a demand re-leased on another host while its runner runs a job there holds no slot of that host and one place between both: another job launches there, and the demand completes with no second runner", { timeout: 180_000 }, async () => {
  // Counted twice, A's runner would leave no place for the second job. Job 1 runs until the test ends it.
  const { fake, hostA, hostB, r, conn, hostStore, worker, server, a1 } = await twoHosts("x");
  const places = new PoolLimits(conn, r.prefix);
  let b: Awaited<ReturnType<typeof startSystem>> | undefined;
  let a2: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    const job1 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job1.id && j.status === "in_progress"), 60_000, "job 1 running on host A");
    b = await startSystem("worker", fake, r, hostB, worker(hostB));
    // A stops with its runner mid-job: the demand goes back to the queue, and B takes it at once.
    await a1.close();
    await waitFor(() => /demand already has a runner/.test(b!.logs()), 20_000, "host B took the demand of A's runner");
    const taken = Date.now();
    a2 = await startSystem("worker", fake, r, hostA, worker(hostA));
    await waitFor(() => /adopted running runner/.test(a2!.logs()), 30_000, "host A, restarted, adopted its runner");

    // B's slot is free while it waits (what it says of itself on its first beat since), and A's
    // runner holds one place between the lease on B and its adoption on A.
    const beatOfB = await waitFor(async () => {
      const record = (await hostStore.list()).find((h) => h.id === hostB)?.record;
      return record && record.heartbeatAt > taken && record;
    }, 15_000, "a beat of host B since it took the demand");
    assert.equal(beatOfB.used, 0, "host B counts no slot used for a runner that runs on host A");
    for (let i = 0; i < 3; i++) {
      assert.equal(await places.count("default"), 1, "A's runner holds one place under maxRunners, not one per host");
      await sleep(1000);
    }

    // Another job gets B's slot and the pool's second place while job 1 still runs on A.
    const job2 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => /runner container started/.test(b!.logs()), 40_000, "job 2's runner launched on host B");
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.status, "in_progress", "job 1 still running on A meanwhile");
    await waitFor(() => fake.jobs().find((j) => j.id === job2.id && j.status === "in_progress"), 60_000, "job 2 running on host B");
    assert.equal((await containersOf(hostB)).length, 1, "B runs job 2's runner only");

    // Job 1 ends on A: its demand completes, served by A's runner, with no second runner.
    await fake.endJob(job1.id);
    await waitFor(() => fake.jobs().find((j) => j.id === job1.id && j.status === "completed"), 90_000, "job 1 completed");
    const done = await demandIn(r, `${job1.id}-1`, "completed", 30_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.conclusion, "success");
    assert.equal(callsTo(fake, JIT), 2, "one runner registered per job: none more for job 1");
    await waitFor(async () => (await containersOf(hostA)).length === 0, 30_000, "A's runner removed");
    assert.equal(await places.count("default"), 1, "job 2's place only");
  } finally {
    await a2?.close();
    await b?.close();
    await a1.close();
    await server.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a host drained while it waits for a demand's runner on another host hands the demand back and drains at once, launching nothing; the job is served by that runner", { timeout: 180_000 }, async () => {
  const { fake, hostA, hostB, r, conn, hostStore, worker, server, a1 } = await twoHosts("dx", { heartbeatSeconds: 1 });
  let b: Awaited<ReturnType<typeof startSystem>> | undefined;
  let a2: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "the job running on host A");
    b = await startSystem("worker", fake, r, hostB, worker(hostB));
    await a1.close();
    await waitFor(() => /waiting for the demand's runner on another host/.test(b!.logs()), 20_000, "host B waiting for A's runner");

    // B drained while the job runs on A: it must not wait for that job to end.
    await hostStore.drain(hostB);
    await waitFor(() => /this host takes no demand now: the demand, whose runner runs on another host, handed back/.test(b!.logs()), 15_000, "B handing the demand back");
    await Promise.race([b.drained, sleep(30_000).then(() => assert.fail("host B's drain waited for a job on another host"))]);
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "in_progress", "drained while the job still runs on A");
    assert.equal(callsTo(fake, JIT), 1, "B launched nothing");
    assert.equal((await containersOf(hostB)).length, 0);

    // A, restarted, adopts its runner and the demand; the job ends there, served once.
    a2 = await startSystem("worker", fake, r, hostA, worker(hostA));
    await waitFor(() => /adopted running runner/.test(a2!.logs()), 30_000, "host A adopted its runner");
    await fake.endJob(job.id);
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "the job completed");
    const done = await demandIn(r, `${job.id}-1`, "completed", 60_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(callsTo(fake, JIT), 1, "one runner for the job");
  } finally {
    await a2?.close();
    await b?.close();
    await a1.close();
    await server.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a lease that lapses while it waits for its demand's runner on another host ends that wait: the demand's next lease waits instead, the runner's one place stays held, and the demand completes once with no second runner", { timeout: 180_000 }, async () => {
  const { fake, hostA, hostB, r, conn, hostStore, worker, server, a1 } = await twoHosts("lx", { leaseSeconds: 5, heartbeatSeconds: 1 });
  const places = new PoolLimits(conn, r.prefix);
  let b: Awaited<ReturnType<typeof startSystem>> | undefined;
  let a2: Awaited<ReturnType<typeof startSystem>> | undefined;
  const waits = () => (b?.logs().match(/waiting for the demand's runner on another host/g) ?? []).length;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "the job running on host A");
    b = await startSystem("worker", fake, r, hostB, worker(hostB));
    await a1.close();
    await waitFor(() => waits() === 1, 20_000, "host B waiting for A's runner");
    a2 = await startSystem("worker", fake, r, hostA, worker(hostA));
    await waitFor(() => /adopted running runner/.test(a2!.logs()), 30_000, "host A, restarted, adopted its runner");

    // B's lease lapses, as while Redis was away for longer than it: B stops waiting on it, and
    // the demand, back in the queue, is taken again (by B: A's one slot is its runner's).
    await conn.del(`${r.prefix}:bull:demand-default:${job.id}-1:lock`);
    await waitFor(() => /the demand's lease lapsed while it waited for its runner/.test(b!.logs()), 20_000, "B's wait ended with its lease");
    await waitFor(() => waits() === 2, 30_000, "the demand's next lease waiting for A's runner");
    const since = Date.now();
    const beatOfB = await waitFor(async () => {
      const record = (await hostStore.list()).find((h) => h.id === hostB)?.record;
      return record && record.heartbeatAt > since && record;
    }, 15_000, "a beat of host B since");
    assert.equal(beatOfB.used, 0, "host B holds no slot for a runner on host A");
    for (let i = 0; i < 3; i++) {
      assert.equal(await places.count("default"), 1, "A's runner still holds its one place");
      await sleep(1000);
    }

    await fake.endJob(job.id);
    const done = await demandIn(r, `${job.id}-1`, "completed", 90_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.conclusion, "success", "the runner ran its job to the end");
    assert.equal(callsTo(fake, JIT), 1, "one runner for the job");
    assert.doesNotMatch(b.logs(), /lease lapsed while it was served/, "the lost lease did not wait on to the runner's end");
    await waitFor(async () => (await containersOf(hostA)).length === 0, 30_000, "A's runner removed");
    await waitFor(async () => (await places.count("default")) === 0, 15_000, "its place freed");
  } finally {
    await a2?.close();
    await b?.close();
    await a1.close();
    await server.close();
    await fake.close();
    conn.disconnect();
  }
});
