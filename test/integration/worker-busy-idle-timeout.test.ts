/**
 * A runner that GitHub says is busy when its idle timeout comes (422 on its deletion), its
 * `in_progress` webhook lost, for real (fake GitHub through the real client, real Redis, a real
 * container on the Docker engine): its watch records it busy in Redis, with the time, as the
 * webhook would have, so that the checks of busy runners (the leader's look at GitHub's runner
 * list, for one that hangs after its job) cover it; in memory only, it would stay idle there.
 */
import assert from "node:assert/strict";
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

const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const { redis, hosts } = workersForFile();

test("a runner GitHub refuses to delete at its idle timeout (busy, its webhooks lost) is recorded busy in Redis, with the time, and watched on", { timeout: 60_000 }, async () => {
  // No webhook URL: the `in_progress` delivery of the job the runner takes is lost.
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("busy-idle");
  hosts.push(host);
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const prefix = `${redis.prefix}-busy-idle`;
  const runners = new RunnerStore(conn, prefix);
  const events = new RunnerEvents(sub, runners.eventsChannel);
  await events.start();
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const driver = new DockerodeDriver({});
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver, github, runners, events, metrics });
  const shutdown = new AbortController();
  try {
    const name = "jitrunner-default-00busyidle1";
    const runner = await registerRunner(fake, name);
    // The runner takes a job at GitHub: GitHub now answers 422 to its deletion.
    await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: name });
    const acquired = await fetch(`${fake.url}/_fake/runners/${runner.id}/acquire`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: runner.token }),
    });
    assert.equal(acquired.status, 200);
    // Its container: a sleep stands in for the runner program, running its job.
    const container = await ourContainer(host, name, { entrypoint: ["sleep", "300"] });
    await container.start();
    const record: RunnerRecord = {
      name, pool: "default", host, state: "idle", installationId: fake.installationId, owner: "acme", repo: "app", runnerId: runner.id, containerId: container.id, demandId: "", createdAt: Date.now(), instance: launcher.instance,
    };
    await runners.put(record);
    const tracked: Tracked = { record: { ...record }, state: "idle" };
    launcher.tracked.set(name, tracked);

    const before = Date.now();
    let ended: string | undefined;
    const watching = launcher.watch(tracked, { idleTimeoutSeconds: 1, startTimeoutSeconds: 600 }, createLogger("silent"), shutdown.signal).then((reason) => (ended = reason));
    await waitFor(() => callsTo(fake, DELETE, "DELETE") >= 1, 15_000, "the deletion at the idle timeout");
    const stored = await waitFor(async () => {
      const r = await runners.get(name);
      return r?.state === "busy" && r;
    }, 5_000, "the record says busy").catch(async () => assert.fail(`the record says ${(await runners.get(name))?.state} after GitHub answered 422: busy in memory only`));
    assert.ok(stored.busyAt !== undefined && stored.busyAt >= before && stored.busyAt <= Date.now(), `busyAt ${stored.busyAt} is when GitHub said busy`);
    assert.equal(stored.runnerId, runner.id, "the rest of the record as it was");
    assert.equal(tracked.state, "busy");
    assert.equal(ended, undefined, "the runner is watched on: it runs its job");
    assert.equal(callsTo(fake, DELETE, "DELETE"), 1, "no deletion asked again");
    shutdown.abort();
    assert.equal(await watching, "shutdown");
  } finally {
    shutdown.abort();
    github.close();
    await events.close();
    await fake.close();
    conn.disconnect();
  }
});
