/**
 * Warm runners and public repositories, through the real composition root against the fake GitHub,
 * a real Redis and a fake Docker engine (test/helpers/fake-engine.ts: no real engine is touched).
 * A warm runner registers before any job names a repository, and GitHub hands it any job of its
 * repository whose labels match, a fork's pull request included: so a pool that does not allow
 * public repositories registers none on a public one, and removes those it has once the
 * repository turns public.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { startFakeEngine, type FakeEngine } from "../helpers/fake-engine.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { callsTo, fakeRunnerPool, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const REPO = "/repos/{owner}/{repo}";
const MIN_IDLE = 2;

let redis: TestRedis;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

async function warmSystem(tag: string, fake: FakeGitHub, engine: FakeEngine, pool: Record<string, unknown> = {}) {
  const host = uniqueHost(tag);
  const r = scopedRedis(redis, tag);
  const start = () =>
    startSystem("worker", fake, r, host, {
      pools: [fakeRunnerPool(fake, { minIdle: MIN_IDLE, warm: { installationId: fake.installationId, owner: "acme", repo: "app" }, ...pool })],
      worker: { hostId: host, capacity: MIN_IDLE + 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 2, docker: { socketPath: engine.socketPath } },
    });
  return { host, r, start };
}

test("a repository pool whose warm repository is public registers no warm runner: asked once, said once, counted as public_repository; the worker stays ready", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const engine = await startFakeEngine();
  fake.setRepositoryPrivate("acme", "app", false);
  const { start } = await warmSystem("warm-public", fake, engine);
  const sys = await start();
  try {
    await waitFor(() => /warm repository is public/.test(sys.logs()), 15_000, "the refusal logged");
    // Several warm-loop ticks' worth: nothing is launched, GitHub is not asked again.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(callsTo(fake, JIT), 0, "no warm runner registered");
    assert.equal(engine.creates, 0, "no container created");
    assert.equal(callsTo(fake, REPO, "GET"), 1, "the repository's visibility asked once, not per tick");
    assert.equal((sys.logs().match(/warm repository is public/g) ?? []).length, 1, "said once");
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    assert.equal(metricSample(metrics, "jitrunner_launch_failures_total", 'pool="default",reason="public_repository"'), 1);
    const ready = await fetch(`${sys.url}/readyz`);
    assert.equal(ready.status, 200, "a refused warm pool does not keep the worker from serving demand");
  } finally {
    await sys.close();
    await engine.close();
    await fake.close();
  }
});

test("the same pool with allowPublicRepositories registers its warm runners on the public repository, without asking GitHub", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const engine = await startFakeEngine();
  fake.setRepositoryPrivate("acme", "app", false);
  const { start } = await warmSystem("warm-allowed", fake, engine, { allowPublicRepositories: true });
  const sys = await start();
  try {
    await waitFor(() => engine.containers.size === MIN_IDLE, 15_000, `${MIN_IDLE} warm runners started`);
    assert.equal(callsTo(fake, JIT), MIN_IDLE);
    assert.equal(callsTo(fake, REPO, "GET"), 0, "a pool that allows public repositories costs no call");
  } finally {
    await sys.close();
    await engine.close();
    await fake.close();
  }
});

test("warm runners of a repository made public later are deregistered and removed, and none is launched in their place", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const engine = await startFakeEngine();
  const { start } = await warmSystem("warm-turned-public", fake, engine);
  let sys = await start();
  try {
    // Private: warm runners registered and running.
    await waitFor(() => engine.containers.size === MIN_IDLE && fake.runners().length === MIN_IDLE, 15_000, `${MIN_IDLE} warm runners started`);
    const warmNames = new Set(fake.runners().map((r) => r.name));
    assert.equal(callsTo(fake, JIT), MIN_IDLE);

    // Made public. A stopped worker leaves its runners running; the next one adopts them as
    // spares, asks GitHub afresh (its answer is kept 5 minutes: a running worker notices within
    // that), and removes them.
    await sys.close();
    fake.setRepositoryPrivate("acme", "app", false);
    sys = await start();
    await waitFor(() => engine.containers.size === 0 && fake.runners().length === 0, 20_000, "the warm runners deregistered and removed");
    const logs = sys.logs();
    for (const name of warmNames) {
      assert.match(logs, new RegExp(`"runner":"${name}"[^\\n]*"msg":"warm runner removed: GitHub could hand it a public repository's job"`));
    }
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(callsTo(fake, JIT), MIN_IDLE, "none launched in their place");
    assert.equal(engine.containers.size, 0);
  } finally {
    await sys.close();
    await engine.close();
    await fake.close();
  }
});
