/**
 * The GitHub client's write budget against the fake GitHub over HTTP (src/github/write-window.ts):
 * JIT configs asked for all at once (a burst of demand) reach GitHub at once while the budget has
 * room, and never more than the budget in any window when it has not; every one is served.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { pino } from "pino";
import { Secret } from "../../src/config/secret.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { FakeGitHub } from "../fakes/github/index.ts";

const REPO_JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
/**
 * The budget spaces the starts of writes; their arrival at GitHub varies by some ms each way (more
 * on a loaded machine), so spans are checked with this much slack.
 */
const SLACK_MS = 200;

let fake: FakeGitHub | undefined;
after(async () => {
  await fake?.close();
});

/** Asks for `n` JIT configs at once; returns the times their POSTs reached the fake, in order. */
async function burst(gh: OctokitGitHub, tag: string, n: number): Promise<number[]> {
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  // First a lone write, so the installation token is there: the burst's writes wait for nothing else.
  await gh.generateJitConfig(scope, { name: `jr-${tag}-warm`, labels: ["self-hosted"] });
  const before = fake!.requests.length;
  const names = Array.from({ length: n }, (_, i) => `jr-${tag}-${i}`);
  const runners = await Promise.all(names.map((name) => gh.generateJitConfig(scope, { name, labels: ["self-hosted"] })));
  assert.equal(new Set(runners.map((r) => r.runnerId)).size, n, "a registration each");
  const registered = new Set(fake!.runners().map((r) => r.name));
  assert.ok(names.every((name) => registered.has(name)), "every one registered");
  const posts = fake!.requests.slice(before).filter((r) => r.route === REPO_JIT).map((r) => r.at).sort((a, b) => a - b);
  assert.equal(posts.length, n, "one POST each: none retried");
  return posts;
}

function client(writes?: { max: number; windowMs: number }): OctokitGitHub {
  return new OctokitGitHub({
    appId: fake!.appId,
    privateKey: new Secret(fake!.privateKey),
    apiUrl: fake!.url,
    logger: pino({ level: "silent" }),
    metrics: new Metrics({ processMetrics: false }),
    writes,
  });
}

test("a burst of JIT configs within the default budget reaches GitHub at once", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const posts = await burst(client(), "at-once", 10);
  // The fake answers each in about a ms; ten one after another at any pace of writes would span
  // far more than this.
  assert.ok(posts.at(-1)! - posts[0]! < 1000 - SLACK_MS, `all within a moment: ${posts.map((t) => t - posts[0]!).join(", ")} ms`);
});

test("beyond the budget, writes wait: never more than the budget in any window", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const windowMs = 1500;
  // The lone write that fetches the token takes the first place of the window.
  const posts = await burst(client({ max: 2, windowMs }), "paced", 5);
  const offsets = posts.map((t) => t - posts[0]!).join(", ");
  // Starts: 0 (the lone write), 0, 1.5 s, 1.5 s, 3 s, 3 s.
  for (let i = 2; i < posts.length; i++) {
    assert.ok(posts[i]! - posts[i - 2]! >= windowMs - SLACK_MS, `POST ${i} a window after POST ${i - 2}: ${offsets} ms`);
  }
  assert.ok(posts.at(-1)! - posts[0]! >= 2 * windowMs - SLACK_MS, `the fifth write in the third window: ${offsets} ms`);
});
