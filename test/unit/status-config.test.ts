/** The admin and metrics tokens in the config: from env or file, optional, validated, never shown. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { inspect } from "node:util";
import { loadConfig } from "../../src/config/load.ts";
import { ConfigError } from "../../src/errors.ts";
import { testPrivateKey } from "../helpers/config.ts";

const env = { JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(), JITRUNNER_GITHUB_WEBHOOK_SECRET: "s3cret-value-0123456789" };
const text = (server = "") => `
github: { appId: 1 }
${server}
pools: [{ name: default, labels: [self-hosted], image: runner:1 }]
`;
const files: Record<string, string> = {
  "/run/secrets/admin": "admin-token-from-file-0123\n",
  "/run/secrets/metrics": "metrics-token-from-file-0123",
  "/run/secrets/short": "short\n",
};
const readFile = (p: string): string => {
  if (p in files) return files[p]!;
  throw Object.assign(new Error(`ENOENT ${p}`), { code: "ENOENT" });
};

test("no token configured: the page and /metrics are open", () => {
  const c = loadConfig({ text: text(), env, readFile });
  assert.equal(c.secrets.adminToken, undefined);
  assert.equal(c.secrets.metricsToken, undefined);
});

test("tokens come from files, trimmed, and env wins over the file", () => {
  const c = loadConfig({ text: text("server: { adminTokenFile: /run/secrets/admin, metricsTokenFile: /run/secrets/metrics }"), env, readFile });
  assert.equal(c.secrets.adminToken?.reveal(), "admin-token-from-file-0123");
  assert.equal(c.secrets.metricsToken?.reveal(), "metrics-token-from-file-0123");
  const fromEnv = loadConfig({
    text: text("server: { adminTokenFile: /run/secrets/admin }"),
    env: { ...env, JITRUNNER_ADMIN_TOKEN: "admin-token-from-env-0123", JITRUNNER_METRICS_TOKEN: "metrics-token-from-env-0123" },
    readFile,
  });
  assert.equal(fromEnv.secrets.adminToken?.reveal(), "admin-token-from-env-0123");
  assert.equal(fromEnv.secrets.metricsToken?.reveal(), "metrics-token-from-env-0123");
  // Printed (check-config), logged or inspected, they stay hidden.
  const shown = JSON.stringify(fromEnv) + inspect(fromEnv, { depth: 5 });
  assert.ok(!shown.includes("from-env") && !shown.includes("from-file"));
  assert.match(JSON.stringify(fromEnv.secrets), /"adminToken":"\[redacted\]"/);
});

test("unreadable, short or spaced tokens are config problems, reported with the others and without the value", () => {
  let err: unknown;
  try {
    loadConfig({
      text: text("server: { adminTokenFile: /run/secrets/missing, metricsTokenFile: /run/secrets/short, port: -1 }"),
      env,
      readFile,
    });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ConfigError);
  const problems = (err as ConfigError).problems.join("\n");
  assert.match(problems, /server\.adminTokenFile: cannot read \/run\/secrets\/missing \(ENOENT\)/);
  assert.match(problems, /server\.metricsTokenFile: .* at least 16 characters/);
  assert.match(problems, /server\.port/);
  assert.ok(!problems.replace(/\/run\/secrets\/short/g, "").includes("short"), "the token's value is not in the report");
  assert.throws(() => loadConfig({ text: text(), env: { ...env, JITRUNNER_ADMIN_TOKEN: "has a space in it, long enough" }, readFile }), /JITRUNNER_ADMIN_TOKEN\) must be/);
});

test("each mode reads only the tokens it serves: the admin token server and all (the status page), the metrics token every run mode (a worker serves /metrics too), status and drain neither", () => {
  // One shared config names both token files; each part mounts what it uses.
  const shared = text("server: { adminTokenFile: /run/secrets/admin, metricsTokenFile: /run/secrets/metrics }");
  const reading = (mounted: string[]) => {
    const reads: string[] = [];
    return {
      reads,
      readFile: (p: string) => {
        reads.push(p);
        return mounted.includes(p) ? readFile(p) : readFile("/not/mounted");
      },
    };
  };
  // A worker host mounts the metrics token, not the admin token (compose.worker.yml mounts the key alone).
  const worker = reading(["/run/secrets/metrics"]);
  const w = loadConfig({ text: shared, env, readFile: worker.readFile, secretsFor: "worker" });
  assert.deepEqual(worker.reads, ["/run/secrets/metrics"]);
  assert.equal(w.secrets.adminToken, undefined);
  assert.equal(w.secrets.metricsToken?.reveal(), "metrics-token-from-file-0123");

  const server = reading(["/run/secrets/admin", "/run/secrets/metrics"]);
  const s = loadConfig({ text: shared, env, readFile: server.readFile, secretsFor: "server" });
  assert.deepEqual([s.secrets.adminToken?.reveal(), s.secrets.metricsToken?.reveal()], ["admin-token-from-file-0123", "metrics-token-from-file-0123"]);

  // status and drain on an operator's laptop: nothing mounted, nothing read, even a bad token in the env is not looked at.
  const laptop = reading([]);
  const n = loadConfig({ text: shared, env: { JITRUNNER_ADMIN_TOKEN: "short" }, readFile: laptop.readFile, secretsFor: "none" });
  assert.deepEqual([laptop.reads, n.secrets.adminToken, n.secrets.metricsToken], [[], undefined, undefined]);

  // all, and check-config by default, read both: a missing admin token fails it as it fails `jitrunner all`.
  assert.throws(() => loadConfig({ text: shared, env, readFile: reading(["/run/secrets/metrics"]).readFile, secretsFor: "all" }), /server\.adminTokenFile: cannot read/);
});
