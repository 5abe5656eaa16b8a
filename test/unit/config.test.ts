import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { parse as parseYaml } from "yaml";
import { loadConfig, loadConfigWithOrigins } from "../../src/config/load.ts";
import { withoutPassword } from "../../src/queue/redis-address.ts";
import { ConfigError } from "../../src/errors.ts";
import { testPrivateKey } from "../helpers/config.ts";

const KEY = testPrivateKey();
const env = { JITRUNNER_GITHUB_PRIVATE_KEY: KEY, JITRUNNER_GITHUB_WEBHOOK_SECRET: "s3cret-value-0123456789" };
const noFiles = (p: string): string => {
  throw Object.assign(new Error(`ENOENT ${p}`), { code: "ENOENT" });
};

/** `text` as a regular expression matching it literally (a path's dots and brackets). */
const escaped = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const minimal = `
github:
  appId: 42
pools:
  - name: default
    labels: [self-hosted, linux]
    image: runner:1
`;

test("a minimal config gets documented defaults", () => {
  const c = loadConfig({ text: minimal, env, readFile: noFiles });
  assert.equal(c.github.apiUrl, "https://api.github.com");
  assert.equal(c.github.checkStillQueued, true);
  assert.equal(c.server.port, 8080);
  assert.equal(c.server.bodyLimitBytes, 1024 * 1024);
  assert.equal(c.worker.capacity, 4);
  assert.equal(c.worker.leaseSeconds, 30);
  assert.equal(c.worker.goneHostBusyCheckSeconds, 300);
  assert.ok(c.worker.hostId.length > 0);
  const pool = c.pools[0]!;
  assert.equal(pool.isolation, "privileged");
  assert.equal(pool.scope, "repository");
  assert.equal(pool.runnerGroupId, 1);
  assert.equal(pool.networkMode, "bridge");
  assert.equal(c.secrets.privateKey.reveal(), KEY.trim());
});

test("every problem is reported at once, and no secret is in the report", () => {
  const text = `
github:
  appId: -1
  apiUrl: not a url
server:
  port: 70000
worker:
  capacity: 0
  leaseSeconds: 2
  pools: [nope]
pools:
  - name: Bad_Name
    labels: []
    image: x
    isolation: chroot
  - name: ok
    labels: [a]
    image: x
    surprise: true
`;
  const secretEnv = { JITRUNNER_GITHUB_PRIVATE_KEY: "not-a-pem-but-secret-XYZ", JITRUNNER_GITHUB_WEBHOOK_SECRET: "hunter2-webhook" };
  const err = (() => {
    try {
      loadConfig({ text, env: secretEnv, readFile: noFiles });
    } catch (e) {
      return e;
    }
  })();
  assert.ok(err instanceof ConfigError, "throws ConfigError");
  const joined = err.problems.join("\n");
  for (const where of ["github.appId", "github.apiUrl", "server.port", "worker.capacity", "worker.leaseSeconds", "pools[0].name", "pools[0].labels", "pools[0].isolation", "pools[1]", "privateKey"]) {
    assert.match(joined, new RegExp(escaped(where)), `reports ${where}`);
  }
  assert.ok(err.problems.length >= 10, `${err.problems.length} problems`);
  assert.doesNotMatch(err.message, /not-a-pem-but-secret-XYZ|hunter2-webhook/);
});

test("an option in seconds over 7 days is refused at load: Node would run a timer of over 24.8 days at once", () => {
  const text = `${minimal}    startTimeoutSeconds: 9999999
worker:
  heartbeatSeconds: 604801
  docker:
    callTimeoutSeconds: 5000000
reconcile:
  queuedIntervalSeconds: 2592000
`;
  const err = (() => {
    try {
      loadConfig({ text, env, readFile: noFiles });
    } catch (e) {
      return e;
    }
  })();
  assert.ok(err instanceof ConfigError, "throws ConfigError");
  const joined = err.problems.join("\n");
  for (const where of ["pools[0].startTimeoutSeconds", "worker.heartbeatSeconds", "worker.docker.callTimeoutSeconds", "reconcile.queuedIntervalSeconds"]) {
    assert.match(joined, new RegExp(`${escaped(where)}.*at most 604800 \\(7 days\\)`), `reports ${where}: ${joined}`);
  }
  // 7 days itself is taken, and a window looked back over is not a wait.
  const c = loadConfig({ text: `${minimal}    idleTimeoutSeconds: 604800\nreconcile:\n  activeWindowSeconds: 2592000\n`, env, readFile: noFiles });
  assert.equal(c.pools[0]!.idleTimeoutSeconds, 604800);
  assert.equal(c.reconcile.activeWindowSeconds, 2592000);
});

