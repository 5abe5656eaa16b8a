/**
 * The redelivery loop at a delivery rate well past what its old read kept up with (real Redis; the
 * App's delivery list held in memory, paged and cursored as GitHub does, on a clock of the test's).
 * The App gets a delivery for every job of its installations, GitHub-hosted ones too: 1,200 a
 * minute is a busy organization, not an outage. A read that went down to 10 minutes below its
 * last complete read, 10 pages a pass, fell further behind every pass there, and a new failure
 * waited for the backlog (hours at this rate).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { redisForFile } from "../helpers/redis.ts";
import type { HookDelivery } from "../../src/github/client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { githubDeliveriesLoop } from "../../src/reconcile/github-deliveries.ts";
import { RedeliveryLog } from "../../src/state/redeliveries.ts";

const shared = redisForFile();
const MINUTE = 60_000;
const PAGE = 100;

/**
 * The App's delivery list: newest first, PAGE a page, a cursor naming the first delivery of the
 * next page (as GitHub's `v1_<id>` does, so it stays put as deliveries land on top). A
 * redelivery is a new attempt of the same event on top, answered 202.
 */
function deliveryList(clock: () => number) {
  const list: HookDelivery[] = [];
  let pages = 0;
  const redelivered = new Map<string, number>();
  const add = (at: number, statusCode: number, guid?: string): HookDelivery => {
    const id = list.length + 1;
    const d = { id, guid: guid ?? `event-${id}`, deliveredAt: new Date(at).toISOString(), statusCode, event: "workflow_job", action: "queued" };
    list.push(d);
    return d;
  };
  const github = {
    async listHookDeliveries({ cursor }: { cursor?: string } = {}) {
      pages++;
      const top = cursor === undefined ? list.length : Number(/^v1_(\d+)$/.exec(cursor)![1]);
      const deliveries = list.slice(Math.max(0, top - PAGE), top).reverse();
      return top > PAGE ? { deliveries, next: `v1_${top - PAGE}` } : { deliveries };
    },
    async redeliverHookDelivery(id: number) {
      const d = list[id - 1]!;
      redelivered.set(d.guid, clock());
      add(clock(), 202, d.guid);
    },
  };
  return { github, add, redelivered, pagesRead: () => pages };
}

test("1,200 deliveries a minute, a pass a minute: each new failure is redelivered within 2 passes, the read keeps up, and the lookback's backlog is worked off behind", async () => {
  const RATE = 1200;
  const PASSES = 40;
  const started = Date.now();
  let now = Date.parse("2025-01-01T00:00:00Z");
  const clock = () => now;
  const app = deliveryList(clock);
  /** A minute of deliveries up to `now`, all answered 202 but `failAt` (a fraction of the minute), answered 502. */
  const minute = (failAt?: number) => {
    let failed: HookDelivery | undefined;
    for (let i = 0; i < RATE; i++) {
      const fails = failAt !== undefined && i === Math.floor(failAt * RATE);
      const d = app.add(now - MINUTE + ((i + 1) * MINUTE) / RATE, fails ? 502 : 202);
      if (fails) failed = d;
    }
    return failed;
  };
  // Ten minutes before the first pass, as far back as it looks (windowMs): 120 pages, more than
  // a pass reads. One of them failed, 8 minutes before.
  let lookbackFailure: HookDelivery | undefined;
  for (let m = 10; m > 0; m--) {
    now += MINUTE;
    const failed = minute(m === 8 ? 0.5 : undefined);
    if (failed) lookbackFailure = failed;
  }
  const log = new RedeliveryLog(shared.conn, `${shared.redis.prefix}:rate`);
  const loop = githubDeliveriesLoop({
    github: app.github,
    log,
    intervalMs: MINUTE,
    windowMs: 10 * MINUTE,
    maxPerPass: 100,
    metrics: new Metrics({ processMetrics: false }),
    logger: createLogger("silent"),
    now: clock,
  });
  const signal = new AbortController().signal;

  /** Each new failure and the pass it was listed before. */
  const failures: Array<{ delivery: HookDelivery; pass: number }> = [];
  const pagesPerPass: number[] = [];
  const lags: number[] = [];
  let backlogGoneAt: number | undefined;
  for (let pass = 1; pass <= PASSES; pass++) {
    if (pass > 1) {
      now += MINUTE;
      // A failure every third minute, anywhere in it (its first, middle or last deliveries).
      const failed = minute(pass % 3 === 0 ? [0, 0.5, 0.999][(pass / 3) % 3] : undefined);
      if (failed) failures.push({ delivery: failed, pass });
    }
    const before = app.pagesRead();
    await loop.run(signal);
    pagesPerPass.push(app.pagesRead() - before);
    for (const f of failures) {
      if (pass >= f.pass + 1) assert.ok(app.redelivered.has(f.delivery.guid), `the failure listed before pass ${f.pass} redelivered by pass ${f.pass + 1} (now pass ${pass})`);
    }
    // The marks the lag is read from (RedeliveryLog.readLagMs, checked below): how far below the
    // newest delivery read the backlog still goes.
    const [upTo, backlog] = [await log.readUpTo(), await log.resume()];
    lags.push(backlog ? (upTo - backlog.floor) / 1000 : 0);
    if (backlogGoneAt === undefined && backlog === undefined) backlogGoneAt = pass;
  }
  assert.equal(await log.readLagMs(), lags.at(-1)! * 1000);

  assert.equal(failures.length, 13);
  for (const f of failures) {
    const after = (app.redelivered.get(f.delivery.guid)! - Date.parse(f.delivery.deliveredAt)) / MINUTE;
    // By the first pass after it failed (passes come at the end of each minute of traffic).
    assert.ok(after <= 1, `a failure redelivered ${after.toFixed(1)} minutes after it failed`);
  }
  assert.ok(pagesPerPass.every((p) => p <= 30), `at most 30 pages a pass: ${pagesPerPass.join(" ")}`);
  // The lookback's 120 pages below the newest: worked off with the 5 or 6 pages the newest leave a
  // pass, its failure redelivered on the way.
  assert.ok(backlogGoneAt !== undefined && backlogGoneAt <= 25, `the backlog worked off by pass 25 (lag by pass, s: ${lags.join(" ")})`);
  assert.ok(app.redelivered.has(lookbackFailure!.guid), "the lookback's failure redelivered");
  // The lag (jitrunner_deliveries_read_lag_seconds) reaches down to the lookback's floor while that
  // is read, a minute more each pass, then is 0 for good: every pass reads the newest pages through.
  lags.slice(0, backlogGoneAt! - 1).forEach((s, i) => assert.equal(s, (10 + i) * 60, `pass ${i + 1}: down to the lookback's floor`));
  assert.deepEqual(lags.slice(backlogGoneAt! - 1), Array(PASSES - backlogGoneAt! + 1).fill(0), `read through from pass ${backlogGoneAt} on`);
  // Every pass after that: this minute's 1,200 and the minute read again below the last pass's
  // newest, 25 pages.
  assert.ok(pagesPerPass.slice(backlogGoneAt!).every((p) => p >= 24 && p <= 26), `pages by pass: ${pagesPerPass.join(" ")}`);
  assert.ok(Date.now() - started < 60_000, "bounded in time");
});
