/**
 * Busy runners of a gone host whose `completed` webhook was lost, for real (fake GitHub, real
 * Redis, a real worker): the host loop asks GitHub about them, at most once per
 * `worker.goneHostBusyCheckSeconds`, and forgets those whose job is over (GitHub no longer knows
 * them), and the host with them; those GitHub lists busy are kept, and so is their host.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { waitFor } from "../helpers/process.ts";
import { callsTo, goneHost, registerRunner, scopedRedis, startSystem, uniqueHost, workersForFile } from "../helpers/system.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore, type RunnerRecord } from "../../src/state/runners.ts";

const GET_RUNNER = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
const LIST_RUNNERS = "/repos/{owner}/{repo}/actions/runners";
/** Long past any check interval below: the record has been busy for a minute. */
const BUSY_LONG_AGO = () => Date.now() - 60_000;
const { redis, hosts } = workersForFile();

/** The registered runner takes a job of its own at the fake (GitHub then lists it busy). */
async function takeJob(fake: FakeGitHub, name: string, runner: { id: number; token: string }): Promise<number> {
  const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"], onlyRunner: name });
  const res = await runnerCall(fake, runner, "acquire");
  assert.equal(res.status, 200);
  return job.id;
}

async function runnerCall(fake: FakeGitHub, runner: { id: number; token: string }, action: string, extra: object = {}): Promise<Response> {
  return fetch(`${fake.url}/_fake/runners/${runner.id}/${action}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: runner.token, ...extra }),
    signal: AbortSignal.timeout(5000),
  });
}

/** What the server writes when an `in_progress` webhook marks a runner of acme/app busy. */
function busyRecord(fake: FakeGitHub, name: string, host: string, runnerId: number | undefined, busyAt: number): RunnerRecord {
  return {
    name, pool: "default", host, state: "busy", installationId: fake.installationId, owner: "acme", repo: "app", runnerId, demandId: `demand-${name}`, createdAt: busyAt - 5_000, busyAt, jobId: 1, instance: "a-stopped-process",
  };
}

/** GET calls for one runner id. */
function looksAt(fake: FakeGitHub, runnerId: number): number {
  return fake.requests.filter((r) => r.route === GET_RUNNER && r.method === "GET" && r.path.endsWith(`/actions/runners/${runnerId}`)).length;
}

async function known(hostStore: HostStore, id: string): Promise<boolean> {
  return (await hostStore.list()).some((h) => h.id === id);
}

async function metrics(sys: { url: string }): Promise<string> {
  return (await fetch(`${sys.url}/metrics`)).text();
}

/** The value of a sample without labels in Prometheus text, 0 when absent. */
function unlabelled(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

function workerConfig(host: string, goneHostBusyCheckSeconds: number) {
  return { worker: { hostId: host, capacity: 1, completedGraceSeconds: 5, reconcileIntervalSeconds: 1, goneHostBusyCheckSeconds } };
}

test("busy runners of a gone host whose completed webhook was lost: those GitHub no longer knows are forgotten with their host, one GitHub lists busy is kept (asked once per interval) until its job is over", { timeout: 90_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET }); // no webhook URL: every delivery is lost
  const host = uniqueHost("gb");
  const ended = uniqueHost("gb-ended");
  const running = uniqueHost("gb-running");
  const r = scopedRedis(redis, "gone-busy");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);

  // Host `ended`: three runners whose jobs are over, their `completed` webhooks lost.
  // One that ran its job and removed its registration, as an ephemeral runner does.
  const done = "jitrunner-default-00gbdone01";
  const doneRunner = await registerRunner(fake, done);
  const doneJob = await takeJob(fake, done, doneRunner);
  assert.equal((await runnerCall(fake, doneRunner, "complete", { jobId: doneJob, conclusion: "success" })).status, 200);
  assert.ok(!fake.runners().some((x) => x.id === doneRunner.id), "the registration removed itself");
  // One GitHub still lists, idle (its job was handed elsewhere or abandoned): runs no job.
  const idle = "jitrunner-default-00gbidle01";
  const idleRunner = await registerRunner(fake, idle);
  // One whose runner id was never noted, and that GitHub does not know by its name either.
  const noId = "jitrunner-default-00gbnoid01";
  // Host `running`: one runner GitHub lists busy, running its job on the gone host's engine.
  const busy = "jitrunner-default-00gbbusy01";
  const busyRunner = await registerRunner(fake, busy);
  const busyJob = await takeJob(fake, busy, busyRunner);
  assert.ok(fake.runners().find((x) => x.id === busyRunner.id)?.busy);

  await runners.put(busyRecord(fake, done, ended, doneRunner.id, BUSY_LONG_AGO()));
  await runners.put(busyRecord(fake, idle, ended, idleRunner.id, BUSY_LONG_AGO()));
  await runners.put(busyRecord(fake, noId, ended, undefined, BUSY_LONG_AGO()));
  await runners.put(busyRecord(fake, busy, running, busyRunner.id, BUSY_LONG_AGO()));
  await goneHost(hostStore, ended);
  await goneHost(hostStore, running);

  const interval = 4;
  // The worker's start runs one pass of the host loop up to its sweep of gone hosts, which goes on after.
  const sys = await startSystem("worker", fake, r, host, workerConfig(host, interval));
  try {
    await waitFor(async () => !(await known(hostStore, ended)), 10_000, "the host whose busy runners' jobs are over forgotten");
    for (const name of [done, idle, noId]) assert.equal(await runners.get(name), undefined, `${name}'s record removed`);
    assert.deepEqual(await conn.keys(`${r.prefix}:*${ended}*`), [], "no key of that host left");
    assert.ok(!fake.runners().some((x) => x.id === idleRunner.id), "the registration GitHub listed idle deleted");
    assert.equal(looksAt(fake, doneRunner.id), 1, "GitHub asked once about the runner whose job is over");
    // One list looks up the runner with no id by name; the leader's github-runners loop (this
    // worker campaigns for it) may list the scope of the recorded runners once more at its start.
    const lists = callsTo(fake, LIST_RUNNERS, "GET");
    assert.ok(lists >= 1 && lists <= 2, `the runner with no id looked up by name (runner lists: ${lists})`);
    const logs = sys.logs();
    assert.match(logs, new RegExp(`"runner":"${done}","goneHost":"${ended}","msg":"busy runner of a gone host forgotten: GitHub no longer knows it`));
    assert.match(logs, new RegExp(`"runner":"${noId}","goneHost":"${ended}","msg":"busy runner of a gone host forgotten: GitHub no longer knows it`));
    assert.match(logs, new RegExp(`"runner":"${idle}","goneHost":"${ended}","msg":"runner of a gone host recorded busy but running no job at GitHub; deregistered"`));
    const text = await metrics(sys);
    assert.equal(metricSample(text, "jitrunner_runner_removals_total", 'pool="default",reason="host_gone"'), 3);
    assert.equal(unlabelled(text, "jitrunner_hosts_gone_total"), 1);

    // The runner GitHub lists busy: asked about once, kept, and its host with it.
    assert.equal(looksAt(fake, busyRunner.id), 1);
    assert.ok(await known(hostStore, running), "the host with a runner still running its job is kept");
    const kept = await runners.get(busy);
    assert.equal(kept?.state, "busy", "its record kept");
    assert.ok(kept?.askedAt && kept.askedAt >= Date.now() - 10_000, "the time of the look is on the record");
    assert.ok(fake.runners().find((x) => x.id === busyRunner.id)?.busy, "its registration untouched");
    // Passes run every second; GitHub is not asked again within the interval.
    await sleep(2_000);
    assert.equal(looksAt(fake, busyRunner.id), 1, "not asked again on every pass");
    await waitFor(() => looksAt(fake, busyRunner.id) >= 2, (interval + 6) * 1000, "asked again an interval later");
    assert.ok(await known(hostStore, running), "still kept: still busy at GitHub");
    assert.equal((await runners.get(busy))?.state, "busy");

    // Its job ends; its `completed` webhook is lost too. The next look forgets it, and its host.
    assert.equal((await runnerCall(fake, busyRunner, "complete", { jobId: busyJob, conclusion: "success" })).status, 200);
    await waitFor(async () => !(await known(hostStore, running)), (interval + 6) * 1000, "the host forgotten once its runner's job is over");
    assert.equal(await runners.get(busy), undefined);
    assert.deepEqual(await conn.keys(`${r.prefix}:*${running}*`), [], "no key of that host left");
    assert.equal(await conn.scard(`${r.prefix}:runners`), 0, "no runner left in the index of every runner");
    const after = await metrics(sys);
    assert.equal(metricSample(after, "jitrunner_runner_removals_total", 'pool="default",reason="host_gone"'), 4);
    assert.equal(unlabelled(after, "jitrunner_hosts_gone_total"), 2);
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});

