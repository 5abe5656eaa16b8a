/**
 * A worker asks GitHub for its App (`GET /app`, with the App's JWT) once it starts, without
 * waiting for the answer: a wrong App id or private key is said at once, at error, and keeps the
 * process unready, instead of being found by the first job's launch. GitHub failing to answer is
 * no such problem. Real composition root, the fake GitHub (which checks App JWTs as GitHub does),
 * a real Redis and Docker engine. The check's recheck (every minute in a worker) is driven here
 * with a shorter interval: the real check and the real GitHub client against the fake.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { AppCredentialsCheck, APP_JWT_REFUSED } from "../../src/github/app-check.ts";
import { createLogger } from "../../src/logger.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { githubFor } from "../helpers/github.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

const REFUSED = "GitHub refuses the App's JWT: check github.appId and github.privateKeyFile";
const ACCEPTED = "GitHub accepts the App's JWT";
const RECHECK_MS = 200;
/** What GitHub answers a JWT signed by a key it does not hold for the App. */
const NOT_DECODED = { message: "A JSON web token could not be decoded", documentation_url: "https://docs.github.com/rest" };

const { redis, hosts } = workersForFile();

async function readyz(url: string): Promise<{ status: number; body: { status: string; problems: string[] } }> {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; problems: string[] } };
}

function logged(logs: string, msg: string): Array<{ level: number; err?: string }> {
  return logs
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as { level: number; msg: string; err?: string })
    .filter((l) => l.msg === msg);
}

test("a worker whose App id GitHub does not know: unready, said at error, from its start; the right one: ready", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("appid");
  hosts.push(host);
  const wrong = await startSystem("worker", fake, scopedRedis(redis, "appid-wrong"), host, { github: { appId: fake.appId + 1, apiUrl: fake.url } });
  try {
    const unready = await waitFor(async () => {
      const r = await readyz(wrong.url);
      return r.body.problems.includes("github: App JWT refused") && r;
    }, 30_000, "unready for the refused JWT");
    assert.equal(unready.status, 503);
    assert.deepEqual(unready.body, { status: "unready", problems: ["github: App JWT refused"] });
    const said = logged(wrong.logs(), "GitHub refuses the App's JWT: check github.appId and github.privateKeyFile");
    assert.equal(said.length, 1, wrong.logs().slice(-3000));
    assert.equal(said[0]!.level, 50);
    assert.match(said[0]!.err ?? "", /get app failed \(401\): 'Issuer' claim/);
  } finally {
    await wrong.close();
  }

  const host2 = uniqueHost("appid-ok");
  hosts.push(host2);
  const before = callsTo(fake, "/app", "GET");
  const right = await startSystem("worker", fake, scopedRedis(redis, "appid-right"), host2, { github: { appId: fake.appId, apiUrl: fake.url } });
  try {
    await waitFor(() => callsTo(fake, "/app", "GET") > before, 30_000, "the App asked for");
    await waitFor(async () => (await readyz(right.url)).status === 200, 30_000, "ready");
    assert.deepEqual(logged(right.logs(), "GitHub refuses the App's JWT: check github.appId and github.privateKeyFile"), []);
  } finally {
    await right.close();
    await fake.close();
  }
});

test("GitHub failing the App's check (5xx through the client's retries) is no start failure and no readiness problem: said at warn", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("app5xx");
  hosts.push(host);
  fake.inject({ route: "/app", method: "GET", status: 502, times: 20 });
  const sys = await startSystem("worker", fake, scopedRedis(redis, "app5xx"), host, { github: { appId: fake.appId, apiUrl: fake.url } });
  try {
    const warned = await waitFor(() => sys.logs().split("\n").find((l) => l.includes("could not check the App's credentials at GitHub (GET /app)")), 60_000, "the failed check said");
    assert.match(warned, /"level":40/);
    assert.match(warned, /get app failed \(502\)/);
    await waitFor(async () => (await readyz(sys.url)).status === 200, 30_000, "ready all the same");
  } finally {
    await sys.close();
    await fake.close();
  }
});

