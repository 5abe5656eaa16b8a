/**
 * The pace of the GitHub client's writes against the fake GitHub over HTTP: JIT configs asked for
 * all at once (a burst of demand) reach GitHub one at a time, spaced by the write budget of one
 * installation (src/github/octokit-client.ts, WRITE_MIN_INTERVAL_MS), and every one is served.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { pino } from "pino";
import { Secret } from "../../src/config/secret.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { FakeGitHub } from "../fakes/github/index.ts";

const REPO_JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
/** The budget: one write start per 500 ms per installation. */
const WRITE_INTERVAL_MS = 500;
/**
 * The limiter spaces the starts of writes; their arrival at GitHub varies by a few ms each way
 * (more on a loaded machine), so the span of a burst is checked with this much slack.
 */
const SLACK_MS = 200;

let fake: FakeGitHub | undefined;
after(async () => {
  await fake?.close();
});

test("a burst of JIT configs for one installation goes out spaced by the write budget, and all are served", async () => {
  fake = await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const gh = new OctokitGitHub({
    appId: fake.appId,
    privateKey: new Secret(fake.privateKey),
    apiUrl: fake.url,
    logger: pino({ level: "silent" }),
    metrics: new Metrics({ processMetrics: false }),
  });
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  // First a lone write, so the installation token is there: the burst's writes wait for nothing else.
  await gh.generateJitConfig(scope, { name: "jr-pace-warm", labels: ["self-hosted"] });
  const before = fake.requests.length;
  const names = Array.from({ length: 5 }, (_, i) => `jr-pace-${i}`);
  const runners = await Promise.all(names.map((name) => gh.generateJitConfig(scope, { name, labels: ["self-hosted"] })));
  assert.equal(new Set(runners.map((r) => r.runnerId)).size, names.length, "a registration each");
  assert.deepEqual(fake.runners().map((r) => r.name).sort(), ["jr-pace-warm", ...names].sort());

  const posts = fake.requests.slice(before).filter((r) => r.route === REPO_JIT).map((r) => r.at).sort((a, b) => a - b);
  assert.equal(posts.length, names.length, "one POST each: none retried");
  const span = posts.at(-1)! - posts[0]!;
  const gaps = posts.slice(1).map((at, i) => at - posts[i]!);
  assert.ok(span >= (names.length - 1) * WRITE_INTERVAL_MS - SLACK_MS, `never faster than the budget; gaps: ${gaps.join(", ")} ms`);
});