test("secrets come from files when the environment has none; unreadable files are reported", () => {
  const files: Record<string, string> = { "/run/key.pem": `${KEY}\n`, "/run/hook": "from-file-0123456789\n" };
  const read = (p: string) => files[p] ?? noFiles(p);
  const text = `${minimal}\n`.replace("appId: 42", "appId: 42\n  privateKeyFile: /run/key.pem\n  webhookSecretFile: /run/hook");
  const c = loadConfig({ text, env: {}, readFile: read });
  assert.equal(c.secrets.webhookSecret.reveal(), "from-file-0123456789");
  assert.equal(String(c.secrets.webhookSecret), "[redacted]");
  assert.equal(JSON.stringify({ s: c.secrets.privateKey }), '{"s":"[redacted]"}');

  const directory = (p: string): string => {
    if (p === "/run/key.pem") return KEY;
    throw Object.assign(new Error(`EISDIR ${p}`), { code: "EISDIR" });
  };
  assert.throws(() => loadConfig({ text, env: {}, readFile: directory }), /webhookSecretFile: cannot read \/run\/hook: it is a directory \(Docker creates one when a bind-mounted file does not exist/);
  const missing = text.replace("/run/hook", "/run/missing");
  assert.throws(() => loadConfig({ text: missing, env: {}, readFile: read }), /webhookSecretFile: cannot read \/run\/missing \(ENOENT\)/);
  assert.throws(() => loadConfig({ text: minimal, env: {}, readFile: read }), /set JITRUNNER_GITHUB_PRIVATE_KEY or github\.privateKeyFile/);
});

test("a secret from the environment that is only white space is refused, as an empty file is: an empty webhook secret would accept anyone's signature", () => {
  for (const [name, blank] of [["JITRUNNER_GITHUB_WEBHOOK_SECRET", " "], ["JITRUNNER_GITHUB_WEBHOOK_SECRET", "\n\t"], ["JITRUNNER_GITHUB_PRIVATE_KEY", "\n\t"], ["JITRUNNER_GITHUB_PRIVATE_KEY", "\\n"]] as const) {
    assert.throws(
      () => loadConfig({ text: minimal, env: { ...env, [name]: blank }, readFile: noFiles }),
      (err: unknown) => err instanceof ConfigError && err.message.includes(`${name} holds only white space`),
      `${name}=${JSON.stringify(blank)}`,
    );
  }
});

test("a webhook secret keeps a backslash-n as the two characters it is (GitHub signs with them); only the PEM key's \\n become line breaks", () => {
  const hook = "0123456789-ab\\ncd\\n";
  const c = loadConfig({ text: minimal, env: { JITRUNNER_GITHUB_PRIVATE_KEY: KEY.trim().replace(/\n/g, "\\n"), JITRUNNER_GITHUB_WEBHOOK_SECRET: ` ${hook}\n` }, readFile: noFiles });
  assert.equal(c.secrets.webhookSecret.reveal(), hook, "surrounding white space trimmed, nothing else");
  assert.equal(c.secrets.privateKey.reveal(), KEY.trim(), "the key's line breaks restored");
  const files: Record<string, string> = { "/run/hook": `${hook}\n` };
  const text = minimal.replace("appId: 42", "appId: 42\n  webhookSecretFile: /run/hook");
  const fromFile = loadConfig({ text, env: { JITRUNNER_GITHUB_PRIVATE_KEY: KEY }, readFile: (p) => files[p] ?? noFiles(p) });
  assert.equal(fromFile.secrets.webhookSecret.reveal(), hook);
});

test("each mode reads and requires only the GitHub secrets it uses: server the webhook secret, worker the key, all both, status and drain neither", () => {
  // The config names both files, as one shared jitrunner.yml does; only some are mounted.
  const text = minimal.replace("appId: 42", "appId: 42\n  privateKeyFile: /run/secrets/github-app-key\n  webhookSecretFile: /run/secrets/webhook-secret");
  const mounted = (files: Record<string, string>) => {
    const reads: string[] = [];
    return {
      reads,
      readFile: (p: string) => {
        reads.push(p);
        return files[p] ?? noFiles(p);
      },
    };
  };
  const both = { "/run/secrets/github-app-key": KEY, "/run/secrets/webhook-secret": "hook-secret-0123456789\n" };

  // The internet-facing server: no key mounted, none read, none held.
  const server = mounted({ "/run/secrets/webhook-secret": "hook-secret-0123456789\n" });
  const s = loadConfig({ text, env: {}, readFile: server.readFile, secretsFor: "server" });
  assert.equal(s.secrets.webhookSecret.reveal(), "hook-secret-0123456789");
  assert.equal(s.secrets.privateKey.reveal(), "");
  assert.deepEqual(server.reads, ["/run/secrets/webhook-secret"]);
  assert.equal(loadConfig({ text: minimal, env, readFile: noFiles, secretsFor: "server" }).secrets.privateKey.reveal(), "", "a key in the environment is not taken either");
  assert.throws(() => loadConfig({ text: minimal, env: {}, readFile: noFiles, secretsFor: "server" }), /webhookSecret: set JITRUNNER_GITHUB_WEBHOOK_SECRET or github\.webhookSecretFile \(server and all need it/);

  // A worker: the key, no webhook secret.
  const worker = mounted({ "/run/secrets/github-app-key": KEY });
  const w = loadConfig({ text, env: {}, readFile: worker.readFile, secretsFor: "worker" });
  assert.equal(w.secrets.privateKey.reveal(), KEY.trim());
  assert.equal(w.secrets.webhookSecret.reveal(), "");
  assert.deepEqual(worker.reads, ["/run/secrets/github-app-key"]);
  assert.throws(() => loadConfig({ text: minimal, env: {}, readFile: noFiles, secretsFor: "worker" }), /privateKey: set JITRUNNER_GITHUB_PRIVATE_KEY or github\.privateKeyFile \(worker and all need it/);

  // all (the default) needs both; missing either is a problem.
  const all = loadConfig({ text, env: {}, readFile: mounted(both).readFile });
  assert.deepEqual([all.secrets.privateKey.reveal(), all.secrets.webhookSecret.reveal()], [KEY.trim(), "hook-secret-0123456789"]);
  assert.throws(() => loadConfig({ text, env: {}, readFile: server.readFile, secretsFor: "all" }), /github\.privateKeyFile: cannot read \/run\/secrets\/github-app-key/);
  assert.throws(() => loadConfig({ text, env: {}, readFile: worker.readFile }), /github\.webhookSecretFile: cannot read \/run\/secrets\/webhook-secret/);

  // status and drain: neither.
  const none = mounted({});
  const n = loadConfig({ text, env: {}, readFile: none.readFile, secretsFor: "none" });
  assert.deepEqual([n.secrets.privateKey.reveal(), n.secrets.webhookSecret.reveal(), none.reads], ["", "", []]);
});

test("a private key whose line breaks were lost on the way (an unquoted \\n in a systemd environment file) is refused at load, without the key in the message", () => {
  const mangled = KEY.trim().replace(/\n/g, "n");
  assert.ok(mangled.includes("PRIVATE KEY-----"), "it still looks like a PEM");
  let err: unknown;
  try {
    loadConfig({ text: minimal, env: { ...env, JITRUNNER_GITHUB_PRIVATE_KEY: mangled }, readFile: noFiles });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ConfigError, String(err));
  assert.match(err.message, /privateKey \(from JITRUNNER_GITHUB_PRIVATE_KEY\): not a PEM private key that can be read/);
  assert.ok(!err.message.includes(KEY.split("\n")[1]!), "no key material in the message");
  // Where it came from: the file named, or the variable read instead of it.
  const withFile = `${minimal.replace("appId: 42", "appId: 42\n  privateKeyFile: /etc/jitrunner/app.pem")}`;
  const fromFile = problemsOf({ text: withFile, env: {}, readFile: () => mangled, secretsFor: "worker" }).join("\n");
  assert.match(fromFile, /^privateKey \(from github\.privateKeyFile: \/etc\/jitrunner\/app\.pem\): not a PEM private key/m);
  const both = problemsOf({ text: withFile, env: { JITRUNNER_GITHUB_PRIVATE_KEY: mangled }, readFile: () => KEY, secretsFor: "worker" }).join("\n");
  assert.match(both, /^privateKey \(from JITRUNNER_GITHUB_PRIVATE_KEY, which is read instead of github\.privateKeyFile \(\/etc\/jitrunner\/app\.pem\)\): not a PEM/m);
});

test("a private key that is not RSA (EC, Ed25519) is refused at load: App JWTs are RS256; without the key in the message", () => {
  const withFile = `${minimal.replace("appId: 42", "appId: 42\n  privateKeyFile: /etc/jitrunner/app.pem")}`;
  for (const [type, pem] of [
    ["ec", generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }).toString()],
    ["ec", generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "sec1", format: "pem" }).toString()],
    ["ed25519", generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString()],
  ] as const) {
    const fromEnv = problemsOf({ text: minimal, env: { ...env, JITRUNNER_GITHUB_PRIVATE_KEY: pem }, readFile: noFiles }).join("\n");
    assert.match(fromEnv, new RegExp(`^privateKey \\(from JITRUNNER_GITHUB_PRIVATE_KEY\\): a key of type ${type}, not rsa: a GitHub App signs its tokens \\(JWTs\\) with RS256`, "m"));
    assert.ok(!fromEnv.includes(pem.split("\n")[1]!), "no key material in the message");
    const fromFile = problemsOf({ text: withFile, env: {}, readFile: () => pem, secretsFor: "worker" }).join("\n");
    assert.match(fromFile, new RegExp(`^privateKey \\(from github\\.privateKeyFile: /etc/jitrunner/app\\.pem\\): a key of type ${type}, not rsa`, "m"));
  }
  // An RSA key in either PEM form GitHub and openssl give is taken.
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
  for (const type of ["pkcs1", "pkcs8"] as const) {
    const pem = rsa.export({ type, format: "pem" }).toString();
    assert.equal(loadConfig({ text: minimal, env: { ...env, JITRUNNER_GITHUB_PRIVATE_KEY: pem }, readFile: noFiles }).secrets.privateKey.reveal(), pem.trim());
  }
});

