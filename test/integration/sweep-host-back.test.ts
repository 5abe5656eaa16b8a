/**
 * Sweeping gone hosts, for real (fake GitHub, real Redis, a real worker). A host found gone that
 * beats again while another worker sweeps it: its beat had lapsed only briefly, so the sweep stops
 * at its next runner, and the host keeps its other runners (records and registrations), its record
 * in the fleet and its places under the pool limit; the worker takes demand meanwhile. A gone host
 * another worker has the turn to sweep is left to that one until its turn lapses. A host whose
 * worker process stopped cleanly (SIGTERM) with a warm runner left running, and did not come back
 * within the host's expiry, is swept as one killed is, but counted as stopped, not gone.
 */
import assert from "node:assert/strict";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { after, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import { runJitrunner, waitFor, writeLogTail, type JitrunnerProcess } from "../helpers/process.ts";
import { callsTo, containersOf, fakeRunnerPool, goneHost, registerRunner, scopedRedis, startSystem, uniqueHost, workersForFile, type SystemUnderTest } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { hostHolder, HostStore, PoolLimits } from "../../src/state/hosts.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";

const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const { redis, hosts } = workersForFile();

/**
 * A loopback HTTP relay to the fake GitHub that holds the first DELETE of a runner in `held` until
 * `release()`: the test acts while the sweep's first deregistration is under way, as a host's beat
 * would come while the sweep's deletions wait their turn in the write budget.
 */
async function holdingRelay(fake: FakeGitHub, held: Set<number>): Promise<{ url: string; reached: Promise<void>; release(): void; close(): Promise<void> }> {
  const target = new URL(fake.url);
  let reach!: () => void;
  let release!: () => void;
  const reached = new Promise<void>((r) => (reach = r));
  const released = new Promise<void>((r) => (release = r));
  let holding = true;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const id = Number(/\/actions\/runners\/(\d+)$/.exec(req.url ?? "")?.[1]);
      if (holding && req.method === "DELETE" && held.has(id)) {
        holding = false;
        reach();
        await released;
      }
      const up = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      up.on("error", () => res.destroy());
      req.pipe(up);
    })();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = new URL(fake.url);
  url.hostname = "127.0.0.1";
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.toString(),
    reached,
    release,
    close: () => new Promise<void>((r) => server.close(() => r())).finally(() => server.closeAllConnections()),
  };
}

function idleRecord(fake: FakeGitHub, name: string, host: string, runnerId: number): RunnerRecord {
  return {
    name, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId, demandId: `demand-${name}`, createdAt: Date.now(), instance: "a-stalled-process",
  };
}

test("a gone host that beats again while another worker sweeps it keeps its remaining runners, its record and its places; the sweep stops", { timeout: 60_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("back");
  const lapsed = uniqueHost("back-lapsed");
  const r = scopedRedis(redis, "sweep-back");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const limits = new PoolLimits(conn, r.prefix);

  // Host `lapsed`: three idle runners, registered, each with its place under the pool limit.
  const names = ["jitrunner-default-00back0001", "jitrunner-default-00back0002", "jitrunner-default-00back0003"];
  const ids = new Set<number>();
  for (const name of names) {
    const { id } = await registerRunner(fake, name);
    ids.add(id);
    await runners.put(idleRecord(fake, name, lapsed, id));
    assert.equal(await limits.acquire("default", hostHolder(lapsed), 10), true);
  }
  // Its beat lapses (a GC pause, a Redis hiccup): another worker's host loop finds it gone.
  await goneHost(hostStore, lapsed);

  const relay = await holdingRelay(fake, ids);
  // The worker's start runs one pass of the host loop up to its sweep of gone hosts before it
  // resolves (and takes demand); the sweep goes on after it.
  const starting = startSystem("worker", fake, r, host, {
    github: { appId: fake.appId, apiUrl: relay.url },
    worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 1 },
  });
  starting.catch(() => undefined);
  let sys: Awaited<typeof starting> | undefined;
  try {
    await relay.reached;
    // Started, taking demand, while the sweep's first deregistration waits on GitHub.
    sys = await Promise.race([starting, sleep(20_000).then(() => assert.fail("the worker's start waited for its sweep of a gone host"))]);
    assert.match(sys.logs(), /"msg":"worker started"/);
    // While the sweep's first deregistration is under way, the host beats again.
    await hostStore.heartbeat({ id: lapsed, capacity: 3, used: 0, pools: ["default"] }, 60_000);
    relay.release();
    // A few more passes of the host loop (one a second): the host beats, none sweeps it.
    await sleep(3_000);

    assert.equal(callsTo(fake, DELETE, "DELETE"), 1, "only the deregistration under way when the host beat again");
    const kept = [];
    for (const name of names) if (await runners.get(name)) kept.push(name);
    assert.equal(kept.length, 2, `the host's other runners keep their records (kept: ${kept.join(", ")})`);
    assert.equal((await runners.listHost(lapsed)).length, 2);
    assert.equal(fake.runners().filter((x) => ids.has(x.id)).length, 2, "and their registrations");
    const listed = (await hostStore.list()).find((h) => h.id === lapsed);
    assert.ok(listed?.record, "the host's record stays in the fleet");
    assert.equal(await limits.count("default"), 3, "its places under the pool limit stay");
    assert.match(sys.logs(), new RegExp(`"goneHost":"${lapsed}","msg":"gone host beats again; its sweep stops"`));
    assert.doesNotMatch(sys.logs(), /"msg":"gone host forgotten"/);
  } finally {
    relay.release();
    sys ??= await starting.catch(() => undefined);
    await sys?.close();
    await relay.close();
    await fake.close();
    conn.disconnect();
  }
});

