/**
 * The leader's GitHub loops, for real (fake GitHub, real Redis, real Docker engine, real DinD
 * runners): registrations left behind are deleted and nothing else is, and a job whose `queued`
 * webhook was lost still gets a runner and finishes, recovered either from the repository's
 * queued runs or through the App's failed-deliveries list.
 */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub, type DeliveryRecord, type FakeJob } from "../fakes/github/index.ts";
import { startReceiver } from "../fakes/github/receiver.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { testConfig } from "../helpers/config.ts";
import { callsTo, containersOf, demandIn, demandState, fakeRunnerPool, registerRunner, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { githubDeliveriesLoop } from "../../src/reconcile/github-deliveries.ts";
import { githubRunnersLoop } from "../../src/reconcile/github-runners.ts";
import { passBudget } from "../../src/reconcile/loops.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { RedeliveryLog } from "../../src/state/redeliveries.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { githubFor } from "../helpers/github.ts";
import { activeRepos, queuedLoop } from "../helpers/active-repos.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const DEAD_URL = "http://127.0.0.1:9/";
const { redis, hosts } = workersForFile();
const ATTEMPTS = "/app/hook/deliveries/{delivery_id}/attempts";
const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";

/** The real GitHub client, talking to the fake; no Redis (tokens and write budget in process). */
function octokit(fake: FakeGitHub, writes?: { max: number; windowMs: number }): OctokitGitHub {
  return githubFor(fake, writes && { writes });
}

/** acme/app as the only recently active repository (the real ActiveRepos, under `prefix`). */
const activeApp = (fake: FakeGitHub, conn: ReturnType<typeof redisConnection>, prefix: string) => activeRepos(conn, prefix, [{ installationId: fake.installationId, owner: "acme", repo: "app" }]);

async function metricsOf(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** The value of one sample in Prometheus text, 0 when absent. */
function sample(text: string, name: string, labels: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

function worker(host: string, over: Record<string, unknown> = {}) {
  return { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, ...over };
}

test("registrations of ours with no record are deleted after the grace period; others', recorded and busy ones are kept", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("orphans");
  const r = scopedRedis(redis, "orphans");
  hosts.push(host);
  const GRACE_S = 4;
  // The worker serves only `spare`, so the job below stays queued for the fake runner to take.
  const sys = await startSystem("all", fake, r, host, {
    worker: worker(host, { pools: ["spare"] }),
    pools: [
      fakeRunnerPool(fake),
      fakeRunnerPool(fake, { name: "orgpool", labels: ["org-only"], scope: "organization" }),
      fakeRunnerPool(fake, { name: "spare", labels: ["spare-only"] }),
    ],
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 1, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 0, orphanGraceSeconds: GRACE_S },
  });
  const conn = redisConnection(r.url);
  try {
    // A real webhook makes acme/app a recently active repository; another, a job the organization
    // pool takes, makes acme an organization whose runners are listed (only the owners organization
    // pools served are: a user's /orgs/{owner} is a 404).
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const orgJob = await fake.queueJob({ owner: "acme", repo: "app", labels: ["org-only"] });
    await fake.webhooksIdle();
    assert.equal(fake.deliveries.find((d) => d.jobId === job.id)?.status, 202);
    assert.equal(fake.deliveries.find((d) => d.jobId === orgJob.id)?.status, 202);

    const gh = new FakeGitHubClient(fake);
    const register = async (path: string, name: string, labels = ["self-hosted", "linux", "x64"]) => {
      const res = await gh.call("POST", `${path}/actions/runners/generate-jitconfig`, { body: { name, runner_group_id: 1, labels } });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const body = res.body as { runner: { id: number }; encoded_jit_config: string };
      return { id: body.runner.id, jit: JSON.parse(Buffer.from(body.encoded_jit_config, "base64").toString()) as { token: string } };
    };
    const registeredAt = Date.now();
    const stale = await register("/repos/acme/app", "jitrunner-default-00000000aa");
    const staleOrg = await register("/orgs/acme", "jitrunner-orgpool-00000000bb", ["org-only"]);
    /** When GitHub got a request for `path` (the first, or the first answered `status`). */
    const sentAt = (method: string, path: string, status?: number) => fake.requests.find((q) => q.method === method && q.path === path && (status === undefined || q.status === status))?.at;
    const notOurs = await register("/repos/acme/app", "other-ci-runner-1");
    const recorded = await register("/repos/acme/app", "jitrunner-default-00000000cc");
    const busy = await register("/repos/acme/app", "jitrunner-default-00000000dd");
    await new RunnerStore(conn, r.prefix).put({
      name: "jitrunner-default-00000000cc",
      pool: "default",
      host: "elsewhere",
      state: "idle",
      installationId: fake.installationId,
      owner: "acme",
      repo: "app",
      runnerId: recorded.id,
      demandId: "1-1",
      createdAt: Date.now(),
    });
    // The "busy" runner takes the queued job through the runner protocol, as a real runner would.
    const acquired = await fetch(`${fake.url}/_fake/runners/${busy.id}/acquire`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: busy.jit.token }),
    });
    assert.equal(acquired.status, 200);
    // A 422 for another reason than busy (GitHub, asked then, says the runner is not busy): that
    // deletion fails, and the next pass deletes the runner.
    fake.inject({ route: "/repos/{owner}/{repo}/actions/runners/{runner_id}", method: "DELETE", status: 422, times: 1 });

    const ids = () => new Set(fake.runners().map((x) => x.id));
    await new Promise((res) => setTimeout(res, (GRACE_S - 1.5) * 1000 - (Date.now() - registeredAt)));
    assert.ok(ids().has(stale.id) && ids().has(staleOrg.id), "nothing is deleted before the grace period");

    await waitFor(() => !ids().has(stale.id) && !ids().has(staleOrg.id), 20_000, "stale registrations deleted");
    // When GitHub got each deletion, against when it got the registration (the test's own view of
    // the time, polled, would only ever come later).
    for (const [path, id] of [["/repos/acme/app", stale.id], ["/orgs/acme", staleOrg.id]] as const) {
      const registered = sentAt("POST", `${path}/actions/runners/generate-jitconfig`)!;
      const deleted = sentAt("DELETE", `${path}/actions/runners/${id}`, 204);
      assert.ok(deleted !== undefined, `${path}: deleted through the API`);
      assert.ok(deleted - registered >= GRACE_S * 1000, `${path}: deleted ${deleted - registered} ms after it was registered: not before the ${GRACE_S} s grace`);
    }
    assert.ok(ids().has(notOurs.id), "a runner without our prefix is never touched");
    assert.ok(ids().has(recorded.id), "a runner with a record is kept");
    assert.ok(ids().has(busy.id), "a busy runner is kept");

    const text = await metricsOf(sys.url);
    assert.equal(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-runners",action="runner_deleted"'), 2);
    assert.ok(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-runners",action="runner_busy_kept"') >= 1, "the listed-busy runner");
    assert.ok(sample(text, "jitrunner_reconcile_runs_total", 'loop="github-runners",outcome="ok"') >= 3);
    assert.equal(sample(text, "jitrunner_reconcile_runs_total", 'loop="github-runners",outcome="error"'), 1, "the pass whose deletion got the 422");
    assert.equal(sample(text, "jitrunner_leader", `host="${host}"`), 1);
    assert.equal(callsTo(fake, JIT) + callsTo(fake, "/orgs/{org}/actions/runners/generate-jitconfig"), 5, "the reconciler registered nothing");
    assert.match(sys.logs(), /deleted a registration of ours that has no runner record/);
  } finally {
    conn.disconnect();
    await sys.close();
    await fake.close();
  }
});