test("duplicate pools and unknown worker pools are cross-checked; YAML errors are clear", () => {
  const dup = `${minimal}  - name: default\n    labels: [x]\n    image: y\n`;
  assert.throws(() => loadConfig({ text: dup, env, readFile: noFiles }), /duplicate pool name 'default'/);
  const twice = minimal.replace(/labels: \[[^\]]*\]/, "labels: [self-hosted, Linux, linux]");
  assert.notEqual(twice, minimal);
  assert.throws(() => loadConfig({ text: twice, env, readFile: noFiles }), /pools\[0\]\.labels: label 'linux' is given twice \(labels are compared without regard to case\)/);
  assert.throws(() => loadConfig({ text: "github: [unclosed", env, readFile: noFiles }), /not valid YAML/);
});

test("a key the schema does not know is named with its line and the nearest key its object takes; array items are written pools[0]", () => {
  const text = `
github:
  appId: 42
worker:
  capacty: 3
  docker:
    hots: engine.internal
pool: []
pools:
  - name: default
    labels: [self-hosted, linux]
    image: runner:1
    minIddle: 1
    mounts:
      - { source: /srv/cache, target: /cache, readonly: true }
    resources: { cpu: 2, zzzzzzzz: 1 }
`;
  let problems: string[] = [];
  try {
    loadConfig({ text, env, readFile: noFiles });
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    problems = e.problems;
  }
  for (const said of [
    'worker: Unrecognized key: "capacty" (line 5; did you mean "capacity"?)',
    'worker.docker: Unrecognized key: "hots" (line 7; did you mean "host"?)',
    '(top level): Unrecognized key: "pool" (line 8; did you mean "pools"?)',
    'pools[0]: Unrecognized key: "minIddle" (line 13; did you mean "minIdle"?)',
    'pools[0].mounts[0]: Unrecognized key: "readonly" (line 15; did you mean "readOnly"?)',
    'pools[0].resources: Unrecognized key: "cpu" (line 16; did you mean "cpus"?)',
    // Nothing near: its line only.
    'pools[0].resources: Unrecognized key: "zzzzzzzz" (line 16)',
  ]) {
    assert.ok(problems.includes(said), `${said}\nin:\n${problems.join("\n")}`);
  }
  assert.equal(problems.length, 7, problems.join("\n"));
});

test("every config problem about an option the file holds names its line; one left out, the line of the mapping it is missing from; one a variable set, the variable", () => {
  const text = `
github:
  appId: 42
  privateKeyFile: /run/secrets/none
server:
  port: 70000
  adminTokenFile: /run/secrets/admin
worker:
  pools: [default, gpu]
policy:
  allowedOwners: [acme, 5]
pools:
  - name: default
    labels: [self-hosted]
    image: runner:1
    maxRunners: "abc"
    warm:
      owner: acme
  - name: default
    labels: [self-hosted]
    image: runner:2
`;
  // The key from its file, not the variable; the admin token from its variable, over the file's option.
  const sources = { text, env: { JITRUNNER_GITHUB_WEBHOOK_SECRET: env.JITRUNNER_GITHUB_WEBHOOK_SECRET, JITRUNNER_ADMIN_TOKEN: "short" }, readFile: noFiles };
  assert.deepEqual(problemsOf(sources).sort(), [
    "github.privateKeyFile: cannot read /run/secrets/none (ENOENT) (line 4)",
    "policy.allowedOwners[1]: Invalid input: expected string, received number (line 11)",
    "pools[0].maxRunners: Invalid input: expected number, received string (line 16)",
    "pools[0].warm.installationId: Invalid input: expected number, received undefined (pools[0].warm at line 17)",
    "pools[1].name: duplicate pool name 'default' (line 19)",
    "server.adminTokenFile: the token (from JITRUNNER_ADMIN_TOKEN) must be at least 16 characters without spaces",
    "server.port: Too big: expected number to be <=65535 (line 6)",
    "worker.pools[1]: no pool named 'gpu' (line 9)",
  ]);
  // A value a variable set names the variable, not the file's line (which the value is not).
  const over = problemsOf({ ...sources, env: { ...sources.env, JITRUNNER_PORT: "80000" } });
  assert.ok(over.includes("server.port: Too big: expected number to be <=65535 (from JITRUNNER_PORT)"), over.join("\n"));
  // A whole section left out has no line to name.
  assert.deepEqual(problemsOf({ text: "pools: []\n", env, readFile: noFiles }).sort(), [
    "github: Invalid input: expected object, received undefined",
    "pools: at least one pool is needed (line 1)",
  ]);
});

test("a YAML warning is refused by where it is, and neither it nor an error prints the line that holds a credential", () => {
  const emitted: string[] = [];
  const onWarning = (w: Error) => emitted.push(w.message);
  process.on("warning", onWarning);
  try {
    const credential = "hunter2-in-a-pool-env";
    const tagged = `${minimal}    env: { TOKEN: !vault ${credential} }\n`;
    const errorOf = (text: string) => {
      try {
        loadConfig({ text, env, readFile: noFiles });
      } catch (err) {
        assert.ok(err instanceof ConfigError, String(err));
        return err;
      }
      assert.fail("the config loaded");
    };
    const err = errorOf(tagged);
    assert.match(err.message, /config is not valid YAML: Unresolved tag: !vault at line \d+, column \d+$/m);
    assert.ok(!err.message.includes(credential), err.message);
    const broken = `${minimal}    env: { TOKEN: ${credential}\n`;
    const err2 = errorOf(broken);
    assert.match(err2.message, /config is not valid YAML: .* at line \d+, column \d+/);
    assert.ok(!err2.message.includes(credential), err2.message);
  } finally {
    process.off("warning", onWarning);
  }
  assert.deepEqual(emitted.filter((m) => /tag|hunter2/i.test(m)), [], "nothing printed through process warnings");
});

