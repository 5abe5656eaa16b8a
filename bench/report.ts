/** Renders BENCHMARKS.md from one run's results. Every number below was measured in that run. */
import type { BurstResult } from "./burst.ts";
import type { IngestResult, LoadRun } from "./ingest.ts";
import type { Machine } from "./lib/machine.ts";
import { int, median, mib, ms, ratio, type Summary } from "./lib/stats.ts";
import type { PickupResult, Series } from "./pickup.ts";

export interface RunInfo {
  date: string;
  seconds: number;
  commit: string;
  dirty: boolean;
  /** CPUs kept busy by other processes just before the run (3 s sample) */
  busyBefore: number;
  /** 1-minute load average at the start of each phase */
  loadavg: Record<string, number>;
}

const yes = (ok: boolean) => (ok ? "yes" : "**no**");

function table(head: string[], rows: Array<Array<string | number>>): string {
  return [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

function p50p99(s: Summary): string {
  return `${ms(s.p50)} / ${ms(s.p99)}`;
}

function topCommands(byCommand: Map<string, number>, per: number, n = 8): string {
  return [...byCommand]
    .slice(0, n)
    .map(([c, k]) => `${c.toUpperCase()} ${(k / per).toFixed(1)}`)
    .join(", ");
}

interface IngestHeadline {
  bareRps: number;
  realRps: number;
  perRoundRatio: number;
  serial: { bare: Summary; real: Summary };
  saturation: { bare: Summary; real: Summary };
  realCpu: number;
  bareCpu: number;
  redisCpu: number;
  genCpu: number;
  commands: number;
}

function ingestHeadline(r: IngestResult): IngestHeadline {
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
  const bare = sat("bare");
  const real = sat("real");
  return {
    bareRps: med(bare, (x) => x.rps),
    realRps: med(real, (x) => x.rps),
    perRoundRatio: median(real.map((x, i) => x.rps / (bare[i]?.rps ?? Number.NaN))),
    serial: { bare: medSummary(serial("bare")), real: medSummary(serial("real")) },
    saturation: { bare: medSummary(bare), real: medSummary(real) },
    realCpu: med(real, (x) => x.cpuMsPerReq),
    bareCpu: med(bare, (x) => x.cpuMsPerReq),
    redisCpu: med(real, (x) => x.redisCpuMsPerReq),
    genCpu: med(real, (x) => x.generatorCpuMsPerReq),
    commands: med(real, (x) => x.redisCommandsPerReq),
  };
}

function ingestSection(r: IngestResult, h: IngestHeadline): string {
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
    x.generatorCpuMsPerReq.toFixed(3),
    x.otherCores.toFixed(2),
    x.stealPct.toFixed(1),
  ]);
  const last = r.runs.find((x) => x.target === "real" && x.mode === "saturation");
  const reused = r.runs.reduce((a, x) => a + x.reused, 0);
  return `## Ingest

Signed \`workflow_job\` \`queued\` deliveries (GitHub's own example payload from
@octokit/webhooks-examples, ${int(r.bodyBytes)} bytes, HMAC-SHA256 signed with the webhook secret)
POSTed over loopback by autocannon with keep-alive connections, to:

- **jitrunner**: the real \`jitrunner server\` process (the CLI, so the real \`start()\` of
  src/main.ts: Fastify, signature check, parsing, policy, delivery-id claim, BullMQ
  \`DemandQueues\`) on a private Redis, logging at its default level (\`info\`) to a file;
- **bare route**: a separate Fastify process with one route that only reads the body as a
  buffer and answers 202 (bench/bare-route.ts).

Each round sends the same fresh bodies to both targets (alternating which goes first): every
delivery has a job id and a delivery id never sent before, so every one is new demand.
${int(r.acceptedByReal)} deliveries were answered 2xx by jitrunner; BullMQ then held
${int(r.queuedInBullmq)} demand items and \`jitrunner_webhook_deliveries_total{outcome="queued"}\`
read ${int(r.metricQueued)}${r.acceptedByReal === r.queuedInBullmq && r.queuedInBullmq === r.metricQueued ? " (all three agree: every accepted delivery is in BullMQ, no duplicates)" : " (**they differ**)"}.
Bodies reused because the prepared pool ran out: ${reused}. A ${int(c.warmupAmount)}-delivery warm-up per target
came first and is not in the table.

${table(["round", "target", "load", "2xx", "per s", "p50", "p99", "max", "target CPU ms/req", "Redis CPU ms/req", "generator CPU ms/req", "other CPUs busy", "steal %"], rows)}

"Other CPUs busy" is the CPU time all processes used (/proc/stat: user, nice, system) less that of
the target, Redis and the load generator, per second of the run: anything above a few hundredths
means other work ran on the machine at the same time, and that run's throughput is low.

Medians over ${c.rounds} rounds: **${int(h.realRps)}/s** against **${int(h.bareRps)}/s** for the bare
route; the median of the per-round ratios is **${h.perRoundRatio.toFixed(2)}x**. Latency p50 / p99 under
that load: ${p50p99(h.saturation.real)} against ${p50p99(h.saturation.bare)}; one delivery at a time (one
connection, nothing queued anywhere): ${p50p99(h.serial.real)} against ${p50p99(h.serial.bare)}. Runs are
timed from the first request to the last response (autocannon's own duration is rounded up to whole
seconds).

Where a delivery's time goes: the jitrunner process spends ${h.realCpu.toFixed(3)} ms of CPU per
delivery (the bare route ${h.bareCpu.toFixed(3)} ms), Redis ${h.redisCpu.toFixed(3)} ms, the load
generator ${h.genCpu.toFixed(3)} ms; all three share the machine's cores. Redis commands per
delivery: ${h.commands.toFixed(1)}${last ? ` (${topCommands(last.redisByCommand, last.sent)}; INFO commandstats counts the commands run inside BullMQ's Lua scripts one by one, so this is Redis work, not round trips)` : ""}.
After all rounds the jitrunner server's RSS was ${mib(r.serverAfter.rssKib)} (peak ${mib(r.serverAfter.hwmKib)}),
the bare route's ${mib(r.bareAfter.rssKib)} (peak ${mib(r.bareAfter.hwmKib)}); it wrote
${(r.logBytes / 1024 / 1024).toFixed(1)} MiB of logs.`;
}

function seriesRows(s: Series): Array<Array<string | number>> {
  const rows: Array<Array<string | number>> = Object.entries(s.parts).map(([k, v]) => [s.name, k, ms(v.p50), ms(v.p99), ms(v.max)]);
  rows.push([s.name, "**total: start -> started**", `**${ms(s.total.p50)}**`, `**${ms(s.total.p99)}**`, ms(s.total.max)]);
  return rows;
}

/** p50 of the steps only jitrunner takes: received -> taken, plus taken -> created beyond a bare create. */
function ownSteps(p: PickupResult): number {
  const part = (s: Series, k: string) => s.parts[k]?.p50 ?? Number.NaN;
  return (
    part(p.isolated, "received -> in BullMQ") +
    part(p.isolated, "in BullMQ -> taken by worker") +
    part(p.isolated, "taken -> container created") -
    part(p.bareIsolated, "start -> container created")
  );
}

function pickupSection(p: PickupResult): string {
  const calls = [...p.githubCalls].map(([k, v]) => `${k} ${v}`).join(", ");
  return `## Pickup

Time from the \`queued\` webhook reaching the server (the \`receivedAt\` the server stamps on the
demand, read back from BullMQ) to Docker's \`start\` event of the runner container labelled with
that demand. The baseline is a bare \`docker create\` + \`start\` (dockerode) of exactly the
container jitrunner creates (src/docker/dockerode-driver.ts \`createOptions\`: image
\`jitrunner-test-runner:latest\`, \`capabilities\` isolation profile, network \`none\`, 1 GiB, the
anonymous \`/var/lib/docker\` volume, the fake GitHub's socket mounted), timed from the create call
to the same \`start\` event. The runners are the e2e test's real Docker-in-Docker fake runners: each
boots its own dockerd, takes a job from the fake GitHub, runs a nested \`docker run\`, exits.
\`jitrunner server\` and \`jitrunner worker\` run as separate processes (worker capacity
${p.capacity}, so no job waits for a slot); the fake GitHub adds no latency.

- **One at a time**: ${p.isolated.total.n} jobs (after one warm-up job), each queued only when the
  previous runner is gone and at least 1.5 s after the previous one (so neither a slot nor
  GitHub's write throttle delays it); the baseline creates and starts ${p.bareIsolated.total.n}
  containers the same way, each removed before the next.
- **Burst**: ${p.burst.total.n} jobs queued at once; the baseline creates and starts
  ${p.bareBurst.total.n} containers at once.

${table(["series", "step", "p50", "p99", "max"], [...seriesRows(p.bareIsolated), ...seriesRows(p.isolated), ...seriesRows(p.bareBurst), ...seriesRows(p.burst)])}

One at a time, jitrunner's pickup p50 is ${ms(p.isolated.total.p50)} against ${ms(p.bareIsolated.total.p50)}
for the bare create+start (**${ratio(p.isolated.total.p50, p.bareIsolated.total.p50)}**, overhead
**${ms(p.isolated.total.p50 - p.bareIsolated.total.p50)}**); p99 ${ms(p.isolated.total.p99)} against
${ms(p.bareIsolated.total.p99)} (${ratio(p.isolated.total.p99, p.bareIsolated.total.p99)}). Summed
step by step, jitrunner's own share is **${ms(ownSteps(p))}** at p50: received -> in BullMQ -> taken
(${ms((p.isolated.parts["received -> in BullMQ"]?.p50 ?? Number.NaN) + (p.isolated.parts["in BullMQ -> taken by worker"]?.p50 ?? Number.NaN))})
plus "taken -> container created" beyond the bare create
(${ms((p.isolated.parts["taken -> container created"]?.p50 ?? Number.NaN) - (p.bareIsolated.parts["start -> container created"]?.p50 ?? Number.NaN))}:
the still-queued check, the JIT config call, the runner record's Redis writes). Docker's own
"created -> started" varies by more than that from one container to the next (compare the two
series), which is why the totals can come out in either order.

**The burst is paced by GitHub's write throttle, not by jitrunner or Docker.** Every JIT config is a
POST, and @octokit/plugin-throttling lets one write per second per installation through
(Bottleneck group \`write\`: \`maxConcurrent: 1, minTime: 1000\`, keyed by installation and shared
by every client in the process). The median gap between consecutive runner creates in the burst
was ${ms(p.burst.createGaps.p50)} (bare burst: ${ms(p.bareBurst.createGaps.p50)}), so the k-th job of the burst waits about k
seconds: p50 ${ms(p.burst.total.p50)}, p99 ${ms(p.burst.total.p99)} against ${ms(p.bareBurst.total.p50)} / ${ms(p.bareBurst.total.p99)}
for ${p.bareBurst.total.n} bare containers started at once (${ratio(p.burst.total.p50, p.bareBurst.total.p50)} at p50). At most
${p.burstMaxRunning} of the burst's runners ran at the same time (each lived ${ms(p.burst.lifetime.p50)} at p50),
so the worker's ${p.capacity} slots were never what held a job back.

Cross-check: the worker's \`jitrunner_pickup_latency_seconds\` histogram counted ${p.metricPickup.count}
launches with a mean of ${ms((p.metricPickup.sum / p.metricPickup.count) * 1000)} (it includes the warm-up job and ends when the
start API call returns, a few ms after Docker's event). GitHub calls in this phase (${p.jobs} jobs): ${calls}.`;
}

function burstSection(b: BurstResult): string {
  const idleAdjusted = (c: { cpuMs: number; idleCpuMsPerS: number }) => (c.cpuMs - (c.idleCpuMsPerS * b.makespanMs) / 1000) / b.jobs;
  const restCalls = [...b.github.byRoute].filter(([k]) => !/ \/app(\/|$)/.test(k)).reduce((a, [, v]) => a + v, 0);
  const idealMs = Math.max(b.runnerMs / b.capacity, (b.jobs - 1) * 1000);
  return `## Burst and memory

${b.jobs} jobs queued at once (webhooks sent concurrently) on one Docker engine, worker capacity
${b.capacity}, \`jitrunner server\` and \`jitrunner worker\` as separate processes, every job run by a
real DinD runner. CPU is user+system time of each process from /proc/PID/stat; Redis commands are
the INFO commandstats delta of the private Redis (only jitrunner uses it); GitHub calls are the
fake's request log. Before the burst, once both processes had settled for ${b.settleS} s, a ${b.idleWindowS} s idle
window measured what they cost doing nothing (heartbeats, BullMQ's blocking waits, timers,
reconcile loops).

${table(
  ["what", "measured", "baseline in this run", "ratio"],
  [
    ["jobs served / succeeded", `${b.served} / ${b.succeeded} of ${b.jobs}`, `${b.jobs} queued`, ratio(b.succeeded, b.jobs)],
    ["each job on its own runner", `${b.distinctRunners} distinct runners`, `${b.jobs}`, ratio(b.distinctRunners, b.jobs)],
    ["most runners running at once", b.maxRunning, `capacity ${b.capacity}`, ratio(b.maxRunning, b.capacity)],
    ["launch failures", b.launchFailures, "0", ""],
    ["left behind: containers / registrations", `${b.containersLeft} / ${b.registrationsLeft}`, "0 / 0", ""],
    [
      "makespan (first webhook -> last runner gone)",
      ms(b.makespanMs),
      `${ms(idealMs)} lower bound: max(runner time / capacity, 1 JIT config/s)`,
      ratio(b.makespanMs, idealMs),
    ],
    ["slot use (runner time / (capacity x makespan))", `${((100 * b.runnerMs) / (b.capacity * b.makespanMs)).toFixed(0)}%`, "100%", ""],
    ["runner lifetime p50 / p99", p50p99(b.lifetime), "", ""],
    ["pickup p50 / p99 (queueing for a slot included)", p50p99(b.pickup), "", ""],
    ["gap between runner creates p50", ms(b.createGaps.p50), "1 s write throttle", ratio(b.createGaps.p50, 1000)],
    [
      "worker CPU per job",
      `${(b.worker.cpuMs / b.jobs).toFixed(1)} ms (${idleAdjusted(b.worker).toFixed(1)} ms without its idle rate)`,
      `idle: ${b.worker.idleCpuMsPerS.toFixed(1)} ms per s`,
      "",
    ],
    [
      "server CPU per job (3 webhooks each)",
      `${(b.server.cpuMs / b.jobs).toFixed(1)} ms (${idleAdjusted(b.server).toFixed(1)} ms without its idle rate)`,
      `idle: ${b.server.idleCpuMsPerS.toFixed(1)} ms per s`,
      "",
    ],
    [
      "Redis commands per job",
      `${(b.redis.commands / b.jobs).toFixed(0)} (${((b.redis.commands - (b.redis.idleCommandsPerS * b.makespanMs) / 1000) / b.jobs).toFixed(0)} without the idle rate)`,
      `idle: ${b.redis.idleCommandsPerS.toFixed(1)} per s`,
      "",
    ],
    ["Redis CPU per job", `${(b.redis.cpuMs / b.jobs).toFixed(1)} ms`, `idle: ${b.redis.idleCpuMsPerS.toFixed(1)} ms per s`, ""],
    ["GitHub REST calls per job", `${(restCalls / b.jobs).toFixed(2)} (${(b.github.calls / b.jobs).toFixed(2)} with App/token calls)`, "DESIGN.md: at most a few", ""],
    ["server RSS: started and idle -> after (peak)", `${mib(b.server.idle.rssKib)} -> ${mib(b.server.after.rssKib)} (${mib(b.server.after.hwmKib)})`, "idle", ratio(b.server.after.rssKib, b.server.idle.rssKib)],
    ["worker RSS: started and idle -> after (peak)", `${mib(b.worker.idle.rssKib)} -> ${mib(b.worker.after.rssKib)} (${mib(b.worker.after.hwmKib)})`, "idle", ratio(b.worker.after.rssKib, b.worker.idle.rssKib)],
  ],
)}

GitHub calls: ${[...b.github.byRoute].map(([k, v]) => `${k} ${v}`).join(", ")}; ${b.webhooks} webhooks delivered.
Redis commands per job by command: ${topCommands(b.redis.byCommand, b.jobs, 12)}.`;
}

export function render(o: {
  info: RunInfo;
  machine: Machine;
  ingest: IngestResult;
  pickup: PickupResult;
  burst: BurstResult;
}): string {
  const { info, machine: m, ingest, pickup, burst } = o;
  const h = ingestHeadline(ingest);
  const overhead = pickup.isolated.total.p50 - pickup.bareIsolated.total.p50;
  const own = ownSteps(pickup);
  const summary = table(
    ["what", "jitrunner", "baseline (same run)", "ratio", "issue's target", "met"],
    [
      ["ingest, deliveries/s (median of rounds)", int(h.realRps), `${int(h.bareRps)} (bare Fastify route)`, `${h.perRoundRatio.toFixed(2)}x`, ">= 0.5x and > 3,000/s", `${yes(h.perRoundRatio >= 0.5)} / ${yes(h.realRps > 3000)}`],
      ["ingest, CPU per delivery (server process)", `${h.realCpu.toFixed(3)} ms`, `${h.bareCpu.toFixed(3)} ms`, ratio(h.realCpu, h.bareCpu), "", `one core: at most ${int(1000 / h.realCpu)}/s`],
      ["ingest latency p50 / p99, one delivery at a time", p50p99(h.serial.real), p50p99(h.serial.bare), `${ratio(h.serial.real.p50, h.serial.bare.p50)} / ${ratio(h.serial.real.p99, h.serial.bare.p99)}`, "", ""],
      ["pickup one at a time, p50 / p99", p50p99(pickup.isolated.total), `${p50p99(pickup.bareIsolated.total)} (bare create+start)`, `${ratio(pickup.isolated.total.p50, pickup.bareIsolated.total.p50)} / ${ratio(pickup.isolated.total.p99, pickup.bareIsolated.total.p99)}`, "p50 overhead < 50 ms", `${yes(overhead < 50)} (${ms(overhead)}; jitrunner's own steps ${ms(own)})`],
      [`pickup, burst of ${pickup.burst.total.n}, p50 / p99`, p50p99(pickup.burst.total), `${p50p99(pickup.bareBurst.total)} (${pickup.bareBurst.total.n} bare at once)`, `${ratio(pickup.burst.total.p50, pickup.bareBurst.total.p50)} / ${ratio(pickup.burst.total.p99, pickup.bareBurst.total.p99)}`, "p50 overhead < 50 ms", `${yes(pickup.burst.total.p50 - pickup.bareBurst.total.p50 < 50)}: GitHub write throttle, 1 JIT config/s`],
      ["pickup with warm runners", "not built", "", "", "no launch on the critical path", "**not measured**"],
      [`burst: ${burst.jobs} jobs, capacity ${burst.capacity}, 1 engine`, `${burst.succeeded} served, max ${burst.maxRunning} running`, `${burst.jobs} jobs, capacity ${burst.capacity}`, ratio(burst.succeeded, burst.jobs), "1,000 jobs, 3 engines, no limit exceeded", `partly: ${yes(burst.succeeded === burst.jobs && burst.maxRunning <= burst.capacity)} at this size; 3 engines not done`],
      ["scheduler (worker) CPU per job", `${(burst.worker.cpuMs / burst.jobs).toFixed(1)} ms`, `idle ${burst.worker.idleCpuMsPerS.toFixed(1)} ms/s`, "", "", ""],
      ["Redis commands per job", (burst.redis.commands / burst.jobs).toFixed(0), `idle ${burst.redis.idleCommandsPerS.toFixed(1)}/s`, "", "", ""],
      ["GitHub REST calls per job", ([...burst.github.byRoute].filter(([k]) => !/ \/app(\/|$)/.test(k)).reduce((a, [, v]) => a + v, 0) / burst.jobs).toFixed(2), "", "", "a few", ""],
      ["RSS after burst: server / worker", `${mib(burst.server.after.rssKib)} / ${mib(burst.worker.after.rssKib)}`, `idle ${mib(burst.server.idle.rssKib)} / ${mib(burst.worker.idle.rssKib)}`, `${ratio(burst.server.after.rssKib, burst.server.idle.rssKib)} / ${ratio(burst.worker.after.rssKib, burst.worker.idle.rssKib)}`, "", ""],
    ],
  );
  return `# Benchmarks

Written by \`npm run bench\` (bench/run.ts; not part of \`npm test\`) on ${info.date}, in ${Math.round(info.seconds)} s,
from commit ${info.commit}${info.dirty ? " plus uncommitted changes in the work tree" : ""}. Every ratio is against a baseline
measured in the same run on the same machine. Rerun it to replace this file.

## Machine

${table(
  ["", ""],
  [
    ["CPUs (nproc)", m.cpus],
    ["CPU model", m.cpuModel],
    ["memory", `${m.memoryGib} GiB`],
    ["OS, kernel", `${m.os}, ${m.kernel}`],
    ["Node", m.node],
    ["Docker engine", `${m.docker} (storage ${m.dockerStorage}, cgroup ${m.cgroup})`],
    ["Redis", `${m.redis} (private to the run, no persistence)`],
  ],
)}

The load generator, the measured process, Redis, the fake GitHub and the runner containers all
share these ${m.cpus} CPUs. Traffic is loopback and unix sockets only. Just before the run, other
processes kept ${info.busyBefore.toFixed(2)} CPUs busy (3 s sample); the 1-minute load average was
${Object.entries(info.loadavg).map(([k, v]) => `${v.toFixed(2)} at ${k === "end" ? "the end" : k === "start" ? "the start" : `the start of ${k}`}`).join(", ")}
(the run's own load included).

## Summary

${summary}

${ingestSection(ingest, h)}

${pickupSection(pickup)}

${burstSection(burst)}

## What was not done, and what to distrust

- **1,000 jobs across 3 engines was not run.** Multi-engine operation is not built into the bench
  (several engines on one machine are possible, see shared/TESTING.md, but were not set up), and
  with one App installation GitHub's write throttle alone allows one JIT config per second per
  worker process: 1,000 jobs need at least ~17 minutes of JIT config calls from one worker, more
  than this bench's 10-minute budget. The burst above is ${burst.jobs} jobs on one engine.
- **Warm runners** (the issue's "job start without any launch on the critical path") do not exist
  in jitrunner yet; nothing was measured for them.
- **GitHub is a fake with no latency.** Real \`generate-jitconfig\` and job lookups take tens to
  hundreds of ms each; the one-at-a-time pickup overhead above is jitrunner's own cost, not what a
  user sees against github.com. The 1 write/s throttle is octokit's, and applies there too.
- **Small samples, shared CPUs.** ${pickup.isolated.total.n} one-at-a-time pickups make p99 the
  maximum; ingest rounds vary by tens of percent between runs on this virtual machine (see the
  per-round table). Load generator, server and Redis compete for ${m.cpus} CPUs, which caps both
  targets; a bigger machine or a separate load generator would give both higher numbers.
- **Other work on the machine.** The development machines are shared: in the ingest runs, other
  processes kept up to ${Math.max(...ingest.runs.map((x) => x.otherCores)).toFixed(2)} CPUs busy (see "other CPUs busy"); the pickup
  and burst phases cannot separate other work from the engine's and containers' own.
- **Keep-alive connections.** autocannon reuses connections; GitHub's deliveries may not, so a real
  server also pays TCP (and TLS) setup per delivery, which the bare route would pay too.
- **Redis commands** from INFO commandstats count each command inside a Lua script (most of
  BullMQ's work) separately; round trips are fewer.
- **CPU per job** includes the timers that run whatever the load (heartbeat, reconcile loops,
  BullMQ's blocking fetch); the idle rate is given so they can be told apart.
`;
}
