/**
 * The leader's listing loops with GitHub slow (the fake's per-route delay, the real client, real
 * Redis): each pass has a time limit (twice its interval, at least 30 s), and listing every
 * repository's runs, or every scope's runners, takes longer than that here. A pass stops listing at
 * half its limit and goes on with what it listed, so github-queued still lists runs' jobs and
 * recovers a lost queued job, and github-runners still ends a busy runner gone from GitHub; the
 * next pass lists first what this one did not reach. Each test's pass runs under the limit the
 * loop runner gives it (passTimeoutMs), with its budget, as a leader's would.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { FakeGitHub, type FakeJob } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { redisForFile } from "../helpers/redis.ts";
import { demandState, scopedRedis } from "../helpers/system.ts";
import { githubFor } from "../helpers/github.ts";
import { activeRepos, queuedLoop } from "../helpers/active-repos.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { DemandQueues } from "../../src/queue/demand-queue.ts";
import { githubRunnersLoop } from "../../src/reconcile/github-runners.ts";
import { passBudget, passTimeoutMs, type Loop } from "../../src/reconcile/loops.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const shared = redisForFile();

/** One pass, under the time limit and with the budget the loop runner gives it. */
function pass(loop: Loop): Promise<void> {
  const limitMs = passTimeoutMs(INTERVAL_MS);
  return loop.run(AbortSignal.timeout(limitMs), passBudget(limitMs));
}
const LABELS = ["self-hosted", "linux"];
const RUNS = "/repos/{owner}/{repo}/actions/runs";
const RUN_JOBS = "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs";
const RUNNERS = "/repos/{owner}/{repo}/actions/runners";
/** A short interval: the pass limit is its least, 30 s, and listing stops 15 s in. */
const INTERVAL_MS = 1_000;
/** Active repositories: with the delays below, listing them all would take about twice the pass limit. */
const REPOS = Array.from({ length: 12 }, (_, i) => `app${String(i).padStart(2, "0")}`);

/** A sink for the loop's log lines, and the lines. */
function logLines() {
  const lines: Array<{ level: number; msg: string; notListed?: number }> = [];
  const logger = createLogger("info", new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString()) as (typeof lines)[number]), cb()) }));
  return { lines, logger };
}

/** The repository of each request to `route` from index `from` on, in order. */
function reposAsked(fake: FakeGitHub, route: string, from = 0): string[] {
  return fake.requests.slice(from).filter((q) => q.route === route && q.method === "GET").map((q) => q.path.split("/")[3]!);
}

