/** The Burst and memory section of BENCHMARKS.md and its Summary rows. */
import { DEFAULT_WRITES_PER_MINUTE as WRITES } from "../../src/github/write-window.ts";
import type { BurstResult, ProcCost } from "../burst.ts";
import { int, mib, ms, ratio } from "../lib/stats.ts";
import { calls, p50p99, reconcileCalls, restCalls, runLine, table, topCommands, yes, type Row, type RunInfo } from "./common.ts";

const ISSUE_JOBS = 1000;

/**
 * Lower bounds of the makespan: the JIT config budget the workers share through Redis (the k-th
 * write of the fleet, from 0, starts no sooner than floor(k / WRITES) minutes in), and runner time
 * over the pool limit.
 */
export function bounds(b: BurstResult): { writesMs: number; placesMs: number } {
  return {
    writesMs: Math.floor(Math.max(0, b.jobs - 1) / WRITES) * 60_000,
    placesMs: b.runnerHeldMs / b.maxRunners,
  };
}

/** REST calls a job's own launch makes: still-queued check, JIT config, deregistration. */
function launchCalls(b: BurstResult): number {
  return restCalls(b.github.byRoute) - reconcileCalls(b.github.byRoute);
}

function cpuPerJob(c: ProcCost, jobs: number, makespanMs: number): string {
  const withoutIdle = (c.cpuMs - (c.idleCpuMsPerS * makespanMs) / 1000) / jobs;
  return `${(c.cpuMs / jobs).toFixed(1)} ms (${withoutIdle.toFixed(1)} ms without its idle rate of ${c.idleCpuMsPerS.toFixed(1)} ms/s)`;
}

function rss(c: ProcCost): string {
  return `${mib(c.idle.rssKib)} -> ${mib(c.after.rssKib)} (peak ${mib(c.after.hwmKib)})`;
}

function limitsHeld(b: BurstResult): boolean {
  return b.maxExisting <= b.maxRunners && b.hosts.every((h) => h.maxExisting <= h.capacity);
}

