/**
 * A warm repository made public while jitrunner runs (`all`, against the fake GitHub, a real Redis
 * and the real Docker engine): GitHub's `repository` `publicized` webhook reaches the server, which
 * tells every worker; the worker asks GitHub again at once and removes its idle warm runners there,
 * within seconds rather than at its next 5-minute check. So too while its warm loop is busy
 * launching: the launch under way ends, no other starts, and the idle ones go at once. Other
 * repository events change nothing, and are counted under their own event label.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { examplesOf, signedHeaders } from "../helpers/webhooks.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, scopedRedis, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const REPO = "/repos/{owner}/{repo}";
const MIN_IDLE = 2;

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("warm-publicized");
/** The second system's (the busy warm loop's test): its own fake GitHub, which sends it its webhooks. */
let busyFake: FakeGitHub | undefined;
let busySys: SystemUnderTest | undefined;
const busyHost = uniqueHost("warm-publicized-busy");

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  sys = await startSystem("all", fake, scopedRedis(redis, "warm-publicized"), host, {
    pools: [fakeRunnerPool(fake, { name: "warm", minIdle: MIN_IDLE, warm: { installationId: fake.installationId, owner: "acme", repo: "app" } })],
    worker: { hostId: host, capacity: MIN_IDLE + 1, heartbeatSeconds: 1, reconcileIntervalSeconds: 2 },
  });
});
after(async () => {
  await sys?.close();
  await fake?.close();
  await busySys?.close();
  await busyFake?.close();
  await removeContainersOf(host);
  await removeContainersOf(busyHost);
  await redis?.stop();
});

function visibilityAsks(): number {
  return fake.requests.filter((q) => q.route === REPO && q.method === "GET" && q.path.endsWith("/repos/acme/app")).length;
}

test("the `publicized` webhook has the idle warm runners of that repository removed within seconds, and none launched after", { timeout: 120_000 }, async () => {
  await waitFor(
    async () => (await containersOf(host)).filter((c) => c.State === "running").length === MIN_IDLE && fake.runners().length === MIN_IDLE,
    60_000,
    `${MIN_IDLE} warm runners started`,
  );
  const asked = visibilityAsks();
  const names = fake.runners().map((r) => r.name);

  assert.equal(await fake.publicize("acme", "app"), 202);
  // The limit is the assertion: 30 s is well before the worker's next 5-minute visibility check.
  await waitFor(
    async () => (await containersOf(host)).length === 0 && fake.runners().length === 0,
    30_000,
    "the warm runners deregistered and removed within 30 s of the webhook, well before the 5-minute check",
  );
  assert.equal(visibilityAsks(), asked + 1, "GitHub asked once more, on the webhook");
  const logs = sys.logs();
  assert.match(logs, /"msg":"repository made public: warm runners registered on it are rechecked"/);
  for (const name of names) assert.match(logs, new RegExp(`"runner":"${name}"[^\\n]*"msg":"warm runner removed: GitHub could hand it a public repository's job"`));

  await new Promise((r) => setTimeout(r, 3000));
  assert.deepEqual(await containersOf(host), [], "none launched in their place");
  const metrics = await (await fetch(`${sys.url}/metrics`)).text();
  assert.equal(metricSample(metrics, "jitrunner_webhook_deliveries_total", 'event="repository",action="publicized",outcome="warm_recheck"'), 1);
});

/** A signed `repository` delivery of `payload` to the running server. */
function deliver(payload: unknown): Promise<Response> {
  const body = JSON.stringify(payload);
  return fetch(`${sys.url}/webhooks/github`, { method: "POST", headers: signedHeaders("repository", body, WEBHOOK_SECRET), body });
}

test("other repository events are acknowledged and change nothing; one without a repository is refused 400", async () => {
  // GitHub's own example of a rename.
  const renamed = examplesOf("repository").find((e) => e.action === "renamed")!;
  const ok = await deliver(renamed);
  assert.equal(ok.status, 202);
  assert.deepEqual(await ok.json(), { outcome: "ignored_action" });
  const bad = await deliver({ action: "publicized" });
  assert.equal(bad.status, 400);
  assert.deepEqual(await bad.json(), { error: "not a valid repository payload" });
  const metrics = await (await fetch(`${sys.url}/metrics`)).text();
  assert.equal(metricSample(metrics, "jitrunner_webhook_deliveries_total", 'event="repository",action="renamed",outcome="ignored_action"'), 1);
  assert.equal(metricSample(metrics, "jitrunner_webhook_deliveries_total", 'event="repository",action="publicized",outcome="malformed"'), 1);
});

test("the `publicized` webhook while the warm loop is launching: the launch under way ends, no other starts, and the idle runner is removed meanwhile", { timeout: 180_000 }, async () => {
  const f = (busyFake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET }));
  const jit = "/repos/acme/busy/actions/runners/generate-jitconfig";
  // The first warm runner registers at once; the second's registration takes 25 s (under the
  // client's 30 s attempt limit): the warm loop is inside its launches, not at its check, then.
  f.inject({ route: jit, method: "POST", times: 1 });
  f.inject({ route: jit, method: "POST", times: 1, delayMs: 25_000 });
  busySys = await startSystem("all", f, scopedRedis(redis, "warm-publicized-busy"), busyHost, {
    pools: [fakeRunnerPool(f, { name: "busy", minIdle: 3, warm: { installationId: f.installationId, owner: "acme", repo: "busy" } })],
    worker: { hostId: busyHost, capacity: 4, heartbeatSeconds: 1, reconcileIntervalSeconds: 2 },
  });
  const registrations = () => f.requests.filter((q) => q.method === "POST" && q.path.endsWith(jit)).length;
  const asked = await waitFor(() => f.requests.find((q) => q.method === "GET" && q.path.endsWith("/repos/acme/busy")), 30_000, "the warm repository's visibility asked");
  const [first] = await waitFor(async () => {
    const up = (await containersOf(busyHost)).filter((c) => c.State === "running").length === 1 && f.runners();
    return up && up.length === 1 ? up : undefined;
  }, 60_000, "the first warm runner started");
  // A recheck asks GitHub again only 10 s after it last did (WARM_RECHECK_MIN_MS).
  await new Promise((r) => setTimeout(r, Math.max(0, asked.at + 10_500 - Date.now())));
  assert.equal(registrations(), 1, "the second warm runner's registration is still under way");

  assert.equal(await f.publicize("acme", "busy"), 202);
  await waitFor(() => !f.runners().some((r) => r.name === first!.name), 60_000, "the idle warm runner deregistered");
  assert.equal(registrations(), 1, "removed while the launch under way still waited for its registration, not after it");
  // The one under way registers, starts and goes too.
  await waitFor(async () => registrations() >= 2 && (await containersOf(busyHost)).length === 0 && f.runners().length === 0, 90_000, "every warm runner removed");
  await new Promise((r) => setTimeout(r, 3000));
  assert.deepEqual(await containersOf(busyHost), [], "none launched after");
  assert.ok(registrations() <= 2, `no warm runner registered after the webhook but the one under way (${registrations()} registrations)`);
  assert.match(busySys.logs(), /"msg":"warm runner removed: GitHub could hand it a public repository's job"/);
});
