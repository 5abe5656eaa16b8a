/**
 * A drain that holds under a restart policy (Compose's `unless-stopped`, systemd's `Restart=`),
 * for real (fake GitHub, real Redis, real Docker engine): the drained worker exits and leaves the
 * host's drain mark behind; a worker started on the host again takes no demand, says so once and
 * stays up, until `jitrunner drain --undo` removes the mark; then it takes demand again.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { testConfig, WEBHOOK_SECRET } from "../helpers/config.ts";
import { runJitrunner, waitFor } from "../helpers/process.ts";
import { callsTo, demandIn, demandState, scopedRedis, startSystem, uniqueHost, workersForFile, type SystemUnderTest } from "../helpers/system.ts";
import { drainHost, undoDrain } from "../../src/cli/drain.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";

const JIT = "/repos/{owner}/{repo}/actions/runners/generate-jitconfig";
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

test("a worker started again on a drained host takes no demand and stays up until drain --undo; then it serves the job that waited", { timeout: 180_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("cordon");
  hosts.push(host);
  const r = scopedRedis(redis, "cordon");
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const config = testConfig({ redis: { url: r.url, prefix: r.prefix } });
  const worker = { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, heartbeatSeconds: 1 };
  let sys: SystemUnderTest | undefined = await startSystem("all", fake, r, host, { worker });
  try {
    // Drained as `jitrunner drain` does it, waiting; the worker exits at the end of its drain.
    const out = sink();
    const draining = drainHost(config, host, true, out.stream);
    await waitFor(() => out.text().includes(`draining ${host}`), 10_000, "drain to tell the host");
    await Promise.race([sys.drained, sleep(20_000).then(() => assert.fail("the worker did not drain"))]);
    await sys.close();
    sys = undefined;
    assert.equal(await draining, 0, out.text());
    assert.match(out.text(), new RegExp(`^${host} drained$`, "m"));
    assert.match(out.text(), new RegExp(`--host ${host} --undo`));
    assert.equal(await hostStore.drainMark(host), "left", "the drain mark stays after the drained worker left");

    // The restart policy starts the worker again.
    sys = await startSystem("all", fake, r, host, { worker });
    const restarted = sys;
    let exited = false;
    void restarted.drained.then(() => (exited = true));
    const warning = new RegExp(`host \\\\"${host}\\\\" is drained \\(jitrunner drain\\): taking no demand, and staying up, until .jitrunner drain --host ${host} --undo.`);
    await waitFor(() => warning.test(restarted.logs()), 10_000, "the restarted worker to say the host is drained");
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    await demandIn(r, `${job.id}-1`, "waiting", 10_000);
    await sleep(6_000);
    assert.equal(callsTo(fake, JIT), 0, "no runner registered on the drained host");
    assert.equal((await demandState(r, "default", `${job.id}-1`))?.state, "waiting", "the demand still waits");
    assert.equal(exited, false, "the worker stays up: exiting, it would be restarted again and again");
    assert.equal(restarted.logs().split("\n").filter((l) => warning.test(l)).length, 1, "said once");
    const listed = (await hostStore.list()).find((h) => h.id === host)?.record;
    assert.equal(listed?.draining, true, "status shows the host draining");
    assert.equal(listed?.capacity, 0, "and offering no slots");

    const undone = sink();
    const undoneErr = sink();
    assert.equal(await undoDrain(config, host, undone.stream, undoneErr.stream), 0, undoneErr.text());
    assert.match(undone.text(), new RegExp(`^${host}: drain mark removed; its worker takes demand again`, "m"));
    assert.equal(await hostStore.drainMark(host), undefined);
    await demandIn(r, `${job.id}-1`, "completed", 60_000);
    assert.equal(callsTo(fake, JIT), 1, "the job that waited got its runner");
    assert.match(restarted.logs(), /the host's drain mark is gone: taking demand/);
    assert.equal(exited, false);
  } finally {
    await sys?.close();
    await fake.close();
    conn.disconnect();
  }
});

test("jitrunner drain --undo removes a host's drain mark, and exits 1 saying so when there is none", { timeout: 60_000 }, async () => {
  const r = scopedRedis(redis, "undo-cli");
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const dir = await mkdtemp(join(tmpdir(), "jitrunner-undo-"));
  const file = join(dir, "jitrunner.yml");
  await writeFile(
    file,
    `github:\n  appId: 1\nredis:\n  url: ${r.url}\n  prefix: ${r.prefix}\npools:\n  - name: default\n    labels: [self-hosted, linux, x64]\n    image: jitrunner-runner:latest\n`,
  );
  const run = async (args: string[]) => {
    const p = runJitrunner(args);
    const code = await p.exited();
    return { code, out: p.output() };
  };
  try {
    const none = await run(["drain", "--config", file, "--host", "undo-host", "--undo"]);
    assert.equal(none.code, 1, none.out);
    assert.match(none.out, /^jitrunner drain --undo: host 'undo-host' is not drained \(it has no drain mark\); nothing to undo$/m);

    // A drained worker left the fleet: its mark stays.
    await hostStore.heartbeat({ id: "undo-host", capacity: 2, used: 0, pools: ["default"] }, 60_000);
    await hostStore.drain("undo-host");
    await hostStore.forget("undo-host");
    assert.equal(await hostStore.drainMark("undo-host"), "left");
    const undone = await run(["drain", "--config", file, "--host", "undo-host", "--undo"]);
    assert.equal(undone.code, 0, undone.out);
    assert.match(undone.out, /^undo-host: drain mark removed; a worker started on it takes demand$/m);
    assert.equal(await hostStore.drainMark("undo-host"), undefined);
  } finally {
    await hostStore.undrain("undo-host");
    conn.disconnect();
    await rm(dir, { recursive: true, force: true });
  }
});

test("a drain waited on whose mark drain --undo removes before the worker leaves says the host takes demand again, not that it stays drained", { timeout: 60_000 }, async () => {
  const r = scopedRedis(redis, "undo-wait");
  const conn = redisConnection(r.url);
  const hostStore = new HostStore(conn, r.prefix);
  const config = testConfig({ redis: { url: r.url, prefix: r.prefix } });
  try {
    await hostStore.heartbeat({ id: "undo-wait-host", capacity: 2, used: 1, pools: ["default"] }, 60_000);
    const out = sink();
    const draining = drainHost(config, "undo-wait-host", true, out.stream);
    await waitFor(() => out.text().includes("draining undo-wait-host"), 10_000, "drain to tell the host");
    // `drain --undo` while the drain waits, then the worker leaves (its drain was under way).
    assert.equal(await hostStore.undrain("undo-wait-host"), true);
    await hostStore.forget("undo-wait-host");
    assert.equal(await draining, 0, out.text());
    assert.match(out.text(), /^undo-wait-host drained\nits drain mark was removed \(drain --undo\): a worker started on it takes demand$/m);
    assert.doesNotMatch(out.text(), /stays drained/);
  } finally {
    await hostStore.undrain("undo-wait-host");
    conn.disconnect();
  }
});
