import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";
import { relayServer, type LoopbackServer } from "./relay.ts";

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

/** How long an engine's stop waits for dockerd to exit after SIGTERM before it kills it (its own shutdown gives containers 15 s). */
const STOP_GRACE_MS = 60_000;

export interface EngineOptions {
  /**
   * More dockerd flags. A TCP listener (`-H tcp://127.0.0.1:PORT`, for a TLS engine, say) is in
   * the engine's network namespace: a relay of this process's listens on the same address and
   * port here and passes its connections on, bytes untouched (TLS end to end).
   */
  args?: readonly string[];
  /** The engine gets a default bridge of its own, made with this MTU (dockerd --mtu); none without. */
  bridgeMtu?: number;
}

/**
 * Passes connections to a unix socket on to a TCP address: run in the engine's network namespace.
 * It exits when its stdin closes: with the test process, however that ends.
 */
const INNER_RELAY = `
const net = require("node:net");
process.stdin.on("close", () => process.exit(0)).resume();
const [path, host, port] = process.argv.slice(1);
net.createServer((c) => {
  const u = net.connect(Number(port), host);
  for (const [a, b] of [[c, u], [u, c]]) { a.pipe(b); a.on("error", () => b.destroy()); a.on("close", () => b.destroy()); }
}).listen(path, () => process.stdout.write("listening\\n"));
`;

/**
 * An extra Docker engine on this machine (shared/TESTING.md): its own data and exec roots,
 * pidfile and unix socket, no iptables, and a network namespace of its own (unshare --net). Its
 * data root is kept under the system temp dir between runs so the runner image is loaded once
 * (`image`, copied from the main engine; none for a test that runs no container).
 *
 * The namespace keeps the engine off this machine's network: a dockerd started with `--bridge
 * none`, or again on a data root it made a bridge on, deletes the interface `docker0` of the
 * namespace it runs in, the machine's own engine's default bridge, whose containers could then
 * no longer start. Runner containers use network `none` and the fake GitHub's unix socket anyway.
 */
export async function startEngine(name: string, image: string | undefined, opts: EngineOptions = {}): Promise<TestEngine> {
  const root = join(tmpdir(), "jitrunner-engines", name);
  mkdirSync(root, { recursive: true });
  const socketPath = join(root, "docker.sock");
  const docker = new Docker({ socketPath });
  const args = opts.args ?? [];
  const tcp = args.flatMap((a, i) => (args[i - 1] === "-H" || args[i - 1] === "--host") && a.startsWith("tcp://") ? [new URL(a)] : []);
  const setup = ["ip link set lo up"];
  let bridge = ["--bridge", "none"];
  if (opts.bridgeMtu !== undefined) {
    setup.push("ip link add jr0 type bridge", "ip addr add 10.213.255.1/24 dev jr0", "ip link set jr0 up");
    bridge = ["--bridge", "jr0", "--mtu", String(opts.bridgeMtu)];
  }
  let child: ChildProcess;
  let exited: Promise<void>;
  const relays: Array<() => Promise<void>> = [];
  const launch = async (): Promise<void> => {
    const dockerd = [
      "--data-root", join(root, "data"),
      "--exec-root", join(root, "exec"),
      "--pidfile", join(root, "dockerd.pid"),
      "-H", `unix://${socketPath}`,
      ...bridge,
      "--iptables=false",
      "--ip-masq=false",
      ...args,
    ];
    // sh execs dockerd: the child's pid is the daemon's, and its SIGTERM the daemon's.
    const c = spawn("unshare", ["--net", "sh", "-c", `${setup.join(" && ")} && exec dockerd "$@"`, "sh", ...dockerd], { stdio: "ignore" });
    child = c;
    exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    try {
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
      for (const url of tcp) relays.push(await relayInto(c.pid!, url, join(root, `tcp-${url.port}.sock`)));
    } catch (err) {
      // No engine for the caller to stop: what did start is stopped here.
      await stop();
      throw err;
    }
  };
  const stop = async (): Promise<void> => {
    for (const close of relays.splice(0)) await close();
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    // A hung daemon is killed: its containers' shims are then the caller's (killLeftoverShims).
    const kill = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
    await exited;
    clearTimeout(kill);
  };
  await launch();
  const present = image === undefined || (await docker.getImage(image).inspect().then(() => true, () => false));
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
 * A listener on 127.0.0.1 and `url`'s port here whose connections reach `url`'s address and
 * port in the network namespace of process `pid`, through a unix socket at `path` and a relay
 * of its own run there (nsenter). Returns what closes both.
 */
async function relayInto(pid: number, url: URL, path: string): Promise<() => Promise<void>> {
  rmSync(path, { force: true });
  const inner = spawn("nsenter", ["--target", String(pid), "--net", process.execPath, "-e", INNER_RELAY, path, url.hostname, url.port], { stdio: ["pipe", "pipe", "inherit"] });
  const [ready] = (await Promise.race([once(inner.stdout!, "data"), once(inner, "exit")])) as unknown[];
  if (!Buffer.isBuffer(ready)) throw new Error(`the relay into the engine's network namespace for ${url.host} did not start`);
  let outer: LoopbackServer;
  try {
    outer = await relayServer(() => connect(path), { port: Number(url.port) });
  } catch (err) {
    inner.kill("SIGTERM");
    throw err;
  }
  return async () => {
    await outer.close();
    inner.kill("SIGTERM");
    if (inner.exitCode === null && inner.signalCode === null) await once(inner, "exit");
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
    if (!cmdline.includes("containerd-shim") || !cmdline.includes(`${join(root, "exec")}/`)) continue;
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
}
