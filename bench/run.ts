/**
 * `npm run bench`: measures ingest, pickup and a burst against baselines measured in the same run,
 * and writes BENCHMARKS.md. Not part of `npm test`. Needs what the tests need: redis-server on the
 * PATH, a Docker engine, and the test runner image (`npm run test:images`).
 *
 * Env: BENCH_PHASES (comma list of ingest,pickup,burst; a partial run prints its results instead of
 * writing BENCHMARKS.md), BENCH_OUT (output file), BENCH_QUIET_WAIT_S (how long to wait for other
 * work on the machine to stop first, default 120), BENCH_KEEP_LOGS (keep the scratch directory with
 * every process's log), and the per-phase sizes in each phase's file.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Docker from "dockerode";
import { FakeGitHub } from "../test/fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../test/helpers/config.ts";
import { runBurst, type BurstResult } from "./burst.ts";
import { runIngest, type IngestResult } from "./ingest.ts";
import { RUNNER_IMAGE, scratchDir } from "./lib/jitrunner.ts";
import { describeMachine } from "./lib/machine.ts";
import { machineLoad, ROOT, startBenchRedis, stopAllChildren } from "./lib/procs.ts";
import { runPickup, type PickupResult } from "./pickup.ts";
import { render } from "./report.ts";

/** The whole run stops here, whatever phase it is in. */
const HARD_LIMIT_MS = 15 * 60_000;
/** Before measuring, wait up to this long for other processes to use less than QUIET_CPUS. */
const QUIET_WAIT_MS = Number(process.env.BENCH_QUIET_WAIT_S ?? 120) * 1000;
const QUIET_CPUS = 0.2;
const PHASES = new Set((process.env.BENCH_PHASES ?? "ingest,pickup,burst").split(",").map((s) => s.trim()));
const started = Date.now();
const progress = (msg: string) => process.stdout.write(`[bench +${Math.round((Date.now() - started) / 1000)}s] ${msg}\n`);

const cleanups: Array<() => Promise<unknown>> = [];
async function cleanup(): Promise<void> {
  await stopAllChildren();
  for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
  cleanups.length = 0;
}

/** Containers this bench created and a failed phase may have left: baseline ones and bench hosts' runners. */
async function removeBenchContainers(docker: Docker): Promise<void> {
  const all = await docker.listContainers({ all: true, filters: { label: ["dev.jitrunner.bench-baseline"] } });
  const runners = await docker.listContainers({ all: true, filters: { label: ["dev.jitrunner.managed-by=jitrunner"] } });
  for (const c of runners) if (/^bench-(pickup|burst)-[0-9a-f]{6}$/.test(c.Labels["dev.jitrunner.host"] ?? "")) all.push(c);
  await Promise.allSettled(all.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
}

function loadavg1(): number {
  return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { cwd: ROOT, stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
  } catch {
    return "";
  }
}

async function main(): Promise<void> {
  const docker = new Docker();
  await docker.getImage(RUNNER_IMAGE).inspect().catch(() => {
    throw new Error(`runner image ${RUNNER_IMAGE} is missing: run 'npm run test:images' first`);
  });
  cleanups.push(() => removeBenchContainers(docker));
  const dir = scratchDir();
  progress(`logs and configs of this run: ${dir} (removed after a successful run unless BENCH_KEEP_LOGS=1)`);
  const redis = await startBenchRedis();
  cleanups.push(() => redis.stop());
  const machine = await describeMachine(docker, redis.version);
  progress(`machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memoryGib} GiB, Node ${machine.node}, Docker ${machine.docker}`);
  let busyBefore = await machineLoad(3_000);
  // Development machines are shared: wait a little for other work to finish before measuring.
  for (const deadline = Date.now() + QUIET_WAIT_MS; busyBefore > QUIET_CPUS && Date.now() < deadline; ) {
    progress(`waiting for a quiet machine: other processes keep ${busyBefore.toFixed(2)} CPUs busy`);
    busyBefore = await machineLoad(5_000);
  }
  const loadavg: Record<string, number> = { start: loadavg1() };
  progress(`other work on the machine before the run: ${busyBefore.toFixed(2)} CPUs busy (3 s sample), load average ${loadavg.start}`);
  if (busyBefore > QUIET_CPUS) progress("warning: the machine is not idle; results will be noisier (and say so)");

  let ingest: IngestResult | undefined;
  if (PHASES.has("ingest")) {
    loadavg.ingest = loadavg1();
    progress("ingest: start");
    ingest = await runIngest(dir, redis, progress);
    await redis.client.flushall();
    progress("ingest: done");
  }

  let pickup: PickupResult | undefined;
  let burst: BurstResult | undefined;
  if (PHASES.has("pickup") || PHASES.has("burst")) {
    const fake = await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    cleanups.push(() => fake.close());
    if (PHASES.has("pickup")) {
      loadavg.pickup = loadavg1();
      progress("pickup: start");
      pickup = await runPickup(dir, redis, docker, fake, progress);
      progress("pickup: done");
    }
    if (PHASES.has("burst")) {
      loadavg.burst = loadavg1();
      progress("burst: start");
      burst = await runBurst(dir, redis, docker, fake, progress);
      progress("burst: done");
    }
  }

  const seconds = (Date.now() - started) / 1000;
  if (!ingest || !pickup || !burst) {
    process.stdout.write(`${JSON.stringify({ ingest, pickup, burst }, (_k, v: unknown) => (v instanceof Map ? Object.fromEntries(v) : v), 2)}\n`);
    progress(`partial run (${[...PHASES].join(",")}): BENCHMARKS.md not written`);
    return;
  }
  const out = process.env.BENCH_OUT ?? join(ROOT, "BENCHMARKS.md");
  const markdown = render({
    info: {
      date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      seconds,
      commit: git(["rev-parse", "--short", "HEAD"]) || "unknown",
      dirty: git(["status", "--porcelain", "--untracked-files=no"]) !== "",
      busyBefore,
      loadavg: { ...loadavg, end: loadavg1() },
    },
    machine,
    ingest,
    pickup,
    burst,
  });
  writeFileSync(out, markdown);
  if (!process.env.BENCH_KEEP_LOGS) rmSync(dir, { recursive: true, force: true });
  progress(`wrote ${out.startsWith(ROOT) ? out.slice(ROOT.length) : out} in ${Math.round(seconds)} s`);
}

const watchdog = setTimeout(() => {
  progress(`hard limit of ${HARD_LIMIT_MS / 60_000} minutes reached: stopping`);
  void cleanup().finally(() => process.exit(1));
}, HARD_LIMIT_MS);
watchdog.unref();

let signalled = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (signalled) process.exit(1);
    signalled = true;
    progress(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(1));
  });
}

main().then(
  async () => {
    await cleanup();
    clearTimeout(watchdog);
    process.exit(0);
  },
  async (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await cleanup();
    process.exit(1);
  },
);
