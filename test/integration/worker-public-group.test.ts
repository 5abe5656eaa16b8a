/**
 * Organization pools and runner groups that admit public repositories, through the real system
 * (`all`, fake GitHub, real Redis, the real Docker engine). GitHub hands a runner of such a group
 * any job of matching labels from any repository the group admits, a fork's pull request
 * included, before the job it was launched for: so a pool that does not allow public repositories
 * launches no runner there, not even for a private repository's job; its demand fails for good
 * with an error that says what to change, before anything is registered. The same group with
 * `allowPublicRepositories` serves the job.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, startSystem, uniqueHost, type SystemUnderTest } from "../helpers/system.ts";

const ORG_JIT = "/orgs/{org}/actions/runners/generate-jitconfig";
const GROUPS = "/orgs/{org}/actions/runner-groups";

let redis: TestRedis;
let fake: FakeGitHub;
let sys: SystemUnderTest;
const host = uniqueHost("public-group");

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  fake.addRunnerGroup("open-ci", { allowsPublicRepositories: true });
  fake.addRunnerGroup("private-ci");
  sys = await startSystem("all", fake, redis, host, {
    worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2 },
    pools: [
      fakeRunnerPool(fake, { name: "open", labels: ["self-hosted", "open"], scope: "organization", runnerGroup: "open-ci" }),
      fakeRunnerPool(fake, { name: "trusted", labels: ["self-hosted", "trusted"], scope: "organization", runnerGroup: "open-ci", allowPublicRepositories: true }),
      fakeRunnerPool(fake, { name: "private", labels: ["self-hosted", "private"], scope: "organization", runnerGroup: "private-ci" }),
      fakeRunnerPool(fake, { name: "typo", labels: ["self-hosted", "typo"], scope: "organization", runnerGroup: "privat-ci" }),
    ],
  });
});

after(async () => {
  await sys?.close();
  await removeContainersOf(host);
  await fake?.close();
  await redis?.stop();
});

function calls(route: string, from: number): number {
  return fake.requests.slice(from).filter((r) => r.route === route).length;
}

test("a private repository's job for a pool whose runner group admits public repositories: no runner, the demand fails for good saying why", { timeout: 60_000 }, async () => {
  const from = fake.requests.length;
  await fake.queueJob({ owner: "acme", repo: "private-app", labels: ["self-hosted", "open"] });
  await waitFor(async () => metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_launch_failures_total", 'pool="open",reason="E_PUBLIC_RUNNER_GROUP"') === 1, 30_000, "the launch refused");
  assert.equal(calls(ORG_JIT, from), 0, "nothing registered");
  assert.deepEqual(await containersOf(host), [], "no container");
  assert.equal(calls(GROUPS, from), 1, "the group asked of GitHub once");
  const logs = sys.logs();
  assert.match(logs, /runner group admits public repositories: no runners launched in it, for jobs or warm/);
  assert.match(logs, /"retryable":false[^\n]*runner group open-ci of organization acme admits public repositories: any pull request could run on this pool's runners; restrict the group to private repositories, or set allowPublicRepositories on pool open/);
  const status = await (await fetch(`${sys.url}/`)).text();
  assert.match(status, /E_PUBLIC_RUNNER_GROUP/, "the status page lists the failure");
  assert.equal((await fetch(`${sys.url}/readyz`)).status, 200, "a refusal of the config leaves the worker ready for other jobs");
});

test("a group look-up that fails once is asked again on the launch's retry, and the job is served", { timeout: 120_000 }, async () => {
  const from = fake.requests.length;
  // A refusal the client does not retry itself (a 5xx it would): the launch's try fails.
  fake.inject({ route: GROUPS, status: 403, times: 1, body: { message: "Must have admin rights to Repository.", documentation_url: "https://docs.github.com/rest" } });
  const job = await fake.queueJob({ owner: "acme", repo: "private-app", labels: ["self-hosted", "private"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 90_000, "the job served");
  const statuses = fake.requests.slice(from).filter((r) => r.route === GROUPS).map((r) => r.status);
  assert.equal(statuses[0], 403);
  assert.ok(statuses.includes(200), `asked again after the failure (${statuses.join(", ")})`);
  assert.equal(calls(ORG_JIT, from), 1, "one registration");
  const failures = metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_launch_failures_total", 'pool="private",reason="E_RUNNER_GROUP_UNKNOWN"');
  assert.equal(failures, 1, "one failed try, the next one asked GitHub again (a failure kept a minute would have spent every try)");
});

test("a runner group the organization does not have fails the job's demand for good, saying so, with nothing registered", { timeout: 60_000 }, async () => {
  const from = fake.requests.length;
  await fake.queueJob({ owner: "acme", repo: "private-app", labels: ["self-hosted", "typo"] });
  await waitFor(async () => metricSample(await (await fetch(`${sys.url}/metrics`)).text(), "jitrunner_launch_failures_total", 'pool="typo",reason="E_RUNNER_GROUP_MISSING"') === 1, 30_000, "the launch refused");
  assert.equal(calls(ORG_JIT, from), 0, "nothing registered");
  assert.match(sys.logs(), /"retryable":false[^\n]*runner group privat-ci does not exist in organization acme: check runnerGroup or runnerGroupId of pool typo/);
});

test("the same group for a pool that allows public repositories: the job is served, its group not refused for admitting them", { timeout: 120_000 }, async () => {
  const from = fake.requests.length;
  const job = await fake.queueJob({ owner: "acme", repo: "private-app", labels: ["self-hosted", "trusted"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id)?.status === "completed", 90_000, "the job served");
  assert.equal(calls(ORG_JIT, from), 1);
  // One look-up at most: the job's check of which repositories the group admits, whose answer the
  // registration's look-up of the group by name takes (the id is kept per organization).
  assert.ok(calls(GROUPS, from) <= 1, `${calls(GROUPS, from)} group look-ups`);
});