test("a lost queued webhook is recovered from the repository's queued runs, and the job completes on a real runner", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("lostq");
  const r = scopedRedis(redis, "lostq");
  hosts.push(host);
  const sys = await startSystem("all", fake, r, host, {
    worker: worker(host),
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 1, deliveriesIntervalSeconds: 0 },
  });
  try {
    // An earlier job makes the repository recently active, and shows the normal path works.
    const first = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === first.id && j.status === "completed"), 60_000, "first job completed");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "first runner removed");

    fake.setWebhookUrl(DEAD_URL);
    const lost = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    fake.setWebhookUrl(`${sys.url}/webhooks/github`);
    assert.deepEqual(fake.deliveries.filter((d) => d.jobId === lost.id).map((d) => [d.action, d.status]), [["queued", 0]]);

    await waitFor(() => fake.jobs().find((j) => j.id === lost.id && j.status === "completed"), 60_000, "lost job completed");
    assert.equal(fake.jobs().find((j) => j.id === lost.id)?.conclusion, "success");
    assert.match(fake.jobs().find((j) => j.id === lost.id)?.runner_name ?? "", /^jitrunner-default-/);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "second runner removed");
    await waitFor(() => fake.runners().length === 0, 10_000, "no registration left");
    assert.equal(callsTo(fake, JIT), 2, "one runner per job, none extra");
    assert.deepEqual(
      fake.deliveries.filter((d) => d.jobId === lost.id && d.action === "queued").map((d) => d.status),
      [0],
      "the queued webhook never arrived",
    );
    const text = await metricsOf(sys.url);
    assert.equal(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"'), 1);
    assert.match(sys.logs(), /recovered a queued job that had no demand/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("lost queued webhooks in more runs than a pass may list: every job served over several passes, within the budget", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("lostq-budget");
  const r = scopedRedis(redis, "lostq-budget");
  hosts.push(host);
  const RUN_JOBS = "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs";
  const sys = await startSystem("all", fake, r, host, {
    worker: worker(host),
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 1, queuedMaxRunsPerPass: 1, deliveriesIntervalSeconds: 0 },
  });
  try {
    const first = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await waitFor(() => fake.jobs().find((j) => j.id === first.id && j.status === "completed"), 60_000, "first job completed");

    fake.setWebhookUrl(DEAD_URL);
    const lost: FakeJob[] = [];
    for (let i = 0; i < 3; i++) lost.push(await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] }));
    fake.setWebhookUrl(`${sys.url}/webhooks/github`);
    await waitFor(() => lost.every((l) => fake.jobs().find((j) => j.id === l.id)?.status === "completed"), 120_000, "every lost job completed");
    assert.equal(new Set(lost.map((l) => l.run_id)).size, 3, "three runs");

    const text = await metricsOf(sys.url);
    const passes = ["ok", "error"].reduce((n, o) => n + sample(text, "jitrunner_reconcile_runs_total", `loop="github-queued",outcome="${o}"`), 0);
    const listed = callsTo(fake, RUN_JOBS);
    assert.ok(listed <= passes, `at most one run's jobs listed per pass (${listed} listings in ${passes} passes)`);
    // The fake gives a runner the oldest queued job: the runner recovered for the newest lost job
    // runs the oldest, whose demand was never added; the newest job's demand, done while its job
    // still waits, is then added again (after RENEW_AFTER_MS: a runner recovered for another job
    // meanwhile, still booting, may take it first, and then nothing is added). One runner per
    // lost job either way.
    const action = (a: string) => sample(text, "jitrunner_reconcile_actions_total", `loop="github-queued",action="${a}"`);
    assert.equal(action("demand_recovered") + action("demand_renewed"), 3, `recovered ${action("demand_recovered")}, renewed ${action("demand_renewed")}`);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "runners removed");
    assert.equal(callsTo(fake, JIT), 4, "one runner per job, none extra");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a job whose launch failed for good (GitHub refused its registration) gets fresh attempts later, and completes", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("failed-retry");
  const r = scopedRedis(redis, "failed-retry");
  hosts.push(host);
  const RETRY_S = 4;
  const sys = await startSystem("all", fake, r, host, {
    worker: worker(host, { launchAttempts: 1 }),
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 1, deliveriesIntervalSeconds: 0, retryFailedDemandSeconds: RETRY_S },
  });
  try {
    // A 422 is GitHub's refusal, not its absence (a 5xx or no answer hands the demand back with no
    // attempt spent, for an hour): tried once, and the one launch attempt spent.
    fake.inject({ route: JIT, method: "POST", status: 422, times: 1 });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "failed", 60_000);
    const failedSeen = Date.now();
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued");

    await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "the job completed");
    assert.equal(fake.jobs().find((j) => j.id === job.id)?.conclusion, "success");
    const posts = fake.requests.filter((q) => q.route === JIT && q.method === "POST");
    assert.deepEqual(posts.map((q) => q.status), [422, 201], "the refusal, then one registration");
    // Observed failed up to a poll after it failed: the retry waited out most of its delay at least.
    assert.ok(posts.at(-1)!.at - failedSeen >= (RETRY_S - 1) * 1000, `fresh attempts ${posts.at(-1)!.at - failedSeen} ms after the failure was seen`);
    const text = await metricsOf(sys.url);
    assert.equal(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_retried"'), 1);
    assert.match(sys.logs(), /launches all failed: its demand added again/);
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "runner removed");
    await waitFor(() => fake.runners().length === 0, 10_000, "no registration left");
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("failed demand is given fresh attempts at most 10 jobs a pass: a pool that cannot launch at all costs a bounded number of registrations", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("retry-cap");
  const r = scopedRedis(redis, "retry-cap");
  hosts.push(host);
  const JOBS = 12;
  const sys = await startSystem("all", fake, r, host, {
    // Every launch fails at its image check (no such image on the engine), and one failure spends the demand.
    pools: [fakeRunnerPool(fake, { image: "jitrunner-no-such-image:never" })],
    worker: worker(host, { launchAttempts: 1 }),
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 3, deliveriesIntervalSeconds: 0, retryFailedDemandSeconds: 1 },
  });
  try {
    const jobs = await Promise.all(Array.from({ length: JOBS }, () => fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] })));
    for (const job of jobs) await demandIn(r, `${job.id}-1`, "failed", 60_000);
    // Each pass, from the metrics: how many demands it gave fresh attempts.
    const perPass: number[] = [];
    let last: { passes: number; retried: number } | undefined;
    await waitFor(
      async () => {
        const text = await metricsOf(sys.url);
        const now = {
          passes: sample(text, "jitrunner_reconcile_runs_total", 'loop="github-queued",outcome="ok"') + sample(text, "jitrunner_reconcile_runs_total", 'loop="github-queued",outcome="error"'),
          retried: sample(text, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_retried"'),
        };
        if (last && now.passes > last.passes) perPass.push(now.retried - last.retried);
        else if (last && now.retried !== last.retried) return false; // mid-pass: look again
        last = now;
        return perPass.length >= 3 && now.retried >= JOBS;
      },
      60_000,
      "three passes after the failures, every job retried",
    );
    assert.ok(perPass.every((n) => n <= 10), `retries per pass ${perPass.join(", ")}`);
    assert.ok(perPass.includes(10), `some pass met the cap with ${JOBS} failed demands waiting: ${perPass.join(", ")}`);
    const retriedJobs = new Set([...sys.logs().matchAll(/"jobId":(\d+)[^\n]*launches all failed: its demand added again/g)].map((m) => Number(m[1])));
    assert.equal(retriedJobs.size, JOBS, "no job left out: the ones that failed longest ago go first");
    // Launches go on while the pool cannot launch: stopped, the worker leaves none of them behind.
    await sys.close();
    assert.equal(fake.runners().length, 0, "every registration of a failed launch deleted");
    assert.equal((await containersOf(host)).length, 0);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("a lost queued webhook is redelivered from the App's failed deliveries, and the job completes on a real runner", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("redeliver");
  const r = scopedRedis(redis, "redeliver");
  hosts.push(host);
  // The queued-runs loop runs once at election (before the job exists), then not for an hour.
  const sys = await startSystem("all", fake, r, host, {
    worker: worker(host),
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 1 },
  });
  try {
    fake.setWebhookUrl(DEAD_URL);
    const lost = await fake.queueJob({ owner: "acme", repo: "other", labels: ["self-hosted"] });
    fake.setWebhookUrl(`${sys.url}/webhooks/github`);

    await waitFor(() => fake.jobs().find((j) => j.id === lost.id && j.status === "completed"), 60_000, "lost job completed");
    assert.equal(fake.jobs().find((j) => j.id === lost.id)?.conclusion, "success");
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "runner removed");
    await waitFor(() => fake.runners().length === 0, 10_000, "no registration left");
    const queued = fake.deliveries.filter((d) => d.jobId === lost.id && d.action === "queued");
    assert.deepEqual(queued.map((d) => [d.status, d.redelivery]), [[0, false], [202, true]], "one failed delivery, one redelivery");
    assert.equal(queued[0]?.id, queued[1]?.id, "the redelivery carries the original delivery id");
    assert.equal(callsTo(fake, JIT), 1);
    assert.equal(callsTo(fake, "/app/hook/deliveries/{delivery_id}/attempts", "POST"), 1, "asked once, though the loop ran many times");
    const text = await metricsOf(sys.url);
    assert.equal(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-deliveries",action="delivery_redelivered"'), 1);
    assert.equal(sample(text, "jitrunner_reconcile_actions_total", 'loop="github-queued",action="demand_recovered"'), 0);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("more failed deliveries than one pass may redeliver, hours apart: every one redelivered once over several passes, none twice", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("redeliver-backlog");
  const r = scopedRedis(redis, "redeliver-backlog");
  hosts.push(host);
  const LOST = 7;
  try {
    // An outage before jitrunner started: queued deliveries nobody answered, for jobs no pool
    // serves (no runner needed to count redeliveries). GitHub stamps a delivery when it is made;
    // these are dated 11 minutes apart, the newest 11 minutes ago, beyond the overlap a pass re-reads.
    fake.setWebhookUrl(DEAD_URL);
    for (let i = 0; i < LOST; i++) await fake.queueJob({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"] });
    const failed = fake.deliveries.filter((d) => d.event === "workflow_job");
    assert.deepEqual(failed.map((d) => d.status), Array(LOST).fill(0));
    const now = Date.now();
    failed.forEach((d, i) => (d.deliveredAt = new Date(now - (LOST - i) * 11 * 60_000).toISOString().replace(/\.\d{3}Z$/, "Z")));

    const sys = await startSystem("all", fake, r, host, {
      worker: worker(host),
      reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 3600, queuedIntervalSeconds: 3600, deliveriesIntervalSeconds: 1, deliveriesMaxPerPass: 2 },
    });
    try {
      const passes = async () => sample(await metricsOf(sys.url), "jitrunner_reconcile_runs_total", 'loop="github-deliveries",outcome="ok"');
      await waitFor(() => failed.every((f) => fake.deliveries.some((d) => d.id === f.id && d.redelivery && d.status === 202)), 30_000, "every failed delivery redelivered");
      // A few passes more: none asks again.
      const done = await passes();
      await waitFor(async () => (await passes()) >= done + 3, 30_000, "three passes more");

      assert.equal(callsTo(fake, ATTEMPTS, "POST"), LOST, "one redelivery asked per failed delivery");
      for (const f of failed) {
        assert.deepEqual(
          fake.deliveries.filter((d) => d.id === f.id).map((d) => [d.status, d.redelivery]),
          [[0, false], [202, true]],
          `delivery ${f.id}: failed once, redelivered once`,
        );
      }
      const backlog = sys
        .logs()
        .split("\n")
        .filter((l) => l.includes("failed deliveries left for the next pass"))
        .map((l) => JSON.parse(l) as { redelivered: number; left: number });
      assert.ok(backlog.length >= 2, `the backlog took several passes (${backlog.length} passes left some)`);
      assert.ok(backlog.every((b) => b.redelivered <= 2 && b.left > 0), JSON.stringify(backlog));
    } finally {
      await sys.close();
    }
  } finally {
    await fake.close();
  }
});

/**
 * The real client sends a request GitHub answers with a 5xx 4 times (its 3 retries, 1, 4 and 9 s
 * apart) before it fails: a fault failing one redelivery request answers this many.
 */
const CLIENT_TRIES = 4;

/** The fake's path of the redelivery request of attempt `id`. */
const attemptsOf = (id: number): string => `/app/hook/deliveries/${id}/attempts`;

/** The fake's answers to the redelivery requests of attempt `id`, in order (a request's retries by the client included). */
function answers(fake: FakeGitHub, id: number): number[] {
  return fake.requests.filter((q) => q.method === "POST" && q.path === attemptsOf(id)).map((q) => q.status);
}

/**
 * The attempts jitrunner asked GitHub to redeliver, in the order it asked, from the fake's request
 * `from` on. A pass asks for an attempt once at most; the client's retries of a request are that
 * request: count one pass's with `from` (the length of `fake.requests` before it).
 */
function askedFor(fake: FakeGitHub, from = 0): number[] {
  return [...new Set(fake.requests.slice(from).filter((q) => q.method === "POST" && q.route === ATTEMPTS).map((q) => Number(q.path.split("/")[4])))];
}

/** A `queued` delivery GitHub attempted at `at` (ms) and got `status` for, of a job no pool serves. */
const past = (fake: FakeGitHub, status: number, at: number): DeliveryRecord =>
  fake.addPastDelivery({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"], status, deliveredAt: at });

/**
 * An outage's deliveries an hour ago, one every 30 s: 75 `queued` events, every fifth delivered
 * (202), the other 60 failed (returned, oldest first).
 */
function outageBacklog(fake: FakeGitHub): DeliveryRecord[] {
  const hourAgo = Date.now() - 3600_000;
  const failed: DeliveryRecord[] = [];
  for (let i = 0; i < 75; i++) {
    const d = past(fake, i % 5 === 4 ? 202 : 0, hourAgo + i * 30_000);
    if (d.status === 0) failed.push(d);
  }
  return failed;
}

test("a backlog deeper than the pages one pass reads: read on over several passes from where the last stopped, each failure redelivered once", async () => {
  // 5 a page (the fake's pages are that small, whatever the client's per_page of 100 asks), 10
  // pages a pass (maxPages): 60 failed events (and 15 delivered ones) from an outage an hour ago.
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, hookDeliveriesPageSize: 5 });
  const receiver = await startReceiver(WEBHOOK_SECRET);
  receiver.status = 202;
  const r = scopedRedis(redis, "redeliver-pages");
  const conn = redisConnection(r.url);
  // A write budget that does not pace 60 redeliveries (pacing is tested elsewhere).
  const gh = octokit(fake, { max: 1000, windowMs: 60_000 });
  try {
    const failed = outageBacklog(fake);
    fake.setWebhookUrl(receiver.url);
    // One whose redelivery request GitHub fails (a 502 to each of the client's tries): no try
    // counted, and the pass goes on with the others; it waits (an hour here, longer than this test)
    // before it is asked for again.
    const stuck = failed[30]!;
    // A pass a minute, on a clock of the test's; GitHub stamps each redelivery with it. (Passes a
    // few milliseconds apart would find every redelivery within the minute each pass reads again.)
    let offset = 0;
    const now = () => Date.now() + offset;
    const stamped = new Set<object>(fake.deliveries);
    const stamp = () => {
      for (const d of fake.deliveries) if (!stamped.has(d)) (stamped.add(d), (d.deliveredAt = new Date(now()).toISOString().replace(/\.\d{3}Z$/, "Z")));
    };
    fake.inject({ route: attemptsOf(stuck.attemptId), method: "POST", status: 502, times: CLIENT_TRIES });
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk, _enc, cb) => (lines.push(String(chunk)), cb()) });
    const log = new RedeliveryLog(conn, r.prefix);
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 1000,
      windowMs: 24 * 3600_000,
      maxPerPass: 20,
      maxPages: 10,
      retryBaseMs: 3600_000,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("info", sink),
      now,
    });
    const signal = new AbortController().signal;
    let errors = 0;
    /** Passes until one reads all the way down; how many. */
    const readAll = async (): Promise<number> => {
      for (let passes = 1; passes <= 30; passes++) {
        const ok = await loop.run(signal).then(
          () => true,
          () => (errors++, false),
        );
        await fake.webhooksIdle();
        stamp();
        offset += 60_000;
        if (ok && (await log.resume()) === undefined) return passes;
      }
      throw new Error("the read never got all the way down");
    };
    // 60 requests, 20 a pass.
    assert.ok((await readAll()) >= 3, "several passes");
    // The redeliveries are new deliveries on top: one more read over them asks for nothing.
    const asking = callsTo(fake, ATTEMPTS, "POST");
    await readAll();
    assert.equal(callsTo(fake, ATTEMPTS, "POST"), asking, "nothing asked for on the next read");

    for (const f of failed) {
      assert.deepEqual(answers(fake, f.attemptId), f === stuck ? Array(CLIENT_TRIES).fill(502) : [202], `event ${f.id}: asked for once`);
    }
    assert.deepEqual(askedFor(fake).sort((a, b) => a - b), failed.map((f) => f.attemptId), "nothing else asked for");
    const got = receiver.received.map((x) => String(x.headers["x-github-delivery"]));
    assert.deepEqual(got.sort(), failed.filter((f) => f !== stuck).map((f) => f.id).sort(), "each redelivered once, under its own delivery id");
    assert.ok(receiver.received.every((x) => x.signatureOk && x.payload.action === "queued"));
    assert.equal(errors, 1, "the pass whose request failed said so, after doing the rest");
    const waiting = await log.event(stuck.id);
    assert.deepEqual([waiting.tries, waiting.failures, waiting.gaveUp], [0, 1, false], "its tries all left");
    assert.ok(waiting.waitingUntil !== undefined, "it waits to be asked for again");
    assert.equal(await log.resume(), undefined, "the read finished");
    const newest = Math.max(...fake.deliveries.map((d) => Date.parse(d.deliveredAt)));
    assert.ok((await log.readUpTo()) >= newest - 1000, "the mark moved up to the newest delivery");
    const backlog = lines.map((l) => JSON.parse(l) as { msg: string; redelivered?: number }).filter((l) => l.msg === "failed deliveries left for the next pass");
    assert.ok(backlog.length >= 3 && backlog.every((b) => (b.redelivered ?? 99) <= 20), JSON.stringify(backlog));
  } finally {
    gh.close();
    conn.disconnect();
    await receiver.close();
    await fake.close();
  }
});

