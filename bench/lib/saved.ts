/**
 * One run's figures as a file (results.json in the run's scratch directory), so BENCHMARKS.md can
 * be rendered again from them (`BENCH_RENDER_FROM=FILE`) after its wording changes, without
 * measuring anything again. Maps are kept as `{ "$map": [[key, value], ...] }`.
 */
import { readFileSync, writeFileSync } from "node:fs";
import type { Machine } from "./machine.ts";
import type { Results, RunInfo } from "../report.ts";

export interface SavedRun {
  info: RunInfo;
  machine: Machine;
  results: Results;
}

export function saveRun(file: string, run: SavedRun): string {
  const json = JSON.stringify(run, (_k, v: unknown) => (v instanceof Map ? { $map: [...v] } : v), 2);
  writeFileSync(file, json);
  return json;
}

/** The saved run of `file`; its `phases` must hold what the report needs of them now. */
export function loadRun(file: string, phases: ReadonlySet<string>): SavedRun {
  const run = JSON.parse(readFileSync(file, "utf8"), (_k, v: unknown) =>
    v !== null && typeof v === "object" && Array.isArray((v as { $map?: unknown }).$map) ? new Map((v as { $map: Array<[unknown, unknown]> }).$map) : v,
  ) as SavedRun;
  // Saved before the pickup results said all the report needs.
  const pickup = run.results.pickup as { rounds?: unknown; concurrentStarts?: unknown } | undefined;
  if (phases.has("pickup") && pickup && (!Array.isArray(pickup.rounds) || typeof pickup.concurrentStarts !== "number")) {
    throw new Error(`${file} was saved by an older bench (its pickup results lack the burst rounds or the worker's concurrentStarts): measure pickup again (BENCH_PHASES=pickup), or render the other phases only`);
  }
  return run;
}