export function burstSection(b: BurstResult, info: RunInfo, cpus: number): string {
  const { writesMs, placesMs } = bounds(b);
  const bound = Math.max(writesMs, placesMs);
  const perS = (b.served / b.makespanMs) * 1000;
  const hostRows: Row[] = b.hosts.flatMap((h, i) => [
    [`host ${"abc"[i]} (${h.engine === "default" ? "the default engine" : `engine ${h.engine}`}): runners, most running / existing at once`, `${h.runners}: ${h.maxRunning} / ${h.maxExisting}`, `capacity ${h.capacity}`, ratio(h.maxExisting, h.capacity)],
    [`host ${"abc"[i]}: gap between its runner creates p50 / p99`, p50p99(h.createGaps), `a third of the shared JIT budget: ${WRITES} a minute (mean ${ms((60_000 * b.hosts.length) / WRITES)})`, ratio(h.createGaps.p50, (60_000 * b.hosts.length) / WRITES)],
  ]);
  const workerRows: Row[] = b.hosts.map((h, i) => [`worker ${"abc"[i]} CPU per job it served (${h.runners})`, cpuPerJob(h.worker, Math.max(1, h.runners), b.makespanMs), "", ""]);
  const rssRows: Row[] = b.hosts.map((h, i) => [`worker ${"abc"[i]} RSS: idle -> after`, rss(h.worker), "idle", ratio(h.worker.after.rssKib, h.worker.idle.rssKib)]);
  const size =
    b.jobs >= ISSUE_JOBS
      ? `${int(b.jobs)} jobs, the issue's size (the default; \`BENCH_BURST_JOBS\` shrinks it), which took ${(b.makespanMs / 60_000).toFixed(1)} minutes here.`
      : `${int(b.jobs)} jobs, fewer than the issue's ${int(ISSUE_JOBS)} (\`BENCH_BURST_JOBS\` was set for this run); at the throughput measured here the issue's size would take about ${((ISSUE_JOBS / perS) / 60).toFixed(0)} minutes.`;
  return `## Burst and memory

${runLine(info, "burst")}

${size} All queued at once (webhooks sent concurrently) across three Docker engines on this one
machine: the default engine and two more started for the run (test/helpers/engines.ts: own data
root and socket, no bridge), one \`jitrunner worker\` process per engine with capacity ${b.capacity} each
(${3 * b.capacity} slots in all), a pool limit \`maxRunners: ${b.maxRunners}\` below that sum, and one \`jitrunner server\`.
Every job is run by a real DinD runner (its own dockerd, a nested \`docker run\`, then
\`FAKE_JOB_SECONDS=${b.jobSeconds}\`). Concurrency is counted from Docker's own events on all three engines:
"running" from \`start\` to \`die\`, "existing" from \`create\` to \`destroy\` (the stricter one: a slot
and a place under the pool limit are held for at least that long). CPU is user+system time of
each process from /proc/PID/stat; Redis commands are the INFO commandstats delta of the private
Redis (only jitrunner uses it); GitHub calls are the fake's request log. Before the burst, once
all processes had settled for ${b.settleS} s, a ${b.idleWindowS} s idle window measured what they cost doing nothing.
The burst had a time limit of ${int(b.limitS)} s${b.timedOut ? ` and **reached it**: the figures below cover what was done by then` : ", not reached"}.

${table(
  ["what", "measured", "baseline in this run", "ratio"],
  [
    ["jobs served / succeeded", `${int(b.served)} / ${int(b.succeeded)} of ${int(b.jobs)}`, `${int(b.jobs)} queued`, ratio(b.succeeded, b.jobs)],
    ["each job on its own runner", `${int(b.distinctRunners)} distinct runners`, int(b.jobs), ratio(b.distinctRunners, b.jobs)],
    ["most runners at once, all engines: running / existing", `${b.maxRunning} / ${b.maxExisting}`, `maxRunners ${b.maxRunners}`, ratio(b.maxExisting, b.maxRunners)],
    ...hostRows,
    ["launch failures", b.hosts.reduce((a, h) => a + h.launchFailures, 0), "0", ""],
    ["left behind: containers / registrations", `${b.containersLeft} / ${b.registrationsLeft}`, "0 / 0", ""],
    ["makespan (first webhook -> last runner gone)", ms(b.makespanMs), `${ms(bound)} lower bound (below)`, ratio(b.makespanMs, bound)],
    ["throughput", `${perS.toFixed(2)} jobs/s`, "", ""],
    ["runner running (start -> die) p50 / p99", p50p99(b.lifetime), "", ""],
    ["runner existing (create -> destroy) p50 / p99", p50p99(b.held), "", ""],
    ["pickup p50 / p99 (webhook received -> container started; queueing included)", p50p99(b.pickup), "", ""],
    ["machine CPUs busy during the burst (every process)", b.machineCores.toFixed(2), `${cpus} CPUs`, ratio(b.machineCores, cpus)],
    ...workerRows,
    ["server CPU per job (3 webhooks each)", cpuPerJob(b.server, b.jobs, b.makespanMs), "", ""],
    ["Redis commands per job", `${(b.redis.commands / b.jobs).toFixed(0)} (${((b.redis.commands - (b.redis.idleCommandsPerS * b.makespanMs) / 1000) / b.jobs).toFixed(0)} without the idle rate)`, `idle: ${b.redis.idleCommandsPerS.toFixed(1)} per s`, ""],
    ["Redis CPU per job", `${(b.redis.cpuMs / b.jobs).toFixed(1)} ms`, `idle: ${b.redis.idleCpuMsPerS.toFixed(1)} ms per s`, ""],
    ["GitHub REST calls per job: launch path / leader's reconcile loops", `${(launchCalls(b) / b.jobs).toFixed(2)} / ${(reconcileCalls(b.github.byRoute) / b.jobs).toFixed(2)} (${(b.github.calls / b.jobs).toFixed(2)} in all, App/token calls included)`, "docs/operations.md: two per launch", ""],
    ["server RSS: idle -> after", rss(b.server), "idle", ratio(b.server.after.rssKib, b.server.idle.rssKib)],
    ...rssRows,
  ],
)}

**What bounds the makespan.** Two lower bounds, from this run's own figures: the GitHub client
starts at most ${WRITES} JIT config writes in any minute per installation, all workers together (a sliding
window in Redis: \`github.writesPerMinute\`), so ${int(b.jobs)} jobs need at least ${ms(writesMs)} of it; and a runner holds its place under \`maxRunners\` from before its
container is created until after it is destroyed (${ms(b.held.p50)} at p50 here), so ${int(b.jobs)} of them need at
least their summed time over ${b.maxRunners} places: ${ms(placesMs)}. The pool limit was the binding one
${placesMs >= writesMs ? "" : "**not** "}(${ms(placesMs)} against ${ms(writesMs)}); the measured makespan is ${ratio(b.makespanMs, bound)} of the larger.
${placesMs >= writesMs ? `A runner holds its place that long because the runners share the machine's ${cpus} CPUs: the whole machine was ${((100 * b.machineCores) / cpus).toFixed(0)}% busy during the burst (every process: the runners' dockerd boots and nested \`docker run\`s, any other work on the machine, and jitrunner's four processes and Redis, which together used ${(((b.hosts.reduce((a, h) => a + h.worker.cpuMs, 0) + b.server.cpuMs + b.redis.cpuMs) / b.makespanMs) * 100).toFixed(0)}% of one CPU). Here the limit is the CPU the runners need, not jitrunner; on real hosts (one engine per machine) it would be the hosts' capacity and the JIT pace.` : "The JIT config pace was the limit: a larger `github.writesPerMinute` (within GitHub's secondary limits) or more installations would register runners faster."}
Places in use: ${((100 * b.runnerHeldMs) / (b.maxRunners * b.makespanMs)).toFixed(0)}% of \`maxRunners\` x makespan. Each worker created a runner every
${b.hosts.map((h) => ms(h.createGaps.p50)).join(" / ")} at p50${
    b.hosts.every((h) => h.createGaps.p50 > (1.5 * 60_000 * b.hosts.length) / WRITES)
      ? ", well behind its share of the JIT budget's mean pace: it was waiting for a place under \`maxRunners\` (a worker that finds none hands its demand back and looks again a second later)."
      : "."
  }

GitHub calls: ${calls(b.github.byRoute)}; ${int(b.webhooks)} webhooks delivered. A job's own launch
makes ${(launchCalls(b) / b.jobs).toFixed(2)} calls (the still-queued check and the JIT config). The rest are the
elected leader's reconcile loops. The queued-jobs loop (src/reconcile/github-queued.ts) lists the
queued and in-progress runs of each recently active repository, then the jobs of such runs, since
GitHub lists jobs per run only: at most \`reconcile.queuedMaxRunsPerPass\` runs per pass (100),
runs never looked at first, then those looked at longest ago. ${int(b.github.byRoute.get("GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs") ?? 0)} run-jobs calls in
this burst (${int(b.jobs)} jobs in ${int(b.jobs)} runs); at the default interval (\`reconcile.queuedIntervalSeconds\`,
300 s) a backlog of any size costs at most 1,200 of them an hour, a quarter of an installation's
base rate limit of 5,000, and a large backlog is looked through over several passes.
Redis commands per job by command: ${topCommands(b.redis.byCommand, b.jobs, 12)}.
CPU per job includes the timers that run whatever the load (heartbeats, reconcile loops, BullMQ's
blocking fetch, a worker that waits for a place under the pool limit and looks again every second);
the idle rates are given so they can be told apart.`;
}

