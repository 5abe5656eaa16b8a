/**
 * A `jitrunner server` (the real composition root) whose Redis URL has the wrong password, against
 * a Redis of the test's own with `requirepass`: the server listens and answers /readyz 503 for
 * good, so the log must say why in Redis's words (WRONGPASS) at warn, once, and never the password.
 * It once said only "redis: not connected (reconnecting)", Redis's words at debug, and logged the
 * readiness problem anew whenever ioredis went from connecting to reconnecting and back.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { createLogger } from "../../src/logger.ts";
import { start, type Running } from "../../src/main.ts";
import { testConfig } from "../helpers/config.ts";
import { startRedis, type OwnRedis } from "../helpers/redis.ts";

const PASSWORD = `redis-secret-${randomBytes(8).toString("hex")}`;
const WRONG = `wrong-secret-${randomBytes(8).toString("hex")}`;

let redis: OwnRedis;
let server: Running;
const lines: string[] = [];

before(async () => {
  redis = await startRedis({ own: true, password: PASSWORD });
  const config = testConfig({
    redis: { url: redis.url.replace(encodeURIComponent(PASSWORD), WRONG), prefix: redis.prefix },
    server: { host: "127.0.0.1", port: 0 },
    logLevel: "debug",
    pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "x" }],
  });
  assert.ok(config.redis.url.includes(WRONG), "the URL has the wrong password");
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  server = await start(config, "server", createLogger("debug", sink));
});

after(async () => {
  await server?.close();
  // By its pid (OwnRedis.stop), and its directory with it.
  await redis?.stop();
});

/** Log lines as objects, pino's level numbers: 40 warn, 50 error. */
function logged(): Array<{ level: number; msg: string; err?: unknown }> {
  return lines.join("").split("\n").filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; err?: unknown });
}

test("a wrong Redis password: /readyz 503 with its fixed reason, WRONGPASS in a warning once, the password nowhere in the log", async () => {
  // Probed for a few seconds: ioredis reconnects meanwhile, its status going from connecting to
  // reconnecting and back.
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { status: "unready", problems: ["redis: unavailable"] });
    await new Promise((r) => setTimeout(r, 300));
  }
  const warnings = logged().filter((l) => l.level >= 40);
  const saidWrongPass = warnings.filter((l) => JSON.stringify(l).includes("WRONGPASS"));
  assert.ok(saidWrongPass.length > 0, `a warning says WRONGPASS; warnings: ${JSON.stringify(warnings)}`);
  assert.equal(warnings.filter((l) => l.msg === "redis connection error").length, 1, "the connection error said at warn once, for both connections");
  assert.equal(warnings.filter((l) => l.msg === "not ready: redis: unavailable").length, 1, "the readiness problem said once, not again with each reconnection");
  assert.match(JSON.stringify(warnings.find((l) => l.msg === "not ready: redis: unavailable")), /WRONGPASS/);
  const all = lines.join("");
  assert.ok(!all.includes(WRONG), "the password given is not logged");
  assert.ok(!all.includes(encodeURIComponent(WRONG)), "nor encoded");
  assert.ok(!all.includes(PASSWORD), "nor Redis's own");
});
