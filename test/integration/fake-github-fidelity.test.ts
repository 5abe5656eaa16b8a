/**
 * The fake GitHub where jitrunner's fixes depend on it saying what GitHub says, checked against
 * GitHub's OpenAPI description: a run waiting for an environment's approval (and its webhooks), a
 * 422 to a runner's deletion that is not "busy", and rate-limit resets on the fake's own clock.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { loadSpec, responseSchema, schemaErrors, undocumentedKeys } from "../fakes/github/openapi-check.ts";
import { startReceiver, type Receiver } from "../fakes/github/receiver.ts";

const SECRET = "fidelity-test-secret";
const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const spec = loadSpec();

let receiver: Receiver;
before(async () => {
  receiver = await startReceiver(SECRET);
});
after(async () => {
  await receiver?.close();
});

async function withFake(opts: { clockSkewSeconds?: number }, fn: (fake: FakeGitHub, client: FakeGitHubClient) => Promise<void>): Promise<void> {
  const fake = await FakeGitHub.start({ webhookSecret: SECRET, webhookUrl: receiver.url, ...opts });
  try {
    await fn(fake, new FakeGitHubClient(fake));
  } finally {
    await fake.close();
  }
}

/** The call's body, checked against the schema GitHub documents for its route and status. */
async function documented(fake: FakeGitHub, client: FakeGitHubClient, method: string, path: string, status: number): Promise<Record<string, any>> {
  const res = await client.call(method, path);
  assert.equal(res.status, status, `${method} ${path} answered ${res.status}: ${JSON.stringify(res.body)}`);
  const route = fake.requests.at(-1)?.route ?? "";
  const schema = responseSchema(spec, route, method, status);
  assert.ok(schema, `GitHub documents no JSON body for ${method} ${route} ${status}`);
  assert.deepEqual(schemaErrors(schema, res.body), [], `${method} ${route} ${status} body does not match its schema`);
  assert.deepEqual(undocumentedKeys(schema, res.body), [], `${method} ${route} ${status} body has undocumented fields`);
  return res.body as Record<string, any>;
}

test("a job waiting for approval: status waiting, its run waiting (listed under status=waiting only), GitHub's queued and waiting webhooks; approved, queued", async () => {
  await withFake({}, async (fake, client) => {
    const repo = "/repos/acme/gated";
    const gated = await fake.queueJob({ owner: "acme", repo: "gated", labels: ["self-hosted"], name: "deploy", waitForApproval: true });
    const sibling = await fake.queueJob({ owner: "acme", repo: "gated", labels: ["self-hosted"], runId: gated.run_id });
    const waiting = await documented(fake, client, "GET", `${repo}/actions/runs?status=waiting`, 200);
    assert.deepEqual(waiting.workflow_runs.map((r: { id: number; status: string }) => [r.id, r.status]), [[gated.run_id, "waiting"]]);
    for (const status of ["queued", "in_progress"]) {
      assert.equal((await documented(fake, client, "GET", `${repo}/actions/runs?status=${status}`, 200)).total_count, 0, `not listed as ${status}`);
    }
    const jobs = await documented(fake, client, "GET", `${repo}/actions/runs/${gated.run_id}/jobs?filter=latest`, 200);
    assert.deepEqual(jobs.jobs.map((j: { id: number; status: string }) => [j.id, j.status]), [[gated.id, "waiting"], [sibling.id, "queued"]]);
    assert.equal((await documented(fake, client, "GET", `${repo}/actions/jobs/${gated.id}`, 200)).status, "waiting");

    await fake.approveJob(gated.id);
    const queued = await documented(fake, client, "GET", `${repo}/actions/runs?status=queued`, 200);
    assert.deepEqual(queued.workflow_runs.map((r: { id: number }) => r.id), [gated.run_id], "every job queued: the run is queued");
    await assert.rejects(fake.approveJob(gated.id), /not waiting/);

    await fake.webhooksIdle();
    const hooks = receiver.received.filter((h) => (h.payload.workflow_job as { id: number }).id === gated.id);
    assert.deepEqual(
      hooks.map((h) => [h.payload.action, (h.payload.workflow_job as { status: string }).status]),
      [["queued", "waiting"], ["waiting", "waiting"], ["queued", "queued"]],
      "GitHub's order: queued and waiting while the approval is pending, queued once approved",
    );
    for (const h of hooks) {
      const action = String(h.payload.action);
      const op = spec["x-webhooks"][`workflow-job-${action}`]?.post;
      assert.ok(op?.requestBody, `no documented webhook for workflow_job ${action}`);
      const schema = op.requestBody.content["application/json"]?.schema ?? {};
      assert.deepEqual(schemaErrors(schema, h.payload), [], `workflow_job ${action} payload does not match its schema`);
      assert.deepEqual(undocumentedKeys(schema, h.payload), [], `workflow_job ${action} payload has undocumented fields`);
      assert.ok(h.signatureOk);
    }
  });
});

