// Pure parts of the fake GitHub: label matching, scopes, names, nullable schemas, payloads.
import assert from "node:assert/strict";
import { test } from "node:test";
import { toJsonSchema } from "../fakes/github/openapi-check.ts";
import { ConflictError, FakeState, labelsMatch, scopeHoldsRepo } from "../fakes/github/state.ts";
import { workflowJobPayload } from "../fakes/github/webhooks.ts";

test("labelsMatch: the job's labels are a case-insensitive subset of the runner's", () => {
  assert.equal(labelsMatch(["self-hosted", "Linux"], ["SELF-HOSTED", "linux", "x64"]), true);
  assert.equal(labelsMatch(["self-hosted", "gpu"], ["self-hosted", "linux"]), false);
  assert.equal(labelsMatch([], ["anything"]), true);
});

test("scopeHoldsRepo: repository scope is one repository, organization scope all of the owner's", () => {
  assert.equal(scopeHoldsRepo({ kind: "repo", owner: "Acme", repo: "Widgets" }, "acme", "widgets"), true);
  assert.equal(scopeHoldsRepo({ kind: "repo", owner: "acme", repo: "widgets" }, "acme", "gadgets"), false);
  assert.equal(scopeHoldsRepo({ kind: "org", org: "ACME" }, "acme", "gadgets"), true);
  assert.equal(scopeHoldsRepo({ kind: "org", org: "acme" }, "other", "widgets"), false);
});

test("runner names are unique per scope, not globally", () => {
  const state = new FakeState();
  state.createRunner({ kind: "repo", owner: "a", repo: "r" }, "n", 1, ["x"]);
  assert.throws(() => state.createRunner({ kind: "repo", owner: "A", repo: "R" }, "n", 1, ["x"]), ConflictError);
  state.createRunner({ kind: "repo", owner: "a", repo: "other" }, "n", 1, ["x"]);
  state.createRunner({ kind: "org", org: "a" }, "n", 1, ["x"]);
  assert.throws(() => state.createRunner({ kind: "org", org: "a" }, "n", 1, ["x"]), ConflictError);
});

test("job and run ids exceed 32 bits, as on github.com", () => {
  const job = new FakeState().createJob({ owner: "a", repo: "r", labels: ["x"] });
  assert.ok(job.id > 2 ** 32 && job.run_id > 2 ** 32 && Number.isSafeInteger(job.id));
});

test("toJsonSchema turns OpenAPI 3.0 nullable into JSON Schema null", () => {
  assert.deepEqual(toJsonSchema({ type: "string", nullable: true, example: "x" }), { type: ["string", "null"] });
  assert.deepEqual(toJsonSchema({ type: "string", nullable: true, enum: ["a"] }), { type: ["string", "null"], enum: ["a", null] });
  assert.deepEqual(toJsonSchema({ nullable: true, anyOf: [{ type: "object" }] }), { anyOf: [{ anyOf: [{ type: "object" }] }, { type: "null" }] });
  assert.deepEqual(toJsonSchema({ properties: { required: { type: "string" } }, required: ["required"] }), {
    properties: { required: { type: "string" } },
    required: ["required"],
  });
});

test("workflow_job payloads take GitHub's example and replace what identifies the job", () => {
  const state = new FakeState();
  const job = state.createJob({ owner: "acme", repo: "widgets", labels: ["self-hosted"], private: true, runAttempt: 2 });
  const p = workflowJobPayload({ api: "http://127.0.0.1:1", html: "https://github.com" }, state, { id: 9, type: "Organization" }, job, "queued");
  const wj = p.workflow_job as Record<string, unknown>;
  const repo = p.repository as Record<string, unknown>;
  assert.equal(p.action, "queued");
  assert.deepEqual([wj.id, wj.run_id, wj.run_attempt, wj.status, wj.runner_name], [job.id, job.run_id, 2, "queued", null]);
  assert.deepEqual([repo.full_name, repo.private, repo.visibility], ["acme/widgets", true, "private"]);
  assert.equal((repo.owner as { login: string }).login, "acme");
  assert.deepEqual(p.installation, { id: 9, node_id: Buffer.from("023:IntegrationInstallation9").toString("base64") });
  const text = JSON.stringify(p);
  for (const stale of ["Codertocat/Hello-World", "octo-org", "api.github.com/repos"]) assert.ok(!text.includes(stale), `left over: ${stale}`);
});
