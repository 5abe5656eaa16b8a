/**
 * A worker stopped while GitHub is slow (fake GitHub, real Redis, real Docker engine): a
 * still-queued check in flight does not hold the stop for GitHub's answer (the client's retries
 * would take tens of seconds), its demand goes back unspent and nothing is registered; a stop that
 * does wait (a registration asked for, whose answer only says whether it exists) says every 10 s
 * what it waits for. And a worker that takes a demand says so at once.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { CREATE_CONTAINER, startDockerProxy } from "../helpers/docker-proxy.ts";
import { callsTo, containersOf, demandIn, demandState, RUNNER_IMAGE, scopedRedis, startSystem, uniqueHost, workersForFile, type SystemUnderTest } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const JOB = "/repos/{owner}/{repo}/actions/jobs/{job_id}";
const { redis, hosts } = workersForFile();

/** The first log line of `sys` with this message about job `jobId`, parsed. */
function logLine(sys: SystemUnderTest, msg: string, jobId: number): { time: number; [k: string]: unknown } | undefined {
  for (const line of sys.logs().split("\n")) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    const parsed = JSON.parse(line) as { time: number; jobId?: number };
    if (parsed.jobId === jobId) return parsed;
  }
  return undefined;
}

test("a worker stopped during a still-queued check that GitHub is slow to answer stops at once: the demand back unspent, nothing registered", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("stop-check");
  const r = scopedRedis(redis, "stop-check");
  hosts.push(host);
  // Checked before the registration (the overlap window is 0 s).
  const github = { appId: fake.appId, apiUrl: fake.url, overlapStillQueuedCheckSeconds: 0 };
  const server = await startSystem("server", fake, r, host, { github });
  let worker: SystemUnderTest | undefined;
  let closed = false;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "waiting", 10_000);
    // Each lookup of the job answers only after DELAY_MS.
    const DELAY_MS = 20_000;
    fake.inject({ route: JOB, delayMs: DELAY_MS, times: 10 });
    worker = await startSystem("worker", fake, r, host, { github });
    const taken = await waitFor(() => logLine(worker!, "launching a runner", job.id), 20_000, "the demand taken");
    assert.equal(taken.attempt, 1);
    assert.equal(taken.pool, "default");
    await sleep(1000); // the lookup on its way

    // The lookup was asked after the line above: its answer cannot come before taken.time + DELAY_MS.
    await worker.close();
    closed = true;
    const stoppedAt = Date.now();
    assert.ok(stoppedAt < taken.time + DELAY_MS, `stopped ${stoppedAt - taken.time} ms after the demand was taken: before GitHub's answer (${DELAY_MS} ms)`);
    assert.doesNotMatch(worker.logs(), /still-queued check failed/);
    assert.match(worker.logs(), /launch given up at its still-queued check/);

    const state = await demandState(r, "default", `${job.id}-1`);
    assert.deepEqual([state?.state, state?.attempts], ["waiting", 0], "the demand back in the queue, no attempt spent");
    assert.equal(callsTo(fake, JIT), 0, "nothing registered");
    assert.equal(fake.runners().length, 0);
    assert.equal((await containersOf(host)).length, 0);
    const conn = redisConnection(r.url);
    assert.deepEqual(await new RunnerStore(conn, r.prefix).listAll().finally(() => conn.disconnect()), [], "no runner record");
  } finally {
    if (!closed) await worker?.close();
    await server.close();
    await fake.close();
  }
});

test("a stopping worker that waits for a registration's answer says every 10 s what it waits for, by job and step", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("stop-progress");
  const r = scopedRedis(redis, "stop-progress");
  hosts.push(host);
  const github = { appId: fake.appId, apiUrl: fake.url, overlapStillQueuedCheckSeconds: 0 };
  // The container is never made: the engine refuses its create (the launch fails after the answer).
  const proxy = await startDockerProxy();
  proxy.fail("POST", CREATE_CONTAINER, `No such image: ${RUNNER_IMAGE}`, 404);
  const server = await startSystem("server", fake, r, host, { github });
  let worker: SystemUnderTest | undefined;
  let closed = false;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "waiting", 10_000);
    // The registration is asked for, and answered 13 s later: a sent registration is waited for.
    fake.inject({ route: JIT, delayMs: 13_000, times: 1 });
    worker = await startSystem("worker", fake, r, host, { github, worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, docker: { socketPath: proxy.socketPath } } });
    await waitFor(() => callsTo(fake, JOB) === 1, 20_000, "the still-queued check answered");
    await sleep(1000); // the registration on its way
    await worker.close();
    closed = true;
    const lines = worker.logs().split("\n").filter((l) => l.includes('"msg":"stopping: waiting for'));
    assert.ok(lines.length >= 1, worker.logs().slice(-3000));
    assert.match(lines[0]!, new RegExp(`"msg":"stopping: waiting for 1 launch in flight \\(job ${job.id}: runner jitrunner-default-[^:]+: registering at GitHub\\)"`));
    assert.match(lines[0]!, /"launching":1/);
  } finally {
    if (!closed) await worker?.close();
    await server.close();
    await fake.close();
    await proxy.close();
  }
});
