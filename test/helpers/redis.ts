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
  const { child, url } = await startOnFreePort((port) => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], (port) => `redis://127.0.0.1:${port}`);
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
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-redis-"));
  const persistence = opts.appendOnly ? ["--appendonly", "yes", "--appendfsync", "everysec"] : ["--appendonly", "no"];
  const auth = opts.password ? ["--requirepass", opts.password] : [];
  const argsOn = (port: number) => ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--maxmemory-policy", "noeviction", ...persistence, ...auth];
  const urlOn = (port: number) => (opts.password ? `redis://:${encodeURIComponent(opts.password)}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`);
  let started: Started;
  try {
    started = await startOnFreePort(argsOn, urlOn);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const { port, url } = started;
  let child = started.child;
  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill(signal);
      await exited;
    }
  };
  return {
    url,
    prefix,
    dir,
    get pid() {
      return child.pid ?? 0;
    },
    kill,
    restart: async () => {
      await kill("SIGTERM");
      // The same port, as a restarted deployment's: taken meanwhile by another test, this fails.
      const again = await launch(argsOn(port), url);
      if (!again) throw new Error(`redis-server could not start again on port ${port}: the port was taken while it was down`);
      child = again;
    },
    stop: async () => {
      await kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Started {
  child: ChildProcess;
  port: number;
  url: string;
}

/**
 * Starts redis-server on a free loopback port. freePort's port is only free when it is asked
 * for: a test in the other lane (test/run.ts) may bind it first, and redis-server then exits. So
 * each try waits until the Redis answering there is its own, and a taken port is tried anew.
 */
export async function startOnFreePort(argsOn: (port: number) => string[], urlOn: (port: number) => string): Promise<Started> {
  for (let tries = 1; ; tries++) {
    const port = await freePort();
    const url = urlOn(port);
    const child = await launch(argsOn(port), url);
    if (child) return { child, port, url };
    if (tries === 5) throw new Error(`redis-server could not start: 5 free ports were taken before it bound them`);
  }
}

/**
 * One redis-server, ready: resolves once the Redis at `url` reports the child's own pid (a ping
 * alone could be answered by another test's server that holds the port), or undefined if the
 * child exited first (its port was taken).
 */
async function launch(args: string[], url: string): Promise<ChildProcess | undefined> {
  const child = spawn("redis-server", args, { stdio: "ignore" });
  const exited = new Promise<undefined>((resolve, reject) => {
    child.once("error", (err) => reject(new Error(`cannot start redis-server (is it installed?): ${err.message}`)));
    child.once("exit", () => resolve(undefined));
  });
  const ready = (async () => {
    const deadline = Date.now() + 10_000;
    // No pid: the spawn failed ('error' above).
    while (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      if ((await serverPid(url)) === child.pid) return child;
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`redis-server at ${url} did not answer in 10 s`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return undefined;
  })();
  return Promise.race([ready, exited]);
}

/** The pid of the Redis answering at `url`, or undefined if none answers. */
async function serverPid(url: string): Promise<number | undefined> {
  const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on("error", () => undefined); // refused while the server starts
  try {
    await c.connect();
    const info = await c.info("server");
    const pid = /^process_id:(\d+)/m.exec(info)?.[1];
    return pid ? Number(pid) : undefined;
  } catch {
    return undefined;
  } finally {
    c.disconnect();
  }
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
