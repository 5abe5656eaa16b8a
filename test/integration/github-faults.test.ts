/**
 * GitHub misbehaving, for real: the real composition root (`start()` of src/main.ts) against the
 * fake GitHub, a real Redis and real Docker-in-Docker runner containers (`capabilities` profile,
 * network none, the fake's socket bind-mounted). Each scenario injects one kind of fault into
 * GitHub's answers, queues a few jobs, and checks that every job completes and that no container
 * and no registration is left behind.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { RUNNER_IMAGE, containersOf, docker, fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const JOB = "/repos/{owner}/{repo}/actions/jobs/{job_id}";
const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const TOKEN = "/app/installations/{installation_id}/access_tokens";

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("ghfaults");
let groupId: number;

before(async () => {
  await docker.getImage(RUNNER_IMAGE).inspect().catch(() => {
    throw new Error(`test image ${RUNNER_IMAGE} is missing: run 'npm run test:images' first`);
  });
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  groupId = fake.addRunnerGroup("ci-runners");
  sys = await startSystem("all", fake, redis, host, {
    worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    pools: [
      fakeRunnerPool(fake),
      fakeRunnerPool(fake, { name: "org", labels: ["self-hosted", "org-pool"], scope: "organization", runnerGroup: "ci-runners" }),
    ],
  });
});

after(async () => {
  await sys?.close();
  await removeContainersOf(host);
  await fake?.close();
  await redis?.stop();
});

/** Requests to a route since `from` (an index into fake.requests). */
function since(from: number, route: string): Array<{ status: number; at: number }> {
  return fake.requests.slice(from).filter((r) => r.route === route);
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${sys.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

/** Queues `n` jobs. */
async function queueJobs(tag: string, n: number, labels = ["self-hosted", "linux"]): Promise<FakeJob[]> {
  const jobs = [];
  for (let i = 0; i < n; i++) jobs.push(await fake.queueJob({ owner: "acme", repo: `faults-${tag}`, labels }));
  return jobs;
}

/** Queues `n` jobs and waits until every one completed and nothing of ours is left; returns them. */
async function jobsSurvive(tag: string, n: number, labels = ["self-hosted", "linux"]): Promise<FakeJob[]> {
  return allServed(tag, await queueJobs(tag, n, labels));
}

/** Waits until every one of `jobs` completed, each on a runner of its own, and nothing of ours is left. */
async function allServed(tag: string, jobs: FakeJob[]): Promise<FakeJob[]> {
  const ids = new Set(jobs.map((j) => j.id));
  const done = await waitFor(
    () => {
      const mine = fake.jobs().filter((j) => ids.has(j.id));
      return mine.every((j) => j.status === "completed") && mine;
    },
    90_000,
    `${tag}: all ${jobs.length} jobs completed (have: ${JSON.stringify(fake.jobs().filter((j) => ids.has(j.id)).map((j) => j.status))})`,
  );
  assert.deepEqual(done.map((j) => j.conclusion), Array(jobs.length).fill("success"), `${tag}: every job ran`);
  assert.equal(new Set(done.map((j) => j.runner_name)).size, jobs.length, `${tag}: each on a runner of its own`);
  await waitFor(async () => (await containersOf(host)).length === 0, 30_000, `${tag}: 0 runner containers left`);
  await waitFor(() => fake.runners().length === 0, 30_000, `${tag}: 0 registrations left (have ${fake.runners().map((r) => r.name).join(", ")})`);
  // Faults are where errors carrying requests and answers get logged and shown.
  const checked = await assertNoSecrets(fake, { logs: sys.logs(), sys });
  assert.ok(checked.jitConfigs >= jobs.length && checked.places.includes("status page"), `${tag}: secrets looked for (${JSON.stringify(checked)})`);
  return done;
}

test("429 with retry-after on generate-jitconfig: waited out as told, counted, every job served", async () => {
  const from = fake.requests.length;
  const retried = () => metric("jitrunner_github_rate_limited_total", 'kind="secondary",outcome="retried"');
  const before = await retried();
  fake.inject({ route: JIT, status: 429, times: 2, headers: { "retry-after": "2" } });
  // One job first, and the others only once jitrunner has heard the 429: calls already out when it
  // came cannot be held (with all three queued at once, a third call sometimes was).
  const first = await queueJobs("429", 1);
  await waitFor(async () => (await retried()) > before, 30_000, "the 429 heard");
  await allServed("429", [...first, ...(await queueJobs("429", 2))]);
  const jit = since(from, JIT);
  assert.deepEqual(jit.map((r) => r.status).sort(), [201, 201, 201, 429, 429]);
  // Any job's: the wait holds every write of the installation, not only the call refused.
  assert.equal(jit[0]?.status, 429);
  const early = jit.slice(1).filter((r) => r.at - jit[0]!.at < 1900);
  assert.deepEqual(early, [], "no JIT call within the 2 s GitHub asked for");
  assert.ok((await retried()) - before >= 2);
});

test("403 with x-ratelimit-remaining 0 on any route: waited until the reset, counted, every job served", async () => {
  const reset = String(Math.ceil(Date.now() / 1000) + 3);
  fake.inject({ status: 403, times: 2, headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset } });
  const from = fake.requests.length;
  await jobsSurvive("403", 2);
  assert.equal(fake.requests.slice(from).filter((r) => r.status === 403).length, 2);
  assert.ok((await metric("jitrunner_github_rate_limited_total", 'kind="primary",outcome="retried"')) >= 2);
  assert.equal(await metric("jitrunner_github_rate_limited_total", 'kind="primary",outcome="gave_up"'), 0);
});

test("5xx on generate-jitconfig and on the still-queued check: retried, every job served", async () => {
  const from = fake.requests.length;
  fake.inject({ route: JIT, status: 502, times: 2 });
  fake.inject({ route: JOB, status: 500, times: 1 });
  await jobsSurvive("5xx", 2);
  assert.deepEqual(since(from, JIT).map((r) => r.status).sort(), [201, 201, 502, 502]);
  assert.ok(since(from, JOB).some((r) => r.status === 500));
});

test("409 on generate-jitconfig (name taken), also after a lost answer: a new name, the orphan deleted, every job served", async () => {
  const from = fake.requests.length;
  fake.inject({ route: JIT, status: 409, times: 1 });
  // GitHub registers the runner, the answer is lost, the retry finds the name taken.
  fake.inject({ route: JIT, status: 502, times: 1, afterHandling: true });
  await jobsSurvive("409", 3);
  const jit = since(from, JIT).map((r) => r.status);
  assert.equal(jit.filter((s) => s === 409).length, 2, `409 twice (${jit.join(", ")})`);
  assert.equal(jit.filter((s) => s === 201).length, 3, "then one registration per job");
  assert.ok(since(from, DELETE).some((r) => r.status === 204), "the orphaned registration was deleted");
  assert.equal((sys.logs().match(/runner name already registered; registering under a new name/g) ?? []).length, 2);
  assert.equal(await metric("jitrunner_launch_failures_total", 'pool="default",reason="E_GITHUB"'), 0, "no launch failed for it");
});

test("slow GitHub (1.5 s per call): every job served, no call repeated or given up for being slow", async () => {
  const from = fake.requests.length;
  const failuresBefore = await metric("jitrunner_launch_failures_total", 'pool="default",reason="E_GITHUB"');
  // Slow, well within the client's 30 s time limit on an attempt: waiting is right, retrying is not.
  // Every call a job makes (its still-queued check, its JIT config; the token is cached) is slowed,
  // by faults of their routes that the two jobs use up: none is left to slow a later test.
  fake.inject({ route: JIT, delayMs: 1500, times: 2 });
  fake.inject({ route: JOB, delayMs: 1500, times: 2 });
  await jobsSurvive("latency", 2);
  const calls = fake.requests.slice(from);
  assert.deepEqual(calls.filter((r) => r.status >= 400).map((r) => `${r.method} ${r.route} ${r.status}`), [], "every call answered as asked");
  assert.deepEqual(since(from, JIT).map((r) => r.status), [201, 201], "one JIT config per job: no slow call sent twice");
  assert.ok(since(from, TOKEN).length <= 1, `no token minted over and over (${since(from, TOKEN).length})`);
  // Any call taken for lost and retried would have reached GitHub twice: one still-queued check per job.
  assert.equal(since(from, JOB).length, 2, "one still-queued check per job");
  assert.equal(await metric("jitrunner_launch_failures_total", 'pool="default",reason="E_GITHUB"'), failuresBefore, "no launch failed for it");
});

test("an organization pool with runnerGroup by name: the group is resolved once and its runners serve the jobs", async () => {
  const from = fake.requests.length;
  const done = await jobsSurvive("org", 2, ["self-hosted", "org-pool"]);
  assert.deepEqual(done.map((j) => [j.runner_group_id, j.runner_group_name]), [[groupId, "ci-runners"], [groupId, "ci-runners"]]);
  assert.equal(since(from, "/orgs/{org}/actions/runner-groups").length, 1, "one lookup for both runners");
  assert.equal(since(from, "/orgs/{org}/actions/runners/generate-jitconfig").length, 2);
});

// Last: its launch fails on purpose (the 409 test counts launch failures from 0).
test("generate-jitconfig registers the runner but its answer is lost, and the retries are refused until the call gives up: the launch deletes that registration by name, and the job is served", async () => {
  const from = fake.requests.length;
  fake.inject({ route: JIT, status: 502, times: 1, afterHandling: true });
  // Not a 409 (the name taken): that one is handled by registering under a new name.
  fake.inject({ route: JIT, status: 429, times: 4, headers: { "retry-after": "1" } });
  const [job] = await queueJobs("lost", 1);
  await waitFor(() => since(from, JIT).length >= 5, 30_000, "the call given up");
  const jit = since(from, JIT).map((r) => r.status);
  assert.deepEqual(jit.slice(0, 5), [502, 429, 429, 429, 429], `the lost answer, then refusals until the call gave up (${jit.join(", ")})`);
  // No registration left behind (the reconciler would delete it only after its 300 s grace).
  await allServed("lost", [job!]);
  assert.match(sys.logs(), /registering failed after an answer was lost; the registration it may have made deleted by name/);
  // The by-name delete: the listing by name, then the deletion of what it found.
  assert.ok(since(from, "/repos/{owner}/{repo}/actions/runners").some((r) => r.status === 200), "looked up by name");
  assert.ok(since(from, DELETE).some((r) => r.status === 204), "the lost registration deleted");
  assert.equal(since(from, JIT).filter((r) => r.status === 201).length, 1, "one registration for the job's own runner");
});

test("every registration's answer lost, and each retry finding its own name taken (409), through a launch's three names: the demand is tried again, not failed for good, and the job served", async () => {
  const from = fake.requests.length;
  // Three launch attempts' worth: each name registered, its answer lost, its retry answered as
  // GitHub would (409: the name is taken, by that lost attempt).
  for (let i = 0; i < 3; i++) {
    fake.inject({ route: JIT, status: 502, times: 1, afterHandling: true });
    fake.inject({ route: JIT, delayMs: 1, times: 1 });
  }
  const [job] = await queueJobs("lost-409", 1);
  await allServed("lost-409", [job!]);
  const jit = since(from, JIT).map((r) => r.status);
  assert.deepEqual(jit, [502, 409, 502, 409, 502, 409, 201], `three names lost, then one registered (${jit.join(", ")})`);
  assert.match(sys.logs(), /registering failed after an answer was lost; the registration it may have made deleted by name/);
});
