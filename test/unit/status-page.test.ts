import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { cell, renderStatusText } from "../../src/cli/status-text.ts";
import { Secret } from "../../src/config/secret.ts";
import { bearerMatches } from "../../src/http/auth.ts";
import { escapeHtml, html } from "../../src/http/html.ts";
import { CONTENT_SECURITY_POLICY, renderStatusPage } from "../../src/http/status-page.ts";
import { redact } from "../../src/errors.ts";
import { summarizeJobs, type JobEvent } from "../../src/state/activity.ts";
import { collectStatus, countStates, describeOutcome, formatAge, type StatusSnapshot } from "../../src/state/status.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { redisForFile } from "../helpers/redis.ts";
import { queuedPayload } from "../helpers/webhooks.ts";

const shared = redisForFile();
const EVIL = `<script>alert("x")</script>&'`;
const NOW = Date.UTC(2026, 10, 23, 12, 0, 0);

function snapshot(over: Partial<StatusSnapshot> = {}): StatusSnapshot {
  return {
    generatedAt: NOW,
    pools: [{ name: "default", labels: ["self-hosted", EVIL], image: `img:${EVIL}`, isolation: "privileged", scope: "repository", pending: 3, runners: countStates([{ state: "busy" }]) }],
    hosts: [{ id: `host-${EVIL}`, runners: countStates([{ state: "busy" }]), pools: ["default"], oldestCreatedAt: NOW - 65_000 }],
    runners: [{ name: `jitrunner-${EVIL}`, pool: "default", host: "h1", state: "busy", createdAt: NOW - 65_000, ageSeconds: 65, scope: "acme/app", jobId: 5 }],
    jobs: [{ jobId: 9, runAttempt: 2, repo: `acme/${EVIL}`, name: EVIL, workflow: "CI", labels: ["self-hosted"], outcome: "runner_completed", lastAt: NOW - 5000, conclusion: "failure", runner: "r1", pool: "default" }],
    failures: [{ at: NOW - 1000, pool: "default", jobId: 9, repo: "acme/app", attempt: 1, reason: "E_GITHUB", message: EVIL, retryable: false }],
    problems: [`redis: ${EVIL}`],
    ...over,
  };
}

test("html escapes every interpolated value, nested lists included; fragments stay markup", () => {
  assert.equal(escapeHtml(EVIL), "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;");
  const inner = html`<b>${EVIL}</b>`;
  assert.equal(html`<p title="${EVIL}">${[inner, EVIL, [EVIL]]}${undefined}${null}${false}${0}</p>`.value,
    `<p title="${escapeHtml(EVIL)}"><b>${escapeHtml(EVIL)}</b>${escapeHtml(EVIL)}${escapeHtml(EVIL)}0</p>`);
});

test("the page carries every value escaped and no script anywhere", () => {
  const page = renderStatusPage(snapshot());
  assert.ok(!page.includes("<script"), "no script element, not even from values");
  assert.ok(!page.includes(EVIL));
  assert.equal(page.split(escapeHtml(EVIL)).length - 1 >= 8, true, "each hostile value shown, escaped");
  for (const text of ["Pools", "Hosts", "Runners", "Recent jobs", "Recent launch failures", "completed: failure", "(attempt 2)", "1m 05s", "(final)"]) {
    assert.ok(page.includes(escapeHtml(text)), `page has ${text}`);
  }
  assert.match(page, /<meta http-equiv="refresh" content="15">/);
  assert.match(page, /<th>Runners<\/th><th>Pools served<\/th>/, "the hosts' pools are those their workers serve");
});

test("the CSP admits exactly the page's own stylesheet", () => {
  const page = renderStatusPage(snapshot());
  const style = /<style>([\s\S]*?)<\/style>/.exec(page)![1]!;
  const hash = createHash("sha256").update(style).digest("base64");
  assert.ok(CONTENT_SECURITY_POLICY.includes(`'sha256-${hash}'`));
  assert.match(CONTENT_SECURITY_POLICY, /default-src 'none'/);
  assert.doesNotMatch(CONTENT_SECURITY_POLICY, /unsafe-inline|script-src/);
});

