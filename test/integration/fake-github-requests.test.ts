// The fake GitHub checks the REQUESTS it gets against GitHub's OpenAPI description (query
// parameters and JSON bodies): what the description refuses is answered with GitHub's 422 and
// recorded, so jitrunner cannot drift from the real API unseen. jitrunner's real client, run
// through every call it makes, sends nothing the description refuses.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { loadSpec, responseSchema, schemaErrors, undocumentedKeys } from "../fakes/github/openapi-check.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";
import { githubFor } from "../helpers/github.ts";
import type { OctokitGitHub } from "../../src/github/octokit-client.ts";

const SECRET = "requests-test-secret";
const REPO_JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const RUNS = "/repos/{owner}/{repo}/actions/runs";
const spec = loadSpec();

let fake: FakeGitHub;
let client: FakeGitHubClient;
let receiver: Receiver;

before(async () => {
  receiver = await startReceiver(SECRET);
  fake = await FakeGitHub.start({ webhookSecret: SECRET, webhookUrl: receiver.url });
  client = new FakeGitHubClient(fake);
});

after(async () => {
  await fake?.close();
  await receiver?.close();
});

/** A 422 as GitHub documents it for the operation (Validation Error Simple, or Basic Error where none is documented). */
function assertRefusal(route: string, method: string, res: { status: number; body: unknown }, problem: RegExp): void {
  assert.equal(res.status, 422, JSON.stringify(res.body));
  const body = res.body as { message: string; documentation_url: string };
  assert.match(body.message, /^Invalid request\.\n\n/);
  assert.match(body.message, problem);
  assert.match(body.documentation_url, /^https:\/\/docs\.github\.com\/rest\//);
  const schema = responseSchema(spec, route, method, 422) ?? responseSchema(spec, REPO_JIT, "post", 409);
  assert.ok(schema);
  assert.deepEqual(schemaErrors(schema, body), [], "the 422 body matches GitHub's documented error schema");
  assert.deepEqual(undocumentedKeys(schema, body), []);
}

test("generate-jitconfig: a body GitHub's schema refuses gets 422 \"Invalid request.\" and is recorded; nothing is registered", async () => {
  const ok = { name: "jr-bad", runner_group_id: 1, labels: ["self-hosted"] };
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ["0 labels", { ...ok, labels: [] }, /properties\/labels', \[\] must NOT have fewer than 1 items/],
    ["101 labels", { ...ok, labels: Array.from({ length: 101 }, (_, i) => `l${i}`) }, /properties\/labels', .* must NOT have more than 100 items/],
    ["a string runner_group_id", { ...ok, runner_group_id: "1" }, /For 'properties\/runner_group_id', "1" is not an integer\./],
    ["a label that is no string", { ...ok, labels: ["self-hosted", 7] }, /For 'properties\/labels\/items', 7 is not a string\./],
    ["work_folder not a string", { ...ok, work_folder: 1 }, /properties\/work_folder', 1 is not a string/],
    ["no name", { runner_group_id: 1, labels: ["x"] }, /"name" wasn't supplied\./],
    ["an unknown field", { ...ok, ephemeral: true }, /"ephemeral" is not a permitted key\./],
  ];
  fake.takeInvalidRequests();
  for (const [what, body, problem] of cases) {
    for (const path of ["/repos/acme/app", "/orgs/acme"]) {
      const res = await client.call("POST", `${path}/actions/runners/generate-jitconfig`, { body });
      assertRefusal(`${path === "/orgs/acme" ? "/orgs/{org}" : "/repos/{owner}/{repo}"}/actions/runners/generate-jitconfig`, "POST", res, problem);
      assert.ok(res.status === 422, what);
    }
  }
  assert.equal(fake.runners().length, 0, "no refused body registered a runner");
  const invalid = fake.takeInvalidRequests();
  assert.equal(invalid.length, cases.length * 2);
  assert.deepEqual(new Set(invalid.map((r) => r.status)), new Set([422]));
  assert.equal(invalid[0]?.route, REPO_JIT);
  assert.equal(invalid[0]?.method, "POST");
  assert.equal(invalid[0]?.path, "/repos/acme/app/actions/runners/generate-jitconfig");
  assert.equal(invalid[0]?.body, JSON.stringify(cases[0]?.[1]));
  assert.deepEqual(fake.invalidRequests(), [], "taken");

  // Not JSON at all: GitHub's 400, recorded too.
  const res = await fetch(`${fake.url}/repos/acme/app/actions/runners/generate-jitconfig`, {
    method: "POST",
    headers: { authorization: `token ${await client.installationToken()}`, "content-type": "application/json" },
    body: "{name:",
  });
  assert.equal(res.status, 400);
  assert.equal(((await res.json()) as { message: string }).message, "Problems parsing JSON");
  assert.deepEqual(fake.takeInvalidRequests().map((r) => [r.status, r.problems]), [[400, ["Problems parsing JSON"]]]);
});

test("query parameters: an enum value, a type, per_page over 100, a name the operation does not have: 422, recorded", async () => {
  await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  const cases: Array<[string, string, RegExp]> = [
    [RUNS, "/repos/acme/app/actions/runs?status=bogus", /For query parameter 'status', "bogus" is not one of \["completed",.*"queued",.*\]\./],
    [RUNS, "/repos/acme/app/actions/runs?status=queued&per_page=101", /For query parameter 'per_page', 101 must be <= 100\./],
    [RUNS, "/repos/acme/app/actions/runs?per_page=ten", /For query parameter 'per_page', "ten" is not an integer\./],
    [RUNS, "/repos/acme/app/actions/runs?state=queued", /"state" is not a query parameter of this operation\./],
    ["/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", "/repos/acme/app/actions/runs/1/jobs?filter=newest", /'filter', "newest" is not one of \["latest","all"\]/],
    ["/repos/{owner}/{repo}/actions/runners", "/repos/acme/app/actions/runners?per_page=1000", /'per_page', 1000 must be <= 100/],
  ];
  for (const [route, path, problem] of cases) assertRefusal(route, "GET", await client.call("GET", path), problem);
  const bogusDeliveries = await client.call("GET", "/app/hook/deliveries?status=bogus", { auth: "app" });
  assertRefusal("/app/hook/deliveries", "GET", bogusDeliveries, /'status', "bogus" is not one of \["success","failure"\]/);
  assert.deepEqual(
    fake.takeInvalidRequests().map((r) => r.path),
    [...cases.map(([, path]) => path), "/app/hook/deliveries?status=bogus"],
  );

  // What the description allows passes: every documented status, GitHub's range syntax for `created`.
  for (const q of ["status=queued&per_page=100&page=2", "status=waiting", "status=success", "created=%3E%3D2024-01-01", "exclude_pull_requests=true"]) {
    assert.equal((await client.call("GET", `/repos/acme/app/actions/runs?${q}`)).status, 200, q);
  }
  assert.deepEqual(fake.invalidRequests(), []);
});

test("a refusal is recorded whatever the answer: an injected fault or a 401 still leaves the record", async () => {
  fake.inject({ route: REPO_JIT, status: 502, times: 1 });
  const faulted = await client.call("POST", "/repos/acme/app/actions/runners/generate-jitconfig", { body: { name: "jr-f", runner_group_id: 1, labels: [] } });
  assert.equal(faulted.status, 502);
  const unauthenticated = await client.call("GET", "/repos/acme/app/actions/runs?status=bogus", { auth: { authorization: "token ghs_nope" } });
  assert.equal(unauthenticated.status, 401, "authentication first, as GitHub does");
  assert.deepEqual(fake.takeInvalidRequests().map((r) => [r.route, r.status]), [[REPO_JIT, 502], [RUNS, 401]]);
});

test("the fake's own routes (/_fake/..., the runner protocol) are not GitHub's: not checked", async () => {
  const job = await fake.queueJob({ owner: "acme", repo: "own", labels: ["own-label"] });
  const created = await client.call("POST", "/repos/acme/own/actions/runners/generate-jitconfig", { body: { name: "jr-own", runner_group_id: 1, labels: ["own-label"] } });
  assert.equal(created.status, 201);
  const jit = JSON.parse(Buffer.from((created.body as { encoded_jit_config: string }).encoded_jit_config, "base64").toString()) as { runnerId: number; token: string };
  const call = (action: string, extra: object = {}) =>
    fetch(`${fake.url}/_fake/runners/${jit.runnerId}/${action}?anything=1`, { method: "POST", body: JSON.stringify({ token: jit.token, ...extra }) });
  assert.equal((await call("acquire")).status, 200);
  assert.equal((await call("complete", { jobId: job.id, conclusion: "success" })).status, 200);
  assert.deepEqual(fake.invalidRequests(), []);
});

test("GET /app/hook/deliveries?status=failure lists status codes 400-599 only, as GitHub documents; an unanswered delivery (0) is in neither filter", async () => {
  const documented = spec.paths["/app/hook/deliveries"]?.get?.parameters?.find((p) => p.name === "status") as { description?: string } | undefined;
  assert.match(documented?.description ?? "", /`failure` returns deliveries with a `status_code` in the 400-599 range/);
  receiver.status = 503;
  const failed = await fake.queueJob({ owner: "acme", repo: "hooks", labels: ["h-1"] });
  await fake.webhooksIdle();
  fake.setWebhookUrl("http://127.0.0.1:9/nothing-listens-here");
  const unanswered = await fake.queueJob({ owner: "acme", repo: "hooks", labels: ["h-2"] });
  await fake.webhooksIdle();
  fake.setWebhookUrl(receiver.url);
  receiver.status = 200;
  const delivered = await fake.queueJob({ owner: "acme", repo: "hooks", labels: ["h-3"] });
  await fake.webhooksIdle();

  const codes = (d: unknown[]) => (d as Array<{ status_code: number; guid: string }>).map((x) => x.status_code);
  const guidOf = (jobId: number) => fake.deliveries.find((d) => d.jobId === jobId)?.id;
  const list = async (q: string) => (await client.call("GET", `/app/hook/deliveries?per_page=100${q}`, { auth: "app" })).body as Array<{ status_code: number; guid: string }>;
  const failures = await list("&status=failure");
  const successes = await list("&status=success");
  assert.ok(failures.every((d) => d.status_code >= 400 && d.status_code <= 599), JSON.stringify(codes(failures)));
  assert.ok(successes.every((d) => d.status_code >= 200 && d.status_code <= 399), JSON.stringify(codes(successes)));
  assert.ok(failures.some((d) => d.guid === guidOf(failed.id)), "a 503 is a failure");
  assert.ok(successes.some((d) => d.guid === guidOf(delivered.id)), "a 200 is a success");
  const all = await list("");
  const zero = all.find((d) => d.guid === guidOf(unanswered.id));
  assert.equal(zero?.status_code, 0, "a delivery nothing answered has status_code 0");
  assert.ok(![...failures, ...successes].some((d) => d.guid === zero?.guid), "status_code 0 is outside both documented ranges");
  assert.deepEqual(fake.invalidRequests(), []);
});

test("past deliveries (addPastDelivery) are listed as GitHub lists them, hookDeliveriesPageSize a page, and a redelivery sends the event", async () => {
  const small = await FakeGitHub.start({ webhookSecret: SECRET, hookDeliveriesPageSize: 2 });
  const got = await startReceiver(SECRET);
  got.status = 202;
  try {
    const hourAgo = Math.floor(Date.now() / 1000) * 1000 - 3600_000;
    const past = [0, 202, 0].map((status, i) => small.addPastDelivery({ owner: "acme", repo: "past", labels: ["self-hosted"], status, deliveredAt: hourAgo + i * 60_000 }));
    assert.ok(past[0]!.attemptId < past[1]!.attemptId && past[1]!.attemptId < past[2]!.attemptId, "attempt ids follow the order they were added in");
    const c = new FakeGitHubClient(small);
    const list = async (path: string) => {
      const res = await c.call("GET", path, { auth: "app" });
      assert.equal(res.status, 200);
      const schema = responseSchema(spec, "/app/hook/deliveries", "get", 200);
      assert.ok(schema);
      assert.deepEqual(schemaErrors(schema, res.body), [], "the page matches GitHub's documented schema");
      const next = /<([^>]+)>;\s*rel="next"/.exec(res.headers.get("link") ?? "")?.[1];
      return { items: res.body as Array<Record<string, unknown>>, next: next === undefined ? undefined : new URL(next) };
    };
    const first = await list("/app/hook/deliveries?per_page=100");
    const view = (items: Array<Record<string, unknown>>) => items.map((d) => [d.id, d.guid, d.status_code, d.delivered_at, d.redelivery, d.event, d.action]);
    const of = (d: (typeof past)[number]) => [d.attemptId, d.id, d.status, new Date(d.deliveredAt).toISOString().replace(/\.\d{3}Z$/, "Z"), false, "workflow_job", "queued"];
    assert.deepEqual(view(first.items), [of(past[2]!), of(past[1]!)], "newest first, 2 a page though 100 were asked for");
    assert.equal(first.next?.searchParams.get("per_page"), "100");
    assert.equal(first.next?.searchParams.get("cursor"), `v1_${past[0]!.attemptId}`);
    const second = await list(`${first.next!.pathname}${first.next!.search}`);
    assert.deepEqual(view(second.items), [of(past[0]!)]);
    assert.equal(second.next, undefined, "the last page");
    assert.equal(got.received.length, 0, "nothing sent for a past delivery");

    small.setWebhookUrl(got.url);
    assert.equal((await c.call("POST", `/app/hook/deliveries/${past[0]!.attemptId}/attempts`, { auth: "app" })).status, 202);
    await small.webhooksIdle();
    assert.equal(got.received.length, 1);
    const sent = got.received[0]!;
    assert.ok(sent.signatureOk);
    assert.equal(sent.headers["x-github-delivery"], past[0]!.id, "the event's own delivery id");
    const job = sent.payload.workflow_job as { id: number; status: string };
    assert.deepEqual([sent.payload.action, job.id, job.status], ["queued", past[0]!.jobId, "queued"]);
    const top = (await list("/app/hook/deliveries?per_page=100")).items[0]!;
    assert.deepEqual([top.guid, top.status_code, top.redelivery], [past[0]!.id, 202, true], "the redelivery listed on top");
    assert.ok(Number(top.id) > past[2]!.attemptId);
    assert.deepEqual(small.invalidRequests(), []);
  } finally {
    await got.close();
    await small.close();
  }
});

test("jitrunner's GitHub client, through every call it makes, sends nothing GitHub's description refuses", async () => {
  const gh: OctokitGitHub = githubFor(fake);
  try {
    fake.addRunnerGroup("ci-runners");
    const repo = { installationId: fake.installationId, owner: "acme", repo: "jr" };
    const org = { installationId: fake.installationId, owner: "acme" };
    const queued = await fake.queueJob({ owner: "acme", repo: "jr", labels: ["self-hosted", "linux"] });
    await fake.queueJob({ owner: "acme", repo: "jr", labels: ["self-hosted"], waitForApproval: true });
    const labels = Array.from({ length: 100 }, (_, i) => (i === 0 ? "self-hosted" : `l-${i}`));

    const a = await gh.generateJitConfig(repo, { name: "jr-req-1", labels });
    const b = await gh.generateJitConfig(org, { name: "jr-req-2", labels: ["self-hosted", "linux"], runnerGroup: "ci-runners" });
    await gh.generateJitConfig(org, { name: "jr-req-3", labels: ["self-hosted"], runnerGroupId: 1 });
    assert.equal((await gh.listRunners(repo)).length, 1);
    assert.equal((await gh.listRunners(org)).length, 2);
    assert.equal((await gh.getRunner(repo, a.runnerId))?.name, "jr-req-1");
    assert.equal((await gh.getRunner(org, b.runnerId))?.name, "jr-req-2");
    assert.equal((await gh.getJob(fake.installationId, "acme", "jr", queued.id)).status, "queued");
    assert.equal((await gh.getRepositoryVisibility(fake.installationId, "acme", "jr")).private, true);
    assert.equal((await gh.getRunnerGroup(org, { name: "ci-runners" }))?.allowsPublicRepositories, false);
    const runs = [];
    for (const status of ["queued", "in_progress", "waiting"]) runs.push(...(await gh.listRuns(fake.installationId, "acme", "jr", status)));
    assert.ok(runs.length >= 2);
    for (const run of runs) await gh.listRunJobs(fake.installationId, "acme", "jr", run.id);
    assert.equal(await gh.deleteRunner(repo, a.runnerId), "deleted");
    assert.equal(await gh.deleteRunner(repo, a.runnerId), "not_found");
    assert.equal(await gh.deleteRunnerNamed(org, "jr-req-2"), "deleted");
    assert.equal(await gh.deleteRunnerNamed(org, "jr-req-3"), "deleted");
    await fake.webhooksIdle();
    const first = await gh.listHookDeliveries();
    assert.ok(first.deliveries.length > 0);
    if (first.next) await gh.listHookDeliveries({ cursor: first.next });
    await gh.redeliverHookDelivery(first.deliveries[0]?.id ?? 0);
    await fake.webhooksIdle();
  } finally {
    gh.close();
  }
  const called = new Set(fake.requests.map((r) => `${r.method} ${r.route}`));
  for (const route of [
    "POST /app/installations/{installation_id}/access_tokens",
    `POST ${REPO_JIT}`,
    "POST /orgs/{org}/actions/runners/generate-jitconfig",
    "GET /orgs/{org}/actions/runner-groups",
    "GET /repos/{owner}/{repo}/actions/runners",
    "GET /orgs/{org}/actions/runners",
    "GET /repos/{owner}/{repo}/actions/runners/{runner_id}",
    "DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}",
    "DELETE /orgs/{org}/actions/runners/{runner_id}",
    "GET /repos/{owner}/{repo}/actions/jobs/{job_id}",
    "GET /repos/{owner}/{repo}",
    `GET ${RUNS}`,
    "GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
    "GET /app/hook/deliveries",
    "POST /app/hook/deliveries/{delivery_id}/attempts",
  ]) {
    assert.ok(called.has(route), `jitrunner's client called ${route}`);
  }
  assert.deepEqual(fake.invalidRequests(), [], "every request jitrunner sent conforms to GitHub's OpenAPI description");
});

test("close() fails the test process, loudly, when a request did not conform and nobody took it", () => {
  const script = `
    import { FakeGitHub } from ${JSON.stringify(fileURLToPath(new URL("../fakes/github/index.ts", import.meta.url)))};
    import { FakeGitHubClient } from ${JSON.stringify(fileURLToPath(new URL("../fakes/github/client.ts", import.meta.url)))};
    const fake = await FakeGitHub.start({ webhookSecret: "s" });
    const res = await new FakeGitHubClient(fake).call("GET", "/repos/o/r/actions/runs?status=bogus");
    console.log("answered", res.status);
    await fake.close();
    console.log("closed");
  `;
  const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", timeout: 60_000 });
  assert.match(child.stdout, /answered 422\nclosed/, child.stderr);
  assert.equal(child.status, 1, "exit code 1");
  assert.match(child.stderr, /FakeGitHub: 1 request\(s\) that GitHub's OpenAPI description refuses/);
  assert.match(child.stderr, /GET \/repos\/o\/r\/actions\/runs\?status=bogus \(\/repos\/\{owner\}\/\{repo\}\/actions\/runs\) -> 422/);
});
