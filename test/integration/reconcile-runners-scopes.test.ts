/**
 * Which scopes the github-runners loop lists (fake GitHub, real Redis, the real GitHub client):
 * not only the recently active repositories, but every pool's warm scope and the scopes of the
 * runners recorded in Redis, so that a registration left behind where no job has been queued for a
 * day (a warm runner's launch killed after it registered) is still found and deleted.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { redisForFile } from "../helpers/redis.ts";
import type { PoolConfig } from "../../src/config/load.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { githubRunnersLoop } from "../../src/reconcile/github-runners.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { githubFor } from "../helpers/github.ts";

const shared = redisForFile();
const LIST_REPO = "/repos/{owner}/{repo}/actions/runners";
const LIST_ORG = "/orgs/{org}/actions/runners";

/** Registers a runner at `path` (`/repos/o/r` or `/orgs/o`) as jitrunner's launch would; its id. */
async function register(fake: FakeGitHub, path: string, name: string): Promise<number> {
  const res = await new FakeGitHubClient(fake).call("POST", `${path}/actions/runners/generate-jitconfig`, {
    body: { name, runner_group_id: 1, labels: ["self-hosted", "linux"] },
  });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return (res.body as { runner: { id: number } }).runner.id;
}

/** The loop over real Redis state under `prefix`, its log lines collected. */
function loopOf(fake: FakeGitHub, prefix: string, pools: readonly Pick<PoolConfig, "scope" | "warm">[], over: { graceMs?: number; maxRepositories?: number } = {}) {
  const lines: Array<{ level: number; msg: string }> = [];
  const sink = new Writable({ write: (chunk, _enc, cb) => (lines.push(JSON.parse(String(chunk)) as { level: number; msg: string }), cb()) });
  const github = githubFor(fake);
  const loop = githubRunnersLoop({
    github,
    runners: new RunnerStore(shared.conn, prefix),
    repos: new ActiveRepos(shared.conn, prefix),
    pools,
    namePrefix: "jitrunner",
    intervalMs: 60_000,
    windowMs: 24 * 3600_000,
    maxRepositories: over.maxRepositories ?? 100,
    graceMs: over.graceMs ?? 0,
    metrics: new Metrics({ processMetrics: false }),
    logger: createLogger("info", sink),
  });
  const signal = new AbortController().signal;
  return { run: () => loop.run(signal), lines, close: () => github.close() };
}

test("a registration of ours in a pool's warm scope, where no job was queued within the window, is deleted after the grace period", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-warm-scope`;
  const GRACE_MS = 1500;
  const pools = [
    { scope: "repository" as const, warm: { installationId: fake.installationId, owner: "acme", repo: "warm" } },
    { scope: "organization" as const, warm: { installationId: fake.installationId, owner: "acme-org" } },
  ];
  const loop = loopOf(fake, prefix, pools, { graceMs: GRACE_MS });
  try {
    // The repository was active two days ago: outside the window, dropped from the set.
    await new ActiveRepos(shared.conn, prefix).touch({ installationId: fake.installationId, owner: "acme", repo: "warm", scope: "repository" }, Date.now() - 48 * 3600_000);
    // Warm launches killed after their registrations were made, before their records were written.
    const repoOrphan = await register(fake, "/repos/acme/warm", "jitrunner-default-00000000a1");
    const orgOrphan = await register(fake, "/orgs/acme-org", "jitrunner-orgpool-00000000b2");
    const notOurs = await register(fake, "/repos/acme/warm", "other-ci-runner-1");
    const ids = () => new Set(fake.runners().map((r) => r.id));

    await loop.run();
    const firstSeen = Date.now();
    assert.ok(ids().has(repoOrphan) && ids().has(orgOrphan), "kept within the grace period");
    assert.equal(fake.requests.filter((r) => r.route === LIST_REPO && r.path === "/repos/acme/warm/actions/runners").length, 1, "the warm repository listed");
    assert.equal(fake.requests.filter((r) => r.route === LIST_ORG && r.path === "/orgs/acme-org/actions/runners").length, 1, "the warm organization listed");

    await new Promise((res) => setTimeout(res, GRACE_MS - (Date.now() - firstSeen) + 100));
    await loop.run();
    assert.ok(!ids().has(repoOrphan), "the repository's orphan deleted");
    assert.ok(!ids().has(orgOrphan), "the organization's orphan deleted");
    assert.ok(ids().has(notOurs), "a runner without our prefix is never touched");
    const deletes = fake.requests.filter((r) => r.method === "DELETE");
    assert.deepEqual(deletes.map((r) => r.status), [204, 204]);
  } finally {
    loop.close();
    await fake.close();
  }
});

test("a scope of a runner recorded in Redis is listed, active or not: an orphan next to it is deleted and a busy runner gone from it is ended", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-recorded-scope`;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }]);
  const runners = new RunnerStore(shared.conn, prefix);
  try {
    // A runner of acme/quiet, recorded and running a job; that repository has not been active for a day.
    const kept = await register(fake, "/repos/acme/quiet", "jitrunner-default-00000000c3");
    const record = { pool: "default", host: "elsewhere", installationId: fake.installationId, owner: "acme", repo: "quiet", demandId: "1-1", createdAt: Date.now() - 60_000 };
    await runners.put({ ...record, name: "jitrunner-default-00000000c3", state: "idle", runnerId: kept });
    // Its neighbour's launch died after registering; and a runner recorded busy whose registration
    // went with its job, its completed webhook lost.
    const orphan = await register(fake, "/repos/acme/quiet", "jitrunner-default-00000000d4");
    await runners.put({ ...record, name: "jitrunner-default-00000000e5", state: "busy", busyAt: Date.now() - 60_000, runnerId: 999_999, demandId: "2-1", jobId: 2 });

    await loop.run(); // the busy runner is first seen missing here (grace 0: ended on this pass)
    assert.deepEqual(fake.runners().map((r) => r.id), [kept], "the orphan deleted, the recorded runner kept");
    assert.equal((await runners.get("jitrunner-default-00000000e5"))?.state, "completed", "the busy runner gone from GitHub ended");
  } finally {
    loop.close();
    await fake.close();
  }
});