test("a 422 to a runner's deletion: an injected one is GitHub's Validation Failed, the busy one says the runner runs a job; both as documented", async () => {
  await withFake({}, async (fake, client) => {
    const created = await client.call("POST", "/repos/acme/app/actions/runners/generate-jitconfig", {
      body: { name: "jr-422", runner_group_id: 1, labels: ["self-hosted"] },
    });
    const runner = (created.body as { runner: { id: number } }).runner;
    fake.inject({ route: RUNNER, method: "DELETE", status: 422, times: 1 });
    const refused = await documented(fake, client, "DELETE", `/repos/acme/app/actions/runners/${runner.id}`, 422);
    assert.deepEqual(refused, { message: "Validation Failed", documentation_url: "https://docs.github.com/rest" });
    const listed = await documented(fake, client, "GET", `/repos/acme/app/actions/runners/${runner.id}`, 200);
    assert.equal(listed.busy, false, "GitHub, asked then, says it is not busy");

    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"], onlyRunner: "jr-422" });
    const jit = JSON.parse(Buffer.from((created.body as { encoded_jit_config: string }).encoded_jit_config, "base64").toString("utf8")) as { token: string };
    const acquired = await fetch(`${fake.url}/_fake/runners/${runner.id}/acquire`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: jit.token }) });
    assert.equal(acquired.status, 200);
    const busy = await documented(fake, client, "DELETE", `/repos/acme/app/actions/runners/${runner.id}`, 422);
    assert.equal(busy.message, 'Bad request - Runner "jr-422" is still running a job"');
    assert.equal((await documented(fake, client, "GET", `/repos/acme/app/actions/runners/${runner.id}`, 200)).busy, true);
  });
});

for (const skew of [-7200, 7200]) {
  test(`clock ${skew > 0 ? "ahead" : "behind"} by ${Math.abs(skew)} s: x-ratelimit-reset, injected primary limits' included, is within the hour after the fake's own Date`, async () => {
    await withFake({ clockSkewSeconds: skew }, async (fake, client) => {
      const check = (res: { headers: Headers }, what: string) => {
        const date = Date.parse(res.headers.get("date") ?? "") / 1000;
        const reset = Number(res.headers.get("x-ratelimit-reset"));
        assert.ok(Math.abs(date - (Date.now() / 1000 + skew)) < 5, `${what}: the Date header follows the fake's clock`);
        // The Date header has whole seconds, the reset is rounded up: 3601 s at most.
        assert.ok(reset >= date && reset <= date + 3601, `${what}: reset ${reset} is ${reset - date} s after the fake's Date ${date}`);
      };
      check(await client.call("GET", "/repos/acme/app/actions/runners"), "an answer");
      fake.inject({ route: "/repos/{owner}/{repo}/actions/runners", status: 403, times: 1 });
      const limited = await client.call("GET", "/repos/acme/app/actions/runners");
      assert.deepEqual([limited.status, limited.headers.get("x-ratelimit-remaining")], [403, "0"]);
      check(limited, "a primary rate limit");
      // Set back by two hours more: a new window on the new time, not a reset three hours away.
      fake.setClockSkew(skew - 7200);
      const before = Date.now();
      const res = await client.call("GET", "/repos/acme/app/actions/runners");
      const reset = Number(res.headers.get("x-ratelimit-reset"));
      const date = Date.parse(res.headers.get("date") ?? "") / 1000;
      assert.ok(Math.abs(date - (before / 1000 + skew - 7200)) < 5);
      assert.ok(reset >= date && reset <= date + 3601, `after the clock was set back: reset ${reset - date} s after Date`);
    });
  });
}

test("a repository made public: GitHub's `repository` `publicized` webhook, as documented, and the repository answers public", async () => {
  await withFake({}, async (fake, client) => {
    assert.equal(await fake.publicize("acme", "app"), 200);
    const hook = receiver.received.find((h) => h.headers["x-github-event"] === "repository" && h.payload.action === "publicized");
    assert.ok(hook, "the webhook was sent with X-GitHub-Event: repository");
    assert.ok(hook.signatureOk);
    const repository = hook.payload.repository as { full_name: string; private: boolean };
    assert.deepEqual([repository.full_name, repository.private], ["acme/app", false]);
    assert.equal((hook.payload.installation as { id: number }).id, fake.installationId);
    const op = spec["x-webhooks"]["repository-publicized"]?.post;
    assert.ok(op?.requestBody, "no documented webhook for repository publicized");
    const schema = op.requestBody.content["application/json"]?.schema ?? {};
    assert.deepEqual(schemaErrors(schema, hook.payload), [], "repository publicized payload does not match its schema");
    assert.deepEqual(undocumentedKeys(schema, hook.payload), [], "repository publicized payload has undocumented fields");
    assert.equal((await documented(fake, client, "GET", "/repos/acme/app", 200)).private, false);
    assert.equal(fake.deliveries.at(-1)?.event, "repository", "listed under its event, as GitHub's delivery list does");
  });
});