test("GitHub slow to list runs: github-queued stops listing repositories at half the pass's limit and still lists the runs' jobs, recovering lost queued jobs; the next pass lists the rest first", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.setWebhookUrl("http://127.0.0.1:9/");
  const r = scopedRedis(shared.redis, "slow-queued");
  const queues = new DemandQueues({ redisUrl: r.url, prefix: r.prefix, attempts: 3 }, shared.conn);
  const github = githubFor(fake);
  const { lines, logger } = logLines();
  try {
    // A job in each repository whose queued webhook was lost.
    const jobs = new Map<string, FakeJob>();
    for (const repo of REPOS) jobs.set(repo, await fake.queueJob({ owner: "acme", repo, labels: LABELS }));
    const repos = await activeRepos(shared.conn, r.prefix, REPOS.map((repo) => ({ installationId: fake.installationId, owner: "acme", repo })));
    const loop = queuedLoop(fake, shared.conn, r.prefix, queues, repos, { github, intervalMs: INTERVAL_MS, maxRepositories: 100, maxRunsPerPass: 100, logger });
    const recovered = async () => {
      const out: string[] = [];
      for (const [repo, job] of jobs) if (await demandState(r, "default", `${job.id}-${job.run_attempt}`)) out.push(repo);
      return out.sort();
    };
    // Three list calls a repository (one per run status), 1.5 s each: 54 s for all twelve.
    fake.inject({ route: RUNS, method: "GET", delayMs: 1_500, times: 1_000 });

    await pass(loop);
    const first = [...new Set(reposAsked(fake, RUNS))].sort();
    assert.ok(first.length > 0 && first.length < REPOS.length, `the listing stopped early: ${first.length} of ${REPOS.length} repositories`);
    assert.ok(reposAsked(fake, RUN_JOBS).length > 0, "the runs' jobs were listed");
    assert.deepEqual(await recovered(), first, "each listed repository's lost job recovered, within the pass's limit");
    const notices = lines.filter((l) => /stopped listing repositories' runs at half its time limit/.test(l.msg));
    assert.equal(notices.length, 1, "said once for the pass, not per repository");
    assert.equal(notices[0]!.notListed, REPOS.length - first.length);

    // GitHub fast again: the next pass lists first the repositories the last one did not reach.
    fake.clearFaults({ route: RUNS });
    const from = fake.requests.length;
    await pass(loop);
    const second = reposAsked(fake, RUNS, from);
    const notReached = REPOS.length - first.length;
    assert.deepEqual([...new Set(second.slice(0, 3 * notReached))].sort(), REPOS.filter((repo) => !first.includes(repo)), "the rest listed first");
    assert.deepEqual(await recovered(), [...REPOS].sort(), "every lost job recovered");
    assert.equal(lines.filter((l) => /listed all its repositories' runs again/.test(l.msg)).length, 1, "a whole pass again, said once");
  } finally {
    github.close();
    await queues.close();
    await fake.close();
  }
});

test("GitHub slow to list runners: github-runners stops listing scopes at half the pass's limit and still ends a busy runner gone from GitHub; the next pass lists the rest first", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-slow-runners`;
  const github = githubFor(fake);
  const runners = new RunnerStore(shared.conn, prefix);
  const { lines, logger } = logLines();
  const loop = githubRunnersLoop({
    github,
    runners,
    repos: await activeRepos(shared.conn, prefix, REPOS.map((repo) => ({ installationId: fake.installationId, owner: "acme", repo }))),
    pools: [{ scope: "repository" }],
    namePrefix: "jitrunner",
    intervalMs: INTERVAL_MS,
    windowMs: 3600_000,
    maxRepositories: 100,
    graceMs: 0,
    metrics: new Metrics({ processMetrics: false }),
    logger,
  });
  try {
    // A runner recorded busy whose registration went with its job (GitHub knows no runner 999999),
    // its completed webhook lost.
    const record = { pool: "default", host: "elsewhere", installationId: fake.installationId, owner: "acme", repo: "gone", demandId: "1-1", jobId: 1, createdAt: Date.now() - 60_000 };
    await runners.put({ ...record, name: "jitrunner-default-00000000a1", state: "busy", busyAt: Date.now() - 60_000, runnerId: 999_999 });
    // 3 s a list: 39 s for the thirteen scopes (the recorded runner's, then the active repositories').
    fake.inject({ route: RUNNERS, method: "GET", delayMs: 3_000, times: 1_000 });

    await pass(loop);
    const first = reposAsked(fake, RUNNERS);
    assert.ok(first.length > 0 && first.length < REPOS.length + 1, `the listing stopped early: ${first.length} of ${REPOS.length + 1} scopes`);
    assert.equal((await runners.get("jitrunner-default-00000000a1"))?.state, "completed", "the busy runner gone from GitHub ended, within the pass's limit");
    assert.equal(lines.filter((l) => /stopped listing runner lists at half its time limit/.test(l.msg)).length, 1, "said once for the pass");

    fake.clearFaults({ route: RUNNERS });
    const from = fake.requests.length;
    await pass(loop);
    const second = reposAsked(fake, RUNNERS, from);
    const rest = ["gone", ...REPOS].filter((repo) => !first.includes(repo));
    assert.deepEqual(second.slice(0, rest.length).sort(), rest.sort(), "the scopes not reached listed first");
    assert.deepEqual(second.slice(rest.length), first, "then those listed last pass, in the same order");
  } finally {
    github.close();
    await fake.close();
  }
});
