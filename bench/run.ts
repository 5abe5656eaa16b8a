/**
 * `npm run bench`: measures ingest, pickup, warm-runner job start and a burst across three engines
 * against baselines measured in the same run, and writes BENCHMARKS.md. Not part of `npm test`.
 * Needs what the tests need: redis-server and dockerd on the PATH, a Docker engine, and the test
 * runner image (`npm run test:images`).
 *
 * Env: BENCH_PHASES (comma list of ingest,pickup,warm,burst; a run of some phases rewrites only
 * their parts of an existing BENCHMARKS.md, see report.ts), BENCH_OUT (output file),
 * BENCH_QUIET_WAIT_S (how long to wait for other work on the machine to stop first, default 120),
 * BENCH_KEEP_LOGS (keep the scratch directory with every process's log and the run's figures,
 * results.json), BENCH_RENDER_FROM (render BENCHMARKS.md again from such a results.json, the
 * phases in BENCH_PHASES that it holds, without measuring), BENCH_CONCURRENT_STARTS (the
 * jitrunner workers' worker.concurrentStarts, to compare settings; default: the config's default),
 * BENCH_CONCURRENT_CALLS (their github.concurrentCalls, likewise), and the per-phase sizes in each
 * phase's file.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Docker from "dockerode";
import { FakeGitHub } from "../test/fakes/github/index.ts";
import { WEBHOOK_SECRET } from "../test/helpers/config.ts";
import { BURST_LIMIT_MS, runBurst } from "./burst.ts";
import { runIngest } from "./ingest.ts";
import { removeContainers, stopAllBenchEngines } from "./lib/engines.ts";
import { RUNNER_IMAGE, scratchDir } from "./lib/jitrunner.ts";
import { describeMachine } from "./lib/machine.ts";
import { machineLoad, ROOT, startBenchRedis, stopAllChildren } from "./lib/procs.ts";
import { loadRun, saveRun, type SavedRun } from "./lib/saved.ts";
import { runPickup } from "./pickup.ts";
import { ingestHeadline, PHASES as ALL_PHASES, render, type Phase, type Results } from "./report.ts";
import { runWarm } from "./warm.ts";

/**
 * The whole run stops here, whatever phase it is in: 20 minutes for the phases other than the
 * burst, plus the burst's own limit (BENCH_BURST_LIMIT_S), so that a longer burst limit is kept.
 */
const HARD_LIMIT_MS = 20 * 60_000 + BURST_LIMIT_MS;
/** How long a stop by the hard limit or a signal waits for the cleanup (engines' stops included). */
const CLEANUP_LIMIT_MS = 3 * 60_000;
/** Before measuring, wait up to this long for other processes to use less than QUIET_CPUS. */
const QUIET_WAIT_MS = Number(process.env.BENCH_QUIET_WAIT_S ?? 120) * 1000;
const QUIET_CPUS = 0.2;
const PHASES = new Set((process.env.BENCH_PHASES ?? ALL_PHASES.join(",")).split(",").map((s) => s.trim()));
for (const p of PHASES) if (!(ALL_PHASES as readonly string[]).includes(p)) throw new Error(`BENCH_PHASES: unknown phase ${p} (known: ${ALL_PHASES.join(", ")})`);
const started = Date.now();
const progress = (msg: string) => process.stdout.write(`[bench +${Math.round((Date.now() - started) / 1000)}s] ${msg}\n`);

const cleanups: Array<() => Promise<unknown>> = [];
async function cleanup(): Promise<void> {
  await stopAllChildren();
  await stopAllBenchEngines();
  for (const fn of cleanups.reverse()) await fn().catch(() => undefined);
  cleanups.length = 0;
}

/** The host ids the bench's jitrunner workers run as. */
const BENCH_HOST = /^bench-(pickup|warm|burst)-[0-9a-f]{6}(-[a-c])?$/;

/**
 * Containers this bench created and a failed phase may have left: baseline ones and bench hosts'
 * runners; then the bench hosts' runner volumes that no container uses (a runner's removal that
 * failed or timed out before its volume's, or one removed by other hands, leaves its volume).
 */
