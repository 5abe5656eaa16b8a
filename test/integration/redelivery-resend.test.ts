/**
 * The redelivery loop's counts (src/state/redeliveries.ts) when a reply is lost to a dropped
 * connection after Redis ran the write: ioredis sends the write again once reconnected, and the
 * count must not go up twice, or an event is given up after fewer tries than it has.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { githubFor } from "../helpers/github.ts";
import { redisForFile } from "../helpers/redis.ts";
import { cuttingRelay } from "../helpers/relay.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { githubDeliveriesLoop, MAX_REDELIVERIES_PER_EVENT } from "../../src/reconcile/github-deliveries.ts";
import { RedeliveryLog } from "../../src/state/redeliveries.ts";

const shared = redisForFile();
const ATTEMPTS = "/app/hook/deliveries/{delivery_id}/attempts";
const DEAD_URL = "http://127.0.0.1:9/";

test("a redelivery whose note's reply was lost, sent again by ioredis, is one try: the event still gets all its redeliveries before it is given up", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const relay = await cuttingRelay(new URL(shared.redis.url));
  const cutConn = redisConnection(relay.url);
  const gh = githubFor(fake);
  try {
    // The receiver is down throughout: every redelivery fails too.
    fake.setWebhookUrl(DEAD_URL);
    const job = await fake.queueJob({ owner: "acme", repo: "outage", labels: ["self-hosted", "gpu"] });
    const guid = fake.deliveries.find((d) => d.jobId === job.id)!.id;
    // Passes on a clock of the test's; GitHub stamps each attempt with it.
    let offset = 0;
    const now = () => Date.now() + offset;
    const stamped = new Set<object>();
    const stamp = () => {
      for (const d of fake.deliveries) if (!stamped.has(d)) (stamped.add(d), (d.deliveredAt = new Date(now()).toISOString().replace(/\.\d{3}Z$/, "Z")));
    };
    stamp();
    const log = new RedeliveryLog(cutConn, `${shared.redis.prefix}:loop`);
    const loop = githubDeliveriesLoop({
      github: gh,
      log,
      intervalMs: 60_000,
      windowMs: 3600_000,
      maxPerPass: 10,
      metrics: new Metrics({ processMetrics: false }),
      logger: createLogger("silent"),
      now,
    });
    const signal = new AbortController().signal;
    // Only the note of an accepted redelivery names the field; its reply is lost the first time.
    relay.cutAfter("tries");
    const askedAt: number[] = [];
    // Each try's time (1, 4, 16, 64, 256 and 1,024 minutes after the last), and one pass after.
    for (const minute of [0, 1, 5, 21, 85, 341, 1365, 2000]) {
      offset = minute * 60_000;
      const before = fake.requests.filter((q) => q.method === "POST" && q.route === ATTEMPTS).length;
      await loop.run(signal);
      await fake.webhooksIdle();
      stamp();
      if (fake.requests.filter((q) => q.method === "POST" && q.route === ATTEMPTS).length > before) askedAt.push(minute);
    }
    assert.equal(relay.cuts, 1, "the first note's reply was lost, and the note sent again");
    assert.deepEqual(askedAt, [0, 1, 5, 21, 85, 341, 1365], `${MAX_REDELIVERIES_PER_EVENT} redeliveries`);
    const event = await log.event(guid);
    assert.equal(event.tries, MAX_REDELIVERIES_PER_EVENT);
    assert.equal(event.gaveUp, true, "given up once out of tries");
  } finally {
    gh.close();
    cutConn.disconnect();
    await relay.close();
    await fake.close();
  }
});

test("a failed redelivery request whose note's reply was lost, sent again by ioredis, is counted once", async () => {
  const relay = await cuttingRelay(new URL(shared.redis.url));
  const cutConn = redisConnection(relay.url);
  try {
    const log = new RedeliveryLog(cutConn, `${shared.redis.prefix}:log`);
    relay.cutAfter("failures");
    assert.equal(await log.failed("guid-1", "request-1"), 1, "the first failed request");
    assert.equal(relay.cuts, 1, "the note's reply was lost, and the note sent again");
    assert.equal((await log.event("guid-1")).failures, 1);
    // Another request (for the same attempt) is another failure.
    assert.equal(await log.failed("guid-1", "request-2"), 2);
    assert.equal((await log.event("guid-1")).failures, 2);
  } finally {
    cutConn.disconnect();
    await relay.close();
  }
});
