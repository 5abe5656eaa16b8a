/**
 * Leader election between real `jitrunner worker` processes sharing one real Redis: exactly one
 * leads and only it runs the leader's loops; a leader killed with SIGKILL is replaced once its
 * lock expires (not before); a leader stopped with SIGTERM hands over at once. And a leader cut
 * off from Redis ends its term before another can take the lock.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import { pino } from "pino";
import { Metrics } from "../../src/metrics/metrics.ts";
import { LeaderElection } from "../../src/reconcile/leader.ts";
import { LoopRunner } from "../../src/reconcile/loops.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor, type JitrunnerProcess } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { silenceableRelay } from "../helpers/relay.ts";
import { fakeRunnerPool, removeContainersOf, uniqueHost } from "../helpers/system.ts";

const LOCK_MS = 3000;
let redis: TestRedis;
let fake: FakeGitHub;
let dir: string;
const hosts: string[] = [];

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  dir = await mkdtemp(join(tmpdir(), "jitrunner-leader-"));
});
after(async () => {
  for (const h of hosts) await removeContainersOf(h);
  await fake.close();
  await redis.stop();
  await rm(dir, { recursive: true, force: true });
});

interface Worker {
  host: string;
  url: string;
  proc: JitrunnerProcess;
}

async function startWorker(tag: string, times: { worker?: object; reconcile?: object } = {}): Promise<Worker> {
  const host = uniqueHost(tag);
  hosts.push(host);
  const port = await freePort();
  const config = {
    github: { appId: fake.appId, apiUrl: fake.url },
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port },
    worker: { hostId: host, capacity: 1, reconcileIntervalSeconds: 2, ...times.worker },
    reconcile: { leaderLockSeconds: LOCK_MS / 1000, runnersIntervalSeconds: 1, queuedIntervalSeconds: 1, deliveriesIntervalSeconds: 1, ...times.reconcile },
    pools: [fakeRunnerPool(fake)],
  };
  const file = join(dir, `${host}.yml`);
  await writeFile(file, JSON.stringify(config));
  const proc = runJitrunner(["worker", "--config", file], {
    JITRUNNER_GITHUB_PRIVATE_KEY: fake.privateKey,
    JITRUNNER_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET,
    JITRUNNER_LOG_LEVEL: "info",
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => (await fetch(`${url}/healthz`)).ok, 30_000, `worker ${host} up`).catch((err) => {
    throw new Error(`${(err as Error).message}\n${proc.output()}`);
  });
  return { host, url, proc };
}

/** The process's own view, from its /metrics: 1 leading, 0 not, undefined unreachable. */
async function leads(w: Worker): Promise<number | undefined> {
  try {
    const text = await (await fetch(`${w.url}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const line = text.split("\n").find((l) => l.startsWith(`jitrunner_leader{host="${w.host}"}`));
    return line ? Number(line.split(" ").at(-1)) : undefined;
  } catch {
    return undefined;
  }
}

async function passes(w: Worker, loop: string): Promise<number> {
  const text = await (await fetch(`${w.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`jitrunner_reconcile_runs_total{loop="${loop}",outcome="ok"}`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

/** Which host Redis says holds the lock. */
async function lockHolder(): Promise<string | undefined> {
  const c = new Redis(redis.url);
  try {
    return (await c.get(`${redis.prefix}:leader`))?.split(":")[0];
  } finally {
    c.disconnect();
  }
}

test("one leader among worker processes; SIGKILL: taken over after the lock expires; SIGTERM: handed over at once", async (t) => {
  const workers = [await startWorker("lead-a"), await startWorker("lead-b")];
  try {
    const [leader, follower] = await waitFor(async () => {
      const views = await Promise.all(workers.map(leads));
      if (views.filter((v) => v === 1).length !== 1 || views.filter((v) => v === 0).length !== 1) return undefined;
      const i = views.indexOf(1);
      return [workers[i]!, workers[1 - i]!] as const;
    }, 20_000, "exactly one leader");
    assert.equal(await lockHolder(), leader.host);
    await waitFor(async () => (await passes(leader, "github-runners")) >= 2 && (await passes(leader, "github-deliveries")) >= 2, 10_000, "leader loops running");
    assert.equal(await passes(follower, "github-runners"), 0, "a follower runs no leader loop");
    assert.equal(await passes(follower, "github-queued"), 0);

    // A crash leaves the lock in place: the follower waits for it to expire, then leads.
    leader.proc.child.kill("SIGKILL");
    const killedAt = Date.now();
    await waitFor(async () => (await leads(follower)) === 1, 3 * LOCK_MS + 5000, "follower takes over");
    const takeover = Date.now() - killedAt;
    // A follower tries for the lock every third of its expiry, so it leads within a third of the
    // expiry after it. Checked with a wide margin, under two expiries (about 2 s to spare): a
    // follower that waited out a second expiry still fails it.
    assert.ok(takeover < 2 * LOCK_MS, `took over in ${takeover} ms, lock expiry ${LOCK_MS} ms`);
    assert.ok(takeover >= LOCK_MS / 2, `took over in ${takeover} ms: the lock of a leader that renewed within a third of the expiry cannot be gone sooner`);
    assert.equal(await lockHolder(), follower.host);
    t.diagnostic(`takeover after SIGKILL: ${takeover} ms (lock expiry ${LOCK_MS} ms)`);
    const before = await passes(follower, "github-runners");
    await waitFor(async () => (await passes(follower, "github-runners")) > before, 5000, "the new leader runs the loops");

    // A clean stop releases the lock: the next process leads well before the expiry.
    const third = await startWorker("lead-c");
    workers.push(third);
    assert.equal(await leads(third), 0);
    follower.proc.child.kill("SIGTERM");
    const stoppedAt = Date.now();
    await waitFor(async () => (await leads(third)) === 1, LOCK_MS + 5000, "third process takes over");
    const handover = Date.now() - stoppedAt;
    assert.ok(handover < LOCK_MS, `handed over in ${handover} ms, lock expiry ${LOCK_MS} ms`);
    t.diagnostic(`handover after SIGTERM: ${handover} ms`);
    // (Not proc.stop(): a second SIGTERM means "exit now".)
    const exited = await waitFor(() => follower.proc.child.exitCode !== null && { code: follower.proc.child.exitCode }, 30_000, "stopped leader exits");
    assert.equal(exited.code, 0, follower.proc.output().slice(-2000));
    assert.match(follower.proc.output(), /leadership released/);
    assert.equal(await lockHolder(), third.host);
  } finally {
    await Promise.all(workers.map((w) => w.proc.stop()));
  }
});

test("a leader cut off from Redis ends its term before another process can take the lock", async () => {
  const relay = await silenceableRelay(new URL(redis.url));
  const prefix = `${redis.prefix}:cutoff`;
  const logger = pino({ level: "silent" });
  const cutOff = new Redis(relay.url);
  const direct = new Redis(redis.url);
  const a = new LeaderElection({ redis: cutOff, prefix, host: "cut-a", lockMs: LOCK_MS, metrics: new Metrics(), logger });
  const b = new LeaderElection({ redis: direct, prefix, host: "cut-b", lockMs: LOCK_MS, metrics: new Metrics(), logger });
  try {
    await a.start();
    await b.start();
    assert.ok(a.isLeader && !b.isLeader);
    const term = a.term!;
    let termEnded: number | undefined;
    term.addEventListener("abort", () => void (termEnded = Date.now()));
    let bLeads: number | undefined;
    b.onChange((leading) => leading && (bLeads ??= Date.now()));

    relay.silence();
    const cutAt = Date.now();
    await waitFor(() => bLeads !== undefined, LOCK_MS * 3, "the other process leads");
    // The lock was renewed at most a third of the expiry before the cut: it cannot lapse sooner.
    assert.ok(bLeads! - cutAt >= (LOCK_MS * 2) / 3 - 100, `took the lock ${bLeads! - cutAt} ms after the cut`);
    assert.ok(termEnded !== undefined, "the cut-off leader's term had not ended when the other took the lock");
    assert.ok(termEnded <= bLeads!, `term ended ${termEnded - bLeads!} ms after the other took the lock`);
    assert.equal(a.isLeader, false);
  } finally {
    await Promise.all([a.close(), b.close()]);
    cutOff.disconnect();
    direct.disconnect();
    await relay.close();
  }
});

test("a leader cut off from Redis whose wall clock is stepped back (an NTP step, a VM resumed) still ends its term before another process takes the lock", async () => {
  const relay = await silenceableRelay(new URL(redis.url));
  const prefix = `${redis.prefix}:clock-step`;
  const logger = pino({ level: "silent" });
  const cutOff = new Redis(relay.url);
  const direct = new Redis(redis.url);
  const a = new LeaderElection({ redis: cutOff, prefix, host: "step-a", lockMs: LOCK_MS, metrics: new Metrics(), logger });
  const b = new LeaderElection({ redis: direct, prefix, host: "step-b", lockMs: LOCK_MS, metrics: new Metrics(), logger });
  const wallClock = Date.now;
  try {
    await a.start();
    await b.start();
    assert.ok(a.isLeader && !b.isLeader);
    let termEnded = false;
    a.term!.addEventListener("abort", () => void (termEnded = true));
    let bLeads = false;
    b.onChange((leading) => leading && (bLeads = true));

    relay.silence();
    // This process's wall clock jumps a minute back; the lock still expires on Redis's clock.
    Date.now = () => wallClock() - 60_000;
    await waitFor(() => bLeads, LOCK_MS * 3, "the other process leads");
    assert.ok(termEnded, "the cut-off leader's term ended by the time the other took the lock");
    assert.equal(a.isLeader, false);
  } finally {
    Date.now = wallClock;
    await Promise.all([a.close(), b.close()]);
    cutOff.disconnect();
    direct.disconnect();
    await relay.close();
  }
});

test("times in seconds that are no whole number of ms once multiplied (16.1 s is 16100.000000000002 ms) still start, lead and beat: Redis takes whole ms only", async () => {
  const w = await startWorker("fractions", { worker: { heartbeatSeconds: 1.1, leaseSeconds: 8.19 }, reconcile: { leaderLockSeconds: 16.1 } });
  const c = new Redis(redis.url);
  try {
    await waitFor(async () => (await leads(w)) === 1, 20_000, "the worker leads").catch((err) => assert.fail(`${(err as Error).message}\n${w.proc.output()}`));
    assert.equal(await lockHolder(), w.host);
    // Read until set (a loaded machine may hold a renewal or a beat back past the key's end):
    // what counts is that Redis took these times at all, and no longer than asked.
    let pttl = -2;
    await waitFor(async () => (pttl = await c.pttl(`${redis.prefix}:leader`)) > 0, 20_000, "the lock has a time left");
    assert.ok(pttl <= 16_100, `the lock's time left: ${pttl} ms`);
    let beat = -2;
    await waitFor(async () => (beat = await c.pttl(`${redis.prefix}:hostinfo:${w.host}`)) > 0, 20_000, "the host's beat has a time left");
    assert.ok(beat <= 3_300, `the host's beat lasts 3 beats of 1.1 s: ${beat} ms left`);
    assert.doesNotMatch(w.proc.output(), /not an integer|out of range/, "no call refused by Redis");
  } finally {
    c.disconnect();
    await w.proc.stop();
  }
});

test("a leader that loses its lock and wins it back runs its loops' next passes an interval after their last, not at once: a term lost now and then costs no extra pass", async () => {
  const conn = new Redis(redis.url);
  const prefix = `${redis.prefix}:rekick`;
  const logger = pino({ level: "silent" });
  const leader = new LeaderElection({ redis: conn, prefix, host: "rekick", lockMs: LOCK_MS, metrics: new Metrics(), logger });
  const passes: number[] = [];
  const loops = new LoopRunner({ loops: [{ name: "counted", intervalMs: 60_000, leaderOnly: true, run: async () => void passes.push(Date.now()) }], leader, metrics: new Metrics(), logger });
  // As the Reconciler wires them.
  let elected = 0;
  leader.onChange((leading) => {
    if (!leading) return;
    elected++;
    loops.kickLeaderLoops();
  });
  try {
    await leader.start();
    loops.start();
    await waitFor(() => passes.length === 1, 5_000, "the first pass, on election");
    // The lock taken from under it: its next renewal finds it gone, and its next round wins it back.
    await conn.del(`${prefix}:leader`);
    await waitFor(() => elected === 2, LOCK_MS * 3, "elected again");
    await sleep(1_500);
    assert.equal(passes.length, 1, "no pass within a minute of the last");
  } finally {
    await loops.close();
    await leader.close();
    conn.disconnect();
  }
});
