/**
 * Redis Sentinel in the config: redis.sentinels and redis.sentinelName together, the sentinels'
 * password from a file or the environment, and every half setup refused at once, the password
 * never repeated. What the connections are given (redisAddressOf, addressOptions) and what an
 * operator is shown (redisTarget).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { cliConnectLimitMs, cliRedis } from "../../src/cli/redis.ts";
import { loadConfig, loadConfigWithOrigins } from "../../src/config/load.ts";
import { ConfigError } from "../../src/errors.ts";
import { addressOptions, addressPasswords, redisAddressOf, redisTarget, withoutPassword } from "../../src/queue/redis-address.ts";
import { testPrivateKey } from "../helpers/config.ts";

const env = { JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(), JITRUNNER_GITHUB_WEBHOOK_SECRET: "s3cret-value-0123456789" };
const SENTINEL_PASSWORD = "sentinel-pass-Hq8";
const files: Record<string, string> = { "/run/secrets/sentinel-password": `${SENTINEL_PASSWORD}\n`, "/run/secrets/blank": " \n" };
const readFile = (p: string): string => {
  if (p in files) return files[p]!;
  throw Object.assign(new Error(`ENOENT ${p}`), { code: "ENOENT" });
};

/** A config whose redis section is `redis` (YAML lines, indented under it). */
function withRedis(redis: string): string {
  return `
github:
  appId: 42
redis:
${redis
  .trim()
  .split("\n")
  .map((l) => `  ${l.trim()}`)
  .join("\n")}
pools:
  - name: default
    labels: [self-hosted, linux]
    image: runner:1
`;
}

