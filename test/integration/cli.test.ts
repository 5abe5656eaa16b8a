/**
 * The real `jitrunner` command, run as a process: `--help` on every command, `app-manifest`, and
 * `status` reading a real Redis that runner records, demand and activity were written to through
 * the real stores and queues, `drain` waiting on hosts written through the real HostStore, and
 * both against a Redis that accepts connections but never answers.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { Redis } from "ioredis";
import { COMMAND_HELP } from "../../src/cli/help.ts";
import { DemandQueues, redisConnection } from "../../src/queue/demand-queue.ts";
import { ActivityLog } from "../../src/state/activity.ts";
import { HostStore } from "../../src/state/hosts.ts";
import { RunnerStore } from "../../src/state/runners.ts";
import { testPrivateKey, WEBHOOK_SECRET } from "../helpers/config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { silenceableRelay, silentServer } from "../helpers/relay.ts";
import { queuedPayload } from "../helpers/webhooks.ts";

const SECRETS = { JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(), JITRUNNER_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET };

let redis: TestRedis;
let conn: Redis;
let dir: string;
let configFile: string;

/**
 * Runs the CLI to its end: exit code and everything it printed. A process still running after
 * `limitMs` is killed and fails the test: a command that should give up hangs instead.
 */
async function run(args: string[], env: Record<string, string> = {}, limitMs = 60_000): Promise<{ code: number | null; out: string; stdout: string }> {
  const p = runJitrunner(args, env);
  const code = await p.exited(limitMs, `jitrunner ${args[0]} still running`);
  return { code, out: p.output(), stdout: p.stdout() };
}

function configText(redisUrl: string, prefix: string): string {
  return `
github:
  appId: 1
redis:
  url: ${redisUrl}
  prefix: ${prefix}
pools:
  - name: default
    labels: [self-hosted, linux, x64]
    image: jitrunner-runner:latest
    isolation: capabilities
  - name: arm
    labels: [self-hosted, linux, arm64]
    image: jitrunner-runner-arm:latest
`;
}

before(async () => {
  redis = await startRedis();
  conn = redisConnection(redis.url);
  dir = await mkdtemp(join(tmpdir(), "jitrunner-cli-"));
  configFile = join(dir, "jitrunner.yml");
  await writeFile(configFile, configText(redis.url, redis.prefix));
});