test("empty sections say so instead of showing empty tables", () => {
  const page = renderStatusPage(snapshot({ runners: [], hosts: [], jobs: [], failures: [], problems: [] }));
  for (const text of ["No runners.", "No jobs seen yet.", "No launch failures recorded."]) assert.ok(page.includes(text), text);
  assert.ok(!page.includes('role="alert"'));
});

test("the bearer check accepts exactly the token", () => {
  const token = new Secret("s3cret-token-0123456789");
  assert.equal(bearerMatches("Bearer s3cret-token-0123456789", token), true);
  assert.equal(bearerMatches("bearer s3cret-token-0123456789", token), true);
  for (const bad of [undefined, "", "Bearer", "Bearer ", "Bearer s3cret-token-012345678", "Bearer s3cret-token-0123456789x", "Basic s3cret-token-0123456789", "s3cret-token-0123456789"]) {
    assert.equal(bearerMatches(bad, token), false, String(bad));
  }
  // An empty header never matches, even an (impossible) empty token.
  assert.equal(bearerMatches("Bearer ", new Secret("")), false);
});

test("job events fold into one row per job attempt; completed is terminal", () => {
  const ev = (at: number, jobId: number, action: string, outcome: string, extra: Partial<JobEvent> = {}): JobEvent => ({
    at, jobId, runAttempt: 1, repo: "acme/app", labels: ["self-hosted"], action, outcome, ...extra,
  });
  const events = [
    ev(5, 1, "in_progress", "runner_busy", { runner: "r1" }), // late, after completed
    ev(4, 1, "completed", "runner_completed", { runner: "r1", conclusion: "success" }),
    ev(3, 2, "queued", "queued"),
    ev(2, 3, "waiting", "demand_cancelled"), // held for an approval: its demand dropped until then
    ev(1, 3, "queued", "queued"),
    ev(1, 1, "queued", "queued"),
    // Approved, its `queued` handled before the `waiting` GitHub sent first: the demand was kept.
    ev(0.3, 4, "waiting", "demand_kept"),
    ev(0.2, 4, "queued", "duplicate"),
    ev(0.1, 4, "queued", "queued"),
  ];
  const rows = summarizeJobs(events);
  assert.deepEqual(rows.map((r) => [r.jobId, r.outcome, r.conclusion, r.queuedAt, r.startedAt, r.completedAt]), [
    [1, "runner_completed", "success", 1, 5, 4],
    [2, "queued", undefined, 3, undefined, undefined],
    [3, "awaiting_approval", undefined, 1, undefined, undefined],
    [4, "demand_kept", undefined, 0.1, undefined, undefined],
  ]);
  assert.equal(describeOutcome("demand_kept"), "approved: waiting for a runner");
  assert.equal(describeOutcome("awaiting_approval"), "waiting for an approval");
  assert.equal(describeOutcome("runner_completed", "success"), "completed: success");
  assert.equal(describeOutcome("ignored_public_repo"), "ignored: public repo");
});

