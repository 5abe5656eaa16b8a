/**
 * Chaos (issue 5; issue 4's host takeover), processes: a worker SIGKILLed at exact points of a
 * launch (the failpoints of src/worker/launcher.ts), a whole worker SIGKILLed mid-burst on one of
 * two hosts, and a Docker engine restarted under running runners. After each, every job that was
 * still queued gets a runner and finishes on a real DinD runner container, no job is served twice,
 * and once the reconcile loops have run nothing is left: no container, no volume, no registration,
 * no demand, no runner record.
 */
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, before, test } from "node:test";
import type Docker from "dockerode";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { killLeftoverShims, startEngine, type TestEngine } from "../helpers/engines.ts";
import { assertNothingLeft, watchVolumes } from "../helpers/leftovers.ts";
import { runJitrunner, waitFor, writeLogTail, type JitrunnerProcess } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import {
  callsTo,
  containersOf,
  demandIn,
  demandState,
  fakeRunnerPool,
  hostPasses,
  removeContainersOf,
  RUNNER_IMAGE,
  scopedRedis,
  startSystem,
  uniqueHost,
  type SystemUnderTest,
} from "../helpers/system.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import type { Failpoint } from "../../src/worker/launcher.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const LABELS = ["self-hosted", "linux"];
const OURS = "dev.jitrunner.managed-by=jitrunner";
/**
 * Short loops, so recovery comes within seconds: a host silent for 3 s is gone, a dead worker's
 * leases lapse after 5 s (the shortest lease the config allows).
 */
const WORKER = { capacity: 2, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, completedGraceSeconds: 5, leaseSeconds: 5 };
const RECONCILE = { leaderLockSeconds: 3, runnersIntervalSeconds: 2, orphanGraceSeconds: 5, queuedIntervalSeconds: 2, deliveriesIntervalSeconds: 2, deliveriesRetrySeconds: 2 };
/**
 * A dead worker's leases come back through BullMQ's stalled check: its lock (5 s here) must
 * expire and a check (every 5 s) must see it, so within about 10 s; the waits allow for a slow
 * machine and a launch on top of that.
 */
const TAKEOVER_MS = 150_000;

let redis: TestRedis;
let conn: ReturnType<typeof redisConnection>;
const hosts: string[] = [];
const engines: TestEngine[] = [];
const children: JitrunnerProcess[] = [];

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
  // Named for this run: another run of this file (someone's full suite) must not share them.
  for (const name of ["a", "b"]) engines.push(await startEngine(`chaos-proc-${name}-${process.pid}`, RUNNER_IMAGE));
});

after(async () => {
  for (const c of children) await c.stop();
  for (const h of hosts) await removeContainersOf(h);
  for (const e of engines) {
    await emptyEngine(e).catch(() => undefined);
    await e.stop();
    killLeftoverShims(e.root);
    rmSync(e.root, { recursive: true, force: true });
  }
  conn.disconnect();
  await redis.stop();
});

/** Removes every container and volume of a test engine (each is this file's alone). */
async function emptyEngine(e: TestEngine): Promise<void> {
  for (const c of await e.docker.listContainers({ all: true })) await e.docker.getContainer(c.Id).remove({ force: true, v: true });
  for (const v of (await e.docker.listVolumes()).Volumes ?? []) await e.docker.getVolume(v.Name).remove();
}

async function ourContainers(d: Docker, host: string): Promise<Docker.ContainerInfo[]> {
  return d.listContainers({ all: true, filters: { label: [OURS, `dev.jitrunner.host=${host}`] } });
}

async function volumeCount(e: TestEngine): Promise<number> {
  return ((await e.docker.listVolumes()).Volumes ?? []).length;
}

/** Waits (bounded) until the engine has no volume left, and fails naming those it has. */
async function noVolumesLeft(e: TestEngine): Promise<void> {
  try {
    await waitFor(async () => (await volumeCount(e)) === 0, 30_000, `0 volumes left on engine ${e.name}`);
  } catch (err) {
    const left = ((await e.docker.listVolumes()).Volumes ?? []).map((v) => ({ name: v.Name.slice(0, 12), labels: v.Labels }));
    const users = (await e.docker.listContainers({ all: true })).map((c) => ({ state: c.State, labels: c.Labels, mounts: c.Mounts.map((m) => m.Name?.slice(0, 12)) }));
    throw new Error(`${(err as Error).message}: ${JSON.stringify({ left, users })}`);
  }
}

