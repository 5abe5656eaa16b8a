/**
 * Runners that never do their part, for real (DinD runner containers, the fake GitHub, Redis):
 * one that never comes online is removed at the pool's start timeout and its demand retried; a
 * spare runner, launched for a job cancelled before it could take it, is reaped at the idle
 * timeout and its demand completed without another launch. Nothing is left behind either way.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { callsTo, containersOf, demandState, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
let redis: TestRedis;
const hosts: string[] = [];

before(async () => {
  redis = await startRedis();
});
after(async () => {
  for (const h of hosts) await removeContainersOf(h);
  await redis.stop();
});

test("a runner that never comes online is removed at the start timeout, and its demand retried", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("never-online");
  const r = scopedRedis(redis, "never-online");
  hosts.push(host);
  // The container runs (its engine starts), but the runner never does: it never registers.
  const pool = fakeRunnerPool(fake, { startTimeoutSeconds: 4, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", RUNNER_CMD: "sleep 3600" } });
  const sys = await startSystem("all", fake, r, host, {
    pools: [pool],
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, launchAttempts: 2 },
  });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const failed = await waitFor(async () => {
      const d = await demandState(r, "default", `${job.id}-1`);
      return d?.state === "failed" && d;
    }, 90_000, "demand failed after every attempt");
    assert.equal(failed.attempts, 2, "retried once, then given up (launchAttempts: 2)");
    assert.equal(callsTo(fake, JIT), 2, "one registration per attempt");
    assert.ok(callsTo(fake, RUNNER, "GET") >= 2, "GitHub was asked once per runner whether it was online");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "no container left");
    assert.equal(fake.runners().length, 0, "no registration left");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_launch_failures_total\{pool="default",reason="E_RUNNER_NEVER_ONLINE"\} 2/);
    assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="start_timeout"\} 2/);
    assert.match(sys.logs(), /runner never came online; removing it/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a job cancelled before its runner could take it: the spare runner is reaped at the idle timeout", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("spare");
  const r = scopedRedis(redis, "spare");
  hosts.push(host);
  // No still-queued check: the worker launches for the job whatever happened to it since.
  const sys = await startSystem("all", fake, r, host, {
    pools: [fakeRunnerPool(fake, { idleTimeoutSeconds: 6 })],
    github: { appId: fake.appId, apiUrl: fake.url, checkStillQueued: false },
  });
  try {
    // The job is queued and cancelled; the `queued` webhook arrives late, the `completed` never.
    fake.holdWebhooks();
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await fake.cancelJob(job.id);
    fake.holdWebhooks(false);
    const queued = fake.heldWebhooks().find((h) => h.jobId === job.id && h.action === "queued")!;
    assert.deepEqual(await fake.sendHeld(queued.id), [202]);

    // A runner is launched and comes online, but there is no job for it.
    await waitFor(() => fake.runners().some((x) => x.status === "online" && !x.busy), 60_000, "spare runner online");
    const done = await waitFor(async () => {
      const d = await demandState(r, "default", `${job.id}-1`);
      return d?.state === "completed" && d;
    }, 60_000, "demand completed");
    assert.equal(done.result, "idle_timeout");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "spare container removed");
    assert.equal(fake.runners().length, 0, "spare runner deregistered");
    assert.equal(callsTo(fake, JIT), 1, "no second runner for a cancelled job");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="idle_timeout"\} 1/);
  } finally {
    await sys.close();
    await fake.close();
  }
});
