/**
 * A runner's `completed` event lost by its worker, for real (a DinD runner container, the fake
 * GitHub, Redis): the runner does its job and hangs; the `completed` webhook is accepted and marks
 * its record, but the worker's pub/sub subscriber is disconnected when the change is published
 * (Redis keeps nothing for a disconnected subscriber). The worker reads the record again and
 * removes the hung container after the completed grace; nothing is left behind.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import type { Redis } from "ioredis";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { assertNothingLeft, watchVolumes } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { callsTo, containersOf, demandIn, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const GRACE_SECONDS = 3;
/** The launcher's RECORD_RECHECK_MS, the longest the worker may take to read the record again. */
const RECHECK_SECONDS = 10;
const { redis, hosts } = workersForFile();

/** Kills the pub/sub connections named `connectionName` (the system's subscriber); how many. */
async function killSubscribers(conn: Redis, connectionName: string): Promise<number> {
  const list = String(await conn.call("CLIENT", "LIST", "TYPE", "PUBSUB"));
  const ids = list
    .split("\n")
    .filter((line) => line.includes(` name=${connectionName} `))
    .map((line) => /^id=(\d+) /.exec(line)?.[1])
    .filter((id) => id !== undefined);
  for (const id of ids) await conn.call("CLIENT", "KILL", "ID", id).catch(() => undefined);
  return ids.length;
}

test("a runner that hangs after its job, its completed event published while the worker's subscriber was disconnected: removed after the grace", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("missed-event");
  hosts.push(host);
  // Every connection of the system carries this name (ioredis takes options from the URL's query),
  // so that only its own subscriber is killed on a Redis other tests may share.
  const connectionName = `jrtest-${host}`;
  const r = { ...scopedRedis(redis, "missed-event"), url: `${redis.url}?connectionName=${connectionName}` };
  // The runner does its job (4 s), reports it, and hangs.
  const script = join(dirname(fake.socketPath), "hang-after-job.sh");
  writeFileSync(script, "/home/runner/run.sh\nsleep 3600\n", { mode: 0o755 });
  const pool = fakeRunnerPool(fake, {
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "4", RUNNER_CMD: "sh /fake-github/hang-after-job.sh" },
  });
  const sys = await startSystem("all", fake, r, host, {
    pools: [pool],
    worker: { hostId: host, capacity: 2, completedGraceSeconds: GRACE_SECONDS, reconcileIntervalSeconds: 2 },
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 2, orphanGraceSeconds: 3, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 2 },
  });
  const conn = redisConnection(redis.url);
  const records = new RunnerStore(conn, r.prefix);
  const volumes = watchVolumes([host]);
  let killing = false;
  let killer: Promise<void> = Promise.resolve();
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "in_progress" && d.status === 202), 60_000, "in_progress delivered");
    fake.holdWebhooks();
    const completed = await waitFor(() => fake.heldWebhooks().find((h) => h.jobId === job.id && h.action === "completed"), 60_000, "completed held");
    const [runner] = await records.listAll();
    assert.equal(runner?.state, "busy");
    assert.equal((await containersOf(host))[0]?.State, "running", "the runner hangs after reporting its job");

    // The subscriber is killed, and again each time it is back, until the webhook has marked the record.
    assert.ok((await killSubscribers(conn, connectionName)) >= 1, "the worker's subscriber was connected");
    killing = true;
    // Bounded in passes and in time (the wait for the record below gives up after 10 s), with a
    // pause shorter than ioredis's first reconnection delay (50 ms) so it cannot spin Redis.
    killer = (async () => {
      const until = Date.now() + 15_000;
      for (let pass = 0; killing && pass < 1_000 && Date.now() < until; pass++) {
        await killSubscribers(conn, connectionName);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    assert.deepEqual(await fake.sendHeld(completed.id), [202]);
    await waitFor(async () => (await records.get(runner.name))?.state === "completed", 10_000, "the runner's record marked completed");
    killing = false;
    await killer;

    const bound = (GRACE_SECONDS + RECHECK_SECONDS) * 1000 + 30_000;
    await waitFor(async () => (await containersOf(host)).length === 0, bound, "hung container removed");
    const done = await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(done.result, "completed_grace_expired", "removed at the end of the grace after completed");
    assert.ok(!fake.deliveries.some((d) => d.jobId === job.id && d.redelivery), "no redelivery: the one completed delivery was accepted");
    assert.equal(callsTo(fake, JIT), 1, "one runner for one job");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="completed_grace_expired"\} 1/);
    await assertNothingLeft({ hostIds: [host], fake, redis: r, pools: ["default"], volumes });
    await assertNoSecrets(fake, { logs: sys.logs(), sys });
  } finally {
    killing = false;
    await killer.catch(() => undefined);
    await volumes.stop();
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});
