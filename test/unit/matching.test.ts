import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError } from "../../src/errors.ts";
import { decideQueued, type WorkflowJobEvent } from "../../src/ingress/policy.ts";
import { matchPool } from "../../src/ingress/pools.ts";
import { needsRunner } from "../../src/worker/still-queued.ts";
import { testConfig } from "../helpers/config.ts";

const pools = [
  { name: "big", labels: ["self-hosted", "linux", "x64", "gpu", "large"] },
  { name: "std", labels: ["self-hosted", "Linux", "x64"] },
  { name: "arm", labels: ["self-hosted", "linux", "arm64"] },
];

test("a pool serves a job whose labels are a subset of its own, case-insensitively", () => {
  assert.equal(matchPool(["self-hosted", "LINUX"], pools)?.name, "std");
  assert.equal(matchPool(["gpu"], pools)?.name, "big");
  assert.equal(matchPool(["linux", "arm64"], pools)?.name, "arm");
  assert.equal(matchPool(["ubuntu-latest"], pools), undefined);
  assert.equal(matchPool(["self-hosted", "windows"], pools), undefined);
});

test("of several matching pools the most specific (fewest labels) wins", () => {
  assert.equal(matchPool(["self-hosted", "x64"], pools)?.name, "std");
});

test("a job with no labels (runs-on: { group: ... } only) matches only a pool that opts in", () => {
  // Its webhooks do not say which group it wants: a runner of another group could not take it.
  assert.equal(matchPool([], pools), undefined);
  const optIn = [...pools, { name: "group-a", labels: ["self-hosted", "linux", "x64", "a"], serveJobsWithoutLabels: true }];
  assert.equal(matchPool([], optIn)?.name, "group-a", "the pool that opts in, though others have fewer labels");
  assert.equal(matchPool(["self-hosted", "x64"], optIn)?.name, "std", "jobs with labels are matched as before");
});

function event(
  over: { status?: string; labels?: string[]; owner?: string; ownerType?: string; repo?: string; private?: boolean; visibility?: string; installation?: boolean } = {},
): WorkflowJobEvent {
  const owner = over.owner ?? "acme";
  const repo = over.repo ?? "app";
  return {
    action: "queued",
    workflow_job: { id: 101, run_id: 7, run_attempt: 2, status: over.status ?? "queued", labels: over.labels ?? ["self-hosted", "linux"], runner_name: null },
    repository: { name: repo, full_name: `${owner}/${repo}`, private: over.private ?? true, visibility: over.visibility, owner: { login: owner, type: over.ownerType } },
    installation: over.installation === false ? undefined : { id: 9 },
  };
}

test("queued decisions: status, pool, allowlists, public repositories, installation", () => {
  const config = testConfig();
  const meta = { deliveryId: "d1", receivedAt: 1 };
  const ok = decideQueued(event(), config, meta);
  assert.equal(ok.kind, "enqueue");
  if (ok.kind === "enqueue") {
    assert.deepEqual(
      { pool: ok.demand.pool, jobId: ok.demand.jobId, runAttempt: ok.demand.runAttempt, installationId: ok.demand.installationId },
      { pool: "default", jobId: 101, runAttempt: 2, installationId: 9 },
    );
  }
  const reason = (e: WorkflowJobEvent, c = config) => {
    const d = decideQueued(e, c, meta);
    return d.kind === "ignore" ? d.reason : "enqueue";
  };
  assert.equal(reason(event({ status: "waiting" })), "not_queued");
  assert.equal(reason(event({ labels: ["windows"] })), "no_pool");
  assert.equal(reason(event({ labels: [] })), "no_labels");
  assert.equal(reason(event({ private: false })), "public_repo");
  assert.equal(reason(event({ private: true, visibility: "public" })), "public_repo");
  assert.equal(reason(event({ private: true, visibility: "internal" })), "enqueue");
  assert.equal(reason(event({ installation: false })), "no_installation");
  const owners = testConfig({ policy: { allowedOwners: ["Other"] } });
  assert.equal(reason(event(), owners), "owner_not_allowed");
  assert.equal(reason(event({ owner: "other" }), owners), "enqueue");
  const repos = testConfig({ policy: { allowedRepositories: ["acme/site"] } });
  assert.equal(reason(event(), repos), "repo_not_allowed");
  assert.equal(reason(event({ repo: "Site" }), repos), "enqueue");
  // A job no pool serves (GitHub-hosted, another tool's) is none of ours, in a refused repository
  // too: not a refusal the status page would list among its recent jobs.
  assert.equal(reason(event({ labels: ["ubuntu-latest"] }), owners), "no_pool");
  assert.equal(reason(event({ labels: ["ubuntu-latest"] }), repos), "no_pool");
  assert.equal(reason(event({ labels: [] }), repos), "no_labels");
  const pub = testConfig({ pools: [{ name: "oss", labels: ["self-hosted", "linux"], image: "x", allowPublicRepositories: true }] });
  assert.equal(reason(event({ private: false }), pub), "enqueue");
});

