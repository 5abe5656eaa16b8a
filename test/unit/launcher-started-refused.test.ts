/**
 * A launch whose container has started when Redis begins to refuse writes (out of memory under
 * noeviction, as a full Redis does; a replica promoted late in a failover answers READONLY the
 * same way), against a Redis of the test's own, the fake GitHub through the real client and the
 * real Docker engine behind a proxy that holds the start until Redis refuses (nothing of ours
 * stubbed). The runner is running and may be handed a job at any moment: the launch must not
 * tear it down for a record that could not be moved from `starting` to `idle`. Its watch moves it
 * once Redis takes writes again, so the status does not show it starting until a job's webhook.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { START_CONTAINER, startDockerProxy } from "../helpers/docker-proxy.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis } from "../helpers/redis.ts";
import { containersOf, docker, fakeRunnerPool, removeContainersOf } from "../helpers/system.ts";
import { githubFor } from "../helpers/github.ts";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { Launcher } from "../../src/worker/launcher.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";

const host = `launcher-started-${process.pid}`;
after(() => removeContainersOf(host));

test("a runner whose start Redis refuses to note (writes refused right after its container started) is launched and watched, not torn down, and its watch notes the start once Redis takes writes again", async () => {
  // Its own Redis: it is made to refuse writes, which a shared one must not.
  const redis = await startRedis({ own: true });
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const conn = redisConnection(redis.url);
  const sub = redisConnection(redis.url);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const runners = new RunnerStore(conn, redis.prefix);
  const metrics = new Metrics({ processMetrics: false });
  const github = githubFor(fake, { metrics });
  const driver = new DockerodeDriver({ socketPath: proxy.socketPath });
  const launcher = new Launcher({ host, namePrefix: "jitrunner", completedGraceSeconds: 5, driver, github, runners, events: new RunnerEvents(sub, `${redis.prefix}:events`), metrics });
  const pool = testConfig({ pools: [fakeRunnerPool(fake)] }).pools[0]!;
  const target = { installationId: fake.installationId, owner: "acme", repo: "app", demandId: "4343-1" };
  const hang = proxy.hang("POST", START_CONTAINER);
  const shutdown = new AbortController();
  try {
    const launching = launcher.launch(target, pool, createLogger("debug", sink));
    await waitFor(() => hang.held >= 1, 60_000, "the start at the engine");
    await conn.config("SET", "maxmemory", "1");
    await assert.rejects(conn.set(`${redis.prefix}:probe`, "1"), /OOM/, "Redis refuses writes now");
    hang.release();
    const tracked = await launching;
    assert.equal(tracked.state, "idle");
    const [container] = await containersOf(host);
    assert.equal(container?.State, "running", "its container runs on");
    assert.equal(container.Id, tracked.record.containerId);
    assert.equal(fake.runners().length, 1, "its registration is kept");
    const record = await runners.get(tracked.record.name);
    assert.equal(record?.containerId, tracked.record.containerId, "its record is kept");
    assert.equal(record?.state, "starting", "the refused write left it starting");
    assert.ok(
      lines.some((l) => l.includes('"level":40') && l.includes("noting the runner's start in Redis failed") && l.includes("OOM")),
      `a warning says so: ${lines.join("")}`,
    );

    // Watched as any launched runner, Redis still refusing: the watch's note of the start fails
    // too, and is tried again at its next read of the record; once Redis takes writes, it is idle.
    const watchLines: string[] = [];
    const watchSink = new Writable({
      write(chunk: Buffer, _enc, done) {
        watchLines.push(chunk.toString());
        done();
      },
    });
    const watching = launcher.watch(tracked, { ...pool, idleTimeoutSeconds: 600, startTimeoutSeconds: 600 }, createLogger("debug", watchSink).child({ runner: tracked.record.name }), shutdown.signal);
    await waitFor(() => watchLines.some((l) => l.includes("noting the runner's start in Redis failed again") && l.includes("OOM")), 30_000, "the watch's refused note of the start");
    assert.equal((await runners.get(tracked.record.name))?.state, "starting", "still starting while Redis refuses writes");
    await conn.config("SET", "maxmemory", "0");
    await waitFor(async () => (await runners.get(tracked.record.name))?.state === "idle", 30_000, "the record idle once Redis takes writes again");
    assert.ok(watchLines.some((l) => l.includes('"level":30') && l.includes("runner's start noted in Redis after all")), `said at info: ${watchLines.join("")}`);

    // Its container's end ends the watch.
    await docker.getContainer(container.Id).kill();
    assert.equal(await watching, "exited");
    await launcher.teardown(tracked.record, "exited", createLogger("silent"));
    assert.deepEqual(await containersOf(host), []);
  } finally {
    shutdown.abort();
    hang.release();
    await conn.config("SET", "maxmemory", "0").catch(() => undefined);
    github.close();
    await fake.close();
    await proxy.close();
    conn.disconnect();
    sub.disconnect();
    await redis.stop();
  }
});
