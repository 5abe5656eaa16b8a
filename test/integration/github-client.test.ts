/**
 * The GitHub client against the fake GitHub over HTTP, with a real Redis: shared installation
 * tokens, unique App JWTs, clock skew, rate limits, retries that never repeat a 409/422, runner
 * groups by name, and a GHES base path. Nothing of ours is stubbed.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";
import { Writable } from "node:stream";
import { inspect } from "node:util";
import { createAppAuth } from "@octokit/auth-app";
import { Octokit } from "@octokit/core";
import { throttling } from "@octokit/plugin-throttling";
import { Redis } from "ioredis";
import { Secret } from "../../src/config/secret.ts";
import { GitHubError, NotSentError } from "../../src/errors.ts";
import { GitHubClock, appJwtSigner } from "../../src/github/app-jwt.ts";
import { OctokitGitHub } from "../../src/github/octokit-client.ts";
import { ConcurrencyGroup, DEFAULT_CONCURRENT_CALLS, RetryScheduler, throttleSchedulers } from "../../src/github/request-gates.ts";
import { RedisTokenCache } from "../../src/github/token-cache.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { githubFailure as failure } from "../helpers/github.ts";
import { assertNoSecrets } from "../helpers/secrets.ts";

const SECRET = "github-client-test-secret";
const TOKEN = "/app/installations/{installation_id}/access_tokens";
const REPO_JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const ORG_JIT = "/orgs/{org}/actions/runners/generate-jitconfig";
const JOB = "/repos/{owner}/{repo}/actions/jobs/{job_id}";
const RUNNERS = "/repos/{owner}/{repo}/actions/runners";
const LABELS = ["self-hosted", "Linux", "x64", "gpu-A100"];

let redis: TestRedis;
const connections: Redis[] = [];
const fakes: FakeGitHub[] = [];

before(async () => {
  redis = await startRedis();
});
after(async () => {
  for (const f of fakes) await f.close();
  for (const c of connections) c.disconnect();
  await redis.stop();
});

async function fakeGitHub(opts: Partial<Parameters<typeof FakeGitHub.start>[0]> = {}): Promise<FakeGitHub> {
  const fake = await FakeGitHub.start({ webhookSecret: SECRET, ...opts });
  fakes.push(fake);
  return fake;
}

interface Client {
  gh: OctokitGitHub;
  metrics: Metrics;
  logs: () => string;
}

function client(fake: FakeGitHub, o: { prefix?: string; apiUrl?: string; shared?: boolean; concurrentCalls?: number | undefined } = {}): Client {
  const metrics = new Metrics({ processMetrics: false });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  let conn: Redis | undefined;
  if (o.shared ?? true) {
    conn = new Redis(redis.url);
    connections.push(conn);
  }
  const gh = new OctokitGitHub({
    appId: fake.appId,
    privateKey: new Secret(fake.privateKey),
    apiUrl: o.apiUrl ?? fake.url,
    logger: createLogger("debug", sink),
    metrics,
    redis: conn,
    redisPrefix: o.prefix ?? redis.prefix,
    ...(o.concurrentCalls === undefined ? {} : { concurrentCalls: o.concurrentCalls }),
  });
  return { gh, metrics, logs: () => lines.join("") };
}

function calls(fake: FakeGitHub, route: string): number[] {
  return fake.requests.filter((r) => r.route === route).map((r) => r.status);
}

function metric(text: string, name: string, labels: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

const repo = (owner = "acme", name = "app") => ({ installationId: 1, owner, repo: name });
const org = (owner = "acme") => ({ installationId: 1, owner });

/**
 * No secret (installation token, JIT config, App key) in a client's logs nor anywhere in the
 * errors it threw: their message, stack, properties (a request's headers or body kept on one) and
 * JSON. Returns how many tokens and JIT configs the fake had issued.
 */
async function assertNoSecretsFrom(fake: FakeGitHub, logs: string, errors: Error[]): Promise<{ jitConfigs: number; tokens: number }> {
  const texts = Object.fromEntries(errors.map((e, i) => [`error ${i}`, [e.message, e.stack ?? "", inspect(e, { depth: 10 }), JSON.stringify(e)].join("\n")]));
  return assertNoSecrets(fake, { logs, texts, webhookSecret: SECRET });
}

test("the throttling plugin takes its retry limiter and its call and token groups from its options, as OctokitGitHub passes them (else its Bottleneck ones would run, silently)", async () => {
  const fake = await fakeGitHub();
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  const seen: string[] = [];
  const retryLimiter = new RetryScheduler();
  const schedule = retryLimiter.schedule.bind(retryLimiter);
  retryLimiter.schedule = ((fn, ...args) => {
    seen.push("retry");
    return schedule(fn, ...args);
  }) as typeof retryLimiter.schedule;
  const group = (name: string, max: number): ConcurrencyGroup => {
    const g = new ConcurrencyGroup(max);
    const key = g.key.bind(g);
    g.key = (id) => {
      seen.push(`${name}:${id}`);
      return key(id);
    };
    return g;
  };
  const octokit = new (Octokit.plugin(throttling))({
    baseUrl: fake.url,
    authStrategy: createAppAuth,
    auth: { appId: fake.appId, privateKey: fake.privateKey, installationId: fake.installationId },
    throttle: {
      id: "gates",
      ...throttleSchedulers({ global: group("global", 10), auth: group("auth", 1), retryLimiter }),
      onRateLimit: () => false,
      onSecondaryRateLimit: () => false,
    },
  });
  const { data } = await octokit.request("GET /repos/{owner}/{repo}/actions/jobs/{job_id}", { owner: "acme", repo: "app", job_id: job.id });
  assert.equal(data.id, job.id);
  // The installation token's request goes through the token group, the job's through the call group.
  assert.deepEqual([...new Set(seen)].sort(), ["auth:gates", "global:gates", "retry"]);
});

test("installation tokens are shared through Redis: two clients, one token request; another prefix mints its own", async () => {
  const fake = await fakeGitHub();
  const prefix = `${redis.prefix}-share`;
  const a = client(fake, { prefix });
  const b = client(fake, { prefix });
  await a.gh.listRunners(repo());
  await b.gh.listRunners(repo());
  await b.gh.listRunners(repo("acme", "other"));
  assert.deepEqual(calls(fake, TOKEN), [201], "the second client used the first one's token");

  // The token's key lives shorter than the token: it is never handed out within 5 minutes of expiry.
  const conn = new Redis(redis.url);
  connections.push(conn);
  const keys = await conn.keys(`${prefix}:github:*`);
  assert.deepEqual(keys, [`${prefix}:github:app-${fake.appId}:installation-token:1`]);
  const ttl = await conn.pttl(keys[0]!);
  assert.ok(ttl > 50 * 60_000 && ttl <= 55 * 60_000, `TTL ${ttl} ms: below the token's hour, with 5 minutes to spare`);

  const elsewhere = client(fake, { prefix: `${redis.prefix}-other` });
  await elsewhere.gh.listRunners(repo());
  assert.deepEqual(calls(fake, TOKEN), [201, 201], "a client on another prefix does not see the token");

  // Two fresh clients starting at once still mint one token between them (in one process auth-app
  // shares the pending request itself; across processes the mint lock does: next test).
  const c = client(fake, { prefix: `${redis.prefix}-burst` });
  const d = client(fake, { prefix: `${redis.prefix}-burst` });
  await Promise.all([c.gh.listRunners(repo()), d.gh.listRunners(repo())]);
  assert.deepEqual(calls(fake, TOKEN), [201, 201, 201]);
});

