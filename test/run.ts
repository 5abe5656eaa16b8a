/**
 * Runs the test files (all of them, or those named) in two lanes side by side, each file under a
 * `node --test` of its own:
 *
 * - the engine lane: the files that drive a Docker engine, two at a time by default
 *   (JITRUNNER_TEST_ENGINE_SLOTS). They start runner containers that each boot a dockerd of their
 *   own, and mostly wait on them, on timers and on the jobs' ends: two files at once take about 40%
 *   less time than one at a time on a 2-CPU machine (measured with the whole suite: 1,028 s
 *   against 1,613-1,806 s), where more would starve each other;
 * - the other lane: the rest (unit tests, and those with Redis, the fake GitHub and jitrunner's
 *   processes only), one at a time. They mostly wait on timers, so they cost the engine lane little.
 *
 * A lane's slots take its files from one list, the longest file (a rough measure of its run time)
 * first, each slot the next one as soon as its last has ended. A file is in the engine lane when it
 * imports `dockerode` or a module of `src/docker/`, directly or through test helpers (a few short
 * unit tests of those modules go there too). Each output line carries its lane and slot; a failed
 * file's failures are printed again at the end, above the totals; the exit status is 0 only when
 * every file passes.
 *
 * Usage: node --import tsx test/run.ts [--list] [FILE ...]   (--list: which lane runs what, and exit)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SUITES = ["test/unit", "test/integration", "test/e2e"];
const NODE_TEST_ARGS = ["--import", "tsx", "--test", "--test-timeout=1200000"];
/** Engine files run at once: JITRUNNER_TEST_ENGINE_SLOTS, 2 unless set. */
const ENGINE_SLOTS = slotsFrom(process.env.JITRUNNER_TEST_ENGINE_SLOTS, 2);

function slotsFrom(value: string | undefined, fallback: number): number {
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`JITRUNNER_TEST_ENGINE_SLOTS must be a whole number of at least 1 (got ${JSON.stringify(value)})`);
  return n;
}

function allTestFiles(): string[] {
  return SUITES.flatMap((dir) =>
    readdirSync(join(ROOT, dir))
      .filter((f) => f.endsWith(".test.ts"))
      .sort()
      .map((f) => join(dir, f)),
  );
}