function problemsOf(text: string, over: Record<string, string> = {}): string[] {
  try {
    loadConfig({ text, env: { ...env, ...over }, readFile });
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  return assert.fail("the config was accepted");
}

test("sentinels and the master's name: the connections ask the sentinels, with redis.url's password and database, and the sentinels' own password", () => {
  const c = loadConfig({
    text: withRedis(`
      url: redis://:data-pass-7Yw@ignored:6379/2
      sentinels: ["10.0.0.5:26379", "sentinel-2.internal:26380", "[fd00::5]:26379"]
      sentinelName: mymaster
      sentinelPasswordFile: /run/secrets/sentinel-password
    `),
    env,
    readFile,
  });
  assert.deepEqual(c.redis.sentinels, ["10.0.0.5:26379", "sentinel-2.internal:26380", "[fd00::5]:26379"]);
  assert.equal(c.secrets.redisSentinelPassword?.reveal(), SENTINEL_PASSWORD);
  const address = redisAddressOf(c);
  assert.deepEqual(addressOptions(address), {
    sentinels: [
      { host: "10.0.0.5", port: 26379 },
      { host: "sentinel-2.internal", port: 26380 },
      { host: "fd00::5", port: 26379 },
    ],
    name: "mymaster",
    sentinelPassword: SENTINEL_PASSWORD,
    sentinelCommandTimeout: 5_000,
  });
  assert.deepEqual(addressPasswords(address), ["data-pass-7Yw", SENTINEL_PASSWORD]);
  // What status and drain say when they cannot reach it: no password, no unused URL address.
  const shown = redisTarget(address);
  assert.equal(shown, "master 'mymaster' through the sentinels at 10.0.0.5:26379, sentinel-2.internal:26380, [fd00::5]:26379 (redis.sentinelName, redis.sentinels)");

  // rediss://: TLS to the master and the sentinels; the variable gives the password, a user name with it.
  const tls = loadConfig({
    text: withRedis(`
      url: rediss://:data-pass-7Yw@ignored:6379
      sentinels: ["10.0.0.5:26379"]
      sentinelName: mymaster
      sentinelUsername: jitrunner
    `),
    env: { ...env, JITRUNNER_REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD },
    readFile,
  });
  assert.deepEqual(addressOptions(redisAddressOf(tls)), {
    sentinels: [{ host: "10.0.0.5", port: 26379 }],
    name: "mymaster",
    sentinelUsername: "jitrunner",
    sentinelPassword: SENTINEL_PASSWORD,
    sentinelCommandTimeout: 5_000,
    enableTLSForSentinelMode: true,
    sentinelTLS: {},
  });

  // Without Sentinel: the URL alone, as ever.
  const plain = loadConfig({ text: withRedis("url: redis://:data-pass-7Yw@redis:6379"), env, readFile });
  assert.deepEqual(redisAddressOf(plain), { url: "redis://:data-pass-7Yw@redis:6379" });
  assert.deepEqual(addressOptions(redisAddressOf(plain)), {});
  assert.equal(plain.secrets.redisSentinelPassword, undefined);
});

test("half a Sentinel setup is refused, each half named, never taken for the URL's one address", () => {
  assert.deepEqual(problemsOf(withRedis(`sentinels: ["10.0.0.5:26379"]`)), [
    "redis.sentinelName: redis.sentinels needs the name of the master they monitor (sentinel monitor NAME ...) (redis at line 4)",
  ]);
  assert.deepEqual(problemsOf(withRedis("sentinelName: mymaster")), ["redis.sentinels: redis.sentinelName needs the sentinels to ask for that master (host:port each) (redis at line 4)"]);
  const only = "is for Redis Sentinel: set redis.sentinels and redis.sentinelName too, or leave it out";
  assert.deepEqual(problemsOf(withRedis("sentinelUsername: jitrunner\nsentinelPasswordFile: /run/secrets/sentinel-password")).sort(), [
    `redis.sentinelPasswordFile: ${only} (line 6)`,
    `redis.sentinelUsername: ${only} (line 5)`,
  ]);
  assert.deepEqual(problemsOf(withRedis("url: redis://redis:6379"), { JITRUNNER_REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD }), [`JITRUNNER_REDIS_SENTINEL_PASSWORD ${only}`]);
  // A user name with no password: the sentinels would be asked as the default user.
  assert.deepEqual(problemsOf(withRedis(`sentinels: ["10.0.0.5:26379"]\nsentinelName: mymaster\nsentinelUsername: jitrunner`)), [
    "redis.sentinelUsername: needs the sentinels' password too (redis.sentinelPasswordFile, or JITRUNNER_REDIS_SENTINEL_PASSWORD) (line 7)",
  ]);
});

test("sentinel addresses that are not host:port, a master name with spaces, and a password file that is blank, missing or the password itself are refused, all at once, the password unrepeated", () => {
  const problems = problemsOf(
    withRedis(`
      sentinels: ["10.0.0.5", "redis://10.0.0.6:26379", "10.0.0.7:0", "10.0.0.8:70000", "fd00::5:26379", "sentinel-9:26379"]
      sentinelName: my master
      sentinelPasswordFile: ${SENTINEL_PASSWORD}-----BEGIN
    `),
  );
  const hostPort = "must be host:port, as 10.0.0.5:26379, sentinel-1:26379 or [fd00::5]:26379";
  assert.deepEqual(problems.filter((p) => p.startsWith("redis.sentinels")), [
    `redis.sentinels[0]: ${hostPort} (line 5)`,
    `redis.sentinels[1]: ${hostPort} (line 5)`,
    "redis.sentinels[2]: must have a port from 1 to 65535 (line 5)",
    "redis.sentinels[3]: must have a port from 1 to 65535 (line 5)",
    `redis.sentinels[4]: ${hostPort} (line 5)`,
  ]);
  assert.ok(problems.some((p) => p.startsWith("redis.sentinelName: must be the master's name as the sentinels monitor it")), problems.join("\n"));
  assert.ok(problems.some((p) => p.startsWith("redis.sentinelPasswordFile: must be the path of a file that holds the secret")), problems.join("\n"));
  for (const p of problems) assert.ok(!p.includes(SENTINEL_PASSWORD), p);

  assert.deepEqual(problemsOf(withRedis(`sentinels: []\nsentinelName: mymaster`)), ["redis.sentinels: name at least one sentinel, or leave redis.sentinels out (line 5)"]);
  const base = `sentinels: ["10.0.0.5:26379"]\nsentinelName: mymaster`;
  assert.deepEqual(problemsOf(withRedis(`${base}\nsentinelPasswordFile: /run/secrets/blank`)), ["redis.sentinelPasswordFile: /run/secrets/blank holds only white space (line 7)"]);
  assert.deepEqual(problemsOf(withRedis(`${base}\nsentinelPasswordFile: /run/secrets/none`)), ["redis.sentinelPasswordFile: cannot read /run/secrets/none (ENOENT) (line 7)"]);
});

test("the sentinels and the master's name from the environment (JITRUNNER_REDIS_SENTINELS, comma-separated, and JITRUNNER_REDIS_SENTINEL_NAME) override the file's, and a bad address names its variable", () => {
  const over = { JITRUNNER_REDIS_SENTINELS: " 10.0.0.5:26379, [fd00::5]:26380 ,", JITRUNNER_REDIS_SENTINEL_NAME: "prod-master" };
  const c = loadConfig({ text: withRedis(`sentinels: ["10.9.9.9:26379"]\nsentinelName: old`), env: { ...env, ...over }, readFile });
  assert.deepEqual(c.redis.sentinels, ["10.0.0.5:26379", "[fd00::5]:26380"]);
  assert.equal(c.redis.sentinelName, "prod-master");
  // A file with no Redis section at all: the variables make the whole setup.
  const fromEnv = loadConfigWithOrigins({ text: withRedis("prefix: jitrunner"), env: { ...env, ...over }, readFile });
  assert.equal(
    redisTarget(redisAddressOf(fromEnv.config), fromEnv.origins),
    "master 'prod-master' through the sentinels at 10.0.0.5:26379, [fd00::5]:26380 (JITRUNNER_REDIS_SENTINEL_NAME, JITRUNNER_REDIS_SENTINELS)",
  );
  assert.deepEqual(problemsOf(withRedis("prefix: jitrunner"), { JITRUNNER_REDIS_SENTINELS: "10.0.0.5", JITRUNNER_REDIS_SENTINEL_NAME: "m" }), [
    "redis.sentinels[0]: must be host:port, as 10.0.0.5:26379, sentinel-1:26379 or [fd00::5]:26379 (from JITRUNNER_REDIS_SENTINELS)",
  ]);
  // Half a setup from the environment is refused as from the file.
  assert.deepEqual(problemsOf(withRedis("prefix: jitrunner"), { JITRUNNER_REDIS_SENTINEL_NAME: "m" }), [
    "redis.sentinels: redis.sentinelName needs the sentinels to ask for that master (host:port each) (redis at line 4)",
  ]);
});

test("a sentinel password given in redis.url's query, which ioredis takes as an option, is hidden where the URL is shown and in connection errors", () => {
  const url = "redis://:data-pass-7Yw@unused:6379/0?sentinelPassword=S3ntinel-in-query&db=0";
  const shown = withoutPassword(url);
  assert.ok(!shown.includes("S3ntinel-in-query") && !shown.includes("data-pass-7Yw"), shown);
  assert.match(shown, /sentinelPassword=redacted/);
  assert.match(shown, /db=0/);
  assert.deepEqual(addressPasswords({ url }), ["data-pass-7Yw", "S3ntinel-in-query"]);
});

test("status and drain give each sentinel time to be asked: a connect may take 5 s for Redis and 10 s more per sentinel", () => {
  const one = cliRedis({ url: "redis://127.0.0.1:1" });
  const three = cliRedis({ url: "redis://127.0.0.1:1", sentinel: { name: "m", sentinels: [1, 2, 3].map((i) => ({ host: `10.0.0.${i}`, port: 26379 })) } });
  try {
    assert.equal(cliConnectLimitMs(one), 5_000);
    assert.equal(cliConnectLimitMs(three), 35_000);
  } finally {
    one.disconnect();
    three.disconnect();
  }
});