/** The Summary's burst rows; their first cell starts with "burst". */
export function burstSummaryRows(b: BurstResult): Row[] {
  const workerCpu = b.hosts.map((h) => (h.worker.cpuMs / Math.max(1, h.runners)).toFixed(1)).join(" / ");
  return [
    [
      `burst: ${int(b.jobs)} jobs, 3 engines, capacity ${b.capacity} each, maxRunners ${b.maxRunners}`,
      `${int(b.succeeded)} served; most at once ${b.maxExisting} (per host ${b.hosts.map((h) => h.maxExisting).join(" / ")})`,
      `${int(b.jobs)} jobs; limits ${b.maxRunners} and ${b.capacity} per host`,
      ratio(b.succeeded, b.jobs),
      "1,000 jobs, 3 engines, all served, no limit exceeded",
      `${yes(b.succeeded === b.jobs)} / ${yes(limitsHeld(b))}${b.jobs < ISSUE_JOBS ? ` (at ${int(b.jobs)} jobs)` : ""}`,
    ],
    ["burst: makespan, throughput", `${ms(b.makespanMs)}, ${((b.served / b.makespanMs) * 1000).toFixed(2)} jobs/s`, `${ms(Math.max(bounds(b).writesMs, bounds(b).placesMs))} lower bound`, ratio(b.makespanMs, Math.max(bounds(b).writesMs, bounds(b).placesMs)), "", ""],
    ["burst: scheduler (worker) CPU per job, per worker", `${workerCpu} ms`, `idle ${b.hosts.map((h) => h.worker.idleCpuMsPerS.toFixed(1)).join(" / ")} ms/s`, "", "", ""],
    ["burst: Redis commands per job", (b.redis.commands / b.jobs).toFixed(0), `idle ${b.redis.idleCommandsPerS.toFixed(1)}/s`, "", "", ""],
    [
      "burst: GitHub REST calls per job, launch path + reconcile loops",
      `${(launchCalls(b) / b.jobs).toFixed(2)} + ${(reconcileCalls(b.github.byRoute) / b.jobs).toFixed(2)}`,
      "",
      "",
      "a few, never a poll per job",
      `${yes(launchCalls(b) / b.jobs <= 3)} on the launch path; the queued-jobs reconcile lists at most 100 runs' jobs per pass`,
    ],
    [
      "burst: RSS after, server / workers",
      `${mib(b.server.after.rssKib)} / ${b.hosts.map((h) => mib(h.worker.after.rssKib)).join(" / ")}`,
      `idle ${mib(b.server.idle.rssKib)} / ${b.hosts.map((h) => mib(h.worker.idle.rssKib)).join(" / ")}`,
      `${ratio(b.server.after.rssKib, b.server.idle.rssKib)} / ${b.hosts.map((h) => ratio(h.worker.after.rssKib, h.worker.idle.rssKib)).join(" / ")}`,
      "",
      "",
    ],
  ];
}