test("the token cache: one process mints while the others wait for its token instead of minting their own", async () => {
  const conn = new Redis(redis.url);
  connections.push(conn);
  const prefix = `${redis.prefix}-cache`;
  const minter = new RedisTokenCache(conn, prefix);
  const waiter = new RedisTokenCache(conn, prefix);
  assert.equal(await minter.get("7"), "", "a miss: this one mints");
  // Watched through MONITOR: the waiter reads the token, finds the mint lock taken, and reads the
  // token again (only its wait for another's mint reads it after trying the lock).
  // Other test files share this Redis, so MONITOR lines come at once. ioredis enters monitoring mode
  // a tick after MONITOR's OK, and takes the lines that came in the same read for replies nobody
  // asked for: it emits "Command queue state error" for each (this failed a CI run). Only errors in
  // monitoring mode would be the watch's own, and fail the test.
  const monitor = new Redis(redis.url, { monitor: true, lazyConnect: true });
  const monitorErrors: string[] = [];
  monitor.on("error", (err: Error) => {
    if ((monitor.status as string) === "monitoring") monitorErrors.push(err.message); // a status its type leaves out
  });
  const seen: string[] = [];
  monitor.on("monitor", (_time: string, args: string[]) => {
    if (args[1]?.startsWith(`${prefix}:7`)) seen.push(`${args[0]!.toLowerCase()} ${args[1]}`);
  });
  // (Not events.once: it rejects on the first "error".)
  await Promise.all([monitor.connect(), new Promise((resolve) => monitor.once("monitoring", resolve))]);
  let settled = false;
  const waiting = waiter.get("7").finally(() => (settled = true));
  try {
    await waitFor(() => {
      const locked = seen.indexOf(`set ${prefix}:7:minting`);
      return locked >= 0 && seen.slice(locked + 1).includes(`get ${prefix}:7`);
    }, 5_000, "the waiter reading the token again after finding the lock taken").catch((err: Error) => {
      throw new Error(`${err.message} (saw: ${seen.join(", ")})`);
    });
  } finally {
    monitor.disconnect();
  }
  assert.deepEqual(monitorErrors, [], "the watch itself went without errors");
  assert.equal(settled, false, "the waiter is still waiting");
  const expiresAt = new Date(Date.now() + 3600_000).toISOString();
  await minter.set("7", `ghs_x|${new Date().toISOString()}|${expiresAt}|all|actions,administration!|`);
  assert.match(await waiting, /^ghs_x\|/, "the other process got the minted token");
  assert.equal(await conn.exists(`${prefix}:7:minting`), 0, "lock released");

  await minter.set("8", `ghs_y|${new Date().toISOString()}|${new Date(Date.now() + 120_000).toISOString()}|all||`);
  assert.equal(await conn.exists(`${prefix}:8`), 0, "a token with under 5 minutes left is not shared");
  assert.equal(await new RedisTokenCache(conn, prefix).get("8"), "");

  // Minted by a host whose clock is 10 minutes ahead: read here, it is no younger than now, so
  // auth-app's retries of a 401 on a fresh token (GitHub's replication lag) end within seconds.
  const ahead = new Date(Date.now() + 600_000).toISOString();
  await conn.set(`${prefix}:9`, `ghs_z|${ahead}|${expiresAt}|all|actions!|`);
  const [token, createdAt, expires] = (await new RedisTokenCache(conn, prefix).get("9")).split("|");
  assert.equal(token, "ghs_z");
  assert.equal(expires, expiresAt, "its expiry as GitHub gave it");
  assert.ok(Date.parse(createdAt!) <= Date.now(), `createdAt ${createdAt} is not in this host's future`);
  assert.equal(await new RedisTokenCache(conn, prefix).get("7").then((v) => v.split("|")[1]! <= new Date().toISOString()), true);
});

test("App JWTs carry a unique jti: no two are alike, even signed in the same second; GitHub's times are respected", async () => {
  const fake = await fakeGitHub();
  const sign = appJwtSigner(fake.privateKey, new GitHubClock());
  const [one, two] = await Promise.all([sign(fake.appId), sign(fake.appId)]);
  assert.notEqual(one.jwt, two.jwt);
  const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as Record<string, number | string>;
  const c1 = claims(one.jwt);
  const c2 = claims(two.jwt);
  assert.notEqual(c1.jti, c2.jti);
  assert.equal(c1.iss, fake.appId);
  assert.equal(Number(c1.exp) - Number(c1.iat), 600, "10 minutes, GitHub's maximum");
  assert.ok(Math.abs(Number(c1.iat) - (Date.now() / 1000 - 30)) < 3, "issued 30 s back, for clocks a little ahead");
  const accepted = await fetch(`${fake.url}/app`, { headers: { authorization: `Bearer ${one.jwt}` } });
  assert.equal(accepted.status, 200, "GitHub accepts it");

  // What the library's built-in signer does: the same second gives byte-identical JWTs.
  while (Date.now() % 1000 > 600) await sleep(20);
  const builtIn = () => createAppAuth({ appId: fake.appId, privateKey: fake.privateKey })({ type: "app" });
  const [x, y] = await Promise.all([builtIn(), builtIn()]);
  assert.equal(x.token, y.token, "without a jti, two signers in one second collide");
});

test("a GitHub that refuses a JWT it has seen before: two processes minting tokens in the same second both succeed", async () => {
  const fake = await fakeGitHub({ rejectReusedAppJwts: true });
  // What GitHub does with a byte-identical JWT, shown with one built-in JWT presented twice.
  const { token: jwt } = await createAppAuth({ appId: fake.appId, privateKey: fake.privateKey })({ type: "app" });
  const mint = () => fetch(`${fake.url}/app/installations/1/access_tokens`, { method: "POST", headers: { authorization: `Bearer ${jwt}` } });
  assert.equal((await mint()).status, 201);
  assert.equal((await mint()).status, 404);

  // Two processes (no shared cache) each minting a token, in one second.
  const before = calls(fake, TOKEN).length;
  while (Date.now() % 1000 > 500) await sleep(20);
  await client(fake, { shared: false }).gh.listRunners(repo());
  await client(fake, { shared: false }).gh.listRunners(repo());
  assert.deepEqual(calls(fake, TOKEN).slice(before), [201, 201], "each process's JWT is its own");
});

