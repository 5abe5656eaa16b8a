/**
 * Renders BENCHMARKS.md. Each phase (ingest, pickup, warm, burst) owns a section and its rows of
 * the Summary, and its section starts with the run that measured it. A run of every phase writes
 * the whole file; a run of some phases (`BENCH_PHASES=warm,burst`) rewrites only their parts of an
 * existing file and keeps the others as they were measured, the header saying which run each
 * part comes from. Every number in a part was measured in the run that part names.
 */
import type { BurstResult } from "./burst.ts";
import type { IngestResult } from "./ingest.ts";
import type { Machine } from "./lib/machine.ts";
import type { PickupResult } from "./pickup.ts";
import { burstSection, burstSummaryRows } from "./report/burst.ts";
import { RUN_LINE, table, type Row, type RunInfo } from "./report/common.ts";
import { ingestHeadline, ingestSection, ingestSummaryRows } from "./report/ingest.ts";
import { pickupSection, pickupSummaryRows } from "./report/pickup.ts";
import { warmSection, warmSummaryRows } from "./report/warm.ts";
import type { WarmResult } from "./warm.ts";

export { ingestHeadline } from "./report/ingest.ts";
export type { RunInfo } from "./report/common.ts";

export const PHASES = ["ingest", "pickup", "warm", "burst"] as const;
export type Phase = (typeof PHASES)[number];

const TITLES: Record<Phase, string> = { ingest: "Ingest", pickup: "Pickup", warm: "Warm runners", burst: "Burst and memory" };

export interface Results {
  ingest?: IngestResult;
  pickup?: PickupResult;
  warm?: WarmResult;
  burst?: BurstResult;
}

const SUMMARY_HEAD = ["what", "jitrunner", "baseline (same run)", "ratio", "issue's target", "met"];

/** This run's section and Summary rows of each phase it measured. */
function measured(info: RunInfo, m: Machine, r: Results): Map<Phase, { section: string; rows: Row[] }> {
  const out = new Map<Phase, { section: string; rows: Row[] }>();
  if (r.ingest) {
    const h = ingestHeadline(r.ingest);
    out.set("ingest", { section: ingestSection(r.ingest, h, info), rows: ingestSummaryRows(h) });
  }
  if (r.pickup) out.set("pickup", { section: pickupSection(r.pickup, info, m.cpus), rows: pickupSummaryRows(r.pickup) });
  if (r.warm) out.set("warm", { section: warmSection(r.warm, info), rows: warmSummaryRows(r.warm) });
  if (r.burst) out.set("burst", { section: burstSection(r.burst, info, m.cpus), rows: burstSummaryRows(r.burst) });
  return out;
}

function machineSection(m: Machine): string {
  return `## Machine

${table(
  ["", ""],
  [
    ["CPUs (nproc)", m.cpus],
    ["CPU model", m.cpuModel],
    ["memory", `${m.memoryGib} GiB`],
    ["OS, kernel", `${m.os}, ${m.kernel}`],
    ["Node", `${m.node} (this run's; each section's first line names the one that measured it)`],
    ["Docker engine", `${m.docker} (storage ${m.dockerStorage}, cgroup ${m.cgroup})`],
    ["Redis", `${m.redis} (private to each run, no persistence)`],
  ],
)}

The load generator, the measured processes, Redis, the fake GitHub, the Docker engines and the
runner containers all share these ${m.cpus} CPUs. Traffic is loopback and unix sockets only. Each
section's first line says which run measured it and what load other processes put on the machine
just before that run.`;
}

function header(provenance: Map<Phase, string>): string {
  return `# Benchmarks

Measured by \`npm run bench\` (bench/run.ts; not part of \`npm test\`). \`BENCH_PHASES\` (a comma
list of ${PHASES.join(", ")}) measures some phases only and rewrites only their parts of this file.
The parts come from these runs:

${PHASES.map((p) => `- ${TITLES[p]}: ${provenance.get(p) ?? "not measured yet"}`).join("\n")}

Every ratio of jitrunner to a baseline is against one measured in the same run on the same machine; the
burst's rows that compare with configured limits (\`maxRunners\`, capacity) or a lower bound say so.`;
}

/** Says nothing of any phase's figures, so that a run of some phases leaves it true. */
const CAVEATS = `## What to distrust

- **GitHub is a fake with no latency.** Real \`generate-jitconfig\` and job lookups take tens to
  hundreds of ms each, and GitHub's hand-over of a queued job to an idle runner takes its own time
  (the fake runner polls every 250 ms; the real one holds a long poll open). The JIT config write
  pace is the GitHub client's (src/github/octokit-client.ts) and applies against github.com too.
- **One small shared machine.** Load generator, servers, workers, Redis, three Docker engines and
  every runner container share the same CPUs; a runner container boots its own dockerd. A fleet of
  real hosts has a machine per engine, so runner start and lifetime there do not stretch with the
  number of runners on other hosts as they do here.
- **Other work on the machine.** The development machines are shared: the ingest table shows, run by
  run, how many CPUs other processes kept busy; the Docker phases cannot separate other work from
  the engines' and containers' own, and say what the machine was doing just before they started.
- **Keep-alive connections.** autocannon reuses connections; GitHub's deliveries may not, so a real
  server also pays TCP (and TLS) setup per delivery, which the bare route would pay too.
- **Redis commands** from INFO commandstats count each command inside a Lua script (most of
  BullMQ's work) separately; round trips are fewer.
`;

