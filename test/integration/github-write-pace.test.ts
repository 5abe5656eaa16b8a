/**
 * The GitHub client's write budget against the fake GitHub over HTTP (src/github/write-window.ts):
 * JIT configs asked for all at once (a burst of demand) reach GitHub at once while the budget has
 * room, and never more than the budget in any window when it has not; every one is served. Two
 * clients on one Redis (two workers of a fleet) share one budget, and one wait GitHub asked for.
 * A registration goes ahead of the runner deletions waiting, and deletions, of any process, leave
 * the window's last quarter to registrations.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { Redis } from "ioredis";
import { pino } from "pino";
import { Secret } from "../../src/config/secret.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";

const REPO_JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const REPO_RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
/**
 * The budget spaces the starts of writes; their arrival at GitHub varies by some ms each way (more
 * on a loaded machine), so spans are checked with this much slack.
 */
const SLACK_MS = 200;

let fake: FakeGitHub | undefined;
let redis: TestRedis | undefined;
const connections: Redis[] = [];
after(async () => {
  await fake?.close();
  for (const c of connections) c.disconnect();
  await redis?.stop();
});

/**
 * Asks for `n` JIT configs at once; returns the times their POSTs reached the fake, in order.
 * `holdMs`: the fake holds each of the burst's answers this long.
 */
async function burst(gh: OctokitGitHub, tag: string, n: number, holdMs?: number): Promise<number[]> {
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  // First a lone write, so the installation token is there: the burst's writes wait for nothing else.
  await gh.generateJitConfig(scope, { name: `jr-${tag}-warm`, labels: ["self-hosted"] });
  if (holdMs) fake!.inject({ route: REPO_JIT, delayMs: holdMs, times: n });
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

/** A client; with `shared` (a Redis key prefix), on a Redis connection of its own, as a process of a fleet. */
function client(writes?: { max: number; windowMs: number }, shared?: string, metrics = new Metrics({ processMetrics: false })): OctokitGitHub {
  let conn: Redis | undefined;
  if (shared) connections.push((conn = redisConnection(redis!.url)));
  return new OctokitGitHub({
    appId: fake!.appId,
    privateKey: new Secret(fake!.privateKey),
    apiUrl: fake!.url,
    logger: pino({ level: "silent" }),
    metrics,
    writes,
    redis: conn,
    redisPrefix: shared,
  });
}

/** Every pair of POSTs `max` apart in `posts` (sorted) at least a window apart (less `slackMs`). */
function assertWithinBudget(posts: number[], max: number, windowMs: number, slackMs = SLACK_MS): void {
  const offsets = posts.map((t) => t - posts[0]!).join(", ");
  for (let i = max; i < posts.length; i++) {
    assert.ok(posts[i]! - posts[i - max]! >= windowMs - slackMs, `POST ${i} a window after POST ${i - max}: ${offsets} ms`);
  }
}

/** The times the writes (JIT configs, runner deletions) that reached the fake after request `since` arrived, in order. */
function writesSince(since: number, route?: string): number[] {
  return fake!.requests
    .slice(since)
    .filter((r) => (r.route === REPO_JIT && r.method === "POST") || (r.route === REPO_RUNNER && r.method === "DELETE"))
    .filter((r) => route === undefined || r.route === route)
    .map((r) => r.at)
    .sort((a, b) => a - b);
}

/**
 * "At once" for a write that a full window would hold back: far under the 5 s windows below (the
 * write waited a window or two behind deletions before), and over a busy machine's delays.
 */
const AT_ONCE_MS = 1500;

for (const shared of [false, true]) {
  test(`a registration asked for behind a dozen runner deletions goes ahead of them, and they all go on within the budget (${shared ? "shared through Redis" : "in this process"})`, async () => {
    fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
    if (shared) redis ??= await startRedis();
    const max = 5;
    const windowMs = 5000;
    const gh = client({ max, windowMs }, shared ? `${redis!.prefix}-ahead` : undefined);
    const scope = { installationId: 1, owner: "acme", repo: "app" };
    // A read first, for the installation token: the window is still empty.
    await gh.listRunners(scope);
    const before = fake.requests.length;
    // A dozen deletions at once (warm runners retired, a drain), runners GitHub no longer has.
    const deletions = Array.from({ length: 12 }, (_, i) => gh.deleteRunner(scope, 900_000 + i));
    await waitFor(() => writesSince(before).length > 0, 5_000, "the first deletion");
    const t0 = Date.now();
    await gh.generateJitConfig(scope, { name: `jr-ahead-${shared}`, labels: ["self-hosted"] });
    const [post] = writesSince(before, REPO_JIT);
    assert.ok(post !== undefined && post - t0 < AT_ONCE_MS, `the registration reached GitHub ${post! - t0} ms after it was asked for`);
    assert.ok(writesSince(before, REPO_RUNNER).filter((at) => at <= post!).length <= max - 1, "the deletions left it a start in the window");
    assert.deepEqual(await Promise.all(deletions), Array(12).fill("not_found"), "every deletion sent and answered");
    const writes = writesSince(before);
    assert.equal(writes.length, 13, "every write once");
    // Five writes started together arrive over a while on a loaded machine (254 ms with two DinD
    // test files beside this one; 494 ms in a full run beside other work), the next five closer:
    // a fifth of the window's slack. A write over the budget would come a whole window early.
    assertWithinBudget(writes, max, windowMs, windowMs / 5);
    gh.close();
  });
}

test("deletions of one process leave the last quarter of the shared window: another process's registration starts at once", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  redis ??= await startRedis();
  const max = 5;
  const windowMs = 5000;
  const prefix = `${redis.prefix}-shared-reserve`;
  const [a, b] = [client({ max, windowMs }, prefix), client({ max, windowMs }, prefix)];
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  await a.listRunners(scope);
  await b.listRunners(scope);
  const before = fake.requests.length;
  const deletions = Array.from({ length: 12 }, (_, i) => a.deleteRunner(scope, 910_000 + i));
  // a's deletions take their part of the window, 4 of its 5 starts, and wait for the rest.
  await waitFor(() => writesSince(before).length >= max - 1, 5_000, "the deletions' part of the window");
  await new Promise((res) => setTimeout(res, 300));
  assert.equal(writesSince(before).length, max - 1, "no deletion takes the window's last start");
  const t0 = Date.now();
  await b.generateJitConfig(scope, { name: "jr-reserve-b", labels: ["self-hosted"] });
  const [post] = writesSince(before, REPO_JIT);
  assert.ok(post !== undefined && post - t0 < AT_ONCE_MS, `the other process's registration reached GitHub ${post! - t0} ms after it was asked for`);
  assert.deepEqual(await Promise.all(deletions), Array(12).fill("not_found"), "every deletion sent and answered");
  const writes = writesSince(before);
  assert.equal(writes.length, 13, "every write once");
  assertWithinBudget(writes, max, windowMs);
  a.close();
  b.close();
});

