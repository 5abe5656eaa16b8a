/**
 * The worker's less happy paths, for real (fake GitHub, real Redis, real Docker engine):
 * a launch that fails after registration, a job cancelled while its webhook was lost, and a
 * worker stopped and restarted while its runner runs a job, a burst whose container starts
 * wait their turn at the engine, one worker process per host id, a host loop whose items
 * fail (a deregistration GitHub refuses, a container the engine will not remove), and runners
 * whose id was never noted, lost with their host (deregistered by name).
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { CREATE_CONTAINER, LIST_CONTAINERS, startDockerProxy } from "../helpers/docker-proxy.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import { runJitrunner, waitFor, writeLogTail } from "../helpers/process.ts";
import { callsTo, containersOf, demandIn, demandState, docker, fakeRunnerPool, firstHostPass, goneHost, hostPasses, ourContainer, registerRunner, RUNNER_IMAGE, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { LABEL, MANAGED_BY, runnerLabels } from "../../src/docker/labels.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { queuedPayload, signedHeaders } from "../helpers/webhooks.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const { redis, hosts } = workersForFile();

test("a launch that fails after registration deletes the registration and leaves no container; a Docker refusal (no such image on this host) spends one of the demand's attempts, not all", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("fail");
  const r = scopedRedis(redis, "fail");
  hosts.push(host);
  // The image is there when the launch looks, and gone by its create (removed meanwhile): the engine refuses the create.
  const proxy = await startDockerProxy();
  const refused = proxy.fail("POST", CREATE_CONTAINER, `No such image: ${RUNNER_IMAGE}`, 404);
  const sys = await startSystem("all", fake, r, host, {
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, launchAttempts: 2, docker: { socketPath: proxy.socketPath } },
  });
  try {
    // Exported at 0 from the start: a counter first seen at 1 shows Prometheus no increase.
    const before = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(before, /^jitrunner_demand_failed_total\{pool="default"\} 0$/m);
    assert.match(before, /^jitrunner_launch_failures_total\{pool="default",reason="E_DOCKER"\} 0$/m);
    // Rarer reasons too: JitrunnerLaunchFailures counts 5 in 15 minutes per reason.
    assert.match(before, /^jitrunner_launch_failures_total\{pool="default",reason="E_RUNNER_GROUP_UNKNOWN"\} 0$/m);
    assert.match(before, /^jitrunner_launch_failures_total\{pool="default",reason="error"\} 0$/m);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
    await waitFor(() => callsTo(fake, DELETE, "DELETE") >= 1 && callsTo(fake, JIT) >= 1, 30_000, "registration deleted after the failed create");
    await demandIn(r, `${job.id}-1`, "failed", 30_000);
    assert.equal(callsTo(fake, JIT), 2, "tried again: another host may have the image (2 launch attempts)");
    assert.equal(refused.answered, 2);
    assert.equal(callsTo(fake, JIT), callsTo(fake, DELETE, "DELETE"), "every registration made was deleted");
    assert.equal(fake.runners().length, 0);
    assert.equal((await containersOf(host)).length, 0);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_launch_failures_total\{pool="default",reason="E_DOCKER"\} 2/);
    assert.match(metrics, /jitrunner_demand_failed_total\{pool="default"\} 1\n/, "the demand failed for good once, at its last attempt");
    // What the status page shows: the first attempt tried again, the last one final (newest first).
    const conn = redisConnection(r.url);
    const activity = new ActivityLog(conn, r.prefix);
    // Written once the queue took the last try as failed.
    const failures = await waitFor(async () => {
      const all = await activity.recentFailures();
      return all.length >= 2 && all;
    }, 10_000, "both tries on the status page").finally(() => conn.disconnect());
    assert.deepEqual(failures.map((f) => [f.attempt, f.reason, f.retryable]), [[2, "E_DOCKER", false], [1, "E_DOCKER", true]]);
    // The first try goes back to the queue (warn); the last is said at error, with what comes next.
    const said = (msg: RegExp) => sys.logs().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => msg.test(l.msg));
    assert.deepEqual(said(/^demand failed; returned to the queue$/).map((l) => l.level), [40], "the first try, at warn");
    const final = said(/^demand failed for good/);
    assert.equal(final.length, 1, sys.logs().slice(-3000));
    assert.equal(final[0]!.level, 50, "at error");
    assert.match(final[0]!.msg, /^demand failed for good \(attempt 2 of 2\): create container failed \(404\): No such image: \S+; tried again by the reconciler after reconcile\.retryFailedDemandSeconds if GitHub still has it queued$/);
    // And the status: failed, not waiting for a runner.
    const page = await (await fetch(`${sys.url}/`)).text();
    assert.match(page, new RegExp(`<td>${job.id}</td>.*<td class="bad">launch failed \\(final\\): E_DOCKER</td>`));
    assert.doesNotMatch(page, /waiting for a runner/);
    assert.match(sys.logs(), /create container failed \(404\)/);
    const removed = sys.logs().split("\n").filter((l) => l.includes('"msg":"runner removed"'));
    assert.ok(removed.length > 0);
    for (const line of removed) assert.equal(line.split('"runner":').length - 1, 1, `the runner named once: ${line}`);
    // The create that failed carried the JIT config issued for it: not in its error, logged, counted or shown.
    const checked = await assertNoSecrets(fake, { logs: sys.logs(), sys });
    assert.ok(checked.jitConfigs >= 1 && checked.places.includes("status page"), JSON.stringify(checked));
  } finally {
    await sys.close();
    await fake.close();
    await proxy.close();
  }
});


test("a pool whose image is not on the engine: said once at start, not again each host pass; each launch fails E_IMAGE_MISSING with nothing registered at GitHub, and /readyz says an image is missing; once the image is built, said so, and a job runs", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("noimage");
  const r = scopedRedis(redis, "noimage");
  hosts.push(host);
  // A tag of this test's own, made from the runner image once the worker has met it missing.
  const repo = `jitrunner-test-missing-${host}`;
  const image = `${repo}:latest`;
  const sys = await startSystem("all", fake, r, host, {
    pools: [fakeRunnerPool(fake, { image })],
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 1, launchAttempts: 2 },
  });
  try {
    const lines = () => sys.logs().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { level: number; msg: string });
    const warned = () => lines().filter((l) => l.msg.startsWith(`image ${image} of pool default is not on this Docker engine`));
    assert.deepEqual(warned().map((l) => [l.level, l.msg]), [[40, `image ${image} of pool default is not on this Docker engine: build or pull it on this host (workers never pull); each launch for the pool fails (E_IMAGE_MISSING) until it is`]], "said at start, at warn");
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "failed", 60_000);
    assert.equal(callsTo(fake, JIT), 0, "nothing registered at GitHub");
    assert.equal(callsTo(fake, "/repos/{owner}/{repo}/actions/jobs/{job_id}"), 0, "nor the job asked about");
    assert.equal(fake.runners().length, 0);
    assert.equal((await containersOf(host)).length, 0);
    const final = lines().filter((l) => l.msg.startsWith("demand failed for good"));
    assert.equal(final.length, 1);
    assert.match(final[0]!.msg, new RegExp(`^demand failed for good \\(attempt 2 of 2\\): image ${repo}:latest of pool default is not on this Docker engine: build or pull it on this host \\(workers never pull\\); tried again`));
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /^jitrunner_launch_failures_total\{pool="default",reason="E_IMAGE_MISSING"\} 2$/m);
    const conn = redisConnection(r.url);
    const failures = await new ActivityLog(conn, r.prefix).recentFailures().finally(() => conn.disconnect());
    assert.deepEqual(failures.map((f) => [f.attempt, f.reason, f.retryable]), [[2, "E_IMAGE_MISSING", false], [1, "E_IMAGE_MISSING", true]]);
    // /readyz in fixed words: not the image's name.
    const readyz = await fetch(`${sys.url}/readyz`);
    assert.equal(readyz.status, 503);
    assert.deepEqual(await readyz.json(), { status: "unready", problems: ["worker: pool image missing on the engine"] });
    // Host passes since: said once all the same.
    const passes = await hostPasses(sys, "ok");
    await waitFor(async () => (await hostPasses(sys, "ok")) >= passes + 2, 30_000, "two more host passes");
    assert.equal(warned().length, 1, "said once");

    await docker.getImage(RUNNER_IMAGE).tag({ repo, tag: "latest" });
    try {
      await waitFor(() => lines().some((l) => l.level === 30 && l.msg === `image ${image} of pool default is on this Docker engine now`), 30_000, "the image found by a host pass");
      // The runner launched for it takes whichever of the two queued jobs GitHub hands it.
      await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
      await waitFor(() => fake.jobs().some((j) => j.status === "completed"), 120_000, "a job run");
      await waitFor(async () => (await fetch(`${sys.url}/readyz`)).status === 200, 30_000, "ready once a launch succeeded");
    } finally {
      await sys.close();
      await docker.getImage(image).remove().catch(() => undefined);
    }
  } finally {
    await sys.close();
    await fake.close();
  }
});
/**
 * A job cancelled while queued, its `completed` webhook lost, reaches a worker. `overlap`: how the
 * worker's still-queued check runs (github.overlapStillQueuedCheckSeconds).
 */