test("a worker whose capacity leaves no slot beyond the one kept per pool served is warned of where a warm pool is served: it would never hold a warm runner", () => {
  const warm = "    minIdle: 2\n    warm: { installationId: 7, owner: acme, repo: app }\n";
  const second = "  - name: gpu\n    labels: [self-hosted, gpu]\n    image: runner:1\n";
  const warningsOf = (worker: string, pools = `${minimal}${warm}${second}`, secretsFor: "server" | "worker" | "all" = "all") =>
    loadConfigWithOrigins({ text: `${pools}worker:\n${worker}`, env, readFile: noFiles, secretsFor }).warnings.filter((w) => w.startsWith("worker.capacity"));
  assert.deepEqual(warningsOf("  capacity: 2\n"), [
    "worker.capacity: 2 leaves no slot for warm runners on this host (one is kept free for demand per pool served, 2 here): pools default get no warm runner from it; set capacity above 2 plus the warm runners it should hold",
  ]);
  assert.equal(warningsOf("  capacity: 1\n").length, 1);
  // Room for one, a worker serving only the pool without warm runners, no warm pool, or no worker here: nothing to say.
  assert.deepEqual(warningsOf("  capacity: 3\n"), []);
  assert.deepEqual(warningsOf("  capacity: 1\n  pools: [gpu]\n"), []);
  assert.deepEqual(warningsOf("  capacity: 1\n", `${minimal}${second}`), []);
  assert.deepEqual(warningsOf("  capacity: 2\n", undefined, "server"), []);
  assert.equal(warningsOf("  capacity: 1\n  pools: [default]\n").length, 1, "one pool served, one slot: kept for demand");
});

test("warm runners: minIdle needs where to register, a repository for repository pools, and leaves room under maxRunners", () => {
  const pool = (extra: string) => `${minimal}    ${extra.trim().split("\n").join("\n    ")}\n`;
  assert.equal(loadConfig({ text: minimal, env, readFile: noFiles }).pools[0]!.minIdle, 0);
  assert.throws(() => loadConfig({ text: pool("minIdle: 2"), env, readFile: noFiles }), /pools\[0\]\.warm: minIdle needs warm\.installationId and warm\.owner/);
  assert.throws(
    () => loadConfig({ text: pool("minIdle: 2\nwarm: { installationId: 7, owner: acme }"), env, readFile: noFiles }),
    /pools\[0\]\.warm\.repo: a repository pool's warm runners register on one repository/,
  );
  assert.throws(
    () => loadConfig({ text: pool("minIdle: 3\nmaxRunners: 2\nwarm: { installationId: 7, owner: acme, repo: app }"), env, readFile: noFiles }),
    /pools\[0\]\.minIdle: 3 warm runners exceed maxRunners \(2\)/,
  );
  assert.throws(
    () => loadConfig({ text: pool("minIdle: 2\nmaxRunners: 2\nwarm: { installationId: 7, owner: acme, repo: app }"), env, readFile: noFiles }),
    /pools\[0\]\.minIdle: 2 warm runners fill maxRunners \(2\); a job no warm runner can take .* set maxRunners above minIdle/,
  );
  assert.equal(loadConfig({ text: pool("minIdle: 2\nmaxRunners: 3\nwarm: { installationId: 7, owner: acme, repo: app }"), env, readFile: noFiles }).pools[0]!.maxRunners, 3);
  const org = loadConfig({ text: pool("scope: organization\nminIdle: 1\nwarm: { installationId: 7, owner: acme }"), env, readFile: noFiles }).pools[0]!;
  assert.deepEqual([org.minIdle, org.warm], [1, { installationId: 7, owner: "acme" }]);
  assert.throws(() => loadConfig({ text: pool("minIdle: -1"), env, readFile: noFiles }), /pools\[0\]\.minIdle/);
});

test("environment overrides redis url, host id and port", () => {
  const c = loadConfig({
    text: minimal,
    env: { ...env, JITRUNNER_REDIS_URL: "redis://10.0.0.9:6380", JITRUNNER_HOST_ID: "host-b", JITRUNNER_PORT: "9000" },
    readFile: noFiles,
  });
  assert.equal(c.redis.url, "redis://10.0.0.9:6380");
  assert.equal(c.worker.hostId, "host-b");
  assert.equal(c.server.port, 9000);
});

