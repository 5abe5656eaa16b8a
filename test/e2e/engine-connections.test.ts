/**
 * A worker reaches its Docker engine other than by a local unix socket, for real:
 * - TCP+TLS: an extra engine listening on a loopback port with `--tlsverify` and certificates made
 *   for the test; the worker connects with a client certificate;
 * - SSH (dockerode's `ssh` protocol, keys from the SSH agent, `docker system dial-stdio` on the far
 *   side): an OpenSSH server on 127.0.0.1 in front of this machine's engine, its host key in a
 *   known_hosts file made for the test.
 * Each runs a job through the fake GitHub on a DinD runner launched over that connection, with
 * nothing left behind; a connection that cannot authenticate fails the start with a clear error,
 * and so does an SSH server whose host key known_hosts does not hold (another key, or none).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../helpers/config.ts";
import { startEngine, type TestEngine } from "../helpers/engines.ts";
import { freePort } from "../helpers/ports.ts";
import { waitFor } from "../helpers/process.ts";
import { startRedis, type TestRedis } from "../helpers/redis.ts";
import { startSshd, type TestSshd } from "../helpers/sshd.ts";
import { containersOf, fakeRunnerPool, removeContainersOf, RUNNER_IMAGE, scopedRedis, startSystem, uniqueHost } from "../helpers/system.ts";

let redis: TestRedis;
let sshd: TestSshd;
const hosts: string[] = [];
const agentBefore = process.env.SSH_AUTH_SOCK;
/** known_hosts files: one holding the test sshd's host key, one holding another key for it. */
let knownHostsDir: string;
let knownHosts: string;
let otherKnownHosts: string;
/** An ed25519 key made by ssh-keygen, not the test sshd's. */
const OTHER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMb3Rs/fS8YstzsxbIWUFzOhWRvIjjEZqrEU824CmbIO";

before(async () => {
  redis = await startRedis();
  sshd = await startSshd();
  knownHostsDir = mkdtempSync(join(tmpdir(), "jitrunner-known-hosts-"));
  knownHosts = join(knownHostsDir, "known_hosts");
  writeFileSync(knownHosts, `${sshd.knownHostsLine}\n`);
  otherKnownHosts = join(knownHostsDir, "other_known_hosts");
  writeFileSync(otherKnownHosts, `[127.0.0.1]:${sshd.port} ${OTHER_HOST_KEY}\n`);
});
after(async () => {
  if (agentBefore === undefined) delete process.env.SSH_AUTH_SOCK;
  else process.env.SSH_AUTH_SOCK = agentBefore;
  for (const h of hosts) await removeContainersOf(h);
  await sshd?.stop();
  await redis?.stop();
  if (knownHostsDir) rmSync(knownHostsDir, { recursive: true, force: true });
});

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCertificates(dir: string, ca: string): { caFile: string; certFile: string; keyFile: string; serverCert: string; serverKey: string } {
  const openssl = (...args: string[]) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
  };
  const f = (name: string) => join(dir, `${ca}-${name}`);
  openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca-key.pem"), "-out", f("ca.pem"), "-days", "1", "-subj", `/CN=${ca}`);
  writeFileSync(f("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  writeFileSync(f("client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const [who, cn] of [["server", "127.0.0.1"], ["client", "jitrunner-worker"]] as const) {
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f(`${who}-key.pem`), "-out", f(`${who}.csr`), "-subj", `/CN=${cn}`);
    openssl("x509", "-req", "-in", f(`${who}.csr`), "-CA", f("ca.pem"), "-CAkey", f("ca-key.pem"), "-CAcreateserial", "-out", f(`${who}-cert.pem`), "-days", "1", "-extfile", f(`${who}.ext`));
  }
  return { caFile: f("ca.pem"), certFile: f("client-cert.pem"), keyFile: f("client-key.pem"), serverCert: f("server-cert.pem"), serverKey: f("server-key.pem") };
}

