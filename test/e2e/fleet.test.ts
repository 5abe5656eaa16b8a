/**
 * A fleet on one machine: three Docker engines, a worker on each, one server, a real Redis and the
 * fake GitHub. Demand spreads over the hosts, a pool's global limit and each host's capacity hold
 * in a burst of three times the limit, drain lets running jobs finish, and an engine stopped
 * mid-burst loses no queued job.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { killLeftoverShims, startEngine, type TestEngine } from "../helpers/engines.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { fakeRunnerPool, RUNNER_IMAGE, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";
import { drainHost } from "../../src/cli/drain.ts";
import { testConfig } from "../helpers/config.ts";
import { Writable } from "node:stream";

let redis: TestRedis;
const engines: TestEngine[] = [];

before(async () => {
  redis = await startRedis();
  for (const name of ["fleet-a", "fleet-b", "fleet-c"]) engines.push(await startEngine(name, RUNNER_IMAGE));
});

after(async () => {
  for (const e of engines) {
    for (const c of await e.docker.listContainers({ all: true }).catch(() => [])) {
      await e.docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined);
    }
    await e.stop();
    killLeftoverShims(e.root);
  }
  await redis.stop();
});

interface Fleet {
  fake: FakeGitHub;
  server: SystemUnderTest;
  workers: SystemUnderTest[];
  hostIds: string[];
  close(): Promise<void>;
}

async function fleet(tag: string, pool: Record<string, unknown>, capacity = 2): Promise<Fleet> {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const scoped = { ...redis, prefix: `${redis.prefix}-${tag}` };
  const pools = [fakeRunnerPool(fake, pool)];
  const server = await startSystem("server", fake, scoped, uniqueHost("srv"), { pools });
  const hostIds = engines.map((e) => uniqueHost(`${tag}-${e.name}`));
  const workers: SystemUnderTest[] = [];
  for (const [i, e] of engines.entries()) {
    workers.push(
      await startSystem("worker", fake, scoped, hostIds[i]!, {
        pools,
        worker: { hostId: hostIds[i], capacity, docker: { socketPath: e.socketPath }, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, completedGraceSeconds: 5 },
      }),
    );
  }
  return {
    fake,
    server,
    workers,
    hostIds,
    close: async () => {
      for (const w of workers) await w.close();
      await server.close();
      await fake.close();
    },
  };
}

/** Running runner containers per engine, now. */
async function runningPerEngine(): Promise<number[]> {
  return Promise.all(
    engines.map(async (e) =>
      (await e.docker.listContainers({ filters: { label: ["dev.jitrunner.managed-by=jitrunner"] } }).catch(() => [])).length,
    ),
  );
}

test("a burst of 3x a pool's limit across 3 hosts: all served, limit and capacities never exceeded", async () => {
  const MAX = 3;
  const f = await fleet("burst", { maxRunners: MAX, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "2" } });
  let peak = 0;
  let peakPerHost = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const per = await runningPerEngine();
      peak = Math.max(peak, per.reduce((a, b) => a + b, 0));
      peakPerHost = Math.max(peakPerHost, ...per);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  try {
    const jobs = [];
    for (let i = 0; i < 3 * MAX; i++) jobs.push(await f.fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] }));
    await waitFor(() => f.fake.jobs().every((j) => j.status === "completed"), 240_000, "all jobs completed");
    assert.deepEqual(new Set(f.fake.jobs().map((j) => j.conclusion)), new Set(["success"]));
    await waitFor(async () => (await runningPerEngine()).every((n) => n === 0), 60_000, "no runner left");
    sampling = false;
    await sampler;
    assert.ok(peak <= MAX, `at most ${MAX} runners at once across hosts (saw ${peak})`);
    assert.ok(peak >= 2, `the limit was actually reached in parallel (saw ${peak})`);
    assert.ok(peakPerHost <= 2, `at most capacity 2 per host (saw ${peakPerHost})`);
    const hostsUsed = new Set(f.fake.jobs().map((j) => String(j.runner_name))).size;
    assert.equal(hostsUsed, 3 * MAX, "one runner per job");
    const spread = f.workers.filter((w) => /runner container started/.test(w.logs())).length;
    assert.ok(spread >= 2, `demand spread over hosts (${spread} of 3 launched runners)`);
    await waitFor(() => f.fake.runners().length === 0, 30_000, "no registration left");
  } finally {
    sampling = false;
    await sampler;
    await f.close();
  }
});

test("drain: the host takes no new demand, its running job finishes, then it is done", async () => {
  const f = await fleet("drain", { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "6" } }, 1);
  try {
    for (let i = 0; i < 3; i++) await f.fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => f.fake.jobs().filter((j) => j.status === "in_progress").length === 3, 90_000, "3 jobs running, one per host");
    const [a] = f.workers;
    let drained = false;
    void a!.drained.then(() => (drained = true));
    const out: string[] = [];
    const sink = new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) });
    const config = testConfig({ redis: { url: redis.url, prefix: `${redis.prefix}-drain` } });
    const code = await drainHost(config, f.hostIds[0]!, false, sink);
    assert.equal(code, 0, out.join(""));
    // A new job while A drains goes elsewhere.
    const late = await f.fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => drained, 60_000, "host A drained after its job finished");
    const aJob = f.fake.jobs().find((j) => j.runner_name !== null && a!.logs().includes(j.runner_name));
    assert.equal(aJob?.status, "completed", "A's running job finished");
    assert.equal(aJob?.conclusion, "success");
    await waitFor(() => f.fake.jobs().find((j) => j.id === late.id)?.status === "completed", 90_000, "the late job served by another host");
    assert.ok(!a!.logs().includes(String(f.fake.jobs().find((j) => j.id === late.id)?.runner_name)), "not by the draining host");
  } finally {
    await f.close();
  }
});

test("an engine stopped mid-burst loses no queued job", async () => {
  const f = await fleet("engine", { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } });
  const victim = engines[2]!;
  try {
    for (let i = 0; i < 6; i++) await f.fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await victim.stop();
    const victimLogs = () => f.workers[2]!.logs();
    // Jobs a runner on the stopped engine had already taken die with it (GitHub fails them);
    // every other job must complete.
    const lostWithEngine = (j: { runner_name?: unknown; status: string }) => j.status === "in_progress" && victimLogs().includes(String(j.runner_name));
    await waitFor(
      () => f.fake.jobs().every((j) => j.status === "completed" || lostWithEngine(j)),
      180_000,
      `every job completed or lost with the engine (${JSON.stringify(f.fake.jobs().map((j) => j.status))})`,
    );
    const completed = f.fake.jobs().filter((j) => j.status === "completed");
    assert.ok(completed.every((j) => j.conclusion === "success"));
    assert.ok(completed.length >= 4, `${completed.length} of 6 completed`);
    // Noticed by its worker: by the heartbeat's ping, or a host pass's call, whichever comes first.
    await waitFor(() => /Docker engine unreachable|cannot reach the Docker engine/.test(victimLogs()), 30_000, "the engine's loss logged by its worker");
  } finally {
    if (process.env.JITRUNNER_TEST_VERBOSE) f.workers.forEach((w, i) => process.stderr.write(`--- worker ${i}\n${w.logs()}`));
    await f.close();
    // Bring the engine back for whatever runs after.
    engines[2] = await startEngine(victim.name, RUNNER_IMAGE);
  }
});
