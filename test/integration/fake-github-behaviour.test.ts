// What later tests rely on the fake for: auth checks, fault injection,
// pagination, dispatch rules, cancellation and redelivery.
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";

const SECRET = "behaviour-test-secret";
let fake: FakeGitHub;
let receiver: Receiver;
let client: FakeGitHubClient;

before(async () => {
  receiver = await startReceiver(SECRET);
  fake = await FakeGitHub.start({ appId: 4242, installationId: 77, webhookSecret: SECRET, webhookUrl: receiver.url });
  client = new FakeGitHubClient(fake);
});

after(async () => {
  await fake?.close();
  await receiver?.close();
});

function jwt(claims: Record<string, unknown>, key = fake.privateKey): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "RS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${sign("RSA-SHA256", Buffer.from(head), key).toString("base64url")}`;
}

async function register(path: string, name: string, labels: string[], groupId = 1) {
  const res = await client.call("POST", `${path}/actions/runners/generate-jitconfig`, { body: { name, runner_group_id: groupId, labels } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const { runner, encoded_jit_config: jit } = res.body as { runner: { id: number }; encoded_jit_config: string };
  const { token } = JSON.parse(Buffer.from(jit, "base64").toString()) as { token: string };
  const call = async (action: string, extra: object = {}) => {
    const r = await fetch(`${fake.url}/_fake/runners/${runner.id}/${action}`, {
      method: "POST",
      body: JSON.stringify({ token, ...extra }),
      signal: AbortSignal.timeout(5000),
    });
    return { status: r.status, body: r.status === 204 ? undefined : ((await r.json()) as { job?: { id: number } }) };
  };
  return { id: runner.id, call };
}

test("App JWTs are verified: signature, issuer, expiry at most 10 minutes ahead", async () => {
  const now = Math.floor(Date.now() / 1000);
  const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs1", format: "pem" }).toString();
  const cases: Array<[string, string, number]> = [
    ["valid", jwt({ iat: now - 30, exp: now + 570, iss: 4242 }), 200],
    ["iss as string", jwt({ iat: now - 30, exp: now + 570, iss: "4242" }), 200],
    ["other App", jwt({ iat: now - 30, exp: now + 570, iss: 4243 }), 401],
    ["expired", jwt({ iat: now - 700, exp: now - 100, iss: 4242 }), 401],
    ["exp too far", jwt({ iat: now, exp: now + 3600, iss: 4242 }), 401],
    ["wrong key", jwt({ iat: now - 30, exp: now + 570, iss: 4242 }, other), 401],
  ];
  for (const [what, token, status] of cases) {
    const res = await client.call("GET", "/app", { auth: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
  }
  const installationTokenOnAppRoute = await client.call("GET", "/app", { auth: { authorization: `token ${await client.installationToken()}` } });
  assert.equal(installationTokenOnAppRoute.status, 401);
  const tokenForOtherInstallation = await client.call("POST", "/app/installations/1/access_tokens", { auth: "app" });
  assert.equal(tokenForOtherInstallation.status, 404);
});

test("installation tokens: ghs_ prefix, one hour, `token` or `bearer`, rejected once expired", async () => {
  const res = await client.call("POST", "/app/installations/77/access_tokens", { auth: "app" });
  const { token, expires_at: expiresAt } = res.body as { token: string; expires_at: string };
  assert.match(token, /^ghs_\w+/);
  assert.ok(Math.abs(Date.parse(expiresAt) - Date.now() - 3_600_000) < 10_000);
  for (const scheme of ["token", "bearer"]) {
    assert.equal((await client.call("GET", "/repos/o/r/actions/runners", { auth: { authorization: `${scheme} ${token}` } })).status, 200);
  }
  fake.expireTokens();
  assert.equal((await client.call("GET", "/repos/o/r/actions/runners", { auth: { authorization: `token ${token}` } })).status, 401);
  client = new FakeGitHubClient(fake); // its cached token expired too
});

test("inject: the next N matching requests get the injected answer, then normal service resumes", async () => {
  const route = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
  fake.inject({ route, status: 429, times: 1, headers: { "retry-after": "2" } });
  fake.inject({ route, method: "POST", status: 403, times: 1, headers: { "x-ratelimit-remaining": "0" } });
  const body = { name: "inj-1", runner_group_id: 1, labels: ["x"] };
  const first = await client.call("POST", "/repos/o/inj/actions/runners/generate-jitconfig", { body });
  assert.deepEqual([first.status, first.headers.get("retry-after")], [429, "2"]);
  const second = await client.call("POST", "/repos/o/inj/actions/runners/generate-jitconfig", { body });
  assert.deepEqual([second.status, second.headers.get("x-ratelimit-remaining")], [403, "0"]);
  assert.match((second.body as { message: string }).message, /rate limit/);
  assert.equal((await client.call("POST", "/repos/o/inj/actions/runners/generate-jitconfig", { body })).status, 201);
  assert.deepEqual(
    fake.requests.filter((r) => r.route === route).slice(-3).map((r) => r.status),
    [429, 403, 201],
  );

  fake.inject({ route: "/repos/o/inj/actions/runners", delayMs: 300, times: 1 });
  const started = Date.now();
  assert.equal((await client.call("GET", "/repos/o/inj/actions/runners")).status, 200);
  assert.ok(Date.now() - started >= 290, "delayed, then answered normally");

  fake.inject({ status: 500, times: 1, body: { message: "boom" } });
  const runner = await register("/repos/o/inj", "inj-2", ["x"]).catch((err: unknown) => err);
  assert.ok(runner instanceof Error, "a fault without route hits the next GitHub API call");
  const again = await register("/repos/o/inj", "inj-2", ["x"]);
  assert.equal((await again.call("online")).status, 200, "runner-protocol calls are not hit by route-less faults");
});

test("clearFaults: a fault injected for many requests lasts until the test ends it; those of other routes or methods stay", async () => {
  fake.inject({ route: "/app", method: "GET", status: 401, times: 1000 });
  fake.inject({ route: "/app", method: "GET", status: 503, times: 1000 });
  fake.inject({ route: "/repos/o/clear/actions/runners", status: 502, times: 1 });
  const app = () => client.call("GET", "/app", { auth: "app" });
  assert.deepEqual([(await app()).status, (await app()).status], [401, 401]);
  assert.equal(fake.clearFaults({ route: "/app", method: "post" }), 0, "no fault of that method");
  assert.equal(fake.clearFaults({ route: "/app", method: "get" }), 2, "both faults of GET /app, any case of the method");
  const answered = await app();
  assert.equal(answered.status, 200, "GitHub answers as it would again");
  assert.equal((answered.body as { id: number }).id, fake.appId);
  assert.equal((await client.call("GET", "/repos/o/clear/actions/runners")).status, 502, "another route's fault kept");
  assert.equal(fake.clearFaults(), 0, "nothing left");
});

test("runner lists paginate with GitHub's Link header", async () => {
  for (const n of [1, 2, 3]) await register("/repos/o/paged", `p-${n}`, ["x"]);
  const page1 = await client.call("GET", "/repos/o/paged/actions/runners?per_page=2");
  assert.equal((page1.body as { total_count: number }).total_count, 3);
  assert.equal((page1.body as { runners: unknown[] }).runners.length, 2);
  assert.match(page1.headers.get("link") ?? "", /[?&]page=2>; rel="next"/);
  const page2 = await client.call("GET", "/repos/o/paged/actions/runners?per_page=2&page=2");
  assert.deepEqual((page2.body as { runners: Array<{ name: string }> }).runners.map((r) => r.name), ["p-3"]);
  const byName = await client.call("GET", "/repos/o/paged/actions/runners?name=p-2");
  assert.deepEqual((byName.body as { runners: Array<{ name: string }> }).runners.map((r) => r.name), ["p-2"]);
});

test("dispatch: labels case-insensitive subset, oldest first, within the runner's scope", async () => {
  const old = await fake.queueJob({ owner: "disp", repo: "one", labels: ["Self-Hosted", "GPU"] });
  const young = await fake.queueJob({ owner: "disp", repo: "one", labels: ["self-hosted"] });
  const elsewhere = await fake.queueJob({ owner: "other-org", repo: "one", labels: ["self-hosted"] });
  const twoRepo = await fake.queueJob({ owner: "disp", repo: "two", labels: ["self-hosted"] });

  const noGpu = await register("/repos/disp/one", "d-1", ["self-hosted", "linux"]);
  assert.equal((await noGpu.call("acquire")).body?.job?.id, young.id, "skips the job whose labels it lacks");
  const gpu = await register("/repos/disp/one", "d-2", ["self-hosted", "gpu", "linux"]);
  assert.equal((await gpu.call("acquire")).body?.job?.id, old.id);
  const again = await register("/repos/disp/one", "d-3", ["self-hosted"]);
  assert.equal((await again.call("acquire")).status, 204, "another repository's jobs are not for a repository runner");
  const org = await register("/orgs/disp", "d-1", ["self-hosted"]); // same name, other scope: allowed
  assert.equal((await org.call("acquire")).body?.job?.id, twoRepo.id, "an org runner serves the org's repositories only");
  assert.equal(fake.jobs().find((j) => j.id === elsewhere.id)?.status, "queued");
  assert.equal((await gpu.call("acquire")).body?.job?.id, old.id, "acquire is idempotent while the runner holds a job");
});

test("dispatch: a runner of a group admitting selected repositories takes no job of another repository, as GitHub hands it none", async () => {
  const group = fake.addRunnerGroup("only-a", { repositories: ["grp/A"] });
  const b = await fake.queueJob({ owner: "grp", repo: "b", labels: ["self-hosted"] });
  const a = await fake.queueJob({ owner: "grp", repo: "a", labels: ["self-hosted"] });
  const inGroup = await register("/orgs/grp", "g-1", ["self-hosted"], group);
  assert.equal((await inGroup.call("acquire")).body?.job?.id, a.id, "the admitted repository's job (names in any case), though B's is older");
  const second = await register("/orgs/grp", "g-2", ["self-hosted"], group);
  assert.equal((await second.call("acquire")).status, 204, "B's job is for no runner of the group");
  assert.equal(fake.jobs().find((j) => j.id === b.id)?.status, "queued");
  const listed = await client.call("GET", `/orgs/grp/actions/runner-groups/${group}/repositories`);
  assert.deepEqual((listed.body as { repositories: Array<{ full_name: string }> }).repositories.map((r) => r.full_name), ["grp/A"]);
  fake.setRunnerGroupRepositories(group, ["grp/a", "grp/b"]);
  assert.equal((await second.call("acquire")).body?.job?.id, b.id, "admitted once added to the group");
  const other = await fake.queueJob({ owner: "grp", repo: "c", labels: ["self-hosted"] });
  const inDefault = await register("/orgs/grp", "g-3", ["self-hosted"]);
  assert.equal((await inDefault.call("acquire")).body?.job?.id, other.id, "a group of visibility all admits every repository");
});

test("dispatch: a public repository's job goes to no runner of a group that admits no public repository (\"Private repositories\", or public ones not allowed), as GitHub hands it none", async () => {
  const privateOnly = fake.addRunnerGroup("private-only", { privateRepositories: true, allowsPublicRepositories: true });
  const open = fake.addRunnerGroup("open", { allowsPublicRepositories: true });
  const pub = await fake.queueJob({ owner: "vis", repo: "site", labels: ["self-hosted"], private: false });
  const priv = await fake.queueJob({ owner: "vis", repo: "app", labels: ["self-hosted"] });
  const inPrivate = await register("/orgs/vis", "v-1", ["self-hosted"], privateOnly);
  assert.equal((await inPrivate.call("acquire")).body?.job?.id, priv.id, "the private repository's job, though the public one's is older");
  const second = await register("/orgs/vis", "v-2", ["self-hosted"], privateOnly);
  assert.equal((await second.call("acquire")).status, 204, "the public repository's job is for no runner of the group");
  const inDefault = await register("/orgs/vis", "v-3", ["self-hosted"]);
  assert.equal((await inDefault.call("acquire")).status, 204, "nor for the Default group's (allows_public_repositories off)");
  const listed = await client.call("GET", "/orgs/vis/actions/runner-groups");
  const shown = (listed.body as { runner_groups: Array<{ id: number; visibility: string; allows_public_repositories: boolean }> }).runner_groups;
  assert.deepEqual(shown.filter((g) => g.id === privateOnly).map((g) => [g.visibility, g.allows_public_repositories]), [["private", true]]);
  const inOpen = await register("/orgs/vis", "v-4", ["self-hosted"], open);
  assert.equal((await inOpen.call("acquire")).body?.job?.id, pub.id, "a group of visibility all that allows public repositories takes it");
  fake.setRunnerGroupRepositories(privateOnly, undefined);
  const again = await fake.queueJob({ owner: "vis", repo: "site", labels: ["self-hosted"] });
  assert.equal((await second.call("acquire")).body?.job?.id, again.id, "its repository access all repositories again: admitted");
});

test("cancelJob: queued job completes as cancelled, no runner gets it", async () => {
  const job = await fake.queueJob({ owner: "can", repo: "cel", labels: ["self-hosted"] });
  await fake.cancelJob(job.id);
  const runner = await register("/repos/can/cel", "c-1", ["self-hosted"]);
  assert.equal((await runner.call("acquire")).status, 204);
  const done = fake.deliveries.filter((d) => d.jobId === job.id).map((d) => d.action);
  assert.deepEqual(done, ["queued", "completed"]);
  await assert.rejects(fake.cancelJob(job.id), /already completed/);
});

test("cancelJob of a running job: completed webhook at once, the runner's later report adds none", async () => {
  const job = await fake.queueJob({ owner: "can", repo: "run", labels: ["self-hosted"] });
  const runner = await register("/repos/can/run", "c-2", ["self-hosted"]);
  assert.equal((await runner.call("acquire")).status, 200);
  await fake.cancelJob(job.id);
  assert.equal((await client.call("DELETE", `/repos/can/run/actions/runners/${runner.id}`)).status, 422, "still busy");
  assert.equal((await runner.call("complete", { jobId: job.id, conclusion: "success" })).status, 200);
  await fake.webhooksIdle();
  const hooks = fake.deliveries.filter((d) => d.jobId === job.id).map((d) => d.action);
  assert.deepEqual(hooks, ["queued", "in_progress", "completed"]);
  assert.equal(fake.jobs().find((j) => j.id === job.id)?.conclusion, "cancelled");
  assert.equal((await runner.call("online")).status, 404, "the ephemeral runner is gone");
});

test("deliveries record the receiver's status; redeliver resends the same delivery id", async () => {
  receiver.status = 500;
  const job = await fake.queueJob({ owner: "re", repo: "deliver", labels: ["x"] });
  const failed = fake.deliveries.find((d) => d.jobId === job.id);
  assert.equal(failed?.status, 500);
  receiver.status = 200;
  assert.equal(await fake.redeliver(failed?.id ?? ""), 200);
  const sent = receiver.received.filter((r) => r.headers["x-github-delivery"] === failed?.id);
  assert.equal(sent.length, 2);
  assert.equal(sent[0]?.raw, sent[1]?.raw, "the same body");

  fake.setWebhookUrl("http://127.0.0.1:9/nothing-listens-here");
  const lost = await fake.queueJob({ owner: "re", repo: "deliver", labels: ["x"] });
  assert.equal(fake.deliveries.find((d) => d.jobId === lost.id)?.status, 0);
  fake.setWebhookUrl(receiver.url);
  const id = fake.deliveries.find((d) => d.jobId === lost.id)?.id ?? "";
  assert.equal(await fake.redeliver(id), 200);
  await assert.rejects(fake.redeliver("no-such-delivery"), /no delivery/);
});

test("waitFor names what it waited for", async () => {
  await assert.rejects(fake.waitFor(() => false, 120, "a thing that never happens"), /a thing that never happens/);
  let n = 0;
  assert.equal(await fake.waitFor(() => ++n >= 3 && n, 2000, "three polls"), 3);
  await sleep(0);
});