async function cancelledWhileQueued(tag: string, overlapSeconds: number, resend = false) {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost(tag);
  const r = scopedRedis(redis, tag);
  hosts.push(host);
  const github = { appId: fake.appId, apiUrl: fake.url, overlapStillQueuedCheckSeconds: overlapSeconds };
  const server = await startSystem("server", fake, r, host, { github });
  let worker: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "waiting", 10_000);
    fake.setWebhookUrl("http://127.0.0.1:9/lost"); // the `completed` delivery goes nowhere
    await fake.cancelJob(job.id);
    worker = await startSystem("worker", fake, r, host, { github });
    const done = await demandIn(r, `${job.id}-1`, "completed", 20_000);
    assert.equal(done.result, "not_needed");
    assert.equal(callsTo(fake, "/repos/{owner}/{repo}/actions/jobs/{job_id}"), 1, "one still-queued check");
    assert.equal((await containersOf(host)).length, 0);
    assert.doesNotMatch(worker.logs(), /runner container started/);
    assert.equal(fake.runners().length, 0, "no registration left at GitHub");
    let resent: string | undefined;
    if (resend) {
      // The job's `queued` body, signed, under a new delivery id: its item has ended, so it is added afresh.
      const body = JSON.stringify(queuedPayload({ jobId: job.id, labels: ["self-hosted", "linux"] }));
      const res = await fetch(`${server.url}/webhooks/github`, { method: "POST", body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET) });
      resent = ((await res.json()) as { outcome?: string }).outcome;
      await waitFor(() => callsTo(fake, "/repos/{owner}/{repo}/actions/jobs/{job_id}") === 2, 20_000, "the copy's still-queued check");
      assert.equal((await demandIn(r, `${job.id}-1`, "completed", 20_000)).result, "not_needed");
      assert.equal(fake.runners().length, 0, "no registration left at GitHub");
    }
    await assertNoSecrets(fake, { texts: { "server logs": server.logs() }, logs: worker.logs(), sys: server });
    return { jit: callsTo(fake, JIT), deleted: callsTo(fake, DELETE, "DELETE"), logs: worker.logs(), resent };
  } finally {
    await worker?.close();
    await server.close();
    await fake.close();
  }
}

test("a job cancelled while queued launches no runner, even when the completed webhook was lost", async () => {
  // Checked before anything is registered: the job's age is past the overlap window (0 s).
  const { jit } = await cancelledWhileQueued("cancel", 0);
  assert.equal(jit, 0, "no runner registered");
});

test("a fresh job's still-queued check runs alongside its registration and stops the launch before the container", async () => {
  const { jit, deleted, logs } = await cancelledWhileQueued("cancel-fresh", 60);
  assert.equal(jit, 1, "registered while the check ran");
  assert.equal(deleted, 1, "and that registration deleted");
  assert.match(logs, /job needs no runner after all/);
});

test("a `queued` delivery sent again under a new delivery id after its job's demand ended (a late redelivery, a captured body) adds demand that asks GitHub first: no second registration", async () => {
  const { jit, deleted, resent } = await cancelledWhileQueued("cancel-resent", 60, true);
  assert.equal(jit, 1, "only the first demand's registration, made alongside its check");
  assert.equal(deleted, 1);
  assert.equal(resent, "queued", "the copy added demand again (GitHub may have queued the job again after an approval)");
});

