/**
 * The leader's loops and one installation out of its primary rate limit (real Redis, the fake
 * GitHub through the real client). GitHub's wait lasts until its window resets, up to an hour, and
 * holds every call of the installation. A launch waits it out; a leader loop's read does not (it
 * waits a few seconds at most): the installation's work is skipped for the pass, and the other
 * installations' queued jobs whose webhooks were lost are recovered, and their orphan registrations
 * deleted, in the same pass, not an hour later, once the pass's time limit has cut off a pass that waited.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { redisForFile } from "../helpers/redis.ts";
import { demandState, scopedRedis } from "../helpers/system.ts";
import { githubFor } from "../helpers/github.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues } from "../../src/queue/demand-queue.ts";
import { githubRunnersLoop } from "../../src/reconcile/github-runners.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { activeRepos, queuedLoop } from "../helpers/active-repos.ts";

const shared = redisForFile();
const LABELS = ["self-hosted", "linux"];
const PAUSED = 71;
const HEALTHY = 72;

// The timeout only stops a pass that waits out the hour (the fault without the fix): no assertion is timed.
test("github-queued: an installation paused by GitHub's primary rate limit for 40 minutes is skipped for the pass, and another installation's lost queued job is recovered in it", { timeout: 120_000 }, async () => {
  const fake = await FakeGitHub.start({
    webhookSecret: WEBHOOK_SECRET,
    installations: [
      { owner: "slowco", id: PAUSED },
      { owner: "fastco", id: HEALTHY },
    ],
  });
  // No webhook reaches us: demand comes only from the loop.
  fake.setWebhookUrl("http://127.0.0.1:9/");
  const r = scopedRedis(shared.redis, "rate-paused");
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, shared.conn);
  const github = githubFor(fake);
  try {
    const paused = [await fake.queueJob({ owner: "slowco", repo: "app", labels: LABELS }), await fake.queueJob({ owner: "slowco", repo: "lib", labels: LABELS })];
    const healthy = await fake.queueJob({ owner: "fastco", repo: "app", labels: LABELS });
    // Most recently active first: the paused installation's repositories are listed first.
    const repos = await activeRepos(shared.conn, r.prefix, [
      { installationId: HEALTHY, owner: "fastco", repo: "app" },
      { installationId: PAUSED, owner: "slowco", repo: "lib" },
      { installationId: PAUSED, owner: "slowco", repo: "app" },
    ]);
    // The paused installation's budget is spent, its window resetting in 40 minutes: whichever of
    // its repositories is listed first (both were active in the same millisecond, perhaps) is refused.
    const reset = Math.ceil(Date.now() / 1000) + 2400;
    for (const repo of ["app", "lib"]) {
      fake.inject({ route: `/repos/slowco/${repo}/actions/runs`, status: 403, rateLimit: "primary", headers: { "x-ratelimit-reset": String(reset) }, times: 1 });
    }
    const loop = queuedLoop(fake, shared.conn, r.prefix, queues, repos, { github });

    const failure = await loop.run(new AbortController().signal).then(
      () => assert.fail("the pass reports the installation it skipped"),
      (err: unknown) => err as Error,
    );
    assert.match(failure.message, new RegExp(`^checking queued jobs failed 1 times \\(3 repositories\\); first: slowco/(app|lib): installation ${PAUSED} is paused by GitHub's rate limit until \\d\\d:\\d\\d UTC \\(in 4\\d min\\)`));
    // The reset's minute (the wait ends a second or two past the reset: the next minute, perhaps).
    const hhmm = (s: number) => new Date(s * 1000).toISOString().slice(11, 16);
    assert.ok([hhmm(reset), hhmm(reset + 5)].some((t) => failure.message.includes(`until ${t} UTC`)), failure.message);
    assert.match(failure.message, new RegExp(`; 1 more skipped this pass: installation ${PAUSED} paused by GitHub's rate limit$`));

    assert.equal((await demandState(r, "default", `${healthy.id}-1`))?.state, "waiting", "the healthy installation's lost job recovered in the same pass");
    for (const job of paused) assert.equal(await demandState(r, "default", `${job.id}-1`), undefined, "the paused installation's jobs wait for a later pass");
    const sent = fake.requests.filter((q) => q.route === "/repos/{owner}/{repo}/actions/runs");
    assert.deepEqual(
      sent.filter((q) => q.installationId === PAUSED).map((q) => q.status),
      [403],
      "one refused call for the paused installation, and nothing sent for it after (its other repository skipped)",
    );
    assert.ok(
      sent.findIndex((q) => q.installationId === HEALTHY) > sent.findIndex((q) => q.installationId === PAUSED),
      "the healthy installation was listed after the paused one's refusal",
    );

    // The wait still holds the installation: a launch's read (no maxWaitMs) would wait it out; the loop's next pass skips it again at once.
    await assert.rejects(loop.run(new AbortController().signal), new RegExp(`slowco/(app|lib): installation ${PAUSED} is paused`));
    assert.equal(fake.requests.filter((q) => q.installationId === PAUSED && q.route === "/repos/{owner}/{repo}/actions/runs").length, 1, "nothing more sent while paused");
  } finally {
    github.close();
    await queues.close();
    await fake.close();
  }
});

test("github-runners: an installation paused by GitHub's primary rate limit is skipped for the pass, and another installation's orphan registration is deleted in it", { timeout: 120_000 }, async () => {
  const fake = await FakeGitHub.start({
    webhookSecret: WEBHOOK_SECRET,
    installations: [
      { owner: "slowco", id: PAUSED },
      { owner: "fastco", id: HEALTHY },
    ],
  });
  const r = scopedRedis(shared.redis, "rate-paused-runners");
  const github = githubFor(fake);
  try {
    const orphan = await github.generateJitConfig({ installationId: HEALTHY, owner: "fastco", repo: "app" }, { name: "jitrunner-default-00000000a1", labels: LABELS });
    const loop = githubRunnersLoop({
      github,
      runners: new RunnerStore(shared.conn, r.prefix),
      repos: await activeRepos(shared.conn, r.prefix, [
        { installationId: HEALTHY, owner: "fastco", repo: "app" },
        { installationId: PAUSED, owner: "slowco", repo: "lib" },
        { installationId: PAUSED, owner: "slowco", repo: "app" },
      ]),
      pools: [{ scope: "repository" }],
      namePrefix: "jitrunner",
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxRepositories: 10,
      graceMs: 0,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
    });
    const reset = Math.ceil(Date.now() / 1000) + 2400;
    for (const repo of ["app", "lib"]) {
      fake.inject({ route: `/repos/slowco/${repo}/actions/runners`, method: "GET", status: 403, rateLimit: "primary", headers: { "x-ratelimit-reset": String(reset) }, times: 1 });
    }

    await assert.rejects(
      loop.run(new AbortController().signal),
      new RegExp(`^Error: checking runners failed 1 times \\(3 scopes\\); first: slowco/(app|lib): installation ${PAUSED} is paused by GitHub's rate limit until .*; 1 more skipped this pass`),
    );
    assert.deepEqual(
      fake.runners().filter((x) => x.id === orphan.runnerId),
      [],
      "the healthy installation's orphan deleted in the same pass",
    );
    const lists = fake.requests.filter((q) => q.route === "/repos/{owner}/{repo}/actions/runners" && q.method === "GET");
    assert.deepEqual(
      lists.filter((q) => q.installationId === PAUSED).map((q) => q.status),
      [403],
      "nothing sent for the paused installation after its refusal",
    );
  } finally {
    github.close();
    await fake.close();
  }
});