test("clock skew: JWTs follow GitHub's clock, learned once from its Date header, so only the first is refused", async () => {
  for (const skew of [-300, 900]) {
    const fake = await fakeGitHub({ clockSkewSeconds: skew });
    // Control: the library alone retries each refused JWT but learns nothing: every mint is refused first.
    const quiet = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
    const auth = { appId: fake.appId, privateKey: fake.privateKey, installationId: 1 };
    const plain = new Octokit({ baseUrl: fake.url, authStrategy: createAppAuth, auth, log: quiet });
    await plain.auth({ type: "installation", refresh: true });
    await plain.auth({ type: "installation", refresh: true });
    assert.deepEqual(calls(fake, TOKEN), [401, 201, 401, 201]);

    const c = client(fake, { shared: false });
    const before = calls(fake, TOKEN).length;
    assert.deepEqual(await c.gh.listRunners(repo()), []);
    assert.deepEqual(calls(fake, TOKEN).slice(before), [401, 201], `skew ${skew} s: one refusal, then a token`);
    assert.ok(Math.abs(c.gh.clockOffsetSeconds - skew) <= 2, `learned ${c.gh.clockOffsetSeconds} s, GitHub is ${skew} s off`);
    assert.match(c.logs(), /GitHub's clock differs/);
    // From now on the first JWT is right.
    await c.gh.listRunners(repo("acme", "two"));
    fake.expireTokens();
    await c.gh.listRunners(repo("acme", "three"));
    assert.deepEqual(calls(fake, TOKEN).slice(before), [401, 201, 201]);
  }
});

test("a token GitHub stops accepting is replaced, and the call retried once", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-revoked` });
  await c.gh.listRunners(repo());
  // auth-app itself retries a 401 on a token younger than 5 s (GitHub's replication delay); an older one is ours to replace.
  await sleep(5100);
  fake.expireTokens();
  assert.deepEqual(await c.gh.listRunners(repo()), []);
  assert.deepEqual(calls(fake, TOKEN), [201, 201]);
  assert.deepEqual(calls(fake, "/repos/{owner}/{repo}/actions/runners"), [200, 401, 200]);
  // The new token is the shared one: another process uses it without minting.
  await client(fake, { prefix: `${redis.prefix}-revoked` }).gh.listRunners(repo());
  assert.deepEqual(calls(fake, TOKEN), [201, 201]);
});

test("calls out with a token GitHub stops accepting, refused one after another, mint one new token between them, not one each", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-revoked-many`, concurrentCalls: 5 });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  await c.gh.getJob(1, "acme", "app", job.id);
  // auth-app itself retries a 401 on a token younger than 5 s; an older one is ours to replace.
  await sleep(5100);
  fake.expireTokens();
  // Their refusals come 200 ms apart, each after the mint the one before began has ended; the
  // first after 1 s, so that all five are out with the old token on a loaded machine too (with the
  // first refused at once, the later ones were once sent after it, with the new token).
  for (const delayMs of [1000, 1200, 1400, 1600, 1800]) fake.inject({ route: JOB, times: 1, delayMs });
  const answers = await Promise.all(Array.from({ length: 5 }, () => c.gh.getJob(1, "acme", "app", job.id)));
  assert.ok(answers.every((a) => a.status === "queued"));
  assert.deepEqual(calls(fake, TOKEN), [201, 201], "one token at first, one after the refusals");
  assert.deepEqual(calls(fake, JOB).filter((s) => s === 401).length, 5, "each call refused once, then retried with the new token");
});

test("a call refused for a permission its token was minted without gets a new token once the installation has it: minted again at most every 30 s, calls refused meanwhile retried with it, and shared", async () => {
  const fake = await fakeGitHub();
  const prefix = `${redis.prefix}-permission`;
  const c = client(fake, { prefix });
  const installation = fake.installations()[0]!.id;
  // The App set up without Administration: write, as operators do.
  fake.setPermissions(installation, { administration: "read" });
  const refused = await failure(c.gh.generateJitConfig(repo(), { name: "jr-no-permission", labels: LABELS }));
  assert.ok(refused instanceof GitHubError && refused.status === 403, String(refused));
  assert.deepEqual(calls(fake, TOKEN), [201, 201], "refused, a new token minted in case the permission came since, refused again");
  assert.deepEqual(calls(fake, REPO_JIT), [403, 403]);
  // The owner accepts the App's new permissions. Within 30 s of that mint, no other.
  fake.setPermissions(installation, { administration: "write" });
  const soon = await failure(c.gh.generateJitConfig(repo(), { name: "jr-soon", labels: LABELS }));
  assert.ok(soon instanceof GitHubError && soon.status === 403, String(soon));
  assert.deepEqual(calls(fake, TOKEN), [201, 201]);
  assert.deepEqual(calls(fake, REPO_JIT), [403, 403, 403, 403], "within 30 s: tried again with the token minted then, no other minted");
  await sleep(30_500);
  // Three calls out at once with the old token: one mints, the others wait for its token; all registered.
  const jits = await Promise.all(["jr-granted-1", "jr-granted-2", "jr-granted-3"].map((name) => c.gh.generateJitConfig(repo(), { name, labels: LABELS })));
  assert.ok(jits.every((j) => j.runnerId > 0));
  assert.deepEqual(calls(fake, TOKEN), [201, 201, 201], "one token for the three");
  assert.deepEqual(calls(fake, REPO_JIT).slice(4).sort(), [201, 201, 201, 403, 403, 403]);
  assert.equal((c.logs().match(/"level":40,[^\n]*minting a new token and trying once more/g) ?? []).length, 1, "said at warn the first time only");
  assert.equal((c.logs().match(/minting a new token and trying once more/g) ?? []).length, 2, "then at debug");
  // The new token is the shared one: another process registers with it, minting none.
  await client(fake, { prefix }).gh.generateJitConfig(repo(), { name: "jr-other", labels: LABELS });
  assert.deepEqual(calls(fake, TOKEN), [201, 201, 201]);
});

test("rate limits: 429 + retry-after and 403 + x-ratelimit-reset are waited out and counted; too many gives up", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });

  fake.inject({ route: JOB, status: 429, times: 1, headers: { "retry-after": "2" } });
  let started = Date.now();
  const limited = c.gh.getJob(1, "acme", "app", job.id);
  await waitFor(() => /secondary rate limit: waiting 2 s/.test(c.logs()), 5_000, "the wait heard");
  // Without Redis too, the installation's other reads wait with it.
  const during = c.gh.listRunners(repo());
  assert.equal((await limited).status, "queued");
  assert.ok(Date.now() - started >= 1900, "waited the 2 s GitHub asked for");
  assert.deepEqual(calls(fake, JOB), [429, 200], "one retry, not the retry plugin's as well");
  await during;
  const refusedAt = fake.requests.find((r) => r.route === JOB && r.status === 429)!.at;
  const listed = fake.requests.filter((r) => r.route === "/repos/{owner}/{repo}/actions/runners");
  assert.ok(listed.length === 1 && listed[0]!.at - refusedAt >= 1900, `the listing waited: ${listed.map((r) => r.at - refusedAt).join(", ")} ms`);

  const reset = Math.ceil(Date.now() / 1000) + 2;
  fake.inject({ route: JOB, status: 403, times: 1, headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": String(reset) } });
  started = Date.now();
  assert.equal((await c.gh.getJob(1, "acme", "app", job.id)).status, "queued");
  assert.ok(Date.now() >= reset * 1000, "waited until the window reset");
  assert.deepEqual(calls(fake, JOB), [429, 200, 403, 200]);

  fake.inject({ route: REPO_JIT, status: 429, times: 10, headers: { "retry-after": "1" } });
  const gaveUp = await failure(c.gh.generateJitConfig(repo(), { name: "jr-limited", labels: LABELS }));
  assert.equal(gaveUp.status, 429);
  assert.equal(gaveUp.retryable, true, "the demand is tried again later, not dropped");
  assert.equal(gaveUp.answerLost, false, "every attempt refused: none registered a runner");
  assert.deepEqual(calls(fake, REPO_JIT), [429, 429, 429, 429], "the first try and 3 retries, then it gives up");
  assert.equal(fake.runners().length, 0);

  const text = await c.metrics.render();
  assert.equal(metric(text, "jitrunner_github_rate_limited_total", 'kind="secondary",outcome="retried"'), 4);
  assert.equal(metric(text, "jitrunner_github_rate_limited_total", 'kind="primary",outcome="retried"'), 1);
  assert.equal(metric(text, "jitrunner_github_rate_limited_total", 'kind="secondary",outcome="gave_up"'), 1);
  assert.equal(metric(text, "jitrunner_github_requests_total", `route="${JOB}",status="200"`), 2);
  assert.ok(metric(text, "jitrunner_github_rate_limit_remaining", 'installation="1"') > 0);
});

