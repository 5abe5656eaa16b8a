import assert from "node:assert/strict";
import { test } from "node:test";
import pino from "pino";
import type { Demand } from "../../src/demand.ts";
import { DemandQueues } from "../../src/queue/demand-queue.ts";
import { ActiveRepos } from "../../src/state/active-repos.ts";
import { DeliveryLog } from "../../src/state/deliveries.ts";
import { redisForFile } from "../helpers/redis.ts";
import { recordedScopes, scopesToCheck } from "../../src/reconcile/github-runners.ts";
import { notingActivity } from "../../src/reconcile/repo-activity.ts";

const shared = redisForFile();
const repo = (owner: string, name: string, installationId = 1) => ({ installationId, owner, repo: name, seenAt: 0 });
const record = (owner: string, name: string, createdAt: number) => ({ installationId: 1, owner, repo: name, createdAt });

test("runner scopes: every pool's warm scope and each recorded scope come first, then the active ones, each scope once", () => {
  const pools = [
    { scope: "repository" as const, warm: { installationId: 1, owner: "acme", repo: "warm" } },
    { scope: "organization" as const, warm: { installationId: 2, owner: "Other", repo: "ignored" } },
    { scope: "repository" as const },
  ];
  const recorded = [{ installationId: 1, owner: "ACME", repo: "WARM" }, { installationId: 1, owner: "acme", repo: "far" }, { installationId: 3, owner: "solo" }];
  const orgs = [{ installationId: 1, owner: "acme" }, { installationId: 2, owner: "other" }];
  assert.deepEqual(scopesToCheck([repo("acme", "app"), repo("acme", "far"), repo("other", "x", 2)], orgs, pools, recorded), [
    { installationId: 1, owner: "acme", repo: "warm" },
    { installationId: 2, owner: "Other" },
    { installationId: 1, owner: "acme", repo: "far" },
    { installationId: 3, owner: "solo" },
    { installationId: 1, owner: "acme", repo: "app" },
    { installationId: 2, owner: "other", repo: "x" },
    { installationId: 1, owner: "acme" },
  ]);
  // A repository pool's warm scope without a repository (refused by the config) adds nothing.
  assert.deepEqual(scopesToCheck([], [], [{ scope: "repository", warm: { installationId: 1, owner: "acme" } }]), []);
});

test("recorded scopes: newest record first, each scope once, capped, and whether the cap left some out", () => {
  const records = [record("acme", "a", 1), record("acme", "b", 3), record("acme", "a", 4), record("acme", "", 2)];
  assert.deepEqual(recordedScopes(records, 10), {
    scopes: [{ installationId: 1, owner: "acme", repo: "a" }, { installationId: 1, owner: "acme", repo: "b" }, { installationId: 1, owner: "acme", repo: undefined }],
    more: false,
  });
  assert.deepEqual(recordedScopes(records, 2), { scopes: [{ installationId: 1, owner: "acme", repo: "a" }, { installationId: 1, owner: "acme", repo: "b" }], more: true });
  assert.deepEqual(recordedScopes(records, 3).more, false, "exactly the cap: nothing left out");
});

test("an accepted job notes its repository with the scope of the pool that took it; a replay notes nothing", async () => {
  // The real demand queues, delivery claims and active-repository sets, on a real Redis.
  const prefix = `${shared.redis.prefix}-noting`;
  const queues = new DemandQueues({ redisUrl: shared.redis.url, prefix, attempts: 1 }, shared.conn);
  const deliveries = new DeliveryLog(shared.conn, prefix);
  const active = new ActiveRepos(shared.conn, prefix);
  const pools = [{ name: "org", scope: "organization" as const }, { name: "repo", scope: "repository" as const }];
  const noting = notingActivity(queues, active, pools, pino({ level: "silent" }));
  let jobId = 7100;
  const demand = (pool: string, owner: string, repo: string): Demand =>
    ({ pool, owner, repo, installationId: 1, jobId: ++jobId, runId: 1, runAttempt: 1, labels: [], receivedAt: Date.now(), deliveryId: `d-${jobId}` });
  try {
    const other = demand("org", "other", "x");
    assert.equal(await noting.add(demand("org", "acme", "site"), deliveries.claimKey("d-site")), "added");
    assert.equal(await noting.add(demand("repo", "someuser", "dotfiles"), deliveries.claimKey("d-dotfiles")), "added");
    // A delivery's copy (its claim taken, its demand held): replayed, and nothing noted of it. The
    // first copy is added through the queues themselves, not noted.
    assert.equal(await queues.add(other, deliveries.claimKey("d-other")), "added");
    assert.equal(await noting.add(other, deliveries.claimKey("d-other")), "replayed");
    const repos = (await active.list(3600_000, 10)).map((r) => `${r.owner}/${r.repo}`).sort();
    assert.deepEqual(repos, ["acme/site", "someuser/dotfiles"]);
    assert.deepEqual((await active.listOrganizations(3600_000, 10)).map((o) => o.owner), ["acme"], "only the organization pool's owner");
  } finally {
    await queues.close();
  }
});
