import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";

export interface TestEngine {
  name: string;
  /** Its directory: data and exec roots, pidfile, socket. */
  root: string;
  socketPath: string;
  docker: Docker;
  /** Stops the daemon (SIGTERM, by pid): to the worker on it, the host failed. */
  stop(): Promise<void>;
  /**
   * Stops the daemon (if it runs) and starts it again on the same data root and socket: an
   * engine restarted under its workers. Containers it ran come back stopped (no restart policy).
   */
  restart(): Promise<void>;
}

/**
 * An extra Docker engine on this machine (shared/TESTING.md): its own data and exec roots,
 * pidfile and unix socket, no bridge and no iptables. Its data root is kept under the system temp
 * dir between runs so the runner image is loaded once. `args`: more dockerd flags (a TLS
 * listener on a loopback TCP port, say).
 */
export async function startEngine(name: string, image: string, opts: { args?: readonly string[] } = {}): Promise<TestEngine> {
  const root = join(tmpdir(), "jitrunner-engines", name);
  mkdirSync(root, { recursive: true });
  const socketPath = join(root, "docker.sock");
  const docker = new Docker({ socketPath });
  let child: ChildProcess;
  let exited: Promise<void>;
  const launch = async (): Promise<void> => {
    const c = spawn(
      "dockerd",
      [
        "--data-root", join(root, "data"),
        "--exec-root", join(root, "exec"),
        "--pidfile", join(root, "dockerd.pid"),
        "-H", `unix://${socketPath}`,
        "--bridge", "none",
        "--iptables=false",
        "--ip-masq=false",
        ...(opts.args ?? []),
      ],
      { stdio: "ignore" },
    );
    child = c;
    exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await docker.ping();
        break;
      } catch {
        if (c.exitCode !== null || Date.now() > deadline) throw new Error(`dockerd ${name} did not start`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  };
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
  };
  await launch();
  const present = await docker.getImage(image).inspect().then(() => true, () => false);
  if (!present) {
    // No registry: copy the image from the main engine.
    const tar = await new Docker().getImage(image).get();
    const stream = await docker.loadImage(tar);
    await new Promise((resolve, reject) => docker.modem.followProgress(stream, (err) => (err ? reject(err) : resolve(undefined))));
  }
  return {
    name,
    root,
    socketPath,
    docker,
    stop,
    restart: async () => {
      await stop();
      await launch();
    },
  };
}

/**
 * An engine stopped while it was starting or stopping containers can leave a container's
 * containerd shim running after it: found by this engine's own exec root, killed by pid. For a
 * file's clean-up, once its engine is stopped for good (a restarted engine takes its shims back).
 */
export function killLeftoverShims(root: string): void {
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    let cmdline = "";
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes("containerd-shim") && cmdline.includes(`${join(root, "exec")}/`)) process.kill(Number(pid), "SIGKILL");
  }
}