test("GitHub slower than a pass's time limit allows: each pass stops early with its marks moved, and the next goes on from there, each failure redelivered once", async () => {
  // 60 failed events (and 15 delivered ones) from an outage an hour ago, 5 a page: 15 pages, each
  // taking GitHub 600 ms, more than the whole 8-second limit of a pass; a redelivery request 200 ms.
  // Cut off at its limit, a pass asked for nothing and moved no marks, and the next read the same
  // pages again, cut off as well, for as long as GitHub stayed slow.
  const LIMIT_MS = 8000;
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, hookDeliveriesPageSize: 5 });
  const receiver = await startReceiver(WEBHOOK_SECRET);
  receiver.status = 202;
  const r = scopedRedis(redis, "redeliver-slow");
  const conn = redisConnection(r.url);
  const gh = octokit(fake, { max: 1000, windowMs: 60_000 });
  try {
    const failed = outageBacklog(fake);
    fake.setWebhookUrl(receiver.url);
    fake.inject({ route: "/app/hook/deliveries", method: "GET", delayMs: 600, times: 10_000 });
    fake.inject({ route: ATTEMPTS, method: "POST", delayMs: 200, times: 10_000 });
    // A pass a minute on a clock of the test's, GitHub stamping each redelivery with it (as above).
    let offset = 0;
    const now = () => Date.now() + offset;
    const stamped = new Set<object>(fake.deliveries);
    const stamp = () => {
      for (const d of fake.deliveries) if (!stamped.has(d)) (stamped.add(d), (d.deliveredAt = new Date(now()).toISOString().replace(/\.\d{3}Z$/, "Z")));
    };
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk, _enc, cb) => (lines.push(String(chunk)), cb()) });
    const log = new RedeliveryLog(conn, r.prefix);
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 1000,
      windowMs: 24 * 3600_000,
      maxPerPass: 100,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("info", sink),
      now,
    });
    const outcomes: string[] = [];
    const marks: string[] = [];
    for (let pass = 1; pass <= 15; pass++) {
      // As the loop runner runs a pass: aborted at its limit, told the limit.
      const outcome = await loop.run(AbortSignal.timeout(LIMIT_MS), passBudget(LIMIT_MS)).then(
        () => "ok",
        (err: unknown) => (err as Error).name,
      );
      outcomes.push(outcome);
      await fake.webhooksIdle();
      stamp();
      offset += 60_000;
      marks.push(JSON.stringify([await log.readUpTo(), await log.resume()]));
      if (outcome === "ok" && (await log.resume()) === undefined && askedFor(fake).length >= failed.length) break;
    }
    assert.ok(
      outcomes.every((o) => o === "ok"),
      `every pass ended by itself, none cut off: ${outcomes.join(" ")}`,
    );
    assert.ok(outcomes.length >= 3, `several passes: ${outcomes.length}`);
    assert.equal(new Set(marks).size, marks.length, `the marks moved on every pass: ${marks.join(" ")}`);
    for (const f of failed) assert.deepEqual(answers(fake, f.attemptId), [202], `event ${f.id}: asked for once`);
    assert.deepEqual(askedFor(fake).sort((a, b) => a - b), failed.map((f) => f.attemptId), "nothing else asked for");
    assert.equal(await log.resume(), undefined, "the read finished");
    const stopped = lines.map((l) => JSON.parse(l) as { msg: string; timeUp?: boolean }).filter((l) => l.msg === "failed deliveries left for the next pass");
    assert.ok(stopped.length >= 2 && stopped.every((s) => s.timeUp === true), JSON.stringify(stopped));
    assert.equal(lines.filter((l) => l.includes("GitHub answers too slowly")).length, 1, "said once");
  } finally {
    fake.clearFaults();
    gh.close();
    conn.disconnect();
    await receiver.close();
    await fake.close();
  }
});