test("a call sent again after a 5xx has the throttling plugin's rate-limit retries afresh: its count does not carry over from the attempt before", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  // The plugin's 3 retries spent on the first attempt; then a 502, which the client sends again.
  fake.inject({ route: JOB, status: 429, times: 3, headers: { "retry-after": "1" } });
  fake.inject({ route: JOB, status: 502, times: 1 });
  fake.inject({ route: JOB, status: 429, times: 1, headers: { "retry-after": "1" } });
  assert.equal((await c.gh.getJob(1, "acme", "app", job.id)).status, "queued");
  assert.deepEqual(calls(fake, JOB), [429, 429, 429, 502, 429, 200], "the attempt after the 502 had a rate-limit retry of its own");
});

test("the rate-limit gauge keeps each budget apart: a token request's counters are not taken for the installation's it is for", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: LABELS });
  for (let i = 0; i < 3; i++) await c.gh.listHookDeliveries();
  // The installation's first call mints its token (the App's budget), then fails without counters
  // of its own reaching the gauge: a 403 the client does not retry.
  fake.inject({ route: JOB, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  await failure(c.gh.getJob(1, "acme", "app", job.id));
  let text = await c.metrics.render();
  // The fake keeps a budget for the App's JWT calls (an assumption: GitHub does not document one).
  assert.equal(metric(text, "jitrunner_github_rate_limit_remaining", 'installation="0"'), 4997, "the App's own calls: 3 delivery lists");
  assert.equal(metric(text, "jitrunner_github_rate_limit_remaining", 'installation="1"'), 0, "nothing of installation 1's own yet");
  await c.gh.getJob(1, "acme", "app", job.id);
  text = await c.metrics.render();
  assert.equal(metric(text, "jitrunner_github_rate_limit_remaining", 'installation="1"'), 4998, "installation 1's: its two calls");
  assert.equal(metric(text, "jitrunner_github_rate_limit_remaining", 'installation="0"'), 4997);
  c.gh.close();
});

test("a primary rate limit with this host's clock 30 s ahead of GitHub's: the call is retried after GitHub's reset, on GitHub's clock, and writes wait for it too", async () => {
  const skew = -30; // GitHub's clock behind this host's
  const fake = await fakeGitHub({ clockSkewSeconds: skew });
  const c = client(fake, { shared: false });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  await c.gh.listRunners(repo()); // the token, and GitHub's clock learned from its Date header
  assert.equal(c.gh.clockOffsetSeconds, skew);

  // A reset 3 s away on GitHub's clock: 27 s past on this host's, where the throttling plugin reads it.
  const reset = Math.ceil((Date.now() + skew * 1000) / 1000) + 3;
  fake.inject({ route: JOB, status: 403, times: 1, headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": String(reset) } });
  const limited = c.gh.getJob(1, "acme", "app", job.id);
  await waitFor(() => calls(fake, JOB).includes(403), 5_000, "the 403 answered");
  await waitFor(() => /primary rate limit: waiting/.test(c.logs()), 5_000, "the wait logged");
  // A write asked for during the wait waits for GitHub's reset too.
  const write = c.gh.generateJitConfig(repo(), { name: "jr-after-reset", labels: LABELS });
  assert.equal((await limited).status, "queued");
  await write;

  const onGitHubsClock = (route: string) => fake.requests.filter((r) => r.route === route).map((r) => ({ status: r.status, at: r.at + skew * 1000 }));
  const got = onGitHubsClock(JOB);
  assert.deepEqual(got.map((r) => r.status), [403, 200], "one retry, not a burst of them");
  assert.ok(got[1]!.at >= reset * 1000, `the retry came ${reset * 1000 - got[1]!.at} ms before GitHub's reset`);
  const jit = onGitHubsClock(REPO_JIT);
  assert.deepEqual(jit.map((r) => r.status), [201]);
  assert.ok(jit[0]!.at >= reset * 1000, `the write came ${reset * 1000 - jit[0]!.at} ms before GitHub's reset`);
  assert.match(c.logs(), /"retryAfter":[1-9]/);
});

test("a rate limit is heard by the refused call's installation: all its writes wait, even when the App's own client was made first", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-heard` });
  await c.gh.listHookDeliveries(); // the App's own client (installation 0), made before installation 1's
  fake.inject({ route: REPO_JIT, status: 429, times: 1, headers: { "retry-after": "2" } });
  const limited = c.gh.generateJitConfig(repo(), { name: "jr-limited", labels: LABELS });
  await waitFor(() => calls(fake, REPO_JIT).includes(429), 5_000, "the 429 answered");
  await waitFor(() => /secondary rate limit: waiting 2 s/.test(c.logs()), 5_000, "the wait logged");
  assert.match(c.logs(), /"installationId":1,.*secondary rate limit: waiting 2 s/);
  assert.doesNotMatch(c.logs(), /"installationId":0,.*rate limit/, "the App client's handler did not hear of it");
  // Another write of installation 1, asked for during the wait, waits for its end too.
  await c.gh.generateJitConfig(repo(), { name: "jr-during", labels: LABELS });
  await limited;
  const jit = fake.requests.filter((r) => r.route === REPO_JIT).map((r) => ({ status: r.status, at: r.at }));
  assert.deepEqual(jit.map((r) => r.status), [429, 201, 201]);
  assert.ok(jit.slice(1).every((r) => r.at - jit[0]!.at >= 1900), `no write within GitHub's 2 s: ${jit.map((r) => r.at - jit[0]!.at).join(", ")} ms`);
});

test("a rate limit on a token request is the App's: no other installation's token request, nor the App's own call, reaches GitHub until the wait is over; the same installation's next call waits for the refused request's token", async () => {
  const fake = await fakeGitHub({ installations: [{ owner: "globex" }] });
  const c = client(fake, { prefix: `${redis.prefix}-app-limit` });
  fake.inject({ route: TOKEN, status: 429, times: 1, headers: { "retry-after": "2" } });
  const limited = c.gh.listRunners(repo());
  const refused = await waitFor(() => fake.requests.find((r) => r.route === TOKEN && r.status === 429), 5_000, "the 429 answered");
  await waitFor(() => /secondary rate limit: waiting 2 s/.test(c.logs()), 5_000, "the wait logged");
  // Installation 2's first call needs a token of its own; the App's call needs no token; another
  // call of installation 1 needs the token the refused request is for.
  const during = Promise.all([
    c.gh.listRunners({ installationId: 2, owner: "globex", repo: "app" }),
    c.gh.listHookDeliveries(),
    c.gh.listRunners(repo("acme", "other")),
  ]);
  await Promise.all([limited, during]);
  const sent = fake.requests.filter((r) => r.at >= refused.at).map((r) => ({ call: `${r.method} ${r.route} ${r.status}`, after: r.at - refused.at }));
  assert.deepEqual(sent.filter((r) => r.after < 1900).map((r) => r.call), [`POST ${TOKEN} 429`], "nothing but the refused request within GitHub's 2 s");
  assert.deepEqual(calls(fake, TOKEN), [429, 201, 201], "the refused request's retry, and installation 2's: installation 1's second call minted none of its own");
  assert.equal(sent.length, 7, sent.map((r) => r.call).join(", "));
  assert.match(c.logs(), /"installationId":0,.*secondary rate limit: waiting 2 s/, "logged as the App's");
});

test("a token request GitHub keeps refusing for the App's rate limit fails the call that needed it: its 4 tries are the only ones, and the installation's own calls are not held", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-mint-limited` });
  fake.inject({ route: TOKEN, status: 429, times: 4, headers: { "retry-after": "1" } });
  const err = await failure(c.gh.listRunners(repo()));
  assert.match(err.message, /installation token/);
  assert.deepEqual(calls(fake, TOKEN), [429, 429, 429, 429], "the token request's own 4 tries; the call that needed it mints no more");
  const text = await c.metrics.render();
  assert.equal(metric(text, "jitrunner_github_rate_limited_total", 'kind="secondary",outcome="retried"'), 3);
  assert.equal(metric(text, "jitrunner_github_rate_limited_total", 'kind="secondary",outcome="gave_up"'), 1, "counted once, as the token request's");
  assert.doesNotMatch(c.logs(), /"installationId":1,[^\n]*rate limit/, "no wait laid on installation 1");
  // GitHub mints again: the installation's next call goes out at once, held by no wait of its own.
  const conn = new Redis(redis.url);
  connections.push(conn);
  assert.equal(await conn.exists(`${redis.prefix}-mint-limited:github:app-${fake.appId}:writes:{installation-1}:paused`), 0);
  await c.gh.listRunners(repo());
  assert.deepEqual(calls(fake, TOKEN), [429, 429, 429, 429, 201]);
});

test("a read given up while its installation's token request waits out a wait GitHub asked of the App ends at once, never sent", async () => {
  const fake = await fakeGitHub({ installations: [{ owner: "globex" }] });
  const c = client(fake, { prefix: `${redis.prefix}-read-given-up` });
  fake.inject({ route: TOKEN, status: 429, times: 1, headers: { "retry-after": "600" } });
  const limited = c.gh.listRunners(repo()).catch((err: unknown) => err);
  try {
    await waitFor(() => /secondary rate limit: waiting 600 s/.test(c.logs()), 5_000, "the App's wait of 600 s heard");
    const stop = new AbortController();
    const read = c.gh.listRunners({ installationId: 2, owner: "globex", repo: "app" }, { signal: stop.signal }).then(
      () => "answered",
      (err: unknown) => err,
    );
    // Past its own installation's check (none is paused): it waits for its token, in the gate.
    await sleep(1000);
    stop.abort();
    const outcome = await Promise.race([read, sleep(10_000, "still waiting 10 s after it was given up")]);
    assert.ok(outcome instanceof NotSentError, String(outcome));
  } finally {
    c.gh.close();
  }
  assert.ok((await limited) instanceof NotSentError, "the refused call, waiting for its retry, ends with the client");
});

test("a read given up while the throttling plugin waits out the rate limit it was refused for ends at once, and is not sent again", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-read-refused-given-up` });
  await c.gh.listRunners(repo()); // the token, minted first
  fake.inject({ route: RUNNERS, status: 429, times: 1, headers: { "retry-after": "600" } });
  const stop = new AbortController();
  const read = c.gh.listRunners(repo(), { signal: stop.signal }).then(
    () => "answered",
    (err: unknown) => err,
  );
  try {
    await waitFor(() => /secondary rate limit: waiting 600 s/.test(c.logs()), 5_000, "the wait of 600 s heard");
    stop.abort();
    const outcome = await Promise.race([read, sleep(10_000, "still waiting 10 s after it was given up")]);
    assert.ok(outcome instanceof NotSentError, String(outcome));
  } finally {
    c.gh.close();
  }
  assert.deepEqual(calls(fake, RUNNERS), [200, 429], "the refused attempt only");
});

