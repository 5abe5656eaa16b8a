/**
 * One retry budget for a call that needs an installation token: the token request is retried on
 * its own (it goes through the client's retrying hook like any call), and a call whose token could
 * not be minted is not tried again. Retried by both, a call against an unreachable GitHub sent 16
 * token requests over about 70 s (4 within each of the call's 4 attempts) before it failed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Secret } from "../../src/config/secret.ts";
import { GitHubError } from "../../src/errors.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testPrivateKey, WEBHOOK_SECRET } from "../helpers/config.ts";
import { githubFor, githubFailure as failure } from "../helpers/github.ts";
import { freePort } from "../helpers/ports.ts";

const TOKEN = "/app/installations/{installation_id}/access_tokens";
const RUNNERS = "/repos/{owner}/{repo}/actions/runners";
/** A call's attempts at most (the first and RETRIES in octokit-client.ts). */
const ATTEMPTS = 4;

test("a token GitHub keeps failing to mint (503): one call sends at most its attempts' worth of token requests, and never itself", { timeout: 60_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const gh = githubFor(fake);
  try {
    fake.inject({ route: TOKEN, status: 503, times: 100 });
    const began = Date.now();
    const err = await failure(gh.listRunners({ installationId: fake.installationId, owner: "acme", repo: "app" }));
    const tookMs = Date.now() - began;
    assert.match(err.message, /^list runners failed: installation token \(503\): /);
    const tokens = fake.requests.filter((r) => r.route === TOKEN).map((r) => r.status);
    assert.deepEqual(tokens, Array<number>(ATTEMPTS).fill(503), "the mint's own 4 attempts (16 when the call retried each)");
    assert.equal(fake.requests.filter((r) => r.route === RUNNERS).length, 0, "the call itself never sent");
    // The mint's backoff (1 + 4 + 9 s), not the call's on top of four of them (about 70 s).
    assert.ok(tookMs < 20_000, `failed after ${tookMs} ms`);
  } finally {
    gh.close();
    await fake.close();
  }
});

test("a token mint that fails twice and then succeeds: the call goes on, sent once", { timeout: 60_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const gh = githubFor(fake);
  try {
    fake.inject({ route: TOKEN, status: 502, times: 2 });
    assert.deepEqual(await gh.listRunners({ installationId: fake.installationId, owner: "acme", repo: "app" }), []);
    assert.deepEqual(fake.requests.filter((r) => r.route === TOKEN).map((r) => r.status), [502, 502, 201], "the mint retried by itself");
    assert.deepEqual(fake.requests.filter((r) => r.route === RUNNERS).map((r) => r.status), [200]);
  } finally {
    gh.close();
    await fake.close();
  }
});

test("GitHub unreachable (a closed loopback port): one call sends at most its attempts' worth of token requests", { timeout: 60_000 }, async () => {
  const port = await freePort();
  const metrics = new Metrics({ processMetrics: false });
  const gh = new OctokitGitHub({ appId: 1, privateKey: new Secret(testPrivateKey()), apiUrl: `http://127.0.0.1:${port}`, logger: createLogger("silent"), metrics });
  try {
    const err = await failure(gh.listRuns(7, "acme", "app", "queued"));
    assert.match(err.message, /^list runs failed: installation token: cannot reach GitHub at /);
    const text = await metrics.render();
    const sent = (route: string) =>
      text
        .split("\n")
        .filter((l) => l.startsWith(`jitrunner_github_requests_total{route="${route}",`))
        .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
    assert.equal(sent(TOKEN), ATTEMPTS, "token requests (16 when the call retried each)");
    assert.equal(sent("/repos/{owner}/{repo}/actions/runs"), 0, "the call itself never sent");
  } finally {
    gh.close();
  }
});
