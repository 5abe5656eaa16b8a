/**
 * Installation tokens are bound to their installation, as on GitHub: the fake refuses a token on
 * an owner its installation does not cover, so a test catches jitrunner calling GitHub with the
 * wrong installation's token. Then jitrunner's own client, and the whole system with two
 * installations: a job of the second installation's owner gets a runner through that
 * installation's token.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";
import { githubFailure, githubFor } from "../helpers/github.ts";
import { waitFor } from "../helpers/process.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { containersOf, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";

const RUNNER = { runner_group_id: 1, labels: ["self-hosted", "linux"] };
const NOT_FOUND = { status: 404, message: "Not Found" };
const NOT_ACCESSIBLE = { status: 403, message: "Resource not accessible by integration" };

let fake: FakeGitHub;
let receiver: Receiver;
/** Clients with the tokens of: the default installation (1, every other owner), globex's (2), someuser's (3, a user). */
let acme: FakeGitHubClient;
let globex: FakeGitHubClient;
let someuser: FakeGitHubClient;

before(async () => {
  receiver = await startReceiver(WEBHOOK_SECRET);
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, webhookUrl: receiver.url, installations: [{ owner: "Globex" }] });
  const user = fake.addInstallation("someuser", { id: 30, type: "User" });
  assert.equal(user.id, 30);
  acme = new FakeGitHubClient(fake);
  globex = new FakeGitHubClient(fake, { installationId: 2 });
  someuser = new FakeGitHubClient(fake, { installationId: 30 });
});

after(async () => {
  await fake?.close();
  await receiver?.close();
});

/** Status and message of a call, to compare with GitHub's answer in one assertion. */
async function answer(client: FakeGitHubClient, method: string, path: string, body?: unknown): Promise<{ status: number; message?: string }> {
  const res = await client.call(method, path, { body });
  return { status: res.status, ...(res.status >= 400 ? { message: (res.body as { message?: string }).message } : {}) };
}

test("the fake starts with its default installation and adds others, one per account", () => {
  assert.deepEqual(
    fake.installations().map((i) => [i.id, i.account, i.type]),
    [[1, undefined, "Organization"], [2, "Globex", "Organization"], [30, "someuser", "User"]],
  );
  assert.throws(() => fake.addInstallation("GLOBEX"), /Globex already has installation 2/);
  assert.throws(() => fake.addInstallation("initech", { id: 30 }), /installation 30 exists/);
});

