/**
 * A demand's lease that lapses (Redis away for longer than worker.leaseSeconds, the worker's
 * process paused) while it waits for the end of the demand's runner, which a worker before it
 * launched, for real (fake GitHub, real Redis, real Docker engine). The wait ends with the lease:
 * the demand is its next holder's, who finds the same runner and waits for it in turn. What the
 * lost lease held for the runner goes back to the runner, which runs on to its job's end.
 *
 * And the lease that launched a runner lapsing while the runner runs its job: the demand's next
 * lease on the same host waits for that runner holding the launching lease's slot, not a second
 * one, and gives it back should it lapse in turn; the runner counts once whichever ends first.
 * Should that runner end without a job, the lapsed lease leaves the demand to its next holder,
 * which launches again: no launch of the host failed, and the demand is served once. So too when
 * no renewal has found the lapse yet as the runner ends (Redis back a moment ago): the lease asks.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, containersOf, demandIn, demandState, docker, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore, PoolLimits } from "../../src/state/hosts.ts";
import { UNREADY } from "../../src/worker/unready.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const { redis, hosts } = workersForFile();

/**
 * One test's parts: a fake GitHub, a host of two slots whose pool has two places, with short
 * leases (`leaseSeconds`) and beats, its runners' jobs lasting `jobSeconds` unless ended; the stores to read its
 * slots and places. `start` starts a jitrunner process on it; `close` closes what the test did not.
 */
async function leaseLostSetup(name: string, jobSeconds: number, leaseSeconds = 5) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(name);
  const r = scopedRedis(redis, name);
  hosts.push(host);
  const pools = [fakeRunnerPool(fake, { maxRunners: 2, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds) } })];
  const over = { pools, worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, leaseSeconds, heartbeatSeconds: 1 } };
  const conn = redisConnection(r.url);
  return {
    fake,
    host,
    r,
    conn,
    hostStore: new HostStore(conn, r.prefix),
    places: new PoolLimits(conn, r.prefix),
    start: () => startSystem("all", fake, r, host, over),
    close: async () => {
      await fake.close();
      conn.disconnect();
    },
  };
}

test("a lease that lapses while it waits for its demand's runner on its own host stops waiting and gives the runner its slot back: the demand's next lease there takes that slot over, the runner counts once, and another job launches beside it", { timeout: 240_000 }, async () => {
  // Two slots and two places: job 1's runner, and one more beside it unless job 1's counts twice.
  const t = await leaseLostSetup("wait-lost", 120);
  const { fake, host, r, conn, hostStore, places } = t;
  const first = await t.start();
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  const found = () => (second?.logs().match(/demand already has a runner/g) ?? []).length;
  try {
    const job1 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job1.id && j.status === "in_progress"), 60_000, "job 1 running");
    // Restarted mid-job: the new process adopts the runner, takes the demand back and waits for
    // the runner's end, the lease holding the runner's slot and place.
    await first.close();
    second = await t.start();
    await waitFor(() => found() === 1, 30_000, "the demand taken back and its runner found here");

    // The lease lapses, as while Redis was away for longer than it: the demand goes back to the
    // queue, and this host (the only one) takes it again and finds the same runner.
    await conn.del(`${r.prefix}:bull:demand-default:${job1.id}-1:lock`);
    await waitFor(() => found() === 2, 30_000, "the demand taken again, its runner found again");
    const taken = Date.now();
    const beat = await waitFor(async () => {
      const record = (await hostStore.list()).find((h) => h.id === host)?.record;
      return record && record.heartbeatAt > taken && record;
    }, 15_000, "a beat of the host since");
    assert.equal(beat.used, 1, "job 1's runner holds one slot, not one per lease of its demand");
    assert.equal(await places.count("default"), 1, "and one place");

    // The slot beside it is free: job 2 launches while job 1 runs.
    const job2 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job2.id && j.status === "in_progress"), 60_000, "job 2 running beside job 1");
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.status, "in_progress", "job 1 still running meanwhile: its runner left alone");

    // Job 1 ends: its demand completes once, served by its runner, and no second runner was registered for it.
    await fake.endJob(job1.id);
    const done = await demandIn(r, `${job1.id}-1`, "completed", 90_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.conclusion, "success");
    assert.equal(callsTo(fake, JIT), 2, "one runner registered per job");
    assert.match(second.logs(), /the demand's lease lapsed while it waited for its runner/);
    assert.doesNotMatch(second.logs(), /lease lapsed while it was served/, "the lost lease did not wait on to the runner's end");
    await fake.endJob(job2.id);
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "both runners removed");
    await waitFor(async () => (await places.count("default")) === 0, 15_000, "their places freed");
  } finally {
    await second?.close();
    await first.close();
    await t.close();
  }
});