test("a burst of JIT configs within the default budget reaches GitHub at once", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  // The fake holds every answer of the burst: the first goes out HOLD_MS after its POST arrived.
  // Writes sent one after another, or paced, would send the next only after an answer (or a
  // window) had come; sent at once, every POST is in before the first answer goes out.
  const HOLD_MS = 5_000;
  const posts = await burst(client(), "at-once", 10, HOLD_MS);
  const firstAnswer = posts[0]! + HOLD_MS;
  assert.ok(posts.every((at) => at < firstAnswer), `every POST arrived before the first answer went out (${HOLD_MS} ms after the first POST): ${posts.map((t) => t - posts[0]!).join(", ")} ms`);
});

test("beyond the budget, writes wait: never more than the budget in any window", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const windowMs = 1500;
  // The lone write that fetches the token takes the first place of the window.
  const posts = await burst(client({ max: 2, windowMs }), "paced", 5);
  // Starts: 0 (the lone write), 0, 1.5 s, 1.5 s, 3 s, 3 s.
  assertWithinBudget(posts, 2, windowMs);
  assert.ok(posts.at(-1)! - posts[0]! >= 2 * windowMs - SLACK_MS, `the fifth write in the third window: ${posts.map((t) => t - posts[0]!).join(", ")} ms`);
});

test("two processes on one Redis share one budget: never more than it in any window across both", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  redis ??= await startRedis();
  const windowMs = 1500;
  const prefix = `${redis.prefix}-shared-budget`;
  const [a, b] = [client({ max: 2, windowMs }, prefix), client({ max: 2, windowMs }, prefix)];
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  const before = fake.requests.length;
  // A lone write each (their tokens), then a burst of 3 each at once: 8 writes, 2 a window
  // between the two processes, not 2 each.
  await a.generateJitConfig(scope, { name: "jr-shared-a", labels: ["self-hosted"] });
  await b.generateJitConfig(scope, { name: "jr-shared-b", labels: ["self-hosted"] });
  const names = [0, 1, 2].flatMap((i) => [`jr-shared-a${i}`, `jr-shared-b${i}`]);
  const runners = await Promise.all(names.map((name, i) => (i % 2 ? b : a).generateJitConfig(scope, { name, labels: ["self-hosted"] })));
  assert.equal(new Set(runners.map((r) => r.runnerId)).size, 6, "a registration each");
  const posts = fake.requests.slice(before).filter((r) => r.route === REPO_JIT).map((r) => r.at).sort((x, y) => x - y);
  assert.equal(posts.length, 8, "every write once");
  assertWithinBudget(posts, 2, windowMs);
  assert.ok(posts.at(-1)! - posts[0]! >= 3 * windowMs - SLACK_MS, `the last two writes in the fourth window: ${posts.map((t) => t - posts[0]!).join(", ")} ms`);
});

