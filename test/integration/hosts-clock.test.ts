/**
 * src/state/hosts.ts against a real Redis, where hosts disagree or race: places under a pool's
 * limits (maxRunners, minIdle) expire on Redis's clock, not on each host's own, so a host whose
 * clock is off by more than a hold neither passes the limit nor loses others' places; a gone
 * host that beat again is not forgotten by the worker that found it gone (forgetGone); and a
 * host whose worker noted a clean stop is forgotten as stopped, not gone, until a worker beats
 * on it again (noteStop).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Metrics } from "../../src/metrics/metrics.ts";
import { hostHolder, HostStore, PoolLimits } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { collectStatus } from "../../src/state/status.ts";
import { metricSample } from "../helpers/leftovers.ts";
import { redisForFile } from "../helpers/redis.ts";

const shared = redisForFile();
/** More than a place's default hold (PoolLimits.HOLD_MS): each side's places are expired on the other's clock. */
const SKEW_MS = PoolLimits.HOLD_MS + 1_000;

/**
 * Runs `fn` as on a host whose clock is `skewMs` off. PoolLimits takes no clock, so Date.now is
 * shifted, for this test's awaits only (node:test runs a file's tests one at a time).
 */
async function onClock<T>(skewMs: number, fn: () => Promise<T>): Promise<T> {
  const real = Date.now;
  Date.now = () => real() + skewMs;
  try {
    return await fn();
  } finally {
    Date.now = real;
  }
}

test("a host whose clock is ahead by more than a hold cannot pass maxRunners, and the places of hosts on time stay", async () => {
  const { redis, conn } = shared;
  const onTime = new PoolLimits(conn, `${redis.prefix}-ahead`);
  const ahead = new PoolLimits(conn, `${redis.prefix}-ahead`);
  const b = [hostHolder("host-b"), hostHolder("host-b")];
  for (const h of b) assert.equal(await onTime.acquire("default", h, 2), true);

  const a = [hostHolder("host-a"), hostHolder("host-a")];
  for (const h of a) assert.equal(await onClock(SKEW_MS, () => ahead.acquire("default", h, 2)), false, "the pool is full, whatever the host's clock says");
  assert.equal(await onClock(SKEW_MS, () => ahead.count("default")), 2, "the host ahead counts the places of the host on time");

  for (const h of b) assert.equal(await onTime.acquire("default", h, 2), true, "the host on time refreshes its places: they are still there");
  assert.equal(await onTime.count("default"), 2);
});

test("a place taken or handed over on a host whose clock is behind by more than a hold lasts its hold for the others", async () => {
  const { redis, conn } = shared;
  const onTime = new PoolLimits(conn, `${redis.prefix}-behind`);
  const behind = new PoolLimits(conn, `${redis.prefix}-behind`);
  const spare = hostHolder("host-a");
  assert.equal(await onClock(-SKEW_MS, () => behind.acquire("default", spare, 2)), true);
  assert.equal(await onTime.count("default"), 1, "the place taken behind is not expired on the host on time");
  // A warm runner takes a demand: its place goes to the demand's lease, then back.
  await onClock(-SKEW_MS, () => behind.transfer("default", spare, "8812345-1"));
  assert.equal(await onTime.count("default"), 1, "the place handed over behind is not expired either");
  assert.equal(await onTime.acquire("default", hostHolder("host-b"), 2), true);
  assert.equal(await onTime.acquire("default", hostHolder("host-b"), 2), false, "the place handed over still counts against the limit");
  await onClock(-SKEW_MS, () => behind.transfer("default", "8812345-1", spare));
  assert.ok((await conn.zrange(`${redis.prefix}-behind:pool:default:holders`, 0, -1)).includes(spare), "handed back");
  assert.equal(await onTime.count("default"), 2);
});