test("a read given up while its request is out is cut off and fails as unanswered, counted with status 0 (not as never sent)", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-read-cut-off` });
  await c.gh.listRunners(repo()); // the token, minted first
  fake.inject({ route: RUNNERS, times: 1, delayMs: 3000 });
  const stop = new AbortController();
  const read = c.gh.listRunners(repo(), { signal: stop.signal }).then(
    () => "answered",
    (err: unknown) => err,
  );
  await sleep(500); // out, held by the fake
  stop.abort();
  const outcome = await read;
  assert.ok(outcome instanceof Error && !(outcome instanceof NotSentError), `a read that was out is not said never sent: ${String(outcome)}`);
  assert.equal(metric(await c.metrics.render(), "jitrunner_github_requests_total", `route="${RUNNERS}",status="0"`), 1);
  c.gh.close();
});

/**
 * Starts a read of each kind during a wait GitHub asked for, from `c` and from `d` (another process
 * on the same Redis), and checks that none reached GitHub until the wait was over.
 */
async function readsWaitOutTheLimit(
  fake: FakeGitHub,
  c: Client,
  d: Client,
  prefix: string,
  refusedRoute: string,
  job: { id: number; run_id: number },
  limited: Promise<unknown>,
): Promise<void> {
  const refused = await waitFor(() => fake.requests.find((r) => r.route === refusedRoute && r.status === 429), 5_000, "the 429 answered");
  await waitFor(() => /secondary rate limit: waiting 2 s/.test(c.logs()), 5_000, "the wait heard");
  // The other process learns of it through Redis (the key the write budget's pause is kept in).
  const conn = new Redis(redis.url);
  connections.push(conn);
  await waitFor(async () => (await conn.get(`${prefix}:github:app-${fake.appId}:writes:{installation-1}:paused`)) !== null, 5_000, "the wait shared");
  const stop = new AbortController();
  const givenUp = d.gh.listRunners(repo(), { signal: stop.signal });
  const reads = Promise.all([
    c.gh.getJob(1, "acme", "app", job.id),
    c.gh.listRunners(repo()),
    d.gh.getJob(1, "acme", "app", job.id),
    d.gh.listRuns(1, "acme", "app", "queued"),
    d.gh.listRunJobs(1, "acme", "app", job.run_id),
    d.gh.getRunner(repo(), 12345),
  ]);
  await sleep(300);
  const t0 = Date.now();
  stop.abort();
  let readsDone = false;
  void reads.then(() => (readsDone = true), () => undefined);
  const err = await givenUp.then(
    () => undefined,
    (e: unknown) => e,
  );
  // What went out to GitHub when the read was given up: nothing after the refused call (the wait
  // still holds every call), and none of the reads held with it had its answer.
  const sentBeforeGivenUp = fake.requests.filter((r) => r.at > refused.at).map((r) => `${r.method} ${r.route} ${r.status}`);
  const readsDoneWhenGivenUp = readsDone;
  const givenUpAfterMs = Date.now() - t0;
  await Promise.all([reads, limited]);
  const during = fake.requests.filter((r) => r.at >= refused.at && r.at - refused.at < 1900).map((r) => `${r.method} ${r.route} ${r.status}`);
  assert.deepEqual(during, [`${refused.method} ${refusedRoute} 429`], "nothing but the refused call reached GitHub during its 2 s wait");
  assert.ok(err instanceof NotSentError, `a read given up during the wait: NotSentError, got ${String(err)}`);
  assert.deepEqual(sentBeforeGivenUp, [], `given up during the wait (after ${givenUpAfterMs} ms), before any call it held went out`);
  assert.equal(readsDoneWhenGivenUp, false, "given up before the reads held with it were answered");
  const after = fake.requests.filter((r) => r.at - refused.at >= 1900);
  // The six reads above (not the one given up), each once, and the refused call's retry.
  assert.equal(after.length, 7, after.map((r) => `${r.route} ${r.status}`).join(", "));
}

test("a secondary rate limit heard on a write holds the installation's reads too, in this process and in another on the same Redis", async () => {
  const fake = await fakeGitHub();
  const prefix = `${redis.prefix}-read-wait-w`;
  const [c, d] = [client(fake, { prefix }), client(fake, { prefix })];
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  // Their tokens first: only the calls below are counted.
  await c.gh.getJob(1, "acme", "app", job.id);
  await d.gh.getJob(1, "acme", "app", job.id);
  fake.inject({ route: REPO_JIT, status: 429, times: 1, headers: { "retry-after": "2" } });
  const limited = c.gh.generateJitConfig(repo(), { name: "jr-read-wait", labels: LABELS });
  await readsWaitOutTheLimit(fake, c, d, prefix, REPO_JIT, job, limited);
  assert.ok((await limited).runnerId > 0);
});

test("a secondary rate limit heard on a read holds the installation's other reads too, in this process and in another on the same Redis", async () => {
  const fake = await fakeGitHub();
  const prefix = `${redis.prefix}-read-wait-r`;
  const [c, d] = [client(fake, { prefix }), client(fake, { prefix })];
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  await c.gh.listRunners(repo());
  await d.gh.listRunners(repo());
  const from = fake.requests.length;
  fake.inject({ route: JOB, status: 429, times: 1, headers: { "retry-after": "2" } });
  const limited = c.gh.getJob(1, "acme", "app", job.id);
  await readsWaitOutTheLimit(fake, c, d, prefix, JOB, job, limited);
  assert.equal((await limited).status, "queued");
  assert.deepEqual(
    fake.requests.slice(from).filter((r) => r.route === JOB).map((r) => r.status),
    [429, 200, 200, 200],
    "the refused read retried once, after the wait",
  );
});

for (const limit of [undefined, 3]) {
  const max = limit ?? DEFAULT_CONCURRENT_CALLS;
  test(`at most ${max} calls of one installation are out at once (concurrentCalls ${limit ?? "by default"}): the next is sent when an answer has come`, async () => {
    const fake = await fakeGitHub();
    const c = client(fake, { prefix: `${redis.prefix}-concurrency-${max}`, concurrentCalls: limit });
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
    await c.gh.getJob(1, "acme", "app", job.id); // the token, minted first
    const held = 1000;
    fake.inject({ route: JOB, times: max + 2, delayMs: held });
    const answers = await Promise.all(Array.from({ length: max + 2 }, () => c.gh.getJob(1, "acme", "app", job.id)));
    assert.ok(answers.every((a) => a.status === "queued"));
    const arrived = fake.requests.filter((r) => r.route === JOB).slice(1).map((r) => r.at).sort((a, b) => a - b);
    assert.deepEqual(calls(fake, JOB), Array(max + 3).fill(200));
    // All of the first `max` arrive together; each is answered `held` ms after it arrived, so the
    // next cannot arrive sooner (less the fake's timer firing early against the clock on a busy
    // event loop); unlimited, it came a few ms after.
    assert.ok(arrived[max - 1]! - arrived[0]! < held - 200, `the first ${max} went out together (the last ${arrived[max - 1]! - arrived[0]!} ms after the first)`);
    assert.ok(arrived[max]! - arrived[0]! >= held - 200, `call ${max + 1} arrived ${arrived[max]! - arrived[0]!} ms after the first`);
  });
}

test("calls queued behind the installation's call limit when a call is refused for a rate limit wait out GitHub's wait too: a read and a write queued then reach GitHub only once it is over", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-queued-wait`, concurrentCalls: 1 });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  await c.gh.getJob(1, "acme", "app", job.id); // the token, minted first
  const from = fake.requests.length;
  const heldMs = 300;
  const waitS = 2;
  fake.inject({ route: JOB, status: 429, times: 1, delayMs: heldMs, headers: { "retry-after": String(waitS) } });
  const limited = c.gh.getJob(1, "acme", "app", job.id);
  await sleep(100);
  // Both are let through before the refusal (no wait yet), and queue behind the call out.
  const read = c.gh.getJob(1, "acme", "app", job.id);
  const write = c.gh.generateJitConfig(repo(), { name: "jr-queued-wait", labels: LABELS });
  assert.equal((await limited).status, "queued");
  assert.equal((await read).status, "queued");
  assert.ok((await write).runnerId > 0);
  const sent = fake.requests.slice(from).map((r) => ({ route: r.route, status: r.status, at: r.at }));
  const refused = sent.find((r) => r.status === 429)!;
  assert.ok(refused, JSON.stringify(sent));
  // The wait began when the refusal was answered, `heldMs` after it arrived (less the fake's timer
  // firing early on a busy event loop).
  const waitEnds = refused.at + heldMs + waitS * 1000 - 200;
  const early = sent.filter((r) => r !== refused && r.at < waitEnds);
  assert.deepEqual(early, [], `nothing reached GitHub during the wait (refused at ${refused.at})`);
  assert.deepEqual(
    sent.map((r) => `${r.route === JOB ? "job" : "jit"} ${r.status}`).sort(),
    ["jit 201", "job 200", "job 200", "job 429"],
    "the refused read retried once; the queued two sent once each",
  );
});

