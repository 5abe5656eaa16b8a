import assert from "node:assert/strict";
import { test } from "node:test";
import type { HookDelivery } from "../../src/github/client.ts";
import { decideQueued } from "../../src/ingress/policy.ts";
import { marksAfter, MAX_FAILED_REQUESTS_PER_EVENT, MAX_REDELIVERIES_PER_EVENT, retryDelayMs, toRedeliver, transientFailure, type PassRead } from "../../src/reconcile/github-deliveries.ts";
import { queuedEventOf, renewalOf, runsToList, tookAnotherJob } from "../../src/reconcile/github-queued.ts";
import { demandId, demandIdOf } from "../../src/demand.ts";
import { scopesToCheck } from "../../src/reconcile/github-runners.ts";
import { passTimeoutMs } from "../../src/reconcile/loops.ts";
import { testConfig } from "../helpers/config.ts";

const repo = (owner: string, name: string, installationId = 1) => ({ installationId, owner, repo: name, seenAt: 0 });
const org = (owner: string, installationId = 1) => ({ installationId, owner, seenAt: 0 });

test("runner scopes: each active repository for repository pools, each owner an organization pool served once for organization pools", () => {
  // A user's repository (its jobs served by a repository pool) is active; its owner is no organization.
  const repos = [repo("acme", "app"), repo("Acme", "lib"), repo("acme", "APP"), repo("other", "x", 2), repo("someuser", "dotfiles")];
  const orgs = [org("acme"), org("ACME"), org("other", 2)];
  assert.deepEqual(scopesToCheck(repos, orgs, [{ scope: "repository" }]), [
    { installationId: 1, owner: "acme", repo: "app" },
    { installationId: 1, owner: "Acme", repo: "lib" },
    { installationId: 2, owner: "other", repo: "x" },
    { installationId: 1, owner: "someuser", repo: "dotfiles" },
  ]);
  assert.deepEqual(scopesToCheck(repos, orgs, [{ scope: "organization" }]), [
    { installationId: 1, owner: "acme" },
    { installationId: 2, owner: "other" },
  ], "never /orgs/someuser: GitHub answers 404 for a user account, on every pass");
  assert.equal(scopesToCheck(repos, orgs, [{ scope: "organization" }, { scope: "repository" }]).length, 6);
  assert.deepEqual(scopesToCheck([], [], [{ scope: "repository" }]), []);
});

test("a queued job found through the API passes exactly the webhook's policy", () => {
  const config = testConfig({ policy: { allowedOwners: ["acme"] } });
  const job = { id: 40_000_000_001, runId: 12_000_000_001, runAttempt: 2, status: "queued", conclusion: null, labels: ["self-hosted", "linux"], runnerName: null };
  const run = { id: 12_000_000_001, owner: "acme", ownerType: "Organization", repo: "app", private: true, visibility: "private" };
  const decision = decideQueued(queuedEventOf(job, run, 7), config, { deliveryId: "reconcile-1", receivedAt: 5 });
  assert.equal(decision.kind, "enqueue");
  if (decision.kind === "enqueue") {
    assert.deepEqual(decision.demand, {
      pool: "default",
      jobId: 40_000_000_001,
      runId: 12_000_000_001,
      runAttempt: 2,
      owner: "acme",
      repo: "app",
      installationId: 7,
      publicRepository: false,
      labels: ["self-hosted", "linux"],
      receivedAt: 5,
      deliveryId: "reconcile-1",
    });
  }
  const ignored = (over: object, jobOver: object = {}) => {
    const d = decideQueued(queuedEventOf({ ...job, ...jobOver }, { ...run, ...over }, 7), config, { deliveryId: "r", receivedAt: 0 });
    return d.kind === "ignore" ? d.reason : "enqueue";
  };
  assert.equal(ignored({ private: false, visibility: "public" }), "public_repo");
  assert.equal(ignored({ owner: "evil" }), "owner_not_allowed");
  assert.equal(ignored({}, { labels: ["gpu"] }), "no_pool");
  assert.equal(ignored({}, { status: "waiting" }), "not_queued");
  // The run's owner type reaches the policy: a user's job is refused an organization pool.
  const orgOnly = testConfig({ pools: [{ name: "org", labels: ["self-hosted", "linux"], image: "x", scope: "organization" }] });
  const user = decideQueued(queuedEventOf(job, { ...run, ownerType: "User" }, 7), orgOnly, { deliveryId: "r", receivedAt: 0 });
  assert.deepEqual(user, { kind: "ignore", reason: "user_owner_org_pool" });
});

