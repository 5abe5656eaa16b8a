/**
 * A worker asks GitHub for its App (`GET /app`, with the App's JWT) once it starts, without
 * waiting for the answer: a wrong App id or private key is said at once, at error, and keeps the
 * process unready, instead of being found by the first job's launch. GitHub failing to answer is
 * no such problem. Real composition root, the fake GitHub (which checks App JWTs as GitHub does),
 * a real Redis and Docker engine.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";

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
