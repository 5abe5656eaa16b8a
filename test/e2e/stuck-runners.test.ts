/**
 * Runners that never do their part, for real (DinD runner containers, the fake GitHub, Redis):
 * one that never comes online is removed at the pool's start timeout and its demand retried (GitHub
 * failing the look at it or the deletion then, it is tried again, not left to the idle timeout); a
 * spare runner, launched for a job cancelled before it could take it, is reaped at the idle
 * timeout and its demand completed without another launch; one that hangs after its job, its
 * `completed` webhook lost, is removed once the deliveries loop has GitHub send that webhook again,
 * or, with no redelivery, once GitHub's runner list no longer names it and GitHub, asked about it,
 * no longer knows it (left alone while it runs its job, even by lists that miss it). Nothing is
 * left behind either way.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import type { TestRedis } from "../helpers/redis.ts";
import { callsTo, containersOf, demandIn, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const { redis, hosts } = workersForFile();

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
    // The first registration takes 3 s: a launch under way long enough to be seen.
    fake.inject({ route: JIT, method: "POST", delayMs: 3000, times: 1 });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // While a runner's launch is under way (registering, its container created and started),
    // /metrics says for how long (JitrunnerLaunchStuck's measure).
    const startingFor = async () => {
      const m = /^jitrunner_runner_starting_seconds\{pool="default",host="([^"]+)"\} (\S+)$/m.exec(await (await fetch(`${sys.url}/metrics`)).text());
      return m && m[1] === host ? Number(m[2]) : undefined;
    };
    await waitFor(async () => ((await startingFor()) ?? 0) >= 1, 30_000, "a runner starting for a second or more, on /metrics");
    const failed = await demandIn(r, `${job.id}-1`, "failed", 90_000);
    assert.equal(failed.attempts, 2, "retried once, then given up (launchAttempts: 2)");
    assert.equal(callsTo(fake, JIT), 2, "one registration per attempt");
    assert.ok(callsTo(fake, RUNNER, "GET") >= 2, "GitHub was asked once per runner whether it was online");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "no container left");
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal(await startingFor(), 0, "none starting now");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_launch_failures_total\{pool="default",reason="E_RUNNER_NEVER_ONLINE"\} 2/);
    assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="start_timeout"\} 2/);
    assert.match(sys.logs(), /runner never came online; removing it/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

for (const [step, method, said] of [
  ["look at it", "GET", /asking GitHub whether the runner came online failed at the start timeout; asking again in 30 s/],
  ["deletion of its registration", "DELETE", /deleting runner registration failed/],
] as const) {
  test(`a runner that never comes online, GitHub failing the start timeout's ${step}: tried again and removed at the start timeout, not the idle timeout`, async () => {
    const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    const tag = `never-online-${method.toLowerCase()}-fails`;
    const host = uniqueHost(tag);
    const r = scopedRedis(redis, tag);
    hosts.push(host);
    const pool = fakeRunnerPool(fake, {
      startTimeoutSeconds: 4,
      idleTimeoutSeconds: 120,
      env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", RUNNER_CMD: "sleep 3600" },
    });
    const sys = await startSystem("all", fake, r, host, {
      pools: [pool],
      worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, launchAttempts: 1 },
    });
    try {
      // The first call fails through the client's retries (four attempts, 14 s); the next is answered.
      fake.inject({ route: RUNNER, method, status: 502, times: 4 });
      const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
      // 4 s start timeout, 14 s of retries, 30 s to the next try: about 50 s, where the idle
      // timeout would end it at 120 s.
      const failed = await demandIn(r, `${job.id}-1`, "failed", 90_000);
      assert.equal(failed.attempts, 1);
      assert.ok(callsTo(fake, RUNNER, method) >= 5, "the failed call's four attempts, then another");
      await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "no container left");
      assert.equal(fake.runners().length, 0, "no registration left");
      const metrics = await (await fetch(`${sys.url}/metrics`)).text();
      assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="start_timeout"\} 1/);
      assert.doesNotMatch(metrics, /reason="idle_timeout"/);
      assert.match(sys.logs(), said);
      assert.match(sys.logs(), /runner never came online; removing it/);
    } finally {
      await sys.close();
      await fake.close();
    }
  });
}

test("a job cancelled before its runner could take it: the spare runner is reaped at the idle timeout", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("spare");
  const r = scopedRedis(redis, "spare");
  hosts.push(host);
  // No still-queued check: the worker launches for the job whatever happened to it since.
  const sys = await startSystem("all", fake, r, host, {
    // Long enough for the runner to boot and come online first on a loaded machine (two engine
    // test files run at once): its idle clock starts when its container has started.
    pools: [fakeRunnerPool(fake, { idleTimeoutSeconds: 12 })],
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
    const done = await demandIn(r, `${job.id}-1`, "completed", 60_000);
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

/**
 * A system whose runners do their job (`jobSeconds` long) and report it, then hang: the container
 * never exits by itself. The leader's runner list runs every 2 s.
 */
