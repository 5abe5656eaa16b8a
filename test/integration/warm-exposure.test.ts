/**
 * The warm-runner check against the fake GitHub through jitrunner's real client (no Redis, no
 * Docker): a repository's visibility and a runner group's `allows_public_repositories` as the client
 * reads them, and WarmExposure's verdicts: asked once per pool per few minutes, a repository made
 * public noticed when the answer expires, a failed lookup refusing (fail closed) until one
 * succeeds, each change said once, and a job's launch in an answer's last minute asking ahead.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import type { PoolConfig } from "../../src/config/load.ts";
import { GitHubError } from "../../src/errors.ts";
import type { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { createLogger } from "../../src/logger.ts";
import { WarmExposure } from "../../src/worker/warm-exposure.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { githubFor } from "../helpers/github.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo } from "../helpers/system.ts";

const REPO = "/repos/{owner}/{repo}";
const GROUPS = "/orgs/{org}/actions/runner-groups";
const GROUP_REPOS = "/orgs/{org}/actions/runner-groups/{runner_group_id}/repositories";

let fake: FakeGitHub;
let gh: OctokitGitHub;
before(async () => {
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  gh = githubFor(fake);
});
after(async () => {
  gh.close();
  await fake.close();
});

function pool(over: Record<string, unknown>): PoolConfig {
  return testConfig({ pools: [{ name: "warm", labels: ["self-hosted"], image: "runner", minIdle: 1, ...over }] }).pools[0]!;
}

/** A WarmExposure on a clock the test moves, and the lines it logged. */
function exposure() {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  const clock = { now: 1_000_000 };
  const guard = new WarmExposure({ github: gh, logger: createLogger("info", sink), now: () => clock.now });
  const said = (msg: RegExp) => lines.filter((l) => msg.test(l)).length;
  return { guard, clock, lines, said };
}

test("the client reads a repository's visibility and an organization's runner groups as GitHub gives them", async () => {
  const inst = fake.installationId;
  assert.deepEqual(await gh.getRepositoryVisibility(inst, "acme", "secret"), { private: true, visibility: "private" });
  fake.setRepositoryPrivate("acme", "open-source", false);
  assert.deepEqual(await gh.getRepositoryVisibility(inst, "acme", "open-source"), { private: false, visibility: "public" });

  const org = { installationId: inst, owner: "acme" };
  const open = fake.addRunnerGroup("Open-CI", { allowsPublicRepositories: true });
  const plain = { visibility: "all", restrictedToWorkflows: false, selectedWorkflows: [] };
  assert.deepEqual(await gh.getRunnerGroup(org, { id: 1 }), { id: 1, name: "Default", allowsPublicRepositories: false, ...plain });
  assert.deepEqual(await gh.getRunnerGroup(org, { name: "open-ci" }), { id: open, name: "Open-CI", allowsPublicRepositories: true, ...plain }, "by name, in any case");
  const workflows = ["acme/app/.github/workflows/deploy.yml@refs/heads/main"];
  const many = Array.from({ length: 101 }, (_, i) => `acme/repo-${i}`);
  const some = fake.addRunnerGroup("some-repos", { repositories: many, selectedWorkflows: workflows });
  assert.deepEqual(await gh.getRunnerGroup(org, { id: some }), {
    id: some,
    name: "some-repos",
    allowsPublicRepositories: false,
    visibility: "selected",
    restrictedToWorkflows: true,
    selectedWorkflows: workflows,
  });
  const before = callsTo(fake, GROUP_REPOS);
  const listed = await gh.listRunnerGroupRepositories(org, some);
  assert.deepEqual([listed.complete, [...listed.names].sort()], [true, [...many.map((n) => n.slice("acme/".length))].sort()]);
  assert.equal(callsTo(fake, GROUP_REPOS), before + 2, "101 repositories: two pages of 100");
  assert.equal(await gh.getRunnerGroup(org, { id: 999 }), undefined);
  assert.equal(await gh.getRunnerGroup(org, { name: "no-such-group" }), undefined);
  await assert.rejects(gh.getRunnerGroup({ ...org, repo: "app" }, { id: 1 }), /organization runners only/);

  fake.inject({ route: REPO, status: 404, times: 1, body: { message: "Not Found", documentation_url: "https://docs.github.com/rest/repos/repos#get-a-repository" } });
  const missing = await gh.getRepositoryVisibility(inst, "acme", "gone").then(
    () => assert.fail("a 404 answered"),
    (e: unknown) => e,
  );
  assert.ok(missing instanceof GitHubError && missing.status === 404, String(missing));
  assert.deepEqual(fake.invalidRequests(), [], "every request conforms to GitHub's OpenAPI description");
});