test("after an outage longer than reconcile.activeWindowSeconds, failed deliveries back to a little before the last read are redelivered; the window bounds the first read only", async () => {
  const r = scopedRedis(redis, "redeliver-window");
  const conn = redisConnection(r.url);
  const fakes: FakeGitHub[] = [];
  try {
    const now = Date.now();
    const hour = 3600_000;
    /** A fake GitHub whose App lists three failed deliveries, 3, 1.5 and 0.5 hours old; their attempt ids. */
    const failures = async () => {
      const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
      fakes.push(fake);
      return { fake, ids: [3, 1.5, 0.5].map((hoursAgo) => past(fake, 0, now - hoursAgo * hour).attemptId) };
    };
    const pass = async (fake: FakeGitHub, log: RedeliveryLog) => {
      const gh = octokit(fake);
      try {
        await githubDeliveriesLoop({ github: gh, log, intervalMs: 1000, windowMs: hour, maxPerPass: 100, metrics: new Metrics({ processMetrics: false }), logger: createLogger("silent") }).run(
          new AbortController().signal,
        );
      } finally {
        gh.close();
      }
    };
    // Read up to 2 hours ago, then down: the host was off for longer than the window.
    const after = await failures();
    const log = new RedeliveryLog(conn, r.prefix);
    await log.setReadUpTo(now - 2 * hour);
    await pass(after.fake, log);
    assert.deepEqual(askedFor(after.fake).sort((a, b) => a - b), after.ids.slice(1), "the outage's failures, not the one the last read saw");
    // No read before: the window's hour only.
    const first = await failures();
    await pass(first.fake, new RedeliveryLog(conn, `${r.prefix}-first`));
    assert.deepEqual(askedFor(first.fake), first.ids.slice(2));
  } finally {
    conn.disconnect();
    for (const fake of fakes) await fake.close();
  }
});

