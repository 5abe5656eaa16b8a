// The fake GitHub must not drift from the real API: every route it serves is in
// GitHub's OpenAPI description, and the bodies it returns (and the webhooks it
// sends) validate against the documented schemas, with no invented fields.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { loadSpec, responseSchema, schemaErrors, undocumentedKeys } from "../fakes/github/openapi-check.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";

const SECRET = "openapi-test-secret";
const spec = loadSpec();
// Statuses GitHub returns on every route without documenting them per route
// (401, and 404 where only some operations list it) are checked against GitHub's "Basic Error".
const BASIC_ERROR = responseSchema(spec, "/repos/{owner}/{repo}/actions/runners/generate-jitconfig", "post", 409);

let fake: FakeGitHub;
let receiver: Receiver;
let client: FakeGitHubClient;

before(async () => {
  receiver = await startReceiver(SECRET);
  fake = await FakeGitHub.start({ webhookSecret: SECRET, webhookUrl: receiver.url });
  client = new FakeGitHubClient(fake);
});

after(async () => {
  await fake?.close();
  await receiver?.close();
});

const checked = new Set<string>();

async function expectCall(method: string, path: string, status: number, o: Parameters<FakeGitHubClient["call"]>[2] = {}) {
  const res = await client.call(method, path, o);
  assert.equal(res.status, status, `${method} ${path} answered ${res.status}: ${JSON.stringify(res.body)}`);
  const route = fake.requests.at(-1)?.route ?? "";
  if (status === 204) {
    assert.equal(res.body, undefined);
  } else {
    const schema = responseSchema(spec, route, method, status) ?? (status >= 400 ? BASIC_ERROR : undefined);
    assert.ok(schema, `GitHub documents no JSON body for ${method} ${route} ${status}`);
    assert.deepEqual(schemaErrors(schema, res.body), [], `${method} ${route} ${status} body does not match its schema`);
    assert.deepEqual(undocumentedKeys(schema, res.body), [], `${method} ${route} ${status} body has undocumented fields`);
  }
  if (status < 300) checked.add(`${method} ${route}`);
  return res.body as Record<string, any>;
}

async function runnerCall(runnerId: number, token: string, action: string, extra: object = {}) {
  const res = await fetch(`${fake.url}/_fake/runners/${runnerId}/${action}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token, ...extra }),
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, body: res.status === 204 ? undefined : ((await res.json()) as Record<string, any>) };
}

const decode = (jit: string) => JSON.parse(Buffer.from(jit, "base64").toString("utf8")) as { runnerId: number; token: string };

test("every route the fake serves exists in GitHub's OpenAPI description with that method", () => {
  const api = fake.routes.filter((r) => !r.internal);
  assert.ok(api.length >= 15, `expected the fake's REST routes, got ${api.length}`);
  for (const r of api) {
    assert.ok(spec.paths[r.template]?.[r.method.toLowerCase()], `${r.method} ${r.template} is not in api.github.com's description`);
  }
});

