/**
 * Redis's end of a connection going silent, without FIN or RST (a managed Redis failing over
 * behind one DNS name, a NAT or load balancer dropping the flow): every connection jitrunner makes
 * (redisConnection; FAIL_FAST for the server's) gives up on it within REDIS_SOCKET_TIMEOUT_MS of a
 * command going unanswered, reconnects, and answers again, instead of waiting on TCP for many
 * minutes. And the timeout cuts nothing that is merely quiet: an idle connection, a subscriber,
 * or BullMQ's blocking wait for demand.
 */
import assert from "node:assert/strict";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, it } from "node:test";
import type { Redis } from "ioredis";
import type { Demand } from "../../src/demand.ts";
import { DemandConsumer, DemandQueues, FAIL_FAST, REDIS_SOCKET_TIMEOUT_MS, redisConnection, type Lease } from "../../src/queue/demand-queue.ts";
import { within } from "../../src/timers.ts";
import { RunnerEvents } from "../../src/worker/runner-events.ts";
import { waitFor } from "../helpers/process.ts";
import { redisForFile } from "../helpers/redis.ts";

const POOL = "default";
/** How soon after the silence each connection must answer again: the timeout, then a reconnect. */
const ANSWER_WITHIN_MS = 30_000;
/** The longest BullMQ's worker blocks on Redis (its maximumBlockTimeout, 10 s), plus its 1 s watchdog. */
const BULLMQ_LONGEST_BLOCK_S = 11;

const shared = redisForFile();

/**
 * A loopback relay to `target` whose `silenceExisting()` stops passing bytes either way on the
 * connections it holds, and keeps them open, while connections made afterwards pass as before:
 * what a client sees when Redis fails over behind its name. `accepted` counts connections made.
 */
