/**
 * The worker's still-queued checks (JobChecks) through jitrunner's real GitHub client against the
 * fake GitHub over HTTP: the jobs of one run checked together cost one listing of the run, not a
 * call each, and each check still gets its own job's state.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { JobChecks, type CheckedDemand } from "../../src/worker/job-checks.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import type { FakeJob } from "../fakes/github/state.ts";
import { githubFor } from "../helpers/github.ts";

const JOB = "/repos/{owner}/{repo}/actions/jobs/{job_id}";
const RUN_JOBS = "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs";
const LABELS = ["self-hosted", "linux"];

const fakes: FakeGitHub[] = [];
after(async () => {
  for (const f of fakes) await f.close();
});

async function setUp(): Promise<{ fake: FakeGitHub; checks: JobChecks }> {
  const fake = await FakeGitHub.start({ webhookSecret: "job-checks-test-secret" });
  fakes.push(fake);
  return { fake, checks: new JobChecks(githubFor(fake), "jitrunner") };
}

function demandOf(job: FakeJob): CheckedDemand {
  return { installationId: 1, owner: job.owner, repo: job.repo, jobId: job.id, runId: job.run_id };
}

/** The calls made to `route` since `from` (an index into the fake's requests). */
function callsTo(fake: FakeGitHub, route: string, from = 0): number {
  return fake.requests.slice(from).filter((r) => r.route === route).length;
}

async function matrix(fake: FakeGitHub, size: number): Promise<FakeJob[]> {
  const first = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
  const rest = [];
  for (let i = 1; i < size; i++) rest.push(await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS, runId: first.run_id }));
  return [first, ...rest];
}

test("the jobs of one run checked together cost one listing of the run, and each gets its own job's state", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 6);
  await fake.cancelJob(jobs[2]!.id);
  const other = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
  const from = fake.requests.length;

  const answers = await Promise.all([...jobs, other].map((j) => checks.check(demandOf(j))));

  assert.equal(callsTo(fake, RUN_JOBS, from), 1, "one listing for the six jobs of the run");
  assert.equal(callsTo(fake, JOB, from), 2, "the job alone in its run asked for by itself, and the cancelled one asked again");
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "queued", "completed", "queued", "queued", "queued", "queued"],
  );
  assert.equal(answers[2]!.conclusion, "cancelled");
});

test("a listing that says a job needs no runner is asked again for that job: the listing may have been sent before the job was queued again", async () => {
  const { fake, checks } = await setUp();
  const [first] = await matrix(fake, 2);
  // Waiting for an environment's approval: queued again, under the same id, once approved.
  const gated = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS, runId: first!.run_id, waitForApproval: true });
  const from = fake.requests.length;

  const answers = await Promise.all([checks.check(demandOf(first!)), checks.check(demandOf(gated))]);

  assert.equal(callsTo(fake, RUN_JOBS, from), 1);
  const asked = fake.requests.slice(from).filter((r) => r.route === JOB);
  assert.equal(asked.length, 1, "the job the listing said waits asked for by itself");
  assert.ok(asked[0]!.path.endsWith(`/actions/jobs/${gated.id}`), asked[0]!.path);
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "waiting"],
  );
});

test("a demand with no run id is asked for by itself", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 2);
  const from = fake.requests.length;

  const answers = await Promise.all(jobs.map((j) => checks.check({ ...demandOf(j), runId: undefined as unknown as number })));

  assert.equal(callsTo(fake, RUN_JOBS, from), 0);
  assert.equal(callsTo(fake, JOB, from), 2);
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "queued"],
  );
});

test("a check made while its run's listing is out waits for that listing; one made after it asks again", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 4);
  fake.inject({ route: RUN_JOBS, times: 1, delayMs: 500 });
  const from = fake.requests.length;

  const together = [checks.check(demandOf(jobs[0]!)), checks.check(demandOf(jobs[1]!))];
  await new Promise((resolve) => setTimeout(resolve, 100));
  // The listing is out (held 500 ms): these two join it.
  const joined = [checks.check(demandOf(jobs[2]!)), checks.check(demandOf(jobs[3]!))];
  const answers = await Promise.all([...together, ...joined]);

  assert.equal(callsTo(fake, RUN_JOBS, from), 1, "one listing answered all four");
  assert.equal(callsTo(fake, JOB, from), 0);
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "queued", "queued", "queued"],
  );

  await fake.cancelJob(jobs[3]!.id);
  const later = await checks.check(demandOf(jobs[3]!));
  assert.equal(later.status, "completed", "a check after the listing ended asks GitHub anew");
  assert.equal(callsTo(fake, JOB, from), 1);
});

test("a job the run's listing does not hold is asked for by itself", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 2);
  // A second attempt of the run is the latest: the listing (filter=latest) holds its job only.
  const rerun = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS, runId: jobs[0]!.run_id, runAttempt: 2 });
  const from = fake.requests.length;

  const answers = await Promise.all([checks.check(demandOf(jobs[0]!)), checks.check(demandOf(rerun))]);

  assert.equal(callsTo(fake, RUN_JOBS, from), 1);
  assert.equal(callsTo(fake, JOB, from), 1, "the first attempt's job, not in the listing, asked for by itself");
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "queued"],
  );
});

test("a listing reads on, page by page, only until it holds every job its checks asked for", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 150);
  let from = fake.requests.length;

  await Promise.all([checks.check(demandOf(jobs[0]!)), checks.check(demandOf(jobs[1]!))]);
  assert.equal(callsTo(fake, RUN_JOBS, from), 1, "both on the first page: one page read");

  from = fake.requests.length;
  const answers = await Promise.all([checks.check(demandOf(jobs[0]!)), checks.check(demandOf(jobs[140]!))]);
  assert.equal(callsTo(fake, RUN_JOBS, from), 2, "the second on page 2: two pages read");
  assert.equal(callsTo(fake, JOB, from), 0);
  assert.deepEqual(
    answers.map((a) => a.status),
    ["queued", "queued"],
  );
});

test("a listing that fails fails the checks that waited on it", async () => {
  const { fake, checks } = await setUp();
  const jobs = await matrix(fake, 3);
  fake.inject({ route: RUN_JOBS, status: 404, times: 1 });

  const results = await Promise.allSettled(jobs.map((j) => checks.check(demandOf(j))));

  assert.deepEqual(
    results.map((r) => r.status),
    ["rejected", "rejected", "rejected"],
  );
  assert.equal(callsTo(fake, RUN_JOBS), 1);
});
