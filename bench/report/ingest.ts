/** The Ingest section of BENCHMARKS.md and its Summary rows. */
import type { IngestResult, LoadRun } from "../ingest.ts";
import { int, median, mib, ms, ratio, type Summary } from "../lib/stats.ts";
import { p50p99, runLine, table, topCommands, yes, type Row, type RunInfo } from "./common.ts";

/**
 * A round counts in the headline only if, during both targets' "as fast as possible" runs, other
 * processes kept at most this many CPUs busy: on a shared machine, a round where other work took a
 * core from one target and not the other says nothing about the two.
 */
const QUIET_OTHER_CORES = 0.2;

export interface IngestHeadline {
  /** Rounds the medians are over (the quiet ones, or all if none was), of how many. */
  roundsUsed: number;
  rounds: number;
  bareRps: number;
  realRps: number;
  perRoundRatio: number;
  serial: { bare: Summary; real: Summary };
  saturation: { bare: Summary; real: Summary };
  realCpu: number;
  bareCpu: number;
  redisCpu: number;
  genCpu: number;
  bareGenCpu: number;
  commands: number;
  redisReads: number;
}

export function ingestHeadline(r: IngestResult): IngestHeadline {
  const sat = (t: "bare" | "real") => r.runs.filter((x) => x.mode === "saturation" && x.target === t);
  const serial = (t: "bare" | "real") => r.runs.filter((x) => x.mode === "serial" && x.target === t);
  const med = (runs: LoadRun[], f: (x: LoadRun) => number) => median(runs.map(f));
  const medSummary = (runs: LoadRun[]): Summary => ({
    n: runs.reduce((a, x) => a + x.latency.n, 0),
    min: med(runs, (x) => x.latency.min),
    p50: med(runs, (x) => x.latency.p50),
    p90: med(runs, (x) => x.latency.p90),
    p99: med(runs, (x) => x.latency.p99),
    max: Math.max(...runs.map((x) => x.latency.max)),
    mean: med(runs, (x) => x.latency.mean),
  });
  // One "as fast as possible" run per target per round, in round order.
  const pairs = sat("bare").map((b, i) => ({ bare: b, real: sat("real")[i]! }));
  const quiet = pairs.filter((p) => p.bare.otherCores <= QUIET_OTHER_CORES && p.real.otherCores <= QUIET_OTHER_CORES);
  const used = quiet.length > 0 ? quiet : pairs;
  const bare = used.map((p) => p.bare);
  const real = used.map((p) => p.real);
  return {
    roundsUsed: used.length,
    rounds: pairs.length,
    bareRps: med(bare, (x) => x.rps),
    realRps: med(real, (x) => x.rps),
    perRoundRatio: median(used.map((p) => p.real.rps / p.bare.rps)),
    serial: { bare: medSummary(serial("bare")), real: medSummary(serial("real")) },
    saturation: { bare: medSummary(bare), real: medSummary(real) },
    realCpu: med(real, (x) => x.cpuMsPerReq),
    bareCpu: med(bare, (x) => x.cpuMsPerReq),
    redisCpu: med(real, (x) => x.redisCpuMsPerReq),
    genCpu: med(real, (x) => x.generatorCpuMsPerReq),
    bareGenCpu: med(bare, (x) => x.generatorCpuMsPerReq),
    commands: med(real, (x) => x.redisCommandsPerReq),
    redisReads: med(real, (x) => x.redisReadsPerReq),
  };
}

/** True when some "as fast as possible" run had other work on the machine. */
function pairsNoisy(r: IngestResult): boolean {
  return r.runs.some((x) => x.mode === "saturation" && x.otherCores > QUIET_OTHER_CORES);
}

/** CPU cores a process kept busy: its CPU ms per request times requests per second. */
function cores(cpuMsPerReq: number, rps: number): string {
  return ((cpuMsPerReq * rps) / 1000).toFixed(2);
}