/** The host's next beat after now: its record as the beat wrote it. */
async function nextBeat(hostStore: HostStore, host: string) {
  const since = Date.now();
  return waitFor(async () => {
    const record = (await hostStore.list()).find((h) => h.id === host)?.record;
    return record && record.heartbeatAt > since && record;
  }, 15_000, "a beat of the host since");
}

test("a lease that lapses while the runner it launched runs its job: the demand's next lease on the same host takes its slot over, and gives it back should it lapse too; the runner counts once, and other jobs launch beside it", { timeout: 420_000 }, async () => {
  const t = await leaseLostSetup("launch-lost", 300);
  const { fake, host, r, conn, hostStore, places } = t;
  const sys = await t.start();
  const found = () => (sys.logs().match(/demand already has a runner/g) ?? []).length;
  const running = (id: number) => waitFor(() => fake.jobs().find((j) => j.id === id && j.status === "in_progress"), 60_000, `job ${id} running`);
  try {
    const job1 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await running(job1.id);
    assert.equal(found(), 0, "job 1's runner launched by its demand's first lease");

    // The launching lease lapses, as while Redis was away for longer than it: the demand goes back
    // to the queue, and this host (the only one) takes it again and finds the runner it launched.
    const demand1 = `${job1.id}-1`;
    const lock = `${r.prefix}:bull:demand-default:${demand1}:lock`;
    await conn.del(lock);
    await waitFor(() => found() === 1, 30_000, "the demand taken again, its runner found");
    assert.equal((await nextBeat(hostStore, host)).used, 1, "job 1's runner holds one slot, not one per lease of its demand");
    assert.equal(await places.count("default"), 1, "and one place");

    // The slot beside it is free: job 2 launches while job 1 runs.
    const job2 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await running(job2.id);
    assert.equal((await nextBeat(hostStore, host)).used, 2, "one slot each");

    // The waiting lease lapses in turn: the slot it took over goes back to the launching lease,
    // which watches the runner on. The host is full (job 1's runner and job 2's): the demand waits
    // in the queue, where a slot freed with the lost lease would have let this host take it.
    await conn.del(lock);
    await waitFor(() => /the demand's lease lapsed while it waited for its runner/.test(sys.logs()), 30_000, "the waiting lease lost");
    await demandIn(r, demand1, "waiting", 30_000);
    await sleep(5_000);
    assert.equal((await demandState(r, "default", demand1))?.state, "waiting", "not taken again: no slot free");
    assert.equal(found(), 1);
    assert.equal((await nextBeat(hostStore, host)).used, 2, "job 1's runner still holds its slot");
    assert.equal(await places.count("default"), 2, "and its place");

    // Job 2 ends: its slot is free, the demand's third lease takes the launching lease's slot over.
    await fake.endJob(job2.id);
    await waitFor(() => found() === 2, 60_000, "the demand taken a third time, its runner found");
    await waitFor(async () => (await containersOf(host)).length === 1, 60_000, "job 2's runner removed");
    assert.equal((await nextBeat(hostStore, host)).used, 1, "one slot for job 1's runner");
    const job3 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await running(job3.id);
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.status, "in_progress", "job 1 still running meanwhile: its runner left alone");

    // Job 1 ends: the launching lease's watch tears its runner down and finds its lease lost; the
    // demand's live lease completes it, served by that runner. Once both have ended, job 3's
    // runner holds the one slot used: none left to job 1's, none freed twice.
    await fake.endJob(job1.id);
    const done = await demandIn(r, demand1, "completed", 90_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(fake.jobs().find((j) => j.id === job1.id)?.conclusion, "success");
    await waitFor(() => /the demand's lease lapsed while it was served/.test(sys.logs()), 30_000, "the launching lease's end");
    await waitFor(async () => (await containersOf(host)).length === 1, 30_000, "job 1's runner removed");
    for (let i = 0; i < 3; i++) {
      assert.equal((await nextBeat(hostStore, host)).used, 1, "job 3's runner's slot only");
      await sleep(500);
    }
    assert.equal(await places.count("default"), 1, "job 3's place only");
    assert.equal(callsTo(fake, JIT), 3, "one runner registered per job");

    await fake.endJob(job3.id);
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "job 3's runner removed");
    await waitFor(async () => (await places.count("default")) === 0, 15_000, "the places freed");
    await waitFor(async () => (await nextBeat(hostStore, host)).used === 0, 15_000, "no slot used");
  } finally {
    await sys.close();
    await t.close();
  }
});

test("a worker stopped while the demand's next lease waits for the runner a lapsed lease launched: the stop ends cleanly, the runner runs on, and the restarted worker counts it once and completes its demand", { timeout: 300_000 }, async () => {
  const t = await leaseLostSetup("launch-lost-stop", 120);
  const { fake, host, r, conn, hostStore, places } = t;
  const first = await t.start();
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "the job running");
    await conn.del(`${r.prefix}:bull:demand-default:${job.id}-1:lock`);
    await waitFor(() => /demand already has a runner/.test(first.logs()), 30_000, "the demand taken again, its runner found");
    assert.equal((await nextBeat(hostStore, host)).used, 1, "the runner holds one slot");

    // Stopped with both leases served: the live one hands the demand back, the lapsed one finds
    // its lease gone; the runner runs on, its place kept for the next process.
    await first.close();
    assert.equal((await containersOf(host)).filter((c) => c.State === "running").length, 1, "the runner left running");
    assert.equal(await places.count("default"), 1, "its place kept");

    second = await t.start();
    await waitFor(() => /adopted running runner/.test(second!.logs()), 30_000, "the runner adopted");
    await waitFor(() => /demand already has a runner/.test(second!.logs()), 30_000, "the demand taken back, its runner found");
    assert.equal((await nextBeat(hostStore, host)).used, 1, "one slot for it");
    assert.equal(await places.count("default"), 1, "and one place");
    await fake.endJob(job.id);
    const done = await demandIn(r, `${job.id}-1`, "completed", 90_000);
    assert.equal(done.result, "served_by_earlier_runner");
    assert.equal(callsTo(fake, JIT), 1, "one runner for the job");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "the runner removed");
    await waitFor(async () => (await places.count("default")) === 0, 15_000, "its place freed");
    await waitFor(async () => (await nextBeat(hostStore, host)).used === 0, 15_000, "no slot used");
  } finally {
    await second?.close();
    await first.close();
    await t.close();
  }
});