test("a token of one installation is refused on another installation's owner, as GitHub refuses it", async () => {
  // Requests GitHub would refuse that came before this test are not its own: set aside here, so
  // that the one it sends on purpose is checked alone, and reported at its end (close() cannot now).
  const earlierInvalid = fake.takeInvalidRequests();
  const runnersBefore = fake.runners().map((r) => r.name);
  // Installation 1's token on globex: a private repository it cannot see is a 404, whatever the
  // request; globex's organization is known to exist, and refuses with a 403.
  assert.deepEqual(await answer(acme, "GET", "/repos/globex/app/actions/runners"), NOT_FOUND);
  assert.deepEqual(await answer(acme, "POST", "/repos/globex/app/actions/runners/generate-jitconfig", { name: "jr-stray", ...RUNNER }), NOT_FOUND);
  assert.deepEqual(await answer(acme, "POST", "/repos/globex/app/actions/runners/generate-jitconfig", { ...RUNNER }), NOT_FOUND, "a 404 before the body's 422");
  assert.deepEqual(fake.takeInvalidRequests().map((r) => [r.status, r.problems]), [[404, ["\"name\" wasn't supplied."]]]);
  assert.deepEqual(await answer(acme, "POST", "/orgs/globex/actions/runners/generate-jitconfig", { name: "jr-stray", ...RUNNER }), NOT_ACCESSIBLE);
  assert.deepEqual(await answer(acme, "GET", "/orgs/Globex/actions/runners"), NOT_ACCESSIBLE, "logins are case-insensitive");
  assert.deepEqual(await answer(acme, "GET", "/orgs/globex/actions/runner-groups"), NOT_ACCESSIBLE);
  assert.deepEqual(await answer(acme, "GET", "/repos/globex/app"), NOT_FOUND);
  assert.deepEqual(fake.runners().map((r) => r.name), runnersBefore, "nothing registered by a refused token");

  // The other way round: globex's token on acme (the default installation's) and on someuser.
  assert.deepEqual(await answer(globex, "GET", "/repos/acme/app/actions/runners"), NOT_FOUND);
  assert.deepEqual(await answer(globex, "GET", "/orgs/acme/actions/runners"), NOT_ACCESSIBLE);
  assert.deepEqual(await answer(globex, "GET", "/repos/someuser/dotfiles/actions/runners"), NOT_FOUND);

  // A runner of globex's is out of reach of installation 1's token: neither seen nor deleted.
  const made = await globex.call("POST", "/repos/globex/app/actions/runners/generate-jitconfig", { body: { name: "jr-globex", ...RUNNER } });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const id = (made.body as { runner: { id: number } }).runner.id;
  assert.deepEqual(await answer(acme, "GET", `/repos/globex/app/actions/runners/${id}`), NOT_FOUND);
  assert.deepEqual(await answer(acme, "DELETE", `/repos/globex/app/actions/runners/${id}`), NOT_FOUND);
  assert.deepEqual(fake.runners().map((r) => r.name), [...runnersBefore, "jr-globex"], "still registered");
  assert.deepEqual(await answer(globex, "DELETE", `/repos/globex/app/actions/runners/${id}`), { status: 204 });
  assert.deepEqual(
    earlierInvalid.map((r) => `${r.method} ${r.path}: ${r.problems.join("; ")}`),
    [],
    "no request GitHub's OpenAPI description refuses came before this test",
  );
});

test("a public repository of another installation reads as public data, and its runners are refused with a 403", async () => {
  fake.setRepositoryPrivate("globex", "site", false);
  try {
    const job = await fake.queueJob({ owner: "globex", repo: "site", labels: ["nobody-serves-this"], private: false });
    assert.deepEqual(await answer(acme, "GET", "/repos/globex/site"), { status: 200 });
    assert.deepEqual(await answer(acme, "GET", `/repos/globex/site/actions/jobs/${job.id}`), { status: 200 });
    assert.deepEqual(await answer(acme, "GET", "/repos/globex/site/actions/runs?status=queued"), { status: 200 });
    assert.deepEqual(await answer(acme, "GET", "/repos/globex/site/actions/runners"), NOT_ACCESSIBLE);
    assert.deepEqual(await answer(acme, "POST", "/repos/globex/site/actions/runners/generate-jitconfig", { name: "jr-stray", ...RUNNER }), NOT_ACCESSIBLE);
    await fake.cancelJob(job.id);
  } finally {
    fake.setRepositoryPrivate("globex", "site", true);
  }
  assert.deepEqual(await answer(acme, "GET", "/repos/globex/site"), NOT_FOUND, "private again: unseen again");
});

test("each installation's token works on its own owner, a user's has no organization routes", async () => {
  const from = fake.requests.length;
  assert.deepEqual(await answer(acme, "GET", "/repos/acme/app/actions/runners"), { status: 200 });
  assert.deepEqual(await answer(acme, "GET", "/orgs/acme/actions/runner-groups"), { status: 200 });
  assert.deepEqual(await answer(acme, "GET", "/repos/any-other-owner/app"), { status: 200 }, "the default installation covers every other owner");
  assert.deepEqual(await answer(globex, "GET", "/repos/GLOBEX/app/actions/runners"), { status: 200 });
  assert.deepEqual(await answer(globex, "GET", "/orgs/globex/actions/runners"), { status: 200 });
  assert.deepEqual(await answer(someuser, "GET", "/repos/someuser/dotfiles/actions/runners"), { status: 200 });
  assert.deepEqual(await answer(someuser, "GET", "/orgs/someuser/actions/runners"), NOT_FOUND, "a user is no organization");
  assert.deepEqual(await answer(globex, "GET", "/repos/someuser/dotfiles/actions/runners"), NOT_FOUND, "nor does globex's token work on someuser");
  const calls = fake.requests.slice(from).filter((r) => r.path.endsWith("/someuser/dotfiles/actions/runners"));
  assert.deepEqual(calls.map((r) => [r.status, r.installationId]), [[200, 30], [404, 2]], "each request records its token's installation");
});