interface Killable {
  proc: JitrunnerProcess;
  /** Resolves with the signal that ended the process (null if it exited by itself). */
  exit: Promise<NodeJS.Signals | null>;
  /** Set once it has exited. */
  ended: { signal: NodeJS.Signals | null } | undefined;
}

/** `jitrunner worker` as a child process, from a config file like an operator's; `env` may arm a failpoint. */
function workerProcess(
  fake: FakeGitHub,
  r: TestRedis,
  hostId: string,
  pools: unknown[],
  docker: Record<string, unknown>,
  env: Record<string, string> = {},
  worker: Record<string, unknown> = {},
): Killable {
  const file = writeOperatorConfig(fake, {
    redis: { url: r.url, prefix: r.prefix },
    server: { host: "127.0.0.1", port: 0 },
    worker: { ...WORKER, ...worker, hostId, docker },
    reconcile: RECONCILE,
    logLevel: "debug",
    pools,
  });
  const proc = runJitrunner(["worker", "--config", file], env);
  children.push(proc);
  const killable: Killable = { proc, exit: Promise.resolve(null), ended: undefined };
  killable.exit = new Promise((resolve) =>
    proc.child.once("exit", (_code, signal) => {
      killable.ended = { signal };
      resolve(signal);
    }),
  );
  return killable;
}

/** Stops a killed worker's process (if still there), the workers, the server and the fake; logs with JITRUNNER_TEST_VERBOSE. */
async function closeAll(a: Killable, workers: SystemUnderTest[], server: SystemUnderTest, fake: FakeGitHub): Promise<void> {
  if (process.env.JITRUNNER_TEST_VERBOSE) {
    process.stderr.write(`--- worker A (killed)\n${a.proc.output()}\n`);
    workers.forEach((w, i) => process.stderr.write(`--- worker ${i}\n${w.logs()}\n`));
  }
  await a.proc.stop();
  for (const w of workers) await w.close();
  await server.close();
  await fake.close();
}

/** An in-process worker (the real composition root) on `hostId`. */
function inProcessWorker(
  fake: FakeGitHub,
  r: TestRedis,
  hostId: string,
  pools: unknown[],
  docker: Record<string, unknown> = {},
  worker: Record<string, unknown> = {},
): Promise<SystemUnderTest> {
  return startSystem("worker", fake, r, hostId, { pools: pools as never, worker: { ...WORKER, ...worker, hostId, docker }, reconcile: RECONCILE });
}

/**
 * The runners whose demand went back to the queue because they ended without taking a job: each
 * such retry names the runner of the last "runner removed" line of its demand.
 */
function runnersEndedWithoutAJob(logs: string): string[] {
  const lastRemoved = new Map<string, string>();
  const names: string[] = [];
  for (const line of logs.split("\n")) {
    if (!line.startsWith("{")) continue;
    const entry = JSON.parse(line) as { msg?: string; demandId?: string; runner?: string; err?: string };
    if (!entry.demandId) continue;
    if (entry.msg === "runner removed" && entry.runner) lastRemoved.set(entry.demandId, entry.runner);
    if (entry.msg === "demand failed; returned to the queue" && entry.err?.startsWith("runner ended without taking a job")) {
      names.push(lastRemoved.get(entry.demandId) ?? `unknown runner of ${entry.demandId}`);
    }
  }
  return names;
}

function jobPool(fake: FakeGitHub, jobSeconds: number) {
  // Idle runners are reaped within 30 s: a spare runner would show as a container left behind.
  return fakeRunnerPool(fake, { idleTimeoutSeconds: 30, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds) } });
}

/**
 * Waits until no demand waits or is held: a dead worker's lease comes back only through the
 * stalled check, and must then be completed (its runner served it) or served again. None failed.
 */
async function demandSettled(r: TestRedis): Promise<void> {
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 1 }, conn);
  try {
    const counts = async () => (await queues.counts(["default"])).get("default")!;
    await waitFor(
      async () => {
        const c = await counts();
        return c.waiting + c.delayed + c.prioritized + c.paused + c.active === 0;
      },
      TAKEOVER_MS,
      "no demand waiting or held",
    );
    assert.equal((await counts()).failed, 0, "no demand ran out of launch attempts");
  } finally {
    await queues.close();
  }
}

/** No demand waiting, held or failed, and no runner record, under `r`'s prefix. */
async function assertRedisClean(r: TestRedis): Promise<void> {
  await demandSettled(r);
  const records = new RunnerStore(conn, r.prefix);
  // A record whose teardown an engine restart cut short goes with the host loop's next pass; one a
  // killed worker left, once its process's heartbeat has lapsed (3 s here).
  await waitFor(async () => (await records.listAll()).length === 0, 30_000, "no runner record left");
}