after(async () => {
  conn?.disconnect();
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("check-config prints the resolved config without a secret: the keys' values, the Redis password", async () => {
  const password = "redis-pass-Z9q";
  // ioredis takes a password from the URL's userinfo or from its query.
  for (const [url, shown] of [
    [`redis://:${password}@127.0.0.1:6399/2`, "redis://:redacted@127.0.0.1:6399/2"],
    [`redis://127.0.0.1:6399/2?password=${password}`, "redis://127.0.0.1:6399/2?password=redacted"],
  ] as const) {
    const { code, out, stdout } = await run(["check-config", "--config", configFile], { ...SECRETS, JITRUNNER_REDIS_URL: url });
    assert.equal(code, 0, out);
    const printed = JSON.parse(stdout) as { redis: { url: string }; secrets: Record<string, string> };
    assert.equal(printed.redis.url, shown);
    assert.equal(printed.secrets.webhookSecret, "[redacted]");
    for (const secret of [password, WEBHOOK_SECRET, SECRETS.JITRUNNER_GITHUB_PRIVATE_KEY.split("\n")[1]!]) assert.ok(!out.includes(secret));
  }
});

test("check-config says which options and secrets the environment set (names, never values), after the config", async () => {
  const password = "redis-pass-E7u";
  const env = { ...SECRETS, JITRUNNER_REDIS_URL: `redis://:${password}@redis:6379`, JITRUNNER_LOG_LEVEL: "debug", JITRUNNER_METRICS_TOKEN: "metrics-token-Y5t-0123456789" };
  const { code, out, stdout } = await run(["check-config", "--config", configFile], env);
  assert.equal(code, 0, out);
  assert.equal((JSON.parse(stdout) as { redis: { url: string } }).redis.url, "redis://:redacted@redis:6379");
  const line = out.split("\n").find((l) => l.startsWith("jitrunner check-config: from the environment"));
  assert.equal(
    line,
    "jitrunner check-config: from the environment, over the config file: redis.url (JITRUNNER_REDIS_URL), logLevel (JITRUNNER_LOG_LEVEL); " +
      "secrets from the environment: JITRUNNER_GITHUB_PRIVATE_KEY (read instead of github.privateKeyFile), " +
      "JITRUNNER_GITHUB_WEBHOOK_SECRET (read instead of github.webhookSecretFile), JITRUNNER_METRICS_TOKEN (read instead of server.metricsTokenFile)",
    out,
  );
  assert.ok(!stdout.includes("from the environment"), "the JSON on stdout stays JSON");
  for (const secret of [password, "metrics-token-Y5t", WEBHOOK_SECRET]) assert.ok(!out.includes(secret), secret);
  // A mode says only the secrets it reads: the server no private key.
  const server = await run(["check-config", "--mode", "server", "--config", configFile], env);
  assert.equal(server.code, 0, server.out);
  assert.match(server.out, /secrets from the environment: JITRUNNER_GITHUB_WEBHOOK_SECRET \(read instead of github\.webhookSecretFile\), JITRUNNER_METRICS_TOKEN/);
  assert.doesNotMatch(server.out, /JITRUNNER_GITHUB_PRIVATE_KEY/);
  // Secrets from files and no variable for any option: nothing to say.
  const keyFile = join(dir, "env-note-key.pem");
  const secretFile = join(dir, "env-note-secret");
  await writeFile(keyFile, SECRETS.JITRUNNER_GITHUB_PRIVATE_KEY);
  await writeFile(secretFile, WEBHOOK_SECRET);
  const fromFiles = join(dir, "env-note.yml");
  await writeFile(fromFiles, configText(redis.url, redis.prefix).replace("  appId: 1\n", `  appId: 1\n  privateKeyFile: ${keyFile}\n  webhookSecretFile: ${secretFile}\n`));
  const quiet = await run(["check-config", "--config", fromFiles], { JITRUNNER_GITHUB_PRIVATE_KEY: "", JITRUNNER_GITHUB_WEBHOOK_SECRET: "" });
  assert.equal(quiet.code, 0, quiet.out);
  assert.doesNotMatch(quiet.out, /from the environment/);
});

test("check-config shows a Sentinel setup without its passwords: the sentinels, the master's name, the password file's path", async () => {
  const file = join(dir, "sentinel.yml");
  const passwordFile = join(dir, "sentinel-password");
  const sentinelPassword = "sentinel-pass-N4d";
  await writeFile(passwordFile, `${sentinelPassword}\n`);
  const redisSection = `redis:\n  url: redis://:data-pass-C8x@127.0.0.1:6379/1\n  prefix: x\n  sentinels: ["10.0.0.5:26379", "10.0.0.6:26379"]\n  sentinelName: mymaster\n  sentinelPasswordFile: ${passwordFile}\n`;
  await writeFile(file, configText(redis.url, redis.prefix).replace(/^redis:\n(  .*\n)+/m, redisSection));
  const { code, out, stdout } = await run(["check-config", "--config", file], SECRETS);
  assert.equal(code, 0, out);
  const printed = JSON.parse(stdout) as { redis: Record<string, unknown>; secrets: Record<string, string> };
  assert.deepEqual(printed.redis, {
    url: "redis://:redacted@127.0.0.1:6379/1",
    prefix: "x",
    sentinels: ["10.0.0.5:26379", "10.0.0.6:26379"],
    sentinelName: "mymaster",
    sentinelPasswordFile: passwordFile,
  });
  assert.equal(printed.secrets.redisSentinelPassword, "[redacted]");
  for (const secret of [sentinelPassword, "data-pass-C8x"]) assert.ok(!out.includes(secret), secret);
});

test("check-config hides what a pool's runner environment holds of credentials: a URL's password, a value under a credential's name", async () => {
  const file = join(dir, "pool-env.yml");
  const env = `    env:\n      HTTPS_PROXY: "http://ci:proxy-pass-K3x@proxy.internal:3128"\n      NPM_TOKEN: npm-token-V8r\n      API_KEY: api-key-M2p\n      OPENAI_APIKEY: sk-apikey-Q7w\n      DB_PASS: db-pass-H4n\n      TZ: Europe/Berlin\n      DSN: "postgres://db/x?sslmode=require&password=dsn-pass-J6t"\n      GIT_URL: "https://git-user-token-P5z@git.example/o/r"\n      AT_PROXY: "http://ci:at@pass-R2d@proxy.internal:3128"\n      GH_PAT: pat-value-W1c\n      DB_PWD: db-pwd-T8k\n      BLOB: "ghs_0123456789abcdefABCDEF0123456789abcd"\n      TOOL_CACHE: /opt/hostedtoolcache/MyCompany/Tools/Shared/Cache/Linux\n      REPO_URL: "ssh://git@git.example/o/r?ref=main"\n      DATABASE_URL: "postgres://app:k9/Xq+Secr3t@db:5432/app"\n      CACHE_URL: "redis://:Zm9v/YmFy@cache:6379"\n`;
  await writeFile(file, configText(redis.url, redis.prefix).replace("    isolation: capabilities\n", `    isolation: capabilities\n${env}`));
  const { code, out, stdout } = await run(["check-config", "--config", file], SECRETS);
  assert.equal(code, 0, out);
  const printed = JSON.parse(stdout) as { pools: Array<{ env: Record<string, string> }> };
  assert.deepEqual(printed.pools[0]!.env, {
    HTTPS_PROXY: "http://ci:redacted@proxy.internal:3128",
    NPM_TOKEN: "[redacted]",
    API_KEY: "[redacted]",
    OPENAI_APIKEY: "[redacted]",
    DB_PASS: "[redacted]",
    TZ: "Europe/Berlin",
    DSN: "postgres://db/x?sslmode=require&password=redacted",
    GIT_URL: "https://redacted@git.example/o/r",
    AT_PROXY: "http://ci:redacted@proxy.internal:3128",
    GH_PAT: "[redacted]",
    DB_PWD: "[redacted]",
    BLOB: "[redacted]",
    TOOL_CACHE: "/opt/hostedtoolcache/MyCompany/Tools/Shared/Cache/Linux",
    REPO_URL: "ssh://git@git.example/o/r?ref=main",
    // A password's '/' (not percent-encoded) does not end it: the last '@' does.
    DATABASE_URL: "postgres://app:redacted@db:5432/app",
    CACHE_URL: "redis://:redacted@cache:6379",
  });
  for (const secret of ["proxy-pass-K3x", "npm-token-V8r", "api-key-M2p", "sk-apikey-Q7w", "db-pass-H4n", "dsn-pass-J6t", "git-user-token-P5z", "pass-R2d", "pat-value-W1c", "db-pwd-T8k", "0123456789abcdef", "k9/Xq", "Secr3t", "Zm9v", "YmFy"]) {
    assert.ok(!out.includes(secret), secret);
  }
});

test("check-config shows a secret file's path a mode does not read only when it is plainly a path, and refuses a key pasted in its place, unshown", async () => {
  const token = "admin-token-written-in-place-4Qv";
  const file = join(dir, "secret-paths.yml");
  const metricsFile = join(dir, "metrics-token");
  await writeFile(file, `${configText(redis.url, redis.prefix)}server:\n  adminTokenFile: ${token}\n  metricsTokenFile: ${metricsFile}\n`);
  // A worker reads the metrics token, not the admin token: it prints that option as given, unless it may be a token.
  await writeFile(metricsFile, "metrics-token-0123456789\n");
  const worker = await run(["check-config", "--mode", "worker", "--config", file], SECRETS);
  assert.equal(worker.code, 0, worker.out);
  const printed = JSON.parse(worker.stdout) as { server: { adminTokenFile: string; metricsTokenFile: string } };
  assert.equal(printed.server.metricsTokenFile, metricsFile);
  assert.match(printed.server.adminTokenFile, /^\(a relative path, not shown/);
  assert.ok(!worker.out.includes(token));

  const pasted = join(dir, "pasted-key.yml");
  const key = SECRETS.JITRUNNER_GITHUB_PRIVATE_KEY;
  await writeFile(pasted, configText(redis.url, redis.prefix).replace("  appId: 1\n", `  appId: 1\n  privateKeyFile: ${JSON.stringify(key)}\n`));
  const server = await run(["check-config", "--mode", "server", "--config", pasted], SECRETS);
  assert.equal(server.code, 1, server.out);
  assert.match(server.out, /github\.privateKeyFile: must be the path of a file that holds the secret, not the secret itself/);
  assert.ok(!server.out.includes(key.split("\n")[1]!), server.out);
});

test("jitrunner refuses to start with DEBUG turning on debug output that prints secrets (docker-modem's, ioredis's), saying how to keep the rest; check-config warns", async () => {
  const worker = await run(["worker", "--config", configFile], { ...SECRETS, DEBUG: "bullmq,*,-modem" });
  assert.equal(worker.code, 1, worker.out);
  assert.match(worker.out, /jitrunner worker: DEBUG=bullmq,\*,-modem turns on debug output that prints secrets \(ioredis:redis, .*\).*add -modem,-ioredis:\* to it \(DEBUG=bullmq,\*,-modem,-modem,-ioredis:\*\) or unset it/);
  const server = await run(["server", "--config", configFile], { ...SECRETS, DEBUG: "ioredis:redis" });
  assert.equal(server.code, 1, server.out);
  assert.match(server.out, /jitrunner server: DEBUG=ioredis:redis turns on debug output that prints secrets \(ioredis:redis:/);
  const checked = await run(["check-config", "--config", configFile], { ...SECRETS, DEBUG: "modem" });
  assert.equal(checked.code, 0, checked.out);
  assert.match(checked.out, /warning: DEBUG=modem would print secrets \(modem\)/);
  // The operator's commands talk to Redis only: ioredis's output (the AUTH command) is refused, docker-modem's is no matter.
  for (const args of [["status"], ["drain", "--host", "nowhere", "--no-wait"]]) {
    const refused = await run([...args, "--config", configFile], { DEBUG: "*" });
    assert.equal(refused.code, 1, refused.out);
    assert.match(refused.out, new RegExp(`jitrunner ${args[0]}: DEBUG=\\* turns on debug output that prints secrets \\(ioredis:redis`), refused.out);
    assert.doesNotMatch(refused.out, /prints secrets \([^)]*modem/, "docker-modem is not theirs");
    const modem = await run([...args, "--config", configFile], { DEBUG: "modem" });
    assert.doesNotMatch(modem.out, /turns on debug output that prints secrets/, modem.out);
  }
});

test("check-config judges the secrets by the mode asked about: --mode server needs no private key, --mode worker no webhook secret, the default (all) both", async () => {
  const hookOnly = { JITRUNNER_GITHUB_WEBHOOK_SECRET: WEBHOOK_SECRET, JITRUNNER_GITHUB_PRIVATE_KEY: "" };
  const keyOnly = { JITRUNNER_GITHUB_PRIVATE_KEY: SECRETS.JITRUNNER_GITHUB_PRIVATE_KEY, JITRUNNER_GITHUB_WEBHOOK_SECRET: "" };
  const server = await run(["check-config", "--mode", "server", "--config", configFile], hookOnly);
  assert.equal(server.code, 0, server.out);
  const worker = await run(["check-config", "--mode", "worker", "--config", configFile], keyOnly);
  assert.equal(worker.code, 0, worker.out);
  for (const env of [hookOnly, keyOnly]) {
    const all = await run(["check-config", "--config", configFile], env);
    assert.equal(all.code, 1, all.out);
    assert.match(all.out, /set JITRUNNER_GITHUB_(PRIVATE_KEY|WEBHOOK_SECRET) or github\.(privateKey|webhookSecret)File/);
  }
  const asAll = await run(["check-config", "--mode", "all", "--config", configFile], hookOnly);
  assert.equal(asAll.code, 1, asAll.out);
  const bad = await run(["check-config", "--mode", "both", "--config", configFile], SECRETS);
  assert.equal(bad.code, 2, bad.out);
  assert.match(bad.out, /--mode must be server, worker or all/);
});

test("check-config warns of the example config's placeholders left in, and still accepts the config", async () => {
  const file = join(dir, "placeholders.yml");
  await writeFile(file, configText(redis.url, redis.prefix).replace("appId: 1", "appId: 123456") + "policy:\n  allowedOwners: [my-org]\n");
  const r = await run(["check-config", "--config", file], SECRETS);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^jitrunner check-config: warning: github\.appId: 123456 is the example config's placeholder/m);
  assert.match(r.out, /^jitrunner check-config: warning: policy\.allowedOwners: my-org is the example config's placeholder/m);
  const clean = await run(["check-config", "--config", configFile], SECRETS);
  assert.doesNotMatch(clean.out, /placeholder/);
});

test("check-config warns of a Docker engine reached in clear text on another machine, for the modes that launch runners", async () => {
  // Only named, never connected to: check-config reads the config and sends nothing.
  const env = { ...SECRETS, DOCKER_HOST: "tcp://engine.invalid:2375" };
  const all = await run(["check-config", "--config", configFile], env);
  assert.equal(all.code, 0, all.out);
  assert.match(all.out, /jitrunner check-config: warning: .*engine\.invalid/);
  const server = await run(["check-config", "--mode", "server", "--config", configFile], env);
  assert.equal(server.code, 0, server.out);
  assert.doesNotMatch(server.out, /warning/);
});

test("each command reads only the files its mode uses: status needs no token file, a worker no admin token, the server no Docker TLS file", async () => {
  // A shared config naming files that this machine does not have, as an operator's laptop.
  const shared = join(dir, "shared.yml");
  const missing = join(dir, "not-mounted");
  await writeFile(
    shared,
    `${configText(redis.url, redis.prefix)}server:\n  adminTokenFile: ${missing}/admin\n  metricsTokenFile: ${missing}/metrics\n` +
      `worker:\n  docker: { host: engine.internal, port: 2376, protocol: https, caFile: ${missing}/ca.pem, certFile: ${missing}/cert.pem, keyFile: ${missing}/key.pem }\n`,
  );
  const status = await run(["status", "--config", shared], {});
  assert.equal(status.code, 0, status.out);
  const worker = await run(["check-config", "--mode", "worker", "--config", shared], SECRETS);
  assert.equal(worker.code, 1, worker.out);
  assert.match(worker.out, /server\.metricsTokenFile: cannot read/);
  assert.match(worker.out, /worker\.docker\.caFile: cannot read .*ca\.pem \(ENOENT\)/);
  assert.doesNotMatch(worker.out, /adminTokenFile/);
  const server = await run(["check-config", "--mode", "server", "--config", shared], SECRETS);
  assert.equal(server.code, 1, server.out);
  assert.match(server.out, /server\.adminTokenFile: cannot read/);
  assert.doesNotMatch(server.out, /worker\.docker/);
});

test("--help works on every command, without a config", async () => {
  const commands = Object.keys(COMMAND_HELP);
  assert.ok(commands.includes("status") && commands.includes("app-manifest") && commands.includes("check-config"));
  const results = await Promise.all(commands.map((c) => run([c, "--help"], { JITRUNNER_CONFIG: join(dir, "missing.yml") })));
  results.forEach((r, i) => {
    assert.equal(r.code, 0, `${commands[i]} --help: ${r.out}`);
    assert.match(r.out, new RegExp(`^Usage: jitrunner ${commands[i]}\\b`));
  });
  const top = await run(["--help"]);
  assert.equal(top.code, 0);
  assert.match(top.out, /status +pools, hosts, runners/);
  const unknown = await run(["statos"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.out, /unknown command 'statos'/);
});

test("an option a command does not take, or a word after it, exits 2 before any config is read", async () => {
  const env = { JITRUNNER_CONFIG: join(dir, "missing.yml") };
  const cases: Array<[string[], RegExp]> = [
    [["server", "--json"], /^jitrunner server: --json is not an option of server; see jitrunner server --help\n$/],
    [["status", "--host", "h1"], /--host is not an option of status/],
    [["worker", "--mode", "server"], /--mode is not an option of worker/],
    [["app-manifest", "--config", "x.yml"], /--config is not an option of app-manifest/],
    [["check-config", "extra"], /unexpected argument 'extra'/],
    [["drain", "--host", "h1", "--undo", "--no-wait"], /--undo and --no-wait do not go together/],
  ];
  const results = await Promise.all(cases.map(([args]) => run(args, env)));
  results.forEach((r, i) => {
    const [args, said] = cases[i]!;
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.out}`);
    assert.match(r.out, said);
  });
  // An option no command takes (a typo): one line, with the nearest the command takes, not parseArgs' text and the usage.
  const typos: Array<[string[], string]> = [
    [["all", "--confg", "x"], "jitrunner all: --confg is not an option of all (did you mean --config?); see jitrunner all --help\n"],
    [["--confg", "x", "all"], "jitrunner all: --confg is not an option of all (did you mean --config?); see jitrunner all --help\n"],
    [["check-config", "--mdoe", "server"], "jitrunner check-config: --mdoe is not an option of check-config (did you mean --mode?); see jitrunner check-config --help\n"],
    [["drain", "--hots=h1"], "jitrunner drain: --hots is not an option of drain (did you mean --host?); see jitrunner drain --help\n"],
    [["status", "--frobnicate"], "jitrunner status: --frobnicate is not an option of status; see jitrunner status --help\n"],
    [["worker", "-x"], "jitrunner worker: -x is not an option of worker; see jitrunner worker --help\n"],
    [["--confg"], "jitrunner: --confg is not an option (did you mean --config?); see jitrunner --help\n"],
  ];
  const typoResults = await Promise.all(typos.map(([args]) => run(args, env)));
  typoResults.forEach((r, i) => {
    const [args, said] = typos[i]!;
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.out}`);
    assert.equal(r.out, said, args.join(" "));
  });
  // An option given no value (the last word, another option after it, or empty), or a value it does not take: likewise one line.
  const values: Array<[string[], string]> = [
    [["all", "--config"], "jitrunner all: --config needs a value (a path to the config file); see jitrunner all --help\n"],
    [["status", "--config", "--json"], "jitrunner status: --config needs a value (a path to the config file); see jitrunner status --help\n"],
    [["worker", "-c"], "jitrunner worker: -c needs a value (a path to the config file); see jitrunner worker --help\n"],
    [["server", "--config="], "jitrunner server: --config needs a value (a path to the config file); see jitrunner server --help\n"],
    [["drain", "--host"], "jitrunner drain: --host needs a value (a host's ID, its worker.hostId); see jitrunner drain --help\n"],
    [["check-config", "--mode", "-c", "x.yml"], "jitrunner check-config: --mode needs a value (server, worker or all); see jitrunner check-config --help\n"],
    [["app-manifest", "--url"], "jitrunner app-manifest: --url needs a value (the base URL where GitHub reaches jitrunner); see jitrunner app-manifest --help\n"],
    [["app-manifest", "--name", "--url", "https://ci.example.com"], "jitrunner app-manifest: --name needs a value (the App's name); see jitrunner app-manifest --help\n"],
    [["app-manifest", "--redirect-url"], "jitrunner app-manifest: --redirect-url needs a value (the URL GitHub sends the browser back to); see jitrunner app-manifest --help\n"],
    [["status", "--json=yes"], "jitrunner status: --json takes no value; see jitrunner status --help\n"],
    // One the command does not take is said as such, value or not.
    [["status", "--host"], "jitrunner status: --host is not an option of status; see jitrunner status --help\n"],
    [["--config"], "jitrunner: --config needs a value (a path to the config file); see jitrunner --help\n"],
  ];
  const valueResults = await Promise.all(values.map(([args]) => run(args, env)));
  valueResults.forEach((r, i) => {
    const [args, said] = values[i]!;
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.out}`);
    assert.equal(r.out, said, args.join(" "));
  });
  // What each command takes is still taken (short forms too): here, the missing config is what stops it.
  const taken = await run(["status", "-c", join(dir, "missing.yml"), "--json"]);
  assert.equal(taken.code, 1, taken.out);
  assert.match(taken.out, /no config at/);
});

test("app-manifest prints the manifest for the given base URL, with no config at all", async () => {
  const r = await run(["app-manifest", "--url", "https://ci.example.com"], { JITRUNNER_CONFIG: join(dir, "missing.yml") });
  assert.equal(r.code, 0, r.out);
  const m = JSON.parse(r.out);
  assert.equal(m.hook_attributes.url, "https://ci.example.com/webhooks/github");
  assert.equal(m.public, false);
  assert.deepEqual(m.default_permissions, { administration: "write", actions: "read", organization_self_hosted_runners: "write" });
  assert.deepEqual(m.default_events, ["workflow_job", "repository"]);
  const bad = await run(["app-manifest", "--url", "ftp://x"]);
  assert.equal(bad.code, 2);
});

test("status prints pools with queue depth, hosts, runners, recent jobs and failures from Redis", async () => {
  const runners = new RunnerStore(conn, redis.prefix);
  await runners.put({ name: "jitrunner-default-aaaa000001", pool: "default", host: "dockerhost-1", state: "starting", installationId: 1, owner: "acme", repo: "app", demandId: "1-1", createdAt: Date.now() - 125_000 });
  await runners.mark("jitrunner-default-aaaa000001", "busy", 4242);
  await runners.put({ name: "jitrunner-arm-bbbb000002", pool: "arm", host: "pi-2", state: "starting", installationId: 1, owner: "acme", repo: "lib", demandId: "2-1", createdAt: Date.now() - 3000 });
  await new HostStore(conn, redis.prefix).heartbeat({ id: "dockerhost-1", capacity: 4, used: 1, pools: ["default"] }, 60_000);
  const queues = new DemandQueues({ redisUrl: redis.url, prefix: redis.prefix, attempts: 3 }, conn);
  for (const jobId of [1, 2]) {
    await queues.add({ pool: "arm", jobId, runId: 1, runAttempt: 1, owner: "acme", repo: "lib", installationId: 1, labels: ["self-hosted", "arm64"], receivedAt: Date.now(), deliveryId: `d${jobId}` });
  }
  await queues.close();
  const activity = new ActivityLog(conn, redis.prefix);
  await activity.delivery({ event: "workflow_job", payload: queuedPayload({ jobId: 77, labels: ["self-hosted", "arm64"], repo: "lib" }), receivedAt: Date.now() }, "queued");
  await activity.launchFailure({ pool: "arm", jobId: 78, owner: "acme", repo: "lib" }, 3, Object.assign(new Error("engine unreachable"), { code: "E_DOCKER" }), false);

  const r = await run(["status", "--config", configFile], SECRETS);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^jitrunner status at /);
  assert.match(r.out, /2 runner\(s\), 1 busy; 2 job\(s\) waiting; 2 host\(s\)/);
  assert.match(r.out, /^default +self-hosted,linux,x64 +jitrunner-runner:latest +capabilities +repository +0 +1 busy$/m);
  assert.match(r.out, /^arm +self-hosted,linux,arm64 +jitrunner-runner-arm:latest +privileged +repository +2 +1 starting$/m);
  // Ages in whole seconds, whatever a loaded machine took to get here (\d+, not \d).
  assert.match(r.out, /^dockerhost-1 +up +1\/4 +\d+s ago +1 busy +default +2m \d\ds ago$/m);
  assert.match(r.out, /^pi-2 +unknown +1 starting +arm +\d+s ago$/m, "a host known only by its runners");
  assert.match(r.out, /^jitrunner-default-aaaa000001 +default +dockerhost-1 +busy +2m \d\ds +acme\/app +4242$/m);
  assert.match(r.out, /^\S+ ago +77 +acme\/lib +.* +arm +waiting for a runner$/m);
  assert.match(r.out, /^\S+ ago +arm +78 +acme\/lib +3 +E_DOCKER +engine unreachable$/m);

  // No GitHub secret is needed to read the status (the config names no secret files either).
  const bare = await run(["status", "--config", configFile]);
  assert.equal(bare.code, 0, bare.out);
  assert.match(bare.out, /2 runner\(s\), 1 busy/);

  const json = await run(["status", "--json", "--config", configFile], SECRETS);
  assert.equal(json.code, 0, json.out);
  const s = JSON.parse(json.out);
  assert.deepEqual(s.runners.map((x: { name: string }) => x.name), ["jitrunner-default-aaaa000001", "jitrunner-arm-bbbb000002"]);
  assert.deepEqual(s.pools.map((p: { name: string; pending: number }) => [p.name, p.pending]), [["default", 0], ["arm", 2]]);
  assert.ok(!json.out.includes("PRIVATE KEY") && !json.out.includes(WEBHOOK_SECRET), "no secret in the output");
});

test("status fails fast, exit 1, when Redis does not answer", async () => {
  const deadFile = join(dir, "dead.yml");
  await writeFile(deadFile, configText(`redis://127.0.0.1:${await freePort()}`, "x"));
  const started = Date.now();
  const r = await run(["status", "--config", deadFile], SECRETS);
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /cannot reach Redis/);
  assert.ok(Date.now() - started < 15_000);
});

test("a config file that is missing, or a directory (Compose bind-mounting a file that did not exist), is said so with the way forward", async () => {
  const missing = join(dir, "nowhere.yml");
  for (const [args, env] of [
    [["status", "--config", missing], {}],
    [["check-config"], { JITRUNNER_CONFIG: missing }],
  ] as const) {
    const r = await run([...args], env);
    assert.equal(r.code, 1, r.out);
    assert.equal(r.out, `jitrunner: no config at ${missing}: pass --config FILE or set JITRUNNER_CONFIG; start from deploy/jitrunner.example.yml\n`);
  }
  const mounted = join(dir, "mounted.yml");
  await mkdir(mounted);
  const r = await run(["all", "--config", mounted], SECRETS);
  assert.equal(r.code, 1, r.out);
  assert.equal(
    r.out,
    `jitrunner: cannot read config ${mounted} (a directory: Docker creates one when a bind-mounted file does not exist; remove it and create the file. ` +
      "Under Compose, the file mounted at /etc/jitrunner/jitrunner.yml is ./jitrunner.yml beside docker-compose.yml: remove the directory there and copy deploy/jitrunner.example.yml to it)\n",
  );
});

test("status and drain that cannot reach Redis name its URL (without the password) and where it came from", async () => {
  const port = await freePort();
  const password = "env-redis-pass-K3v";
  const env = { JITRUNNER_REDIS_URL: `redis://:${password}@127.0.0.1:${port}` };
  for (const args of [["status"], ["drain", "--host", "h1"], ["drain", "--host", "h1", "--undo"]]) {
    const r = await run([args[0]!, "--config", configFile, ...args.slice(1)], env, 20_000);
    assert.equal(r.code, 1, r.out);
    const command = args.includes("--undo") ? "drain --undo" : args[0];
    assert.equal(r.out, `jitrunner ${command}: cannot reach Redis at redis://:redacted@127.0.0.1:${port} (from JITRUNNER_REDIS_URL): connect ECONNREFUSED 127.0.0.1:${port}\n`);
  }
  const fromFile = join(dir, "closed.yml");
  await writeFile(fromFile, configText(`redis://127.0.0.1:${port}/3`, "x"));
  const r = await run(["status", "--config", fromFile], {}, 20_000);
  assert.equal(r.code, 1, r.out);
  assert.equal(r.out, `jitrunner status: cannot reach Redis at redis://127.0.0.1:${port}/3 (redis.url): connect ECONNREFUSED 127.0.0.1:${port}\n`);
});

test("status and drain exit 1 when Redis accepts the connection but never answers, without printing the URL's password", async () => {
  const silent = await silentServer();
  try {
    const password = "hung-redis-pass-Q7w";
    const file = join(dir, "silent.yml");
    await writeFile(file, configText(`redis://:${password}@127.0.0.1:${silent.port}`, "x"));
    for (const args of [["status"], ["drain", "--host", "dockerhost-1"], ["drain", "--host", "dockerhost-1", "--no-wait"]]) {
      // The limit is generous: it catches a hang, not slowness.
      const r = await run([args[0]!, "--config", file, ...args.slice(1)], SECRETS, 20_000);
      assert.equal(r.code, 1, r.out);
      const at = `redis://:redacted@127\\.0\\.0\\.1:${silent.port} \\(redis\\.url\\)`;
      assert.match(r.out, new RegExp(`^jitrunner ${args[0]}: cannot reach Redis at ${at}: .*did not answer within \\d+ s$`, "m"));
      assert.ok(!r.out.includes(password), r.out);
    }
  } finally {
    await silent.close();
  }
});

test("a SIGTERM while the server still starts (its Redis silent) is heard: the start goes no further than its step, and the server exits 0", { timeout: 60_000 }, async () => {
  const silent = await silentServer();
  const file = join(dir, "starting.yml");
  await writeFile(file, `${configText(`redis://127.0.0.1:${silent.port}`, "x")}server:\n  host: 127.0.0.1\n  port: ${await freePort()}\n`);
  const p = runJitrunner(["server", "--config", file], SECRETS);
  try {
    await waitFor(() => p.output().includes('"msg":"starting"'), 20_000, "the server to start starting");
    // Into the start, which waits seconds for the silent Redis before it goes on without it.
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(!p.output().includes("jitrunner started"), p.output());
    p.child.kill("SIGTERM");
    const code = await p.exited(30_000, "still running after SIGTERM");
    // Not killed by the signal: without a handler a PID 1 in a container ignores it, and elsewhere
    // it dies unstopped. The start, waiting seconds on the silent Redis, never listened.
    assert.equal(code, 0, p.output());
    const msgs = p.output().split("\n").flatMap((l) => (l.startsWith("{") ? [(JSON.parse(l) as { msg: string }).msg] : []));
    assert.deepEqual(msgs, ["starting", "shutting down while starting: the start stops at its next step (a second signal exits now)", "stopped"], p.output());
  } finally {
    p.child.kill("SIGKILL");
    await silent.close();
  }
});

test("drain, waiting for a host, exits 1 when Redis stops answering during the wait; the host stays draining", async () => {
  const relay = await silenceableRelay(new URL(redis.url));
  const file = join(dir, "relay.yml");
  await writeFile(file, configText(`redis://127.0.0.1:${relay.port}`, redis.prefix));
  const hosts = new HostStore(conn, redis.prefix);
  await hosts.heartbeat({ id: "relayhost", capacity: 2, used: 1, pools: ["default"] }, 60_000);
  const p = runJitrunner(["drain", "--config", file, "--host", "relayhost"], SECRETS);
  try {
    await waitFor(() => p.output().includes("draining relayhost"), 20_000, "drain to tell the host");
    relay.silence();
    const code = await p.exited(20_000, "drain still waiting after Redis went silent");
    assert.equal(code, 1, p.output());
    assert.match(p.output(), new RegExp(`^jitrunner drain: cannot reach Redis at redis://127\\.0\\.0\\.1:${relay.port} \\(redis\\.url\\): .*did not answer within \\d+ s.*relayhost`, "m"));
    assert.equal(await hosts.draining("relayhost"), true);
  } finally {
    await p.stop();
    await relay.close();
    await hosts.forget("relayhost");
  }
});

test("drain waiting for a host that stops answering with a busy runner still recorded exits 3 and says so", async () => {
  const hosts = new HostStore(conn, redis.prefix);
  const runners = new RunnerStore(conn, redis.prefix);
  const beat = (ttlMs: number) => hosts.heartbeat({ id: "host-a", capacity: 2, used: 1, pools: ["default"] }, ttlMs);
  await beat(60_000);
  await runners.put({ name: "jitrunner-default-cccc000003", pool: "default", host: "host-a", state: "busy", installationId: 1, owner: "acme", repo: "app", demandId: "3-1", createdAt: Date.now() });
  const p = runJitrunner(["drain", "--config", configFile, "--host", "host-a"], SECRETS);
  try {
    await waitFor(() => p.output().includes("draining host-a"), 20_000, "drain to tell the host");
    // Host A's worker is killed after its last beat: its record lapses, its busy runner stays recorded.
    await beat(500);
    const code = await p.exited(20_000, "drain still waiting after the host stopped answering");
    assert.equal(code, 3, p.output());
    assert.match(p.output(), /^draining host-a: /m);
    assert.match(p.output(), /^jitrunner drain: host-a stopped answering with 1 runner\(s\) still recorded; they may still be running jobs/m);
    assert.doesNotMatch(p.output(), /host-a drained/);
  } finally {
    await p.stop();
    await runners.remove({ name: "jitrunner-default-cccc000003", host: "host-a", demandId: "3-1" }, true);
    await hosts.forget("host-a");
  }
});

test("drain waiting for a host ends at Ctrl-C or SIGTERM with 130 or 143, as a process that is PID 1 in a container would not by itself; the host still drains", async () => {
  const hosts = new HostStore(conn, redis.prefix);
  await hosts.heartbeat({ id: "host-sig", capacity: 2, used: 1, pools: ["default"] }, 60_000);
  try {
    for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
      const p = runJitrunner(["drain", "--config", configFile, "--host", "host-sig"], SECRETS);
      try {
        await waitFor(() => p.output().includes("draining host-sig"), 20_000, "drain to tell the host");
        p.child.kill(signal);
        assert.equal(await p.exited(20_000, `drain still waiting after ${signal}`), code, p.output());
        assert.match(p.output(), new RegExp(`^jitrunner drain: stopped by ${signal}: a host already told to drain drains all the same`, "m"));
        assert.equal(await hosts.draining("host-sig"), true, "the host still draining");
      } finally {
        await p.stop();
      }
    }
  } finally {
    await hosts.forget("host-sig");
  }
});

test("drain without --host exits 2, as --help says, whatever the config", async () => {
  const r = await run(["drain", "--config", configFile], SECRETS);
  assert.equal(r.code, 2, r.out);
  assert.match(r.out, /jitrunner drain: --host ID is required/);
  const noConfig = await run(["drain", "--config", "/nonexistent/jitrunner.yml"], SECRETS);
  assert.equal(noConfig.code, 2, noConfig.out);
  assert.match(noConfig.out, /jitrunner drain: --host ID is required/);
  const help = await run(["drain", "--help"], SECRETS);
  assert.match(help.out, /2 --host missing/);
});

test("drain waiting for a host that finishes its jobs and leaves exits 0: drained", async () => {
  const hosts = new HostStore(conn, redis.prefix);
  const runners = new RunnerStore(conn, redis.prefix);
  const runner = { name: "jitrunner-default-dddd000004", pool: "default", host: "host-b", state: "busy" as const, installationId: 1, owner: "acme", repo: "app", demandId: "4-1", createdAt: Date.now() };
  await hosts.heartbeat({ id: "host-b", capacity: 2, used: 1, pools: ["default"] }, 60_000);
  await runners.put(runner);
  const p = runJitrunner(["drain", "--config", configFile, "--host", "host-b"], SECRETS);
  try {
    await waitFor(() => p.output().includes("draining host-b"), 20_000, "drain to tell the host");
    // What a drained worker does at its end: its last runner removed, then it leaves the fleet (HostPresence.stop).
    await runners.remove(runner, true);
    await hosts.forget("host-b");
    const code = await p.exited(20_000, "drain still waiting after the host left");
    assert.equal(code, 0, p.output());
    assert.match(p.output(), /^host-b drained$/m);
  } finally {
    await p.stop();
  }
});