const attempt = (id: number, guid: string, statusCode: number, event = "workflow_job", action = "queued"): HookDelivery => ({
  id,
  guid,
  deliveredAt: "2024-01-01T00:00:00Z",
  statusCode,
  event,
  action,
});

test("redelivery: workflow_job events with no successful attempt whose latest failure is transient, latest attempt; not `waiting` ones", () => {
  const picked = toRedeliver([
    attempt(1, "lost", 0),
    attempt(2, "ok", 202),
    attempt(3, "retried-ok", 503),
    attempt(4, "retried-ok", 202),
    attempt(5, "twice", 502),
    attempt(6, "twice", 0),
    attempt(7, "refused", 401),
    attempt(8, "other-event", 0, "push"),
    attempt(9, "waiting", 503, "workflow_job", "waiting"),
    attempt(10, "completed", 503, "workflow_job", "completed"),
  ]);
  assert.deepEqual(picked.map((d) => [d.guid, d.id]), [["lost", 1], ["twice", 6], ["completed", 10]]);
  assert.ok(transientFailure(0) && transientFailure(500) && transientFailure(429) && transientFailure(408));
  assert.ok(!transientFailure(400) && !transientFailure(401) && !transientFailure(413) && !transientFailure(202));
});

test("every pass is bounded in time", () => {
  assert.equal(passTimeoutMs(1000), 30_000);
  assert.equal(passTimeoutMs(300_000), 600_000);
  assert.equal(passTimeoutMs(3_600_000), 600_000);
});

test("queued runs: at most the budget per pass, those that waited longest first, a new run with a head start; runs listed before are listed again while new ones keep coming", () => {
  const runs = [10, 11, 12, 13, 14].map((id) => ({ run: { id } }));
  const ids = (rs: Array<{ run: { id: number } }>) => rs.map((r) => r.run.id);
  const seenAt = (at: number, of: Array<{ run: { id: number } }>) => new Map(of.map((r) => [r.run.id, at]));
  const HEAD_START = 1_000;
  assert.deepEqual(ids(runsToList(runs, new Map(), seenAt(0, runs), 2, HEAD_START)), [10, 11], "none listed yet: in listing order");
  const listed = new Map([
    [10, 300],
    [11, 100],
    [13, 200],
  ]);
  assert.deepEqual(ids(runsToList(runs, listed, seenAt(0, runs), 3, HEAD_START)), [12, 14, 11], "never listed first, then the oldest listing");
  assert.deepEqual(ids(runsToList(runs, listed, seenAt(0, runs), 10, HEAD_START)), [12, 14, 11, 13, 10], "everything, when the budget allows");
  assert.deepEqual(ids(runsToList(runs, listed, seenAt(1_250, runs), 2, HEAD_START)), [11, 13], "a new run's head start is for so long only");
  // Passes that each list their picks cover every run, each within ceil(n / budget) passes.
  const seen = new Map<number, number>();
  const covered = new Set<number>();
  for (let pass = 1; pass <= 3; pass++) {
    for (const r of runsToList(runs, seen, seenAt(0, runs), 2, HEAD_START)) {
      seen.set(r.run.id, pass);
      covered.add(r.run.id);
    }
  }
  assert.equal(covered.size, runs.length);

  // Four new runs a pass with a budget of four (a pass every 100 ms, a head start of 3 passes): the
  // five runs listed before are each listed again all the same (before, never: new runs came first).
  const lastAt = new Map<number, number>(runs.map((r, i) => [r.run.id, i]));
  const firstAt = new Map<number, number>(runs.map((r) => [r.run.id, 0]));
  const open = [...runs];
  const relisted = new Set<number>();
  let next = 100;
  for (let pass = 1; pass <= 12; pass++) {
    const now = pass * 100;
    for (let k = 0; k < 4; k++) {
      open.push({ run: { id: next } });
      firstAt.set(next++, now);
    }
    for (const r of runsToList(open, lastAt, firstAt, 4, 300)) {
      if (r.run.id < 100) relisted.add(r.run.id);
      lastAt.set(r.run.id, now);
    }
  }
  assert.deepEqual([...relisted].sort(), [10, 11, 12, 13, 14], "every run listed before is listed again");
});

