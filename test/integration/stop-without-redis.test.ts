/**
 * A worker (and `all`: server and worker in one process) asked to stop while Redis is away, for
 * real (the composition root, a Docker engine, a Redis of the test's own): stopped, or frozen
 * (connected, answering nothing). The stop ends within a bound instead of waiting for Redis for
 * ever: a supervisor's stop (SIGTERM) must not turn into its kill after the grace period.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { Mode } from "../../src/main.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type OwnRedis } from "../helpers/redis.ts";
import { removeContainersOf, startSystem, uniqueHost } from "../helpers/system.ts";

/** Far more than a stop with Redis away needs; a stop still waiting then waits for Redis. */
const STOP_BOUND_MS = 45_000;
const hosts: string[] = [];
after(async () => {
  for (const h of hosts) await removeContainersOf(h);
});

for (const mode of ["worker", "all"] as const satisfies readonly Mode[]) {
  for (const away of ["stopped", "frozen"] as const) {
    test(`jitrunner ${mode} stops within a bound while Redis is ${away}`, async (t) => {
      const redis: OwnRedis = await startRedis({ own: true });
      const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
      const host = uniqueHost(`stop-${away}`);
      hosts.push(host);
      const sys = await startSystem(mode, fake, redis, host, { worker: { hostId: host, capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 1 } });
      try {
        await waitFor(async () => (await fetch(`${sys.url}/readyz`)).status === 200, 20_000, "ready");
        if (away === "stopped") await redis.kill("SIGKILL");
        else process.kill(redis.pid, "SIGSTOP");
        // Long enough for the connections to notice (stopped) or for commands to be in flight (frozen).
        await new Promise((resolve) => setTimeout(resolve, 3000));
        const started = Date.now();
        let timer: NodeJS.Timeout | undefined;
        const outcome = await Promise.race([
          sys.close().then(() => "stopped"),
          new Promise<string>((resolve) => (timer = setTimeout(() => resolve("still stopping"), STOP_BOUND_MS))),
        ]).finally(() => clearTimeout(timer));
        assert.equal(outcome, "stopped", `close() had not ended ${STOP_BOUND_MS / 1000} s after it was called (Redis ${away})`);
        assert.match(sys.logs(), /worker stopped/);
        t.diagnostic(`${mode}, Redis ${away}: stopped in ${Date.now() - started} ms`);
      } finally {
        if (away === "frozen") process.kill(redis.pid, "SIGCONT");
        await fake.close();
        await redis.stop();
      }
    });
  }
}