test("over TCP+TLS: the worker launches a runner on a --tlsverify engine; a certificate it does not trust is refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-tls-"));
  const good = makeCertificates(dir, "test-ca");
  const other = makeCertificates(dir, "other-ca");
  const port = await freePort();
  let engine: TestEngine | undefined;
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("tls");
  try {
    engine = await startEngine("tls-1", RUNNER_IMAGE, {
      args: ["-H", `tcp://127.0.0.1:${port}`, "--tlsverify", "--tlscacert", good.caFile, "--tlscert", good.serverCert, "--tlskey", good.serverKey],
    });
    const tls = { host: "127.0.0.1", port, protocol: "https" as const };
    const sys = await startSystem("all", fake, scopedRedis(redis, "tls"), host, {
      pools: [fakeRunnerPool(fake)],
      worker: { hostId: host, capacity: 2, completedGraceSeconds: 5, reconcileIntervalSeconds: 2, docker: { ...tls, caFile: good.caFile, certFile: good.certFile, keyFile: good.keyFile } },
    });
    try {
      const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
      const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "job completed over TLS");
      assert.equal(done.conclusion, "success");
      const ours = { label: [`dev.jitrunner.host=${host}`] };
      await waitFor(async () => (await engine!.docker.listContainers({ all: true, filters: ours })).length === 0, 60_000, "runner container removed from the TLS engine");
      await waitFor(() => fake.runners().length === 0, 30_000, "registration gone");
      assert.equal((await containersOf(host)).length, 0, "nothing ran on the machine's own engine");
      assert.match(sys.logs(), /runner container started/);
    } finally {
      await sys.close();
    }

    // A client certificate from another CA: the engine refuses it, and the worker does not start.
    const refusedHost = uniqueHost("tls-refused");
    await assert.rejects(
      startSystem("worker", fake, scopedRedis(redis, "tls-refused"), refusedHost, {
        worker: { hostId: refusedHost, docker: { ...tls, caFile: good.caFile, certFile: other.certFile, keyFile: other.keyFile } },
      }),
      (err: Error) => {
        assert.match(err.message, /ping/i);
        assert.ok(!err.message.includes(readFileSync(other.keyFile, "utf8").split("\n")[1]!), "no key material in the error");
        return true;
      },
    );
  } finally {
    await fake.close();
    await engine?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("over SSH to a host whose key known_hosts holds: the worker launches a runner, its job completes, nothing is left", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("ssh");
  hosts.push(host);
  process.env.SSH_AUTH_SOCK = sshd.agentSocket;
  const sys = await startSystem("all", fake, scopedRedis(redis, "ssh"), host, {
    pools: [fakeRunnerPool(fake)],
    worker: {
      hostId: host,
      capacity: 2,
      completedGraceSeconds: 5,
      reconcileIntervalSeconds: 2,
      docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root", knownHostsFile: knownHosts },
    },
  });
  try {
    const job = await fake.queueJob({ owner: "acme", repo: "app", labels: ["self-hosted", "linux"] });
    const done = await waitFor(() => fake.jobs().find((j) => j.id === job.id && j.status === "completed"), 90_000, "job completed over SSH");
    assert.equal(done.conclusion, "success");
    await waitFor(async () => (await containersOf(host)).length === 0, 60_000, "runner container removed over SSH");
    await waitFor(() => fake.runners().length === 0, 30_000, "registration gone");
    assert.match(sys.logs(), /runner container started/);
  } finally {
    await sys.close();
    await fake.close();
  }
});

test("over SSH with no usable key: the worker does not start, and says why", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  const host = uniqueHost("ssh-denied");
  process.env.SSH_AUTH_SOCK = sshd.emptyAgentSocket;
  try {
    await assert.rejects(
      startSystem("worker", fake, scopedRedis(redis, "ssh-denied"), host, {
        worker: { hostId: host, docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root", knownHostsFile: knownHosts } },
      }),
      (err: Error) => {
        assert.match(err.message, /ping/i);
        assert.match(err.message, /authentication/i);
        return true;
      },
    );
  } finally {
    await fake.close();
  }
});

test("over SSH to a host whose key known_hosts does not hold: the worker refuses the engine, and says why", async () => {
  const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
  // The agent holds the key sshd accepts: only the host key check stands in the way.
  process.env.SSH_AUTH_SOCK = sshd.agentSocket;
  const hostKey = sshd.hostPublicKey.split(/\s+/)[1]!;
  // The fingerprint OpenSSH shows for the key the test sshd presents.
  const shown = spawnSync("ssh-keygen", ["-lf", "-"], { input: sshd.hostPublicKey, encoding: "utf8" }).stdout.split(" ")[1]!;
  const cases = [
    { file: otherKnownHosts, said: /differs from the one known_hosts .* holds for it/ },
    { file: join(knownHostsDir, "absent"), said: /is not in known_hosts .*absent \(missing\)/ },
  ];
  try {
    for (const { file, said } of cases) {
      const host = uniqueHost("ssh-unknown-host");
      hosts.push(host);
      await assert.rejects(
        startSystem("worker", fake, scopedRedis(redis, "ssh-unknown-host"), host, {
          worker: { hostId: host, docker: { protocol: "ssh", host: "127.0.0.1", port: sshd.port, username: "root", knownHostsFile: file } },
        }),
        (err: Error) => {
          assert.match(err.message, /ping/i);
          assert.ok(err.message.includes(`SSH host key of 127.0.0.1 port ${sshd.port} (ssh-ed25519 ${shown})`), err.message);
          assert.match(err.message, said);
          assert.match(err.message, new RegExp(`ssh-keyscan -p ${sshd.port} 127\\.0\\.0\\.1 >> `));
          assert.ok(!err.message.includes(hostKey), "the fingerprint, not the key");
          return true;
        },
      );
      assert.equal((await containersOf(host)).length, 0);
    }
  } finally {
    await fake.close();
  }
});
