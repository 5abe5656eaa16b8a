/**
 * An engine that cannot be reached is said so, with what set its address and the fix: a socket
 * path with no socket (no dockerd, a wrong path), and a socket whose group this process lacks
 * (added by JITRUNNER_USER when started as root), rather than `ping failed: connect EACCES /var/run/docker.sock`.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { DockerodeDriver, engineUnreachable } from "../../src/docker/dockerode-driver.ts";
import { DockerError } from "../../src/errors.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const DRIVER = join(ROOT, "src/docker/dockerode-driver.ts");
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

test("no socket at worker.docker.socketPath: the ping says where, which option, and what to check", async () => {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-nosock-"));
  const socketPath = join(dir, "docker.sock");
  try {
    const driver = new DockerodeDriver({ socketPath, callTimeoutSeconds: 5 });
    await assert.rejects(driver.ping(), (err: Error) => {
      assert.ok(err instanceof DockerError);
      assert.equal(
        err.message,
        `cannot reach the Docker engine at ${socketPath} (worker.docker.socketPath): no socket there: is dockerd running, and is the path right?`,
      );
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("permission denied on the socket: this process's uid and groups, the socket's group, and what to do", async (t) => {
  // Root is never refused: the driver runs in a process of its own as nobody, the socket in a group it lacks.
  const [uid, gid, socketGid] = [65534, 65534, 4242];
  if (process.getuid?.() !== 0) return t.skip("needs root, to run the driver as another user");
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-sockgroup-"));
  chmodSync(dir, 0o755);
  const socketPath = join(dir, "docker.sock");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  try {
    chownSync(socketPath, 0, socketGid);
    chmodSync(socketPath, 0o660);
    const ping = `import(${JSON.stringify(DRIVER)}).then(({ DockerodeDriver }) => new DockerodeDriver({ socketPath: ${JSON.stringify(socketPath)} }).ping()).then(() => console.log("answered"), (e) => console.log(e.message))`;
    const child = spawn(process.execPath, ["--import", "tsx", "-e", ping], { cwd: ROOT, uid, gid, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    await new Promise((resolve) => child.once("exit", resolve));
    assert.equal(
      out.trim(),
      `cannot reach the Docker engine at ${socketPath} (worker.docker.socketPath): permission denied; ` +
        `this process (uid ${uid}, groups [${gid}]) needs the socket's group ${socketGid}: ` +
        `add the user to group ${socketGid} (the jitrunner image adds it itself when started as root, as the Compose files start it; see JITRUNNER_USER)`,
    );
  } finally {
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the default socket names both ways to set another; DOCKER_HOST names itself; errors that are not a failed connect are left alone", () => {
  const enoent = { code: "ENOENT", syscall: "connect", address: "/var/run/docker.sock", message: "connect ENOENT /var/run/docker.sock" };
  assert.match(engineUnreachable(enoent, "worker.docker.socketPath or DOCKER_HOST")!, new RegExp(`^${escape("cannot reach the Docker engine at /var/run/docker.sock (worker.docker.socketPath or DOCKER_HOST): no socket there")}`));
  const refused = { code: "ECONNREFUSED", syscall: "connect", address: "10.0.0.5", port: 2376, message: "connect ECONNREFUSED 10.0.0.5:2376" };
  assert.equal(engineUnreachable(refused, "from DOCKER_HOST"), "cannot reach the Docker engine at 10.0.0.5:2376 (from DOCKER_HOST): connection refused: nothing listens there");
  assert.equal(engineUnreachable(Object.assign(new Error("(HTTP code 500) server error"), { statusCode: 500 }), "x"), undefined);
  assert.equal(engineUnreachable({ code: "ENOTFOUND", syscall: "getaddrinfo", hostname: "engine.invalid" }, "x"), undefined);
});