test("a call waiting out GitHub's rate limit fails at once with NotSentError when the client closes, and is not sent again", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { prefix: `${redis.prefix}-closed` });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  fake.inject({ route: JOB, status: 429, times: 1, headers: { "retry-after": "60" } });
  const call = c.gh.getJob(1, "acme", "app", job.id).then(
    () => undefined,
    (err: unknown) => err,
  );
  await waitFor(() => calls(fake, JOB).length === 1, 5_000, "the 429 answered");
  const started = Date.now();
  c.gh.close();
  const err = await call;
  assert.ok(err instanceof NotSentError, `expected NotSentError, got ${String(err)}`);
  assert.ok(Date.now() - started < 5_000, "not after GitHub's 60 s");
  assert.deepEqual(calls(fake, JOB), [429]);
});

test("409 and 422 are answered at once, never retried; 5xx is retried; a lost answer leaves a named orphan that can be found and deleted", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  fake.inject({ route: REPO_JIT, status: 409, times: 1 });
  const conflict = await failure(c.gh.generateJitConfig(repo(), { name: "jr-taken", labels: LABELS }));
  assert.equal(conflict.status, 409);
  assert.deepEqual(calls(fake, REPO_JIT), [409]);

  const jit = await c.gh.generateJitConfig(repo(), { name: "jr-busy", labels: LABELS });
  // A 422 GitHub sends for another reason than busy (it says, asked then, the runner is not): not
  // "busy", not retried here; the caller's next try deletes it.
  fake.inject({ route: "/repos/{owner}/{repo}/actions/runners/{runner_id}", method: "DELETE", status: 422, times: 1 });
  const refused = await failure(c.gh.deleteRunner(repo(), jit.runnerId));
  assert.deepEqual([refused.status, refused.retryable], [422, true]);
  assert.equal(await c.gh.deleteRunner(repo(), jit.runnerId), "deleted");
  assert.deepEqual(calls(fake, "/repos/{owner}/{repo}/actions/runners/{runner_id}"), [422, 200, 204]);

  fake.inject({ route: JOB, status: 502, times: 1 });
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  assert.equal((await c.gh.getJob(1, "acme", "app", job.id)).status, "queued");
  assert.deepEqual(calls(fake, JOB), [502, 200]);

  // GitHub created the runner but the answer was lost: the retry finds the name taken.
  fake.inject({ route: REPO_JIT, status: 502, times: 1, afterHandling: true });
  const lost = await failure(c.gh.generateJitConfig(repo(), { name: "jr-lost", labels: LABELS }));
  assert.equal(lost.status, 409);
  assert.deepEqual(fake.runners().map((r) => r.name), ["jr-lost"]);
  assert.equal(await c.gh.deleteRunnerNamed(repo(), "jr-lost"), "deleted");
  assert.equal(await c.gh.deleteRunnerNamed(repo(), "jr-lost"), "not_found");
  assert.equal(fake.runners().length, 0);

  fake.inject({ route: JOB, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "x", status: "403" } });
  const denied = await failure(c.gh.getJob(1, "acme", "app", job.id));
  assert.deepEqual([denied.status, denied.retryable], [403, false], "a permission 403 is not a rate limit");
  const checked = await assertNoSecretsFrom(fake, c.logs(), [conflict, refused, lost, denied]);
  assert.ok(checked.tokens >= 1 && checked.jitConfigs >= 2, JSON.stringify(checked));
});