test("tokens are minted per installation, and the installation routes name the covering one", async () => {
  const mint = async (id: number) => (await acme.call("POST", `/app/installations/${id}/access_tokens`, { auth: "app" })).status;
  assert.deepEqual([await mint(1), await mint(2), await mint(30), await mint(99)], [201, 201, 201, 404]);
  const found = async (path: string) => {
    const res = await acme.call("GET", path, { auth: "app" });
    const body = res.body as { id?: number; account?: { login: string; type: string }; target_type?: string };
    return res.status === 200 ? [body.id, body.account?.login, body.target_type] : [res.status];
  };
  assert.deepEqual(await found("/repos/globex/app/installation"), [2, "Globex", "Organization"]);
  assert.deepEqual(await found("/orgs/GLOBEX/installation"), [2, "Globex", "Organization"]);
  assert.deepEqual(await found("/repos/acme/app/installation"), [1, "acme", "Organization"]);
  assert.deepEqual(await found("/users/someuser/installation"), [30, "someuser", "User"]);
  assert.deepEqual(await found("/orgs/someuser/installation"), [404]);
  const app = (await acme.call("GET", "/app", { auth: "app" })).body as { installations_count: number };
  assert.equal(app.installations_count, 3);
});

test("webhooks carry the installation covering the job's owner", async () => {
  const jobs = [
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["nobody-serves-this"] }),
    await fake.queueJob({ owner: "globex", repo: "app", labels: ["nobody-serves-this"] }),
    await fake.queueJob({ owner: "someuser", repo: "dotfiles", labels: ["nobody-serves-this"] }),
  ];
  await fake.webhooksIdle();
  const payloads = jobs.map((j) => receiver.received.find((r) => (r.payload.workflow_job as { id: number }).id === j.id)?.payload ?? {});
  assert.deepEqual(
    payloads.map((p) => [(p.installation as { id: number }).id, ((p.repository as { owner: { type: string } }).owner).type, "organization" in p]),
    [[1, "Organization", true], [2, "Organization", true], [30, "User", false]],
  );
  assert.deepEqual(
    jobs.map((j) => fake.deliveries.find((d) => d.jobId === j.id)?.installationId),
    [1, 2, 30],
    "GitHub's delivery log says the same",
  );
  for (const j of jobs) await fake.cancelJob(j.id);
});

test("jitrunner's GitHub client works with the right installationId and fails clearly with a wrong one", async () => {
  const gh = githubFor(fake);
  const runnersBefore = fake.runners().map((r) => r.name);
  try {
    const scope = { installationId: 2, owner: "globex", repo: "client" };
    const jit = await gh.generateJitConfig(scope, { name: "jr-client", labels: ["self-hosted"] });
    assert.deepEqual((await gh.listRunners(scope)).map((r) => [r.id, r.name]), [[jit.runnerId, "jr-client"]]);
    assert.equal((await gh.getRepositoryVisibility(2, "globex", "client")).private, true);

    // Installation 1's token on globex: GitHub's 404 and 403, said with what was asked.
    const wrong = { ...scope, installationId: 1 };
    const listed = await githubFailure(gh.listRunners(wrong));
    assert.deepEqual([listed.status, listed.retryable], [404, false]);
    assert.match(listed.message, /failed \(404\): Not Found/);
    const org = await githubFailure(gh.generateJitConfig({ installationId: 1, owner: "globex" }, { name: "jr-stray", labels: ["self-hosted"] }));
    assert.deepEqual([org.status, org.retryable], [403, false], "a permission GitHub keeps refusing: not retried");
    assert.match(org.message, /^generate JIT config failed \(403\): Resource not accessible by integration$/);
    // An installation that does not exist: its token cannot be minted, and the error says so.
    const unknown = await githubFailure(gh.listRunners({ ...scope, installationId: 99 }));
    assert.match(unknown.message, /installation token \(404\): Not Found/);
    assert.equal(unknown.status, undefined, "the token request's 404 is no 'runner not found'");

    assert.equal(await gh.deleteRunner(scope, jit.runnerId), "deleted");
    assert.deepEqual(fake.runners().map((r) => r.name), runnersBefore);
  } finally {
    gh.close();
  }
});

