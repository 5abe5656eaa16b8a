/** What every section of BENCHMARKS.md shares: the run it comes from, tables, number formats. */
import { ms, type Summary } from "../lib/stats.ts";

export interface RunInfo {
  /** when the run ended */
  date: string;
  seconds: number;
  commit: string;
  dirty: boolean;
  /** CPUs kept busy by other processes just before the run (3 s sample) */
  busyBefore: number;
  /** the Node release that ran the bench and every process it measured (absent in older saved runs) */
  node?: string;
  /** 1-minute load average at the start of each phase (and at `start` and `end`) */
  loadavg: Record<string, number>;
  /** how long each phase took, s */
  phaseSeconds: Record<string, number>;
}

export type Row = Array<string | number>;

/** The first line of every phase's section: which run measured it and under what load. */
export function runLine(info: RunInfo, phase: string): string {
  const load = info.loadavg[phase];
  return (
    `*Measured on ${info.date} from commit ${info.commit}${info.dirty ? " plus uncommitted changes in the work tree" : ""}${info.node ? ` on Node ${info.node}` : ""} ` +
    `(this phase: ${Math.round(info.phaseSeconds[phase] ?? Number.NaN)} s; just before the run other processes kept ${info.busyBefore.toFixed(2)} CPUs busy, ` +
    `3 s sample${load === undefined ? "" : `; 1-minute load average ${load.toFixed(2)} at the start of this phase, the run's own load included`}).*`
  );
}

/** Finds a section's run line: its date, commit and Node release (when it names one), for the file's header. */
export const RUN_LINE = /^\*Measured (?:on|by the run on) (\S+?),? (?:in \d+ s )?from commit (\S+?)(?: plus uncommitted changes in the work tree)?(?: on Node (v[\d.]+))?[ ;.(]/m;

export const yes = (ok: boolean) => (ok ? "yes" : "**no**");

export function table(head: string[], rows: Row[]): string {
  return [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

export function p50p99(s: Summary): string {
  return `${ms(s.p50)} / ${ms(s.p99)}`;
}

export function topCommands(byCommand: Map<string, number>, per: number, n = 8): string {
  return [...byCommand]
    .slice(0, n)
    .map(([c, k]) => `${c.toUpperCase()} ${(k / per).toFixed(1)}`)
    .join(", ");
}

/** "POST /x 3, GET /y 1" */
export function calls(byRoute: Map<string, number>): string {
  return [...byRoute].map(([k, v]) => `${k} ${v}`).join(", ");
}

/** REST calls that are not the App's own (token, deliveries): the per-job API cost. */
export function restCalls(byRoute: Map<string, number>): number {
  return [...byRoute].filter(([k]) => !/ \/app(\/|$)/.test(k)).reduce((a, [, v]) => a + v, 0);
}

/**
 * REST calls of the leader's reconcile loops (src/reconcile: runs and their jobs for lost
 * `queued` webhooks, the runner list for stale registrations), not of any one job's launch.
 */
export function reconcileCalls(byRoute: Map<string, number>): number {
  return [...byRoute].filter(([k]) => /^GET \S+\/actions\/(runs(\/\{run_id\}\/jobs)?|runners)$/.test(k)).reduce((a, [, v]) => a + v, 0);
}