test("the snapshot derives hosts and counts from runner records and matches jobs to pools", async () => {
  // The real runner store and activity log on Redis, written as workers and the ingress write them.
  const prefix = `${shared.redis.prefix}-snapshot`;
  const runners = new RunnerStore(shared.conn, prefix);
  const activity = new ActivityLog(shared.conn, prefix, { keepJobs: 5, keepFailures: 3 });
  const rec = (name: string, host: string, pool: string, state: RunnerRecord["state"], createdAt: number): RunnerRecord => ({
    name, host, pool, state, createdAt, installationId: 1, owner: "acme", repo: "", demandId: name,
  });
  for (const r of [rec("r1", "h2", "small", "busy", NOW - 10_000), rec("r2", "h1", "big", "starting", NOW - 3000), rec("r3", "h2", "small", "idle", NOW - 20_000)]) await runners.put(r);
  await activity.delivery({ event: "workflow_job", payload: queuedPayload({ jobId: 1, labels: ["Linux", "BIG"] }), receivedAt: NOW }, "queued");
  const s = await collectStatus({
    pools: [
      { name: "small", labels: ["self-hosted", "linux"], image: "a", isolation: "privileged", scope: "repository" },
      { name: "big", labels: ["self-hosted", "linux", "big"], image: "b", isolation: "sysbox", scope: "organization" },
    ],
    runners,
    activity,
    now: () => NOW,
  });
  assert.deepEqual(s.problems, []);
  assert.deepEqual(s.hosts.map((h) => [h.id, h.pools, h.runners.busy, h.runners.idle, h.runners.starting, h.oldestCreatedAt]), [
    ["h1", ["big"], 0, 0, 1, NOW - 3000],
    ["h2", ["small"], 1, 1, 0, NOW - 20_000],
  ]);
  assert.deepEqual(s.pools.map((p) => [p.name, p.pending, p.runners.busy + p.runners.idle + p.runners.starting]), [["small", undefined, 2], ["big", undefined, 1]]);
  assert.equal(s.runners[0]!.name, "r3", "oldest first");
  assert.equal(s.runners.find((r) => r.name === "r1")!.ageSeconds, 10);
  assert.equal(s.runners[0]!.scope, "acme", "organization runners show their owner");
  assert.equal(s.jobs[0]!.pool, "big");
});

test("terminal output cannot carry escape sequences", () => {
  assert.equal(cell("a\u001b[2Jb\r\nc\u009b"), "a?[2Jb??c?");
  assert.equal(cell("x".repeat(100)).length, 60);
  const text = renderStatusText(snapshot({ jobs: [{ ...snapshot().jobs[0]!, name: "evil\u001b]0;title\u0007" }] }));
  // eslint-disable-next-line no-control-regex
  assert.doesNotMatch(text, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
  for (const text2 of ["POOLS", "HOSTS", "RUNNERS", "RECENT JOBS", "RECENT LAUNCH FAILURES", "PROBLEMS", "completed: failure", "1 (final)"]) assert.ok(text.includes(text2), text2);
});

test("ages read well; error messages lose anything token-like", () => {
  assert.deepEqual([5, 65, 3600 + 120, 2 * 86400 + 3 * 3600].map(formatAge), ["5s", "1m 05s", "1h 02m", "2d 3h"]);
  assert.equal(redact("401 Bearer abc.def"), "401 Bearer [redacted]");
  assert.equal(redact("token=abc123 failed"), "token=[redacted] failed");
  assert.equal(redact(`config ${"A".repeat(50)} rejected`), "config [redacted] rejected");
  assert.equal(redact("HTTP 502 Bad Gateway"), "HTTP 502 Bad Gateway");
  // What names the failing thing is kept: a container id, an image's path.
  const id = "0123456789abcdef".repeat(4);
  assert.equal(redact(`No such container: ${id}`), `No such container: ${id}`);
  assert.equal(redact("pull access denied for acme/runners/actions-runner-with-docker-in-docker"), "pull access denied for acme/runners/actions-runner-with-docker-in-docker");
  assert.equal(redact(`ghs_${"a1b2c3".repeat(5)}Q1w2e3 refused`), "[redacted] refused");
  // GitHub's stateless installation tokens (`ghs_APPID_` and a JWT) and JWTs, whole: no part is cut off at a dot.
  assert.equal(redact("token ghs_4242_eyJhbGciOiJSUzI1NiJ9.eyJpbnMiOjd9.c2lnbmF0dXJl: 401"), "token [redacted]: 401");
  assert.equal(redact("as ghs_4242_eyJhbGciOiJSUzI1NiJ9.eyJpbnMiOjd9.c2lnbmF0dXJl, refused"), "as [redacted], refused");
  assert.equal(redact("jwt eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2ln expired"), "jwt [redacted] expired");
});
