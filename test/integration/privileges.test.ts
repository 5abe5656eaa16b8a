/**
 * JITRUNNER_USER, as the control-plane image sets it, for the real CLI started as root (the test
 * runs as root, as .ci/run does): a worker reads its root-only config, secrets and engine TLS
 * files, then runs on as that user with the Docker socket's group added, and reaches the real engine through it (it gets
 * ready); a spec that is not two numbers stops the start. Against the fake GitHub and a real Redis.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { localDockerSocket } from "../../src/cli/privileges.ts";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { writeOperatorConfig } from "../helpers/operator-config.ts";
import { freePort } from "../helpers/ports.ts";
import { runJitrunner, waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { startSshd } from "../helpers/sshd.ts";
import { fakeRunnerPool, removeContainersOf, uniqueHost } from "../helpers/system.ts";

const USER = { uid: 1000, gid: 1000 };
let redis: TestRedis;
let fake: FakeGitHub;
const host = uniqueHost("privileges");
const dirs: string[] = [];

before(async () => {
  redis = await startRedis();
  fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
});
after(async () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  await removeContainersOf(host);
  await fake?.close();
  await redis?.stop();
});

/** A line of /proc/PID/status, split into its numbers. */
function procStatus(pid: number, field: string): number[] {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${field}:`));
  return (line ?? "").slice(field.length + 1).trim().split(/\s+/).filter(Boolean).map(Number);
}

/** The exit code of a CLI that is to stop by itself. */
async function exitOf(jr: ReturnType<typeof runJitrunner>): Promise<number | null> {
  return jr.exited();
}

/** A directory (removed after the file) with a self-signed `ca.pem`, `cert.pem` and `key.pem`, all 0600, owned by root. */
function rootOnlyTlsFiles(prefix: string): string {
  const tls = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(tls);
  const made = spawnSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=jitrunner-test", "-keyout", join(tls, "key.pem"), "-out", join(tls, "cert.pem")], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  copyFileSync(join(tls, "cert.pem"), join(tls, "ca.pem"));
  for (const name of ["ca.pem", "cert.pem", "key.pem"]) chmodSync(join(tls, name), 0o600);
  chmodSync(tls, 0o700);
  return tls;
}

test("a worker started as root with JITRUNNER_USER reads its root-only secrets, runs on as that user in the Docker socket's group, and reaches its engine", { timeout: 120_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root, as the image starts");
  const port = await freePort();
  const socketPath = localDockerSocket(undefined, undefined, process.env);
  assert.ok(socketPath, "the test engine is reached through a local socket");
  // writeOperatorConfig writes the key and secret 0600, owned by root: uid 1000 could not read them.
  const file = writeOperatorConfig(fake, {
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port },
    worker: { hostId: host, capacity: 1, docker: { socketPath } },
    pools: [fakeRunnerPool(fake)],
  });
  const jr = runJitrunner(["worker", "--config", file], { JITRUNNER_USER: `${USER.uid}:${USER.gid}` });
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, 60_000, `the worker ready (output: ${jr.output().slice(-2000)})`);
    const pid = jr.child.pid!;
    assert.deepEqual(procStatus(pid, "Uid"), [USER.uid, USER.uid, USER.uid, USER.uid], "real, effective, saved and filesystem uid");
    assert.deepEqual(procStatus(pid, "Gid"), [USER.gid, USER.gid, USER.gid, USER.gid]);
    const socketGid = statSync(socketPath).gid;
    assert.deepEqual(procStatus(pid, "Groups").sort(), [USER.gid, socketGid].sort(), "its own group and the socket's, nothing of root's");
    // Log lines are written in batches, at least once a second.
    const said = new RegExp(`"uid":1000,"gid":1000,"groups":\\[[\\d,]+\\],"socket":"${socketPath.replaceAll("/", "\\/").replaceAll(".", "\\.")}"[^\\n]*"msg":"config and secrets read as root; running on as this user"`);
    await waitFor(() => said.test(jr.output()), 5_000, "the change of user logged");
  } finally {
    assert.equal(await jr.stop(), 0, jr.output().slice(-2000));
  }
});

test("a worker's root-only engine TLS files are read before it runs on as that user: its start fails at the engine, not at the files", { timeout: 60_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root, as the image starts");
  const tls = rootOnlyTlsFiles("jitrunner-tls-");
  // An engine over TLS on loopback where nothing listens: the start fails reaching it, after the
  // files were read (read as uid 1000, they would fail it first with EACCES).
  const enginePort = await freePort();
  const file = writeOperatorConfig(fake, {
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port: await freePort() },
    worker: { hostId: uniqueHost("privileges-tls"), capacity: 1, docker: { host: "127.0.0.1", port: enginePort, protocol: "https", caFile: join(tls, "ca.pem"), certFile: join(tls, "cert.pem"), keyFile: join(tls, "key.pem") } },
    pools: [fakeRunnerPool(fake)],
  });
  const jr = runJitrunner(["worker", "--config", file], { JITRUNNER_USER: `${USER.uid}:${USER.gid}` });
  assert.equal(await exitOf(jr), 1, jr.output());
  assert.match(jr.output(), new RegExp(`cannot reach the Docker engine at 127\\.0\\.0\\.1:${enginePort}`));
  assert.doesNotMatch(jr.output(), /EACCES/);
});

test("an engine named by DOCKER_HOST with root-only DOCKER_CERT_PATH files: they are read before the change of user, and the start fails at the engine, not at the files", { timeout: 60_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root, as the image starts");
  const tls = rootOnlyTlsFiles("jitrunner-cert-path-");
  const enginePort = await freePort();
  const file = writeOperatorConfig(fake, {
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port: await freePort() },
    worker: { hostId: uniqueHost("privileges-cert-path"), capacity: 1 },
    pools: [fakeRunnerPool(fake)],
  });
  const jr = runJitrunner(["worker", "--config", file], {
    JITRUNNER_USER: `${USER.uid}:${USER.gid}`,
    DOCKER_HOST: `tcp://127.0.0.1:${enginePort}`,
    DOCKER_TLS_VERIFY: "1",
    DOCKER_CERT_PATH: tls,
  });
  assert.equal(await exitOf(jr), 1, jr.output());
  assert.match(jr.output(), new RegExp(`cannot reach the Docker engine at 127\\.0\\.0\\.1:${enginePort} \\(from DOCKER_HOST\\)`));
  assert.doesNotMatch(jr.output(), /EACCES/);
});