async function removeBenchContainers(docker: Docker): Promise<void> {
  const all = await docker.listContainers({ all: true, filters: { label: ["dev.jitrunner.bench-baseline"] } });
  const runners = await docker.listContainers({ all: true, filters: { label: ["dev.jitrunner.managed-by=jitrunner"] } });
  for (const c of runners) if (BENCH_HOST.test(c.Labels["dev.jitrunner.host"] ?? "")) all.push(c);
  await removeContainers(
    docker,
    all.map((c) => c.Id),
  );
  const volumes = await docker.listVolumes({ filters: { dangling: ["true"], label: ["dev.jitrunner.managed-by=jitrunner"] } } as Docker.VolumeListOptions);
  const left = (volumes.Volumes ?? []).filter((v) => BENCH_HOST.test(v.Labels?.["dev.jitrunner.host"] ?? ""));
  await Promise.allSettled(left.map((v) => docker.getVolume(v.Name).remove()));
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

/**
 * Writes the phases of `run` to `out`: the whole file when every phase is there, else its parts of
 * the existing file. False when there is no file to update.
 */
function writeReport(out: string, run: SavedRun, phases: ReadonlySet<string>): boolean {
  const whole = ALL_PHASES.every((p) => phases.has(p));
  if (!whole && !existsSync(out)) return false;
  const only: Results = Object.fromEntries(Object.entries(run.results).filter(([k]) => phases.has(k)));
  writeFileSync(out, render({ ...run, results: only, existing: whole ? undefined : readFileSync(out, "utf8") }));
  progress(`wrote ${out.startsWith(ROOT) ? out.slice(ROOT.length) : out} (${whole ? "whole" : `the ${[...phases].join(", ")} parts`}) in ${Math.round(run.info.seconds)} s`);
  return true;
}

async function main(): Promise<void> {
  const out = process.env.BENCH_OUT ?? join(ROOT, "BENCHMARKS.md");
  if (process.env.BENCH_RENDER_FROM) {
    // No measuring: the saved run's figures, in the report's current wording.
    const run = loadRun(process.env.BENCH_RENDER_FROM, PHASES);
    const phases = new Set(Object.keys(run.results).filter((k) => PHASES.has(k)));
    if (!writeReport(out, run, phases)) throw new Error(`${out} does not exist: a saved run of some phases only updates an existing file`);
    return;
  }
  // The network rule: the bench drives engines on this machine only, through unix sockets.
  if (process.env.DOCKER_HOST && !process.env.DOCKER_HOST.startsWith("unix://")) {
    throw new Error("DOCKER_HOST is not a unix:// socket: the bench drives only this machine's Docker engines (unset it, or give the local engine's unix:// socket)");
  }
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

  const results: Results = {};
  const phaseSeconds: Record<string, number> = {};
  const failed: string[] = [];
  /** Runs one phase, timing it; the Docker phases each get a fake GitHub of their own. */
  const phase = async <K extends Phase>(name: K, run: (fake: FakeGitHub) => Promise<NonNullable<Results[K]>>): Promise<void> => {
    if (!PHASES.has(name)) return;
    loadavg[name] = loadavg1();
    progress(`${name}: start`);
    const t = Date.now();
    const fake = name === "ingest" ? undefined : await FakeGitHub.start({ webhookSecret: WEBHOOK_SECRET });
    // Closed by a stop in the middle of the phase too (it removes its socket's directory); once.
    let closing: Promise<void> | undefined;
    const closeFake = () => (closing ??= fake?.close() ?? Promise.resolve());
    cleanups.push(closeFake);
    try {
      results[name] = await run(fake!);
    } finally {
      await closeFake();
    }
    phaseSeconds[name] = (Date.now() - t) / 1000;
    await redis.client.flushall();
  };

  await phase("ingest", async () => {
    const ingest = await runIngest(dir, redis, progress);
    const h = ingestHeadline(ingest);
    progress(
      `ingest: done: jitrunner ${Math.round(h.realRps)}/s (p99 ${h.saturation.real.p99.toFixed(1)} ms, ${h.realCpu.toFixed(3)} ms CPU per delivery), ` +
        `bare route ${Math.round(h.bareRps)}/s (p99 ${h.saturation.bare.p99.toFixed(1)} ms); median per-round ratio ${h.perRoundRatio.toFixed(2)}x`,
    );
    return ingest;
  });
  await phase("pickup", async (fake) => {
    const pickup = await runPickup(dir, redis, docker, fake, progress);
    progress(`pickup: done: one at a time p50 ${pickup.isolated.total.p50.toFixed(0)} ms (bare ${pickup.bareIsolated.total.p50.toFixed(0)} ms)`);
    return pickup;
  });
  await phase("warm", async (fake) => {
    const warm = await runWarm(dir, redis, docker, fake, progress);
    const p50 = (kind: string, series: string) => warm.series.find((s) => s.kind === kind && s.series === series)?.start.p50.toFixed(0);
    progress(
      `warm: done: job start one at a time p50 warm ${p50("warm", "one at a time")} ms, cold ${p50("cold", "one at a time")} ms; ` +
        `burst p50 warm ${p50("warm", "burst")} ms, cold ${p50("cold", "burst")} ms; ${warm.warmPrecreated}/${warm.warmJobs} warm jobs on a runner created before their webhook`,
    );
    if (warm.warmPrecreated !== warm.warmJobs) failed.push(`warm: ${warm.warmJobs - warm.warmPrecreated} warm jobs had a launch on their critical path`);
    return warm;
  });
  await phase("burst", async (fake) => {
    const burst = await runBurst(dir, redis, docker, fake, progress);
    progress(
      `burst: done: ${burst.succeeded}/${burst.jobs} served in ${Math.round(burst.makespanMs / 1000)} s; most at once ${burst.maxExisting} ` +
        `(maxRunners ${burst.maxRunners}), per host ${burst.hosts.map((h) => h.maxExisting).join("/")} (capacity ${burst.capacity})`,
    );
    if (burst.succeeded !== burst.jobs) failed.push(`burst: ${burst.jobs - burst.succeeded} jobs not served`);
    if (burst.maxExisting > burst.maxRunners || burst.hosts.some((h) => h.maxExisting > h.capacity)) failed.push("burst: a limit was exceeded");
    return burst;
  });

  const seconds = (Date.now() - started) / 1000;
  const info = {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    seconds,
    commit: git(["rev-parse", "--short", "HEAD"]) || "unknown",
    dirty: git(["status", "--porcelain", "--untracked-files=no"]) !== "",
    busyBefore,
    node: process.version,
    loadavg: { ...loadavg, end: loadavg1() },
    phaseSeconds,
  };
  // Kept with the logs: the figures survive a report that fails to render, and can be rendered again.
  const json = saveRun(join(dir, "results.json"), { info, machine, results });
  if (!writeReport(out, { info, machine, results }, PHASES)) {
    process.stdout.write(`${json}\n`);
    progress(`partial run (${[...PHASES].join(",")}) and no ${out} to update: results printed, nothing written`);
  }
  if (failed.length > 0) {
    for (const f of failed) progress(`check failed: ${f}`);
    process.exitCode = 1;
  }
  if (!process.env.BENCH_KEEP_LOGS && failed.length === 0) rmSync(dir, { recursive: true, force: true });
}

/**
 * Cleans up and exits 1, cleanup or not after CLEANUP_LIMIT_MS: an engine that hangs (the likeliest
 * reason to reach the hard limit) must not keep the run from ending. Child processes are still
 * sent SIGTERM on exit (procs.ts).
 */
function cleanupAndExit(): void {
  const limit = setTimeout(() => {
    progress(`cleanup did not end within ${CLEANUP_LIMIT_MS / 1000} s: exiting; check for leftover bench-* engines and containers`);
    process.exit(1);
  }, CLEANUP_LIMIT_MS);
  void cleanup().finally(() => {
    clearTimeout(limit);
    process.exit(1);
  });
}

const watchdog = setTimeout(() => {
  progress(`hard limit of ${HARD_LIMIT_MS / 60_000} minutes reached: stopping`);
  cleanupAndExit();
}, HARD_LIMIT_MS);
watchdog.unref();

let signalled = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (signalled) process.exit(1);
    signalled = true;
    progress(`${signal}: cleaning up`);
    cleanupAndExit();
  });
}

main().then(
  async () => {
    await cleanup();
    clearTimeout(watchdog);
    process.exit(process.exitCode ?? 0);
  },
  async (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await cleanup();
    process.exit(1);
  },
);