test("a saved cursor GitHub no longer takes: the pass fails once, and the next reads from the top", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, hookDeliveriesPageSize: 5 });
  const r = scopedRedis(redis, "redeliver-cursor");
  const conn = redisConnection(r.url);
  const gh = octokit(fake);
  try {
    const failed = Array.from({ length: 12 }, (_, i) => past(fake, 0, Date.now() - 3600_000 + i * 1000));
    const log = new RedeliveryLog(conn, r.prefix);
    // Read from the top down to half an hour ago; the hour before that is the backlog, saved with a
    // cursor not of GitHub's form (`v1_<attempt id>`, as the fake's cursors): GitHub answers 400
    // "Invalid cursor", as the fake does. Had the pass not used it, it would not fail.
    await log.setReadUpTo(Date.now() - 1800_000);
    await log.setResume({ cursor: "v0_3", floor: Date.now() - 2 * 3600_000 });
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 1000,
      windowMs: 24 * 3600_000,
      maxPerPass: 100,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    });
    const signal = new AbortController().signal;
    await assert.rejects(loop.run(signal), /Invalid cursor/);
    assert.equal(await log.resume(), undefined);
    await loop.run(signal);
    assert.deepEqual(
      fake.requests.filter((q) => q.route === "/app/hook/deliveries").map((q) => q.status),
      [200, 400, 200, 200, 200],
      "the newest page (nothing since the mark), the refused cursor, then the 12 from the top down to the backlog's floor, 5 a page",
    );
    assert.deepEqual(askedFor(fake).sort((a, b) => a - b), failed.map((f) => f.attemptId));
  } finally {
    gh.close();
    conn.disconnect();
    await fake.close();
  }
});

