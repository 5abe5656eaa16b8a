/**
 * The fake GitHub counts primary rate limits as GitHub does ("Rate limits for the REST API"): per
 * credential. Each installation's tokens spend that installation's budget, in a window of its
 * own; the App's JWT calls (/app/..., token mints) spend the App's; a call without a credential
 * GitHub takes spends its address's (60 an hour). Each answer's `x-ratelimit-*` headers describe
 * the caller's budget, and a primary rate limit names whose budget ran out.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHubClient, type RawResponse } from "../fakes/github/client.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { loadSpec, responseSchema, schemaErrors, undocumentedKeys } from "../fakes/github/openapi-check.ts";

const SECRET = "rate-windows-secret";
const RUNNERS = "/repos/{owner}/{repo}/actions/runners";
const spec = loadSpec();
// GitHub's "Basic Error", the body of a rate-limited answer on any route.
const BASIC_ERROR = responseSchema(spec, "/repos/{owner}/{repo}/actions/runners/generate-jitconfig", "post", 409);

interface Clients {
  /** Tokens of the default installation (1): every owner but globex. */
  acme: FakeGitHubClient;
  /** Tokens of globex's installation (2). */
  globex: FakeGitHubClient;
}

async function withFake(fn: (fake: FakeGitHub, c: Clients) => Promise<void>): Promise<void> {
  const fake = await FakeGitHub.start({ webhookSecret: SECRET, installations: [{ owner: "globex" }] });
  try {
    await fn(fake, { acme: new FakeGitHubClient(fake), globex: new FakeGitHubClient(fake, { installationId: 2 }) });
  } finally {
    await fake.close();
  }
}

/** The answer's `x-ratelimit-*` headers, as numbers (resource as sent). */
function rate(res: RawResponse): { limit: number; remaining: number; used: number; reset: number; resource: string | null } {
  const n = (name: string): number => Number(res.headers.get(`x-ratelimit-${name}`));
  return { limit: n("limit"), remaining: n("remaining"), used: n("used"), reset: n("reset"), resource: res.headers.get("x-ratelimit-resource") };
}

/** Limit, remaining and used of an answer, in one comparable triple. */
const counters = (res: RawResponse): [number, number, number] => [rate(res).limit, rate(res).remaining, rate(res).used];

/** The fake's Date header, in epoch seconds. */
const dateOf = (res: RawResponse): number => Date.parse(res.headers.get("date") ?? "") / 1000;

/** A rate-limited answer: status, GitHub's Basic Error body (OpenAPI), and its message. */
function limitedMessage(res: RawResponse, status: number): string {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.ok(BASIC_ERROR);
  assert.deepEqual(schemaErrors(BASIC_ERROR, res.body), []);
  assert.deepEqual(undocumentedKeys(BASIC_ERROR, res.body), []);
  return (res.body as { message: string }).message;
}

test("two installations' tokens spend independent budgets: each sees its own x-ratelimit-used and remaining", async () => {
  await withFake(async (fake, { acme, globex }) => {
    const acmeRunners = "/repos/acme/app/actions/runners";
    const globexRunners = "/repos/globex/app/actions/runners";
    assert.deepEqual(counters(await acme.call("GET", acmeRunners)), [5000, 4999, 1]);
    assert.deepEqual(counters(await acme.call("GET", acmeRunners)), [5000, 4998, 2]);
    const first = await globex.call("GET", globexRunners);
    assert.equal(first.status, 200);
    assert.deepEqual(counters(first), [5000, 4999, 1], "installation 2's first call: none of installation 1's counted");
    assert.equal(rate(first).resource, "core");
    assert.deepEqual(counters(await acme.call("GET", acmeRunners)), [5000, 4997, 3]);
    // The caller's budget, not the route owner's: globex's token refused on acme's repository.
    const refused = await globex.call("GET", acmeRunners);
    assert.deepEqual([refused.status, ...counters(refused)], [404, 5000, 4998, 2]);
    assert.deepEqual(counters(await acme.call("GET", acmeRunners)), [5000, 4996, 4]);
    assert.deepEqual(
      fake.requests.filter((r) => r.route === RUNNERS).map((r) => r.installationId),
      [1, 1, 2, 1, 2, 1],
    );
  });
});

test("the App's JWT calls spend the App's own budget: token mints and /app routes never count against an installation", async () => {
  await withFake(async (_fake, { acme, globex }) => {
    // acme's first call mints its token with an App JWT first: one call on the App's budget.
    assert.deepEqual(counters(await acme.call("GET", "/repos/acme/app/actions/runners")), [5000, 4999, 1]);
    const app = await acme.call("GET", "/app", { auth: "app" });
    assert.equal(app.status, 200);
    assert.deepEqual(counters(app), [5000, 4998, 2], "the App: acme's token mint, then this");
    const minted = await acme.call("POST", "/app/installations/2/access_tokens", { auth: "app" });
    assert.deepEqual([minted.status, ...counters(minted)], [201, 5000, 4997, 3]);
    assert.deepEqual(counters(await acme.call("GET", "/repos/globex/app/installation", { auth: "app" })), [5000, 4996, 4]);
    assert.deepEqual(counters(await acme.call("GET", "/repos/acme/app/actions/runners")), [5000, 4998, 2], "installation 1: its own two calls");
    const token = (minted.body as { token: string }).token;
    const withMinted = await acme.call("GET", "/repos/globex/app/actions/runners", { auth: { authorization: `token ${token}` } });
    assert.deepEqual([withMinted.status, ...counters(withMinted)], [200, 5000, 4999, 1], "installation 2: nothing of the App's counted");
    // globex's client mints a token of its own (the App's 5th call), then spends installation 2's.
    assert.deepEqual(counters(await globex.call("GET", "/repos/globex/app/actions/runners")), [5000, 4998, 2]);
    assert.deepEqual(counters(await acme.call("GET", "/app", { auth: "app" })), [5000, 4994, 6]);
  });
});