function jobsDone(fake: FakeGitHub, ids: number[]): FakeJob[] | undefined {
  const jobs = fake.jobs().filter((j) => ids.includes(j.id));
  return jobs.length === ids.length && jobs.every((j) => j.status === "completed") ? jobs : undefined;
}

const LAUNCH_CASES: Array<[Failpoint, "same host restarted" | "another host"]> = [
  ["launch:after-jit", "same host restarted"],
  ["launch:after-jit", "another host"],
  ["launch:after-create", "same host restarted"],
  ["launch:after-create", "another host"],
  ["launch:after-start", "same host restarted"],
  ["launch:after-start", "another host"],
];

for (const [point, takeover] of LAUNCH_CASES) {
  test(`worker SIGKILLed at ${point}, ${takeover} takes over: the job is served once, nothing left`, async () => {
    const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    const r = scopedRedis(redis, `${point}-${takeover}`.replace(/[^a-z]+/g, "-"));
    const runners = new RunnerStore(conn, r.prefix);
    const hostStore = new HostStore(conn, r.prefix);
    const pools = [jobPool(fake, 1)];
    const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
    const victim = uniqueHost("chaos-proc-victim");
    const heir = takeover === "same host restarted" ? victim : uniqueHost("chaos-proc-heir");
    hosts.push(victim, heir);
    const volumes = watchVolumes([...new Set([victim, heir])]);
    const killed = workerProcess(fake, r, victim, pools, {}, { JITRUNNER_FAILPOINT: point });
    const workers: SystemUnderTest[] = [];
    try {
      const job = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
      const ended = await waitFor(() => killed.ended, 60_000, `the worker to hit ${point}`);
      assert.equal(ended.signal, "SIGKILL", killed.proc.output().slice(-2000));
      assert.match(killed.proc.output(), new RegExp(`failpoint ${point}: SIGKILL`));
      for (const secret of fake.issuedSecrets()) assert.ok(!killed.proc.output().includes(secret), "no token or JIT config in the output");

      // Exactly what a crash at that point leaves: a record, a registration, maybe a container.
      const [record, ...more] = await runners.listAll();
      assert.ok(record && more.length === 0, "one runner record");
      assert.equal(record.host, victim);
      assert.equal(fake.runners().length, 1, "the runner is registered at GitHub");
      const left = await containersOf(victim);
      if (point === "launch:after-jit") {
        assert.equal(record.runnerId, undefined, "its runner id not yet noted");
        assert.equal(left.length, 0, "no container yet");
      } else {
        assert.equal(record.runnerId, fake.runners()[0]!.id);
        assert.equal(left.length, 1, "its container exists");
        assert.equal(left[0]!.State, point === "launch:after-create" ? "created" : "running");
        assert.equal(record.containerId, point === "launch:after-create" ? undefined : left[0]!.Id);
        assert.equal(record.state, point === "launch:after-create" ? "registering" : "starting");
      }

      workers.push(await inProcessWorker(fake, r, heir, pools));
      const [done] = await waitFor(
        () => jobsDone(fake, [job.id]),
        TAKEOVER_MS,
        `the job completed (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
      );
      assert.equal(done!.conclusion, "success");
      // The dead worker's lease came back and was settled without a runner too many.
      await demandSettled(r);
      if (point === "launch:after-start" && takeover === "same host restarted") {
        // The restarted worker adopted the running container, which took the job: no second runner.
        assert.equal(done!.runner_name, record.name, "the job ran on the runner started before the kill");
        assert.equal(callsTo(fake, JIT), 1, "no second registration");
      } else if (point !== "launch:after-start") {
        // The first runner never ran: a second one served the job.
        assert.notEqual(done!.runner_name, record.name);
        assert.equal(callsTo(fake, JIT), 2, "one more registration, no more");
      } else {
        // Another host: the started runner took the job, or it was deregistered as lost (it had
        // taken none yet when its host was found gone) and a runner of the heir ran the job.
        assert.ok(callsTo(fake, JIT) <= 2, `${callsTo(fake, JIT)} registrations`);
        assert.equal(callsTo(fake, JIT) === 1, done!.runner_name === record.name);
      }

      if (takeover === "another host") {
        // Issue 4: the killed host's records are swept and the host forgotten, with nobody on it.
        await waitFor(
          async () => (await runners.listHost(victim)).length === 0 && !(await hostStore.list()).some((h) => h.id === victim),
          60_000,
          "the killed host's records swept and the host forgotten",
        );
        if (point !== "launch:after-jit") {
          // Its container is on its engine, which only that host's worker reaches: it stays
          // (stopped, or never started) until that worker comes back and removes it.
          const still = point === "launch:after-create" ? "created" : "exited";
          await waitFor(async () => (await containersOf(victim)).every((c) => c.State === still), 60_000, `the victim's runner ${still}`);
          assert.equal((await containersOf(victim)).length, 1);
          workers.push(await inProcessWorker(fake, r, victim, pools));
        }
      }
      await assertNothingLeft({ hostIds: [...new Set([victim, heir])], fake, redis: r, pools: ["default"], volumes });
    } finally {
      await volumes.stop();
      if (process.env.JITRUNNER_TEST_VERBOSE) {
        process.stderr.write(`--- killed worker\n${killed.proc.output()}\n`);
        workers.forEach((w, i) => process.stderr.write(`--- worker ${i}\n${w.logs()}\n`));
      }
      await killed.proc.stop();
      for (const w of workers) await w.close();
      await server.close();
      await fake.close();
    }
  });
}