/** The real check, with the real client against `fake`, rechecking every RECHECK_MS; its log lines. */
function appCheck(fake: FakeGitHub): { check: AppCredentialsCheck; logs: () => string; close: () => void } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  const github = githubFor(fake);
  const check = new AppCredentialsCheck({ github, logger: createLogger("debug", sink), recheckMs: RECHECK_MS });
  return {
    check,
    logs: () => lines.join(""),
    close: () => {
      check.stop();
      github.close();
    },
  };
}

test("GitHub refusing the App's JWT, then taking it: unready while it refuses (said once at error), ready after the next recheck, and no check after that", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  // GitHub refuses GET /app until the test says otherwise.
  fake.inject({ route: "/app", method: "GET", status: 401, times: 1000, body: NOT_DECODED });
  const { check, logs, close } = appCheck(fake);
  try {
    check.start();
    await check.settled;
    assert.equal(check.problem, APP_JWT_REFUSED);
    // Rechecked while refused: each check asked GitHub once (a 401 no new JWT cures is not retried).
    await waitFor(() => callsTo(fake, "/app", "GET") >= 3, 30_000, "two rechecks");
    assert.equal(check.problem, APP_JWT_REFUSED, "still refused");
    const said = logged(logs(), REFUSED);
    assert.equal(said.length, 1, "the same refusal said once");
    assert.equal(said[0]!.level, 50);
    assert.match(said[0]!.err ?? "", /get app failed \(401\): A JSON web token could not be decoded/);

    fake.clearFaults({ route: "/app", method: "GET" });
    await waitFor(() => check.problem === undefined, 30_000, "the refusal cleared by a recheck");
    await check.settled;
    assert.equal(logged(logs(), ACCEPTED).length, 1, "said once, at info");
    assert.equal(logged(logs(), ACCEPTED)[0]!.level, 30);
    assert.equal(logged(logs(), REFUSED).length, 1, "no refusal said since");
    // A check that passed is the last: ten recheck intervals later, GitHub was asked nothing more.
    const calls = callsTo(fake, "/app", "GET");
    assert.deepEqual(fake.requests.filter((r) => r.route === "/app").at(-1)?.status, 200);
    await sleep(10 * RECHECK_MS);
    assert.equal(callsTo(fake, "/app", "GET"), calls);
  } finally {
    close();
    await fake.close();
  }
});

test("GitHub failing (5xx) after refusing the App's JWT does not make the process ready: the refusal lasts until a check passes", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.inject({ route: "/app", method: "GET", status: 401, times: 1000, body: NOT_DECODED });
  const { check, logs, close } = appCheck(fake);
  try {
    check.start();
    await check.settled;
    assert.equal(check.problem, APP_JWT_REFUSED);

    // Then GitHub fails every answer, until the test says otherwise: a check goes through the
    // client's retries and fails, said at warn.
    fake.clearFaults({ route: "/app", method: "GET" });
    fake.inject({ route: "/app", method: "GET", status: 502, times: 1000 });
    const warned = await waitFor(() => logged(logs(), `could not check the App's credentials at GitHub (GET /app); asked again in ${RECHECK_MS / 1000} s`)[0], 60_000, "a check GitHub failed");
    assert.equal(warned.level, 40);
    assert.match(warned.err ?? "", /get app failed \(502\)/);
    assert.equal(check.problem, APP_JWT_REFUSED, "GitHub failing says nothing of the credentials: still refused");

    fake.clearFaults({ route: "/app", method: "GET" });
    await waitFor(() => check.problem === undefined, 60_000, "the refusal cleared by a check that passed");
    assert.equal(logged(logs(), ACCEPTED).length, 1);
  } finally {
    close();
    await fake.close();
  }
});