async function failoverRelay(target: URL) {
  const sockets = new Set<Socket>();
  const live: Array<{ silent: boolean }> = [];
  let accepted = 0;
  const server = createServer((client) => {
    accepted++;
    const upstream = connect(Number(target.port), target.hostname);
    const flow = { silent: false };
    live.push(flow);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on("error", () => undefined);
      from.on("data", (chunk) => flow.silent || to.write(chunk));
      from.on("close", () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.toString(),
    accepted: () => accepted,
    silenceExisting: () => live.splice(0).forEach((f) => (f.silent = true)),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Asks until `fn` gives an answer, each try bounded by what is left of `ms`; how long it took. */
async function answeredWithin<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<{ value: T; afterMs: number }> {
  const start = Date.now();
  let last: unknown;
  for (;;) {
    const left = start + ms - Date.now();
    if (left <= 0) throw new Error(`${what}: no answer within ${ms} ms of the silence (last: ${String(last)})`);
    try {
      const value = await within(fn(), left, "no answer");
      if (value !== undefined) return { value, afterMs: Date.now() - start };
    } catch (err) {
      last = err;
      await sleep(100);
    }
  }
}

function demand(jobId: number): Demand {
  const at = Date.now();
  return { pool: POOL, jobId, runId: 1, runAttempt: 1, owner: "acme", repo: "app", installationId: 7, labels: ["self-hosted"], receivedAt: at, deliveryId: `d-${jobId}` };
}

/** Counts a connection's closes: each is a reconnect it had to make. */
function closes(c: Redis): () => number {
  let n = 0;
  c.on("close", () => n++);
  return () => n;
}

// Both take about REDIS_SOCKET_TIMEOUT_MS of waiting: side by side, the file stays short.
describe("Redis going silent", { concurrency: true }, () => {
  it("a connection whose Redis went silent reconnects and answers again: a plain one, a fail-fast one, and a worker's consumer", async () => {
    const { redis, conn } = shared;
    const relay = await failoverRelay(new URL(redis.url));
    const settings = { redisUrl: redis.url, prefix: redis.prefix, attempts: 3 };
    const queues = new DemandQueues(settings, conn);
    const plain = redisConnection(relay.url);
    const fast = redisConnection(relay.url, FAIL_FAST);
    const consumerConn = redisConnection(relay.url);
    for (const c of [plain, fast, consumerConn]) c.on("error", () => undefined);
    const consumer = new DemandConsumer(settings, consumerConn, POOL, "host-a:1");
    try {
      await consumer.start();
      assert.equal(await plain.ping(), "PONG");
      assert.equal(await fast.ping(), "PONG");
      // Finding no demand, the consumer next waits on its blocking connection: both its
      // connections then have a command to send after the silence.
      assert.equal(await consumer.next(), undefined);
      const before = relay.accepted();

      relay.silenceExisting();
      assert.equal(await queues.add(demand(1)), "added");
      const [p, f, c] = await Promise.all([
        answeredWithin(() => plain.ping(), ANSWER_WITHIN_MS, "a redisConnection"),
        answeredWithin(() => fast.ping(), ANSWER_WITHIN_MS, "a FAIL_FAST redisConnection"),
        answeredWithin<Lease>(() => consumer.next(), ANSWER_WITHIN_MS, "a DemandConsumer taking demand"),
      ]);
      assert.equal(p.value, "PONG");
      assert.equal(f.value, "PONG");
      assert.equal(c.value.demand.jobId, 1, "the demand added during the silence is leased");
      for (const { afterMs } of [p, f]) assert.ok(afterMs >= REDIS_SOCKET_TIMEOUT_MS - 1_000, `answered ${afterMs} ms after the silence: through a new connection, not the silent one`);
      assert.ok(relay.accepted() - before >= 4, "each connection (the consumer's two included) connected again");
      await c.value.complete("served");
    } finally {
      plain.disconnect();
      fast.disconnect();
      consumerConn.disconnect();
      await within(consumer.close(), 10_000, "consumer close").catch(() => undefined);
      await queues.close();
      await relay.close();
    }
  });

  it("the socket timeout cuts no connection that is only quiet: idle, subscribed, or blocked as long as BullMQ's worker blocks", async () => {
    const { redis } = shared;
    const idle = redisConnection(redis.url);
    const sub = redisConnection(redis.url);
    const blocked = redisConnection(redis.url);
    const counted = [idle, sub, blocked].map(closes);
    try {
      assert.equal(await idle.ping(), "PONG");
      await sub.subscribe(`${redis.prefix}:quiet`);
      const start = Date.now();
      // Cut, the block would be sent again on the new connection, and cut again, for ever.
      const block = blocked.bzpopmin(`${redis.prefix}:never`, BULLMQ_LONGEST_BLOCK_S);
      assert.equal(await within(block, BULLMQ_LONGEST_BLOCK_S * 1000 + 2_000, "the block never ended"), null, "the block ran its course");
      await sleep(start + REDIS_SOCKET_TIMEOUT_MS + 1_000 - Date.now());
      assert.deepEqual(
        counted.map((n) => n()),
        [0, 0, 0],
        "no connection was cut (idle, subscribed, blocked)",
      );
      assert.equal(await idle.ping(), "PONG");
      assert.equal(await blocked.ping(), "PONG");
    } finally {
      for (const c of [idle, sub, blocked]) c.disconnect();
    }
  });
});

it("a connection closed with a command out leaves no timer behind (a process that closed everything exits at once)", async () => {
  const { redis } = shared;
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
  const conn = redisConnection(redis.url);
  const blocking = conn.duplicate(); // as BullMQ makes its worker's blocking connection
  try {
    assert.equal(await conn.ping(), "PONG");
    assert.equal(await blocking.ping(), "PONG");
    const before = timers();
    const outstanding = [conn.blpop(`${redis.prefix}:never`, 5), blocking.blpop(`${redis.prefix}:never`, 5)].map((p) => p.catch(() => null));
    await sleep(100);
    assert.ok(timers() >= before + 2, "each command out arms its connection's socket timeout");
    conn.disconnect();
    blocking.disconnect();
    await Promise.all(outstanding);
    await sleep(100);
    assert.ok(timers() <= before, `the socket timeouts went with their sockets (${timers()} timers, ${before} before)`);
  } finally {
    conn.disconnect();
    blocking.disconnect();
  }
});

it("a worker's subscriber whose Redis went silent pings, reconnects, says what it may have missed, and hears events again", async () => {
  const { redis, conn } = shared;
  const relay = await failoverRelay(new URL(redis.url));
  const sub = redisConnection(relay.url);
  sub.on("error", () => undefined);
  const channel = `${redis.prefix}:runner-events`;
  const events = new RunnerEvents(sub, channel, { keepAlivePingMs: 1_000 });
  let missed = 0;
  const heard: string[] = [];
  events.on("r1", (state) => heard.push(state), () => missed++);
  try {
    await events.start();
    await waitFor(async () => (await conn.publish(channel, JSON.stringify({ name: "r1", state: "busy" }))) > 0 && heard.length > 0, 5_000, "subscribed");
    const missedBefore = missed;
    const silenced = Date.now();
    relay.silenceExisting();
    // Silent: nothing comes to a subscriber, and without its pings nothing would ever tell it.
    await waitFor(() => missed > missedBefore, ANSWER_WITHIN_MS, "the subscriber reconnected and said it may have missed events");
    const afterMs = Date.now() - silenced;
    assert.ok(afterMs >= REDIS_SOCKET_TIMEOUT_MS - 1_000, `reconnected ${afterMs} ms after the silence: by a ping's timeout`);
    await waitFor(async () => (await conn.publish(channel, JSON.stringify({ name: "r1", state: "completed" }))) > 0 && heard.includes("completed"), 5_000, "an event heard again");
  } finally {
    await events.close();
    await relay.close();
  }
});
