/**
 * A runner whose deletion at its idle timeout GitHub refuses once with a 422 that is not "busy"
 * (GitHub answers 422 to invalid or spammed requests too), for real (fake GitHub through the real
 * client, real Redis, a real container on the Docker engine): GitHub, asked then, says the runner
 * is not busy, so it is not recorded busy (a busy record would end its idle check, and nothing else
 * ends a busy runner GitHub still lists: it would hold its slot until a job came), and the next
 * idle check deletes it.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, ourContainer, registerRunner, uniqueHost, workersForFile } from "../helpers/system.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";
import { Launcher, type Tracked } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { githubFor } from "../helpers/github.ts";

const RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const { redis, hosts } = workersForFile();

test("a 422 at the idle timeout for a runner GitHub says is not busy: not recorded busy, and the next idle check deletes it", { timeout: 90_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("idle-422");
  hosts.push(host);
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const prefix = `${redis.prefix}-idle-422`;
  const runners = new RunnerStore(conn, prefix);
  const events = new RunnerEvents(sub, runners.eventsChannel);
  await events.start();
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const driver = new DockerodeDriver({});
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver, github, runners, events, metrics });
  const shutdown = new AbortController();
  try {
    const name = "jitrunner-default-00idle4221";
    const runner = await registerRunner(fake, name);
    // Its container: a sleep stands in for the runner program, idle, waiting for a job.
    const container = await ourContainer(host, name, { entrypoint: ["sleep", "300"] });
    await container.start();
    const record: RunnerRecord = {
      name, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: runner.id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: launcher.instance,
    };
    await runners.put(record);
    const tracked: Tracked = { record: { ...record }, state: "idle" };
    launcher.tracked.set(name, tracked);
    // The first deletion gets GitHub's "Validation Failed" 422; the runner is idle at GitHub.
    fake.inject({ route: RUNNER, method: "DELETE", status: 422, times: 1 });

    let ended: string | undefined;
    const watching = launcher.watch(tracked, { idleTimeoutSeconds: 1, startTimeoutSeconds: 600 }, createLogger("silent"), shutdown.signal).then((reason) => (ended = reason));
    await waitFor(() => callsTo(fake, RUNNER, "DELETE") >= 1, 15_000, "the deletion at the idle timeout");
    await sleep(1_000);
    assert.deepEqual(
      fake.requests.filter((r) => r.route === RUNNER).map((r) => `${r.method} ${r.status}`),
      ["DELETE 422", "GET 200"],
      "GitHub asked about the runner after the 422, and nothing more yet",
    );
    assert.equal((await runners.get(name))?.state, "idle", "not recorded busy: GitHub says it is not");
    assert.equal(tracked.state, "idle");
    assert.equal(ended, undefined, "watched on: the next idle check tries again");

    // The next idle check (30 s on) deletes it: the watch ends at the idle timeout.
    assert.equal(await watching, "idle_timeout");
    assert.deepEqual(
      fake.requests.filter((r) => r.route === RUNNER).map((r) => `${r.method} ${r.status}`),
      ["DELETE 422", "GET 200", "DELETE 204"],
    );
    assert.equal(fake.runners().length, 0, "its registration deleted");
    await launcher.teardown(tracked.record, ended ?? "", createLogger("silent"));
    assert.equal(await runners.get(name), undefined, "its record removed");
  } finally {
    shutdown.abort();
    github.close();
    await events.close();
    await fake.close();
    conn.disconnect();
  }
});
