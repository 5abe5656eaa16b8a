/**
 * A launch whose runner record is removed while it goes on (a sweep of its host taken for gone, a
 * teardown), against a real Redis, the fake GitHub through the real client and the real Docker
 * engine: the launch is undone as a failed one (registration and container deleted), and the
 * record is not written back as a partial hash that nothing indexes or expires.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { callsTo, containersOf, RUNNER_IMAGE, workersForFile } from "../helpers/system.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import type { RunnerDriver } from "../../src/docker/driver.ts";
import type { GitHubClient } from "../../src/github/client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { Launcher, RecordGone } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { githubFor } from "../helpers/github.ts";

const { redis, hosts } = workersForFile();
const DELETE = "/repos/{owner}/{repo}/actions/runners/{runner_id}";

/**
 * `real` with one method replaced (none: `name` undefined), the others called on `real` itself (its
 * private fields); the name of each method called is pushed to `calls`.
 */
function overriding<T extends object>(real: T, name: keyof T | undefined, fn: unknown, calls: string[] = []): T {
  return new Proxy(real, {
    get(target, prop) {
      const v = prop === name ? fn : (Reflect.get(target, prop, target) as unknown);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        calls.push(String(prop));
        return (v as (...a: unknown[]) => unknown).apply(prop === name ? undefined : target, args);
      };
    },
  });
}

/**
 * A launcher whose record is removed, as a sweep of a gone host removes one, at `when`: while
 * GitHub registers the runner, or once its container is created.
 */
async function launchLosingRecord(tag: string, when: "registering" | "created") {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = `launcher-${tag}-${process.pid}`;
  hosts.push(host);
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const prefix = `${redis.prefix}-${tag}`;
  const runners = new RunnerStore(conn, prefix);
  const metrics = new Metrics({ processMetrics: false });
  const real = githubFor(fake, { metrics });
  const sweep = (name: string) => runners.remove({ name, host, demandId: "4242-1" }, false);
  const github: GitHubClient =
    when === "registering"
      ? overriding<GitHubClient>(real, "generateJitConfig", (async (scope, req, opts) => {
          await sweep(req.name);
          return real.generateJitConfig(scope, req, opts);
        }) satisfies GitHubClient["generateJitConfig"])
      : real;
  const realDriver = new DockerodeDriver({});
  const driverCalls: string[] = [];
  const driver: RunnerDriver = overriding<RunnerDriver>(
    realDriver,
    when === "created" ? "create" : undefined,
    (async (spec) => {
      const id = await realDriver.create(spec);
      await sweep(spec.name);
      return id;
    }) satisfies RunnerDriver["create"],
    driverCalls,
  );
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver, github, runners, events: new RunnerEvents(sub, `${prefix}:events`), metrics });
  const pool = testConfig({ pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: RUNNER_IMAGE, networkMode: "none" }] }).pools[0]!;
  const target = { installationId: fake.installationId, owner: "acme", repo: "app", demandId: "4242-1" };
  try {
    const err = await launcher.launch(target, pool, createLogger("silent")).then(
      () => assert.fail("the launch went on without its record"),
      (e: unknown) => e,
    );
    const keys = await conn.keys(`${prefix}:runner:*`);
    return { err, fake, keys, driverCalls, deleted: callsTo(fake, DELETE, "DELETE"), containers: await containersOf(host), tracked: launcher.tracked.size, all: await runners.listAll() };
  } finally {
    real.close();
    await fake.close();
    conn.disconnect();
    sub.disconnect();
  }
}

for (const when of ["registering", "created"] as const) {
  test(`a launch whose record is removed ${when === "registering" ? "while GitHub registers its runner" : "once its container is created"} is undone: registration and container deleted, no partial record written`, async () => {
    const { err, fake, keys, driverCalls, deleted, containers, tracked, all } = await launchLosingRecord(`gone-${when}`, when);
    assert.ok(err instanceof RecordGone, String(err));
    assert.ok(!driverCalls.includes("start"), `no container started: ${driverCalls.join(", ")}`);
    if (when === "registering") assert.ok(!driverCalls.includes("create"), `no container created: ${driverCalls.join(", ")}`);
    assert.equal(deleted, 1, "the registration deleted by its id");
    assert.equal(fake.runners().length, 0);
    assert.deepEqual(containers, [], "no container left");
    assert.deepEqual(keys, [], "no record written back");
    assert.deepEqual(all, []);
    assert.equal(tracked, 0);
  });
}
