/**
 * Organization pools whose runner group admits selected repositories only, through the real
 * system (`all`, fake GitHub, real Redis, the real Docker engine). GitHub never hands a runner of
 * such a group a job of another repository: registered for one, it would idle out, and each try of
 * the demand would launch another. So the demand of such a job fails for good before anything is
 * registered, with an error that says what to change, and the worker stays ready; a job of an
 * admitted repository is served.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { callsTo, containersOf, demandIn, fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const ORG_JIT = "/orgs/{org}/actions/runners/generate-jitconfig";
const GROUP_REPOS = "/orgs/{org}/actions/runner-groups/{runner_group_id}/repositories";

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("group-repos");

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.addRunnerGroup("app-only", { repositories: ["acme/app"] });
  sys = await startSystem("all", fake, redis, host, {
    // A slot kept free for each pool's demand, and one for the warm runner.
    worker: { hostId: host, capacity: 3, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    pools: [
      fakeRunnerPool(fake, { name: "app", labels: ["self-hosted", "app"], scope: "organization", runnerGroup: "app-only" }),
      fakeRunnerPool(fake, { name: "warm", labels: ["self-hosted", "warm"], scope: "organization", runnerGroup: "app-only", minIdle: 1, warm: { installationId: fake.installationId, owner: "acme" } }),
    ],
  });
  // The warm pool's warm runner (launched once its pool's look at the group allowed it), before
  // the tests count the app pool's calls.
  await waitFor(() => fake.runners().some((r) => r.status === "online" && r.labels.includes("warm") && !r.busy), 60_000, "a warm runner online");
});

after(async () => {
  await sys?.close();
  await removeContainersOf(host);
  await fake?.close();
  await redis?.stop();
});

const metrics = async () => (await fetch(`${sys.url}/metrics`)).text();

function callsSince(route: string, from: number): number {
  return fake.requests.slice(from).filter((r) => r.route === route).length;
}

test("a job of a repository the pool's runner group does not admit: nothing registered, its demand fails for good saying why, the worker stays ready", { timeout: 60_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "other", labels: ["self-hosted", "app"] });
  const failed = await demandIn(redis, `${job.id}-1`, "failed", 30_000, "app");
  assert.equal(failed.attempts, 1, "failed for good at its first try, no attempt spent on launches");
  assert.equal(metricSample(await metrics(), "jitrunner_launch_failures_total", 'pool="app",reason="E_RUNNER_GROUP_REPOSITORY"'), 1);
  assert.equal(metricSample(await metrics(), "jitrunner_demand_failed_total", 'pool="app"'), 1);
  assert.equal(callsSince(ORG_JIT, from), 0, "no runner registered");
  assert.deepEqual((await containersOf(host)).filter((c) => c.Labels["dev.jitrunner.pool"] === "app"), [], "no container but the warm pool's");
  assert.equal(callsSince(GROUP_REPOS, from), 1, "the group's repositories asked of GitHub once");
  assert.match(
    sys.logs(),
    /"retryable":false[^\n]*runner group app-only of organization acme does not admit repository acme\/other \(it admits selected repositories only\): GitHub would never hand this job to its runners; add the repository to the group, or serve its jobs with another pool than app/,
  );
  assert.match(await (await fetch(`${sys.url}/`)).text(), /E_RUNNER_GROUP_REPOSITORY/, "the status page lists the failure");
  assert.equal((await fetch(`${sys.url}/readyz`)).status, 200, "a refusal of the config leaves the worker ready for other jobs");
  assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued", "the job still waits, for a runner the group admits");
});

test("a job of the repository the group admits is served, the group's answer kept", { timeout: 120_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "app"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 90_000, "the job served");
  assert.equal(callsSince(ORG_JIT, from), 1, "one registration");
  assert.equal(callsSince(GROUP_REPOS, from), 0, "the answer of the first job's check kept");
  assert.equal((await fetch(`${sys.url}/readyz`)).status, 200);
});

test("a warm runner of the group is not adopted for a job of a repository the group does not admit: the demand fails at once, the runner stays warm", { timeout: 60_000 }, async () => {
  const warm = fake.runners().filter((r) => r.labels.includes("warm")).map((r) => r.name);
  const job = await fake.queueJob({ owner: "acme", repo: "other", labels: ["self-hosted", "warm"] });
  // Adopted, the runner would have waited for a job GitHub never hands it, up to its idle timeout.
  await demandIn(redis, `${job.id}-1`, "failed", 30_000, "warm");
  assert.equal(metricSample(await metrics(), "jitrunner_launch_failures_total", 'pool="warm",reason="E_RUNNER_GROUP_REPOSITORY"'), 1);
  assert.doesNotMatch(sys.logs(), new RegExp(`"jobId":${job.id}[^\n]*demand adopted`), "not adopted");
  assert.deepEqual(
    fake.runners().filter((r) => r.labels.includes("warm")).map((r) => r.name),
    warm,
    "the warm runner still there, no other registered",
  );
});