const IMPORT = /^\s*(?:import|export)\b[^"';]*?from\s+["']([^"']+)["']/gm;

/** Whether `file` imports dockerode or `src/docker/`, directly or through modules under test/. */
function drivesEngine(file: string, seen = new Map<string, boolean>()): boolean {
  const known = seen.get(file);
  if (known !== undefined) return known;
  seen.set(file, false); // an import cycle adds nothing
  const found = [...readFileSync(file, "utf8").matchAll(IMPORT)].some(([, spec]) => {
    if (spec === "dockerode") return true;
    if (!spec!.startsWith(".")) return false;
    const target = resolve(dirname(file), spec!);
    const inRepo = relative(ROOT, target);
    return inRepo.startsWith(join("src", "docker") + "/") || (inRepo.startsWith("test/") && drivesEngine(target, seen));
  });
  seen.set(file, found);
  return found;
}

interface Lane {
  name: string;
  files: string[];
  slots: number;
}

interface LaneResult {
  name: string;
  failed: string[];
  /** What each failed file printed of its failures, kept for the end of the run. */
  failures: string[];
  seconds: number;
  counts: Map<string, number>;
}

const children = new Set<ChildProcess>();

/** Runs the lane's files, `lane.slots` at once, the longest first; its counts summed over them. */
async function runLane(lane: Lane, width: number): Promise<LaneResult> {
  const started = performance.now();
  const queue = [...lane.files].sort((a, b) => statSync(resolve(ROOT, b)).size - statSync(resolve(ROOT, a)).size);
  const counts = new Map<string, number>();
  const failed: string[] = [];
  const failures: string[] = [];
  const slot = async (tag: string) => {
    for (let file = queue.shift(); file !== undefined && !stopping; file = queue.shift()) {
      const { code, counts: own, lines } = await runFile(file, tag);
      for (const [k, n] of own) counts.set(k, (counts.get(k) ?? 0) + n);
      if (code !== 0) {
        failed.push(file);
        failures.push(`--- ${file} (exit ${code})`, ...failureLines(lines));
      }
    }
  };
  const slots = Math.min(lane.slots, lane.files.length);
  await Promise.all(Array.from({ length: slots }, (_, i) => slot(`[${(slots > 1 ? `${lane.name} ${i + 1}` : lane.name).padEnd(width)}] `)));
  if (stopping && queue.length > 0) failed.push(...queue);
  return { name: lane.name, failed, failures, seconds: (performance.now() - started) / 1000, counts };
}

/**
 * What a failed file printed of its failures: each `not ok` line with the report under it (its
 * error, its stack), and the file's last lines (a crash before any test ended, a hang's
 * cancellation). Printed again at the end of the run, where a log read from its tail shows them,
 * however long ago the file ran.
 */
function failureLines(lines: string[]): string[] {
  const keep = new Set<number>();
  for (let i = 0; i < lines.length; i++) {
    if (!/^\s*not ok /.test(lines[i]!)) continue;
    const indent = /^\s*/.exec(lines[i]!)![0];
    let end = i + 1;
    while (end < lines.length && lines[end]!.startsWith(`${indent}  `) && keep.size < 400) keep.add(end++);
    keep.add(i);
  }
  for (let i = Math.max(0, lines.length - 30); i < lines.length; i++) keep.add(i);
  return [...keep].sort((a, b) => a - b).map((i) => lines[i]!);
}

/** One file under `node --test`, its lines tagged; its exit code and its totals. */
function runFile(file: string, tag: string): Promise<{ code: number; counts: Map<string, number>; lines: string[] }> {
  const reporter = process.stdout.isTTY ? ["--test-reporter=spec"] : [];
  const child = spawn(process.execPath, [...NODE_TEST_ARGS, ...reporter, file], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const counts = new Map<string, number>();
  const printed: string[] = [];
  const out = (stream: NodeJS.WritableStream) => (line: string) => {
    printed.push(line);
    // The file's totals, as the TAP and spec reporters print them.
    const total = /^(?:# |ℹ )(tests|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(line);
    if (total) counts.set(total[1]!, Number(total[2]));
    stream.write(`${tag}${line}\n`);
  };
  const lines = [
    once(createInterface({ input: child.stdout, crlfDelay: Infinity }).on("line", out(process.stdout)), "close"),
    once(createInterface({ input: child.stderr, crlfDelay: Infinity }).on("line", out(process.stderr)), "close"),
  ];
  process.stdout.write(`${tag}--- ${file}\n`);
  return new Promise((done) => {
    const end = (code: number) => {
      children.delete(child);
      // Its last lines (the totals) read before its counts are.
      void Promise.all(lines).then(() => done({ code, counts, lines: printed }));
    };
    child.on("error", (err) => {
      console.error(`${tag}could not run node --test ${file}: ${err.message}`);
      end(1);
    });
    child.on("close", (code, signal) => end(code ?? (signal ? 1 : 0)));
  });
}

let stopping = false;
/** Passes a signal on to the lanes; a second one kills them outright. */
function stopAll(signal: NodeJS.Signals, status: number): void {
  for (const child of children) child.kill(stopping ? "SIGKILL" : signal);
  stopping = true;
  process.exitCode = status;
}
process.on("SIGINT", () => stopAll("SIGINT", 130));
process.on("SIGTERM", () => stopAll("SIGTERM", 143));

const args = process.argv.slice(2);
const listOnly = args[0] === "--list";
if (listOnly) args.shift();
const files = args.length > 0 ? args : allTestFiles();
const engine = files.filter((f) => drivesEngine(resolve(ROOT, f)));
const lanes: Lane[] = [
  { name: "engine", files: engine, slots: ENGINE_SLOTS },
  { name: "other", files: files.filter((f) => !engine.includes(f)), slots: 1 },
].filter((l) => l.files.length > 0);
const width = Math.max(...lanes.map((l) => (l.slots > 1 ? `${l.name} ${l.slots}` : l.name).length));
for (const l of lanes) {
  const how = l.slots > 1 ? `${l.slots} at a time` : "one at a time";
  console.log(`[${l.name.padEnd(width)}] ${l.files.length} test files, ${how}${listOnly ? `:\n  ${l.files.join("\n  ")}` : ""}`);
}
if (listOnly) process.exit(0);

const results = await Promise.all(lanes.map((l) => runLane(l, width)));
for (const r of results) {
  for (const line of r.failures) console.log(`[${r.name.padEnd(width)}] ${line}`);
}
for (const r of results) {
  const n = (k: string) => r.counts.get(k) ?? 0;
  const verdict = r.failed.length === 0 ? "passed" : `FAILED (${r.failed.join(", ")})`;
  console.log(`[${r.name.padEnd(width)}] ${verdict}: ${n("pass")} passed, ${n("fail")} failed, ${n("cancelled")} cancelled, ${n("skipped")} skipped in ${r.seconds.toFixed(0)} s`);
}
if (process.exitCode === undefined) process.exitCode = results.every((r) => r.failed.length === 0) ? 0 : 1;