/** The launch failures the system has counted, all pools and codes (its /metrics). */
async function launchFailures(sys: { url: string }): Promise<number> {
  const text = await (await fetch(`${sys.url}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("jitrunner_launch_failures_total{"))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

test("a lease that lapses while the runner it launched runs, and that runner then ends without a job: no launch failure counted, the worker stays ready, and the demand's next lease launches again and serves it once", { timeout: 300_000 }, async () => {
  const t = await leaseLostSetup("launch-lost-no-job", 120);
  const { fake, host, r, conn, hostStore, places } = t;
  const sys = await t.start();
  const found = () => (sys.logs().match(/demand already has a runner/g) ?? []).length;
  try {
    // No runner of ours may take the job for now: the one launched for it waits, idle.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: "not-one-of-ours" });
    const first = await waitFor(() => fake.runners().find((x) => x.status === "online"), 60_000, "the launched runner online");
    const [container] = await containersOf(host);
    assert.ok(container, "its container");

    // The launching lease lapses, as while Redis was away for longer than it: this host (the only
    // one) takes the demand again, finds the runner and waits for it.
    await conn.del(`${r.prefix}:bull:demand-default:${job.id}-1:lock`);
    await waitFor(() => found() === 1, 30_000, "the demand taken again, its runner found");

    // The runner ends without a job. The next lease launches again, its registration held back a
    // while: a launch that succeeds clears a launch problem, and would hide one noted meanwhile.
    fake.inject({ route: JIT, method: "POST", delayMs: 15_000, times: 1 });
    await docker.getContainer(container.Id).kill();
    await waitFor(() => /lease lapsed while it was served|demand failed; returned to the queue/.test(sys.logs()), 60_000, "the launching lease's end");
    assert.doesNotMatch(sys.logs(), /demand failed; returned to the queue/, "the lapsed lease did not fail the demand");
    assert.doesNotMatch(sys.logs(), /launch for pool default failed/);
    assert.equal(await launchFailures(sys), 0, "no launch failure counted");
    const ready = (await (await fetch(`${sys.url}/readyz`)).json()) as { problems: string[] };
    assert.ok(!ready.problems.includes(UNREADY.launches), `ready for launches: ${JSON.stringify(ready)}`);

    // The demand's live lease launches again, once; its runner takes the job.
    await waitFor(() => /earlier runner gone without a job; launching another/.test(sys.logs()), 60_000, "the next lease launching again");
    const second = await waitFor(() => fake.runners().find((x) => x.status === "online" && x.name !== first.name), 60_000, "the second runner online");
    fake.pinJob(job.id, second.name);
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "the job running");
    await fake.endJob(job.id);
    const done = await demandIn(r, `${job.id}-1`, "completed", 90_000);
    assert.equal(done.attempts, 1, "completed on its one attempt: none spent on the lapsed lease's runner");
    const ran = fake.jobs().find((j) => j.id === job.id);
    assert.equal(ran?.runner_name, second.name);
    assert.equal(ran?.conclusion, "success");
    assert.equal(found(), 1, "taken once more only");
    assert.equal(callsTo(fake, JIT), 2, "the lapsed lease's runner and one more: no third");
    assert.equal(await launchFailures(sys), 0);

    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "both runners removed");
    await waitFor(async () => (await places.count("default")) === 0, 15_000, "the place freed");
    await waitFor(async () => (await nextBeat(hostStore, host)).used === 0, 15_000, "no slot used");
    assert.equal(callsTo(fake, JIT), 2, "no runner launched since");
  } finally {
    await sys.close();
    await t.close();
  }
});

test("a lease whose lock another holder took, no renewal having found it yet, and whose runner then ends without a job: it asks Redis, finds the lease lost, and counts no launch failure nor touches the holder's demand", { timeout: 240_000 }, async () => {
  // Leases of an hour, renewed every 20 minutes: none renews while the test runs, so only the
  // lease's own question finds its lock gone, as right after Redis came back from an outage.
  const t = await leaseLostSetup("launch-lost-unnoticed", 120, 3600);
  const { fake, host, r, conn, hostStore, places } = t;
  const sys = await t.start();
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: "not-one-of-ours" });
    await waitFor(() => fake.runners().find((x) => x.status === "online"), 60_000, "the launched runner online");
    const [container] = await containersOf(host);
    assert.ok(container, "its container");

    // Another holder's lock on the demand, as the lease lapsed and another worker took it: the
    // demand stays active, under that lock.
    const demand = `${job.id}-1`;
    const lock = `${r.prefix}:bull:demand-default:${demand}:lock`;
    const other = "another-worker:lease";
    assert.ok(await conn.get(lock), "the launching lease's lock");
    await conn.set(lock, other, "EX", 3600);
    // ... and the demand's place under maxRunners, which that holder takes under the same id.
    assert.ok(await places.acquire("default", demand, 2), "the holder's place");

    await docker.getContainer(container.Id).kill();
    await waitFor(() => /lease lapsed while it was served|demand failed; returned to the queue/.test(sys.logs()), 60_000, "the launching lease's end");
    assert.doesNotMatch(sys.logs(), /demand failed; returned to the queue/, "the lost lease did not fail the demand");
    assert.doesNotMatch(sys.logs(), /launch for pool default failed/);
    assert.equal(await launchFailures(sys), 0, "no launch failure counted");
    const ready = (await (await fetch(`${sys.url}/readyz`)).json()) as { problems: string[] };
    assert.ok(!ready.problems.includes(UNREADY.launches), `ready for launches: ${JSON.stringify(ready)}`);
    assert.equal(await conn.get(lock), other, "the holder's lock untouched");
    const held = await demandState(r, "default", demand);
    assert.equal(held?.state, "active", "the demand still the holder's");
    assert.equal(held?.attempts, 0, "no attempt spent on it");

    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "the runner removed");
    await waitFor(async () => (await nextBeat(hostStore, host)).used === 0, 15_000, "no slot used");
    // The place is the holder's now: the lapsed lease's end leaves it (it frees itself at its
    // expiry should no holder refresh it), as freeing it would let the pool over its limit.
    assert.deepEqual(await conn.zrange(`${r.prefix}:pool:default:holders`, 0, -1), [demand], "the holder's place kept");
    assert.equal(callsTo(fake, JIT), 1, "no runner launched since");
  } finally {
    await sys.close();
    await t.close();
  }
});
