/**
 * DockerodeDriver on its own, against an "engine" that is an HTTP server on a unix socket: its
 * warnings at construction, a wait given a signal that has already aborted, which engine it reaches
 * with DOCKER_HOST set, and what a create sends where.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Secret } from "../../src/config/secret.ts";
import { DockerodeDriver, readDockerFiles } from "../../src/docker/dockerode-driver.ts";
import { LABEL, runnerLabels } from "../../src/docker/labels.ts";

test("a driver for plain HTTP to another machine warns at construction; one for loopback does not", () => {
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  new DockerodeDriver({ host: "engine.example", port: 2375, protocol: "http" }, { warn });
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /engine\.example is reached over plain HTTP: every runner's JIT config goes to it unencrypted/);
  new DockerodeDriver({ host: "127.0.0.1", port: 2375, protocol: "http" }, { warn });
  new DockerodeDriver({ host: "engine.example", port: 22, protocol: "ssh", knownHostsFile: "/nowhere" }, { warn });
  assert.equal(warnings.length, 1);
});

test("a wait given a signal already aborted ends at once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-driver-"));
  const socketPath = join(dir, "engine.sock");
  const held: IncomingMessage[] = [];
  const server = createServer((req) => void held.push(req));
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  try {
    const driver = new DockerodeDriver({ socketPath, callTimeoutSeconds: 1 });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), 2000)));
    const result = await Promise.race([driver.wait("c0ffee", AbortSignal.abort()), late]);
    clearTimeout(timer);
    assert.deepEqual(result, { exitCode: null });
  } finally {
    for (const req of held) req.socket.destroy();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a worker's engine TLS files are read at start: the connection's, else DOCKER_CERT_PATH's where docker-modem would read them; known_hosts too", () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-files-"));
  try {
    for (const name of ["ca.pem", "cert.pem", "key.pem", "known_hosts", "mine.pem"]) writeFileSync(join(dir, name), `${name}\n`);
    const env = { DOCKER_HOST: "tcp://engine.example:2376", DOCKER_CERT_PATH: dir };
    const text = (b: Buffer | undefined) => b?.toString();
    const fromEnv = readDockerFiles({}, env);
    assert.deepEqual([text(fromEnv.certPath?.ca), text(fromEnv.certPath?.cert), text(fromEnv.certPath?.key), fromEnv.ca], ["ca.pem\n", "cert.pem\n", "key.pem\n", undefined]);
    // The connection's own files are kept apart: they apply to a configured engine only.
    const mixed = readDockerFiles({ caFile: join(dir, "mine.pem"), knownHostsFile: join(dir, "known_hosts") }, env);
    assert.deepEqual([text(mixed.ca), text(mixed.certPath?.ca), mixed.knownHosts], ["mine.pem\n", "ca.pem\n", "known_hosts\n"]);
    // A local socket: docker-modem reads no certificates, nor does the worker.
    assert.deepEqual(readDockerFiles({}, { DOCKER_HOST: "unix:///var/run/docker.sock", DOCKER_CERT_PATH: dir }), {});
    assert.deepEqual(readDockerFiles({}, { DOCKER_CERT_PATH: dir }), {});
    // A configured https engine naming no files of its own takes DOCKER_CERT_PATH's, DOCKER_HOST unset.
    const https = readDockerFiles({ host: "engine.example", protocol: "https" }, { DOCKER_CERT_PATH: dir });
    assert.deepEqual([text(https.certPath?.ca), text(https.certPath?.key)], ["ca.pem\n", "key.pem\n"]);
    assert.deepEqual(readDockerFiles({ host: "engine.example", protocol: "ssh" }, { DOCKER_CERT_PATH: dir }), {});
    // A known_hosts file missing at start is no error here: the SSH connection's check says so.
    assert.deepEqual(readDockerFiles({ knownHostsFile: join(dir, "absent") }, {}), {});
    assert.throws(() => readDockerFiles({}, { ...env, DOCKER_CERT_PATH: join(dir, "absent") }), /cannot read ca\.pem in DOCKER_CERT_PATH \(.*absent\): ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a connection's TLS files without a host or socket of its own leave the local engine as it is: plain HTTP on its socket", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-driver-"));
  const socketPath = join(dir, "engine.sock");
  const server = createServer((req, res) => {
    res.writeHead(req.url?.endsWith("/_ping") ? 200 : 404, { "content-type": "text/plain" }).end("OK");
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const before = process.env.DOCKER_HOST;
  try {
    for (const name of ["ca.pem", "cert.pem", "key.pem"]) writeFileSync(join(dir, name), "not read by TLS\n");
    // docker-modem takes the engine from DOCKER_HOST (a unix socket here) when the connection names none.
    process.env.DOCKER_HOST = `unix://${socketPath}`;
    const driver = new DockerodeDriver({ caFile: join(dir, "ca.pem"), certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem"), callTimeoutSeconds: 5 });
    await driver.ping();
  } finally {
    if (before === undefined) delete process.env.DOCKER_HOST;
    else process.env.DOCKER_HOST = before;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a configured socket is spoken to in plain HTTP whatever DOCKER_HOST and DOCKER_CERT_PATH say of another engine", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-driver-"));
  const socketPath = join(dir, "engine.sock");
  const server = createServer((req, res) => {
    res.writeHead(req.url?.endsWith("/_ping") ? 200 : 404, { "content-type": "text/plain" }).end("OK");
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const saved = { DOCKER_HOST: process.env.DOCKER_HOST, DOCKER_CERT_PATH: process.env.DOCKER_CERT_PATH };
  try {
    for (const name of ["ca.pem", "cert.pem", "key.pem"]) writeFileSync(join(dir, name), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    // An operator's shell, set up for a remote engine over TLS (nothing listens there: never dialled).
    process.env.DOCKER_HOST = "tcp://127.0.0.1:9";
    process.env.DOCKER_CERT_PATH = dir;
    assert.deepEqual(readDockerFiles({ socketPath }, process.env), {}, "DOCKER_CERT_PATH's files are not for a configured socket");
    await new DockerodeDriver({ socketPath, callTimeoutSeconds: 5 }).ping();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

/** An "engine" on a unix socket that answers `/_ping` and a create, and notes each request's URL and body. */
async function recordingEngine(dir: string): Promise<{ socketPath: string; seen: { url: string; body: string }[]; close(): Promise<void> }> {
  const socketPath = join(dir, "engine.sock");
  const seen: { url: string; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => (body += chunk.toString()));
    req.on("end", () => {
      seen.push({ url: req.url ?? "", body });
      if (req.url?.endsWith("/_ping")) res.writeHead(200, { "content-type": "text/plain" }).end("OK");
      // An engine on cgroup v2, as a create asks first (it names the runner a cgroup namespace).
      else if (req.method === "GET" && /\/info$/.test(req.url ?? "")) res.writeHead(200, { "content-type": "application/json" }).end('{"CgroupVersion":"2"}');
      else if (req.method === "POST" && req.url?.includes("/containers/create")) res.writeHead(201, { "content-type": "application/json" }).end('{"Id":"c0ffee","Warnings":[]}');
      else res.writeHead(404, { "content-type": "application/json" }).end('{"message":"not here"}');
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    socketPath,
    seen,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test("a configured socket is the engine even when DOCKER_HOST names another: docker-modem's defaults from DOCKER_HOST do not apply", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-driver-"));
  const engine = await recordingEngine(dir);
  const before = process.env.DOCKER_HOST;
  try {
    // Nothing listens there: a ping that went to DOCKER_HOST would be refused.
    process.env.DOCKER_HOST = "tcp://127.0.0.1:1";
    await new DockerodeDriver({ socketPath: engine.socketPath, callTimeoutSeconds: 5 }).ping();
    assert.equal(engine.seen.filter((r) => r.url.endsWith("/_ping")).length, 1);
  } finally {
    if (before === undefined) delete process.env.DOCKER_HOST;
    else process.env.DOCKER_HOST = before;
    await engine.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a create sends the JIT config in the request's body only: the URL carries the container's name and nothing else", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-driver-"));
  const engine = await recordingEngine(dir);
  const jit = "JITSECRET-d6f1c0a4e2b94f7a";
  try {
    const driver = new DockerodeDriver({ socketPath: engine.socketPath, callTimeoutSeconds: 5 });
    const id = await driver.create({
      name: "jitrunner-default-0123456789",
      image: "runner:1",
      jitConfig: new Secret(jit),
      env: { FOO: "bar" },
      labels: runnerLabels({ pool: "default", host: "h1", runnerName: "jitrunner-default-0123456789", demandId: "1-1" }),
      isolation: "privileged",
      capDrop: [],
      resources: {},
      networkMode: "none",
      mounts: [],
    });
    assert.equal(id, "c0ffee");
    const [create, ...more] = engine.seen.filter((r) => r.url.includes("/containers/create"));
    assert.ok(create && more.length === 0, JSON.stringify(engine.seen.map((r) => r.url)));
    assert.match(create.url, /\/containers\/create\?name=jitrunner-default-0123456789$/);
    const body = JSON.parse(create.body) as { Env: string[]; Image: string; Labels: Record<string, string>; HostConfig: { CgroupnsMode?: string } };
    assert.ok(body.Env.includes(`ACTIONS_RUNNER_INPUT_JITCONFIG=${jit}`), "the runner still gets its JIT config");
    assert.equal(body.Image, "runner:1");
    assert.equal(body.Labels[LABEL.pool], "default");
    assert.equal(body.HostConfig.CgroupnsMode, "private", "a v2 engine's runner gets a cgroup namespace of its own");
  } finally {
    await engine.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