test("a repository pool: asked once per 5 minutes, not per launch; made public, refused and said once; private again, allowed and said so", async () => {
  const { guard, clock, said } = exposure();
  const p = pool({ warm: { installationId: fake.installationId, owner: "acme", repo: "app" } });
  const before = callsTo(fake, REPO);
  assert.equal(await guard.refusal(p), undefined);
  assert.equal(await guard.refusal(p), undefined);
  clock.now += 4 * 60_000;
  assert.equal(await guard.refusal(p), undefined);
  assert.equal(callsTo(fake, REPO) - before, 1, "one call within 5 minutes");

  fake.setRepositoryPrivate("acme", "app", false);
  assert.equal(await guard.refusal(p), undefined, "the answer kept until it expires");
  clock.now += 60_000;
  assert.equal(await guard.refusal(p), "public_repository", "noticed once the answer expired");
  clock.now += 5 * 60_000;
  assert.equal(await guard.refusal(p), "public_repository");
  assert.equal(callsTo(fake, REPO) - before, 3);
  assert.equal(said(/warm repository is public/), 1, "said once, not at every look");

  fake.setRepositoryPrivate("acme", "app", true);
  clock.now += 5 * 60_000;
  assert.equal(await guard.refusal(p), undefined);
  assert.equal(said(/warm runners allowed again/), 1);
});