test("more failed deliveries than a page, through the fake GitHub and the real client: pages followed by their Link cursors, read over several passes, each failure redelivered once", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "redeliver-http-pages");
  const conn = redisConnection(r.url);
  const receiver = createServer((req, res) => req.resume().on("end", () => res.writeHead(202).end()));
  await new Promise<void>((res) => receiver.listen(0, "127.0.0.1", res));
  const LIST = "/app/hook/deliveries";
  const LOST = 130;
  try {
    // An outage: 130 queued deliveries nobody answered (GitHub lists 100 a page at most), for jobs
    // no pool serves (no runner needed to count redeliveries).
    fake.setWebhookUrl(DEAD_URL);
    for (let i = 0; i < LOST; i++) await fake.queueJob({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"] });
    await fake.webhooksIdle();
    const failed = fake.deliveries.filter((d) => d.event === "workflow_job");
    assert.deepEqual(new Set(failed.map((d) => d.status)), new Set([0]));
    assert.equal(failed.length, LOST);
    fake.setWebhookUrl(`http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`);

    const log = new RedeliveryLog(conn, r.prefix);
    // A write budget that does not pace 130 redeliveries over two minutes (pacing is tested elsewhere).
    const gh = octokit(fake, { max: 1000, windowMs: 60_000 });
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 1000,
      windowMs: 24 * 3600_000,
      maxPerPass: 50,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    });
    const signal = new AbortController().signal;
    const redelivered = () => failed.every((f) => fake.deliveries.some((d) => d.id === f.id && d.redelivery));
    // Passes until every failed delivery was redelivered, and which cursors each one saved.
    const saved: Array<string | undefined> = [];
    let passes = 0;
    while (!redelivered() && passes < 10) {
      await loop.run(signal);
      await fake.webhooksIdle();
      passes++;
      saved.push((await log.resume())?.cursor);
    }
    assert.ok(passes >= 3, `several passes (${passes}): 50 redeliveries a pass`);
    // One pass more reads down to the end and asks for nothing.
    const asking = callsTo(fake, ATTEMPTS, "POST");
    await loop.run(signal);
    passes++;
    gh.close();
    assert.equal(callsTo(fake, ATTEMPTS, "POST"), asking, "nothing asked for once all were redelivered");
    assert.equal(await log.resume(), undefined, "the read finished");
    assert.ok(
      saved.some((c) => c !== undefined && /^v1_\d+$/.test(c)),
      `a pass stopped below the first page saved GitHub's cursor from the Link header: ${JSON.stringify(saved)}`,
    );
    for (const f of failed) {
      assert.deepEqual(
        fake.deliveries.filter((d) => d.id === f.id).map((d) => [d.status, d.redelivery]),
        [[0, false], [202, true]],
        `delivery ${f.id}: failed once, redelivered once`,
      );
    }
    assert.equal(callsTo(fake, ATTEMPTS, "POST"), LOST, "one redelivery asked per failed delivery");
    const lists = fake.requests.filter((q) => q.route === LIST);
    assert.ok(lists.every((q) => q.status === 200), "every page taken");
    assert.ok(lists.length > passes, `more pages than passes: passes read past their first page (${lists.length} pages, ${passes} passes)`);
  } finally {
    receiver.close();
    conn.disconnect();
    await fake.close();
  }
});

test("a saved cursor the fake GitHub no longer takes (400 Invalid cursor): the pass fails once, and the next reads from the top", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "redeliver-http-cursor");
  const conn = redisConnection(r.url);
  try {
    fake.setWebhookUrl(DEAD_URL);
    const job = await fake.queueJob({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"] });
    await fake.webhooksIdle();
    const log = new RedeliveryLog(conn, r.prefix);
    // A cursor of another form than GitHub's `v1_<id>` (saved by an older jitrunner, say).
    await log.setResume({ cursor: "MTIz", floor: Date.now() - 24 * 3600_000 });
    const gh = octokit(fake);
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 1000,
      windowMs: 24 * 3600_000,
      maxPerPass: 100,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    });
    const signal = new AbortController().signal;
    await assert.rejects(loop.run(signal), /\(400\): Invalid cursor/);
    assert.equal(await log.resume(), undefined, "the cursor forgotten");
    await loop.run(signal);
    gh.close();
    assert.deepEqual(
      fake.requests.filter((q) => q.route === "/app/hook/deliveries").map((q) => q.status),
      [200, 400, 200],
      "the newest page, the refused cursor, the newest page again",
    );
    const guid = fake.deliveries.find((d) => d.jobId === job.id)!.id;
    assert.equal(callsTo(fake, ATTEMPTS, "POST"), 1, "the failed delivery asked for from the top");
    assert.equal((await log.event(guid)).tries, 1);
  } finally {
    conn.disconnect();
    await fake.close();
  }
});