test("a busy runner of a gone host is not asked about before it has been busy for the interval, and a failed look keeps it and its host until the next look", { timeout: 60_000 }, async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("gbf");
  const gone = uniqueHost("gbf-gone");
  const r = scopedRedis(redis, "gone-busy-fail");
  hosts.push(host);
  const conn = redisConnection(r.url);
  const runners = new RunnerStore(conn, r.prefix);
  const hostStore = new HostStore(conn, r.prefix);
  // A runner that ran its job and removed its registration; its `completed` webhook lost.
  const name = "jitrunner-default-00gbfail01";
  const runner = await registerRunner(fake, name);
  const job = await takeJob(fake, name, runner);
  assert.equal((await runnerCall(fake, runner, "complete", { jobId: job, conclusion: "success" })).status, 200);
  const interval = 3;
  // Marked busy just now: not asked about until it has been busy for the interval.
  await runners.put(busyRecord(fake, name, gone, runner.id, Date.now()));
  await goneHost(hostStore, gone);
  // The first look fails: GitHub refuses it (an App that lost its permission; not retried).
  fake.inject({ route: GET_RUNNER, method: "GET", status: 403, times: 1, body: { message: "Must have admin rights to Repository." } });
  const sys = await startSystem("worker", fake, r, host, workerConfig(host, interval));
  try {
    const busyAt = (await runners.get(name))?.busyAt ?? 0;
    await waitFor(() => looksAt(fake, runner.id) >= 1, (interval + 5) * 1000, "asked about once busy for the interval");
    const firstLook = Math.min(...fake.requests.filter((q) => q.route === GET_RUNNER).map((q) => q.at));
    assert.ok(firstLook - busyAt >= interval * 1000 - 50, `first look ${firstLook - busyAt} ms after busy`);
    await waitFor(() => /"msg":"deregistering runner of a gone host failed; the next pass tries again"/.test(sys.logs()), 10_000, "the failed look logged");
    assert.match(sys.logs(), new RegExp(`"runner":"${name}","goneHost":"${gone}","err":"[^"]*403[^"]*"`));
    assert.ok(await known(hostStore, gone), "the host kept after a failed look");
    assert.equal((await runners.get(name))?.state, "busy", "the record kept after a failed look");
    assert.ok(metricSample(await metrics(sys), "jitrunner_reconcile_runs_total", 'loop="host",outcome="error"') >= 1, "the pass counts as failed");

    await waitFor(async () => !(await known(hostStore, gone)), (interval + 6) * 1000, "the host forgotten on the next look");
    assert.equal(await runners.get(name), undefined);
    assert.equal(looksAt(fake, runner.id), 2, "the failed look, then one an interval later");
    const looks = fake.requests.filter((q) => q.route === GET_RUNNER).map((q) => q.at);
    assert.ok(looks[1]! - looks[0]! >= interval * 1000 - 50, `the second look ${looks[1]! - looks[0]!} ms after the failed one, not on the next pass`);
    assert.deepEqual(await conn.keys(`${r.prefix}:*${gone}*`), [], "no key of the gone host left");
  } finally {
    await sys.close();
    await fake.close();
    conn.disconnect();
  }
});