test("a `queued` delivery sent again under a new delivery id after one of our runners ran the job (a late redelivery after an outage, a captured body) registers nothing and asks GitHub nothing", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("served-resent");
  const r = scopedRedis(redis, "served-resent");
  hosts.push(host);
  const pools = [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } })];
  const sys = await startSystem("all", fake, r, host, { pools });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    await demandIn(r, `${job.id}-1`, "completed", 30_000);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "its runner removed");
    assert.equal(callsTo(fake, JIT), 1);
    assert.notEqual((await demandState(r, "default", `${job.id}-1`))?.result, "served_by_earlier_runner");
    const checks = callsTo(fake, "/repos/{owner}/{repo}/actions/jobs/{job_id}");
    const body = JSON.stringify(queuedPayload({ jobId: job.id, labels: ["self-hosted", "linux"] }));
    const res = await fetch(`${sys.url}/webhooks/github`, { method: "POST", body, headers: signedHeaders("workflow_job", body, WEBHOOK_SECRET) });
    assert.equal(((await res.json()) as { outcome?: string }).outcome, "queued", "added again: GitHub may have queued the job again");
    // Its demand's note says which runner served it (kept longer than GitHub redelivers): no GitHub call, no launch.
    assert.equal((await demandIn(r, `${job.id}-1`, "completed", 20_000)).result, "served_by_earlier_runner");
    assert.equal(callsTo(fake, "/repos/{owner}/{repo}/actions/jobs/{job_id}"), checks, "no still-queued check needed");
    assert.equal(callsTo(fake, JIT), 1, "no second registration");
    assert.equal((await containersOf(host)).length, 0);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a worker stopped mid-job leaves the runner running and its place under maxRunners held; restarted, it adopts it, keeps that place and launches no second runner", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("restart");
  const r = scopedRedis(redis, "restart");
  hosts.push(host);
  const pools = [fakeRunnerPool(fake, { maxRunners: 1, env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "20" } })];
  const first = await startSystem("all", fake, r, host, { pools });
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  const conn = redisConnection(r.url);
  const store = new RunnerStore(conn, r.prefix);
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "job running");
    await first.close();
    const running = await containersOf(host);
    assert.equal(running.length, 1, "runner container survives the worker's shutdown");
    assert.equal(running[0]!.State, "running");
    // The pool's one place stays the demand's while its runner runs: no other host can take it.
    const places = () => conn.zrange(`${r.prefix}:pool:default:holders`, 0, -1);
    assert.deepEqual(await places(), [`${job.id}-1`], "the runner's place outlives the stop");
    const [launched] = await store.listAll();
    assert.ok(launched?.instance, "the record names the worker process that launched the runner");

    second = await startSystem("all", fake, r, host, { pools });
    await waitFor(() => /adopted running runner/.test(second!.logs()), 30_000, "the runner adopted");
    assert.deepEqual(await places(), [`${job.id}-1`], "the restarted worker holds the same place");
    const adopted = await store.get(launched.name);
    assert.ok(adopted?.instance && adopted.instance !== launched.instance, "the restarted worker process names itself on the record it adopted");
    // It takes the demand back and finds its runner here; stopped again then, it keeps the place too.
    await waitFor(() => /demand already has a runner/.test(second!.logs()), 30_000, "the demand taken and its runner found");
    await second.close();
    assert.deepEqual(await places(), [`${job.id}-1`], "the place outlives a stop of the process that found the runner for its demand");
    second = await startSystem("all", fake, r, host, { pools });
    await waitFor(() => /adopted running runner/.test(second!.logs()), 30_000, "the runner adopted again");
    assert.deepEqual(await places(), [`${job.id}-1`]);
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "container removed by the restarted worker");
    await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.conclusion, "success");
    assert.equal(callsTo(fake, JIT), 1, "exactly one runner was ever registered");
    assert.equal(fake.runners().length, 0);
    assert.match(second.logs(), /adopted running runner/);
    assert.match(second.logs(), /demand already has a runner/);
    await waitFor(async () => (await places()).length === 0, 10_000, "the place freed once the runner is gone");
    assert.doesNotMatch(second.logs(), /place under maxRunners lapsed/);
  } finally {
    await second?.close();
    await first.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a runner mid-job whose Redis record was lost (a restore from an old snapshot) is not killed by the worker that finds it: its labels say where it is registered, GitHub says busy, and it finishes its job", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("records-lost");
  const r = scopedRedis(redis, "records-lost");
  hosts.push(host);
  const pools = [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "20" } })];
  const first = await startSystem("all", fake, r, host, { pools });
  let second: Awaited<ReturnType<typeof startSystem>> | undefined;
  const conn = redisConnection(r.url);
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "job running");
    await first.close();
    const [container] = await containersOf(host);
    assert.equal(container?.State, "running", "the runner survives the worker's stop");
    assert.equal(container.Labels[LABEL.installation], String(fake.installationId), "its labels say where it is registered");
    // The records are gone, as from a Redis restored from a snapshot older than the launch.
    const store = new RunnerStore(conn, r.prefix);
    for (const rec of await store.listAll()) await store.remove(rec, true);
    assert.deepEqual(await store.listAll(), []);

    second = await startSystem("all", fake, r, host, { pools });
    await waitFor(() => /runner running a job left running until it exits/.test(second!.logs()), 30_000, "the unknown runner asked about at GitHub and left running");
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "job completed");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.conclusion, "success", "the job ran to its end on its runner");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "its container removed once it exited");
    await waitFor(() => fake.runners().length === 0, 30_000, "no registration left");
    assert.equal(callsTo(fake, JIT), 1, "no second runner registered");
  } finally {
    await second?.close();
    await first.close();
    await fake.close();
    conn.disconnect();
  }
});

test("the host loop tears down at once a record without a container that a stopped worker process of its host left, and not one a live process may still be launching", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("records");
  const r = scopedRedis(redis, "records");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const now = Date.now();
  const record = (name: string, over: Partial<RunnerRecord>): RunnerRecord => ({
    name: `jitrunner-default-${name}`, pool: "default", host, state: "registering", installationId: 1, owner: "acme", repo: "app", demandId: "", createdAt: now, ...over,
  });
  // A worker process of this host that beats (for a minute) and one that has stopped.
  await hostStore.heartbeat({ id: host, capacity: 2, used: 0, pools: ["default"] }, 60_000, "live-process");
  await hostStore.heartbeat({ id: host, capacity: 2, used: 0, pools: ["default"] }, 60_000, "stopped-process");
  await hostStore.instanceGone("stopped-process");
  const stopped = record("stopped0001", { instance: "stopped-process" });
  const live = record("livelive01", { instance: "live-process" });
  // Records that name no process (written before records did): taken for dead at 60 s.
  const young = record("unnamed001", {});
  const old = record("unnamed002", { createdAt: now - 61_000 });
  for (const x of [stopped, live, young, old]) await runners.put(x);
  const sys = await startSystem("worker", fake, r, host);
  try {
    const passes = async () => metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_reconcile_runs_total", 'loop="host",outcome="ok"');
    await waitFor(async () => (await passes()) >= 3, 30_000, "three passes of the host loop");
    const left = (await runners.listHost(host)).sort();
    assert.deepEqual(left, [live.name, young.name].sort(), "the stopped process's record and the old unnamed one torn down; the live process's and the young one kept");
    assert.match(sys.logs(), new RegExp(`"runner":"${stopped.name}","reason":"reconcile_no_container".*"msg":"runner removed"`));
    assert.ok(Date.now() - stopped.createdAt < 60_000, "torn down before the 60 s an unnamed record waits");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a record without a container whose registration GitHub no longer knows: its demand counts as served, unless one of our processes had set out to delete the registration (a crash after that deletion), when it is released", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("deleted-before");
  const r = scopedRedis(redis, "deleted-before");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  await hostStore.heartbeat({ id: host, capacity: 2, used: 0, pools: ["default"] }, 60_000, "dead-process");
  await hostStore.instanceGone("dead-process");
  const now = Date.now();
  const record = (name: string, over: Partial<RunnerRecord>): RunnerRecord => ({
    name: `jitrunner-default-${name}`, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app",
    demandId: `demand-${name}`, createdAt: now - 120_000, instance: "dead-process", ...over,
  });
  // Ids GitHub does not know (404): one runner removed itself after a job whose webhooks were
  // lost; the other was deleted by its worker, which died before it removed the record.
  const ranAJob = record("ranajob001", { runnerId: 990_001 });
  const deleted = record("deleted001", { runnerId: 990_002, deregisteringAt: now - 5_000 });
  for (const x of [ranAJob, deleted]) await runners.put(x);
  const sys = await startSystem("worker", fake, r, host);
  try {
    await waitFor(async () => (await runners.listHost(host)).length === 0, 30_000, "both records torn down");
    assert.deepEqual(await runners.findByDemand(ranAJob.demandId), { name: ranAJob.name, record: undefined }, "the runner that removed itself served its demand");
    assert.equal(await runners.findByDemand(deleted.demandId), undefined, "the runner we deleted did not: a lease of its demand launches again");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a stop asked for while the worker starts, once its start has gone past the worker's: the start ends and is the caller's to stop as any start, not undone unsaid", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("start-stop");
  const r = scopedRedis(redis, "start-stop");
  hosts.push(host);
  const proxy = await startDockerProxy();
  // The worker's start lists the host's containers (its first host pass): held there.
  const listing = proxy.hang("GET", LIST_CONTAINERS);
  const stopping = new AbortController();
  const worker = { hostId: host, capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, docker: { socketPath: proxy.socketPath } };
  const starting = startSystem("worker", fake, r, host, { worker }, { signal: stopping.signal }).then(
    (sys) => sys,
    (err: unknown) => err as Error,
  );
  let sys: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    await waitFor(() => listing.held >= 1, 20_000, "the worker's start in its first host pass");
    stopping.abort();
    listing.release();
    const started = await starting;
    assert.ok(!(started instanceof Error), `the start ended as ever, not undone: ${String(started)}`);
    sys = started;
    assert.match(sys.logs(), /jitrunner started/);
    // Stopped by its caller, as any start: close()'s outcome is the run's.
    await sys.close();
    sys = undefined;
  } finally {
    listing.release();
    await sys?.close();
    await proxy.close();
    await fake.close();
  }
});

