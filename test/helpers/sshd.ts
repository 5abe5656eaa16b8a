import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.ts";

export interface TestSshd {
  port: number;
  /** sshd's host public key, as OpenSSH writes it: `ssh-ed25519 BASE64 comment`. */
  hostPublicKey: string;
  /** A known_hosts line for this sshd (`[127.0.0.1]:PORT ssh-ed25519 BASE64`). */
  knownHostsLine: string;
  /** An ssh-agent holding the one key sshd accepts (for root): what SSH_AUTH_SOCK should name. */
  agentSocket: string;
  /** An ssh-agent holding no key at all. */
  emptyAgentSocket: string;
  stop(): Promise<void>;
}

/**
 * An OpenSSH server on 127.0.0.1 for one test: its own host key, config and pid file, accepting
 * only a key made for the test (for root, as the machine's engine needs), plus ssh-agents that
 * hold that key or none. Stopped by pid. Needs Debian's openssh-server (.ci/run installs it).
 */
export async function startSshd(): Promise<TestSshd> {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-sshd-"));
  const keygen = (file: string) => {
    const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, file)], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  };
  keygen("host_key");
  keygen("client_key");
  writeFileSync(join(dir, "authorized_keys"), readFileSync(join(dir, "client_key.pub")));
  mkdirSync("/run/sshd", { recursive: true }); // sshd's privilege separation directory
  const children: ChildProcess[] = [];
  const agent = async (name: string, withKey: boolean): Promise<string> => {
    const socket = join(dir, name);
    const child = spawn("ssh-agent", ["-D", "-a", socket], { stdio: "ignore" });
    children.push(child);
    await until(() => connects(socket), `ssh-agent ${name}`);
    if (withKey) {
      const r = spawnSync("ssh-add", ["-q", join(dir, "client_key")], { env: { ...process.env, SSH_AUTH_SOCK: socket }, encoding: "utf8" });
      if (r.status !== 0) throw new Error(`ssh-add failed: ${r.stderr}`);
    }
    return socket;
  };
  try {
    const port = await listen(dir, children);
    const hostPublicKey = readFileSync(join(dir, "host_key.pub"), "utf8").trim();
    const [keyType, key] = hostPublicKey.split(/\s+/);
    return {
      port,
      hostPublicKey,
      knownHostsLine: `[127.0.0.1]:${port} ${keyType} ${key}`,
      agentSocket: await agent("agent.sock", true),
      emptyAgentSocket: await agent("empty-agent.sock", false),
      stop: async () => {
        await Promise.all(children.map((c) => stopChild(c)));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await Promise.all(children.map((c) => stopChild(c)));
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Starts sshd on a free loopback port and returns the port once sshd answers there. freePort's
 * port is only free when it is asked for: a test in the other lane (test/run.ts) may bind it
 * first, and sshd then exits; a new port is tried, up to 5.
 */
async function listen(dir: string, children: ChildProcess[]): Promise<number> {
  for (let tries = 1; ; tries++) {
    const port = await freePort();
    writeFileSync(
      join(dir, "sshd_config"),
      [
        `Port ${port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${join(dir, "host_key")}`,
        `PidFile ${join(dir, "sshd.pid")}`,
        `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "",
      ].join("\n"),
    );
    const sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", join(dir, "sshd_config")], { stdio: ["ignore", "ignore", "pipe"] });
    children.push(sshd);
    let sshdErr = "";
    sshd.stderr!.on("data", (d) => (sshdErr += String(d)));
    const exited = () => (sshd.exitCode !== null || sshd.signalCode !== null ? `sshd exited: ${sshdErr}` : undefined);
    try {
      // Its banner, not a mere connection: another test's listener may hold the port.
      await until(() => greetsAsSsh(port), "sshd", exited);
      return port;
    } catch (err) {
      if (!exited() || tries === 5) throw err;
    }
  }
}

/** Whether the server on `port` greets as OpenSSH does. */
function greetsAsSsh(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(port, "127.0.0.1");
    socket.setTimeout(2000, () => (socket.destroy(), resolve(false)));
    socket.once("data", (d) => (socket.destroy(), resolve(String(d).startsWith("SSH-2.0-OpenSSH"))));
    socket.once("error", () => resolve(false));
    socket.once("close", () => resolve(false));
  });
}

function connects(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

async function until(ok: () => Promise<boolean>, what: string, failed?: () => string | undefined): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await ok())) {
    const reason = failed?.();
    if (reason) throw new Error(reason);
    if (Date.now() > deadline) throw new Error(`${what} did not come up in 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  await exited;
}