export function ingestSection(r: IngestResult, h: IngestHeadline, info: RunInfo): string {
  const c = r.config;
  const rows = r.runs.map((x, i) => [
    Math.floor(i / 4) + 1,
    x.target === "bare" ? "bare route" : "jitrunner",
    x.mode === "saturation" ? `as fast as possible, ${x.connections} conns` : "one at a time, 1 conn",
    `${int(x.ok)}${x.other + x.errors ? ` (+${x.other} non-2xx, ${x.errors} errors)` : ""}${x.stoppedByTimeout ? " (stopped at time limit)" : ""}`,
    int(x.rps),
    ms(x.latency.p50),
    ms(x.latency.p99),
    ms(x.latency.max),
    x.cpuMsPerReq.toFixed(3),
    x.redisCpuMsPerReq.toFixed(3),
    x.target === "real" ? x.redisReadsPerReq.toFixed(2) : "",
    x.generatorCpuMsPerReq.toFixed(3),
    x.otherCores.toFixed(2),
    x.stealPct.toFixed(1),
  ]);
  const last = r.runs.find((x) => x.target === "real" && x.mode === "saturation");
  const reused = r.runs.reduce((a, x) => a + x.reused, 0);
  const budget = 2000 / h.bareRps;
  // At half the bare rate, both CPUs give 4000 / bareRps ms per delivery to the server, Redis and the generator together.
  const machineBudget = 4000 / h.bareRps - h.redisCpu - h.genCpu;
  return `## Ingest

${runLine(info, "ingest")}

Signed \`workflow_job\` \`queued\` deliveries (GitHub's own example payload from
@octokit/webhooks-examples, ${int(r.bodyBytes)} bytes, HMAC-SHA256 signed with the webhook secret)
POSTed over loopback to:

- **jitrunner**: the real \`jitrunner server\` process (the CLI, so the real \`start()\` of
  src/main.ts: Fastify, signature check, parsing, policy, the delivery and job-attempt claims,
  BullMQ \`DemandQueues\`, the activity log and the active-repository note) on a private Redis,
  logging at its default level (\`info\`) to a file;
- **bare route**: a separate Fastify process with one route that only reads the body as a
  buffer and answers 202 (bench/bare-route.ts).

**Like for like.** Both targets get the same load generator (autocannon, in the bench process,
keep-alive connections, one request in flight per connection), the same number of connections
(${c.saturationConnections} as fast as possible, 1 one at a time), the same number of requests, and the very same
request bytes: each round's bodies and headers are prepared once and sent to both, so body sizes
and header sets are identical. The order alternates between rounds, so neither target always runs
first. Every delivery has a job id and a delivery id never sent before, so every one is new demand
for jitrunner. The bodies are made once, before the warm-up, and given new ids and signatures in
place for each round: the generator makes no garbage between rounds that it would then collect
during the first target's load (when each round made its own bodies, the bare route ran 20-40%
slower whenever it came first in a round).
${int(r.acceptedByReal)} deliveries were answered 2xx by jitrunner; BullMQ then held
${int(r.queuedInBullmq)} demand items and \`jitrunner_webhook_deliveries_total{outcome="queued"}\`
read ${int(r.metricQueued)}${r.acceptedByReal === r.queuedInBullmq && r.queuedInBullmq === r.metricQueued ? " (all three agree: every accepted delivery is in BullMQ, no duplicates)" : " (**they differ**)"}.
Bodies reused because the prepared pool ran out: ${reused}. A ${int(c.warmupAmount)}-delivery warm-up per target
came first and is not in the table.

${table(["round", "target", "load", "2xx", "per s", "p50", "p99", "max", "target CPU ms/req", "Redis CPU ms/req", "Redis reads/req", "generator CPU ms/req", "other CPUs busy", "steal %"], rows)}

"Other CPUs busy" is the CPU time all processes used (/proc/stat: user, nice, system) less that of
the target, Redis and the load generator, per second of the run: anything above a few hundredths
means other work ran on the machine at the same time, and that run's throughput is low (the
development machines are shared). "Redis reads/req" is Redis's \`total_reads_processed\` per
delivery: how many separate writes jitrunner's connections made to it.

Medians over ${h.roundsUsed === h.rounds ? `${c.rounds} rounds` : `the ${h.roundsUsed} of ${h.rounds} rounds in which other processes kept at most ${QUIET_OTHER_CORES} CPUs busy during both targets' runs`}${h.roundsUsed === h.rounds && pairsNoisy(r) ? ` (all of them, though in some other work kept more than ${QUIET_OTHER_CORES} CPUs busy)` : ""}: **${int(h.realRps)}/s** against **${int(h.bareRps)}/s** for the bare
route; the median of the per-round ratios is **${h.perRoundRatio.toFixed(2)}x**. Latency p50 / p99 under
that load (medians of the rounds' percentiles): ${p50p99(h.saturation.real)} against ${p50p99(h.saturation.bare)}; with ${c.saturationConnections} connections
always busy, the mean latency is ${c.saturationConnections} over the rate (Little's law), so this pair restates the throughput more than it
compares latency. The like-for-like latency is one delivery at a time (one connection, nothing queued
anywhere): ${p50p99(h.serial.real)} against ${p50p99(h.serial.bare)}. Runs are
timed from the first request to the last response (autocannon's own duration is rounded up to whole
seconds).

**Is the load generator the bottleneck?** For the bare route, in part: at ${int(h.bareRps)}/s it
spent ${h.bareGenCpu.toFixed(3)} ms of CPU per request, ${cores(h.bareGenCpu, h.bareRps)} cores (its JavaScript runs on one thread; the figure also counts its process's other threads), next to the bare
server's ${cores(h.bareCpu, h.bareRps)}, on a machine of 2 CPUs. The bare figure is a floor of what Fastify alone does
here, so the ratio errs in jitrunner's favour. jitrunner's runs are not held back by the generator
(${cores(h.genCpu, h.realRps)} cores at ${int(h.realRps)}/s) but by its own process: ${cores(h.realCpu, h.realRps)} cores of a single thread.

**Where a delivery's time goes.** The jitrunner process spends ${h.realCpu.toFixed(3)} ms of CPU per
delivery (the bare route ${h.bareCpu.toFixed(3)} ms), Redis ${h.redisCpu.toFixed(3)} ms, the load generator
${h.genCpu.toFixed(3)} ms; all three share the machine's cores. On top of what the bare route does, a
delivery costs the signature (HMAC-SHA256 over the raw bytes), \`JSON.parse\` of the payload, the
policy, two Redis round trips before the answer (the delivery and job-attempt claims in one Lua
script, then BullMQ's add, which runs its own script) and one log line; the activity-log entry and
the active-repository note are written after the answer (bounded, not awaited). Claims, adds and
activity entries of deliveries handled in the same event-loop turn go to Redis together (one
script call for all their claims, one write of BullMQ adds, one script call that pushes the activity entries and trims the list): Redis served ${h.redisReads.toFixed(2)} socket reads per
delivery and ran ${h.commands.toFixed(1)} commands per delivery${last ? ` (${topCommands(last.redisByCommand, last.sent)}; INFO commandstats counts the commands run inside Lua scripts one by one, so this is Redis work, not round trips)` : ""}.

**What 0.5x would take.** Half the bare route's rate is ${int(h.bareRps / 2)}/s; with jitrunner's work on one
thread that allows at most ${budget.toFixed(3)} ms of CPU per delivery in the server process, about
${(budget / h.bareCpu).toFixed(1)}x what the bare route spends (${h.bareCpu.toFixed(3)} ms), and Redis (${h.redisCpu.toFixed(3)} ms per
delivery here) and the generator would need the rest of the two CPUs. jitrunner spends ${h.realCpu.toFixed(3)} ms:
${h.realCpu <= budget ? "within that budget (needed, not enough: Redis and the generator share the same CPUs)." : `${(h.realCpu / budget).toFixed(1)}x that budget, so the 0.5x target is out of reach on this machine for a server that verifies, parses and durably queues each delivery before answering; the rate it reaches is bounded by its CPU per delivery (one core: at most ${int(1000 / h.realCpu)}/s).`}
The machine as a whole sets a second budget: at ${int(h.bareRps / 2)}/s its two CPUs give ${(4000 / h.bareRps).toFixed(3)} ms per delivery
to the server, Redis and the generator together, which leaves the server ${machineBudget.toFixed(3)} ms once Redis and the
generator have had theirs as measured, ${machineBudget < budget ? "tighter than the one-thread budget" : "looser than the one-thread budget"}: ${(machineBudget - h.bareCpu).toFixed(3)} ms more than
the bare route spends, for the signature, the parse, the policy, the Redis calls and the log line
(the signature and \`JSON.parse\` of this payload alone took about 0.007 ms and 0.008 ms in a
separate measurement on this machine).

After all rounds the jitrunner server's RSS was ${mib(r.serverAfter.rssKib)} (peak ${mib(r.serverAfter.hwmKib)}),
the bare route's ${mib(r.bareAfter.rssKib)} (peak ${mib(r.bareAfter.hwmKib)}); it wrote
${(r.logBytes / 1024 / 1024).toFixed(1)} MiB of logs.`;
}

/** The Summary's ingest rows; their first cell starts with "ingest" (the update of one phase relies on it). */
export function ingestSummaryRows(h: IngestHeadline): Row[] {
  return [
    [`ingest, deliveries/s (median of ${h.roundsUsed === h.rounds ? "rounds" : `${h.roundsUsed} quiet rounds of ${h.rounds}`})`, int(h.realRps), `${int(h.bareRps)} (bare Fastify route)`, `${h.perRoundRatio.toFixed(2)}x`, ">= 0.5x and > 3,000/s", `${yes(h.perRoundRatio >= 0.5)} / ${yes(h.realRps > 3000)}`],
    ["ingest, CPU per delivery (server process)", `${h.realCpu.toFixed(3)} ms`, `${h.bareCpu.toFixed(3)} ms`, ratio(h.realCpu, h.bareCpu), "", `one core: at most ${int(1000 / h.realCpu)}/s`],
    ["ingest latency p50 / p99, as fast as possible", p50p99(h.saturation.real), p50p99(h.saturation.bare), `${ratio(h.saturation.real.p50, h.saturation.bare.p50)} / ${ratio(h.saturation.real.p99, h.saturation.bare.p99)}`, "", ""],
    ["ingest latency p50 / p99, one delivery at a time", p50p99(h.serial.real), p50p99(h.serial.bare), `${ratio(h.serial.real.p50, h.serial.bare.p50)} / ${ratio(h.serial.real.p99, h.serial.bare.p99)}`, "", ""],
  ];
}