for (const takeover of ["same host restarted", "another host"] as const) {
  test(`worker SIGKILLed in a teardown, its runner's container removed but not its record, ${takeover} takes over: the job served once, nothing left`, async () => {
    const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    const r = scopedRedis(redis, `teardown-${takeover}`.replace(/[^a-z]+/g, "-"));
    const runners = new RunnerStore(conn, r.prefix);
    const hostStore = new HostStore(conn, r.prefix);
    const pools = [jobPool(fake, 1)];
    const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
    const victim = uniqueHost("chaos-proc-td");
    const heir = takeover === "same host restarted" ? victim : uniqueHost("chaos-proc-td-heir");
    hosts.push(victim, heir);
    const volumes = watchVolumes([...new Set([victim, heir])]);
    const killed = workerProcess(fake, r, victim, pools, {}, { JITRUNNER_FAILPOINT: "teardown:after-remove" });
    const workers: SystemUnderTest[] = [];
    try {
      const job = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
      const ended = await waitFor(() => killed.ended, 90_000, "the worker to hit teardown:after-remove");
      assert.equal(ended.signal, "SIGKILL", killed.proc.output().slice(-2000));
      const [done] = jobsDone(fake, [job.id]) ?? [];
      assert.equal(done?.conclusion, "success", "the job ran before its runner was torn down");
      // What the crash leaves: the record, no container.
      const [record, ...more] = await runners.listAll();
      assert.ok(record && more.length === 0, "one runner record");
      assert.equal((await containersOf(victim)).length, 0, "its container removed");

      workers.push(await inProcessWorker(fake, r, heir, pools));
      await demandSettled(r);
      if (takeover === "another host") {
        await waitFor(
          async () => (await runners.listHost(victim)).length === 0 && !(await hostStore.list()).some((h) => h.id === victim),
          60_000,
          "the killed host's record swept and the host forgotten",
        );
      }
      assert.equal(callsTo(fake, JIT), 1, "no second runner registered");
      await assertNothingLeft({ hostIds: [...new Set([victim, heir])], fake, redis: r, pools: ["default"], volumes });
    } finally {
      await volumes.stop();
      await killed.proc.stop();
      for (const w of workers) await w.close();
      await server.close();
      await fake.close();
    }
  });
}