test("a scope whose list fails in a pass keeps its orphan's grace: the next pass that lists it deletes the orphan, the grace counted from when it was first seen", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-list-fails`;
  const GRACE_MS = 1500;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }], { graceMs: GRACE_MS });
  try {
    await new ActiveRepos(shared.conn, prefix).touch({ installationId: fake.installationId, owner: "acme", repo: "flaky", scope: "repository" });
    const orphan = await register(fake, "/repos/acme/flaky", "jitrunner-default-00000000f1");
    const ids = () => new Set(fake.runners().map((r) => r.id));

    await loop.run();
    const firstSeen = Date.now();
    assert.ok(ids().has(orphan), "kept within the grace period");

    // Past the grace, the scope's list fails (a refusal the client does not retry; a 5xx past its
    // retries or a rate limit given up on fails the listing the same way).
    await new Promise((res) => setTimeout(res, GRACE_MS - (Date.now() - firstSeen) + 100));
    fake.inject({ route: "/repos/acme/flaky/actions/runners", method: "GET", status: 403, times: 1, body: { message: "Must have admin rights to Repository." } });
    await assert.rejects(loop.run(), /checking runners failed 1 times .*acme\/flaky: .*403/);
    assert.ok(ids().has(orphan), "nothing deleted in a pass that could not list the scope");

    await loop.run();
    assert.ok(!ids().has(orphan), "deleted on the next pass that lists it: its grace did not start again");
    const lists = fake.requests.filter((r) => r.route === LIST_REPO && r.path === "/repos/acme/flaky/actions/runners");
    assert.deepEqual(lists.map((r) => r.status), [200, 403, 200]);
    assert.deepEqual(fake.requests.filter((r) => r.method === "DELETE").map((r) => r.status), [204]);
  } finally {
    loop.close();
    await fake.close();
  }
});

test("a runner recorded busy that GitHub no longer lists keeps its grace through a pass whose list of its scope fails: the next pass marks it completed", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-busy-list-fails`;
  const GRACE_MS = 1500;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }], { graceMs: GRACE_MS });
  const runners = new RunnerStore(shared.conn, prefix);
  const name = "jitrunner-default-00000000c3";
  try {
    // Registered, recorded busy, then gone from GitHub (its job over) with its completed webhook lost.
    const runnerId = await register(fake, "/repos/acme/flaky", name);
    await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: fake.installationId, owner: "acme", repo: "flaky", runnerId, demandId: "", createdAt: Date.now() });
    assert.ok(await runners.mark(name, "busy", 77));
    await new FakeGitHubClient(fake).call("DELETE", `/repos/acme/flaky/actions/runners/${runnerId}`);
    await new Promise((res) => setTimeout(res, 5)); // busy since before the first pass began

    await loop.run();
    const firstMissing = Date.now();
    assert.equal((await runners.get(name))?.state, "busy", "kept busy within the grace period");

    await new Promise((res) => setTimeout(res, GRACE_MS - (Date.now() - firstMissing) + 100));
    fake.inject({ route: "/repos/acme/flaky/actions/runners", method: "GET", status: 403, times: 1, body: { message: "Must have admin rights to Repository." } });
    await assert.rejects(loop.run(), /checking runners failed 1 times .*acme\/flaky: .*403/);
    assert.equal((await runners.get(name))?.state, "busy", "nothing changed in a pass that could not list the scope");

    await loop.run();
    assert.equal((await runners.get(name))?.state, "completed", "marked completed on the next pass that lists the scope: its grace did not start again");
  } finally {
    loop.close();
    await fake.close();
  }
});