test("a scripted flow's responses validate against the documented response schemas", async () => {
  const repo = "/repos/acme/widgets";
  await expectCall("POST", `/app/installations/${fake.installationId}/access_tokens`, 201, { auth: "app" });
  await expectCall("GET", "/app", 200, { auth: "app" });
  await expectCall("GET", `${repo}/installation`, 200, { auth: "app" });
  await expectCall("GET", "/orgs/acme/installation", 200, { auth: "app" });
  await expectCall("GET", "/users/acme/installation", 200, { auth: "app" });
  const unseen = await expectCall("GET", repo, 200);
  assert.deepEqual([unseen.full_name, unseen.private, unseen.visibility], ["acme/widgets", true, "private"], "a repository not met yet is private");
  fake.setRepositoryPrivate("acme", "widgets", false);
  const made = await expectCall("GET", repo, 200);
  assert.deepEqual([made.private, made.visibility], [false, "public"]);
  fake.setRepositoryPrivate("acme", "widgets", true);

  const first = await fake.queueJob({ owner: "acme", repo: "widgets", labels: ["self-hosted", "linux"] });
  const sibling = await fake.queueJob({ owner: "acme", repo: "widgets", labels: ["self-hosted", "gpu"], runId: first.run_id });
  const other = await fake.queueJob({ owner: "acme", repo: "widgets", labels: ["self-hosted", "linux"], private: true });

  const gen = { name: "jr-1", runner_group_id: 1, labels: ["self-hosted", "Linux", "x64"] };
  const created = await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 201, { body: gen });
  assert.equal(created.runner.status, "offline");
  const jit = decode(created.encoded_jit_config);
  assert.equal(jit.runnerId, created.runner.id);
  await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 409, { body: gen });
  await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 422, { body: { ...gen, name: "jr-2", labels: [] } });
  await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 422, { body: { runner_group_id: 1, labels: ["x"] } });
  await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 422, { body: { ...gen, name: "jr-2", labels: Array(101).fill("x") } });
  // Bodies GitHub's request schema refuses: the fake records them (and close() fails the file for
  // any left), so these three, sent on purpose, are taken here.
  assert.deepEqual(
    fake.takeInvalidRequests().map((r) => r.problems),
    [
      ["For 'properties/labels', [] must NOT have fewer than 1 items."],
      ["\"name\" wasn't supplied."],
      [`For 'properties/labels', ${JSON.stringify(Array(101).fill("x")).slice(0, 77)}... must NOT have more than 100 items.`],
    ],
  );
  const org = await expectCall("POST", "/orgs/acme/actions/runners/generate-jitconfig", 201, { body: { ...gen, name: "jr-org-1" } });
  const open = fake.addRunnerGroup("open-to-public", { allowsPublicRepositories: true });
  const selected = fake.addRunnerGroup("some-repos", { repositories: ["acme/app"], selectedWorkflows: ["acme/app/.github/workflows/ci.yml@refs/heads/main"] });
  const privateOnly = fake.addRunnerGroup("private-repos", { privateRepositories: true });
  const groups = await expectCall("GET", "/orgs/acme/actions/runner-groups", 200);
  assert.deepEqual(
    groups.runner_groups.map((g: { id: number; allows_public_repositories: boolean; visibility: string; restricted_to_workflows: boolean }) => [
      g.id,
      g.allows_public_repositories,
      g.visibility,
      g.restricted_to_workflows,
    ]),
    [
      [1, false, "all", false],
      [open, true, "all", false],
      [selected, false, "selected", true],
      [privateOnly, false, "private", false],
    ],
  );
  const admitted = await expectCall("GET", `/orgs/acme/actions/runner-groups/${selected}/repositories?per_page=100`, 200);
  assert.deepEqual([admitted.total_count, admitted.repositories.map((r: { full_name: string }) => r.full_name)], [1, ["acme/app"]]);

  const listed = await expectCall("GET", `${repo}/actions/runners?per_page=10`, 200);
  assert.deepEqual(listed.runners.map((r: { name: string }) => r.name), ["jr-1"]);
  const orgListed = await expectCall("GET", "/orgs/acme/actions/runners", 200);
  assert.deepEqual(orgListed.runners.map((r: { name: string }) => r.name), ["jr-org-1"]);
  await expectCall("GET", `${repo}/actions/runners/${created.runner.id}`, 200);
  await expectCall("GET", `/orgs/acme/actions/runners/${org.runner.id}`, 200);

  const acquired = await runnerCall(jit.runnerId, jit.token, "acquire");
  assert.equal(acquired.status, 200);
  assert.equal(acquired.body?.job.id, first.id, "oldest matching job first");
  const running = await expectCall("GET", `${repo}/actions/jobs/${first.id}`, 200);
  assert.equal(running.status, "in_progress");
  assert.equal(running.runner_name, "jr-1");
  await expectCall("DELETE", `${repo}/actions/runners/${created.runner.id}`, 422);
  const idle = await expectCall("POST", `${repo}/actions/runners/generate-jitconfig`, 201, { body: { ...gen, name: "jr-idle" } });
  await expectCall("DELETE", `${repo}/actions/runners/${idle.runner.id}`, 204);
  // A runner GitHub no longer knows (deleted, or an ephemeral runner after its job): 404.
  await expectCall("GET", `${repo}/actions/runners/${idle.runner.id}`, 404);
  await expectCall("GET", `/orgs/acme/actions/runners/${idle.runner.id}`, 404);

  const inProgress = await expectCall("GET", `${repo}/actions/runs?status=in_progress`, 200);
  assert.deepEqual(inProgress.workflow_runs.map((r: { id: number }) => r.id), [first.run_id]);
  const queued = await expectCall("GET", `${repo}/actions/runs?status=queued`, 200);
  assert.deepEqual(queued.workflow_runs.map((r: { id: number }) => r.id), [other.run_id]);
  await expectCall("GET", `${repo}/actions/runs/${first.run_id}`, 200);
  const runJobs = await expectCall("GET", `${repo}/actions/runs/${first.run_id}/jobs?filter=latest`, 200);
  assert.deepEqual(runJobs.jobs.map((j: { id: number; status: string }) => [j.id, j.status]), [[first.id, "in_progress"], [sibling.id, "queued"]]);

  assert.equal((await runnerCall(jit.runnerId, jit.token, "complete", { jobId: first.id, conclusion: "success" })).status, 200);
  const done = await expectCall("GET", `${repo}/actions/jobs/${first.id}`, 200);
  assert.deepEqual([done.status, done.conclusion], ["completed", "success"]);
  await expectCall("GET", `${repo}/actions/runners/${created.runner.id}`, 404);
  await expectCall("DELETE", `/orgs/acme/actions/runners/${org.runner.id}`, 204);
  await expectCall("DELETE", `/orgs/acme/actions/runners/${org.runner.id}`, 404);
  await expectCall("GET", `${repo}/actions/jobs/${first.id + 1000}`, 404);
  await expectCall("GET", `${repo}/actions/runners`, 401, { auth: { authorization: "token ghs_not-a-token" } });
  await expectCall("GET", "/app", 401, { auth: { authorization: "bearer not.a.jwt" } });
  await expectCall("GET", `${repo}/actions/secrets`, 404);
  // A token of another installation than the owner's: GitHub's error bodies (installations.ts says which and why).
  fake.addInstallation("globex");
  await expectCall("GET", "/repos/globex/app/actions/runners", 404);
  await expectCall("GET", "/orgs/globex/actions/runners", 403);

  await fake.webhooksIdle();
  const deliveriesPage = await client.call("GET", "/app/hook/deliveries?per_page=2", { auth: "app" });
  const firstPage = await expectCall("GET", "/app/hook/deliveries?per_page=2", 200, { auth: "app" });
  assert.equal(firstPage.length, 2);
  const next = /<([^>]+)>;\s*rel="next"/.exec(deliveriesPage.headers.get("link") ?? "")?.[1] ?? "";
  assert.match(next, /cursor=v1_\d+/);
  const secondPage = await expectCall("GET", next.slice(fake.url.length), 200, { auth: "app" });
  assert.ok(secondPage[0].id < firstPage[1].id, "newest first, the next page continues where the first ended");
  const before = fake.deliveries.length;
  await expectCall("POST", `/app/hook/deliveries/${firstPage[0].id}/attempts`, 202, { auth: "app" });
  await fake.webhooksIdle();
  assert.deepEqual(fake.deliveries.slice(before).map((d) => [d.id, d.redelivery]), [[firstPage[0].guid, true]]);
  await expectCall("POST", "/app/hook/deliveries/1/attempts", 404, { auth: "app" });

  const served = fake.routes.filter((r) => !r.internal).map((r) => `${r.method} ${r.template}`);
  assert.deepEqual(served.filter((r) => !checked.has(r)), [], "every served route is exercised and checked above");
});