test("a worker restarted with a runner mid-job counts the runner it adopts in its capacity: with one slot, the next job's runner starts only once it has exited", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "adopted-slot");
  const pools = [jobPool(fake, 15)];
  const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
  const host = uniqueHost("chaos-proc-adopt");
  hosts.push(host);
  const volumes = watchVolumes([host]);
  const killed = workerProcess(fake, r, host, pools, {}, {}, { capacity: 1 });
  const workers: SystemUnderTest[] = [];
  let watching = true;
  let mostRunning = 0;
  const watch = (async () => {
    while (watching) {
      mostRunning = Math.max(mostRunning, (await containersOf(host)).filter((c) => c.State === "running").length);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  try {
    const first = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
    await waitFor(() => fake.jobs().find((j) => j.id === first.id)?.status === "in_progress", 60_000, "the first job running");
    killed.proc.child.kill("SIGKILL");
    await killed.exit;
    const second = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
    workers.push(await inProcessWorker(fake, r, host, pools, {}, { capacity: 1 }));
    await waitFor(() => jobsDone(fake, [first.id, second.id]), TAKEOVER_MS, "both jobs completed");
    const [one, two] = [first.id, second.id].map((id) => fake.jobs().find((j) => j.id === id)!);
    assert.ok(Date.parse(two!.started_at!) >= Date.parse(one!.completed_at!), "the second job started only after the first (adopted) one ended");
    assert.match(workers[0]!.logs(), /adopted running runner/);
    watching = false;
    await watch;
    assert.equal(mostRunning, 1, "never more runner containers running than the one slot");
    await demandSettled(r);
    await assertNothingLeft({ hostIds: [host], fake, redis: r, pools: ["default"], volumes });
  } finally {
    watching = false;
    await watch;
    await volumes.stop();
    await closeAll(killed, workers, server, fake);
  }
});

test("a worker SIGKILLed mid-burst on one of two hosts: the other takes the queued demand, the dead host is swept, its restarted worker removes its runners", async (t) => {
  const [engA, engB] = engines as [TestEngine, TestEngine];
  await emptyEngine(engA);
  await emptyEngine(engB);
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "burst");
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const pools = [jobPool(fake, 8)];
  const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
  const hostA = uniqueHost("chaos-proc-a");
  const hostB = uniqueHost("chaos-proc-b");
  const a = workerProcess(fake, r, hostA, pools, { socketPath: engA.socketPath });
  const workers: SystemUnderTest[] = [];
  try {
    await waitFor(() => a.proc.output().includes("worker started"), 60_000, `worker A started (${a.proc.output().slice(-2000)})`);
    const b = await inProcessWorker(fake, r, hostB, pools, { socketPath: engB.socketPath });
    workers.push(b);
    const ids: number[] = [];
    for (let i = 0; i < 6; i++) ids.push((await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS })).id);

    // A runs two jobs (its capacity), B two, two wait in the queue.
    const aNames = async () => new Set((await ourContainers(engA.docker, hostA)).map((c) => c.Labels["dev.jitrunner.runner-name"] ?? ""));
    const onA = await waitFor(
      async () => {
        const names = await aNames();
        const running = fake.jobs().filter((j) => j.status === "in_progress" && names.has(String(j.runner_name)));
        return running.length === 2 && fake.jobs().some((j) => j.status === "queued") && running;
      },
      120_000,
      `2 jobs running on A with jobs still queued (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    const queuedAtKill = fake.jobs().filter((j) => j.status === "queued").map((j) => j.id);
    a.proc.child.kill("SIGKILL");
    assert.equal(await a.exit, "SIGKILL");
    const killedAt = Date.now();

    // The queued demand goes to B; A's runners, left alone, finish their jobs.
    const done = await waitFor(() => jobsDone(fake, ids), 180_000, `all 6 jobs completed (${JSON.stringify(fake.jobs().map((j) => j.status))})`);
    const jobsSeconds = (Date.now() - killedAt) / 1000;
    // A's two leases come back through the stalled check and are settled as served.
    await demandSettled(r);
    const leasesSeconds = (Date.now() - killedAt) / 1000;
    assert.deepEqual(done.map((j) => j.conclusion), Array(6).fill("success"));
    assert.equal(new Set(done.map((j) => j.runner_name)).size, 6, "each job on a runner of its own");
    assert.equal(callsTo(fake, JIT), 6, "one registration per job: none served twice, no spare runner");
    for (const j of onA) assert.equal(done.find((d) => d.id === j.id)?.runner_name, j.runner_name, "A's running jobs finished on A's runners");
    for (const id of queuedAtKill) assert.ok(b.logs().includes(String(done.find((d) => d.id === id)?.runner_name)), `queued job ${id} served by B`);

    // Issue 4: A's records are swept by B's gone-host sweep and A is forgotten.
    await waitFor(
      async () => (await runners.listHost(hostA)).length === 0 && !(await hostStore.list()).some((h) => h.id === hostA),
      60_000,
      "A's runner records swept and A forgotten",
    );
    // B's engine is clean; A's stays as A's runners left it (only A's worker reaches that engine).
    await waitFor(async () => (await engB.docker.listContainers({ all: true })).length === 0, 60_000, "0 containers left on B's engine");
    assert.equal(await volumeCount(engB), 0, "0 volumes left on B's engine");
    const leftOnA = await waitFor(
      async () => {
        const cs = await ourContainers(engA.docker, hostA);
        return cs.every((c) => c.State === "exited") && cs;
      },
      60_000,
      "A's runners exited after their jobs",
    );
    assert.equal(leftOnA.length, 2, "A's two runners stay, stopped, on A's engine while A is down");
    assert.ok((await volumeCount(engA)) >= 2, "with their /var/lib/docker volumes");

    // A restarted: its host loop removes them, with their volumes.
    workers.push(await inProcessWorker(fake, r, hostA, pools, { socketPath: engA.socketPath }));
    await waitFor(async () => (await engA.docker.listContainers({ all: true })).length === 0, 60_000, "0 containers left on A's engine");
    await noVolumesLeft(engA);
    await waitFor(() => fake.runners().length === 0, 30_000, `0 registrations left (${JSON.stringify(fake.runners().map((x) => x.name))})`);
    await assertRedisClean(r);
    t.diagnostic(`after the kill: all 6 jobs completed in ${jobsSeconds.toFixed(1)} s, A's leases settled in ${leasesSeconds.toFixed(1)} s`);
  } finally {
    await closeAll(a, workers, server, fake);
  }
});

