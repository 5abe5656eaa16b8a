import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { Redis } from "ioredis";
import { redisConnection } from "../../src/queue/demand-queue.ts";
import { freePort } from "./ports.ts";

export interface TestRedis {
  url: string;
  /** A key prefix of this test's own, so tests sharing one Redis never meet. */
  prefix: string;
  stop(): Promise<void>;
}

/** A redis-server of the test's own, which the test may kill and start again (a Redis restart). */
export interface OwnRedis extends TestRedis {
  /** Its data directory (the append-only files live there); removed by `stop`. */
  dir: string;
  /** The pid of the running server. */
  readonly pid: number;
  /** Sends `signal` to the server by pid and waits for it to exit (SIGKILL: a crash). */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and directory: with append-only on, it replays its AOF. */
  restart(): Promise<void>;
}

/**
 * A Redis (startRedis) and one connection to it for all the tests of a file: started before them,
 * closed after them. Its fields are there once `before` has run, so read them inside tests.
 */
export function redisForFile(): { readonly redis: TestRedis; readonly conn: Redis } {
  const shared = {} as { redis: TestRedis; conn: Redis };
  before(async () => {
    shared.redis = await startRedis();
    shared.conn = redisConnection(shared.redis.url);
  });
  after(async () => {
    shared.conn.disconnect();
    await shared.redis.stop();
  });
  return shared;
}

export interface OwnRedisOptions {
  /** A server of the test's own even when JITRUNNER_TEST_REDIS_URL names a shared one. */
  own: true;
  /** Persist as a deployment should (docs/reliability.md): `appendonly yes`, `appendfsync everysec`. */
  appendOnly?: boolean;
  /** Redis's `requirepass`: the URL then carries it (`redis://:PASSWORD@host:port`), as a deployment's might. */
  password?: string;
}

/**
 * A real Redis for a test: the one named by JITRUNNER_TEST_REDIS_URL (CI starts it), else a
 * redis-server of the test's own on a free loopback port. `{ own: true }` always starts one of its
 * own, in its own directory, that the test can kill and restart.
 */
export async function startRedis(): Promise<TestRedis>;
export async function startRedis(opts: OwnRedisOptions): Promise<OwnRedis>;
export async function startRedis(opts?: OwnRedisOptions): Promise<TestRedis | OwnRedis> {
  if (opts?.own) return startOwnRedis(opts);
  const prefix = `jrtest-${randomBytes(4).toString("hex")}`;
  const shared = process.env.JITRUNNER_TEST_REDIS_URL;
  if (shared) {
    await ping(shared, 5000);
    return { url: shared, prefix, stop: async () => cleanPrefix(shared, prefix) };
  }
  const port = await freePort();
  const child: ChildProcess = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const spawnError = new Promise<never>((_, reject) =>
    child.once("error", (err) => reject(new Error(`cannot start redis-server (is it installed?): ${err.message}`))),
  );
  const url = `redis://127.0.0.1:${port}`;
  await Promise.race([ping(url, 10_000), spawnError]);
  return {
    url,
    prefix,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

async function startOwnRedis(opts: OwnRedisOptions): Promise<OwnRedis> {
  const prefix = `jrtest-${randomBytes(4).toString("hex")}`;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-redis-"));
  const persistence = opts.appendOnly ? ["--appendonly", "yes", "--appendfsync", "everysec"] : ["--appendonly", "no"];
  const auth = opts.password ? ["--requirepass", opts.password] : [];
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--maxmemory-policy", "noeviction", ...persistence, ...auth];
  const url = opts.password ? `redis://:${encodeURIComponent(opts.password)}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const launch = async (): Promise<void> => {
    const c = spawn("redis-server", args, { stdio: "ignore" });
    child = c;
    exited = new Promise((resolve) => c.once("exit", () => resolve()));
    const spawnError = new Promise<never>((_, reject) =>
      c.once("error", (err) => reject(new Error(`cannot start redis-server (is it installed?): ${err.message}`))),
    );
    await Promise.race([ping(url, 10_000), spawnError]);
  };
  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  await launch();
  return {
    url,
    prefix,
    dir,
    get pid() {
      return child?.pid ?? 0;
    },
    kill,
    restart: async () => {
      await kill("SIGTERM");
      await launch();
    },
    stop: async () => {
      await kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function ping(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    c.on("error", () => undefined); // a refused try is expected while the server starts; connect() reports it
    try {
      await c.connect();
      await c.ping();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`Redis at ${url} did not answer: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      c.disconnect();
    }
  }
}

async function cleanPrefix(url: string, prefix: string): Promise<void> {
  const c = new Redis(url);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await c.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length) await c.del(...keys);
    } while (cursor !== "0");
  } finally {
    c.disconnect();
  }
}