function startWithHangingRunner(
  fake: FakeGitHub,
  r: TestRedis,
  host: string,
  jobSeconds: number,
  reconcile: { orphanGraceSeconds: number; deliveriesIntervalSeconds: number; deliveriesRetrySeconds?: number },
  startTimeoutSeconds = 300,
) {
  const script = join(dirname(fake.socketPath), "hang-after-job.sh");
  writeFileSync(script, "/home/runner/run.sh\nsleep 3600\n", { mode: 0o755 });
  const pool = fakeRunnerPool(fake, {
    startTimeoutSeconds,
    env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: String(jobSeconds), RUNNER_CMD: "sh /fake-github/hang-after-job.sh" },
  });
  return startSystem("all", fake, r, host, {
    pools: [pool],
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 3, reconcileIntervalSeconds: 2 },
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 2, queuedIntervalSeconds: 3600, ...reconcile },
  });
}

test("a runner that hangs after its job, its completed webhook lost: removed once the deliveries loop has it redelivered", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("hung-after-job");
  const r = scopedRedis(redis, "hung-after-job");
  hosts.push(host);
  // A long grace: the runner list's own look at the busy runner (next test) comes after the redelivery.
  // A failed redelivery is asked for again 2 s later, not 60: on a loaded machine a pass may ask for
  // one before the test has pointed the webhook back at jitrunner, and that redelivery fails too.
  const sys = await startWithHangingRunner(fake, r, host, 4, { orphanGraceSeconds: 120, deliveriesIntervalSeconds: 2, deliveriesRetrySeconds: 2 });
  const completedDeliveries = (jobId: number) => fake.deliveries.filter((d) => d.jobId === jobId && d.action === "completed");
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "in_progress" && d.status === 202), 60_000, "in_progress delivered");
    fake.setWebhookUrl("http://127.0.0.1:9/lost"); // the job's `completed` goes nowhere
    await waitFor(() => completedDeliveries(job.id).some((d) => d.status === 0), 30_000, "completed delivery failed");
    fake.setWebhookUrl(`${sys.url}/webhooks/github`);
    const [container] = await containersOf(host);
    assert.equal(container?.State, "running", "the runner hangs after reporting its job");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "completed");

    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "hung container removed");
    assert.ok(completedDeliveries(job.id).some((d) => d.redelivery && d.status === 202), "completed redelivered and accepted");
    const done = await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(done.result, "completed_grace_expired", "removed at the end of the grace after completed");
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal(callsTo(fake, JIT), 1, "one runner for one job");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.match(metrics, /jitrunner_runner_removals_total\{pool="default",reason="completed_grace_expired"\} 1/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a runner that hangs after its job, its completed webhook lost for good: marked completed once GitHub no longer lists it", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("hung-unredelivered");
  const r = scopedRedis(redis, "hung-unredelivered");
  hosts.push(host);
  // No redelivery (the deliveries loop is as good as off): only the runner list can tell.
  const sys = await startWithHangingRunner(fake, r, host, 14, { orphanGraceSeconds: 3, deliveriesIntervalSeconds: 3600 });
  const ended = async () => {
    const text = await (await fetch(`${sys.url}/metrics`)).text();
    return /jitrunner_reconcile_actions_total\{loop="github-runners",action="busy_runner_ended"\} 1/.test(text);
  };
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "in_progress" && d.status === 202), 60_000, "in_progress delivered");
    fake.setWebhookUrl("http://127.0.0.1:9/lost"); // the job's `completed` goes nowhere

    // While the job runs: three lists that miss the runner (as a list read page by page can), past
    // the grace, then one that names it. GitHub, asked about the runner itself, still knows it: kept.
    const LIST = "/repos/{owner}/{repo}/actions/runners";
    // Up to 6 such lists, not exactly 3: three span the grace of 3 s at the 2 s interval, but a
    // pass that began before the runner was marked busy (slow on a loaded machine) can take the
    // first and skip the runner, leaving two, 2 s apart (seen once). Those left after the look
    // only bring more looks: GitHub still knows the runner.
    const looks = callsTo(fake, RUNNER, "GET");
    fake.inject({ route: LIST, method: "GET", status: 200, body: { total_count: 0, runners: [] }, times: 6 });
    await waitFor(() => callsTo(fake, RUNNER, "GET") > looks, 30_000, "asked about the runner it missed in the lists");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "in_progress", "the job still runs (FAKE_JOB_SECONDS is long enough)");
    assert.equal(await ended(), false, "a runner GitHub still knows is not marked");
    assert.equal((await containersOf(host))[0]?.State, "running");

    await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "completed" && d.status === 0), 60_000, "completed delivery failed");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "hung container removed");
    assert.ok(await ended(), "marked completed by the runner list");
    assert.ok(!fake.deliveries.some((d) => d.jobId === job.id && d.redelivery), "no redelivery: the webhook stayed lost");
    const done = await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(done.result, "completed_grace_expired", "removed at the end of the grace, as after a completed webhook");
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.equal(callsTo(fake, JIT), 1, "one runner for one job");
    assert.match(sys.logs(), /runner recorded busy is no longer registered at GitHub/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a runner that hangs after its job, both its in_progress and completed webhooks lost: GitHub no longer knows it at the start timeout, so it ran a job: removed after the grace, no second runner", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("hung-unseen");
  const r = scopedRedis(redis, "hung-unseen");
  hosts.push(host);
  // No redelivery, and the record never says busy: only the start timeout's look at GitHub can tell.
  const sys = await startWithHangingRunner(fake, r, host, 4, { orphanGraceSeconds: 3, deliveriesIntervalSeconds: 3600 }, 15);
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.deliveries.some((d) => d.jobId === job.id && d.action === "queued" && d.status === 202), 30_000, "queued delivered");
    fake.setWebhookUrl("http://127.0.0.1:9/lost"); // in_progress and completed go nowhere
    await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 60_000, "the job completed");
    assert.equal((await containersOf(host))[0]?.State, "running", "the runner hangs after its job");
    assert.ok(!fake.deliveries.some((d) => d.jobId === job.id && d.action !== "queued" && d.status === 202), "no in_progress or completed reached the server");

    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "hung container removed");
    const done = await demandIn(r, `${job.id}-1`, "completed", 30_000);
    assert.equal(done.result, "completed_grace_expired", "ended as after a completed webhook");
    assert.equal(callsTo(fake, JIT), 1, "one runner for one job: the demand counts as served");
    assert.equal(fake.runners().length, 0, "no registration left");
    assert.match(sys.logs(), /registration gone at the start timeout: it ran a job/);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.doesNotMatch(metrics, /jitrunner_launch_failures_total\{pool="default",reason="E_RUNNER_NEVER_ONLINE"\} [1-9]/);
  } finally {
    await sys.close();
    await fake.close();
  }
});