test("a worker SIGKILLed with a warm runner and not restarted: its host swept deregisters it, another host keeps the pool warm, it goes when its host returns", async (t) => {
  const [engA, engB] = engines as [TestEngine, TestEngine];
  await emptyEngine(engA);
  await emptyEngine(engB);
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "warm-kill");
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const pools = [{ ...jobPool(fake, 1), minIdle: 1, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } }];
  const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
  const hostA = uniqueHost("chaos-proc-warm-a");
  const hostB = uniqueHost("chaos-proc-warm-b");
  const a = workerProcess(fake, r, hostA, pools, { socketPath: engA.socketPath });
  const workers: SystemUnderTest[] = [];
  const idle = () => fake.runners().filter((x) => x.status === "online" && !x.busy);
  const namesOn = async (e: TestEngine, host: string) => new Set((await ourContainers(e.docker, host)).map((c) => c.Labels["dev.jitrunner.runner-name"] ?? ""));
  try {
    // A fills the pool's warm place (a worker keeps a slot for demand: capacity 2 holds one warm
    // runner); B, joining after, finds it taken and launches none.
    const aWarm = await waitFor(
      async () => {
        const onA = await namesOn(engA, hostA);
        const warm = idle().filter((x) => onA.has(x.name));
        return warm.length === 1 && warm.map((x) => x.name);
      },
      120_000,
      "A's warm runner online",
    );
    const b = await inProcessWorker(fake, r, hostB, pools, { socketPath: engB.socketPath });
    workers.push(b);
    // B at work for a while (its warm loop looks for a free place every second): two passes of its host loop.
    await waitFor(async () => (await hostPasses(b, "ok")) >= 2, 30_000, "two passes of B's host loop");
    assert.equal(callsTo(fake, JIT), 1, "B launches nothing while A's runner holds the warm place");

    a.proc.child.kill("SIGKILL");
    assert.equal(await a.exit, "SIGKILL");
    const killedAt = Date.now();

    // A's host is swept: its warm runner, idle, is deregistered, its record goes, A is forgotten.
    await waitFor(() => !fake.runners().some((x) => aWarm.includes(x.name)), 90_000, "A's warm runner deregistered");
    await waitFor(
      async () => (await runners.listHost(hostA)).length === 0 && !(await hostStore.list()).some((h) => h.id === hostA),
      60_000,
      "A's runner records swept and A forgotten",
    );
    const sweptSeconds = (Date.now() - killedAt) / 1000;
    // The sweep frees A's warm place with its host (else it would stay taken until it expires, a
    // minute after A's last heartbeat), and B fills it.
    const warmHolders = await conn.zrange(`${r.prefix}:pool:default:warm:holders`, 0, -1);
    assert.ok(!warmHolders.some((h) => h.startsWith(`${hostA}:`)), `A's warm place freed with its host (${warmHolders.join(", ")})`);
    const bWarm = await waitFor(
      async () => {
        const onB = await namesOn(engB, hostB);
        const warm = idle().filter((x) => onB.has(x.name));
        return warm.length === 1 && warm.map((x) => x.name);
      },
      TAKEOVER_MS,
      "a warm runner online on B",
    );
    const warmAgainSeconds = (Date.now() - killedAt) / 1000;
    assert.equal(callsTo(fake, JIT), 2, "one replacement, no more");
    assert.equal(fake.runners().length, 1, `no registration left but B's (${fake.runners().map((x) => x.name).join(", ")})`);

    // A's engine keeps A's runner, exited (its registration went), until A's worker returns;
    // restarted, its host loop removes it with its volume.
    await waitFor(
      async () => {
        const cs = await ourContainers(engA.docker, hostA);
        return cs.length === 1 && cs.every((c) => c.State === "exited");
      },
      60_000,
      "A's runner exited, still on A's engine",
    );
    workers.push(await inProcessWorker(fake, r, hostA, pools, { socketPath: engA.socketPath }));
    await waitFor(async () => (await engA.docker.listContainers({ all: true })).length === 0, 60_000, "0 containers left on A's engine");
    await noVolumesLeft(engA);

    // The pool is warm on B: the next job starts on its warm runner.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "the job completed");
    assert.ok(bWarm.includes(String(done.runner_name)), `the job ran on B's warm runner (${done.runner_name})`);
    t.diagnostic(`after the kill: A's host swept in ${sweptSeconds.toFixed(1)} s, the pool warm again on B in ${warmAgainSeconds.toFixed(1)} s`);
  } finally {
    await closeAll(a, workers, server, fake);
  }
});