test("a place's hold runs from Redis's now, whatever the host's clock says", async () => {
  const { redis, conn } = shared;
  const limits = new PoolLimits(conn, `${redis.prefix}-hold`, 300);
  const h = hostHolder("host-a");
  assert.equal(await onClock(SKEW_MS, () => limits.acquire("default", h, 1)), true);
  const [, score] = await conn.zrange(`${redis.prefix}-hold:pool:default:holders`, 0, -1, "WITHSCORES");
  const [sec, micro] = await conn.time();
  const redisNow = Number(sec) * 1000 + Math.floor(Number(micro) / 1000);
  const left = Number(score) - redisNow;
  assert.ok(left > 0 && left <= 300, `the place expires 300 ms after Redis's now, not the host's (${left} ms left)`);
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(await limits.count("default"), 0, "expired once its hold is over");
  assert.equal(await limits.acquire("default", hostHolder("host-b"), 1), true, "and taken by another at once");
});

test("a gone host that beat again is not forgotten by the worker that found it gone; one still gone is, and its drain mark becomes `left`", async () => {
  const { redis, conn } = shared;
  const hosts = new HostStore(conn, `${redis.prefix}-forget`);
  const record = { capacity: 2, used: 0, pools: ["default"] };
  // Found gone (its record lapsed), then it beats again before the sweeping worker forgets it.
  await hosts.heartbeat({ id: "host-x", ...record }, 100);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await hosts.alive("host-x"), false, "found gone");
  await hosts.drain("host-x");
  await hosts.heartbeat({ id: "host-x", ...record }, 60_000);

  assert.equal(await hosts.forgetGone("host-x"), "beats", "not forgotten: it beats");
  const x = (await hosts.list()).find((h) => h.id === "host-x");
  assert.ok(x?.record, "its record and its place in the fleet stay");
  assert.ok(x.lastBeatAt > 0, "its last beat stays");
  assert.equal(await hosts.drainMark("host-x"), "asked", "its drain mark stays `asked`: its worker still runs");

  // One whose beat did not come back is forgotten.
  await hosts.heartbeat({ id: "host-y", ...record }, 100);
  await hosts.drain("host-y");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await hosts.forgetGone("host-y"), "gone", "forgotten, gone: no clean stop was noted");
  assert.ok(!(await hosts.list()).some((h) => h.id === "host-y"), "out of the fleet");
  assert.equal(await conn.hexists(`${redis.prefix}-forget:hosts:lastbeat`, "host-y"), 0);
  assert.equal(await hosts.drainMark("host-y"), "left");

  // A worker leaving forgets its own host, which beats until then.
  await hosts.forget("host-x");
  assert.ok(!(await hosts.list()).some((h) => h.id === "host-x"), "a leaving worker's host is out of the fleet");
  assert.equal(await hosts.alive("host-x"), false);
  assert.equal(await hosts.drainMark("host-x"), "left");
});