/** The problems loadConfig reports, or a failure when it accepts the config. */
function problemsOf(sources: Parameters<typeof loadConfig>[0]): string[] {
  try {
    loadConfig(sources);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  return assert.fail("the config was accepted");
}

test("a Redis URL the URL parser refuses (a password with '/') and a GitHub URL with credentials are refused without repeating them", () => {
  const password = "Ab3/x+Yz9=";
  const problems = problemsOf({
    text: minimal.replace("appId: 42", "appId: 42\n  apiUrl: https://someone:gh-pass-77@ghes.example/api/v3"),
    env: { ...env, JITRUNNER_REDIS_URL: `redis://:${password}@redis:6379` },
    readFile: noFiles,
  }).join("\n");
  assert.match(problems, /^redis\.url: must be a valid URL: percent-encode .* \(from JITRUNNER_REDIS_URL\)$/m);
  assert.match(problems, /^github\.apiUrl: must not hold a user name or password \(line 4\)$/m);
  assert.ok(!problems.includes(password) && !problems.includes("gh-pass-77"), problems);
  // Printed anyway (check-config prints what it resolved), it is hidden, up to the last '@'.
  assert.equal(withoutPassword(`redis://:${password}@redis:6379`), "redis://redacted@redis:6379");
  assert.equal(withoutPassword("redis://:a/b@c@redis:6379/0"), "redis://redacted@redis:6379/0");
  // Percent-encoded, the same password is taken.
  const c = loadConfig({ text: minimal, env: { ...env, JITRUNNER_REDIS_URL: `redis://:${encodeURIComponent(password)}@redis:6379` }, readFile: noFiles });
  assert.equal(new URL(c.redis.url).password, encodeURIComponent(password));
});

test("a Redis URL the URL parser takes with its password's '#', '/' or '?' ending the host early is refused without repeating it, and hidden up to its last '@' if printed", () => {
  // Each parses (host `default`, port 6379, no password) and ioredis would connect there, the password left after the host.
  for (const url of ["redis://default:6379#Sup3rSecret@127.0.0.1:6390", "redis://default:6379/Sup3rSecret@127.0.0.1:6390", "redis://default:6379?Sup3rSecret@127.0.0.1:6390"]) {
    assert.ok(URL.canParse(url), url);
    const problems = problemsOf({ text: minimal, env: { ...env, JITRUNNER_REDIS_URL: url }, readFile: noFiles }).join("\n");
    assert.match(problems, /^redis\.url: has an '@' that does not end a user name and password .*: percent-encode a password's .* \(from JITRUNNER_REDIS_URL\)$/m);
    assert.ok(!problems.includes("Sup3rSecret"), problems);
    assert.equal(withoutPassword(url), "redis://redacted@127.0.0.1:6390");
  }
  // Percent-encoded, it is taken; so is an '@' in the password before the one that ends it (the parser takes the last),
  // and one in the value of ioredis's `password` (or `username`) query parameter.
  for (const url of [`redis://default:${encodeURIComponent("6379#Sup3rSecret")}@127.0.0.1:6390`, "redis://:p@ss@127.0.0.1:6390", "redis://cache:6379/0?password=p@ss"]) {
    assert.equal(loadConfig({ text: minimal, env: { ...env, JITRUNNER_REDIS_URL: url }, readFile: noFiles }).redis.url, url);
  }
  assert.ok(!withoutPassword("redis://cache:6379/0?password=p@ss").includes("p@ss"));
});

test("a value an environment variable set is reported under its key and the variable's name, not as if the file held it", () => {
  const problems = problemsOf({
    text: minimal,
    env: { ...env, JITRUNNER_PORT: "abc", JITRUNNER_LOG_LEVEL: "loud", JITRUNNER_REDIS_URL: "http://redis:6379", JITRUNNER_HOST_ID: "a host" },
    readFile: noFiles,
  }).join("\n");
  assert.match(problems, /^server\.port: .*\(from JITRUNNER_PORT\)$/m);
  // Only white space is no port, not port 0 (an ephemeral one, where no webhook would find it).
  for (const blank of [" ", "\t "]) {
    assert.match(problemsOf({ text: minimal, env: { ...env, JITRUNNER_PORT: blank }, readFile: noFiles }).join("\n"), /^server\.port: .*\(from JITRUNNER_PORT\)$/m, JSON.stringify(blank));
  }
  assert.match(problems, /^logLevel: .*\(from JITRUNNER_LOG_LEVEL\)$/m);
  assert.match(problems, /^redis\.url: must be a redis:\/\/ or rediss:\/\/ URL \(from JITRUNNER_REDIS_URL\)$/m);
  assert.match(problems, /^worker\.hostId: .*\(from JITRUNNER_HOST_ID\)$/m);
  // The same mistakes in the file say nothing of a variable.
  const inFile = problemsOf({ text: `${minimal}server:\n  port: abc\nlogLevel: loud\n`, env, readFile: noFiles }).join("\n");
  assert.match(inFile, /^server\.port: /m);
  assert.doesNotMatch(inFile, /from JITRUNNER/);
});

test("the options the environment set come back with the variable that set each, apart from the config; an empty variable sets nothing", () => {
  const overrides = { JITRUNNER_PORT: "9090", JITRUNNER_LOG_LEVEL: "debug", JITRUNNER_REDIS_URL: "redis://other:6379", JITRUNNER_HOST_ID: "" };
  const { config, origins } = loadConfigWithOrigins({ text: minimal, env: { ...env, ...overrides }, readFile: noFiles });
  assert.deepEqual([...origins], [
    ["redis.url", "JITRUNNER_REDIS_URL"],
    ["server.port", "JITRUNNER_PORT"],
    ["logLevel", "JITRUNNER_LOG_LEVEL"],
  ]);
  assert.deepEqual([config.server.port, config.logLevel, config.redis.url], [9090, "debug", "redis://other:6379"]);
  // The config itself is the same as loadConfig's, with no trace of where values came from.
  assert.deepEqual(Object.keys(config), Object.keys(loadConfig({ text: minimal, env, readFile: noFiles })));
  assert.doesNotMatch(JSON.stringify(config), /JITRUNNER_/);
  assert.equal(loadConfigWithOrigins({ text: minimal, env, readFile: noFiles }).origins.size, 0, "nothing set: no origins");
});

test("cross-checks run on whatever parsed: a config with a schema error reports its duplicate pools and unknown worker pools in the same run", () => {
  const text = `${minimal}  - name: default
    labels: [x]
    image: y
  - name: broken
    labels: []
    image: z
server:
  port: -1
worker:
  pools: [default, broken, missing]
  docker: { socketPath: /run/docker.sock, host: tcp.example }
`;
  const problems = problemsOf({ text, env, readFile: noFiles }).join("\n");
  assert.match(problems, /server\.port/);
  assert.match(problems, /pools\[2\]\.labels/);
  assert.match(problems, /pools\[1\]\.name: duplicate pool name 'default'/);
  assert.match(problems, /worker\.pools\[2\]: no pool named 'missing'/);
  assert.match(problems, /worker\.docker: give socketPath or host, not both/);
  // A pool that is there but not valid is reported for what is wrong with it, not as missing.
  assert.doesNotMatch(problems, /no pool named 'broken'/);
});

test("the Docker engine's TLS files are checked under their option names by the modes that run a worker, not by the server", () => {
  const files: Record<string, string> = { "/tls/ca.pem": "-----BEGIN CERTIFICATE-----\n", "/tls/cert.pem": "\n" };
  const read = (p: string) => files[p] ?? noFiles(p);
  const text = `${minimal}worker:\n  docker: { host: engine.internal, port: 2376, protocol: https, caFile: /tls/ca.pem, certFile: /tls/cert.pem, keyFile: /tls/key.pem }\n`;
  for (const secretsFor of ["worker", "all"] as const) {
    const problems = problemsOf({ text, env, readFile: read, secretsFor }).join("\n");
    assert.match(problems, /worker\.docker\.keyFile: cannot read \/tls\/key\.pem \(ENOENT\)/, secretsFor);
    assert.match(problems, /worker\.docker\.certFile: \/tls\/cert\.pem is empty/, secretsFor);
    assert.doesNotMatch(problems, /caFile/, secretsFor);
  }
  // The server and the operator's commands never connect to an engine.
  for (const secretsFor of ["server", "none"] as const) assert.doesNotThrow(() => loadConfig({ text, env, readFile: read, secretsFor }), secretsFor);
  files["/tls/cert.pem"] = "-----BEGIN CERTIFICATE-----\n";
  files["/tls/key.pem"] = "-----BEGIN PRIVATE KEY-----\n";
  assert.doesNotThrow(() => loadConfig({ text, env, readFile: read, secretsFor: "worker" }));
});

test("a secret or key file the process may not read says who must be able to read it", () => {
  const denied = (p: string): string => {
    throw Object.assign(new Error(`EACCES ${p}`), { code: "EACCES" });
  };
  const text = minimal.replace("appId: 42", "appId: 42\n  privateKeyFile: /run/secrets/github-app-key\n  webhookSecretFile: /run/secrets/webhook-secret");
  const files = [["github.privateKeyFile", "/run/secrets/github-app-key"], ["github.webhookSecretFile", "/run/secrets/webhook-secret"], ["server.adminTokenFile", "/run/secrets/admin"]] as const;
  const problemsAs = (uid: number) => problemsOf({ text: `${text}server:\n  adminTokenFile: /run/secrets/admin\n`, env: {}, readFile: denied, uid }).join("\n");
  // A systemd unit's system user (uid 999 here): the file goes to it, not to uid 1000, on a host
  // most often the first login user, who would then hold the App's key while the worker still cannot read it.
  const system = problemsAs(999);
  for (const [option, file] of files) {
    assert.match(system, new RegExp(`${option.replace(".", "\\.")}: cannot read ${file} \\(EACCES\\): it must be readable by the user jitrunner runs as \\(uid 999\\): chown 999 ${file}, mode 0400 or 0600 \\(line \\d+\\)(\n|$)`));
  }
  assert.doesNotMatch(system, /1000/);
  // The container image's user: the same, and how the image reads them as root instead.
  const image = problemsAs(1000);
  for (const [option, file] of files) {
    assert.match(image, new RegExp(`${option.replace(".", "\\.")}: cannot read ${file} \\(EACCES\\): .*\\(uid 1000\\): chown 1000 ${file}, mode 0400 or 0600; in the container image, whose user is uid 1000, start it as root instead`));
  }
  // Other errors stay as they were: a missing file is not a question of owners.
  assert.doesNotMatch(problemsOf({ text, env: {}, readFile: noFiles }).join("\n"), /chown/);
});

test("a webhook secret shorter than 16 characters is refused where it is read, naming the option, where it came from and how to make one", () => {
  const text = minimal.replace("appId: 42", "appId: 42\n  webhookSecretFile: /run/secrets/webhook-secret");
  const file = (value: string) => (p: string) => (p === "/run/secrets/webhook-secret" ? value : noFiles(p));
  for (const secretsFor of ["server", "all"] as const) {
    const fromEnv = problemsOf({ text: minimal, env: { ...env, JITRUNNER_GITHUB_WEBHOOK_SECRET: "x" }, readFile: noFiles, secretsFor }).join("\n");
    assert.match(fromEnv, /^webhookSecret: .*\(from JITRUNNER_GITHUB_WEBHOOK_SECRET\) must be at least 16 characters.*openssl rand -hex 32/m, secretsFor);
    const fromFile = problemsOf({ text, env: { JITRUNNER_GITHUB_PRIVATE_KEY: KEY }, readFile: file("short-secret\n"), secretsFor }).join("\n");
    assert.match(fromFile, /^github\.webhookSecretFile: .*\(from \/run\/secrets\/webhook-secret\) must be at least 16 characters.*openssl rand -hex 32/m, secretsFor);
    assert.doesNotMatch(fromFile, /short-secret/, "the secret is not in the message");
  }
  // A file's trailing newline is dropped before counting: 15 characters and a newline are too few, 16 are enough.
  assert.throws(() => loadConfig({ text, env: { JITRUNNER_GITHUB_PRIVATE_KEY: KEY }, readFile: file(`${"a".repeat(15)}\n`) }), /at least 16 characters/);
  assert.equal(loadConfig({ text, env: { JITRUNNER_GITHUB_PRIVATE_KEY: KEY }, readFile: file(`${"a".repeat(16)}\n`) }).secrets.webhookSecret.reveal(), "a".repeat(16));
  // A worker and the operator's commands never read it, short or not.
  for (const secretsFor of ["worker", "none"] as const) {
    assert.doesNotThrow(() => loadConfig({ text: minimal, env: { ...env, JITRUNNER_GITHUB_WEBHOOK_SECRET: "x" }, readFile: noFiles, secretsFor }), secretsFor);
  }
});

test("the previous webhook secret (a rotation) is read only where the webhook secret is, held to the same bar, and never shown", () => {
  const text = minimal.replace("appId: 42", "appId: 42\n  previousWebhookSecretFile: /run/secrets/previous-webhook-secret");
  const file = (value: string) => (p: string) => (p === "/run/secrets/previous-webhook-secret" ? value : noFiles(p));
  const previous = "previous-secret-0123456789";
  assert.equal(loadConfig({ text, env, readFile: file(`${previous}\n`) }).secrets.previousWebhookSecret?.reveal(), previous, "from its file, its newline dropped");
  assert.equal(loadConfig({ text: minimal, env: { ...env, JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET: previous }, readFile: noFiles }).secrets.previousWebhookSecret?.reveal(), previous);
  assert.equal(loadConfig({ text: minimal, env, readFile: noFiles }).secrets.previousWebhookSecret, undefined, "none unless given");
  assert.equal(loadConfig({ text, env, readFile: file(previous), secretsFor: "worker" }).secrets.previousWebhookSecret, undefined, "a worker does not read it");
  const short = problemsOf({ text, env, readFile: file("short-secret\n") }).join("\n");
  assert.match(short, /^github\.previousWebhookSecretFile: .*\(from \/run\/secrets\/previous-webhook-secret\) must be at least 16 characters/m);
  assert.doesNotMatch(short, /short-secret/, "the secret is not in the message");
  assert.match(problemsOf({ text, env, readFile: noFiles }).join("\n"), /^github\.previousWebhookSecretFile: cannot read \/run\/secrets\/previous-webhook-secret/m);
  assert.match(problemsOf({ text: minimal, env: { ...env, JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET: " \n" }, readFile: noFiles }).join("\n"), /JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET holds only white space/);
});

test("the example Secret's webhook-secret placeholder is refused, as is any value still holding it", () => {
  const example = parseYaml(readFileSync(new URL("../../deploy/kubernetes/secret.example.yml", import.meta.url), "utf8")) as { stringData: Record<string, string> };
  const placeholder = example.stringData["webhook-secret"]!;
  for (const value of [placeholder, `${placeholder}-with-openssl-rand-hex-32`, `replace_me-${"0".repeat(16)}`]) {
    const problems = problemsOf({ text: minimal, env: { ...env, JITRUNNER_GITHUB_WEBHOOK_SECRET: value }, readFile: noFiles }).join("\n");
    assert.match(problems, /^webhookSecret: .*\(from JITRUNNER_GITHUB_WEBHOOK_SECRET\) still holds REPLACE_ME, the example files' placeholder;.*openssl rand -hex 32/m, value);
  }
});

test("the example config's placeholders left in (appId 123456, owner my-org, installationId 12345678) are accepted with a warning each; a filled-in config has none", () => {
  const example = readFileSync(new URL("../../deploy/jitrunner.example.yml", import.meta.url), "utf8");
  // The example, its warm runners' line taken in as it stands.
  const text = example.replace("# minIdle: 2", "minIdle: 2").replace("# warm: {", "warm: {");
  const { config, warnings } = loadConfigWithOrigins({ text, env, readFile: noFiles });
  assert.equal(config.github.appId, 123456, "accepted: a warning, not a refusal");
  const said = warnings.join("\n");
  assert.match(said, /^github\.appId: 123456 is the example config's placeholder: set your GitHub App's id/m);
  assert.match(said, /^policy\.allowedOwners: my-org is the example config's placeholder: jobs of any owner not listed are refused \(ignored_owner_not_allowed\)/m);
  assert.match(said, /^pools\[0\]\.warm\.installationId: 12345678 is the example config's placeholder/m);
  assert.match(said, /^pools\[0\]\.warm\.owner: my-org is the example config's placeholder/m);
  assert.equal(warnings.length, 4, said);
  // The Kubernetes ConfigMap ships the same placeholders.
  const configMap = parseYaml(readFileSync(new URL("../../deploy/kubernetes/configmap.yml", import.meta.url), "utf8")) as { data: Record<string, string> };
  const k8s = loadConfigWithOrigins({ text: Object.values(configMap.data).find((v) => v.includes("appId"))!, env, readFile: noFiles, secretsFor: "none" }).warnings.join("\n");
  assert.match(k8s, /^github\.appId: 123456/m);
  assert.match(k8s, /^policy\.allowedOwners: my-org/m);
  const filled = text.replace("appId: 123456", "appId: 987").replaceAll("my-org", "acme").replace("12345678", "4242");
  assert.deepEqual(loadConfigWithOrigins({ text: filled, env, readFile: noFiles }).warnings, []);
  assert.deepEqual(loadConfigWithOrigins({ text: minimal, env, readFile: noFiles }).warnings, []);
});

test("a worker.docker.host without a port is accepted with a warning where a worker runs: it goes to 80 (443)", () => {
  const warningsOf = (docker: string, secretsFor?: "server" | "worker" | "all") =>
    loadConfigWithOrigins({ text: `${minimal}worker:\n  docker: ${docker}\n`, env, readFile: noFiles, ...(secretsFor && { secretsFor }) }).warnings;
  assert.deepEqual(warningsOf("{ host: engine.internal }"), [
    "worker.docker.host without a port: port 80 (443 over https) is used, not Docker's 2375 (2376 over TLS); set worker.docker.port to the port the engine listens on",
  ]);
  assert.match(warningsOf("{ host: engine.internal, protocol: https }", "worker").join("\n"), /^worker\.docker\.host without a port: port 443 is used, not Docker's 2375/);
  assert.match(warningsOf("{ host: 'tcp://engine.internal' }").join("\n"), /^worker\.docker\.host without a port: port 80 is used/);
  // A port given (in port or in the host), ssh (22 by default, as ssh's), a socket, or a mode that runs no worker: nothing to say.
  for (const docker of [
    "{ host: engine.internal, port: 2375 }",
    "{ host: 'engine.internal:2375' }",
    "{ host: 'fd00::5', port: 2376, protocol: https }",
    "{ host: engine.internal, protocol: ssh }",
    "{ host: 'ssh://ops@engine.internal' }",
    "{ socketPath: /run/docker.sock }",
  ]) {
    assert.deepEqual(warningsOf(docker), [], docker);
  }
  assert.deepEqual(warningsOf("{ host: engine.internal }", "server"), []);
});

test("a worker.docker.host written as Docker's tools take it (a URL, name:port) is read into host, port, protocol and username: docker-modem takes them apart", () => {
  const dockerOf = (docker: string) => {
    const d = loadConfig({ text: `${minimal}worker:\n  docker: ${docker}\n`, env, readFile: noFiles }).worker.docker;
    return { host: d.host, port: d.port, protocol: d.protocol, username: d.username };
  };
  const cases: Array<[string, ReturnType<typeof dockerOf>]> = [
    ["{ host: 'engine.internal:2375' }", { host: "engine.internal", port: 2375, protocol: undefined, username: undefined }],
    ["{ host: '[fd00::5]:2376', protocol: https }", { host: "fd00::5", port: 2376, protocol: "https", username: undefined }],
    ["{ host: 'tcp://engine.internal:2375' }", { host: "engine.internal", port: 2375, protocol: "http", username: undefined }],
    ["{ host: 'tcp://[fd00::5]:2376', protocol: https }", { host: "fd00::5", port: 2376, protocol: "https", username: undefined }],
    ["{ host: 'https://engine.internal:2376/' }", { host: "engine.internal", port: 2376, protocol: "https", username: undefined }],
    ["{ host: 'ssh://ops@engine.internal' }", { host: "engine.internal", port: undefined, protocol: "ssh", username: "ops" }],
    ["{ host: 'ssh://engine.internal:2222', username: ops }", { host: "engine.internal", port: 2222, protocol: "ssh", username: "ops" }],
    // Agreeing with what the host says is not a conflict; a plain name is left as it is.
    ["{ host: 'engine.internal:2375', port: 2375 }", { host: "engine.internal", port: 2375, protocol: undefined, username: undefined }],
    ["{ host: engine.internal, port: 2376, protocol: https }", { host: "engine.internal", port: 2376, protocol: "https", username: undefined }],
  ];
  for (const [docker, expected] of cases) assert.deepEqual(dockerOf(docker), expected, docker);
});

test("a worker.docker.host that says another port, protocol or user than its own option, or is no engine's address, is refused", () => {
  const problemsFor = (docker: string) => problemsOf({ text: `${minimal}worker:\n  docker: ${docker}\n`, env, readFile: noFiles });
  assert.ok(problemsFor("{ host: 'engine.internal:2375', port: 2376 }").some((p) => /^worker\.docker\.port: 2376 disagrees with host 'engine\.internal:2375', which says 2375/.test(p)));
  assert.ok(problemsFor("{ host: 'http://engine.internal:2375', protocol: https }").some((p) => /^worker\.docker\.protocol: https disagrees with host/.test(p)));
  assert.ok(problemsFor("{ host: 'ssh://ops@engine.internal', username: root }").some((p) => /^worker\.docker\.username: root disagrees/.test(p)));
  for (const host of ["ftp://engine.internal", "tcp://engine.internal:2375/v1.41", "tcp://engine.internal?x=1"]) {
    const problems = problemsFor(`{ host: '${host}' }`);
    assert.ok(problems.some((p) => p.startsWith(`worker.docker.host: '${host}' is not an engine's address`)), `${host}: ${problems.join("\n")}`);
  }
  const withPassword = problemsFor("{ host: 'tcp://ops:s3cret-pw@engine.internal:2375' }").join("\n");
  assert.match(withPassword, /^worker\.docker\.host: 'tcp:\/\/redacted@engine\.internal:2375' is not an engine's address/m);
  assert.ok(!withPassword.includes("s3cret-pw"), withPassword);
  assert.ok(problemsFor("{ host: 'engine.internal:70000' }").some((p) => /^worker\.docker\.host: 'engine\.internal:70000' has a port outside 1 to 65535/.test(p)));
});

test("a pool in the host's network or in another container's is refused: its jobs would reach what listens on that loopback", () => {
  for (const mode of ["host", "container:jitrunner-worker", "container:0123abcd"]) {
    const problems = problemsOf({ text: `${minimal}    networkMode: "${mode}"\n`, env, readFile: noFiles });
    assert.ok(problems.some((p) => p.startsWith(`pools[0].networkMode: '${mode}' puts runners in `) && p.includes("loopback")), `${mode}: ${problems.join("\n")}`);
  }
  for (const mode of ["bridge", "none", "jitrunner-runners", "ci-net", "hostnet"]) {
    assert.equal(loadConfig({ text: `${minimal}    networkMode: "${mode}"\n`, env, readFile: noFiles }).pools[0]!.networkMode, mode);
  }
});

test("a pool mount of the host's engine is refused however its path is written: Docker cleans the path before mounting", () => {
  const refused = [
    // Unnormalised spellings of /var/run, which holds docker.sock.
    "/var/./run",
    "//var/run",
    "/var/run/../run",
    "/var/run/./",
    "/run/../var/run/docker.sock/",
    // The engines' state: every container's config.v2.json, runners' JIT configs among them; and what holds it.
    "/var/lib/docker",
    "/var/lib/docker/",
    "/var/lib/docker/containers",
    "//var/lib/./docker",
    "/var/lib/containerd",
    "/var/lib",
    "/var",
    "/",
    // Engines' run directories: rootless Docker's socket dir, containerd's task bundles (each runner's config.json), dockerd's own containerd.
    "/run/user/1000",
    "/run/user",
    "/var/run/user/1000",
    "/run/containerd/io.containerd.runtime.v2.task",
    "/var/run/containerd",
    "/run/docker",
    "/run/podman",
  ];
  const mounts = (sources: string[]) => `${minimal}    mounts:\n${sources.map((s) => `      - { source: "${s}", target: /x }`).join("\n")}\n`;
  const problems = problemsOf({ text: mounts(refused), env, readFile: noFiles });
  refused.forEach((source, j) => {
    assert.ok(
      problems.some((p) => p.startsWith(`pools[0].mounts[${j}]: `) && p.includes("container engine socket")),
      `${source} is refused: ${problems.join("\n")}`,
    );
  });
  // Look-alikes of other directories are not the engine's.
  const allowed = ["/srv/cache", "/var/lib/docker-cache", "/var/lib/apt", "/run/users", "/run/secrets/npmrc", "/var/cache/./apt", "/home/ci/.cache/"];
  assert.deepEqual(loadConfig({ text: mounts(allowed), env, readFile: noFiles }).pools[0]!.mounts.map((m) => m.source), allowed);
});

test("a secret written where its file's path belongs is refused without being shown, in every mode; a relative path is shown only when plainly one", () => {
  const problemsOf = (text: string, secretsFor: "all" | "server" | "worker" | "none", over: Record<string, string> = {}) => {
    try {
      loadConfig({ text, env: { ...over }, readFile: noFiles, secretsFor });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.message;
    }
    assert.fail("the config was taken");
  };
  const keyLine = KEY.split("\n")[1]!;
  const pasted = minimal.replace("appId: 42", `appId: 42\n  privateKeyFile: ${JSON.stringify(KEY)}`);
  for (const mode of ["all", "server", "worker", "none"] as const) {
    const problems = problemsOf(pasted, mode, env);
    assert.match(problems, /github\.privateKeyFile: must be the path of a file that holds the secret, not the secret itself .* or set JITRUNNER_GITHUB_PRIVATE_KEY instead/, mode);
    assert.ok(!problems.includes(keyLine) && !problems.includes("BEGIN"), `${mode}: ${problems}`);
  }
  const pem = minimal.replace("appId: 42", "appId: 42\n  webhookSecretFile: /run/hook").concat(`worker:\n  docker: { host: e.example, protocol: https, keyFile: ${JSON.stringify(KEY)} }\n`);
  const dockerKey = problemsOf(pem, "worker", env);
  assert.match(dockerKey, /worker\.docker\.keyFile: must be the path of a file that holds the secret/);
  assert.ok(!dockerKey.includes(keyLine), dockerKey);

  // One line, relative: it may be a token; read, it is not found, and not shown.
  const token = "tok3n-written-in-place-0123456789";
  const relative = minimal.concat(`server:\n  adminTokenFile: ${token}\n  metricsTokenFile: ./secrets/metrics\n`);
  const shown = problemsOf(relative, "server", env);
  assert.ok(!shown.includes(token), shown);
  assert.match(shown, /server\.adminTokenFile: cannot read \(a relative path, not shown in case it is the secret itself: start it with \.\/ to show it\) \(ENOENT\)/);
  assert.match(shown, /server\.metricsTokenFile: cannot read \.\/secrets\/metrics \(ENOENT\)/);
  // A user name with no password in a Redis URL is most likely the password, its ':' forgotten.
  assert.equal(withoutPassword("redis://s3cret-pass@redis:6379/0"), "redis://redacted@redis:6379/0");
  assert.equal(withoutPassword("redis://redis:6379/0"), "redis://redis:6379/0");
});

test("a section's schema error hides none of its other problems: the cross-checks of the fields it did take are reported in the same run", () => {
  const text = `
github:
  appId: 42
worker:
  hostId: "Not A Host!"
  pools: [nope]
  docker: { socketPath: /var/run/docker.sock, host: engine.example }
pools:
  - name: default
    labels: [self-hosted]
    image: runner:1
    isolation: privilegd
    networkMode: host
    mounts: [{ source: /var/run/docker.sock, target: /var/run/docker.sock }]
    minIdle: 1
`;
  let problems = "";
  try {
    loadConfig({ text, env, readFile: noFiles });
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    problems = err.problems.join("\n");
  }
  for (const expected of [
    /^pools\[0\]\.isolation: /m,
    /^pools\[0\]\.networkMode: 'host' puts runners in the host's network/m,
    /^pools\[0\]\.mounts\[0\]: \/var\/run\/docker\.sock reaches /m,
    /^pools\[0\]\.warm: minIdle needs warm\.installationId/m,
    /^worker\.hostId: /m,
    /^worker\.pools\[0\]: no pool named 'nope'/m,
    /^worker\.docker: give socketPath or host, not both/m,
  ]) {
    assert.match(problems, expected);
  }
  assert.equal(problems.split("\n").length, 7, `these seven, and no cross-check of a refused field's default: ${problems}`);
});

test("a pool field the schema refused hides the cross-checks that would be about its default: a mistyped scope with a runner group is one problem, not two", () => {
  const problems = problemsOf({ text: `${minimal}    scope: organisation\n    runnerGroup: ci\n`, env, readFile: noFiles });
  assert.ok(problems.some((p) => p.startsWith("pools[0].scope: ")), problems.join("\n"));
  assert.ok(!problems.some((p) => p.includes("set scope: organization")), `no cross-check of the default scope: ${problems.join("\n")}`);
});