test("the wait on a container started while its engine shuts down ends once the engine is back", async () => {
  // An engine still answers for the seconds it takes to stop its containers, so a worker can
  // start a runner on it then; that container is killed at the end, and the engine never answers
  // the open wait for it. The driver must see it stopped all the same (else the worker holds the
  // runner's slot and demand forever).
  const eng = engines[0]!;
  await emptyEngine(eng);
  const driver = new DockerodeDriver({ socketPath: eng.socketPath });
  const run = async (entrypoint: string[]) => {
    const c = await eng.docker.createContainer({ Image: RUNNER_IMAGE, Entrypoint: entrypoint, HostConfig: { NetworkMode: "none" } });
    await c.start();
    return c.id;
  };
  // The engine's shutdown begins by sending its containers SIGTERM: seen as a kill event. Its
  // socket stops taking connections then; the requests below go over one it keeps open (kept
  // alive), so the event stream is opened first, on a connection of its own.
  const events = (await eng.docker.getEvents({ filters: { event: ["kill"] } })) as Readable;
  events.on("error", () => undefined); // the stream breaks when the engine goes
  // Ignores SIGTERM (PID 1): the engine's shutdown waits 10 s for it before killing it.
  const first = await run(["sleep", "300"]);
  let stopping = false;
  events.on("data", (chunk) => (stopping ||= String(chunk).includes(first)));
  const restarted = eng.restart();
  // Into the shutdown: the engine has begun stopping its containers.
  await waitFor(() => stopping, 30_000, "the engine to begin stopping its containers");
  events.destroy();
  let late: string | undefined;
  await waitFor(
    async () => {
      await driver.ping();
      return (late = await run(["sleep", "300"]));
    },
    5000,
    "a container started on the engine while it shuts down",
  );
  let ended: { exitCode: number | null } | undefined;
  void driver.wait(late!, new AbortController().signal).then((r) => (ended = r));
  await restarted;
  const result = await waitFor(() => ended, 30_000, "the wait to end after the engine came back");
  assert.equal(result.exitCode, 137, "the engine killed it at the end of its shutdown");
  await emptyEngine(eng);
});

test("a launch cut short by its engine going away spends no launch attempt: the job runs once the engine is back", async () => {
  const eng = engines[0]!;
  await emptyEngine(eng);
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "engine-gone");
  const pools = [jobPool(fake, 2)];
  const host = uniqueHost("chaos-proc-gone");
  // One launch attempt: a failure that counted against the demand would fail it for good.
  const system = await startSystem("all", fake, r, host, {
    pools: pools as never,
    worker: { ...WORKER, hostId: host, docker: { socketPath: eng.socketPath }, launchAttempts: 1 },
    reconcile: RECONCILE,
  });
  try {
    // The registration takes its time: the engine is gone by the time the container is created.
    fake.inject({ route: JIT, method: "POST", times: 1, delayMs: 4000 });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
    const id = `${job.id}-1`;
    await demandIn(r, id, "active", 30_000);
    await eng.stop();
    await waitFor(() => system.logs().includes("demand handed back"), 30_000, "the failed launch to hand its demand back");
    const back = await demandState(r, "default", id);
    assert.equal(back?.state, "waiting", "back in the queue, not failed");
    assert.equal(back?.attempts, 0, "no launch attempt spent");
    assert.equal(callsTo(fake, JIT), 1);

    await eng.restart();
    const [done] = await waitFor(() => jobsDone(fake, [job.id]), 120_000, `the job completed (${JSON.stringify(fake.jobs().map((j) => j.status))})`);
    assert.equal(done!.conclusion, "success");
    assert.equal(callsTo(fake, JIT), 2, "one registration undone, one that ran the job");
    await waitFor(() => fake.runners().length === 0, 60_000, `no registration left (${JSON.stringify(fake.runners().map((x) => x.name))})`);
    await waitFor(async () => (await eng.docker.listContainers({ all: true })).length === 0, 60_000, "0 containers left on the engine");
    await noVolumesLeft(eng);
    await assertRedisClean(r);
  } catch (err) {
    writeLogTail("jitrunner all", system.logs());
    throw err;
  } finally {
    await system.close();
    await fake.close();
  }
});

