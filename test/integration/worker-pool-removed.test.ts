/**
 * A worker restarted with a config that no longer lists a pool (removed or renamed), for real
 * (fake GitHub, real Redis, real Docker engine): that pool's runners still running on its host are
 * not its to adopt. One running a job is left to finish it and removed once it exits; one running
 * none is deregistered and removed at once; one GitHub says took a job a moment ago (no webhook
 * said so yet) is left running too.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { containersOf, docker, fakeRunnerPool, ourContainer, registerRunner, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const SOCKET_ENV = { FAKE_GITHUB_SOCKET: "/fake-github/github.sock" };
const { redis, hosts } = workersForFile();


/**
 * A runner of pool `a` as a worker process that stopped left it: registered, recorded idle, its
 * container running (a sleep stands in for the runner program, which would poll for a job).
 */
async function leftIdleRunner(fake: FakeGitHub, runners: RunnerStore, host: string, name: string, labels: string[]) {
  const { id, token } = await registerRunner(fake, name, labels);
  const container = await ourContainer(host, name, { pool: "a", entrypoint: ["sleep", "600"] });
  await container.start();
  await runners.put({
    name, pool: "a", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: "a-stopped-process",
  });
  return { id, token, container };
}

async function running(id: string): Promise<boolean> {
  return docker.getContainer(id).inspect().then((i) => i.State.Running, () => false);
}

test("a worker restarted without a pool leaves that pool's busy runners running until their job ends, and removes its idle ones", { timeout: 240_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("pool-removed");
  hosts.push(host);
  const r = scopedRedis(redis, "pool-removed");
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const worker = { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 };
  // The job lasts long enough to outlive the restart and a few passes of the host loop.
  const poolA = fakeRunnerPool(fake, { name: "a", labels: ["self-hosted", "pool-a"], env: { ...SOCKET_ENV, FAKE_JOB_SECONDS: "12" } });
  const poolB = fakeRunnerPool(fake, { name: "b", labels: ["self-hosted", "pool-b"], env: SOCKET_ENV });
  const first = await startSystem("all", fake, r, host, { pools: [poolA], worker });
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    // A runner of pool a takes a job; the in_progress webhook marks its record busy.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-a"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "job running");
    const [busyName] = await runners.listHost(host);
    assert.ok(busyName);
    await waitFor(async () => (await runners.get(busyName))?.state === "busy", 10_000, "runner marked busy");
    // A stop leaves running runners running (a restart of the same config adopts them).
    await first.close();
    const [busy] = await containersOf(host);
    assert.equal(busy?.State, "running");

    // Webhooks from here on are held: no delivery marks anything, so the records say what the host
    // loop acts on. An idle runner of pool a, and one that GitHub handed a job a moment ago.
    fake.holdWebhooks();
    const idle = await leftIdleRunner(fake, runners, host, "jitrunner-a-00idle00001", ["self-hosted", "pool-a"]);
    const taken = await leftIdleRunner(fake, runners, host, "jitrunner-a-00taken0001", ["self-hosted", "pool-a"]);
    const job2 = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-a"], onlyRunner: "jitrunner-a-00taken0001" });
    const acquired = await fetch(`${fake.url}/_fake/runners/${taken.id}/acquire`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: taken.token }),
    });
    assert.equal(acquired.status, 200);
    assert.equal(fake.jobs().find((j) => j.id === job2.id)?.status, "in_progress");
    assert.equal((await runners.get("jitrunner-a-00taken0001"))?.state, "idle", "its record still says idle");

    // Restarted with pool a gone from its config: its start runs one pass of the host loop.
    second = await startSystem("all", fake, r, host, { pools: [poolB], worker });
    const sys = second;
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "in_progress", "the job still runs");
    assert.ok(await running(busy.Id), "the busy runner's container is left running");
    assert.equal((await runners.get(busyName))?.state, "busy", "and its record kept");
    assert.ok(!(await running(idle.container.id)) && !(await containersOf(host)).some((c) => c.Id === idle.container.id), "the idle runner's container removed");
    assert.equal(await runners.get("jitrunner-a-00idle00001"), undefined, "and its record");
    assert.ok(!fake.runners().some((x) => x.id === idle.id), "and its registration deleted");
    assert.ok(await running(taken.container.id), "the runner GitHub says is busy is left running");
    assert.ok(fake.runners().some((x) => x.id === taken.id), "with its registration");

    // Later passes leave them be, ask GitHub nothing more, and said why once for each.
    const passes = async () => metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_reconcile_runs_total", 'loop="host",outcome="ok"');
    const before = await passes();
    await waitFor(async () => (await passes()) >= before + 2, 30_000, "two more passes of the host loop");
    assert.ok((await running(busy.Id)) && (await running(taken.container.id)), "both still running");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "in_progress", "the job still runs");
    const deletes = (id: number) => fake.requests.filter((q) => q.route === DELETE && q.method === "DELETE" && q.path.endsWith(`/${id}`)).length;
    assert.equal(deletes(taken.id), 1, "GitHub asked once about the runner it said is busy");
    for (const name of [busyName, "jitrunner-a-00taken0001"]) {
      const lines = sys.logs().split("\n").filter((l) => l.includes(`"runner":"${name}"`) && l.includes("left running until it exits"));
      assert.equal(lines.length, 1, `logged once: ${name}`);
    }
    // They take the engine's room: counted among the host's slots used.
    await waitFor(async () => (await hostStore.list()).find((h) => h.id === host)?.record?.used === 2, 10_000, "two slots counted used");
    // And in the runner gauge, as busy runners of their pool.
    const busyOfA = async () => metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_runners", `pool="a",host="${host}",state="busy"`);
    assert.equal(await busyOfA(), 2, "both counted busy runners of pool a");

    // The job ends; the fake runner reports and exits; a pass removes its container and record.
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "job completed");
    assert.equal(done.conclusion, "success");
    // Teardown removes the container, then the record.
    await waitFor(async () => !(await containersOf(host)).some((c) => c.Id === busy.Id) && !(await runners.get(busyName)), 30_000, "the busy runner's container and record removed once it exited");
    const removed = new RegExp(`"runner":"${busyName}","reason":"reconcile_exited".*"msg":"runner removed"`);
    await waitFor(() => removed.test(sys.logs()), 5_000, "removed as exited");

    // The other's job ends too (its runner reports and exits, as the runner program would).
    const completed = await fetch(`${fake.url}/_fake/runners/${taken.id}/complete`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: taken.token, jobId: job2.id, conclusion: "success" }),
    });
    assert.equal(completed.status, 200);
    await taken.container.stop({ t: 0 });
    await waitFor(async () => (await containersOf(host)).length === 0 && (await runners.listHost(host)).length === 0, 30_000, "nothing of pool a left on the host");
    assert.equal(await runners.get("jitrunner-a-00taken0001"), undefined);
    await waitFor(async () => (await hostStore.list()).find((h) => h.id === host)?.record?.used === 0, 10_000, "the slots free again");
    assert.equal(await busyOfA(), 0, "and no longer counted");
  } finally {
    await second?.close();
    await first.close();
    await fake.close();
    conn.disconnect();
  }
});