test("two runners recorded busy gone from GitHub, GitHub failing every look at the first: the second is still marked completed, and the pass says the first failed", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-busy-look-fails`;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }]);
  const runners = new RunnerStore(shared.conn, prefix);
  const names = ["jitrunner-default-00000000d1", "jitrunner-default-00000000d2"];
  try {
    // Both registered, recorded busy (the first the older), then gone from GitHub with their completed webhooks lost.
    const ids: number[] = [];
    for (const [i, name] of names.entries()) {
      const runnerId = await register(fake, "/repos/acme/stuck", name);
      ids.push(runnerId);
      await runners.put({ name, pool: "default", host: "h1", state: "idle", installationId: fake.installationId, owner: "acme", repo: "stuck", runnerId, demandId: "", createdAt: Date.now() - 60_000 + i });
      assert.ok(await runners.mark(name, "busy", 80 + i));
      await new FakeGitHubClient(fake).call("DELETE", `/repos/acme/stuck/actions/runners/${runnerId}`);
    }
    await new Promise((res) => setTimeout(res, 5)); // busy since before the first pass began
    // GitHub fails every look at the first runner (a 500 it keeps answering).
    fake.inject({ route: `/repos/acme/stuck/actions/runners/${ids[0]}`, method: "GET", status: 500, times: 1000 });

    const failure = await loop.run().then(
      () => undefined,
      (err: unknown) => err,
    );
    assert.equal((await runners.get(names[1]!))?.state, "completed", "the second looked at and marked completed, after the first failed");
    assert.equal((await runners.get(names[0]!))?.state, "busy", "the first left as it was");
    assert.match(String(failure), /checking runners failed 1 times .*busy runner jitrunner-default-00000000d1: .*500/, "the pass says so, after doing the rest");
    const looks = fake.requests.filter((r) => r.route === "/repos/{owner}/{repo}/actions/runners/{runner_id}" && r.method === "GET").map((r) => r.path);
    assert.ok(looks.includes(`/repos/acme/stuck/actions/runners/${ids[1]}`), "GitHub asked about the second");
  } finally {
    loop.close();
    await fake.close();
  }
});

test("more active repositories than maxRepositories: the newest are listed, and the cap is said once, not every pass", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-repo-cap`;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }], { maxRepositories: 2 });
  const repos = new ActiveRepos(shared.conn, prefix);
  try {
    const now = Date.now();
    for (const [i, name] of ["oldest", "middle", "newest"].entries()) await repos.touch({ installationId: fake.installationId, owner: "acme", repo: name, scope: "repository" }, now - 3000 + i * 1000);
    await loop.run();
    await loop.run();
    const listed = fake.requests.filter((r) => r.route === LIST_REPO).map((r) => r.path);
    const newestTwo = ["/repos/acme/newest/actions/runners", "/repos/acme/middle/actions/runners"];
    assert.deepEqual(listed, [...newestTwo, ...newestTwo], "the two newest, each pass; never the oldest");
    const said = loop.lines.filter((l) => /more repositories than reconcile.maxRepositories/.test(l.msg));
    assert.equal(said.length, 1, "said once over two passes");
    assert.equal(said[0]!.level, 40, "a warning");

    // Back under the cap (the oldest drops out of the window): said once, and not again.
    await shared.conn.zrem(`${prefix}:active-repos`, `${fake.installationId}/acme/oldest`);
    await loop.run();
    await loop.run();
    assert.equal(loop.lines.filter((l) => /checked again/.test(l.msg)).length, 1);
    assert.equal(loop.lines.filter((l) => /more repositories than reconcile.maxRepositories/.test(l.msg)).length, 1);
  } finally {
    loop.close();
    await fake.close();
  }
});

test("a user's repository served by a repository pool next to an organization pool: its owner's organization list is never read, and the pass succeeds", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const prefix = `${shared.redis.prefix}-user-owner`;
  const loop = loopOf(fake, prefix, [{ scope: "repository" }, { scope: "organization" }]);
  const repos = new ActiveRepos(shared.conn, prefix);
  // GitHub's answer for an account that is no organization.
  fake.inject({ route: "/orgs/someuser/actions/runners", method: "GET", status: 404, times: 100, body: { message: "Not Found" } });
  try {
    const installationId = fake.installationId;
    await repos.touch({ installationId, owner: "someuser", repo: "dotfiles", scope: "repository" });
    await repos.touch({ installationId, owner: "acme", repo: "site", scope: "organization" });
    await repos.touch({ installationId, owner: "acme", repo: "lib", scope: "repository" });
    await loop.run();
    await loop.run();
    const orgLists = fake.requests.filter((r) => r.route === LIST_ORG).map((r) => r.path);
    assert.deepEqual(orgLists, ["/orgs/acme/actions/runners", "/orgs/acme/actions/runners"], "the organization an organization pool served, each pass; never the user");
    const repoLists = new Set(fake.requests.filter((r) => r.route === LIST_REPO).map((r) => r.path));
    assert.deepEqual(repoLists, new Set(["/repos/someuser/dotfiles/actions/runners", "/repos/acme/site/actions/runners", "/repos/acme/lib/actions/runners"]));
  } finally {
    loop.close();
    await fake.close();
  }
});