test("a clean stop noted by the host's holder makes its sweep `stopped`, not `gone`; a beat since, another process's note, or a host no longer listed does not", async () => {
  const { redis, conn } = shared;
  const prefix = `${redis.prefix}-stop-note`;
  const hosts = new HostStore(conn, prefix);
  const record = { capacity: 2, used: 0, pools: ["default"] };
  const stop = async (id: string, instance: string) => {
    await hosts.hold(id, instance, 60_000);
    await hosts.heartbeat({ id, ...record }, 100, instance);
    const noted = await hosts.noteStop(id, instance);
    await hosts.instanceGone(instance, id);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await hosts.alive(id), false, `${id} found gone`);
    return noted;
  };

  // Stopped cleanly, runners left: listed as stopped until swept (a runner of it may still run a
  // job: its heartbeat age grows, and the metric, the alert and the status say it stopped, not
  // gone); forgotten as stopped, with every key of the host, its note too.
  assert.equal(await stop("clean", "proc-1"), true);
  await hosts.hold("killed", "proc-9", 60_000);
  await hosts.heartbeat({ id: "killed", ...record }, 100, "proc-9");
  await new Promise((r) => setTimeout(r, 200));
  const listed = await hosts.list();
  assert.equal(listed.find((h) => h.id === "clean")?.stoppedCleanly, true);
  assert.equal(listed.find((h) => h.id === "killed")?.stoppedCleanly, undefined, "a host killed, not stopped");
  const metrics = new Metrics({ processMetrics: false });
  metrics.hosts(listed.map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, beatAgeMs: h.beatAgeMs, stoppedCleanly: h.stoppedCleanly })));
  const text = await metrics.registry.metrics();
  assert.equal(metricSample(text, "jitrunner_host_stopped", 'host="clean"'), 1);
  assert.ok(!/jitrunner_host_stopped\{host="killed"\}/.test(text), text);
  const status = await collectStatus({ pools: [], runners: new RunnerStore(conn, prefix), hosts });
  assert.deepEqual(
    ["clean", "killed"].map((id) => status.hosts.find((h) => h.id === id)?.health),
    ["stopped", "gone"],
  );
  assert.equal(await hosts.forgetGone("killed"), "gone");
  const ttl = await conn.ttl(`${prefix}:host-stopped:clean`);
  assert.ok(ttl > 6 * 24 * 3600, `the note expires, days later, should nothing remove it (${ttl} s)`);
  assert.equal(await hosts.forgetGone("clean"), "stopped");
  assert.deepEqual(await conn.keys(`${prefix}:*clean*`), [], "no key of the host left, the note neither");

  // Stopped cleanly, then a worker on it again (it beats: the note goes), then killed: gone.
  assert.equal(await stop("back", "proc-2"), true);
  await hosts.hold("back", "proc-3", 60_000);
  await hosts.heartbeat({ id: "back", ...record }, 100, "proc-3");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await hosts.forgetGone("back"), "gone", "the note of an earlier process's stop is gone with the next beat");

  // A process that no longer holds its host (another took it) notes nothing for it.
  await hosts.hold("taken", "proc-4", 60_000);
  await hosts.heartbeat({ id: "taken", ...record }, 100, "proc-4");
  assert.equal(await hosts.noteStop("taken", "proc-5"), false);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await hosts.forgetGone("taken"), "gone");

  // Nor for a host no longer listed (swept while its worker still ran): no key left behind.
  await hosts.hold("swept", "proc-6", 60_000);
  await hosts.heartbeat({ id: "swept", ...record }, 100, "proc-6");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await hosts.forgetGone("swept"), "gone");
  assert.equal(await hosts.noteStop("swept", "proc-6"), false);
  await hosts.instanceGone("proc-6", "swept");
  assert.deepEqual(await conn.keys(`${prefix}:*swept*`), [], "no note of a host out of the fleet");
});

test("a beat's age is on Redis's clock: a worker two minutes behind, or ahead, is read as having beaten just now, and its age grows once it stops", async () => {
  const { redis, conn } = shared;
  const store = new HostStore(conn, `${redis.prefix}-beat-age`);
  const metrics = new Metrics({ processMetrics: false });
  const record = { capacity: 4, used: 1, pools: ["default"] };
  await onClock(-120_000, () => store.heartbeat({ id: "behind", ...record }, 15_000));
  await onClock(120_000, () => store.heartbeat({ id: "ahead", ...record }, 15_000));
  const listed = await onClock(60_000, () => store.list());
  for (const id of ["behind", "ahead"]) {
    const h = listed.find((l) => l.id === id);
    assert.ok(h?.record && h.beatAgeMs !== undefined, `${id} listed alive`);
    assert.ok(h.beatAgeMs < 5_000, `${id}: beat ${h.beatAgeMs} ms ago, whatever the clocks of the worker and the reader`);
  }
  metrics.hosts(listed.map((h) => ({ id: h.id, capacity: h.record?.capacity ?? 0, beatAgeMs: h.beatAgeMs })));
  const text = await metrics.registry.metrics();
  for (const id of ["behind", "ahead"]) assert.ok(metricSample(text, "jitrunner_host_heartbeat_age_seconds", `host="${id}"`) < 5, text);
  const status = await onClock(-60_000, () => collectStatus({ pools: [], runners: new RunnerStore(conn, `${redis.prefix}-beat-age`), hosts: store }));
  for (const id of ["behind", "ahead"]) assert.ok((status.hosts.find((h) => h.id === id)?.heartbeatAgeSeconds ?? 99) < 5, JSON.stringify(status.hosts));

  // A worker that stops beating: its age grows from its last beat, on the same clock.
  await new Promise((r) => setTimeout(r, 1_100));
  const later = (await store.list()).find((l) => l.id === "ahead");
  assert.ok(later?.beatAgeMs !== undefined && later.beatAgeMs >= 1_000, `${later?.beatAgeMs} ms after the last beat`);
});
