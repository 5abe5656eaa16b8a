/**
 * The real GitHub client pointed at a loopback port where nothing listens: a call that gets no
 * answer says it could not reach GitHub, and where, and is counted in
 * jitrunner_github_requests_total as status "0" (no response), never as the 500 octokit gives
 * such a failure, which would read as GitHub failing. Installation-token requests alike.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { Secret } from "../../src/config/secret.ts";
import { GitHubError, NotSentError } from "../../src/errors.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { testPrivateKey } from "../helpers/config.ts";
import { githubFailure as failure } from "../helpers/github.ts";
import { freePort } from "../helpers/ports.ts";

function statuses(text: string, route: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^jitrunner_github_requests_total\{route="([^"]+)",status="([^"]+)"\} (\d+)$/.exec(line);
    if (m && m[1] === route) out[m[2]!] = Number(m[3]);
  }
  return out;
}

test("GitHub unreachable: 'cannot reach GitHub at <apiUrl>', no HTTP status, counted as status 0; the token request's failure too", { timeout: 60_000 }, async () => {
  const port = await freePort();
  const apiUrl = `http://127.0.0.1:${port}`;
  const metrics = new Metrics({ processMetrics: false });
  const gh = new OctokitGitHub({ appId: 1, privateKey: new Secret(testPrivateKey()), apiUrl, logger: createLogger("silent"), metrics });
  const refused = `connect ECONNREFUSED 127.0.0.1:${port}`;
  try {
    // An App call (no installation token): the caller gives up during the first backoff.
    const app = await failure(gh.listHookDeliveries({ signal: AbortSignal.timeout(300) }));
    assert.equal(app.message, `list hook deliveries failed: cannot reach GitHub at ${apiUrl}: ${refused}`);
    assert.equal(app.status, undefined, "no HTTP status: GitHub never answered");
    assert.equal(app.retryable, true);

    // An installation's call: its token cannot be minted (the token request is retried, 14 s, then
    // fails). A caller that gives up meanwhile is let go at once, and told it was never sent.
    const settled: string[] = [];
    const givenUp = gh.listRuns(7, "acme", "app", "queued", { signal: AbortSignal.timeout(300) }).catch((err: unknown) => (settled.push("given up"), err));
    const waited = failure(gh.listRuns(7, "acme", "app", "queued")).finally(() => settled.push("failed"));
    // The token request's tries last 14 s: the caller that gave up is not held for them.
    await sleep(3000);
    assert.deepEqual(settled, ["given up"], "3 s on, only the caller that gave up has its answer");
    const early = await givenUp;
    assert.ok(early instanceof NotSentError, String(early));
    const runs = await waited;
    assert.equal(runs.message, `list runs failed: installation token: cannot reach GitHub at ${apiUrl}: ${refused}`);

    const text = await metrics.render();
    assert.deepEqual(statuses(text, "/app/hook/deliveries"), { "0": 1 });
    const token = statuses(text, "/app/installations/{installation_id}/access_tokens");
    assert.deepEqual(Object.keys(token), ["0"], `token requests counted as no response: ${JSON.stringify(token)}`);
    assert.doesNotMatch(text, /jitrunner_github_requests_total\{[^}]*status="500"\}/);
  } finally {
    gh.close();
  }
});
