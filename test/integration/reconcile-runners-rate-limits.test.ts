/**
 * GitHub's rate limits as the fake plays them, and the github-runners loop under GitHub's usual
 * secondary limit: a 403 whose message says "secondary rate limit", with no `retry-after` (GitHub
 * often sends none; its guidance is then to wait at least a minute, the client's default; the test
 * shortens it).
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { registerRunner } from "../helpers/system.ts";
import { redisForFile } from "../helpers/redis.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { githubRunnersLoop } from "../../src/reconcile/github-runners.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { githubFor } from "../helpers/github.ts";
import { activeRepos } from "../helpers/active-repos.ts";

const shared = redisForFile();
const LIST = "/repos/{owner}/{repo}/actions/runners";
const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const JIT_PATH = "/repos/acme/limits/actions/runners/generate-jitconfig";
/** The wait for a secondary limit without retry-after, shortened from GitHub's minute. */
const WAIT_S = 3;

test("the fake's rate-limit faults answer as GitHub does: a primary limit with remaining 0 and the reset, a secondary one with its message and no retry-after unless given", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const client = new FakeGitHubClient(fake);
  const body = { name: "limits-1", runner_group_id: 1, labels: ["x"] };
  try {
    await client.installationToken(); // minted first: the faults below hit the next calls
    fake.inject({ route: JIT_PATH, status: 403, times: 1 });
    fake.inject({ route: JIT_PATH, status: 429, times: 1 });
    fake.inject({ route: JIT_PATH, status: 403, rateLimit: "secondary", times: 1 });
    fake.inject({ route: JIT_PATH, status: 429, rateLimit: "primary", times: 1, headers: { "x-ratelimit-reset": "1700000000" } });
    fake.inject({ route: JIT_PATH, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "x", status: "403" } });
    const answers = [];
    for (let i = 0; i < 5; i++) answers.push(await client.call("POST", JIT_PATH, { body }));
    const now = Date.now() / 1000;
    const [primary, secondary, secondary403, primary429, denied] = answers.map((a) => ({
      status: a.status,
      message: (a.body as { message: string }).message,
      remaining: a.headers.get("x-ratelimit-remaining"),
      reset: Number(a.headers.get("x-ratelimit-reset")),
      retryAfter: a.headers.get("retry-after"),
    }));

    assert.equal(primary!.status, 403);
    assert.match(primary!.message, /^API rate limit exceeded for installation ID \d+\.$/);
    assert.equal(primary!.remaining, "0", "a primary limit: nothing remaining");
    // Whole seconds, rounded up: up to a second past the hour.
    assert.ok(primary!.reset > now && primary!.reset <= now + 3601, `reset within the hour (${primary!.reset - now} s)`);

    for (const [s, status] of [[secondary!, 429], [secondary403!, 403]] as const) {
      assert.equal(s.status, status);
      assert.match(s.message, /^You have exceeded a secondary rate limit\. Please wait a few minutes before you try again\./);
      assert.notEqual(s.remaining, "0", "a secondary limit leaves the primary budget alone");
      assert.equal(s.retryAfter, null, "no retry-after unless the fault gives one");
    }
    assert.deepEqual([primary429!.status, primary429!.remaining, primary429!.reset], [429, "0", 1700000000], "headers given override the defaults");
    assert.deepEqual([denied!.status, denied!.message], [403, "Must have admin rights to Repository."]);
    assert.notEqual(denied!.remaining, "0", "a 403 with a body of its own is no rate limit");
    assert.equal((await client.call("POST", JIT_PATH, { body })).status, 201, "then normal service");
  } finally {
    await fake.close();
  }
});

test("the runners loop hits a secondary limit without retry-after: the client waits as long as told for that case (a minute by default, as GitHub asks; 3 s here), holding the installation's other calls, then the pass completes", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-secondary`;
  const lines: string[] = [];
  const sink = new Writable({ write: (chunk, _enc, cb) => (lines.push(String(chunk)), cb()) });
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { logger: createLogger("info", sink), metrics, secondaryLimitWaitSeconds: WAIT_S });
  const scope = { installationId: fake.installationId, owner: "acme", repo: "app" };
  const loop = githubRunnersLoop({
    github,
    runners: new RunnerStore(shared.conn, prefix),
    repos: await activeRepos(shared.conn, prefix, [scope]),
    pools: [{ scope: "repository" }],
    namePrefix: "jitrunner",
    intervalMs: 60_000,
    windowMs: 3600_000,
    maxRepositories: 10,
    graceMs: 0,
    metrics,
    logger: createLogger("silent"),
  });
  try {
    const orphan = await registerRunner(fake, "jitrunner-default-00000000f6");
    fake.inject({ route: LIST, method: "GET", status: 403, rateLimit: "secondary", times: 1 });
    const pass = loop.run(new AbortController().signal);
    await waitFor(() => fake.requests.some((r) => r.route === LIST && r.status === 403), 10_000, "the secondary limit answered");
    const refusedAt = fake.requests.find((r) => r.route === LIST && r.status === 403)!.at;
    await waitFor(() => lines.some((l) => /secondary rate limit: waiting 3 s as told, then retrying/.test(l)), 5_000, "the wait heard");
    // Another call of the installation meanwhile is not sent either until the wait is over.
    const other = github.getRunner(scope, orphan.id);
    await pass;
    await other;

    const listed = fake.requests.filter((r) => r.route === LIST);
    assert.deepEqual(listed.map((r) => r.status), [403, 200], "one retry, after the wait");
    assert.ok(listed[1]!.at - refusedAt >= WAIT_S * 1000 - 100, `the list asked again ${listed[1]!.at - refusedAt} ms after the refusal`);
    const got = fake.requests.filter((r) => r.route === RUNNER && r.method === "GET");
    assert.ok(got.length === 1 && got[0]!.at - refusedAt >= WAIT_S * 1000 - 100, `the other read held: sent ${got.map((r) => r.at - refusedAt).join(", ")} ms after the refusal`);
    assert.deepEqual(fake.runners().filter((r) => r.id === orphan.id), [], "the pass went on: the orphan deleted");
    const text = await metrics.registry.metrics();
    assert.match(text, /jitrunner_github_rate_limited_total\{kind="secondary",outcome="retried"\} 1/);
  } finally {
    github.close();
    await fake.close();
  }
});