test("a worker whose engine cannot list the host's containers at start takes no demand until it can: what a stopped worker left running is known first", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("unlisted");
  const r = scopedRedis(redis, "unlisted");
  hosts.push(host);
  const proxy = await startDockerProxy();
  // Every container list fails, as an engine's may (the containers left running are not known).
  const failing = proxy.fail("GET", LIST_CONTAINERS, "list failed for the test", 500);
  const pools = [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } })];
  const worker = { hostId: host, capacity: 2, reconcileIntervalSeconds: 2, docker: { socketPath: proxy.socketPath } };
  const sys = await startSystem("all", fake, r, host, { pools, worker });
  try {
    assert.match(sys.logs(), /the host's containers could not be listed: taking no demand until they are/);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => failing.answered >= 3, 30_000, "lists tried again");
    assert.equal((await demandState(r, "default", `${job.id}-1`))?.state, "waiting", "the demand not taken");
    assert.equal(callsTo(fake, JIT), 0, "nothing registered");
    const ready = await fetch(`${sys.url}/readyz`);
    assert.equal(ready.status, 503, "not ready meanwhile");

    failing.stop();
    await waitFor(() => /the host's containers listed: taking demand/.test(sys.logs()), 60_000, "the worker opened once a list succeeded");
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "the job served");
    assert.equal(callsTo(fake, JIT), 1);
  } finally {
    failing.stop();
    await sys.close();
    await proxy.close();
    await fake.close();
  }
});

test("a worker stopped while launches wait for the write budget gives them up at once: never sent, their demand back with no attempt spent", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("stop-waiting");
  const r = scopedRedis(redis, "stop-waiting");
  hosts.push(host);
  // Two writes a minute: two JIT configs go at once; the third launch waits for the window, a
  // minute.
  const sys = await startSystem("all", fake, r, host, {
    github: { appId: fake.appId, apiUrl: fake.url, writesPerMinute: 2 },
    worker: { hostId: host, capacity: 4, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "30" } })],
  });
  let closed = false;
  try {
    const jobs = [];
    for (let i = 0; i < 3; i++) jobs.push(await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] }));
    await waitFor(() => (sys.logs().match(/runner container started/g) ?? []).length === 2, 60_000, "two runners started");
    const sent = callsTo(fake, JIT);
    assert.equal(sent, 2, "the third launch waits for the write budget");

    // A stop does not wait out the window (a minute): the waiting launches give up.
    const closing = sys.close().then(() => (closed = true));
    const late = new Promise((res) => setTimeout(res, 30_000, "still closing after 30 s").unref());
    assert.equal(await Promise.race([closing, late]), true, "the worker stopped before the write window had room");
    assert.equal((sys.logs().match(/launch given up before its registration was asked for/g) ?? []).length, 1, sys.logs().slice(-3000));
    assert.doesNotMatch(sys.logs(), /demand failed; returned to the queue/, "no launch attempt spent");
    assert.match(sys.logs(), /"reason":"launch_given_up"[^\n]*"msg":"runner removed"/, "removed as given up, not as a failed launch");

    // Every demand is back in the queue with no attempt spent (a stop hands back the leases of
    // runners that run too: a restarted worker finds them), and no runner exists but those sent.
    const states = await Promise.all(jobs.map((j) => demandState(r, "default", `${j.id}-1`)));
    assert.ok(states.every((d) => d?.state === "waiting" && d.attempts === 0), JSON.stringify(states));
    await new Promise((res) => setTimeout(res, 1000));
    assert.equal(callsTo(fake, JIT), sent, "nothing sent after the stop");
    assert.equal((await containersOf(host)).length, sent, "a container only for each registration sent");
    const conn = redisConnection(r.url);
    const records = await new RunnerStore(conn, r.prefix).listAll().finally(() => conn.disconnect());
    assert.equal(records.length, sent, `a record only for each runner registered (${records.map((x) => x.state).join(", ")})`);
  } finally {
    if (!closed) await sys.close();
    await fake.close();
  }
});

