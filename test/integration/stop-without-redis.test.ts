/**
 * `jitrunner all` (server, worker and leader in one process) asked to stop while Redis is away,
 * for real (the composition root, a Docker engine, a Redis of the test's own): stopped, or frozen
 * (connected, answering nothing), idle or with a runner running its job. The stop ends within a
 * bound instead of waiting for Redis for ever: a supervisor's stop (SIGTERM) must not turn into
 * its kill after the grace period.
 */
import assert from "node:assert/strict";
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

/** `jitrunner all` on a Redis of its own, with a fake GitHub; its pool's jobs last `jobSeconds`. */
async function system(t: TestContext, tag: string, jobSeconds: number): Promise<{ sys: SystemUnderTest; redis: OwnRedis; fake: FakeGitHub; host: string }> {
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
  sys = await startSystem("all", fake, redis, host, {
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds) } })],
    worker: { hostId: host, capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 1 },
    reconcile: { leaderLockSeconds: 3 },
  });
  await waitFor(async () => (await fetch(`${sys.url}/readyz`)).status === 200, 20_000, "ready");
  return { sys, redis, fake, host };
}

/** Stops `sys` (Redis away for a few seconds already), failing the test if that takes past the bound. */
async function stopsWithinBound(t: TestContext, sys: SystemUnderTest, what: string): Promise<void> {
  // Long enough for the connections to notice (stopped) or for commands to be in flight (frozen).
  await new Promise((resolve) => setTimeout(resolve, 3000));
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
      await redis.kill("SIGKILL");
      await stopsWithinBound(t, sys, "Redis stopped");
    } else {
      process.kill(redis.pid, "SIGSTOP");
      try {
        await stopsWithinBound(t, sys, "Redis frozen");
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
  await redis.kill("SIGKILL");
  await stopsWithinBound(t, sys, "Redis stopped, a lease held");
  assert.equal((await containersOf(host))[0]?.State, "running", "the runner is left to run its job (a restarted worker adopts it)");
});