test("workflow_job webhooks validate against the documented webhook schemas and carry GitHub's headers", async () => {
  const job = await fake.queueJob({ owner: "Acme", repo: "gadgets", labels: ["self-hosted"], private: false });
  const gen = await client.call("POST", "/repos/Acme/gadgets/actions/runners/generate-jitconfig", {
    body: { name: "jr-hooks", runner_group_id: 1, labels: ["self-hosted"] },
  });
  const jit = decode((gen.body as { encoded_jit_config: string }).encoded_jit_config);
  assert.equal((await runnerCall(jit.runnerId, jit.token, "acquire")).status, 200);
  assert.equal((await runnerCall(jit.runnerId, jit.token, "complete", { jobId: job.id, conclusion: "failure" })).status, 200);
  const cancelled = await fake.queueJob({ owner: "Acme", repo: "gadgets", labels: ["nobody-serves-this"] });
  await fake.cancelJob(cancelled.id);
  await fake.webhooksIdle();

  const ours = receiver.received.filter((r) => [job.id, cancelled.id].includes((r.payload.workflow_job as { id: number }).id));
  assert.deepEqual(
    ours.map((r) => [(r.payload.workflow_job as { id: number }).id, r.payload.action]),
    [[job.id, "queued"], [job.id, "in_progress"], [job.id, "completed"], [cancelled.id, "queued"], [cancelled.id, "completed"]],
  );
  for (const r of ours) {
    const action = String(r.payload.action);
    const op = spec["x-webhooks"][`workflow-job-${action.replace("_", "-")}`]?.post;
    assert.ok(op?.requestBody, `no documented webhook for workflow_job ${action}`);
    const schema = op.requestBody.content["application/json"]?.schema ?? {};
    assert.deepEqual(schemaErrors(schema, r.payload), [], `workflow_job ${action} payload does not match its schema`);
    assert.deepEqual(undocumentedKeys(schema, r.payload), [], `workflow_job ${action} payload has undocumented fields`);
    for (const p of op.parameters ?? []) {
      if (p.in === "header") assert.ok(r.headers[p.name.toLowerCase()], `workflow_job ${action}: header ${p.name} missing`);
    }
    assert.ok(r.signatureOk, "X-Hub-Signature-256 is the HMAC of the raw body");
    assert.equal(r.headers["x-github-event"], "workflow_job");
  }
  const completed = ours[2]?.payload.workflow_job as Record<string, unknown>;
  assert.deepEqual([completed.conclusion, completed.runner_name], ["failure", "jr-hooks"]);
  const cancelledPayload = ours[4]?.payload.workflow_job as Record<string, unknown>;
  assert.deepEqual([cancelledPayload.conclusion, cancelledPayload.runner_id, cancelledPayload.runner_name], ["cancelled", null, null]);
  const repoPayload = ours[0]?.payload.repository as Record<string, unknown>;
  assert.deepEqual([repoPayload.full_name, repoPayload.private, repoPayload.visibility], ["Acme/gadgets", false, "public"]);
});

test("every request above conforms to GitHub's OpenAPI description (query parameters and bodies), but the refusals taken on purpose", () => {
  assert.deepEqual(fake.invalidRequests(), []);
});
