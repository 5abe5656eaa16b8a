/**
 * Warm runners (pool `minIdle`), for real: DinD runner containers on the engine, the fake GitHub,
 * a real Redis. A pool keeps its idle registered runners ready with no demand; a job starts on one
 * that existed before its webhook (no launch on its critical path); a replacement brings the pool
 * back to `minIdle`; warm runners outlive the idle timeout; a drain deregisters and removes them.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import type { TestRedis } from "../helpers/redis.ts";
import { callsTo, containersOf, demandIn, docker, fakeRunnerPool, scopedRedis, startSystem, type SystemUnderTest, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const MIN_IDLE = 2;
/**
 * Long enough for a runner launched for a job to boot and take it on a loaded machine (two engine
 * test files run at once): its idle clock starts when its container has started.
 */
const IDLE_TIMEOUT_SECONDS = 12;
const { redis, hosts } = workersForFile();

test("warm runners: ready with no demand, a job starts on one, replaced, kept past the idle timeout, removed by a drain", async () => {
  const { fake, host, r, sys } = await warmSystem("warm", 1);
  const idleRunners = () => fake.runners().filter((x) => !x.busy && x.status === "online");
  try {
    // Ready with no job at all: MIN_IDLE registered runners, online, in running containers.
    const warm = await waitFor(() => idleRunners().length === MIN_IDLE && idleRunners(), 90_000, `${MIN_IDLE} warm runners online`);
    assert.equal(callsTo(fake, JIT), MIN_IDLE, "exactly minIdle registrations while nothing is queued");
    assert.equal((await containersOf(host)).filter((c) => c.State === "running").length, MIN_IDLE);
    const warmNames = new Set(warm.map((x) => x.name));

    // A job starts on a runner that was there before its webhook: no launch on its critical path.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.equal(done.conclusion, "success");
    assert.ok(warmNames.has(done.runner_name!), `the job ran on a warm runner (${done.runner_name})`);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_pickup_latency_seconds_count\{pool="default"\} 1/, "the demand was picked up once");

    // Replaced: the pool is back to MIN_IDLE idle runners, and after the idle timeout (which a
    // runner the demand adopted but GitHub did not use is subject to) exactly MIN_IDLE are left.
    await waitFor(async () => idleRunners().length === MIN_IDLE && (await containersOf(host)).length === MIN_IDLE, (IDLE_TIMEOUT_SECONDS + 60) * 1000, "back to minIdle warm runners");
    const replaced = new Set(idleRunners().map((x) => x.name));
    assert.ok(callsTo(fake, JIT) >= MIN_IDLE + 1, "the consumed warm runner was replaced");

    // Warm runners are exempt from the idle timeout: the same runners are still there after it.
    await new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_SECONDS + 4) * 1000));
    assert.deepEqual(new Set(idleRunners().map((x) => x.name)), replaced, "warm runners outlive the idle timeout");
    assert.equal((await containersOf(host)).length, MIN_IDLE);

    // A drain deregisters them (they are idle) and removes them; the drained worker is done.
    const warmVolumes = new Set((await containersOf(host)).flatMap((c) => c.Mounts.flatMap((m) => (m.Type === "volume" && m.Name ? [m.Name] : []))));
    assert.equal(warmVolumes.size, MIN_IDLE, "each warm runner has its own volume");
    await drain(r, host, sys.drained);
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal((await containersOf(host)).length, 0, "no container left");
    const left = ((await docker.listVolumes()).Volumes ?? []).filter((v) => warmVolumes.has(v.Name));
    assert.deepEqual(left, [], "the warm runners' /var/lib/docker volumes are removed with them");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a job GitHub hands to another warm runner than the one its demand adopted: the demand follows the job, the adopted runner stays warm", async () => {
  const { fake, host, r, sys } = await warmSystem("warm-swap", 3);
  const idleRunners = () => fake.runners().filter((x) => !x.busy && x.status === "online");
  try {
    const warm = await waitFor(() => idleRunners().length === MIN_IDLE && idleRunners(), 90_000, `${MIN_IDLE} warm runners online`);
    // The demand adopts the oldest warm runner (registered first); GitHub gives the job to the newest.
    const [oldest, newest] = [...warm].sort((a, b) => a.id - b.id);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: newest!.name });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.equal(done.runner_name, newest!.name);
    assert.match(sys.logs(), new RegExp(`"runner":"${oldest!.name}".*demand adopted by a warm runner`));
    assert.match(sys.logs(), new RegExp(`"runner":"${newest!.name}","returned":"${oldest!.name}".*demand handed over`));
    const settled = await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(settled.result, "exited", "completed when the runner that ran its job exited");

    // One replacement (for the runner that ran the job), and the adopted runner is warm again:
    // still there, idle, after the idle timeout.
    await waitFor(async () => idleRunners().length === MIN_IDLE && (await containersOf(host)).length === MIN_IDLE, 60_000, "back to minIdle warm runners");
    await new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_SECONDS + 4) * 1000));
    const names = idleRunners().map((x) => x.name);
    assert.ok(names.includes(oldest!.name), `the adopted runner kept as a warm runner (${names.join(", ")})`);
    assert.equal(names.length, MIN_IDLE);
    assert.equal(callsTo(fake, JIT), MIN_IDLE + 1, "one launch for one job");
    assert.doesNotMatch(sys.logs(), /"reason":"idle_timeout"/, "no runner idled out");

    await drain(r, host, sys.drained);
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal((await containersOf(host)).length, 0, "no container left");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("overlapping pools: a narrower pool's job taken by a wider pool's warm runner is not handed over across pools; each pool's places stay its own", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("warm-cross");
  const r = scopedRedis(redis, "warm-cross");
  hosts.push(host);
  const pool = (name: string, labels: string[]) =>
    fakeRunnerPool(fake, {
      name,
      labels,
      minIdle: 1,
      maxRunners: 3,
      idleTimeoutSeconds: IDLE_TIMEOUT_SECONDS,
      warm: { installationId: fake.installationId, owner: "acme", repo: "app" },
      env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "8" },
    });
  const sys = await startSystem("all", fake, r, host, {
    pools: [pool("small", ["self-hosted", "linux", "x64"]), pool("big", ["self-hosted", "linux", "x64", "big"])],
    worker: { hostId: host, capacity: 5, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
  });
  const conn = redisConnection(r.url);
  const holders = (p: string) => conn.zrange(`${r.prefix}:pool:${p}:holders`, 0, -1);
  try {
    const online = () => fake.runners().filter((x) => !x.busy && x.status === "online");
    await waitFor(() => online().length === 2, 90_000, "a warm runner of each pool online");
    const bigRunner = online().find((x) => x.labels.includes("big"));
    assert.ok(bigRunner, "the wider pool's warm runner");
    // The job is the narrower pool's (fewest labels); GitHub gives it to the wider pool's runner.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: bigRunner.name });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "job running on the wider pool's runner");
    await waitFor(() => /demand adopted by a warm runner/.test(sys.logs()), 30_000, "the demand adopted the narrower pool's warm runner");
    // While the job runs: no place is held in both pools, and the wider pool counts its busy runner.
    for (let i = 0; i < 10 && fake.jobs().find((j) => j.id === job.id)?.status !== "completed"; i++) {
      const [small, big] = [await holders("small"), await holders("big")];
      assert.deepEqual(small.filter((h) => big.includes(h)), [], `a place held in both pools: small ${small.join(",")}, big ${big.join(",")}`);
      await new Promise((res) => setTimeout(res, 500));
    }
    assert.doesNotMatch(sys.logs(), /demand handed over/, "no hand-over across pools");
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a job of another repository of the pool gets a runner of its own: warm runners registered on the warm repository are not adopted for it", async () => {
  const { fake, sys } = await warmSystem("warm-scope", 1);
  try {
    // Adopted only once started (idle): wait for both, not for them to be online.
    await waitFor(() => (sys.logs().match(/warm runner ready/g) ?? []).length === MIN_IDLE, 60_000, `${MIN_IDLE} warm runners started`);
    const warmNames = new Set(fake.runners().map((x) => x.name));
    const job = await fake.queueJob({ owner: "acme", repo: "lib", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.equal(done.conclusion, "success");
    assert.ok(!warmNames.has(done.runner_name!), `the job ran on a runner of its own (${done.runner_name})`);
    assert.doesNotMatch(sys.logs(), /demand adopted by a warm runner/, "no warm runner of acme/app adopted for a job of acme/lib");
    // At least one: on a loaded machine its first runner can be slow enough to come online that it
    // idles out (the pool's idle timeout is 12 s here) and another is launched, as seen once in a
    // full run beside another DinD test file.
    assert.ok(fake.requests.filter((x) => x.route === JIT && x.path.includes("/repos/acme/lib/")).length >= 1, "a runner registered on acme/lib");
    assert.equal(fake.runners().filter((x) => warmNames.has(x.name) && !x.busy).length, MIN_IDLE, "the warm runners still wait");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("warm runners outlive a worker restart: kept warm in slots of their own, none launched beside them, the next job starts on one", async () => {
  const { fake, host, r, sys: first, restart } = await warmSystem("warm-restart", 1, { maxRunners: 4 });
  const idleRunners = () => fake.runners().filter((x) => !x.busy && x.status === "online");
  const conn = redisConnection(r.url);
  let sys: SystemUnderTest = first;
  try {
    const warm = await waitFor(() => idleRunners().length === MIN_IDLE && idleRunners(), 90_000, `${MIN_IDLE} warm runners online`);
    const warmNames = new Set(warm.map((x) => x.name));

    // A stop leaves them running and frees their warm places; the restarted worker takes them
    // back as warm spares, each in a slot, and has no place left to launch another.
    await sys.close();
    assert.equal((await containersOf(host)).filter((c) => c.State === "running").length, MIN_IDLE, "a stopped worker leaves its warm runners running");
    sys = await restart();
    assert.equal((sys.logs().match(/"warm":true,"msg":"adopted running runner as a spare"/g) ?? []).length, MIN_IDLE, sys.logs().slice(-3000));
    const hostsStore = new HostStore(conn, r.prefix);
    // Their slots; the demand loop waits for demand in none.
    await waitFor(async () => (await hostsStore.list()).find((h) => h.id === host)?.record?.used === MIN_IDLE, 15_000, `host ${host} counts ${MIN_IDLE} slots used`);
    // Past the idle timeout: the very same runners, no registration more, none idled out.
    await new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_SECONDS + 2) * 1000));
    assert.deepEqual(new Set(idleRunners().map((x) => x.name)), warmNames, "the same warm runners");
    assert.equal(callsTo(fake, JIT), MIN_IDLE, "no launch beside them");

    // After a crash, the process before still holds their places (warm, and under maxRunners)
    // until those expire; a stop frees them, so they are put back as a crash leaves them, with one
    // more under maxRunners, of a runner gone since. The runners come back warm at once, each in
    // one of those places: none counts twice, and the one left over is freed.
    const key = (limit: string) => `${r.prefix}:pool:${limit}:holders`;
    const placesOf = async (limit: string) => (await conn.zrange(key(limit), 0, -1, "WITHSCORES")).filter((_, i) => i % 2 === 0);
    const crashed = { warm: await placesOf("default:warm"), pool: await placesOf("default") };
    assert.equal(crashed.warm.length, MIN_IDLE, "the warm places before the crash");
    assert.equal(crashed.pool.length, MIN_IDLE, "their places under maxRunners");
    await sys.close();
    const expires = Date.now() + 60_000;
    const gone = `${host}:${randomUUID()}`;
    for (const holder of crashed.warm) await conn.zadd(key("default:warm"), expires, holder);
    for (const holder of [...crashed.pool, gone]) await conn.zadd(key("default"), expires, holder);
    sys = await restart();
    assert.equal((sys.logs().match(/"warm":true,"msg":"adopted running runner as a spare"/g) ?? []).length, MIN_IDLE, sys.logs().slice(-3000));
    for (const limit of ["default:warm", "default"]) {
      const places = await placesOf(limit);
      assert.equal(places.length, MIN_IDLE, `${limit}: one place per runner (${places.join(", ")})`);
      assert.ok(!places.some((p) => crashed.warm.includes(p) || crashed.pool.includes(p) || p === gone), `${limit}: none held by the process before`);
    }
    await new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_SECONDS + 2) * 1000));
    assert.deepEqual(new Set(idleRunners().map((x) => x.name)), warmNames, "still the same warm runners");
    assert.equal(callsTo(fake, JIT), MIN_IDLE, "still no launch beside them");

    // The next job starts on one of them, adopted by its demand, and one replacement follows.
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.ok(warmNames.has(done.runner_name!), `the job ran on a runner warm before the restarts (${done.runner_name})`);
    assert.match(sys.logs(), /demand adopted by a warm runner/);
    await waitFor(async () => idleRunners().length === MIN_IDLE && (await containersOf(host)).length === MIN_IDLE, 60_000, "back to minIdle warm runners");
    assert.equal(callsTo(fake, JIT), MIN_IDLE + 1, "one launch for one job");

    await drain(r, host, sys.drained);
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal((await containersOf(host)).length, 0, "no container left");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a drain reaps an idle spare that is not warm at once, not at the end of its idle timeout", async () => {
  // An idle timeout far past the drain's wait: only the drain can reap the spare in time.
  const { fake, host, r, start } = await warmHost("warm-drain-spare", { idleTimeoutSeconds: 600 });
  const conn = redisConnection(r.url);
  let sys = await start();
  try {
    await waitFor(() => fake.runners().some((x) => !x.busy && x.status === "online"), 90_000, "a warm runner online");
    // Restarted while the pool's one warm place is held by another host (its warm runner, say):
    // the runner comes back as a spare that is not warm.
    await sys.close();
    await conn.zadd(`${r.prefix}:pool:default:warm:holders`, Date.now() + 300_000, `another-host:${randomUUID()}`);
    sys = await start();
    assert.match(sys.logs(), /"warm":false.*adopted running runner as a spare/, sys.logs().slice(-3000));
    await drain(r, host, sys.drained);
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal((await containersOf(host)).length, 0, "no container left");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("an idle spare that is not warm serves the next job of its repository: no launch for it, none beside it", async () => {
  const { fake, host, r, start } = await warmHost("warm-idle-spare", { idleTimeoutSeconds: 600 });
  const conn = redisConnection(r.url);
  let sys = await start();
  try {
    const [runner] = await waitFor(() => fake.runners().filter((x) => !x.busy && x.status === "online").length === 1 && fake.runners(), 90_000, "a warm runner online");
    // Restarted while another host holds the pool's one warm place: the runner is a spare that is
    // not warm, which would idle out, and the warm loop launches nothing.
    await sys.close();
    await conn.zadd(`${r.prefix}:pool:default:warm:holders`, Date.now() + 300_000, `another-host:${randomUUID()}`);
    sys = await start();
    assert.match(sys.logs(), /"warm":false,"msg":"adopted running runner as a spare"/, sys.logs().slice(-3000));
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.equal(done.runner_name, runner!.name, "the job ran on the spare");
    assert.match(sys.logs(), /demand adopted by an idle runner of this host that is not warm/);
    assert.equal(callsTo(fake, JIT), 1, "no launch for the job, nor beside the spare");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "the spare removed after its job");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a restarted worker whose demand adopts a warm runner before finding the demand's own runner on its host gives the warm runner back at once: no second launch, each runner in a slot", async () => {
  const { fake, host, r, start } = await warmHost("warm-served", { idleTimeoutSeconds: 600, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "60" } }, { heartbeatSeconds: 1 });
  const conn = redisConnection(r.url);
  const idle = () => fake.runners().filter((x) => !x.busy && x.status === "online");
  let sys = await start();
  try {
    await waitFor(() => idle().length === 1, 90_000, "a warm runner online");
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "the job running on the warm runner");
    await waitFor(() => idle().length === 1, 90_000, "its replacement warm and idle");
    assert.equal(callsTo(fake, JIT), 2);

    // Stopped mid-job and started again: the job's runner and the idle warm one are both adopted,
    // and the demand, handed back by the stop, is taken again, and adopts the warm one first.
    await sys.close();
    sys = await start();
    await waitFor(() => /demand already has a runner/.test(sys.logs()), 30_000, "the demand found its runner on this host");
    const hostsStore = new HostStore(conn, r.prefix);
    await waitFor(async () => (await hostsStore.list()).find((h) => h.id === host)?.record?.used === 2, 10_000, "a slot each for the two runners");
    // The warm loop, a second away, would launch a third runner for a warm runner held idle.
    await new Promise((res) => setTimeout(res, 5_000));
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "in_progress", "checked while the job still runs");
    assert.equal(callsTo(fake, JIT), 2, "no runner launched beside the two");
    assert.equal(idle().length, 1, "the warm runner still idle and registered");
    // The job's end and the runners' teardown are other tests' (the restart test of worker.test,
    // the drains here): its runners are removed with the file's hosts.
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a warm runner registered where the pool's warm runners no longer go (warm changed across a restart) is not warm again: it idles out, and a warm runner is launched at the new target", async () => {
  const { fake, host, r, start } = await warmHost("warm-moved", { idleTimeoutSeconds: IDLE_TIMEOUT_SECONDS });
  let sys = await start();
  const online = (repo: string) => fake.runners().filter((x) => !x.busy && x.status === "online" && x.scope.kind === "repo" && x.scope.repo === repo);
  try {
    const [old] = await waitFor(() => online("app").length === 1 && online("app"), 90_000, "a warm runner online on acme/app");
    await sys.close();
    sys = await start("other");
    assert.match(sys.logs(), new RegExp(`"runner":"${old!.name}"[^\\n]*"warm":false[^\\n]*adopted running runner as a spare`), sys.logs().slice(-3000));
    await waitFor(() => online("other").length === 1, 90_000, "a warm runner online on acme/other");
    // The one on acme/app idles out and is removed; the new target's stays, warm.
    await waitFor(async () => !fake.runners().some((x) => x.name === old!.name) && !(await containersOf(host)).some((c) => c.Labels["dev.jitrunner.runner-name"] === old!.name), (IDLE_TIMEOUT_SECONDS + 60) * 1000, "the runner on the old target removed");
    assert.equal(online("other").length, 1);
    await drain(r, host, sys.drained);
    assert.equal(fake.runners().length, 0, "no registration left");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("warm runners that end without a job (a runner that exits at once) hold the pool's next warm launches back, twice as long each time: no relaunch every second", async () => {
  // The fake runner exits 1 s after it comes online when no job comes: a warm runner that dies.
  const { fake, start } = await warmHost("warm-dying", { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_RUNNER_IDLE_SECONDS: "1" } });
  const sys = await start();
  const registered = () => fake.requests.filter((q) => q.route === JIT && q.status === 201).map((q) => q.at);
  try {
    // Ends 1, 2 and 3 hold the 2nd, 3rd and 4th launches back 2, 4 and 8 s after the end before.
    const at = await waitFor(() => registered().length >= 4 && registered(), 120_000, "four warm registrations");
    const gap = at[3]! - at[2]!;
    assert.ok(gap >= 8_000, `the 4th warm runner registered ${gap} ms after the 3rd: at least the 8 s its backoff holds it back, besides the 3rd's own life`);
    assert.match(sys.logs(), /warm runners of pool default end without a job \(exited\): each next one waits twice as long/);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    const lost = Number(/jitrunner_launch_failures_total\{pool="default",reason="E_RUNNER_LOST"\} (\d+)/.exec(metrics)?.[1]);
    assert.ok(lost >= 3, `each end counted as a launch failure (${lost})`);
  } finally {
    await sys.close();
    await fake.close();
  }
});

/**
 * The fake GitHub, a host of the test's own and its Redis scope, and `start`, which starts
 * jitrunner (`all`, capacity 3) there with one pool of one warm runner registered on acme/`repo`
 * (default app), with the pool's and the worker's fields in `pool` and `worker`.
 */
async function warmHost(tag: string, pool: Record<string, unknown>, worker: Record<string, unknown> = {}) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(tag);
  const r = scopedRedis(redis, tag);
  hosts.push(host);
  const start = (repo = "app") =>
    startSystem("all", fake, r, host, {
      pools: [fakeRunnerPool(fake, { minIdle: 1, warm: { installationId: fake.installationId, owner: "acme", repo }, ...pool })],
      worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, ...worker },
    });
  return { fake, host, r, start };
}

/** The fake GitHub and jitrunner (`all`) with one pool of MIN_IDLE warm runners whose jobs take `jobSeconds`, and the pool fields in `over`. */
async function warmSystem(tag: string, jobSeconds: number, over: Record<string, unknown> = {}) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(tag);
  const r = scopedRedis(redis, tag);
  hosts.push(host);
  const pool = fakeRunnerPool(fake, {
    minIdle: MIN_IDLE,
    idleTimeoutSeconds: IDLE_TIMEOUT_SECONDS,
    warm: { installationId: fake.installationId, owner: "acme", repo: "app" },
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds) },
    ...over,
  });
  // Capacity 4: one slot stays free for demand, MIN_IDLE hold warm runners, one is spare.
  const restart = () =>
    startSystem("all", fake, r, host, {
      pools: [pool],
      worker: { hostId: host, capacity: 4, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    });
  return { fake, host, r, sys: await restart(), restart };
}

/** Drains `host` as an operator would, and waits for its worker to finish the drain. */
async function drain(r: TestRedis, host: string, drained: Promise<void>): Promise<void> {
  const conn = redisConnection(r.url);
  try {
    await new HostStore(conn, r.prefix).drain(host);
  } finally {
    conn.disconnect();
  }
  await Promise.race([drained, new Promise((_, reject) => setTimeout(() => reject(new Error("drain did not finish in 60 s")), 60_000))]);
}