test("a lease that lapses while its launch waits for the write budget gives the launch up, unsent: the demand's next lease launches, one registration per job", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("lease-lapsed");
  const r = scopedRedis(redis, "lease-lapsed");
  hosts.push(host);
  // One write a minute: the second job's registration waits for the window.
  const sys = await startSystem("all", fake, r, host, {
    github: { appId: fake.appId, apiUrl: fake.url, writesPerMinute: 1 },
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, leaseSeconds: 5 },
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } })],
  });
  const conn = redisConnection(r.url);
  try {
    const jobs: FakeJob[] = [];
    for (let i = 0; i < 2; i++) jobs.push(await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] }));
    await waitFor(() => (sys.logs().match(/launching a runner/g) ?? []).length === 2 && callsTo(fake, JIT) === 1, 60_000, "one registration sent, the other waiting");
    const runners = new RunnerStore(conn, r.prefix);
    // The first registration's runner id is noted a moment after GitHub answered it.
    const waiting = await waitFor(
      async () => {
        const without = [];
        for (const j of jobs) if ((await runners.findByDemand(`${j.id}-1`))?.record?.runnerId === undefined) without.push(`${j.id}-1`);
        return without.length === 1 && without[0]!;
      },
      20_000,
      "one launch registered, its runner id noted, the other waiting with none",
    );
    assert.equal(callsTo(fake, JIT), 1, "the other still waits for the write budget");
    // Its lock lapses, as while Redis was away for longer than the lease.
    await conn.del(`${r.prefix}:bull:demand-default:${waiting}:lock`);
    await waitFor(() => /lease lapsed while its registration waited/.test(sys.logs()), 20_000, "the waiting launch given up at its lease's next renewal");
    assert.equal(callsTo(fake, JIT), 1, "nothing sent for the lapsed lease");
    await waitFor(() => jobs.every((j) => fake.jobs().find((x) => x.id === j.id)?.status === "completed"), 150_000, "both jobs run, the second by its demand's next lease");
    assert.equal(callsTo(fake, JIT), 2, "one registration per job");
    assert.doesNotMatch(sys.logs(), /demand failed; returned to the queue/, "no launch attempt spent");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a launch that fails with GitHub answering 5xx through the client's retries spends no attempt: the demand is handed back for a while, and its job served once GitHub answers", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("github-down");
  const r = scopedRedis(redis, "github-down");
  hosts.push(host);
  // One launch attempt: were the failure spent as one, the demand would fail for good.
  const sys = await startSystem("all", fake, r, host, {
    worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, launchAttempts: 1 },
    pools: [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "1" } })],
  });
  try {
    // A call and its 3 retries: one launch's worth of 502s.
    fake.inject({ route: JIT, status: 502, times: 4 });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => /launch failed with GitHub unavailable; demand handed back, no attempt spent/.test(sys.logs()), 60_000, "the launch failed and handed back");
    assert.match(sys.logs(), /"level":40,[^\n]*"postponed":0,"retryInSeconds":2,[^\n]*demand handed back, no attempt spent/, "its first hand-back: 2 s, at warn");
    await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 60_000, "the job served once GitHub answers");
    assert.deepEqual(
      fake.requests.filter((x) => x.route === JIT).map((x) => x.status),
      [502, 502, 502, 502, 201],
    );
    await demandIn(r, `${job.id}-1`, "completed", 30_000);
    const state = await demandState(r, "default", `${job.id}-1`);
    // BullMQ counts the attempt that completed it: one in all, the handed-back one not counted.
    assert.equal(state?.attempts, 1, "served on its first attempt, the failure not counted as one");
    assert.doesNotMatch(sys.logs(), /demand failed; returned to the queue/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a runner that hangs without ever taking its job is reaped at the idle timeout and its job retried, also when GitHub does not say whether the job is still queued", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("hang");
  hosts.push(host);
  const r = scopedRedis(redis, "hang");
  const pools = [fakeRunnerPool(fake, { idleTimeoutSeconds: 3, env: { RUNNER_CMD: "sleep 3600" } })];
  const sys = await startSystem("all", fake, r, host, { pools, worker: { hostId: host, capacity: 2, launchAttempts: 2, reconcileIntervalSeconds: 2, completedGraceSeconds: 5 } });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // The first runner's idle timeout asks GitHub about the job: a 5xx on that call and each retry.
    await waitFor(() => /runner container started/.test(sys.logs()), 30_000, "the first runner started");
    fake.inject({ route: "/repos/{owner}/{repo}/actions/jobs/{job_id}", method: "GET", status: 502, times: 4 });
    await demandIn(r, `${job.id}-1`, "failed", 90_000);
    assert.match(sys.logs(), /could not ask GitHub whether the job of a runner that idled out is still queued; serving its demand again/);
    assert.equal(callsTo(fake, JIT), 2, "one runner per attempt");
    assert.equal(callsTo(fake, DELETE, "DELETE"), 2, "each hung runner deregistered");
    assert.equal(fake.runners().length, 0);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "hung containers removed");
    assert.match(sys.logs(), /runner never took its still-queued job/);
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued", "the job itself is untouched: the reconciler or a new delivery can still serve it");
    assert.ok((await assertNoSecrets(fake, { logs: sys.logs(), sys })).jitConfigs >= 2, "both hung runners' JIT configs looked for");
  } finally {
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(sys.logs());
    await sys.close();
    await fake.close();
  }
});

