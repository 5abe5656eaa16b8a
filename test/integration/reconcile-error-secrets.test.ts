/**
 * The leader's GitHub loops put GitHub's words in what they say when a pass fails: each failed
 * call's message, one per repository, run, scope or delivery, then the pass's error. GitHub's
 * answers are not ours to trust: one that carried an installation token, a JIT config or an App
 * JWT must not bring it into the log, /metrics or the status page. Real composition root (`all`:
 * server, worker, leader), the fake GitHub answering the loops' calls with such words, a real Redis.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHubClient } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";
import { fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const RUN_JOBS = "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs";
const RUNNERS = "/repos/{owner}/{repo}/actions/runners";
const ATTEMPTS = "/app/hook/deliveries/{delivery_id}/attempts";
const LOOP_FAILED = "reconcile loop failed; retrying every interval, counted in jitrunner_reconcile_runs_total";
const DOCS = "https://docs.github.com/rest";

const { redis, hosts } = workersForFile();

interface Line {
  level: number;
  msg: string;
  loop?: string;
  err?: string;
}

function lines(logs: string): Line[] {
  return logs
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Line);
}

test("GitHub's answers that carry an installation token, a JIT config or an App JWT: the loops' failures say what failed, and none of it reaches the log, /metrics or the status page", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("errsecrets");
  hosts.push(host);
  // An installation token in GitHub's other format (minted here first: the fake alternates), a
  // JIT config and an App JWT, for GitHub's words to carry.
  const client = new FakeGitHubClient(fake);
  const other = await client.installationToken();
  const jit = await client.call("POST", "/repos/acme/app/actions/runners/generate-jitconfig", { body: { name: "someone-elses", runner_group_id: 1, labels: ["self-hosted"] } });
  assert.equal(jit.status, 201);
  const jitConfig = (jit.body as { encoded_jit_config: string }).encoded_jit_config;
  const jwt = await client.appJwt();
  // A webhook GitHub could not deliver two minutes ago: the deliveries loop asks for it again as
  // soon as it runs, and GitHub refuses with words that are a bare string (octokit then makes the
  // whole body the error's message).
  fake.addPastDelivery({ owner: "acme", repo: "lost", labels: ["self-hosted", "linux"], status: 0, deliveredAt: Date.now() - 120_000 });
  fake.inject({ route: ATTEMPTS, method: "POST", status: 422, times: 1000, body: `jit_config ${jitConfig} for token ${other} refused` });
  // The worker serves only `spare`: the job below stays queued, its repository active, and no runner starts.
  const sys = await startSystem("all", fake, scopedRedis(redis, "errsecrets"), host, {
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, pools: ["spare"] },
    pools: [fakeRunnerPool(fake), fakeRunnerPool(fake, { name: "spare", labels: ["spare-only"] })],
    reconcile: { leaderLockSeconds: 2, runnersIntervalSeconds: 1, queuedIntervalSeconds: 1, deliveriesIntervalSeconds: 1 },
  });
  try {
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    // The installation token jitrunner holds: minted for its first call on acme/app.
    const held = await waitFor(() => fake.issuedSecrets().find((s) => s.startsWith("ghs_") && s !== other), 30_000, "jitrunner's installation token");
    assert.ok([held, other].some((t) => t.includes(".")) && [held, other].some((t) => !t.includes(".")), "a token of each format");

    // GitHub's words with them in, in GitHub's error shape.
    fake.inject({ route: RUN_JOBS, method: "GET", status: 400, times: 1000, body: { message: `Bad request for token ${held} (${other})`, documentation_url: DOCS } });
    fake.inject({ route: RUNNERS, method: "GET", status: 400, times: 1000, body: { message: `Bad request: Authorization: Bearer ${jwt}; token ${other}`, documentation_url: DOCS } });

    const failed = await waitFor(
      () => {
        const said = lines(sys.logs()).filter((l) => l.msg === LOOP_FAILED);
        const byLoop = new Map(said.map((l) => [l.loop, l]));
        return ["github-queued", "github-runners", "github-deliveries"].every((loop) => byLoop.has(loop)) && byLoop;
      },
      60_000,
      "each GitHub loop's failure said",
    );
    // Each says what failed, with GitHub's words, the secrets in them hidden.
    assert.match(failed.get("github-queued")?.err ?? "", /^checking queued jobs failed \d+ times \(\d+ repositories\); first: acme\/\w+ run \d+: .*\(400\): Bad request for token \[redacted\] \(\[redacted\]\)$/);
    assert.match(failed.get("github-runners")?.err ?? "", /^checking runners failed \d+ times \(\d+ scopes\); first: acme\/\w+: .*\(400\): Bad request: Authorization: \[redacted\] \[redacted\] token \[redacted\]$/);
    assert.match(failed.get("github-deliveries")?.err ?? "", /^1 of 1 redelivery requests failed; first: [\w-]+: .*\(422\): jit_config \[redacted\] for token \[redacted\] refused$/);
    const refusedSaid = lines(sys.logs()).find((l) => l.msg === "GitHub refused to redeliver a failed workflow_job delivery; passed over");
    assert.match(refusedSaid?.err ?? "", /\(422\): jit_config \[redacted\] for token \[redacted\] refused$/);

    // Nothing of any secret anywhere: the log, /metrics, the status page.
    const logs = sys.logs();
    const checked = await assertNoSecrets(fake, { logs, sys });
    assert.ok(checked.tokens >= 2 && checked.jitConfigs >= 1, "the tokens and the JIT config were looked for");
    const [, , signature = ""] = jwt.split(".");
    assert.ok(signature.length > 100);
    assert.equal(logs.includes(jwt) || logs.includes(signature), false, "the App JWT in the log");
  } finally {
    await sys.close();
    await fake.close();
  }
});
