/**
 * A demand's lease that lapses (Redis away for longer than worker.leaseSeconds, the worker's
 * process paused) while it waits for the end of the demand's runner, which a worker before it
 * launched, for real (fake GitHub, real Redis, real Docker engine). The wait ends with the lease:
 * the demand is its next holder's, who finds the same runner and waits for it in turn. What the
 * lost lease held for the runner goes back to the runner, which runs on to its job's end.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, containersOf, demandIn, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore, PoolLimits } from "../../src/state/hosts.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const { redis, hosts } = workersForFile();

test("a lease that lapses while it waits for its demand's runner on its own host stops waiting and gives the runner its slot back: the demand's next lease there takes that slot over, the runner counts once, and another job launches beside it", { timeout: 240_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("wait-lost");
  const r = scopedRedis(redis, "wait-lost");
  hosts.push(host);
  // Two slots and two places: job 1's runner, and one more beside it unless job 1's counts twice.
  const pools = [fakeRunnerPool(fake, { maxRunners: 2, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "120" } })];
  const over = { pools, worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, leaseSeconds: 5, heartbeatSeconds: 1 } };
  const first = await startSystem("all", fake, r, host, over);
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const places = new PoolLimits(conn, r.prefix);
  const found = () => (second?.logs().match(/demand already has a runner/g) ?? []).length;
  try {
    const job1 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job1.id && j.status === "in_progress"), 60_000, "job 1 running");
    // Restarted mid-job: the new process adopts the runner, takes the demand back and waits for
    // the runner's end, the lease holding the runner's slot and place.
    await first.close();
    second = await startSystem("all", fake, r, host, over);
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
    await fake.close();
    conn.disconnect();
  }
});
