/**
 * Organization pools that allow public repositories, in a runner group that admits none, through
 * the real system (`all`, fake GitHub, real Redis, the real Docker engine). GitHub never hands a
 * public repository's job to a runner of a group whose repository access is "Private
 * repositories" (`visibility: private`), nor of one that does not allow public repositories (the
 * Default group's default): registered for it, the runner would idle out, and each try of the
 * demand would launch another. So the demand of such a job fails for good before anything is
 * registered, as for a repository a group of selected repositories does not list, with an error
 * that says what to change, and the worker stays ready; a private repository's job is served.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { containersOf, demandIn, fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const ORG_JIT = "/orgs/{org}/actions/runners/generate-jitconfig";
const GROUP_REPOS = "/orgs/{org}/actions/runner-groups/{runner_group_id}/repositories";

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("group-public");

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  // "Private repositories", though it says it allows public ones: GitHub admits none there.
  fake.addRunnerGroup("private-only", { privateRepositories: true, allowsPublicRepositories: true });
  fake.setRepositoryPrivate("acme", "site", false);
  const open = { scope: "organization", allowPublicRepositories: true };
  sys = await startSystem("all", fake, redis, host, {
    // A slot kept free for each pool's demand, and one for the warm runner.
    worker: { hostId: host, capacity: 4, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    pools: [
      fakeRunnerPool(fake, { name: "private", labels: ["self-hosted", "private"], runnerGroup: "private-only", ...open }),
      // The Default group: allows_public_repositories off, GitHub's default.
      fakeRunnerPool(fake, { name: "default", labels: ["self-hosted", "dflt"], ...open }),
      fakeRunnerPool(fake, { name: "warm", labels: ["self-hosted", "warm"], runnerGroup: "private-only", minIdle: 1, warm: { installationId: fake.installationId, owner: "acme" }, ...open }),
    ],
  });
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

test("a public repository's job for a pool whose runner group is \"Private repositories\": nothing registered, its demand fails for good saying why, the worker stays ready", { timeout: 60_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "site", labels: ["self-hosted", "private"] });
  const failed = await demandIn(redis, `${job.id}-1`, "failed", 30_000, "private");
  assert.equal(failed.attempts, 1, "failed for good at its first try");
  assert.equal(metricSample(await metrics(), "jitrunner_launch_failures_total", 'pool="private",reason="E_RUNNER_GROUP_REPOSITORY"'), 1);
  assert.equal(metricSample(await metrics(), "jitrunner_demand_failed_total", 'pool="private"'), 1);
  assert.equal(callsSince(ORG_JIT, from), 0, "no runner registered");
  assert.equal(callsSince(GROUP_REPOS, from), 0, "no listing: the repository's visibility came with its job");
  assert.deepEqual((await containersOf(host)).filter((c) => c.Labels["dev.jitrunner.pool"] === "private"), [], "no container but the warm pool's");
  assert.match(
    sys.logs(),
    /"retryable":false[^\n]*runner group private-only of organization acme does not admit public repository acme\/site \(its repository access is \\"Private repositories\\", or it does not allow public repositories\): GitHub would never hand this job to its runners; allow public repositories in the group, or serve the repository's jobs with another pool than private/,
  );
  assert.match(await (await fetch(`${sys.url}/`)).text(), /E_RUNNER_GROUP_REPOSITORY/, "the status page lists the failure");
  assert.equal((await fetch(`${sys.url}/readyz`)).status, 200, "a refusal of the config leaves the worker ready for other jobs");
  assert.equal(fake.jobs().find((j) => j.id === job.id)?.status, "queued", "the job still waits, for a runner a group admits it to");
});

test("a private repository's job in the same pool is served", { timeout: 120_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "private"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 90_000, "the job served");
  assert.equal(callsSince(ORG_JIT, from), 1, "one registration");
  assert.equal((await fetch(`${sys.url}/readyz`)).status, 200);
});

test("a public repository's job for a pool of the Default group, which does not allow public repositories: refused alike", { timeout: 60_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "site", labels: ["self-hosted", "dflt"] });
  await demandIn(redis, `${job.id}-1`, "failed", 30_000, "default");
  assert.equal(metricSample(await metrics(), "jitrunner_launch_failures_total", 'pool="default",reason="E_RUNNER_GROUP_REPOSITORY"'), 1);
  assert.equal(callsSince(ORG_JIT, from), 0, "no runner registered");
  assert.match(sys.logs(), /runner group 1 of organization acme does not admit public repository acme\/site/);
});

test("a warm runner of the group is not adopted for a public repository's job: the demand fails at once, the runner stays warm", { timeout: 60_000 }, async () => {
  const warm = fake.runners().filter((r) => r.labels.includes("warm")).map((r) => r.name);
  const job = await fake.queueJob({ owner: "acme", repo: "site", labels: ["self-hosted", "warm"] });
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