test("a Redis error on the pool limit check hands the demand back unspent and the worker goes on: once Redis answers, the job runs", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("limit-error");
  hosts.push(host);
  const r = scopedRedis(redis, "limit-error");
  const conn = redisConnection(r.url);
  // The pool's places held as a string: Redis answers the limit script with WRONGTYPE, as it
  // would with an out-of-memory or read-only error, while taking demand still works.
  const placesKey = `${r.prefix}:pool:default:holders`;
  await conn.set(placesKey, "not a sorted set");
  const pools = [fakeRunnerPool(fake, { maxRunners: 2 })];
  const sys = await startSystem("all", fake, r, host, { pools, worker: { hostId: host, capacity: 2, launchAttempts: 1, reconcileIntervalSeconds: 2, completedGraceSeconds: 5 } });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => /pool limit check for pool default failed: WRONGTYPE/.test(sys.logs()), 30_000, "the failed limit check logged");
    await sleep(2500);
    const d = await demandState(r, "default", `${job.id}-1`);
    assert.ok(d && ["waiting", "active"].includes(d.state), `the demand is still pending (${JSON.stringify(d)})`);
    assert.equal(d.attempts, 0, "no launch attempt spent");
    assert.equal(callsTo(fake, JIT), 0, "nothing registered over an unchecked limit");

    await conn.del(placesKey);
    const [done] = await waitFor(() => {
      const j = fake.jobs().filter((x) => x.id === job.id && x.status === "completed");
      return j.length === 1 && j;
    }, 90_000, "the job completed once the limit could be checked");
    assert.equal(done!.conclusion, "success");
    assert.equal(callsTo(fake, JIT), 1);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "nothing left");
  } finally {
    if (process.env.JITRUNNER_TEST_VERBOSE) process.stderr.write(sys.logs());
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a worker with a slow heartbeat holds its places under maxRunners for 6 beats: a place outlasts the 2.5 beats between two refreshes", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("slow-beat");
  hosts.push(host);
  const r = scopedRedis(redis, "slow-beat");
  const conn = redisConnection(r.url);
  // A warm runner takes a place under maxRunners before its launch; no job needed.
  const pools = [fakeRunnerPool(fake, { maxRunners: 2, minIdle: 1, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } })];
  const sys = await startSystem("worker", fake, r, host, { pools, worker: { hostId: host, capacity: 3, heartbeatSeconds: 20, reconcileIntervalSeconds: 2 } });
  try {
    const placesKey = `${r.prefix}:pool:default:holders`;
    const [, until] = await waitFor(async () => {
      const held = await conn.zrange(placesKey, 0, -1, "WITHSCORES");
      return held.length === 2 && held;
    }, 20_000, "the warm runner's place taken");
    const left = Number(until) - Date.now();
    assert.ok(left > 110_000 && left <= 120_000, `a place lasts 6 beats of 20 s unrefreshed (${left} ms left)`);
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("waiting for demand holds no slot: an idle worker with two pools and one slot counts none used, and serves either pool's job, one at a time", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("slots");
  hosts.push(host);
  const r = scopedRedis(redis, "slots");
  const env = { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "3" };
  const pools = [
    fakeRunnerPool(fake, { name: "a", labels: ["self-hosted", "pool-a"], env }),
    fakeRunnerPool(fake, { name: "b", labels: ["self-hosted", "pool-b"], env }),
  ];
  const sys = await startSystem("all", fake, r, host, { pools, worker: { hostId: host, capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, completedGraceSeconds: 5 } });
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const used = async () => (await hostStore.list()).find((h) => h.id === host)?.record?.used;
  try {
    // Both pools' loops wait for demand the whole time; across 3 beats, no slot is counted used.
    const seen: Array<number | undefined> = [];
    for (let i = 0; i < 6; i++) {
      await sleep(500);
      seen.push(await used());
    }
    assert.deepEqual(seen.filter((u) => u !== undefined), Array(seen.filter((u) => u !== undefined).length).fill(0), `slots used while idle: ${seen.join(", ")}`);
    assert.ok(seen.some((u) => u !== undefined), "the host beat");

    const a = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-a"] });
    await waitFor(async () => (await used()) === 1, 30_000, "the runner's slot counted");
    const b = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "pool-b"] });
    const done = await waitFor(() => {
      const jobs = fake.jobs().filter((j) => j.id === a.id || j.id === b.id);
      return jobs.every((j) => j.status === "completed") && jobs;
    }, 90_000, "both jobs completed");
    assert.deepEqual(done.map((j) => j.conclusion), ["success", "success"]);
    const ran = done.map((j) => ({ start: Date.parse(j.started_at!), end: Date.parse(j.completed_at!) })).sort((x, y) => x.start - y.start);
    assert.ok(ran[1]!.start >= ran[0]!.end, "one slot: the second job ran after the first");
    assert.equal(callsTo(fake, JIT), 2, "one registration each");
    assert.doesNotMatch(await (await fetch(`${sys.url}/metrics`)).text(), /^jitrunner_launch_failures_total\{[^}]*\} [1-9]/m, "no launch failed (the usual reasons are there at 0)");
    await waitFor(async () => (await used()) === 0 && (await containersOf(host)).length === 0, 30_000, "the slot free again, nothing left");
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a burst's container starts wait their turn: the engine never has more than worker.concurrentStarts at once; demand taken together never outnumbers the free slots; every job is served", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const host = uniqueHost("starts");
  hosts.push(host);
  const r = scopedRedis(redis, "starts");
  const jobs = 6;
  const capacity = 4;
  const sys = await startSystem("all", fake, r, host, {
    worker: { hostId: host, capacity, concurrentStarts: 2, reconcileIntervalSeconds: 2, completedGraceSeconds: 5, docker: { socketPath: proxy.socketPath } },
  });
  const conn = redisConnection(r.url);
  try {
    // One run's jobs, as a matrix's are.
    const first = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const rest = await Promise.all(Array.from({ length: jobs - 1 }, () => fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], runId: first.run_id })));
    const queued = [first, ...rest];
    const ids = new Set(queued.map((j) => j.id));
    // Demand the worker holds (leased in BullMQ), looked at throughout: the jobs beyond its slots
    // wait in the queue, for any host, until a runner ends.
    const leased: number[] = [];
    await waitFor(async () => {
      leased.push(await conn.llen(`${r.prefix}:bull:demand-default:active`));
      return fake.jobs().filter((j) => ids.has(j.id) && j.status === "completed").length === jobs;
    }, 120_000, `${jobs} jobs completed`);
    assert.ok(fake.jobs().every((j) => !ids.has(j.id) || j.conclusion === "success"));
    assert.equal(Math.max(...leased), capacity, `demand leased at once, looked at ${leased.length} times`);
    // None was taken beyond the free slots: such demand goes straight back (BullMQ says "waiting",
    // from "active"), too soon for the look above to catch.
    const events = await conn.xrange(`${r.prefix}:bull:demand-default:events`, "-", "+");
    const backToWaiting = events.filter(([, f]) => f.join(" ").includes("event waiting") && f.join(" ").includes("prev active"));
    assert.deepEqual(backToWaiting, [], "no demand handed back");
    assert.equal(proxy.starts, jobs, "one start per runner");
    // Still-queued checks of one run's jobs: a call each at most, fewer when checks share a
    // listing of the run (how many do depends on the moments the launches reach their checks).
    const checks = fake.requests.filter((q) => q.route === "/repos/{owner}/{repo}/actions/jobs/{job_id}" || q.route === "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs");
    assert.ok(checks.length <= jobs, `still-queued checks: ${checks.map((q) => q.route).join(", ")}`);
    // Six launches at once, each start a few hundred ms: they queue, two at a time.
    assert.equal(proxy.maxStartsInFlight, 2, "starts in flight at once");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "runner containers removed");
    assert.equal(fake.runners().length, 0);
  } finally {
    conn.disconnect();
    await sys.close();
    await proxy.close();
    await fake.close();
  }
});