test("a runner deletion whose answer was lost (GitHub deleted it, then a 502) answers 'deleted', though its retry gets 404; a plain 404 is 'not_found'", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
  const ORG_RUNNER = "/orgs/{org}/actions/runners/{runner_id}";
  const jit = await c.gh.generateJitConfig(repo(), { name: "jr-lost-delete", labels: LABELS });
  fake.inject({ route: RUNNER, method: "DELETE", status: 502, times: 1, afterHandling: true });
  assert.equal(await c.gh.deleteRunner(repo(), jit.runnerId), "deleted", "our first attempt deleted it, not the runner itself");
  assert.deepEqual(calls(fake, RUNNER), [502, 404], "the retry found it gone");
  assert.equal(fake.runners().length, 0);
  // No attempt of this call lost: the runner was gone before it.
  assert.equal(await c.gh.deleteRunner(repo(), jit.runnerId), "not_found");
  assert.deepEqual(calls(fake, RUNNER), [502, 404, 404]);

  // The same for an organization runner, and through deleteRunnerNamed.
  await c.gh.generateJitConfig(org(), { name: "jr-lost-delete-org", labels: LABELS });
  fake.inject({ route: ORG_RUNNER, method: "DELETE", status: 503, times: 1, afterHandling: true });
  assert.equal(await c.gh.deleteRunnerNamed(org(), "jr-lost-delete-org"), "deleted");
  assert.deepEqual(calls(fake, ORG_RUNNER), [503, 404]);
  assert.equal(fake.runners().length, 0);
});

test("a JIT config that fails after an attempt whose answer was lost says so (answerLost), also when its caller gave up during the backoff; one that GitHub refused does not", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  await c.gh.listRunners(repo()); // the token
  // GitHub registered it, the answer was lost; the retry is refused for good.
  fake.inject({ route: REPO_JIT, status: 502, times: 1, afterHandling: true });
  fake.inject({ route: REPO_JIT, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "x", status: "403" } });
  const refused = await failure(c.gh.generateJitConfig(repo(), { name: "jr-lost-refused", labels: LABELS }));
  assert.deepEqual([refused.status, refused.answerLost, refused.retryable], [403, true, false]);
  assert.deepEqual(fake.runners().map((r) => r.name), ["jr-lost-refused"], "the registration the lost answer told of");
  assert.equal(await c.gh.deleteRunnerNamed(repo(), "jr-lost-refused"), "deleted");

  // The caller gives up during the backoff after the lost answer: no retry, and not "never sent".
  fake.inject({ route: REPO_JIT, status: 502, times: 1, afterHandling: true });
  const stop = new AbortController();
  const givenUp = failure(c.gh.generateJitConfig(repo(), { name: "jr-lost-stopped", labels: LABELS }, { signal: stop.signal }));
  await waitFor(() => calls(fake, REPO_JIT).filter((s) => s === 502).length === 2, 5_000, "the second 502");
  stop.abort();
  const stopped = await givenUp;
  assert.deepEqual([stopped.status, stopped.answerLost], [502, true]);
  assert.deepEqual(fake.runners().map((r) => r.name), ["jr-lost-stopped"]);

  // Refused outright: nothing registered, nothing lost.
  fake.inject({ route: REPO_JIT, status: 422, times: 1 });
  const invalid = await failure(c.gh.generateJitConfig(repo(), { name: "jr-invalid", labels: LABELS }));
  assert.deepEqual([invalid.status, invalid.answerLost], [422, false]);
  assert.deepEqual(calls(fake, REPO_JIT), [502, 403, 502, 422]);
  // The lost answers carried JIT configs the client never saw; its requests carried its token.
  const checked = await assertNoSecretsFrom(fake, c.logs(), [refused, stopped, invalid]);
  assert.ok(checked.tokens >= 1 && checked.jitConfigs >= 2, JSON.stringify(checked));
});

test("an answer cut short (201 or 200, its body half sent) is an error said as a lost answer, not a result with fields missing: the runner it registered is deleted by name", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  await c.gh.listRunners(repo()); // the token
  fake.inject({ route: REPO_JIT, cutShort: true, times: 1 });
  const cut = await failure(c.gh.generateJitConfig(repo(), { name: "jr-cut-short", labels: LABELS }));
  assert.deepEqual([cut.status, cut.answerLost, cut.retryable], [undefined, true, true]);
  assert.match(cut.message, /generate JIT config failed: GitHub's answer \(201\) could not be read/);
  assert.deepEqual(fake.runners().map((r) => r.name), ["jr-cut-short"], "registered all the same");
  assert.equal(await c.gh.deleteRunnerNamed(repo(), "jr-cut-short"), "deleted");

  // A read: no runner with its status and busy flag missing, but an error to retry.
  const jit = await c.gh.generateJitConfig(repo(), { name: "jr-cut-read", labels: LABELS });
  fake.inject({ route: "/repos/{owner}/{repo}/actions/runners/{runner_id}", method: "GET", cutShort: true, times: 1 });
  const read = await failure(c.gh.getRunner(repo(), jit.runnerId));
  assert.deepEqual([read.status, read.retryable], [undefined, true]);
  assert.equal((await c.gh.getRunner(repo(), jit.runnerId))?.status, "offline");
  const checked = await assertNoSecretsFrom(fake, c.logs(), [cut, read]);
  assert.ok(checked.jitConfigs >= 2, JSON.stringify(checked));
});

test("an installation token GitHub will not mint (404, 422) fails the call as an error, not as the call's own 404 or 422", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
  const runner = await c.gh.generateJitConfig(repo(), { name: "jr-token", labels: LABELS });
  // A client with no token yet, whose mints fail.
  const d = client(fake, { shared: false });
  const errors: GitHubError[] = [];
  for (const status of [404, 422]) {
    fake.inject({ route: TOKEN, status, times: 3 });
    const read = await failure(d.gh.getRunner(repo(), runner.runnerId));
    const del = await failure(d.gh.deleteRunner(repo(), runner.runnerId));
    const named = await failure(d.gh.deleteRunnerNamed(repo(), "jr-token"));
    errors.push(read, del, named);
    for (const err of [read, del, named]) {
      assert.equal(err.status, undefined, "no status of the call's own");
      assert.match(err.message, new RegExp(`failed: installation token \\(${status}\\): `));
    }
  }
  assert.deepEqual(calls(fake, TOKEN).slice(1), [404, 404, 404, 422, 422, 422]);
  assert.deepEqual(calls(fake, RUNNER), [], "no runner call was sent");
  const checked = await assertNoSecretsFrom(fake, d.logs(), errors);
  assert.ok(checked.tokens >= 1 && checked.jitConfigs >= 1, JSON.stringify(checked));
  // Once a token is minted, the same calls answer as GitHub does.
  assert.equal((await d.gh.getRunner(repo(), runner.runnerId))?.name, "jr-token");
  assert.equal(await d.gh.deleteRunner(repo(), runner.runnerId), "deleted");
  assert.equal(await d.gh.getRunner(repo(), runner.runnerId), undefined);
});