const { redis, hosts } = workersForFile();

test("through the real system, jobs of the second installation's owner get runners with that installation's token", async () => {
  const two = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET, installations: [{ owner: "globex", id: 7 }] });
  const host = uniqueHost("installations");
  hosts.push(host);
  // The leader's loops every second: they list runners and open runs with the installation
  // each repository was served through.
  const reconcile = { leaderLockSeconds: 2, runnersIntervalSeconds: 1, queuedIntervalSeconds: 1, deliveriesIntervalSeconds: 0 };
  const sys = await startSystem("all", two, scopedRedis(redis, "installations"), host, { reconcile });
  /** Waits for the jobs to complete, failing at once when a call is refused for its installation. */
  const completed = (ids: Set<number>, what: string) =>
    two.waitFor(
      () => {
        const refused = two.requests.find((r) => r.status === 403 || (r.status === 404 && !r.route.endsWith("/{runner_id}")));
        if (refused) throw new Error(`a call refused, with installation ${refused.installationId}'s token: ${JSON.stringify(refused)}`);
        return two.jobs().filter((j) => ids.has(j.id) && j.status === "completed").length === ids.size;
      },
      90_000,
      what,
    );
  try {
    const jobs = [
      await two.queueJob({ owner: "globex", repo: "app", labels: ["self-hosted", "linux"] }),
      await two.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] }),
    ];
    await completed(new Set(jobs.map((j) => j.id)), "both jobs completed");
    // A job whose `queued` webhook never arrives: the leader finds it listing globex's open runs,
    // and launches its runner with the installation that repository was served through.
    two.holdWebhooks();
    const missed = await two.queueJob({ owner: "globex", repo: "app", labels: ["self-hosted", "linux"] });
    two.holdWebhooks(false);
    await completed(new Set([missed.id]), "the job whose webhook was lost completed");
    assert.deepEqual(
      two.jobs().map((j) => [j.owner, j.conclusion, j.runner_name !== null]),
      [["globex", "success", true], ["acme", "success", true], ["globex", "success", true]],
    );
    assert.equal(two.deliveries.filter((d) => d.jobId === missed.id && d.action === "queued").length, 0, "its queued webhook was never sent");

    // Each owner's calls carried its own installation's token, the leader's too.
    const minted = two.requests.filter((r) => r.route === "/app/installations/{installation_id}/access_tokens" && r.status === 201);
    assert.deepEqual([...new Set(minted.map((r) => r.path))].sort(), ["/app/installations/1/access_tokens", "/app/installations/7/access_tokens"]);
    const owned = (owner: string) => two.requests.filter((r) => r.path.startsWith(`/repos/${owner}/`) || r.path.startsWith(`/orgs/${owner}/`));
    const globexRoutes = new Set(owned("globex").map((r) => `${r.method} ${r.route}`));
    for (const route of ["POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig", "GET /repos/{owner}/{repo}/actions/runners", "GET /repos/{owner}/{repo}/actions/runs"]) {
      assert.ok(globexRoutes.has(route), `${route} called for globex (called: ${[...globexRoutes].join(", ")})`);
    }
    assert.deepEqual([...new Set(owned("globex").map((r) => r.installationId))], [7]);
    assert.deepEqual([...new Set(owned("acme").map((r) => r.installationId))], [1]);
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "runner containers removed");
    await assertNoSecrets(two, { logs: sys.logs(), sys });
  } finally {
    await sys.close();
    await two.close();
  }
});
