/**
 * What the real GitHub client makes of a 422 to a runner's deletion, against the fake GitHub over
 * HTTP: GitHub answers 422 to a busy runner, but also to a request it finds invalid or spammed
 * (OpenAPI: "Validation failed, or the endpoint has been spammed"). Only a runner GitHub then says
 * is busy is "busy"; one it says is not busy fails the call (retryable: its caller tries again
 * later); one gone by then is "not_found". A deletion GitHub takes costs one call, as before. And
 * what a deletion notes on the runner's record (a real Redis): RunnerRecord.deregisteringAt.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { githubFailure, githubFor } from "../helpers/github.ts";
import { redisForFile } from "../helpers/redis.ts";
import { registerRunner } from "../helpers/system.ts";
import { GitHubError } from "../../src/errors.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { deregisterNoted } from "../../src/worker/launcher.ts";

const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const shared = redisForFile();
const scope = (fake: FakeGitHub) => ({ installationId: fake.installationId, owner: "acme", repo: "app" });

/** The calls made to one runner's route since `from`, as `METHOD status`. */
function runnerCalls(fake: FakeGitHub, from: number): string[] {
  return fake.requests.slice(from).filter((r) => r.route === RUNNER).map((r) => `${r.method} ${r.status}`);
}

/** Has the runner take a queued job at the fake, as its program would: GitHub lists it busy from then on. */
async function takeJob(fake: FakeGitHub, runner: { id: number; token: string }, name: string): Promise<number> {
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: name });
  const res = await fetch(`${fake.url}/_fake/runners/${runner.id}/acquire`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: runner.token }),
  });
  assert.equal(res.status, 200);
  return job.id;
}

async function withFake(fn: (fake: FakeGitHub, gh: ReturnType<typeof githubFor>) => Promise<void>): Promise<void> {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const gh = githubFor(fake);
  try {
    await fn(fake, gh);
  } finally {
    gh.close();
    await fake.close();
  }
}

test("a 422 to the deletion of a runner GitHub says is not busy fails the call (retryable), and the runner stays registered; the next deletion takes", async () => {
  await withFake(async (fake, gh) => {
    const runner = await registerRunner(fake, "jr-validation");
    fake.inject({ route: RUNNER, method: "DELETE", status: 422, times: 1 });
    const from = fake.requests.length;
    const err = await gh.deleteRunner(scope(fake), runner.id).then(
      (outcome) => assert.fail(`answered ${outcome}: a 422 for another reason read as GitHub's word`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof GitHubError, String(err));
    assert.deepEqual([err.status, err.retryable], [422, true]);
    assert.match(err.message, /Validation Failed.*not busy/);
    assert.deepEqual(runnerCalls(fake, from), ["DELETE 422", "GET 200"], "GitHub asked about the runner once, after the 422");
    assert.deepEqual(fake.runners().map((r) => r.name), ["jr-validation"]);

    const again = fake.requests.length;
    assert.equal(await gh.deleteRunner(scope(fake), runner.id), "deleted");
    assert.deepEqual(runnerCalls(fake, again), ["DELETE 204"], "a deletion GitHub takes costs one call");
    assert.equal(fake.runners().length, 0);
  });
});

test("a runner GitHub refuses to delete and says is busy is 'busy'", async () => {
  await withFake(async (fake, gh) => {
    const runner = await registerRunner(fake, "jr-busy");
    await takeJob(fake, runner, "jr-busy");
    const from = fake.requests.length;
    assert.equal(await gh.deleteRunner(scope(fake), runner.id), "busy");
    assert.deepEqual(runnerCalls(fake, from), ["DELETE 422", "GET 200"]);
    assert.equal(fake.runners()[0]?.busy, true, "kept, running its job");
  });
});

test("a busy runner that finishes its job between the 422 and the look at it is 'not_found': it removed itself, after a job", async () => {
  await withFake(async (fake, gh) => {
    const runner = await registerRunner(fake, "jr-finishing");
    const jobId = await takeJob(fake, runner, "jr-finishing");
    // The look at the runner arrives once its job is done (an ephemeral runner is then gone).
    fake.inject({ route: RUNNER, method: "GET", times: 1, delayMs: 500 });
    const from = fake.requests.length;
    const outcome = gh.deleteRunner(scope(fake), runner.id);
    await fake.waitFor(() => runnerCalls(fake, from).includes("DELETE 422"), 5_000, "the busy 422");
    await sleep(50);
    const done = await fetch(`${fake.url}/_fake/runners/${runner.id}/complete`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: runner.token, jobId, conclusion: "success" }),
    });
    assert.equal(done.status, 200);
    assert.equal(await outcome, "not_found");
    assert.deepEqual(runnerCalls(fake, from), ["DELETE 422", "GET 404"]);
  });
});

test("a 422 whose runner GitHub then cannot say anything of (the look refused) fails the call, retryable, and never reads as busy", async () => {
  await withFake(async (fake, gh) => {
    const runner = await registerRunner(fake, "jr-unknown");
    fake.inject({ route: RUNNER, method: "DELETE", status: 422, times: 1 });
    fake.inject({ route: RUNNER, method: "GET", status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "x", status: "403" } });
    const from = fake.requests.length;
    const err = await gh.deleteRunner(scope(fake), runner.id).then(
      (outcome) => assert.fail(`answered ${outcome}`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof GitHubError, String(err));
    assert.deepEqual([err.status, err.retryable], [422, true]);
    assert.deepEqual(runnerCalls(fake, from), ["DELETE 422", "GET 403"]);
    assert.equal(fake.runners().length, 1);
  });
});

test("a deletion of a runner's registration is noted on its record first; the note is taken back when GitHub refused it (busy, or a 422 for another reason), and kept when it deleted or its answer may have landed (a 5xx)", async () => {
  await withFake(async (fake, gh) => {
    const runners = new RunnerStore(shared.conn, `${shared.redis.prefix}-noted`);
    const noteOf = async (name: string) => (await runners.get(name))?.deregisteringAt;
    const recorded = async (name: string): Promise<RunnerRecord> => {
      const runner = await registerRunner(fake, name);
      const record: RunnerRecord = { name, pool: "default", host: "host-a", state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: runner.id, demandId: `${name}-1`, createdAt: Date.now() };
      await runners.put(record);
      if (name.endsWith("busy")) await takeJob(fake, runner, name);
      return record;
    };

    const busy = await recorded("jr-noted-busy");
    assert.equal(await deregisterNoted(gh, runners, busy), "busy");
    assert.equal(await noteOf(busy.name), undefined, "refused: nothing deleted");

    const refused = await recorded("jr-noted-refused");
    fake.inject({ route: RUNNER, method: "DELETE", status: 422, times: 1 });
    assert.equal((await githubFailure(deregisterNoted(gh, runners, refused))).status, 422);
    assert.equal(await noteOf(refused.name), undefined, "refused: nothing deleted");

    // A 5xx to the call and each of its retries: GitHub may have deleted it all the same.
    const failing = await recorded("jr-noted-5xx");
    fake.inject({ route: RUNNER, method: "DELETE", status: 502, times: 4 });
    assert.equal((await githubFailure(deregisterNoted(gh, runners, failing))).status, 502);
    assert.equal(typeof (await noteOf(failing.name)), "number", "may have landed: kept");

    const deleted = await recorded("jr-noted-deleted");
    const before = Date.now();
    assert.equal(await deregisterNoted(gh, runners, deleted), "deleted");
    assert.ok(((await noteOf(deleted.name)) ?? 0) >= before, "deleted: the note stays until the record goes");
  });
});