test("a receiver down for 10 minutes, far longer than three passes: tries come 1, 4 and 16 minutes apart, and the event is redelivered once it is back", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "redeliver-outage");
  const conn = redisConnection(r.url);
  const receiver = createServer((req, res) => req.resume().on("end", () => res.writeHead(202).end()));
  await new Promise<void>((res) => receiver.listen(0, "127.0.0.1", res));
  try {
    fake.setWebhookUrl(DEAD_URL);
    const job = await fake.queueJob({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"] });
    const guid = fake.deliveries.find((d) => d.jobId === job.id)!.id;
    // A pass a minute for 30 minutes, on a clock of the test's; GitHub stamps each attempt with it.
    let offset = 0;
    const now = () => Date.now() + offset;
    const stamp = () => {
      for (const d of fake.deliveries) if (!stamped.has(d)) (stamped.add(d), (d.deliveredAt = new Date(now()).toISOString().replace(/\.\d{3}Z$/, "Z")));
    };
    const stamped = new Set<object>();
    stamp();
    const log = new RedeliveryLog(conn, r.prefix);
    const loop = githubDeliveriesLoop({
      github: octokit(fake),
      log,
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxPerPass: 10,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
      now,
    });
    const signal = new AbortController().signal;
    const askedAt: number[] = [];
    for (let minute = 0; minute <= 30; minute++) {
      offset = minute * 60_000;
      // The receiver is back after 10 minutes.
      if (minute === 10) fake.setWebhookUrl(`http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`);
      const before = callsTo(fake, ATTEMPTS, "POST");
      await loop.run(signal);
      await fake.webhooksIdle();
      stamp();
      if (callsTo(fake, ATTEMPTS, "POST") > before) askedAt.push(minute);
    }
    assert.deepEqual(askedAt, [0, 1, 5, 21], "each try waits 4 times longer after the last one failed");
    assert.deepEqual(
      fake.deliveries.filter((d) => d.id === guid).map((d) => d.status),
      [0, 0, 0, 0, 202],
      "failed while the receiver was down, redelivered once it was back",
    );
    const event = await log.event(guid);
    assert.equal(event.tries, 4);
    assert.equal(event.waitingUntil, undefined, "done: nothing waits");
  } finally {
    receiver.close();
    conn.disconnect();
    await fake.close();
  }
});

test("a redelivery request GitHub fails counts no try and stops nothing: the later events are asked for in the same pass, the failed one again later", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const receiver = await startReceiver(WEBHOOK_SECRET);
  receiver.status = 202;
  const r = scopedRedis(redis, "redeliver-request-fails");
  const conn = redisConnection(r.url);
  const gh = octokit(fake);
  try {
    let offset = 0;
    const clock = () => Date.now() + offset;
    const events = [0, 1, 2].map((i) => past(fake, 0, Date.now() - 60_000 + i * 1000));
    fake.setWebhookUrl(receiver.url);
    // The newest, the first one asked for: GitHub fails the request (a 502 to each of the client's
    // tries), this time and the next two.
    const broken = events[2]!;
    fake.inject({ route: attemptsOf(broken.attemptId), method: "POST", status: 502, times: 3 * CLIENT_TRIES });
    const log = new RedeliveryLog(conn, r.prefix);
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxPerPass: 10,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
      now: clock,
    });
    const signal = new AbortController().signal;
    // The pass's time (the client's retries of the failed request take 14 s of it).
    const started = clock();
    const failure = await loop.run(signal).then(() => undefined, (err: unknown) => err);
    await fake.webhooksIdle();
    assert.deepEqual(askedFor(fake), [broken.attemptId, events[1]!.attemptId, events[0]!.attemptId], "the later events asked for in the same pass");
    assert.deepEqual(answers(fake, broken.attemptId), Array(CLIENT_TRIES).fill(502), "one request, failed");
    assert.match(String(failure), new RegExp(`1 of 3 redelivery requests failed; first: ${broken.id}: .*502`), "the pass says so, after doing the rest");
    const after = await log.event(broken.id);
    assert.equal(after.tries, 0, "a failed request is no try");
    assert.equal(after.failures, 1);
    assert.ok(after.waitingUntil !== undefined && after.waitingUntil >= started + 60_000, "asked again a minute later");

    // GitHub fails it twice more, then takes it: a pass a minute, 25 minutes.
    const askedAt: number[] = [];
    for (let minute = 1; minute <= 25; minute++) {
      offset = minute * 60_000;
      const before = fake.requests.length;
      await loop.run(signal).catch(() => undefined);
      await fake.webhooksIdle();
      const asked = askedFor(fake, before);
      if (asked.length > 0) askedAt.push(minute);
      assert.ok(asked.every((id) => id === broken.attemptId), "nothing else asked for");
    }
    assert.deepEqual(askedAt, [1, 5, 21], "requests spaced out like tries");
    assert.deepEqual(answers(fake, broken.attemptId), [...Array(3 * CLIENT_TRIES).fill(502), 202], "three requests failed, the fourth taken");
    const done = await log.event(broken.id);
    assert.deepEqual([done.tries, done.failures, done.waitingUntil, done.gaveUp], [1, 0, undefined, false], "one try, taken once GitHub took the request");
    assert.deepEqual(
      fake.deliveries.filter((d) => d.id === broken.id).map((d) => [d.status, d.redelivery]),
      [[0, false], [202, true]],
    );
  } finally {
    gh.close();
    conn.disconnect();
    await receiver.close();
    await fake.close();
  }
});

test("checking one registration fails: the later orphans of its scope are still deleted, and its list still counts as complete", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "orphans-one-fails");
  const conn = redisConnection(r.url);
  try {
    const orphans = [];
    for (const n of ["aa", "bb", "cc"]) orphans.push(await registerRunner(fake, `jitrunner-default-00000000${n}`));
    // A runner recorded busy, listed after them: its registration is there, so GitHub is not asked about it.
    const busy = await registerRunner(fake, "jitrunner-default-00000000dd");
    const runners = new RunnerStore(conn, r.prefix);
    await runners.put({
      name: "jitrunner-default-00000000dd",
      pool: "default",
      host: "elsewhere",
      state: "busy",
      busyAt: Date.now() - 60_000,
      installationId: fake.installationId,
      owner: "acme",
      repo: "app",
      runnerId: busy.id,
      demandId: "1-1",
      createdAt: Date.now() - 60_000,
    });
    // GitHub refuses the first delete (a permission it keeps refusing).
    fake.inject({ route: RUNNER, method: "DELETE", status: 403, times: 1, body: { message: "Must have admin rights to Repository." } });
    const loop = githubRunnersLoop({
      github: octokit(fake),
      runners,
      repos: await activeApp(fake, conn, r.prefix),
      pools: [{ scope: "repository" }],
      namePrefix: "jitrunner",
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxRepositories: 10,
      graceMs: 0,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    });
    const failure = await loop.run(new AbortController().signal).then(() => undefined, (err: unknown) => err);
    assert.deepEqual(
      fake.runners().map((x) => x.id).sort((a, b) => a - b),
      [orphans[0]!.id, busy.id],
      "the two later orphans deleted; the refused one and the recorded one kept",
    );
    assert.equal(callsTo(fake, RUNNER, "GET"), 0, "the busy runner's registration was listed: not asked about");
    assert.match(String(failure), /runner jitrunner-default-00000000aa: .*403/, "the pass says so, after doing the rest");
  } finally {
    conn.disconnect();
    await fake.close();
  }
});

