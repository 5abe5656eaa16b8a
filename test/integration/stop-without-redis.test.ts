/**
 * `jitrunner all` (server, worker and leader in one process) asked to stop while Redis is away,
 * for real (the composition root, a Docker engine, a Redis of the test's own): stopped, or frozen
 * (connected, answering nothing), idle, with a runner running its job, or keeping a warm runner
 * (its warm loop asks Redis every second). The stop ends within a bound instead of waiting for
 * Redis for ever: a supervisor's stop (SIGTERM) must not turn into its kill after the grace period.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { after, test, type TestContext } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type OwnRedis } from "../helpers/redis.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

/** Far more than a stop with Redis away needs; a stop still waiting then waits for Redis. */
const STOP_BOUND_MS = 45_000;
const hosts: string[] = [];
after(async () => {
  for (const h of hosts) await removeContainersOf(h);
});

/**
 * `jitrunner all` on a Redis of its own, with a fake GitHub; its pool's jobs last `jobSeconds`.
 * `minIdle`: the pool keeps that many warm runners, with two slots more: one the worker keeps free
 * for demand, and one that has its warm loop ask Redis for a warm place each second.
 */
async function system(t: TestContext, tag: string, jobSeconds: number, minIdle = 0): Promise<{ sys: SystemUnderTest; redis: OwnRedis; fake: FakeGitHub; host: string }> {
  const redis = await startRedis({ own: true });
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  let sys: SystemUnderTest | undefined;
  t.after(async () => {
    // Closed already by the test, unless it failed first; a stop that hangs is not waited for here.
    if (sys) await Promise.race([sys.close(), new Promise((resolve) => setTimeout(resolve, STOP_BOUND_MS).unref())]);
    await fake.close();
    await redis.stop();
  });
  const host = uniqueHost(tag);
  hosts.push(host);
  const warm = minIdle > 0 ? { minIdle, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } } : {};
  sys = await startSystem("all", fake, redis, host, {
    pools: [fakeRunnerPool(fake, { ...warm, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds) } })],
    worker: { hostId: host, capacity: minIdle > 0 ? minIdle + 2 : 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 1 },
    reconcile: { leaderLockSeconds: 3 },
  });
  await waitFor(async () => (await fetch(`${sys.url}/readyz`)).status === 200, 20_000, "ready");
  return { sys, redis, fake, host };
}

/** True once `sys` logs a Redis connection error after this call: its connections noticed Redis gone. */
function connectionErrorSince(sys: SystemUnderTest): () => boolean {
  const from = sys.logs().length;
  return () => sys.logs().slice(from).includes('"msg":"redis connection error"');
}

/**
 * How many of the Redis's connections on `port` hold bytes it has not read: commands in flight
 * to a frozen Redis (the kernel's receive queue of each of its sockets, from /proc/net/tcp*).
 */
function connectionsWithCommandsInFlight(port: number): number {
  const local = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  let n = 0;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const lines = existsSync(file) ? readFileSync(file, "utf8").split("\n").slice(1) : [];
    for (const line of lines) {
      // sl local_address rem_address st tx_queue:rx_queue ...; st 01: established.
      const [, address, , state, queues] = line.trim().split(/\s+/);
      if (address?.endsWith(local) && state === "01" && parseInt(queues?.split(":")[1] ?? "0", 16) > 0) n++;
    }
  }
  return n;
}

/**
 * Stops `sys` once Redis is away and `sys` has seen it (`noticed`), failing the test if the stop
 * takes past the bound.
 */
async function stopsWithinBound(t: TestContext, sys: SystemUnderTest, what: string, noticed: () => boolean): Promise<void> {
  // The connections noticed (stopped), or commands are in flight (frozen).
  const away = Date.now();
  await waitFor(noticed, 30_000, `jitrunner to meet the Redis ${what}`);
  t.diagnostic(`${what}: noticed in ${Date.now() - away} ms`);
  const started = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    sys.close().then(() => "stopped"),
    new Promise<string>((resolve) => (timer = setTimeout(() => resolve("still stopping"), STOP_BOUND_MS))),
  ]).finally(() => clearTimeout(timer));
  assert.equal(outcome, "stopped", `close() had not ended ${STOP_BOUND_MS / 1000} s after it was called (${what})`);
  assert.match(sys.logs(), /worker stopped/);
  t.diagnostic(`${what}: stopped in ${Date.now() - started} ms`);
}

for (const away of ["stopped", "frozen"] as const) {
  test(`jitrunner all stops within a bound while Redis is ${away}`, async (t) => {
    const { sys, redis } = await system(t, `stop-${away}`, 4);
    if (away === "stopped") {
      const noticed = connectionErrorSince(sys);
      await redis.kill("SIGKILL");
      await stopsWithinBound(t, sys, "Redis stopped", noticed);
    } else {
      process.kill(redis.pid, "SIGSTOP");
      try {
        await stopsWithinBound(t, sys, "Redis frozen", () => connectionsWithCommandsInFlight(Number(new URL(redis.url).port)) >= 1);
      } finally {
        process.kill(redis.pid, "SIGCONT");
      }
    }
  });
}

test("jitrunner all with a runner running its job stops within a bound while Redis is stopped, and leaves the runner running", async (t) => {
  const { sys, redis, fake, host } = await system(t, "stop-busy", 120);
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "in_progress", 60_000, "the runner took its job");
  const noticed = connectionErrorSince(sys);
  await redis.kill("SIGKILL");
  await stopsWithinBound(t, sys, "Redis stopped, a lease held", noticed);
  assert.equal((await containersOf(host))[0]?.State, "running", "the runner is left to run its job (a restarted worker adopts it)");
});

test("jitrunner all keeping a warm runner stops within a bound while Redis is stopped, and leaves the warm runner running", async (t) => {
  const { sys, redis, host } = await system(t, "stop-warm", 4, 1);
  await waitFor(() => /warm runner ready/.test(sys.logs()), 30_000, "the warm runner started");
  const noticed = connectionErrorSince(sys);
  await redis.kill("SIGKILL");
  await stopsWithinBound(t, sys, "Redis stopped, a warm runner kept", noticed);
  assert.equal((await containersOf(host))[0]?.State, "running", "the warm runner is left running (a restarted worker takes it back as a spare)");
});
