/**
 * A launch whose runner record is removed while it goes on (a sweep of its host taken for gone, a
 * teardown), against a real Redis, the fake GitHub through the real client and the real Docker
 * engine behind a proxy that can hold a call (nothing of ours stubbed): the launch is undone as a failed one (registration and container deleted), and the
 * record is not written back as a partial hash that nothing indexes or expires.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { callsTo, containersOf, RUNNER_IMAGE, workersForFile } from "../helpers/system.ts";
import { CREATE_CONTAINER, startDockerProxy } from "../helpers/docker-proxy.ts";
import { waitFor } from "../helpers/process.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { Launcher, RecordGone } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { githubFor } from "../helpers/github.ts";

const { redis, hosts } = workersForFile();
const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";

/**
 * A launcher whose record is removed, as a sweep of a gone host removes one, at `when`: while
 * GitHub registers the runner (the fake holds its answer), or while the engine creates its
 * container (a proxy in front of the real engine holds the create until the record is gone).
 */
async function launchLosingRecord(tag: string, when: "registering" | "created") {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const host = `launcher-${tag}-${process.pid}`;
  hosts.push(host);
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const prefix = `${redis.prefix}-${tag}`;
  const runners = new RunnerStore(conn, prefix);
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const driver = new DockerodeDriver({ socketPath: proxy.socketPath });
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver, github, runners, events: new RunnerEvents(sub, `${prefix}:events`), metrics });
  const pool = testConfig({ pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: RUNNER_IMAGE, networkMode: "none" }] }).pools[0]!;
  const target = { installationId: fake.installationId, owner: "acme", repo: "app", demandId: "4242-1" };
  const recorded = async () => (await conn.keys(`${prefix}:runner:*`)).map((k) => k.slice(`${prefix}:runner:`.length));
  if (when === "registering") fake.inject({ route: JIT, delayMs: 3000, times: 1 });
  const hang = when === "created" ? proxy.hang("POST", CREATE_CONTAINER) : undefined;
  try {
    const launching = launcher.launch(target, pool, createLogger("silent")).then(
      () => assert.fail("the launch went on without its record"),
      (e: unknown) => e,
    );
    const [name] = await waitFor(async () => {
      const names = await recorded();
      return names.length === 1 && names;
    }, 10_000, "the launch's record written");
    if (hang) await waitFor(() => hang.held >= 1, 30_000, "the create at the engine");
    else assert.equal(callsTo(fake, JIT), 0, "GitHub has not answered the registration yet");
    await runners.remove({ name: name!, host, demandId: "4242-1" }, false);
    hang?.release();
    const err = await launching;
    return { err, fake, keys: await recorded(), starts: proxy.starts, created: hang?.held ?? 0, deleted: callsTo(fake, DELETE, "DELETE"), containers: await containersOf(host), tracked: launcher.tracked.size, all: await runners.listAll() };
  } finally {
    hang?.release();
    github.close();
    await fake.close();
    await proxy.close();
    conn.disconnect();
    sub.disconnect();
  }
}

for (const when of ["registering", "created"] as const) {
  test(`a launch whose record is removed ${when === "registering" ? "while GitHub registers its runner" : "while the engine creates its container"} is undone: registration and container deleted, no partial record written`, async () => {
    const { err, fake, keys, starts, created, deleted, containers, tracked, all } = await launchLosingRecord(`gone-${when}`, when);
    assert.ok(err instanceof RecordGone, String(err));
    assert.equal(starts, 0, "no container started");
    assert.equal(created, when === "registering" ? 0 : 1, when === "registering" ? "no container created" : "its container created");
    assert.equal(deleted, 1, "the registration deleted by its id");
    assert.equal(fake.runners().length, 0);
    assert.deepEqual(containers, [], "no container left");
    assert.deepEqual(keys, [], "no record written back");
    assert.deepEqual(all, []);
    assert.equal(tracked, 0);
  });
}
