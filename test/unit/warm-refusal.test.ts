/**
 * Whether a pool's warm runners may register where they would: the same rule as a job's refusal
 * of public repositories (decideQueued), applied to the place GitHub hands warm runners jobs from.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { decideQueued, isPublicRepository } from "../../src/ingress/policy.ts";
import { admitsPublicRepositories, warmRefusal } from "../../src/worker/warm-exposure.ts";
import { testConfig } from "../helpers/config.ts";

const strict = { allowPublicRepositories: false };
const open = { allowPublicRepositories: true };

test("a repository pool: refused on a public repository, by its visibility when GitHub gives one, else by `private`", () => {
  const repo = (r: { private: boolean; visibility?: string }) => ({ kind: "repository" as const, repository: r });
  assert.equal(warmRefusal(strict, repo({ private: false, visibility: "public" })), "public_repository");
  assert.equal(warmRefusal(strict, repo({ private: false })), "public_repository", "no visibility (older GHES): `private` says");
  assert.equal(warmRefusal(strict, repo({ private: true, visibility: "private" })), undefined);
  assert.equal(warmRefusal(strict, repo({ private: false, visibility: "internal" })), undefined, "internal: the enterprise's members only");
  assert.equal(warmRefusal(open, repo({ private: false, visibility: "public" })), undefined, "allowPublicRepositories allows it");
});

test("an organization pool: refused when its runner group admits public repositories, or is not there", () => {
  const group = (allowsPublicRepositories: boolean) => ({ kind: "organization" as const, group: { id: 2, name: "ci", allowsPublicRepositories, visibility: "all", restrictedToWorkflows: false, selectedWorkflows: [] } });
  assert.equal(warmRefusal(strict, group(true)), "public_runner_group");
  assert.equal(warmRefusal(strict, group(false)), undefined);
  assert.equal(warmRefusal(strict, { kind: "organization", group: undefined }), "runner_group_missing");
  assert.equal(warmRefusal(open, group(true)), undefined);
});

test("a runner group admits public repositories only when it allows them and its repository access is not \"Private repositories\"", () => {
  const group = (allowsPublicRepositories: boolean, visibility: string) => ({ allowsPublicRepositories, visibility });
  assert.equal(admitsPublicRepositories(group(true, "all")), true);
  assert.equal(admitsPublicRepositories(group(true, "selected")), true, "those of its selected repositories that are public");
  assert.equal(admitsPublicRepositories(group(true, "private")), false, "private and internal repositories only, whatever allows_public_repositories says");
  assert.equal(admitsPublicRepositories(group(false, "all")), false);
  const organization = (allowsPublicRepositories: boolean, visibility: string) => ({
    kind: "organization" as const,
    group: { id: 2, name: "ci", allowsPublicRepositories, visibility, restrictedToWorkflows: false, selectedWorkflows: [] },
  });
  // The pool that serves no public repository is kept on the safe side: a group that says it allows
  // them is refused, whatever its visibility.
  assert.equal(warmRefusal(strict, organization(true, "private")), "public_runner_group");
  assert.equal(warmRefusal(strict, organization(false, "private")), undefined);
});

test("a job's demand says whether its repository is public, as the ingress decided it", () => {
  const config = testConfig({ pools: [{ name: "p", labels: ["self-hosted"], image: "runner", allowPublicRepositories: true }] });
  const demandOf = (r: { private: boolean; visibility?: string }) => {
    const event = {
      action: "queued",
      workflow_job: { id: 1, run_id: 1, status: "queued", labels: ["self-hosted"], runner_name: null },
      repository: { name: "app", full_name: "acme/app", owner: { login: "acme" }, ...r },
      installation: { id: 1 },
    };
    const decision = decideQueued(event, config, { deliveryId: "d", receivedAt: 0 });
    return decision.kind === "enqueue" ? decision.demand.publicRepository : "ignored";
  };
  assert.deepEqual(
    [{ private: false, visibility: "public" }, { private: false }, { private: true, visibility: "private" }, { private: false, visibility: "internal" }].map(demandOf),
    [true, true, false, false],
  );
});

test("nothing known (the lookup failed): refused, fail closed, unless the pool allows public repositories anyway", () => {
  assert.equal(warmRefusal(strict, { kind: "unknown" }), "visibility_unknown");
  assert.equal(warmRefusal(open, { kind: "unknown" }), undefined);
});

test("jobs and warm runners read a repository's visibility alike", () => {
  const config = testConfig({ pools: [{ name: "p", labels: ["self-hosted"], image: "runner" }] });
  for (const r of [{ private: false, visibility: "public" }, { private: false }, { private: true }, { private: false, visibility: "internal" }]) {
    const event = {
      action: "queued",
      workflow_job: { id: 1, run_id: 1, status: "queued", labels: ["self-hosted"], runner_name: null },
      repository: { name: "app", full_name: "acme/app", owner: { login: "acme" }, ...r },
      installation: { id: 1 },
    };
    const decision = decideQueued(event, config, { deliveryId: "d", receivedAt: 0 });
    const refusedJob = decision.kind === "ignore" && decision.reason === "public_repo";
    assert.equal(refusedJob, isPublicRepository(r));
    assert.equal(warmRefusal(strict, { kind: "repository", repository: r }) === "public_repository", refusedJob, JSON.stringify(r));
  }
});