test("a Docker engine restarted under running runners: every job still queued finishes there, nothing left on it", async () => {
  const eng = engines[1]!;
  await emptyEngine(eng);
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "engine");
  const pools = [jobPool(fake, 15)];
  const server = await startSystem("server", fake, r, uniqueHost("chaos-proc-srv"), { pools });
  const host = uniqueHost("chaos-proc-engine");
  const worker = await inProcessWorker(fake, r, host, pools, { socketPath: eng.socketPath });
  try {
    const ids: number[] = [];
    for (let i = 0; i < 4; i++) ids.push((await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS })).id);
    await waitFor(
      () => fake.jobs().filter((j) => j.status === "in_progress").length === 2,
      120_000,
      `2 jobs running (${JSON.stringify(fake.jobs().map((j) => j.status))})`,
    );
    assert.equal(fake.jobs().filter((j) => j.status === "queued").length, 2);
    assert.ok((await volumeCount(eng)) >= 2, "the runners have their /var/lib/docker volumes");

    await eng.restart();
    // Its runners died with it (no restart policy): their jobs are GitHub's to fail. That includes
    // a runner launched while the engine shut down (a slot freed by a runner it had killed) that
    // took a job before the engine killed it too: every job in progress now has lost its runner.
    // The jobs still queued get runners once the engine answers again.
    const after = fake.jobs();
    const lost = after.filter((j) => j.status === "in_progress");
    const queued = after.filter((j) => j.status === "queued").map((j) => j.id);
    assert.ok(lost.length >= 2 && queued.length >= 1 && lost.length + queued.length === 4, JSON.stringify(after.map((j) => j.status)));
    const done = await waitFor(() => jobsDone(fake, queued), 180_000, `the queued jobs completed (${JSON.stringify(after.map((j) => j.status))} after the restart)`);
    assert.ok(done.every((j) => j.conclusion === "success"));
    for (const j of lost) {
      const now = fake.jobs().find((x) => x.id === j.id)!;
      assert.equal(now.status, "in_progress", "a job whose runner died is not run again");
      assert.equal(now.runner_name, j.runner_name);
    }
    // Launches cut short by the restart ("database not open") were undone and retried. A runner
    // started while the engine shut down may have been killed by it before it took a job: it was
    // replaced too. A runner that died mid-job is never replaced: its demand was served.
    await demandSettled(r);
    const undone = worker.logs().split("launch failed; undoing registration").length - 1;
    const endedIdle = runnersEndedWithoutAJob(worker.logs());
    const lostNames = lost.map((j) => String(j.runner_name));
    assert.deepEqual(
      endedIdle.filter((name) => lostNames.includes(name)),
      [],
      "no runner for a demand whose runner died mid-job",
    );
    assert.equal(
      callsTo(fake, JIT),
      4 + undone + endedIdle.length,
      `one registration per job, per undone launch (${undone}) and per runner that ended without taking a job (${endedIdle.join(", ") || "none"})`,
    );

    await waitFor(async () => (await eng.docker.listContainers({ all: true })).length === 0, 60_000, "0 containers left on the engine");
    // A create the engine fails while it shuts down ("database not open") leaves the container's
    // volume behind, with our labels and no container: the host loop removes such volumes. One
    // made here for certain (the restart above may or may not have produced one):
    await eng.docker.createVolume({ Labels: { "dev.jitrunner.managed-by": "jitrunner", "dev.jitrunner.host": host } });
    await noVolumesLeft(eng);
    // Only the dead runners' registrations remain: GitHub still lists them busy with their jobs
    // until it fails those (the fake never does). A launch whose undoing the restart cut short
    // leaves its record, which the host loop tears down (registration too) after its grace.
    const expected = JSON.stringify(lost.map((j) => j.runner_name).sort());
    await waitFor(
      () => JSON.stringify(fake.runners().map((x) => x.name).sort()) === expected,
      90_000,
      `only the dead runners' registrations left (${expected}; have ${JSON.stringify(fake.runners().map((x) => x.name))})`,
    );
    await assertRedisClean(r);
  } catch (err) {
    writeLogTail("the worker", worker.logs());
    throw err;
  } finally {
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(`--- worker\n${worker.logs()}\n`);
    await worker.close();
    await server.close();
    await fake.close();
  }
});