test("one worker process per host id: a second one exits at start while the first beats, waits out a killed one's hold, and a worker whose host is taken from it takes no demand until it is its own again", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "hold");
  const [host, killedHost] = [uniqueHost("hold"), uniqueHost("killed")];
  hosts.push(host, killedHost);
  const conn = redisConnection(r.url);
  const worker = { capacity: 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, completedGraceSeconds: 5 };
  const started: Array<Awaited<ReturnType<typeof startSystem>>> = [];
  // Every start here ends within its hold's expiry (3 beats) and one more beat; a start that
  // neither starts nor fails by then is a failure, not a hang.
  const startOrFail = async (hostId: string, mode: "all" | "worker" = "worker") => {
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`start on ${hostId} still pending after 20 s`)), 20_000)));
    try {
      const sys = await Promise.race([startSystem(mode, fake, r, hostId, { worker: { hostId, ...worker } }), limit]);
      started.push(sys);
      return sys;
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    const first = await startOrFail(host, "all");
    // An operator's second `jitrunner worker` with the same id: it says why, and exits 1.
    const config = writeOperatorConfig(fake, { redis: { url: r.url, prefix: r.prefix }, server: { host: "127.0.0.1", port: 0 }, worker, pools: [fakeRunnerPool(fake)] });
    const second = runJitrunner(["worker", "--config", config], { JITRUNNER_HOST_ID: host });
    const code = await Promise.race([once(second.child, "exit").then(([c]) => c as number | null), sleep(20_000, "still running", { ref: false })]);
    await second.stop();
    assert.equal(code, 1, second.output().slice(-2000));
    assert.match(second.output(), new RegExp(`jitrunner: another worker process is serving host "${host}" .*: give each worker its own worker.hostId`));
    assert.ok((await fetch(`${first.url}/readyz`)).ok, "the first worker serves on, untroubled");

    // A process killed without stopping leaves its hold to expire: the next one waits it out.
    await new HostStore(conn, r.prefix).hold(killedHost, "killed-process", 2_000);
    const next = await startOrFail(killedHost);
    assert.match(next.logs(), /another worker process held this host at its last beat; waiting/);
    assert.match(next.logs(), /hold on this host lapsed; starting/);
    await next.close(); // it serves the same pool: the demand below is the first worker's alone

    // The host taken from a running worker (it stalled past its hold, and another took it).
    const holdKey = `${r.prefix}:host-held-by:${host}`;
    await conn.set(holdKey, "intruder", "PX", 60_000);
    const unready = await waitFor(async () => {
      const res = await fetch(`${first.url}/readyz`);
      return !res.ok && ((await res.json()) as { problems: string[] }).problems;
    }, 10_000, "the first worker unready once its host is taken");
    // A fixed reason only (/readyz needs no token): the host's name and the fix are in the log.
    assert.deepEqual(unready, ["worker: host held by another process"]);
    assert.match(first.logs(), /another worker process has taken this host; taking no demand, and leaving the host's containers and records alone/);
    // What the process holding the host launches is not this one's to judge: a container it has
    // created and not yet started would look left behind to this one's host loop.
    const theirs = await ourContainer(host, "jitrunner-default-theirs");
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // The demand is there to take; the worker's demand loop looks again each second while its
    // host is not its own, and its host loop (every 2 s) passes none meanwhile.
    await demandIn(r, `${job.id}-1`, "waiting", 10_000);
    const passed = await hostPasses(first, "ok");
    await sleep(5_000);
    assert.equal(await hostPasses(first, "ok"), passed, "no host loop pass while another process holds the host");
    assert.equal((await theirs.inspect()).State.Status, "created", "the other process's container left alone");
    assert.equal((await demandState(r, "default", `${job.id}-1`))?.state, "waiting", "the demand left waiting");
    assert.equal(callsTo(fake, JIT), 0, "no demand taken while another process holds the host");
    await conn.del(holdKey);
    await waitFor(async () => (await fetch(`${first.url}/readyz`)).ok, 10_000, "ready again once the host is free");
    assert.match(first.logs(), /holds its host again; taking demand/);
    // The host its own again, a container nobody tracks is a leftover of its host: removed.
    await waitFor(async () => !(await containersOf(host)).some((c) => c.Id === theirs.id), 30_000, "the untracked container removed once the host is its own");
    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "the job served once the host is the worker's own again");

    // A clean stop frees the host at once: the next process starts without waiting.
    await first.close();
    const restarted = await startOrFail(host);
    assert.doesNotMatch(restarted.logs(), /held this host/);
  } finally {
    for (const sys of started) await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

function idleRecord(fake: FakeGitHub, name: string, host: string, runnerId: number, over: Partial<RunnerRecord> = {}): RunnerRecord {
  return {
    name, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId, demandId: `demand-${name}`, createdAt: Date.now(), instance: "a-stopped-process", ...over,
  };
}

test("a gone host whose idle runner GitHub fails to deregister stays known with the runner's record until a later pass deregisters it; then nothing of the host is left in Redis", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("sweep");
  const gone = uniqueHost("sweep-gone");
  const r = scopedRedis(redis, "sweep");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const name = "jitrunner-default-00sweep001";
  const { id: runnerId } = await registerRunner(fake, name);
  await runners.put(idleRecord(fake, name, gone, runnerId));
  await goneHost(hostStore, gone);
  // A 5xx on the first attempt and on each of the client's retries: the first pass's call fails
  // (and the second pass's, should it come before the look below: both wait a while).
  fake.inject({ route: DELETE, method: "DELETE", status: 502, times: 8 });
  const sys = await startSystem("worker", fake, r, host);
  try {
    await firstHostPass(sys);
    assert.ok(callsTo(fake, DELETE, "DELETE") >= 4, "the first pass tried to deregister the runner, and retried");
    assert.ok((await hostStore.list()).some((h) => h.id === gone), "the gone host is still known: the next pass looks at it again");
    assert.equal((await runners.get(name))?.host, gone, "the runner's record is kept");
    assert.deepEqual(await runners.listHost(gone), [name]);
    assert.ok(fake.runners().some((x) => x.id === runnerId), "the registration is still there");
    assert.ok((await hostPasses(sys, "error")) >= 1, "the pass counts as failed");
    assert.match(sys.logs(), new RegExp(`"runner":"${name}","goneHost":"${gone}","err":"[^"]*502[^"]*","msg":"deregistering runner of a gone host failed`));

    await waitFor(async () => !(await hostStore.list()).some((h) => h.id === gone), 60_000, "the gone host forgotten on a later pass");
    assert.ok(!fake.runners().some((x) => x.id === runnerId), "the registration deleted");
    assert.equal(await runners.get(name), undefined, "the record removed");
    assert.deepEqual(await conn.keys(`${r.prefix}:*${gone}*`), [], "no key of the gone host left");
    assert.equal(await conn.hexists(`${r.prefix}:hosts:lastbeat`, gone), 0);
    assert.equal(await conn.sismember(`${r.prefix}:runners`, name), 0, "the runner is out of the index of every runner");
    assert.match(sys.logs(), new RegExp(`"runner":"${name}","goneHost":"${gone}","msg":"runner of a gone host deregistered"`));
    await assertNoSecrets(fake, { logs: sys.logs(), sys: { url: sys.url, statusPage: false } });
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

/** A runner registered at the fake takes a job of its own there: GitHub then lists it busy. */
async function takeJob(fake: FakeGitHub, name: string, runner: { id: number; token: string }): Promise<void> {
  await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: name });
  const res = await fetch(`${fake.url}/_fake/runners/${runner.id}/acquire`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: runner.token }),
  });
  assert.equal(res.status, 200);
}