test("more active repositories than reconcile.maxRepositories: github-queued lists them in turns, so a lost queued job in the least recently active one is found too", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "queued-in-turns");
  const conn = redisConnection(r.url);
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, conn);
  try {
    fake.setWebhookUrl(DEAD_URL);
    const names = ["one", "two", "three"];
    const jobs: FakeJob[] = [];
    for (const repo of names) jobs.push(await fake.queueJob({ owner: "acme", repo, labels: ["self-hosted", "linux"] }));
    // "three" the most recently active, "one" the least.
    const repos = await activeRepos(conn, r.prefix, names.map((repo) => ({ installationId: fake.installationId, owner: "acme", repo })));
    const logs: string[] = [];
    const loop = queuedLoop(fake, conn, r.prefix, queues, repos, {
      maxRepositories: 2,
      logger: createLogger("info", new Writable({ write: (c: Buffer, _e, cb) => (logs.push(c.toString()), cb()) })),
    });
    const added = async () => {
      const states = await Promise.all(jobs.map((j) => demandState(r, "default", `${j.id}-${j.run_attempt}`)));
      return names.filter((_, i) => states[i] !== undefined);
    };
    await loop.run(new AbortController().signal);
    assert.deepEqual(await added(), ["two", "three"], "the first pass: the two most recently active");
    assert.equal(logs.filter((l) => /listed in turns/.test(l)).length, 1, "said once");
    await loop.run(new AbortController().signal);
    assert.deepEqual(await added(), names, "the next pass takes the one left out first");
    await loop.run(new AbortController().signal);
    assert.equal(logs.filter((l) => /listed in turns/.test(l)).length, 1, "not said again");
    const listed = fake.requests.filter((q) => q.route === "/repos/{owner}/{repo}/actions/runs").map((q) => q.path.split("/")[3]);
    assert.equal(listed.length, 3 * 6, "two repositories a pass, three statuses each");
    // The first pass's two are the most recently active; which of them comes first depends on
    // their times (equal within a millisecond, Redis orders them by name): the one the second
    // pass did not list again was listed longest ago, and the third pass lists it.
    const [first, second, third] = [0, 6, 12].map((from) => new Set(listed.slice(from, from + 6)));
    const longestAgo = [...first!].filter((repo) => !second!.has(repo));
    assert.equal(longestAgo.length, 1, `the second pass listed one of the first pass's two again (${[...second!].join(", ")})`);
    assert.ok(third!.has(longestAgo[0]!), `the third pass: ${longestAgo[0]}, listed longest ago (${[...third!].join(", ")})`);
  } finally {
    await queues.close();
    conn.disconnect();
    await fake.close();
  }
});

test("repositories listed in turns keep their runs' turns: with fewer runs listed a pass than they hold, every run's jobs are listed within a few passes", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "queued-turns-runs");
  const conn = redisConnection(r.url);
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, conn);
  try {
    fake.setWebhookUrl(DEAD_URL);
    const names = ["a", "b", "c", "d"];
    // Two runs in each repository, each with a job whose queued webhook was lost.
    const jobs: FakeJob[] = [];
    for (const repo of names) for (let i = 0; i < 2; i++) jobs.push(await fake.queueJob({ owner: "acme", repo, labels: ["self-hosted", "linux"] }));
    const repos = await activeRepos(conn, r.prefix, names.map((repo) => ({ installationId: fake.installationId, owner: "acme", repo })));
    // Two repositories a pass, and one repository's runs' jobs.
    const loop = queuedLoop(fake, conn, r.prefix, queues, repos, { maxRepositories: 2, maxRunsPerPass: 2 });
    const added = async () => (await Promise.all(jobs.map((j) => demandState(r, "default", `${j.id}-${j.run_attempt}`)))).filter((d) => d !== undefined).length;
    // Each pass lists two runs' jobs: four passes for the eight, each run's in its turn.
    for (let pass = 1; pass <= 4; pass++) await loop.run(new AbortController().signal);
    assert.equal(await added(), 8, "every lost job added within four passes");
  } finally {
    await queues.close();
    conn.disconnect();
    await fake.close();
  }
});

test("a repository whose webhooks all fail: its jobs recovered by github-queued keep it active, so a job queued after its last webhook falls out of reconcile.activeWindowSeconds is still recovered", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "queued-keeps-active");
  const conn = redisConnection(r.url);
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, conn);
  const WINDOW_MS = 10_000;
  try {
    // Its last accepted webhook was a while ago, still inside the window (noted by the ingress's
    // ActiveRepos; the loop has one of its own, as the reconciler does); none reaches us since.
    const lastWebhook = Date.now() - 6000;
    await new ActiveRepos(conn, r.prefix).touch({ installationId: fake.installationId, owner: "acme", repo: "app", scope: "repository" }, lastWebhook);
    fake.setWebhookUrl(DEAD_URL);
    const loop = queuedLoop(fake, conn, r.prefix, queues, new ActiveRepos(conn, r.prefix), { windowMs: WINDOW_MS });
    const first = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "default", `${first.id}-1`))?.state, "waiting", "recovered while the webhook's note is in the window");

    await new Promise((res) => setTimeout(res, lastWebhook + WINDOW_MS + 200 - Date.now()));
    const second = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "default", `${second.id}-1`))?.state, "waiting", "recovered after the webhook's note fell out of the window: the recovery noted the repository");
  } finally {
    await queues.close();
    conn.disconnect();
    await fake.close();
  }
});

test("a queued job whose done demand BullMQ no longer holds: added again with the note of the runner that served it forgotten", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const r = scopedRedis(redis, "recover-expired");
  const conn = redisConnection(r.url);
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, conn);
  try {
    fake.setWebhookUrl(DEAD_URL);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const id = `${job.id}-${job.run_attempt}`;
    // Its demand was served over an hour ago by a runner that took another job and is gone; BullMQ
    // dropped the done item (after an hour), the runner's note stays (7 days).
    const runners = new RunnerStore(conn, r.prefix);
    const gone = { name: "jitrunner-default-00000000ee", host: "elsewhere", demandId: id };
    await runners.put({ ...gone, pool: "default", state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", createdAt: Date.now() - 7200_000 });
    await runners.remove(gone, true);
    assert.equal((await runners.findByDemand(id))?.name, gone.name);

    const loop = queuedLoop(fake, conn, r.prefix, queues, await activeApp(fake, conn, r.prefix), { runners });
    await loop.run(new AbortController().signal);
    assert.equal((await demandState(r, "default", id))?.state, "waiting", "the demand added again");
    assert.equal(await runners.findByDemand(id), undefined, "no note of a runner: a worker launches one rather than taking it as served");
  } finally {
    await queues.close();
    conn.disconnect();
    await fake.close();
  }
});
