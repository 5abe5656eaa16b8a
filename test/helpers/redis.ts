import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { freePort } from "./ports.ts";

export interface TestRedis {
  url: string;
  /** A key prefix of this test's own, so tests sharing one Redis never meet. */
  prefix: string;
  stop(): Promise<void>;
}

/**
 * A real Redis for a test: the one named by JITRUNNER_TEST_REDIS_URL (CI starts it), else a
 * redis-server of the test's own on a free loopback port.
 */
export async function startRedis(): Promise<TestRedis> {
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

async function ping(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
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