test("a wait GitHub asked of one process holds the other's writes too", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  redis ??= await startRedis();
  const prefix = `${redis.prefix}-shared-wait`;
  const [a, b] = [client(undefined, prefix), client(undefined, prefix)];
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  // Their tokens first, so that only the writes below wait.
  await a.generateJitConfig(scope, { name: "jr-wait-a0", labels: ["self-hosted"] });
  await b.generateJitConfig(scope, { name: "jr-wait-b0", labels: ["self-hosted"] });
  const before = fake.requests.length;
  fake.inject({ route: REPO_JIT, status: 429, times: 1, headers: { "retry-after": "2" } });
  const first = a.generateJitConfig(scope, { name: "jr-wait-a1", labels: ["self-hosted"] });
  const refused = await waitFor(() => fake!.requests.slice(before).find((r) => r.status === 429), 10_000, "the 429");
  await new Promise((res) => setTimeout(res, 200));
  const second = await b.generateJitConfig(scope, { name: "jr-wait-b1", labels: ["self-hosted"] });
  await first;
  const post = fake.requests.slice(before).find((r) => r.route === REPO_JIT && r.status === 201 && r.at > refused.at);
  assert.ok(second.runnerId > 0);
  assert.ok(post && post.at - refused.at >= 2000 - SLACK_MS, `no write within the 2 s GitHub asked of the other process: ${post ? post.at - refused.at : "none"} ms`);
});

test("a JIT config whose caller stops while it waits for the shared budget fails at once, is never sent, and its client closed leaves its start to the next", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  redis ??= await startRedis();
  // Long enough that "at once" and "in the second window" stay apart on a loaded machine.
  const windowMs = 5000;
  const prefix = `${redis.prefix}-shared-stop`;
  const [a, b] = [client({ max: 1, windowMs }, prefix), client({ max: 1, windowMs }, prefix)];
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  await a.generateJitConfig(scope, { name: "jr-stop-a0", labels: ["self-hosted"] });
  const before = fake.requests.length;
  // Both wait for the next window; a's caller stops before it comes.
  const stop = new AbortController();
  const t0 = Date.now();
  const givenUp = a.generateJitConfig(scope, { name: "jr-stop-a1", labels: ["self-hosted"] }, { signal: stop.signal });
  const next = b.generateJitConfig(scope, { name: "jr-stop-b1", labels: ["self-hosted"] });
  await new Promise((res) => setTimeout(res, 200));
  stop.abort();
  await assert.rejects(givenUp, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");
  assert.ok(Date.now() - t0 < windowMs - SLACK_MS, "given up at once, not when the window had room");
  // The stopping process closes its client: the write it gave up leaves the line.
  a.close();
  await next;
  // b's write took the start a's would have: one window after the first write, not two.
  const posts = fake.requests.slice(before).filter((r) => r.route === REPO_JIT);
  assert.deepEqual(
    posts.map((r) => r.status),
    [201],
    "only b's write reached GitHub",
  );
  assert.ok(posts[0]!.at - t0 < 2 * windowMs - SLACK_MS, `b's write in the second window: ${posts[0]!.at - t0} ms`);
  assert.ok(!fake.runners().some((r) => r.name === "jr-stop-a1"), "no registration for the write given up");
});

test("a JIT config given up while it waits is not sent when its turn comes either, nor counted as an answer", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const windowMs = 1000;
  const metrics = new Metrics({ processMetrics: false });
  const gh = client({ max: 1, windowMs }, undefined, metrics);
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  await gh.generateJitConfig(scope, { name: "jr-late-0", labels: ["self-hosted"] });
  const before = fake.requests.length;
  const stop = new AbortController();
  const givenUp = gh.generateJitConfig(scope, { name: "jr-late-1", labels: ["self-hosted"] }, { signal: stop.signal });
  stop.abort();
  await assert.rejects(givenUp, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");
  // The client is not closed: the write keeps its place in the window until its turn, then stops.
  await new Promise((res) => setTimeout(res, windowMs + SLACK_MS));
  assert.equal(fake.requests.slice(before).filter((r) => r.route === REPO_JIT).length, 0, "never sent");
  const counted = (await metrics.render()).split("\n").filter((l) => l.startsWith("jitrunner_github_requests_total") && l.includes("generate-jitconfig"));
  assert.deepEqual(counted.map((l) => l.replace(/^.*status="(\d+)".*$/, "$1")), ["201"], counted.join("\n"));
  gh.close();
});

