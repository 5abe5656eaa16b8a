/**
 * WriteWindow, the GitHub client's write budget per installation: at most `max` starts in any
 * window, at once while the window has room, none while paused, retries first, background writes
 * (runner deletions) last and never in the window's last quarter. Real timers with
 * short windows; each check allows for timers firing late on a loaded machine, never early.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { WriteWindow, backgroundShare } from "../../src/github/write-window.ts";

const WINDOW_MS = 1500;
/** "At once": well within half a window (a first call on a cold process takes a while). */
const AT_ONCE_MS = WINDOW_MS / 2;
/** The test reads the clock a little after the gate does: a start may look this much later. */
const SKEW_MS = 20;

/** Schedules `n` writes on `key` at once; resolves with each one's start time, in start order. */
async function startTimes(w: WriteWindow, key: string, n: number): Promise<number[]> {
  const starts: number[] = [];
  await Promise.all(Array.from({ length: n }, () => w.key(key).schedule({}, () => starts.push(Date.now()))));
  return starts;
}

test("a burst within the budget starts at once; beyond it, never more than max in any window", async () => {
  const w = new WriteWindow(3, WINDOW_MS);
  const t0 = Date.now();
  const starts = await startTimes(w, "installation-1", 8);
  assert.equal(starts.length, 8);
  assert.ok(starts.slice(0, 3).every((t) => t - t0 < AT_ONCE_MS), `the first 3 at once: ${starts.map((t) => t - t0).join(", ")} ms`);
  for (let i = 3; i < starts.length; i++) {
    assert.ok(starts[i]! - starts[i - 3]! >= WINDOW_MS - SKEW_MS, `write ${i} waits a window after write ${i - 3}: ${starts.map((t) => t - t0).join(", ")} ms`);
  }
  // 8 writes at 3 a window: the last in the third window.
  assert.ok(starts.at(-1)! - t0 >= 2 * WINDOW_MS);
});

test("installations have budgets of their own", async () => {
  const w = new WriteWindow(2, 60_000);
  const t0 = Date.now();
  const [a, b] = await Promise.all([startTimes(w, "installation-1", 2), startTimes(w, "installation-2", 2)]);
  assert.ok([...a, ...b].every((t) => t - t0 < AT_ONCE_MS), "each installation's 2 at once");
});

test("a pause holds every write of its installation, and a retry (priority 0) goes first after it", async () => {
  const w = new WriteWindow(10, 60_000);
  const order: string[] = [];
  const t0 = Date.now();
  w.pause("installation-1", WINDOW_MS);
  const other = w.key("installation-2").schedule({}, () => Date.now());
  const queued = w.key("installation-1").schedule({}, () => order.push("queued"));
  const retry = w.key("installation-1").schedule({ priority: 0 }, () => order.push("retry"));
  await Promise.all([queued, retry]);
  assert.ok(Date.now() - t0 >= WINDOW_MS, "held for the pause");
  assert.deepEqual(order, ["retry", "queued"]);
  assert.ok((await other) - t0 < AT_ONCE_MS, "another installation is not held");
  // A shorter pause set meanwhile does not cut a longer one short.
  const t1 = Date.now();
  w.pause("installation-1", WINDOW_MS);
  w.pause("installation-1", 10);
  await w.key("installation-1").schedule({}, () => undefined);
  assert.ok(Date.now() - t1 >= WINDOW_MS);
});

test("background writes leave a quarter of the window to the others, and a write a job waits for starts before them", async () => {
  assert.deepEqual([1, 2, 4, 5, 8, 120].map(backgroundShare), [1, 1, 3, 4, 6, 90]);
  const w = new WriteWindow(4, 60_000);
  const order: string[] = [];
  const t0 = Date.now();
  const deletions = Array.from({ length: 5 }, (_, i) => w.key("k").schedule({ background: true }, () => order.push(`deletion ${i}`)));
  await Promise.all(deletions.slice(0, 3));
  await w.key("k").schedule({}, () => order.push("registration"));
  assert.ok(Date.now() - t0 < AT_ONCE_MS, "the registration at once");
  assert.deepEqual(order, ["deletion 0", "deletion 1", "deletion 2", "registration"], "3 deletions of 4 starts: the last kept");
  w.close();
  for (const p of deletions.slice(3)) await assert.rejects(p, /given up before it was sent/);

  // In line after a pause: retries first (a deletion's too), then the writes a job waits for, then background ones.
  const w2 = new WriteWindow(10, 60_000);
  const line: string[] = [];
  w2.pause("k", WINDOW_MS);
  await Promise.all([
    w2.key("k").schedule({ background: true }, () => line.push("deletion")),
    w2.key("k").schedule({}, () => line.push("registration 1")),
    w2.key("k").schedule({ priority: 0, background: true }, () => line.push("retried deletion")),
    w2.key("k").schedule({}, () => line.push("registration 2")),
  ]);
  assert.deepEqual(line, ["retried deletion", "registration 1", "registration 2", "deletion"]);
});

test("a write's own failure reaches its caller and uses its start", async () => {
  const w = new WriteWindow(1, WINDOW_MS);
  await assert.rejects(w.key("k").schedule({}, () => Promise.reject(new Error("refused"))), /refused/);
  const t0 = Date.now();
  await w.key("k").schedule({}, () => undefined);
  assert.ok(Date.now() - t0 >= WINDOW_MS - SKEW_MS, "the failed write counted against the window");
  assert.throws(() => new WriteWindow(0, 1000), /max >= 1/);
});

test("closed, the window fails every write still waiting and any asked for later; none runs, no timer is left", async () => {
  const w = new WriteWindow(1, 60_000);
  await w.key("k").schedule({}, () => undefined);
  let ran = 0;
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  const before = timers();
  const t0 = Date.now();
  const waiting = [w.key("k").schedule({}, () => ran++), w.key("k").schedule({ priority: 0 }, () => ran++)];
  w.close();
  for (const p of waiting) await assert.rejects(p, (err: Error & { code?: string }) => err.code === "E_NOT_SENT");
  assert.ok(Date.now() - t0 < AT_ONCE_MS, "at once, not when the window has room (a minute)");
  await assert.rejects(w.key("other").schedule({}, () => ran++), /given up before it was sent/);
  assert.equal(ran, 0);
  assert.equal(timers(), before, "the timer for the window's next start is gone");
});