test("redelivery tries: 1, 4, 16, 64, 256, 1,024 minutes apart, all of them (and as many failed requests) within GitHub's 3 days", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => retryDelayMs(n) / 60_000), [1, 4, 16, 64, 256, 1024]);
  const span = (max: number) => Array.from({ length: max - 1 }, (_, i) => retryDelayMs(i + 1)).reduce((a, b) => a + b, 0);
  assert.ok(span(MAX_REDELIVERIES_PER_EVENT) > 20 * 3600_000, "a receiver down for most of a day still gets the event");
  assert.ok(span(MAX_REDELIVERIES_PER_EVENT) + span(MAX_FAILED_REQUESTS_PER_EVENT) < 3 * 24 * 3600_000);
});

test("redelivery read marks: the newest read moves the mark; what a pass leaves unread is the backlog, a gap among the newest pages joined to it", () => {
  // Marked at 1,000; a backlog from cursor b1 down to 100; the newest pages read down to 940.
  const base: PassRead = { upTo: 1000, backlog: { cursor: "b1", floor: 100 }, topFloor: 940, newest: 1060, topPages: 3, topNext: undefined, olderRead: false, olderNext: undefined };
  assert.deepEqual(marksAfter(base), { upTo: 1060, backlog: { cursor: "b1", floor: 100 } }, "no pages left for the backlog: kept");
  assert.deepEqual(marksAfter({ ...base, olderRead: true, olderNext: "b2" }), { upTo: 1060, backlog: { cursor: "b2", floor: 100 } }, "read on");
  assert.deepEqual(marksAfter({ ...base, olderRead: true }), { upTo: 1060, backlog: undefined }, "read through");
  assert.deepEqual(marksAfter({ ...base, topNext: "t3" }), { upTo: 1060, backlog: { cursor: "t3", floor: 100 } }, "the newest not all read: from the gap down to the backlog's floor");
  assert.deepEqual(marksAfter({ ...base, backlog: undefined, topNext: "t3" }), { upTo: 1060, backlog: { cursor: "t3", floor: 940 } }, "the gap alone");
  // The request limit stopped the pass.
  assert.deepEqual(marksAfter({ ...base, stop: { page: 0, cursor: undefined } }), { upTo: 1000, backlog: { cursor: "b1", floor: 100 } }, "on the top page: nothing moves");
  assert.deepEqual(marksAfter({ ...base, stop: { page: 2, cursor: "t2" } }), { upTo: 1060, backlog: { cursor: "t2", floor: 100 } }, "lower among the newest: from there");
  assert.deepEqual(marksAfter({ ...base, olderRead: true, olderNext: "b3", stop: { page: 4, cursor: "b2" } }), { upTo: 1060, backlog: { cursor: "b2", floor: 100 } }, "in the backlog: from there");
  assert.deepEqual(marksAfter({ ...base, upTo: 0, backlog: undefined, newest: 0 }), { upTo: 0, backlog: undefined }, "nothing listed: no mark");
});

test("a demand's runner took another job only once GitHub marked it busy or done with a job of another id", () => {
  for (const state of ["registering", "starting", "idle"] as const) assert.equal(tookAnotherJob({ state }, 7), false, state);
  assert.equal(tookAnotherJob({ state: "busy", jobId: 7 }, 7), false, "its own job");
  assert.equal(tookAnotherJob({ state: "busy", jobId: 8 }, 7), true);
  assert.equal(tookAnotherJob({ state: "completed", jobId: 8 }, 7), true);
  assert.equal(tookAnotherJob({ state: "busy" }, 7), false, "busy with no job named");
});

test("renewals of a demand: the same job under queue ids of their own, none a run attempt's", () => {
  const demand = { pool: "p", jobId: 40_000_000_001, runId: 1, runAttempt: 2, owner: "o", repo: "r", installationId: 1, labels: ["x"], receivedAt: 5, deliveryId: "d" };
  assert.equal(renewalOf(demand, 0), demand);
  const ids = [0, 1, 2, 10].map((n) => demandIdOf(renewalOf(demand, n)));
  assert.deepEqual(ids, ["40000000001-2", "40000000001-2-r1", "40000000001-2-r2", "40000000001-2-r10"]);
  assert.ok(!ids.includes(demandId(demand.jobId, 3)), "no renewal's id is another run attempt's");
  const { renewal, ...rest } = renewalOf(demand, 3);
  assert.equal(renewal, 3);
  assert.deepEqual(rest, demand, "only the renewal differs");
});