test("a JIT config refused with a wait (429) is given up at once by a caller that stops, during the wait or while the refused attempt was out; the wait still holds the other writes", async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  const jitStatuses = (since: number) => fake!.requests.slice(since).filter((r) => r.route === REPO_JIT).map((r) => r.status);
  const refused = { route: REPO_JIT, status: 429, times: 1, headers: { "retry-after": "30" } };
  // Not a speed bound: far enough under GitHub's 30 s wait that a caller held for it fails, and
  // far enough over "at once" that a busy machine does not.
  const GIVEN_UP_WITHIN_MS = 10_000;

  // Stopped during GitHub's wait: given up at once, not after the 30 s.
  const gh = client();
  await gh.generateJitConfig(scope, { name: "jr-wait-0", labels: ["self-hosted"] });
  let before = fake.requests.length;
  fake.inject(refused);
  const stop = new AbortController();
  const duringWait = gh.generateJitConfig(scope, { name: "jr-wait-1", labels: ["self-hosted"] }, { signal: stop.signal });
  await waitFor(() => jitStatuses(before).includes(429), 5_000, "the refusal");
  let t0 = Date.now();
  stop.abort();
  await assert.rejects(duringWait, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");
  assert.ok(Date.now() - t0 < GIVEN_UP_WITHIN_MS, `given up ${Date.now() - t0} ms after the stop, not after GitHub's 30 s`);
  // The wait GitHub asked for still holds the installation's other writes.
  const held = gh.generateJitConfig(scope, { name: "jr-wait-2", labels: ["self-hosted"] });
  await new Promise((res) => setTimeout(res, 1_000));
  assert.deepEqual(jitStatuses(before), [429], "nothing sent during the wait");
  gh.close();
  await assert.rejects(held, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");

  // Stopped while the attempt that GitHub refuses is out: given up when the refusal comes.
  const gh2 = client();
  await gh2.generateJitConfig(scope, { name: "jr-wait-3", labels: ["self-hosted"] });
  before = fake.requests.length;
  fake.inject({ ...refused, delayMs: 800 });
  const stop2 = new AbortController();
  const inFlight = gh2.generateJitConfig(scope, { name: "jr-wait-4", labels: ["self-hosted"] }, { signal: stop2.signal });
  await new Promise((res) => setTimeout(res, 300));
  t0 = Date.now();
  stop2.abort();
  await assert.rejects(inFlight, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");
  assert.ok(Date.now() - t0 < GIVEN_UP_WITHIN_MS, `given up ${Date.now() - t0} ms after the stop, not after GitHub's 30 s`);
  assert.deepEqual(jitStatuses(before), [429], "the attempt was out and refused; no retry sent");
  gh2.close();
  assert.ok(!fake.runners().some((r) => r.name === "jr-wait-1" || r.name === "jr-wait-2" || r.name === "jr-wait-4"), "no registration for a write given up");
});

test("a JIT config whose shared budget Redis does not answer fails instead of waiting for ever, is not sent, and the next goes out once Redis answers again", { timeout: 60_000 }, async () => {
  fake ??= await FakeGitHub.start({ webhookSecret: "write-pace-secret" });
  const own = await startRedis({ own: true });
  const conn = redisConnection(own.url);
  connections.push(conn);
  const gh = new OctokitGitHub({
    appId: fake.appId,
    privateKey: new Secret(fake.privateKey),
    apiUrl: fake.url,
    logger: pino({ level: "silent" }),
    metrics: new Metrics({ processMetrics: false }),
    redis: conn,
    redisPrefix: `${own.prefix}-frozen`,
  });
  const scope = { installationId: 1, owner: "acme", repo: "app" };
  try {
    await gh.generateJitConfig(scope, { name: "jr-frozen-0", labels: ["self-hosted"] });
    const before = fake.requests.length;
    // Connected, but answering nothing: the worker's connection would queue the budget's script for ever.
    process.kill(own.pid, "SIGSTOP");
    try {
      await assert.rejects(gh.generateJitConfig(scope, { name: "jr-frozen-1", labels: ["self-hosted"] }), /redis did not answer the GitHub write budget/);
    } finally {
      process.kill(own.pid, "SIGCONT");
    }
    assert.deepEqual(fake.requests.slice(before).filter((r) => r.route === REPO_JIT), [], "the write that got no start was not sent");
    const next = await gh.generateJitConfig(scope, { name: "jr-frozen-2", labels: ["self-hosted"] });
    assert.ok(next.runnerId > 0, "registered once Redis answers");
  } finally {
    gh.close();
    await own.stop();
  }
});