test("a call without a credential GitHub takes spends the address's budget (60 an hour), not an installation's or the App's", async () => {
  await withFake(async (_fake, { acme }) => {
    assert.deepEqual(counters(await acme.call("GET", "/repos/acme/app/actions/runners")), [5000, 4999, 1]);
    const none = await acme.call("GET", "/repos/acme/app/actions/runners", { auth: "none" });
    assert.deepEqual([none.status, ...counters(none)], [401, 60, 59, 1]);
    const stale = await acme.call("GET", "/repos/acme/app/actions/runners", { auth: { authorization: "token ghs_not-a-token" } });
    assert.deepEqual([stale.status, ...counters(stale)], [401, 60, 58, 2]);
    const badJwt = await acme.call("GET", "/app", { auth: { authorization: "bearer not.a.jwt" } });
    assert.deepEqual([badJwt.status, ...counters(badJwt)], [401, 60, 57, 3]);
    assert.deepEqual(counters(await acme.call("GET", "/repos/acme/app/actions/runners")), [5000, 4998, 2]);
    assert.deepEqual(counters(await acme.call("GET", "/app", { auth: "app" })), [5000, 4998, 2], "the App: acme's token mint, then this");
  });
});

test("a primary rate limit names the caller's installation (or the App, or the address) and carries that budget's reset", async () => {
  await withFake(async (fake, { acme, globex }) => {
    const globexReset = rate(await globex.call("GET", "/repos/globex/app/actions/runners")).reset;
    fake.inject({ route: RUNNERS, status: 403, times: 1 });
    const limited = await globex.call("GET", "/repos/globex/app/actions/runners");
    assert.equal(limitedMessage(limited, 403), "API rate limit exceeded for installation ID 2.");
    assert.deepEqual({ ...rate(limited) }, { limit: 5000, remaining: 0, used: 5000, reset: globexReset, resource: "core" });
    assert.equal(
      (limited.body as { documentation_url: string }).documentation_url,
      "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-primary-rate-limits",
    );

    fake.inject({ route: RUNNERS, status: 429, rateLimit: "primary", times: 1 });
    const acmeLimited = await acme.call("GET", "/repos/acme/app/actions/runners");
    assert.equal(limitedMessage(acmeLimited, 429), "API rate limit exceeded for installation ID 1.");
    assert.equal(rate(acmeLimited).remaining, 0);

    fake.inject({ route: "/app", status: 403, times: 1 });
    const appLimited = await acme.call("GET", "/app", { auth: "app" });
    assert.equal(limitedMessage(appLimited, 403), `API rate limit exceeded for app ID ${fake.appId}.`);
    assert.deepEqual(counters(appLimited), [5000, 0, 5000]);

    fake.inject({ route: RUNNERS, status: 403, times: 1 });
    const anonymous = await acme.call("GET", "/repos/acme/app/actions/runners", { auth: "none" });
    assert.match(limitedMessage(anonymous, 403), /^API rate limit exceeded for 127\.0\.0\.1\. \(But here's the good news: Authenticated requests get a higher rate limit\./);
    assert.deepEqual(counters(anonymous), [60, 0, 60]);

    // Normal service again, each budget's counters where its own calls left them.
    assert.deepEqual(counters(await globex.call("GET", "/repos/globex/app/actions/runners")), [5000, 4997, 3]);
    assert.deepEqual(counters(await acme.call("GET", "/repos/acme/app/actions/runners")), [5000, 4998, 2]);
  });
});

test("each budget's window starts with its own first call and follows the fake's clock; a clock set back starts each anew", async () => {
  await withFake(async (fake, { acme, globex }) => {
    await globex.installationToken(); // minted now: App JWTs would be refused on a skewed clock
    const acmeFirst = await acme.call("GET", "/repos/acme/app/actions/runners");
    const acmeReset = rate(acmeFirst).reset;
    assert.ok(acmeReset >= dateOf(acmeFirst) + 3599 && acmeReset <= dateOf(acmeFirst) + 3602);

    fake.setClockSkew(1800);
    const globexFirst = await globex.call("GET", "/repos/globex/app/actions/runners");
    const globexReset = rate(globexFirst).reset;
    assert.deepEqual(counters(globexFirst), [5000, 4999, 1]);
    assert.ok(globexReset >= dateOf(globexFirst) + 3599 && globexReset <= dateOf(globexFirst) + 3602, "installation 2's window began with its first call");
    assert.ok(globexReset - acmeReset >= 1795, `installation 2 resets ${globexReset - acmeReset} s after installation 1`);
    const acmeLater = await acme.call("GET", "/repos/acme/app/actions/runners");
    assert.deepEqual([rate(acmeLater).reset, rate(acmeLater).used], [acmeReset, 2], "installation 1's window goes on");
    fake.inject({ route: RUNNERS, status: 403, times: 1 });
    assert.equal(rate(await globex.call("GET", "/repos/globex/app/actions/runners")).reset, globexReset, "a primary limit: the caller's reset");

    fake.setClockSkew(-7200);
    for (const [client, owner] of [[acme, "acme"], [globex, "globex"]] as const) {
      const res = await client.call("GET", `/repos/${owner}/app/actions/runners`);
      const { reset, used } = rate(res);
      assert.equal(used, 1, "a new window on the new time");
      assert.ok(reset >= dateOf(res) && reset <= dateOf(res) + 3602, `reset ${reset - dateOf(res)} s after the fake's Date`);
    }
  });
});