test("a configured engine socket with DOCKER_HOST and root-only DOCKER_CERT_PATH files set for another engine: the worker runs on as that user and reaches its socket", { timeout: 120_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root, as the image starts");
  const tls = rootOnlyTlsFiles("jitrunner-other-cert-path-");
  const port = await freePort();
  const socketPath = localDockerSocket(undefined, undefined, { ...process.env, DOCKER_HOST: undefined });
  assert.ok(socketPath, "the test engine is reached through a local socket");
  const file = writeOperatorConfig(fake, {
    redis: { url: redis.url, prefix: redis.prefix },
    server: { host: "127.0.0.1", port },
    worker: { hostId: uniqueHost("privileges-other-engine"), capacity: 1, docker: { socketPath } },
    pools: [fakeRunnerPool(fake)],
  });
  // An operator's environment set up for a remote engine over TLS (never dialled: not configured).
  const jr = runJitrunner(["worker", "--config", file], {
    JITRUNNER_USER: `${USER.uid}:${USER.gid}`,
    DOCKER_HOST: `tcp://127.0.0.1:${await freePort()}`,
    DOCKER_TLS_VERIFY: "1",
    DOCKER_CERT_PATH: tls,
  });
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.ok === true || jr.child.exitCode !== null, 60_000, "the worker ready or gone");
    assert.equal(jr.child.exitCode, null, jr.output().slice(-2000));
    assert.doesNotMatch(jr.output(), /EACCES/);
  } finally {
    assert.equal(await jr.stop(), 0, jr.output().slice(-2000));
  }
});

test("an engine over SSH with a root-only known_hosts file: its host key is checked against it as read at start, and the start goes past it to the login", { timeout: 60_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root, as the image starts");
  const sshd = await startSshd();
  try {
    const dir = mkdtempSync(join(tmpdir(), "jitrunner-known-hosts-"));
    dirs.push(dir);
    const knownHosts = join(dir, "known_hosts");
    writeFileSync(knownHosts, `${sshd.knownHostsLine}\n`, { mode: 0o600 });
    chmodSync(dir, 0o700);
    const file = writeOperatorConfig(fake, {
      redis: { url: redis.url, prefix: redis.prefix },
      server: { host: "127.0.0.1", port: await freePort() },
      worker: { hostId: uniqueHost("privileges-ssh"), capacity: 1, docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root", knownHostsFile: knownHosts } },
      pools: [fakeRunnerPool(fake)],
    });
    // The test's agents are root's (ssh-agent serves no other uid): past the host key, the login
    // fails at the agent. Without the host key as read at start, the start fails before that.
    const jr = runJitrunner(["worker", "--config", file], { JITRUNNER_USER: `${USER.uid}:${USER.gid}`, SSH_AUTH_SOCK: sshd.agentSocket });
    assert.equal(await exitOf(jr), 1, jr.output());
    assert.match(jr.output(), /jitrunner: ping failed: Failed to connect to agent/);
    assert.doesNotMatch(jr.output(), /SSH host key|EACCES/);
  } finally {
    await sshd.stop();
  }
});

test("a JITRUNNER_USER that is not UID:GID in numbers stops the start, saying so", { timeout: 60_000 }, async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root: elsewhere the variable changes nothing");
  const file = writeOperatorConfig(fake, { redis: { url: redis.url, prefix: redis.prefix }, server: { host: "127.0.0.1", port: await freePort() }, pools: [fakeRunnerPool(fake)] });
  for (const [spec, said] of [
    ["node", "JITRUNNER_USER must be UID:GID in numbers (the image's is 1000:1000), not 'node'"],
    ["0:0", "JITRUNNER_USER names root: unset it to run as root"],
    ["1000:0", "JITRUNNER_USER names root's group (GID 0): give a group of its own, as the image's 1000:1000"],
  ]) {
    const jr = runJitrunner(["server", "--config", file], { JITRUNNER_USER: spec! });
    const code = await exitOf(jr);
    assert.equal(code, 1);
    assert.equal(jr.output().trim(), `jitrunner: ${said}`);
  }
});
