/**
 * A start whose Redis cannot be reached (a closed loopback port) says, at warn, which Redis it
 * waits for and the option or variable that named it, without the URL's password: it once logged
 * one `redis connection error` line (a server's; a worker's at debug only) and then nothing.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { createLogger } from "../../src/logger.ts";
import { start } from "../../src/main.ts";
import { testConfig, testPrivateKey } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor } from "../helpers/process.ts";

const PASSWORD = `redis-secret-${randomBytes(8).toString("hex")}`;
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test("a server's start with its Redis unreachable names the Redis it waits for (redis.url), without the password", async () => {
  const port = await freePort(); // closed: nothing listens on it
  const config = testConfig({
    redis: { url: `redis://:${PASSWORD}@127.0.0.1:${port}` },
    server: { host: "127.0.0.1", port: 0 },
    pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "x" }],
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  // A server listens once it has waited a few seconds for Redis: the start ends by itself.
  const server = await start(config, "server", createLogger("debug", sink));
  await server.close();
  const log = lines.join("");
  const waiting = log
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { level: number; msg: string; err?: string })
    .filter((l) => l.msg.startsWith("waiting for Redis"));
  assert.ok(waiting.length >= 1, log);
  assert.equal(waiting[0]!.level, 40, "at warn");
  assert.equal(waiting[0]!.msg, `waiting for Redis at redis://:redacted@127.0.0.1:${port} (redis.url)`);
  assert.match(waiting[0]!.err ?? "", /ECONNREFUSED/);
  assert.ok(!log.includes(PASSWORD), "the password nowhere in the log");
});

test("`jitrunner worker` waiting for its Redis at start says where, and from JITRUNNER_REDIS_URL, without the password", { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), "jitrunner-redis-wait-"));
  dirs.push(dir);
  const file = join(dir, "jitrunner.yml");
  const [redisPort, httpPort] = [await freePort(), await freePort()];
  await writeFile(
    file,
    `github:\n  appId: 1\n  apiUrl: http://127.0.0.1:9/\nredis:\n  url: redis://127.0.0.1:6379\nserver:\n  host: 127.0.0.1\n  port: ${httpPort}\n` +
      "pools:\n  - name: default\n    labels: [self-hosted, linux, x64]\n    image: x\n    networkMode: none\n",
  );
  const url = `redis://:${PASSWORD}@127.0.0.1:${redisPort}`;
  const p = runJitrunner(["worker", "--config", file], { JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(), JITRUNNER_REDIS_URL: url, JITRUNNER_LOG_LEVEL: "info" });
  try {
    await waitFor(() => p.output().includes("waiting for Redis at"), 30_000, `the wait said; output:\n${p.output()}`);
    const line = p.output().split("\n").find((l) => l.includes("waiting for Redis at"))!;
    const said = JSON.parse(line) as { level: number; msg: string };
    assert.equal(said.level, 40);
    assert.equal(said.msg, `waiting for Redis at redis://:redacted@127.0.0.1:${redisPort} (from JITRUNNER_REDIS_URL)`);
  } finally {
    await p.stop();
  }
  assert.ok(!p.output().includes(PASSWORD), "the password nowhere in the output");
});