/**
 * The fake GitHub, a worker host of the test's own, and a gone host `lapsed` with one idle runner
 * (`name`), registered and recorded; `start` starts the worker (a pass a second).
 */
async function goneHostWithRunner(tag: string, name: string) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(tag);
  const lapsed = uniqueHost(`${tag}-gone`);
  const r = scopedRedis(redis, `sweep-${tag}`);
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const { id } = await registerRunner(fake, name);
  await runners.put(idleRecord(fake, name, lapsed, id));
  await goneHost(hostStore, lapsed);
  const start = () => startSystem("worker", fake, r, host, { worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 1 } });
  return { fake, host, lapsed, r, conn, runners, hostStore, start };
}

test("a gone host another worker has the turn to sweep is left to it; swept once that turn ends", { timeout: 90_000 }, async () => {
  const name = "jitrunner-default-00turn0001";
  const { fake, host, lapsed, r, conn, runners, hostStore, start } = await goneHostWithRunner("turn", name);
  // Another worker took its turn to sweep the host a moment ago.
  assert.equal(await hostStore.sweepTurn(lapsed, "another-worker", 60_000), true);
  assert.equal(await hostStore.sweepTurn(lapsed, host, 90_000), false, "one worker's turn at a time");
  assert.equal(await hostStore.sweepTurn(lapsed, "another-worker", 60_000), true, "its own turn taken again");
  const sys = await start();
  try {
    // A few passes (one a second) while the other worker's turn lasts: none sweeps the host.
    await sleep(3_000);
    assert.equal(callsTo(fake, DELETE, "DELETE"), 0, "not swept while the other worker's turn lasts");
    assert.ok(await runners.get(name), "its runner's record kept");
    // The other worker's turn lapses (here: ends, as at its stop).
    await hostStore.endSweepTurn(lapsed, "another-worker");
    await waitFor(async () => !(await hostStore.list()).some((h) => h.id === lapsed), 20_000, "swept and forgotten once the turn ended");
    assert.equal(callsTo(fake, DELETE, "DELETE"), 1, "its runner deregistered once");
    assert.deepEqual(await conn.keys(`${r.prefix}:*${lapsed}*`), [], "no key of the host left, its sweep turn included");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a worker that stops hands its turn to sweep a gone host back at once", { timeout: 60_000 }, async () => {
  const { fake, lapsed, conn, hostStore, start } = await goneHostWithRunner("turn-stop", "jitrunner-default-00turn0002");
  // GitHub refuses the deregistration (an App that lost its permission): the host stays gone and known.
  fake.inject({ route: DELETE, method: "DELETE", status: 403, times: 1000, body: { message: "Resource not accessible by integration" } });
  const sys = await start();
  try {
    await waitFor(() => callsTo(fake, DELETE, "DELETE") >= 1, 20_000, "the worker sweeping the gone host");
    assert.equal(await hostStore.sweepTurn(lapsed, "another-worker", 60_000), false, "its turn");
  } finally {
    await sys.close();
  }
  try {
    assert.equal(await hostStore.sweepTurn(lapsed, "another-worker", 60_000), true, "another worker's turn, once it stopped");
  } finally {
    await fake.close();
    conn.disconnect();
  }
});

const children: JitrunnerProcess[] = [];
after(async () => {
  for (const c of children) await c.stop();
});

/** The value of a sample without labels in Prometheus text, 0 when absent. */
function unlabelled(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

test("a worker stopped cleanly (SIGTERM) with a warm runner, not back within its host's expiry: its host is swept, its runner deregistered, and counted as stopped, not gone; one SIGKILLed is counted gone", { timeout: 240_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "stopped-swept");
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const sweeper = uniqueHost("sweeper");
  const stopped = uniqueHost("stopped");
  const killed = uniqueHost("killed");
  hosts.push(sweeper, stopped, killed);
  // Beats every second: a host silent for 3 s is gone.
  const worker = { capacity: 2, heartbeatSeconds: 1, reconcileIntervalSeconds: 1, completedGraceSeconds: 5 };
  const warmPool = fakeRunnerPool(fake, { minIdle: 1, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } });
  /** `jitrunner worker` as a child process keeping one warm runner, from a config file like an operator's. */
  const warmWorker = (host: string): JitrunnerProcess => {
    const file = writeOperatorConfig(fake, {
      redis: { url: r.url, prefix: r.prefix }, server: { host: "127.0.0.1", port: 0 }, worker: { ...worker, hostId: host }, logLevel: "debug", pools: [warmPool],
    });
    const proc = runJitrunner(["worker", "--config", file]);
    children.push(proc);
    return proc;
  };
  /** The warm runner of `host` once it is online at GitHub and recorded idle. */
  const warmRunnerOf = (host: string, proc: JitrunnerProcess) =>
    waitFor(
      async () => {
        const [record, ...more] = await runners.listHost(host);
        const runner = fake.runners().find((x) => x.name === record);
        return more.length === 0 && runner?.status === "online" && !runner.busy && (await runners.get(record!))?.state === "idle" && runner.name;
      },
      120_000,
      `a warm runner online on ${host} (${proc.output().slice(-1500)})`,
    );
  const known = async (id: string) => (await hostStore.list()).some((h) => h.id === id);
  const metrics = async (sys: SystemUnderTest) => (await fetch(`${sys.url}/metrics`)).text();
  let sys: SystemUnderTest | undefined;
  try {
    // The other host: it keeps no warm runner of its own, and sweeps gone hosts every second.
    sys = await startSystem("worker", fake, r, sweeper, { pools: [fakeRunnerPool(fake)], worker: { ...worker, hostId: sweeper } });
    const text0 = await metrics(sys);
    assert.equal(unlabelled(text0, "jitrunner_hosts_gone_total"), 0);
    assert.equal(unlabelled(text0, "jitrunner_hosts_stopped_swept_total"), 0, "exported from the start");

    // A maintenance stop: SIGTERM, exit 0, the warm runner left running for a restarted worker.
    const a = warmWorker(stopped);
    const aRunner = await warmRunnerOf(stopped, a);
    assert.equal(await a.stop(), 0, a.output().slice(-2000));
    assert.match(a.output(), /worker stopped; running runners left running/);
    assert.equal((await containersOf(stopped))[0]?.State, "running", "the warm runner left running");
    // Not restarted within the host's expiry: the other host sweeps it as it sweeps a killed one.
    await waitFor(async () => !(await known(stopped)), 30_000, "the stopped host swept and forgotten");
    assert.ok(!fake.runners().some((x) => x.name === aRunner), "its warm runner deregistered, as today");
    assert.deepEqual(await runners.listHost(stopped), [], "its runner's record removed");
    assert.deepEqual(await conn.keys(`${r.prefix}:*${stopped}*`), [], "no key of the host left, the note of its clean stop neither");
    let text = await metrics(sys);
    assert.equal(metricSample(text, "jitrunner_runner_removals_total", 'pool="default",reason="host_gone"'), 1);
    assert.equal(unlabelled(text, "jitrunner_hosts_gone_total"), 0, "a host stopped cleanly is not counted gone (JitrunnerHostGone)");
    assert.equal(unlabelled(text, "jitrunner_hosts_stopped_swept_total"), 1);
    assert.match(sys.logs(), new RegExp(`"goneHost":"${stopped}","msg":"gone host forgotten; its worker had stopped cleanly"`));

    // A crash: SIGKILL, with a warm runner too. Swept the same way, and counted gone.
    const c = warmWorker(killed);
    const cRunner = await warmRunnerOf(killed, c);
    c.child.kill("SIGKILL");
    await c.exited();
    await waitFor(async () => !(await known(killed)), 30_000, "the killed host swept and forgotten");
    assert.ok(!fake.runners().some((x) => x.name === cRunner), "its warm runner deregistered");
    assert.deepEqual(await conn.keys(`${r.prefix}:*${killed}*`), [], "no key of the killed host left");
    text = await metrics(sys);
    assert.equal(metricSample(text, "jitrunner_runner_removals_total", 'pool="default",reason="host_gone"'), 2);
    assert.equal(unlabelled(text, "jitrunner_hosts_gone_total"), 1, "a killed host is counted gone");
    assert.equal(unlabelled(text, "jitrunner_hosts_stopped_swept_total"), 1);
    assert.match(sys.logs(), new RegExp(`"goneHost":"${killed}","msg":"gone host forgotten"`));
  } catch (err) {
    if (sys) writeLogTail("sweeping worker", sys.logs());
    throw err;
  } finally {
    await sys?.close();
    await fake.close();
    conn.disconnect();
  }
});
