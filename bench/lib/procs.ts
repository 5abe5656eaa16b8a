/**
 * Child processes the benchmark starts and measures: node programs from this repo (the real
 * `jitrunner` CLI, the bare baseline route) and a private redis-server. CPU and memory come from
 * /proc of each child, so the load generator's own work is never counted.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { freePort } from "../../test/helpers/ports.ts";
import { waitFor } from "../../test/helpers/process.ts";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

export interface Child {
  pid: number;
  child: ChildProcess;
  /** SIGTERM, SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** Every child still running, so a failed run can stop them (by pid) on its way out. */
const running = new Set<Child>();

function track(child: ChildProcess, what: string): Child {
  if (child.pid === undefined) throw new Error(`could not start ${what}`);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const handle: Child = {
    pid: child.pid,
    child,
    stop: async (graceMs = 30_000) => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(timer);
      running.delete(handle);
      return code;
    },
  };
  running.add(handle);
  return handle;
}

// Last resort when the bench dies without cleaning up: nothing it started outlives it.
process.on("exit", () => {
  for (const c of running) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGTERM");
});

export async function stopAllChildren(): Promise<void> {
  await Promise.allSettled([...running].map((c) => c.stop(5_000)));
}

/**
 * `node --import tsx FILE ARGS` from the repo root, stdout and stderr appended to `logFile`.
 * With `BENCH_CPU_PROF=DIR` each such process writes a V8 CPU profile into DIR when it exits
 * (node refuses `--cpu-prof` in NODE_OPTIONS). The bench's own environment is passed on without
 * its `JITRUNNER_*` variables: they override a config file (JITRUNNER_REDIS_URL would send the
 * demand to another Redis, JITRUNNER_HOST_ID give every burst worker one host), and the configs
 * the bench writes are what it measures.
 */
export function spawnNode(args: string[], logFile: string, env: Record<string, string> = {}): Child {
  const fd = openSync(logFile, "a");
  const profile = process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("JITRUNNER_")));
  try {
    const child = spawn(process.execPath, [...profile, "--import", "tsx", ...args], {
      cwd: ROOT,
      env: { ...inherited, ...env },
      stdio: ["ignore", fd, fd],
    });
    return track(child, args.join(" "));
  } finally {
    closeSync(fd);
  }
}

/** The real CLI: `jitrunner <mode> --config FILE`. */
export function spawnJitrunner(mode: "server" | "worker" | "all", configFile: string, logFile: string): Child {
  return spawnNode(["src/cli.ts", mode, "--config", configFile], logFile);
}

export interface ProcSample {
  /** user + system CPU time, ms */
  cpuMs: number;
  /** resident set now, KiB */
  rssKib: number;
  /** peak resident set since start, KiB */
  hwmKib: number;
}

export function sample(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
  return { cpuMs: (ticks * 1000) / CLK_TCK, rssKib: kib("VmRSS"), hwmKib: kib("VmHWM") };
}

/**
 * The whole machine's CPU time since boot, ms: what processes ran (user, nice, system: what
 * /proc/PID/stat can be set against), interrupt handling (irq, softirq: loopback networking
 * partly lands here, charged to no process), stolen, and everything.
 */
export function machineCpu(): { processMs: number; irqMs: number; stealMs: number; totalMs: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
  const t = line.trim().split(/\s+/).slice(1, 9).map(Number); // user nice system idle iowait irq softirq steal
  const at = (i: number) => t[i] ?? 0;
  const toMs = (ticks: number) => (ticks * 1000) / CLK_TCK;
  return {
    processMs: toMs(at(0) + at(1) + at(2)),
    irqMs: toMs(at(5) + at(6)),
    stealMs: toMs(at(7)),
    totalMs: toMs(t.reduce((a, b) => a + b, 0)),
  };
}

/** CPU cores the whole machine kept busy over `ms` (a quick look before a run: is anything else running?). */
export async function machineLoad(ms: number): Promise<number> {
  const a = machineCpu();
  await new Promise((r) => setTimeout(r, ms));
  const b = machineCpu();
  return (b.processMs + b.irqMs - a.processMs - a.irqMs) / ms;
}

export interface BenchRedis {
  url: string;
  pid: number;
  client: Redis;
  version: string;
  /** Calls per command since the last reset (commands run inside Lua scripts included). */
  commandstats(): Promise<Map<string, number>>;
  /** Redis's own CPU time, ms. */
  cpuMs(): Promise<number>;
  /**
   * Socket reads Redis has served since it started (INFO stats `total_reads_processed`): one per
   * batch of commands a client wrote at once, so commands per read shows how far clients pipeline.
   */
  readsProcessed(): Promise<number>;
  stop(): Promise<void>;
}

/** A private redis-server on a free loopback port: nobody else's commands in its statistics. */
export async function startBenchRedis(): Promise<BenchRedis> {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const handle = track(child, "redis-server");
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
  client.on("error", () => undefined); // refused until redis-server listens; waitFor retries
  await waitFor(async () => {
    if (client.status !== "ready") await client.connect().catch(() => undefined);
    return (await client.ping()) === "PONG";
  }, 10_000, "redis-server to answer");
  const info = async (section: string) => client.info(section);
  const version = /redis_version:(\S+)/.exec(await info("server"))?.[1] ?? "unknown";
  return {
    url,
    pid: handle.pid,
    client,
    version,
    commandstats: async () => {
      const out = new Map<string, number>();
      for (const m of (await info("commandstats")).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out.set(m[1]!, Number(m[2]));
      return out;
    },
    cpuMs: async () => {
      const text = await info("cpu");
      const get = (k: string) => Number(new RegExp(`^${k}:([\\d.]+)`, "m").exec(text)?.[1] ?? 0);
      return (get("used_cpu_sys") + get("used_cpu_user")) * 1000;
    },
    readsProcessed: async () => Number(/^total_reads_processed:(\d+)/m.exec(await info("stats"))?.[1] ?? Number.NaN),
    stop: async () => {
      client.disconnect();
      await handle.stop(5_000);
    },
  };
}

/** b - a per command, without the bench's own INFO calls; and the total. */
export function commandDelta(a: Map<string, number>, b: Map<string, number>): { total: number; byCommand: Map<string, number> } {
  const byCommand = new Map<string, number>();
  let total = 0;
  for (const [cmd, n] of b) {
    if (cmd === "info") continue;
    const d = n - (a.get(cmd) ?? 0);
    if (d > 0) {
      byCommand.set(cmd, d);
      total += d;
    }
  }
  return { total, byCommand: new Map([...byCommand].sort((x, y) => y[1] - x[1])) };
}