test("a 5xx is retried after a backoff, but not once the caller has given up on the call", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  await c.gh.listRunners(repo()); // the installation token, so that only the listing is counted below
  fake.inject({ route: RUNNERS, status: 503, times: 2 });
  const stop = new AbortController();
  const listing = c.gh.listRunners(repo(), { signal: stop.signal });
  // The first try of this call answered 503, and that answer is in: the client is in its 1 s backoff.
  await waitFor(async () => /jitrunner_github_requests_total\{.*status="503"\} 1/.test(await c.metrics.render()), 5_000, "the 503 answered");
  stop.abort();
  const err = await failure(listing);
  assert.equal(err.status, 503);
  await sleep(1500);
  assert.deepEqual(calls(fake, RUNNERS), [200, 503], "no retry after the caller gave up");

  const again = c.gh.listRunners(repo());
  assert.deepEqual(await again, []);
  assert.deepEqual(calls(fake, RUNNERS), [200, 503, 503, 200], "a call nobody gave up on: retried after 1 s");
});

test("runner group by name: resolved once per organization, then cached; labels are passed exactly as configured", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  const groupId = fake.addRunnerGroup("ci-runners");
  const a = await c.gh.generateJitConfig(org(), { name: "jr-g1", labels: LABELS, runnerGroup: "ci-runners" });
  const b = await c.gh.generateJitConfig(org(), { name: "jr-g2", labels: LABELS, runnerGroup: "ci-runners" });
  await c.gh.generateJitConfig(org("other-org"), { name: "jr-g3", labels: LABELS, runnerGroup: "CI-Runners" });
  const runners = fake.runners();
  assert.deepEqual(runners.map((r) => r.runner_group_id), [groupId, groupId, groupId]);
  assert.deepEqual([a.runnerId, b.runnerId], runners.slice(0, 2).map((r) => r.id));
  assert.deepEqual(calls(fake, "/orgs/{org}/actions/runner-groups"), [200, 200], "one lookup per organization");
  for (const r of runners) assert.deepEqual(r.labels, LABELS, "exactly the configured labels, case kept");

  await c.gh.generateJitConfig(org(), { name: "jr-g4", labels: ["self-hosted"], runnerGroupId: groupId });
  await c.gh.generateJitConfig(repo(), { name: "jr-r1", labels: ["self-hosted"] });
  assert.deepEqual(fake.runners().slice(3).map((r) => [r.runner_group_id, r.labels]), [[groupId, ["self-hosted"]], [1, ["self-hosted"]]]);

  const missing = await failure(c.gh.generateJitConfig(org(), { name: "jr-g5", labels: LABELS, runnerGroup: "no-such-group" }));
  assert.equal(missing.retryable, false);
  assert.match(missing.message, /runner group 'no-such-group' does not exist in organization acme/);
  const repoGroup = await failure(c.gh.generateJitConfig(repo(), { name: "jr-g6", labels: LABELS, runnerGroup: "ci-runners" }));
  assert.match(repoGroup.message, /organization runners only/);
  assert.deepEqual(calls(fake, ORG_JIT), [201, 201, 201, 201]);
});

test("a registration given up while its runner group's lookup waits out a rate limit ends at once, unsent; the lookup is not sent before the wait is over", async () => {
  const fake = await fakeGitHub();
  const c = client(fake, { shared: false });
  fake.addRunnerGroup("ci-runners");
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
  fake.inject({ route: JOB, status: 429, times: 1, headers: { "retry-after": "600" } });
  const limited = c.gh.getJob(1, "acme", "app", job.id).catch((err: unknown) => err);
  await waitFor(() => calls(fake, JOB).includes(429), 5_000, "the 429 answered");
  const stop = new AbortController();
  const registering = c.gh.generateJitConfig(org(), { name: "jr-group-wait", labels: LABELS, runnerGroup: "ci-runners" }, { signal: stop.signal }).catch((err: unknown) => err);
  try {
    await sleep(100);
    const started = Date.now();
    stop.abort();
    const err = await Promise.race([registering, sleep(5_000).then(() => "still waiting 5 s after the abort")]);
    assert.ok(err instanceof NotSentError, `expected NotSentError, got ${String(err)}`);
    assert.ok(Date.now() - started < 2_000, `ended ${Date.now() - started} ms after the abort, not after GitHub's 600 s`);
    assert.deepEqual(calls(fake, "/orgs/{org}/actions/runner-groups"), [], "the lookup waits out the rate limit");
    assert.deepEqual(calls(fake, ORG_JIT), [], "nothing registered");
  } finally {
    c.gh.close();
  }
  assert.ok((await limited) instanceof NotSentError);
  assert.ok((await registering) instanceof NotSentError);
});

test("GHES: with apiUrl http://HOST/api/v3 every call, the token's included, goes under /api/v3", async () => {
  const fake = await fakeGitHub({ basePath: "/api/v3" });
  assert.match(fake.url, /^http:\/\/127\.0\.0\.1:\d+\/api\/v3$/);
  const outside = await fetch(`${fake.url.replace(/\/api\/v3$/, "")}/app`);
  assert.equal(outside.status, 404, "the fake serves nothing outside its base path");

  for (const apiUrl of [fake.url, `${fake.url}/`]) {
    const c = client(fake, { apiUrl, shared: false });
    fake.addRunnerGroup(`group-${apiUrl.length}`);
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted"] });
    assert.equal((await c.gh.getJob(1, "acme", "app", job.id)).status, "queued");
    const r = await c.gh.generateJitConfig(repo(), { name: `jr-ghes-${apiUrl.length}`, labels: LABELS });
    const o = await c.gh.generateJitConfig(org(), { name: `jr-ghes-org-${apiUrl.length}`, labels: LABELS, runnerGroup: `group-${apiUrl.length}` });
    assert.equal((await c.gh.listRunners(repo())).length, 1);
    assert.equal(await c.gh.deleteRunner(repo(), r.runnerId), "deleted");
    assert.equal(await c.gh.deleteRunnerNamed(org(), `jr-ghes-org-${apiUrl.length}`), "deleted");
    assert.ok(o.runnerId > 0);
  }
  const routes = new Set(fake.requests.map((r) => r.route));
  for (const route of [TOKEN, JOB, REPO_JIT, ORG_JIT, "/orgs/{org}/actions/runner-groups", "/orgs/{org}/actions/runners"]) {
    assert.ok(routes.has(route), `${route} was called`);
  }
  const api = fake.requests.filter((r) => r.path !== "/app");
  assert.equal(api.length, 18, "9 calls by each of the two clients");
  assert.deepEqual(api.filter((r) => !r.path.startsWith("/api/v3/")), [], "every call under the base path");
  assert.deepEqual(api.filter((r) => r.status >= 400), [], "and every one answered");
});
