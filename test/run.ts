/**
 * Runs the test files (all of them, or those named) in two lanes side by side, each one file at a
 * time under `node --test`:
 *
 * - the engine lane: the files that drive a Docker engine. They start runner containers that each
 *   boot a dockerd of their own, and two of them at once would starve each other on a 2-CPU
 *   machine;
 * - the other lane: the rest (unit tests, and those with Redis, the fake GitHub and jitrunner's
 *   processes only). They mostly wait on timers, so they cost the engine lane little.
 *
 * A file is in the engine lane when it imports `dockerode` or a module of `src/docker/`, directly
 * or through test helpers (a few short unit tests of those modules go there too). Each output line
 * carries its lane; the exit status is 0 only when both lanes pass.
 *
 * Usage: node --import tsx test/run.ts [--list] [FILE ...]   (--list: which lane runs what, and exit)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SUITES = ["test/unit", "test/integration", "test/e2e"];
const NODE_TEST_ARGS = ["--import", "tsx", "--test", "--test-concurrency=1", "--test-timeout=1200000"];

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
}

interface LaneResult {
  name: string;
  code: number;
  seconds: number;
  counts: Map<string, number>;
}

const children = new Set<ChildProcess>();

function runLane(lane: Lane, width: number): Promise<LaneResult> {
  const started = performance.now();
  const reporter = process.stdout.isTTY ? ["--test-reporter=spec"] : [];
  const child = spawn(process.execPath, [...NODE_TEST_ARGS, ...reporter, ...lane.files], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const tag = `[${lane.name.padEnd(width)}] `;
  const counts = new Map<string, number>();
  for (const [stream, out] of [[child.stdout, process.stdout], [child.stderr, process.stderr]] as const) {
    createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => {
      // The run's totals, as the TAP and spec reporters print them.
      const total = /^(?:# |ℹ )(tests|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(line);
      if (total) counts.set(total[1]!, Number(total[2]));
      out.write(`${tag}${line}\n`);
    });
  }
  return new Promise((done) => {
    const end = (code: number) => {
      children.delete(child);
      done({ name: lane.name, code, seconds: (performance.now() - started) / 1000, counts });
    };
    child.on("error", (err) => {
      console.error(`${tag}could not run node --test: ${err.message}`);
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
  { name: "engine", files: engine },
  { name: "other", files: files.filter((f) => !engine.includes(f)) },
].filter((l) => l.files.length > 0);
const width = Math.max(...lanes.map((l) => l.name.length));
for (const l of lanes) console.log(`[${l.name.padEnd(width)}] ${l.files.length} test files, one at a time${listOnly ? `:\n  ${l.files.join("\n  ")}` : ""}`);
if (listOnly) process.exit(0);

const results = await Promise.all(lanes.map((l) => runLane(l, width)));
for (const r of results) {
  const n = (k: string) => r.counts.get(k) ?? 0;
  console.log(`[${r.name.padEnd(width)}] ${r.code === 0 ? "passed" : "FAILED"}: ${n("pass")} passed, ${n("fail")} failed, ${n("cancelled")} cancelled, ${n("skipped")} skipped in ${r.seconds.toFixed(0)} s`);
}
if (process.exitCode === undefined) process.exitCode = results.every((r) => r.code === 0) ? 0 : 1;
