/**
 * Warm runners and public repositories, through the real composition root against the fake GitHub,
 * a real Redis and the real Docker engine (DinD runner containers). A warm runner registers before
 * any job names a repository, and GitHub hands it any job of its repository whose labels match, a
 * fork's pull request included: so a pool that does not allow public repositories registers none
 * on a public one, and removes those it has once the repository turns public.
 *
 * One system for the file, with a warm pool per case, each on a repository of its own: `default`
 * on a public one, `allowed` (allowPublicRepositories) on another public one, and `turned` on a
 * private one that the last test makes public.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
const REPO = "/repos/{owner}/{repo}";
const MIN_IDLE = 2;
/** Each pool's warm repository (all of owner acme). */
const WARM_REPO = { default: "site", allowed: "docs", turned: "app" } as const;
type Pool = keyof typeof WARM_REPO;

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("warm-public");

function start(): Promise<SystemUnderTest> {
  const pool = (name: Pool, over: Record<string, unknown> = {}) =>
    fakeRunnerPool(fake, { name, minIdle: MIN_IDLE, warm: { installationId: fake.installationId, owner: "acme", repo: WARM_REPO[name] }, ...over });
  const pools = [pool("default"), pool("allowed", { allowPublicRepositories: true }), pool("turned")];
  return startSystem("worker", fake, scopedRedis(redis, "warm-public"), host, {
    pools,
    // Room for every pool's warm runners (a refusal that fails must not show as another pool's
    // shortage), besides the slot each pool keeps free for its demand.
    worker: { hostId: host, capacity: pools.length * (MIN_IDLE + 1), heartbeatSeconds: 1, reconcileIntervalSeconds: 2 },
  });
}

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.setRepositoryPrivate("acme", WARM_REPO.default, false);
  fake.setRepositoryPrivate("acme", WARM_REPO.allowed, false);
  sys = await start();
});
after(async () => {
  await sys?.close();
  await fake?.close();
  await removeContainersOf(host);
  await redis?.stop();
});

/** REST calls to `route` about the pool's warm repository. */
function callsFor(pool: Pool, route: string, method?: string): number {
  const about = new RegExp(`/repos/acme/${WARM_REPO[pool]}(/|\\?|$)`);
  return fake.requests.filter((q) => q.route === route && (!method || q.method === method) && about.test(q.path)).length;
}
/** The pool's containers on the engine, running or not. */
async function containersOfPool(pool: Pool) {
  return (await containersOf(host)).filter((c) => c.Labels["dev.jitrunner.pool"] === pool);
}
/** The pool's runners registered at the fake GitHub. */
function runnersOf(pool: Pool) {
  return fake.runners().filter((x) => x.name.includes(`-${pool}-`));
}

test("a repository pool whose warm repository is public registers no warm runner: asked once, said once, shown as refused (public_repository), not as failed launches; the worker stays ready", async () => {
  await waitFor(() => /warm repository is public/.test(sys.logs()), 15_000, "the refusal logged");
  // Several warm-loop ticks' worth: nothing is launched, GitHub is not asked again.
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(callsFor("default", JIT), 0, "no warm runner registered");
  assert.deepEqual(await containersOfPool("default"), [], "no container created");
  assert.equal(callsFor("default", REPO, "GET"), 1, "the repository's visibility asked once, not per tick");
  assert.equal((sys.logs().match(/warm repository is public/g) ?? []).length, 1, "said once");
  const metrics = await (await fetch(`${sys.url}/metrics`)).text();
  // Exact lines: a missing series must fail these, not read as 0.
  assert.match(metrics, /^jitrunner_warm_refused\{pool="default",reason="public_repository"\} 1$/m);
  assert.match(metrics, /^jitrunner_warm_refused\{pool="default",reason="visibility_unknown"\} 0$/m);
  assert.match(metrics, /^jitrunner_warm_refused\{pool="turned",reason="public_repository"\} 0$/m, "a private warm repository's pool is not refused");
  assert.doesNotMatch(metrics, /^jitrunner_launch_failures_total\{pool="default"[^}]*\} [1-9]/m, "a refusal is no failed launch: it would page as every launch failing");
  const ready = await fetch(`${sys.url}/readyz`);
  assert.equal(ready.status, 200, "a refused warm pool does not keep the worker from serving demand");
});

test("the same pool with allowPublicRepositories registers its warm runners on the public repository, without asking GitHub", async () => {
  await waitFor(async () => (await containersOfPool("allowed")).length === MIN_IDLE, 30_000, `${MIN_IDLE} warm runners started`);
  assert.equal(callsFor("allowed", JIT), MIN_IDLE);
  assert.equal(callsFor("allowed", REPO, "GET"), 0, "a pool that allows public repositories costs no call");
});

test("warm runners of a repository made public later are deregistered and removed, and none is launched in their place", async () => {
  // Private: warm runners registered and running.
  await waitFor(
    async () => (await containersOfPool("turned")).filter((c) => c.State === "running").length === MIN_IDLE && runnersOf("turned").length === MIN_IDLE,
    30_000,
    `${MIN_IDLE} warm runners started`,
  );
  const warmNames = new Set(runnersOf("turned").map((r) => r.name));
  assert.equal(callsFor("turned", JIT), MIN_IDLE);

  // Made public. A stopped worker leaves its runners running; the next one adopts them as
  // spares, asks GitHub afresh (its answer is kept 5 minutes: a running worker notices within
  // that), and removes them.
  await sys.close();
  fake.setRepositoryPrivate("acme", WARM_REPO.turned, false);
  sys = await start();
  await waitFor(async () => (await containersOfPool("turned")).length === 0 && runnersOf("turned").length === 0, 20_000, "the warm runners deregistered and removed");
  const logs = sys.logs();
  for (const name of warmNames) {
    assert.match(logs, new RegExp(`"runner":"${name}"[^\\n]*"msg":"warm runner removed: GitHub could hand it a public repository's job"`));
  }
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(callsFor("turned", JIT), MIN_IDLE, "none launched in their place");
  assert.deepEqual(await containersOfPool("turned"), []);
});
