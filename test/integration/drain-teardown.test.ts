/**
 * A drain whose last teardown fails, for real (fake GitHub, real Redis, a Docker proxy in front
 * of the real engine that refuses to remove the runner's container once, as an engine does that
 * cannot unmount what a Docker-in-Docker container left mounted): the drained worker exits, but
 * the host stays known while its runner is recorded, so that the fleet's host loops clean up,
 * counting it as a host whose worker stopped cleanly, not one gone. The drain is over all the
 * same: `jitrunner drain` waiting on it exits 0, and the host stays drained (its mark `left`), so
 * a worker started on it then stays up cordoned rather than draining again.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { startDockerProxy } from "../helpers/docker-proxy.ts";
import { waitFor } from "../helpers/process.ts";
import { containersOf, fakeRunnerPool, scopedRedis, startSystem, uniqueHost, workersForFile, type SystemUnderTest } from "../helpers/system.ts";
import { drainHost } from "../../src/cli/drain.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";

const { redis, hosts } = workersForFile();

/** A stream that keeps what is written to it. */
function sink(): { stream: Writable; text(): string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { stream, text: () => chunks.join("") };
}

/**
 * Runs a job on `sys`'s host, makes the engine refuse to remove its runner's container, and drains
 * the host as `jitrunner drain` does, waiting; then stops the drained worker as its exit does.
 * Returns the container, the runner's name and the drain's exit code and output.
 */
async function drainWithFailedTeardown(
  fake: FakeGitHub,
  proxy: Awaited<ReturnType<typeof startDockerProxy>>,
  sys: SystemUnderTest,
  host: string,
  runners: RunnerStore,
  config: ReturnType<typeof testConfig>,
): Promise<{ containerId: string; name: string; code: number; output: string }> {
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
  await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "in_progress"), 60_000, "job running");
  const [container] = await containersOf(host);
  assert.ok(container);
  const [name] = await runners.listHost(host);
  assert.ok(name);
  proxy.refuseRemoval.add(container.Id);
  const out = sink();
  const draining = drainHost(config, host, true, out.stream, out.stream);
  await waitFor(() => out.text().includes(`draining ${host}`), 10_000, "drain to tell the host");
  await Promise.race([sys.drained, sleep(60_000).then(() => assert.fail("the worker did not drain"))]);
  await sys.close();
  const code = await draining;
  return { containerId: container.Id, name, code, output: out.text() };
}

test("a drained worker whose last teardown failed leaves its host listed; another host's loop then forgets the runner and the host, and the host's next worker removes the container", { timeout: 240_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const host = uniqueHost("drain-stuck");
  const other = uniqueHost("drain-other");
  hosts.push(host, other);
  const r = scopedRedis(redis, "drain-stuck");
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const runners = new RunnerStore(conn, r.prefix);
  const pools = [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "6" } })];
  const worker = { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1, docker: { socketPath: proxy.socketPath } };
  let sys: SystemUnderTest | undefined = await startSystem("all", fake, r, host, { pools, worker });
  let second: SystemUnderTest | undefined;
  try {
    const drained = await drainWithFailedTeardown(fake, proxy, sys, host, runners, testConfig({ redis: { url: r.url, prefix: r.prefix } }));
    sys = undefined;
    const { name } = drained;
    assert.ok(await runners.get(name), "the runner's record is still there: its teardown failed");
    assert.ok((await hostStore.list()).some((h) => h.id === host), "so the host is not forgotten: the other hosts' loops look at it once it lapses");
    // The drain is over (no job runs): the waiting drain says so, not that the host vanished.
    assert.equal(drained.code, 0, drained.output);
    assert.match(drained.output, new RegExp(`^${host} drained$`, "m"));
    assert.doesNotMatch(drained.output, /stopped answering/);
    assert.equal(await hostStore.drainMark(host), "left", "the host stays drained before any sweep");
    proxy.refuseRemoval.delete(drained.containerId);

    // Another host's loop finds the host gone: the runner (its job done) forgotten, then the host.
    second = await startSystem("worker", fake, r, other, { pools, worker: { ...worker, hostId: other, docker: {} } });
    await waitFor(async () => !(await runners.get(name)) && !(await hostStore.list()).some((h) => h.id === host), 30_000, "the runner and the host forgotten");
    assert.equal(await hostStore.drainMark(host), "left", "the host stays drained");
    // Its worker stopped cleanly (drained, exit 0): counted as stopped, not gone (JitrunnerHostGone).
    const text = await (await fetch(`${second.url}/metrics`)).text();
    assert.match(text, /^jitrunner_hosts_stopped_swept_total 1$/m);
    assert.match(text, /^jitrunner_hosts_gone_total 0$/m);
    // The host's next worker (drained: it takes no demand) removes the container left on its engine.
    sys = await startSystem("worker", fake, r, host, { pools, worker });
    await waitFor(async () => (await containersOf(host)).length === 0, 30_000, "the container removed");
  } finally {
    await second?.close();
    await sys?.close();
    await proxy.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a worker started on a host right after a drain whose last teardown failed stays up cordoned, and removes the container left", { timeout: 240_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const proxy = await startDockerProxy();
  const host = uniqueHost("drain-restart");
  hosts.push(host);
  const r = scopedRedis(redis, "drain-restart");
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const runners = new RunnerStore(conn, r.prefix);
  const pools = [fakeRunnerPool(fake, { env: { FAKE_GITHUB_SOCKET: "/fake-github/github.sock", FAKE_JOB_SECONDS: "6" } })];
  const worker = { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1, docker: { socketPath: proxy.socketPath } };
  let sys: SystemUnderTest | undefined = await startSystem("all", fake, r, host, { pools, worker });
  try {
    const drained = await drainWithFailedTeardown(fake, proxy, sys, host, runners, testConfig({ redis: { url: r.url, prefix: r.prefix } }));
    sys = undefined;
    assert.equal(drained.code, 0, drained.output);
    proxy.refuseRemoval.delete(drained.containerId);

    // The restart policy starts the worker again at once, before the host's record lapses.
    sys = await startSystem("worker", fake, r, host, { pools, worker });
    const restarted = sys;
    let exited = false;
    void restarted.drained.then(() => (exited = true));
    const warning = new RegExp(`host \\\\"${host}\\\\" is drained \\(jitrunner drain\\): taking no demand, and staying up`);
    await waitFor(() => warning.test(restarted.logs()), 30_000, "the restarted worker to say the host is drained");
    await waitFor(async () => (await containersOf(host)).length === 0 && !(await runners.get(drained.name)), 30_000, "the container and the runner removed");
    assert.equal(exited, false, "the worker stays up: exiting, it would be restarted again and again");
    assert.equal(await hostStore.drainMark(host), "left");
  } finally {
    await sys?.close();
    await proxy.close();
    await fake.close();
    conn.disconnect();
  }
});