/** The file's parts: what comes before the first "## " heading, then each "## " section. */
function sections(markdown: string): string[] {
  return markdown.split(/^(?=## )/m);
}

/** Which phase a Summary row belongs to, by its first cell (older files' rows included). */
function rowPhase(line: string): Phase | undefined {
  const cell = line.replace(/^\|\s*/, "").toLowerCase();
  if (cell.startsWith("ingest")) return "ingest";
  if (cell.startsWith("warm") || cell.startsWith("pickup with warm")) return "warm";
  if (cell.startsWith("pickup")) return "pickup";
  if (/^(burst|scheduler|redis commands|github rest|rss after burst)/.test(cell)) return "burst";
  return undefined;
}

/**
 * A section kept from a file written before sections named their run: its run, from the old
 * header ("Written by ... on D, in N s, from commit C" or "Pickup, burst and memory: the run on ...").
 */
function legacyRunLine(head: string, phase: Phase): string {
  const flat = head.replace(/\s+/g, " ");
  const run =
    (phase === "ingest" ? /Ingest: `BENCH_PHASES=ingest npm run bench` (on \S+?),? in (\d+) s,? (from commit \S+?(?: plus uncommitted changes in the work tree)?)\./.exec(flat) : null) ??
    /Pickup, burst and memory: the run (on \S+?),? in (\d+) s,? (from commit \S+?(?: plus uncommitted changes in the work tree)?);/.exec(flat) ??
    /Written by `npm run bench` \(bench\/run\.ts; not part of `npm test`\) (on \S+?),? in (\d+) s,? (from commit \S+?(?: plus uncommitted changes in the work tree)?)\./.exec(flat);
  if (!run) return "*Measured by an earlier run of unknown date.*";
  const paced = /paced GitHub writes at one per (\d+) ms; the client now paces them at one per (\d+) ms/.exec(flat);
  const note = paced && phase !== "ingest" ? ` That run paced GitHub writes at one per ${paced[1]} ms; the client now paces them at one per ${paced[2]} ms, so its burst figures are not current.` : "";
  return `*Measured by the run ${run[1]} in ${run[2]} s ${run[3]}; not rerun since.${note}*`;
}

/** "D, commit C" of a section's run line, for the header. */
function provenanceOf(section: string): string | undefined {
  const m = RUN_LINE.exec(section);
  return m ? `${m[1]}, commit ${m[2]}${m[3] ? `, Node ${m[3]}` : ""}` : undefined;
}

/**
 * BENCHMARKS.md with this run's phases: the whole file when `existing` is undefined (every phase
 * must then have been measured), else `existing` with this run's parts replaced and the rest kept.
 */
export function render(o: { info: RunInfo; machine: Machine; results: Results; existing?: string }): string {
  const fresh = measured(o.info, o.machine, o.results);
  const kept = new Map<Phase, { section: string; rows: string[] }>();
  if (o.existing !== undefined) {
    const parts = sections(o.existing);
    const head = parts[0] ?? "";
    const summary = parts.find((p) => p.startsWith("## Summary")) ?? "";
    for (const phase of PHASES) {
      if (fresh.has(phase)) continue;
      let section = parts.find((p) => p.startsWith(`## ${TITLES[phase]}\n`))?.trimEnd();
      if (!section) continue;
      if (!RUN_LINE.test(section)) section = section.replace(/^(## [^\n]+\n\n)/, `$1${legacyRunLine(head, phase)}\n\n`);
      const rows = summary.split("\n").filter((l) => l.startsWith("| ") && !l.startsWith("| what |") && rowPhase(l) === phase);
      kept.set(phase, { section, rows });
    }
  } else if (fresh.size !== PHASES.length) {
    throw new Error(`a whole BENCHMARKS.md needs every phase (${PHASES.join(", ")}); this run measured ${[...fresh.keys()].join(", ")}`);
  }
  const provenance = new Map<Phase, string>();
  for (const phase of PHASES) {
    const text = fresh.get(phase)?.section ?? kept.get(phase)?.section;
    const p = text && provenanceOf(text);
    if (p) provenance.set(phase, p);
  }
  const summaryRows = PHASES.flatMap((phase) => {
    const f = fresh.get(phase);
    if (f) return table(SUMMARY_HEAD, f.rows).split("\n").slice(2);
    return kept.get(phase)?.rows ?? [];
  });
  const body = PHASES.flatMap((phase) => fresh.get(phase)?.section ?? kept.get(phase)?.section ?? []);
  return `${header(provenance)}

${machineSection(o.machine)}

## Summary

${table(SUMMARY_HEAD, []).trimEnd()}
${summaryRows.join("\n")}

${body.join("\n\n")}

${CAVEATS}`;
}