test("a failed lookup refuses (fail closed), said once, asked again a minute later; a success allows again", async () => {
  const { guard, clock, said, lines } = exposure();
  const p = pool({ warm: { installationId: fake.installationId, owner: "acme", repo: "flaky" } });
  // A 403 that is no rate limit: GitHub will keep refusing it (the App lacks access), no retry.
  fake.inject({ route: REPO, status: 403, times: 2, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  const before = callsTo(fake, REPO);
  assert.equal(await guard.refusal(p), "visibility_unknown");
  assert.equal(await guard.refusal(p), "visibility_unknown", "kept for a minute: not asked again at once");
  assert.equal(callsTo(fake, REPO) - before, 1);
  clock.now += 60_000;
  assert.equal(await guard.refusal(p), "visibility_unknown");
  assert.equal(callsTo(fake, REPO) - before, 2);
  assert.equal(said(/no warm runners launched until GitHub says/), 1, "said once while it keeps failing");
  assert.match(lines.join(""), /Must have admin rights to Repository/, "GitHub's word in the log");
  clock.now += 60_000;
  assert.equal(await guard.refusal(p), undefined, "allowed once a lookup succeeds");
  assert.equal(said(/warm runners allowed again/), 1);
});

test("an organization pool: its runner group's allows_public_repositories decides; a group not there refuses; allowPublicRepositories refuses nothing, and costs a repository pool no call", async () => {
  const { guard } = exposure();
  const warm = { installationId: fake.installationId, owner: "acme" };
  fake.addRunnerGroup("public-ci", { allowsPublicRepositories: true });
  fake.addRunnerGroup("private-ci");
  const org = (over: Record<string, unknown>) => pool({ name: `org-${JSON.stringify(over).length}`, scope: "organization", warm, ...over });
  assert.equal(await guard.refusal(pool({ name: "default-group", scope: "organization", warm })), undefined, "the Default group (GitHub's default: no public repositories)");
  assert.equal(await guard.refusal(org({ runnerGroup: "public-ci" })), "public_runner_group");
  assert.equal(await guard.refusal(org({ runnerGroup: "Private-CI" })), undefined);
  assert.equal(await guard.refusal(org({ runnerGroup: "no-such-group" })), "runner_group_missing");

  const before = [callsTo(fake, GROUPS), callsTo(fake, REPO)];
  assert.equal(await guard.refusal(pool({ name: "allowed-org", scope: "organization", warm, runnerGroup: "public-ci", allowPublicRepositories: true })), undefined);
  fake.setRepositoryPrivate("acme", "public-app", false);
  assert.equal(await guard.refusal(pool({ name: "allowed-repo", warm: { ...warm, repo: "public-app" }, allowPublicRepositories: true })), undefined);
  assert.deepEqual(
    [callsTo(fake, GROUPS), callsTo(fake, REPO)],
    [before[0]! + 1, before[1]!],
    "the organization pool's group looked at all the same (which jobs its warm runners may be adopted for); no call for the repository pool",
  );
});

test("a recheck (the repository made public) asks GitHub at the next look, but not sooner than 10 s after the last ask", async () => {
  const { guard, clock } = exposure();
  const p = pool({ name: "rechecked", warm: { installationId: fake.installationId, owner: "acme", repo: "rechecked" } });
  const before = callsTo(fake, REPO);
  assert.equal(await guard.refusal(p), undefined);
  assert.equal(callsTo(fake, REPO), before + 1);

  fake.setRepositoryPrivate("acme", "rechecked", false);
  // Replays of one signed delivery, at once: one ask at most per 10 s whatever their number.
  clock.now += 2_000;
  for (let i = 0; i < 5; i++) guard.recheck("rechecked");
  assert.equal(await guard.refusal(p), undefined, "the answer of 2 s ago still stands");
  assert.equal(callsTo(fake, REPO), before + 1);
  clock.now += 8_000;
  assert.equal(await guard.refusal(p), "public_repository", "asked again 10 s after the last ask, not 5 minutes");
  assert.equal(callsTo(fake, REPO), before + 2);
  guard.recheck("no-such-pool");
  guard.recheck("rechecked");
  clock.now += 1_000;
  assert.equal(await guard.refusal(p), "public_repository");
  assert.equal(callsTo(fake, REPO), before + 2, "1 s after the last ask: not asked");
});

test("an organization pool's runners for jobs: asked per organization (each has its own runner groups), once for callers at once", async () => {
  const { guard } = exposure();
  fake.addRunnerGroup("per-org-ci");
  const p = pool({ name: "org-jobs", scope: "organization", runnerGroup: "per-org-ci", minIdle: 0 });
  const before = callsTo(fake, GROUPS);
  const acme = { installationId: fake.installationId, owner: "acme" };
  const results = await Promise.all([guard.refusal(p, undefined, acme), guard.refusal(p, undefined, acme), guard.refusal(p, undefined, { ...acme, owner: "ACME" })]);
  assert.deepEqual(results, [undefined, undefined, undefined]);
  assert.equal(callsTo(fake, GROUPS), before + 1, "three callers at once, one organization (in any case): one call");
  assert.equal(await guard.refusal(p, undefined, { ...acme, owner: "globex" }), undefined);
  assert.equal(callsTo(fake, GROUPS), before + 2, "another organization: its own call");
  assert.equal(await guard.refusal(p), undefined, "no warm target, no job's: nothing to ask");
  assert.equal(callsTo(fake, GROUPS), before + 2);
});

test("a job's launch asks again after a failed lookup rather than trusting it for a minute; a recheck during a lookup shortens its answer's life", async () => {
  const { guard, clock } = exposure();
  fake.addRunnerGroup("flaky-ci");
  const p = pool({ name: "org-flaky", scope: "organization", runnerGroup: "flaky-ci", minIdle: 0 });
  const acme = { installationId: fake.installationId, owner: "acme" };
  fake.inject({ route: GROUPS, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  const before = callsTo(fake, GROUPS);
  assert.equal(await guard.refusal(p, undefined, acme), "visibility_unknown");
  assert.equal(await guard.refusal(p, undefined, acme), "visibility_unknown", "the warm loop's way: kept a minute");
  assert.equal(callsTo(fake, GROUPS), before + 1);
  assert.equal(await guard.refusal(p, undefined, acme, true), undefined, "a job's way: asked again at once");
  assert.equal(callsTo(fake, GROUPS), before + 2);

  // A recheck that comes while GitHub is being asked: the answer, perhaps from before the change, is kept 10 s, not 5 minutes.
  const q = pool({ name: "mid-lookup", warm: { installationId: fake.installationId, owner: "acme", repo: "mid-lookup" } });
  const asking = guard.refusal(q);
  guard.recheck("mid-lookup");
  assert.equal(await asking, undefined);
  const asked = callsTo(fake, REPO);
  clock.now += 10_000;
  fake.setRepositoryPrivate("acme", "mid-lookup", false);
  assert.equal(await guard.refusal(q), "public_repository", "asked again 10 s later");
  assert.equal(callsTo(fake, REPO), asked + 1);
});

test("a job's launch in an answer's last minute takes that answer, and has GitHub asked again meanwhile; a failed ask then leaves the answer to its end", async () => {
  const { guard, clock } = exposure();
  const target = { installationId: fake.installationId, owner: "acme", repo: "ahead" };
  const p = pool({ name: "ahead", warm: target });
  const before = callsTo(fake, REPO);
  assert.equal(await guard.refusal(p, undefined, target, true), undefined);
  clock.now += 3 * 60_000;
  assert.equal(await guard.refusal(p, undefined, target, true), undefined);
  assert.equal(await guard.refusal(p), undefined, "the warm loop's way");
  assert.equal(callsTo(fake, REPO), before + 1, "3 minutes in: the answer stands, no call");

  fake.setRepositoryPrivate("acme", "ahead", false);
  clock.now += 60_000;
  assert.equal(await guard.refusal(p), undefined, "the warm loop does not ask ahead");
  assert.equal(callsTo(fake, REPO), before + 1);
  assert.equal(await guard.refusal(p, undefined, target, true), undefined, "4 minutes in: a job's launch takes the answer, waiting for no call");
  await waitFor(async () => (await guard.refusal(p)) === "public_repository", 5_000, "the answer of the ask made meanwhile");
  assert.equal(callsTo(fake, REPO), before + 2, "one ask ahead");

  // That answer's last minute: an ask ahead that fails leaves it until its end, then fails closed.
  fake.setRepositoryPrivate("acme", "ahead", true);
  clock.now += 4 * 60_000 + 30_000;
  // Two failures: the ask ahead, and the ask at the answer's end.
  fake.inject({ route: REPO, status: 403, times: 2, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  assert.equal(await guard.refusal(p, undefined, target, true), "public_repository");
  await waitFor(() => callsTo(fake, REPO) === before + 3, 5_000, "the ask ahead made");
  // Let its failure come back (its answer is not awaited by anyone).
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(await guard.refusal(p), "public_repository", "the answer kept to its end");
  clock.now += 30_000;
  assert.equal(await guard.refusal(p, undefined, target, true), "visibility_unknown", "past its end, asked again and failed: refused");
  assert.equal(await guard.refusal(p, undefined, target, true), undefined, "a job's launch asks again at once");
  assert.equal(callsTo(fake, REPO), before + 5);
});

test("an organization pool whose runner group admits selected repositories: a job of another is refused, whatever allowPublicRepositories says; warm runners are not", async () => {
  const { guard, clock, said } = exposure();
  const acme = { installationId: fake.installationId, owner: "acme" };
  const group = fake.addRunnerGroup("only-app", { repositories: ["acme/app"] });
  const p = pool({ name: "selected", scope: "organization", runnerGroup: "only-app", warm: acme });
  const before = [callsTo(fake, GROUPS), callsTo(fake, GROUP_REPOS)];
  const results = await Promise.all([guard.refusal(p, undefined, { ...acme, repo: "App" }, true), guard.refusal(p, undefined, { ...acme, repo: "other" }, true), guard.refusal(p)]);
  assert.deepEqual(results, [undefined, "repository_not_in_group", undefined], "the admitted repository (in any case); another; the warm runner");
  assert.deepEqual([callsTo(fake, GROUPS), callsTo(fake, GROUP_REPOS)], [before[0]! + 1, before[1]! + 1], "three callers at once: the group and its repositories asked once");
  assert.equal(guard.notAdmitted(p, { ...acme, repo: "other" }), true, "said from the kept answer");
  assert.equal(guard.notAdmitted(p, { ...acme, repo: "app" }), false);

  // Kept as the public check's answer is: 5 minutes, then asked again.
  fake.setRunnerGroupRepositories(group, ["acme/app", "acme/other"]);
  clock.now += 60_000;
  assert.equal(await guard.refusal(p, undefined, { ...acme, repo: "other" }), "repository_not_in_group");
  assert.equal(callsTo(fake, GROUP_REPOS), before[1]! + 1);
  clock.now += 5 * 60_000;
  assert.equal(await guard.refusal(p, undefined, { ...acme, repo: "other" }), undefined, "added to the group: noticed at the next ask");
  assert.equal(callsTo(fake, GROUP_REPOS), before[1]! + 2);

  // A pool that allows public repositories: checked all the same for jobs, its group looked at for
  // its warm runners too (which jobs they may be adopted for), and launched for when the lookup
  // fails (as it was before the check).
  fake.setRunnerGroupRepositories(group, ["acme/app"]);
  const open = pool({ name: "selected-open", scope: "organization", runnerGroup: "only-app", allowPublicRepositories: true, warm: acme });
  const calls = callsTo(fake, GROUPS);
  assert.equal(await guard.refusal(open), undefined, "its warm runners are refused nothing");
  assert.equal(callsTo(fake, GROUPS), calls + 1, "its group looked at for them");
  assert.equal(guard.notAdmitted(open, { ...acme, repo: "other" }), true, "so none of them is adopted for a job of a repository the group does not admit");
  clock.now += 10 * 60_000;
  fake.inject({ route: GROUPS, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  assert.equal(await guard.refusal(open, undefined, { ...acme, repo: "other" }, true), undefined, "a failed lookup refuses nothing there");
  clock.now += 60_000;
  assert.equal(await guard.refusal(open, undefined, { ...acme, repo: "other" }, true), "repository_not_in_group", "asked again a minute on");
  assert.equal(said(/runner group takes only jobs of its selected workflows/), 0);
  assert.deepEqual(fake.invalidRequests(), []);
});

test("selected repositories: a job's refusal is asked again 10 s on (the operator adding its repository, as the refusal says), and a listing that fails refuses nothing, said once", async () => {
  const { guard, clock, said } = exposure();
  const acme = { installationId: fake.installationId, owner: "acme" };
  const group = fake.addRunnerGroup("only-web", { repositories: ["acme/web"] });
  const p = pool({ name: "selected-web", scope: "organization", runnerGroup: "only-web", warm: acme });
  const api = { ...acme, repo: "api" };
  assert.equal(await guard.refusal(p, undefined, api, true), "repository_not_in_group");
  const asked = callsTo(fake, GROUP_REPOS);
  fake.setRunnerGroupRepositories(group, ["acme/web", "acme/api"]);
  clock.now += 5_000;
  assert.equal(await guard.refusal(p, undefined, api, true), "repository_not_in_group", "5 s on: the answer kept");
  assert.equal(callsTo(fake, GROUP_REPOS), asked);
  clock.now += 5_000;
  assert.equal(await guard.refusal(p, undefined, api, true), undefined, "10 s on, for a job: asked again, and admitted now");
  assert.equal(callsTo(fake, GROUP_REPOS), asked + 1);

  // The listing fails (a GHES without the route answers 404): nothing refused, said once.
  fake.setRunnerGroupRepositories(group, ["acme/web"]);
  fake.inject({ route: GROUP_REPOS, status: 404, times: 2, body: { message: "Not Found", documentation_url: "https://docs.github.com/rest" } });
  for (let i = 0; i < 2; i++) {
    clock.now += 10 * 60_000;
    assert.equal(await guard.refusal(p, undefined, api, true), undefined, "a failed listing refuses nothing");
  }
  assert.equal(said(/could not list the repositories the runner group admits/), 1);
  clock.now += 10 * 60_000;
  assert.equal(await guard.refusal(p, undefined, api, true), "repository_not_in_group", "listed again once GitHub answers");
});

test("a runner group that admits no public repository (\"Private repositories\", or public ones not allowed): a public repository's job is refused, a private one's and one not known are not, at no extra call", async () => {
  const { guard, clock } = exposure();
  const acme = { installationId: fake.installationId, owner: "acme" };
  const privateOnly = fake.addRunnerGroup("private-only", { privateRepositories: true, allowsPublicRepositories: true });
  fake.addRunnerGroup("all-but-public");
  fake.addRunnerGroup("all-and-public", { allowsPublicRepositories: true });
  const p = (name: string, runnerGroup: string) => pool({ name, scope: "organization", runnerGroup, allowPublicRepositories: true, warm: acme, minIdle: 0 });
  const job = (repo: string, publicRepository?: boolean) => ({ ...acme, repo, ...(publicRepository === undefined ? {} : { publicRepository }) });
  const before = [callsTo(fake, GROUPS), callsTo(fake, GROUP_REPOS), callsTo(fake, REPO)];
  const inPrivate = p("in-private", "private-only");
  assert.deepEqual(
    await Promise.all([guard.refusal(inPrivate, undefined, job("site", true), true), guard.refusal(inPrivate, undefined, job("app", false), true), guard.refusal(inPrivate, undefined, job("old"), true)]),
    ["public_repository_not_admitted", undefined, undefined],
    "a public repository's job; a private one's; a demand from before it said",
  );
  assert.equal(guard.notAdmitted(inPrivate, job("site", true)), true, "said from the kept answer");
  assert.equal(guard.notAdmitted(inPrivate, job("app", false)), false);
  assert.equal(await guard.refusal(p("in-all-but-public", "all-but-public"), undefined, job("site", true), true), "public_repository_not_admitted", "allows_public_repositories off");
  assert.equal(await guard.refusal(p("in-all-and-public", "all-and-public"), undefined, job("site", true), true), undefined);
  assert.deepEqual([callsTo(fake, GROUPS), callsTo(fake, GROUP_REPOS), callsTo(fake, REPO)], [before[0]! + 3, before[1]!, before[2]!], "one look at each group; the repository's visibility is the job's own");
  // A pool that does not allow public repositories is kept on the safe side: a "Private
  // repositories" group that says it allows them is refused to it all the same.
  assert.equal(await guard.refusal(pool({ name: "strict-private", scope: "organization", runnerGroup: "private-only", warm: acme })), "public_runner_group");
  // The refusal says to change the group: a job 10 s on has GitHub asked again, as for selected repositories.
  fake.setRunnerGroupRepositories(privateOnly, undefined);
  clock.now += 5_000;
  assert.equal(await guard.refusal(inPrivate, undefined, job("site", true), true), "public_repository_not_admitted", "5 s on: the answer kept");
  clock.now += 5_000;
  assert.equal(await guard.refusal(inPrivate, undefined, job("site", true), true), undefined, "10 s on: asked again, admitted now");
  assert.deepEqual(fake.invalidRequests(), []);
});

test("a runner group restricted to selected workflows is said once per group, at warn, and refuses nothing", async () => {
  const { guard, clock, lines, said } = exposure();
  const acme = { installationId: fake.installationId, owner: "acme" };
  fake.addRunnerGroup("deploys", { selectedWorkflows: ["acme/app/.github/workflows/deploy.yml@refs/heads/main"] });
  const a = pool({ name: "deploys-a", scope: "organization", runnerGroup: "deploys", minIdle: 0 });
  const b = pool({ name: "deploys-b", scope: "organization", runnerGroup: "deploys", labels: ["self-hosted", "b"], minIdle: 0 });
  assert.equal(await guard.refusal(a, undefined, { ...acme, repo: "app" }, true), undefined);
  assert.equal(await guard.refusal(b, undefined, { ...acme, repo: "app" }, true), undefined);
  clock.now += 10 * 60_000;
  assert.equal(await guard.refusal(a, undefined, { ...acme, repo: "app" }, true), undefined);
  assert.equal(said(/runner group takes only jobs of its selected workflows/), 1, lines.join(""));
  assert.match(lines.find((l) => /selected workflows/.test(l)) ?? "", /"level":40.*"runnerGroup":"deploys".*deploy\.yml@refs\/heads\/main/);
});