test("a gone host's runners whose id was never noted are deregistered by name: one idle at GitHub deleted and forgotten, one GitHub says is busy kept, and its host with it", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("noid");
  const gone = uniqueHost("noid-gone");
  const r = scopedRedis(redis, "noid");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  // Two runners whose worker died between their registration and the write of their id: their
  // records are still `registering`, with no runner id. One runs no job; GitHub handed the other
  // one a job (its container started on the gone host's engine; its webhooks were lost).
  const idle = "jitrunner-default-00noidle01";
  const busy = "jitrunner-default-00nobusy01";
  const idleRunner = await registerRunner(fake, idle);
  const busyRunner = await registerRunner(fake, busy);
  await takeJob(fake, busy, busyRunner);
  for (const name of [idle, busy]) await runners.put(idleRecord(fake, name, gone, 0, { state: "registering", runnerId: undefined }));
  await goneHost(hostStore, gone);
  const sys = await startSystem("worker", fake, r, host);
  try {
    await firstHostPass(sys);
    assert.ok(!fake.runners().some((x) => x.id === idleRunner.id), "the idle registration deleted, found by its name");
    assert.equal(await runners.get(idle), undefined, "its record removed");
    assert.match(sys.logs(), new RegExp(`"runner":"${idle}","goneHost":"${gone}","msg":"runner of a gone host deregistered"`));
    assert.ok(fake.runners().find((x) => x.id === busyRunner.id)?.busy, "the busy registration untouched");
    assert.equal((await runners.get(busy))?.state, "busy", "the record of the runner GitHub says is busy kept, and recorded busy");
    assert.ok((await hostStore.list()).some((h) => h.id === gone), "and its host with it");
    // Recorded busy, it is looked at once per goneHostBusyCheckSeconds between the fleet's
    // workers, not asked about again each pass.
    const passed = await hostPasses(sys, "ok");
    await waitFor(async () => (await hostPasses(sys, "ok")) >= passed + 2, 30_000, "two more host passes");
    assert.equal(fake.requests.filter((q) => q.route === DELETE && q.method === "DELETE" && q.status === 422).length, 1, "GitHub refused the busy one's deletion, asked once");
    assert.ok((await hostStore.list()).some((h) => h.id === gone), "the host still kept for its busy runner");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a demand whose earlier runner, its id never noted, was lost with its host deletes that registration by name before it launches another", { timeout: 120_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("noid-lease");
  // A host whose worker died mid-launch; its beat is gone and no sweep has reached it yet (the
  // fleet's list never had it), so the demand's lease, back in the queue, meets its runner first.
  const lost = uniqueHost("noid-lost");
  const r = scopedRedis(redis, "noid-lease");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  let sys: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    fake.holdWebhooks();
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // The runner the dead worker registered for the job's demand: at GitHub, and recorded with no id.
    const earlier = "jitrunner-default-00nolost01";
    const { id: earlierId } = await registerRunner(fake, earlier);
    await runners.put(idleRecord(fake, earlier, lost, 0, { state: "registering", runnerId: undefined, demandId: `${job.id}-1` }));
    sys = await startSystem("all", fake, r, host);
    const system = sys;
    const queued = fake.heldWebhooks().find((h) => h.jobId === job.id && h.action === "queued");
    assert.ok(queued);
    fake.holdWebhooks(false);
    assert.deepEqual(await fake.sendHeld(queued.id), [202]);
    const lostLine = new RegExp(`"runner":"${earlier}","runnerHost":"${lost}","msg":"runner lost with its host; launching another"`);
    await waitFor(() => lostLine.test(system.logs()), 30_000, "the earlier runner found lost with its host");
    assert.ok(!fake.runners().some((x) => x.id === earlierId), "its registration deleted, found by its name");
    assert.equal(await runners.get(earlier), undefined, "its record removed");
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 60_000, "the job completed by another runner");
    assert.equal(done.conclusion, "success");
    assert.notEqual(done.runner_name, earlier);
    assert.equal(callsTo(fake, JIT), 2, "the earlier registration and the new runner's");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "the new runner removed");
  } catch (err) {
    if (sys) writeLogTail("the system", sys.logs());
    throw err;
  } finally {
    await sys?.close();
    await fake.close();
    conn.disconnect();
  }
});

test("the host loop handles each item on its own: a container the engine refuses to remove stops neither the unused volume, the record without a container nor the gone host after it, and goes on a later pass; a container whose record is gone leaves its demand served", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("items");
  const gone = uniqueHost("items-gone");
  const r = scopedRedis(redis, "items");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  const proxy = await startDockerProxy();
  // A stopped container of ours on this host with no record: the engine will not remove it (yet).
  const stuckName = "jitrunner-default-00items001";
  const stuck = await ourContainer(host, stuckName);
  proxy.refuseRemoval.add(stuck.id);
  // A volume of ours that no container uses.
  const volume = `jitrunner-test-${host}-unused`;
  await docker.createVolume({ Name: volume, Labels: { [LABEL.managedBy]: MANAGED_BY, [LABEL.host]: host } });
  // A registered runner's record of this host with no container, left by a stopped worker process.
  const orphan = "jitrunner-default-00items002";
  const { id: orphanId } = await registerRunner(fake, orphan);
  await runners.put(idleRecord(fake, orphan, host, orphanId));
  // A registered idle runner of a gone host.
  const stranded = "jitrunner-default-00items003";
  const { id: strandedId } = await registerRunner(fake, stranded);
  await runners.put(idleRecord(fake, stranded, gone, strandedId));
  await goneHost(hostStore, gone);
  // A stopped runner whose teardown removed its record (its demand served) after the host loop
  // listed its container: left, here, with no record and its demand's claim naming it.
  const served = "jitrunner-default-00items004";
  const servedRecord = idleRecord(fake, served, host, 1, { demandId: "424242-1" });
  await runners.put(servedRecord);
  await runners.remove(servedRecord, true);
  await docker.createContainer({
    Image: RUNNER_IMAGE,
    name: `${served}-${host}`,
    Labels: runnerLabels({ pool: "default", host, runnerName: served, demandId: servedRecord.demandId }),
    HostConfig: { NetworkMode: "none" },
  });
  const sys = await startSystem("worker", fake, r, host, {
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, docker: { socketPath: proxy.socketPath } },
  });
  try {
    // The worker's first pass: everything but the stuck container is handled.
    await firstHostPass(sys);
    assert.equal((await containersOf(host)).length, 1, "the container the engine refused is still there");
    assert.equal(await docker.getVolume(volume).inspect().then(() => true, () => false), false, "the unused volume removed");
    assert.equal(await runners.get(orphan), undefined, "the record without a container torn down");
    assert.ok(!fake.runners().some((x) => x.id === orphanId), "and its registration deleted");
    assert.ok(!(await hostStore.list()).some((h) => h.id === gone), "the gone host forgotten");
    assert.ok(!fake.runners().some((x) => x.id === strandedId), "and its runner deregistered");
    assert.deepEqual(await runners.findByDemand(servedRecord.demandId), { name: served, record: undefined }, "the container with no record removed, its demand still served");
    const failLine = new RegExp(`"runner":"${stuckName}","container":"${stuck.id.slice(0, 12)}","err":"[^"]*device or resource busy[^"]*","msg":"reconciling container failed`);
    const logged = sys.logs().split("\n").filter((l) => failLine.test(l)).length;
    const failedPasses = await hostPasses(sys, "error");
    assert.ok(logged >= 1 && logged <= failedPasses, `the container's failure logged once per pass (${logged} lines, ${failedPasses} failed passes)`);
    assert.match(sys.logs(), /host reconcile failed: 1 item failed; first: reconciling container/);

    proxy.refuseRemoval.delete(stuck.id);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "the container removed on a later pass");
    await waitFor(async () => (await hostPasses(sys, "ok")) >= 1, 30_000, "a pass with nothing failed");
  } finally {
    await sys.close();
    await proxy.close();
    await fake.close();
    conn.disconnect();
  }
});