test("still-queued check: skip only when no runner of ours was used up", () => {
  const p = "jitrunner";
  assert.equal(needsRunner({ status: "queued", conclusion: null, runnerName: null }, p), true);
  // Cancelled while queued: nothing consumed.
  assert.equal(needsRunner({ status: "completed", conclusion: "cancelled", runnerName: null }, p), false);
  // Ran on a runner that is not ours: nothing of ours consumed.
  assert.equal(needsRunner({ status: "in_progress", conclusion: null, runnerName: "fixed-pool-3" }, p), false);
  // Took one of our runners, launched for another job: that job still needs this one.
  assert.equal(needsRunner({ status: "in_progress", conclusion: null, runnerName: "jitrunner-default-ab12" }, p), true);
  assert.equal(needsRunner({ status: "completed", conclusion: "success", runnerName: "jitrunner-default-ab12" }, p), true);
});

test("still-queued check: a job waiting for an approval needs no runner yet", () => {
  // It may wait hours; a runner launched now would idle out. Once approved, GitHub queues it again.
  assert.equal(needsRunner({ status: "waiting", conclusion: null, runnerName: null }, "jitrunner"), false);
});

test("a job with no labels is queued only to an organization pool with its own runner group that opts in", () => {
  const meta = { deliveryId: "d1", receivedAt: 1 };
  const grouped = { name: "group-a", labels: ["self-hosted", "linux"], image: "x", scope: "organization" as const, runnerGroup: "group-a" };
  const optedIn = testConfig({ pools: [{ ...grouped, serveJobsWithoutLabels: true }] });
  const decision = decideQueued(event({ labels: [] }), optedIn, meta);
  assert.equal(decision.kind, "enqueue");
  if (decision.kind === "enqueue") assert.deepEqual([decision.pool.name, decision.demand.labels], ["group-a", []]);
  const notOptedIn = decideQueued(event({ labels: [] }), testConfig({ pools: [grouped] }), meta);
  assert.deepEqual(notOptedIn, { kind: "ignore", reason: "no_labels" });
});

test("a user's repository is never given an organization pool: the best repository pool serves it, or it is ignored", () => {
  // GitHub has no organization runners for a user account (generate-jitconfig answers 404).
  const meta = { deliveryId: "d1", receivedAt: 1 };
  const org = { name: "org", labels: ["self-hosted", "linux"], image: "x", scope: "organization" as const };
  const repo = { name: "repo", labels: ["self-hosted", "linux", "x64"], image: "x" };
  const wider = { name: "wider", labels: ["self-hosted", "linux", "x64", "gpu"], image: "x" };
  const pool = (e: WorkflowJobEvent, c: ReturnType<typeof testConfig>) => {
    const d = decideQueued(e, c, meta);
    return d.kind === "enqueue" ? d.pool.name : `ignored: ${d.reason}`;
  };
  const both = testConfig({ pools: [org, wider, repo] });
  assert.equal(pool(event({ ownerType: "Organization" }), both), "org", "an organization's job: the most specific pool, as ever");
  assert.equal(pool(event({ ownerType: "User" }), both), "repo", "a user's job: the most specific repository pool");
  assert.equal(pool(event({ ownerType: "Bot" }), both), "repo", "any account that is not an organization");
  assert.equal(pool(event({ ownerType: undefined }), both), "org", "type unknown (never from GitHub): as before");
  const orgOnly = testConfig({ pools: [org] });
  assert.equal(pool(event({ ownerType: "User" }), orgOnly), "ignored: user_owner_org_pool");
  assert.equal(pool(event({ ownerType: "User", labels: ["windows"] }), orgOnly), "ignored: no_pool", "no pool at all: no_pool, as before");
  // A job without labels is served only by organization pools that opt in (see above): never a user's.
  const grouped = testConfig({ pools: [{ ...org, runnerGroup: "g", serveJobsWithoutLabels: true }, repo] });
  assert.equal(pool(event({ ownerType: "User", labels: [] }), grouped), "ignored: user_owner_org_pool");
  assert.equal(pool(event({ ownerType: "Organization", labels: [] }), grouped), "org");
});

test("serveJobsWithoutLabels is refused at load for a repository pool or one in the Default group", () => {
  const refused = (pool: Record<string, unknown>) => {
    try {
      testConfig({ pools: [{ name: "p", labels: ["self-hosted"], image: "x", serveJobsWithoutLabels: true, ...pool }] });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.filter((p) => p.startsWith("pools[0].serveJobsWithoutLabels:"));
    }
    return [];
  };
  assert.equal(refused({}).length, 1, "repository scope (the default)");
  assert.match(refused({})[0]!, /scope: organization and a runner group of its own/);
  assert.equal(refused({ scope: "repository", runnerGroupId: 5 }).length, 1, "a repository pool has no group");
  assert.equal(refused({ scope: "organization" }).length, 1, "the Default group, by default");
  assert.equal(refused({ scope: "organization", runnerGroupId: 1 }).length, 1, "the Default group, by id");
  assert.deepEqual(refused({ scope: "organization", runnerGroupId: 5 }), []);
  assert.deepEqual(refused({ scope: "organization", runnerGroup: "builders" }), []);
  assert.equal(testConfig().pools[0]!.serveJobsWithoutLabels, false, "off by default");
});
