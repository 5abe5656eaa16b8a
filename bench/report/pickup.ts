/** The Pickup section of BENCHMARKS.md and its Summary rows. */
import { DEFAULT_WRITES_PER_MINUTE as WRITES } from "../../src/github/write-window.ts";
import { DEFAULT_CONCURRENT_STARTS as STARTS } from "../../src/config/schema.ts";
import { DEFAULT_CONCURRENT_CALLS as CALLS } from "../../src/github/request-gates.ts";
import { TAKE_AHEAD } from "../../src/worker/worker.ts";
import type { BurstCpu, PickupResult, Series } from "../pickup.ts";
import { ms, ratio } from "../lib/stats.ts";
import { calls, p50p99, runLine, table, yes, type Row, type RunInfo } from "./common.ts";

function seriesRows(s: Series): Row[] {
  const rows: Row[] = Object.entries(s.parts).map(([k, v]) => [s.name, k, ms(v.p50), ms(v.p99), ms(v.max)]);
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

/** What the run's worker had out at once per installation, where the run recorded it. */
function callsLine(concurrentCalls: number | undefined): string {
  if (concurrentCalls === undefined) return "The run did not record its \`github.concurrentCalls\`.";
  return `Its GitHub client had at most ${concurrentCalls} calls out at once (\`github.concurrentCalls\`${concurrentCalls === CALLS ? ", the default" : `; default ${CALLS}`}).`;
}

export function pickupSection(p: PickupResult, info: RunInfo, cpus: number): string {
  const allAtOnce = p.concurrentStarts >= p.burstSize;
  return `## Pickup

${runLine(info, "pickup")}

Time from the \`queued\` webhook reaching the server (the \`receivedAt\` the server stamps on the
demand, read back from BullMQ) to Docker's \`start\` event of the runner container labelled with
that demand. The baseline is a bare \`docker create\` + \`start\` (dockerode) of exactly the
container jitrunner creates (src/docker/dockerode-driver.ts \`createOptions\`: image
\`jitrunner-test-runner:latest\`, \`capabilities\` isolation profile, network \`none\`, 1 GiB, the
anonymous \`/var/lib/docker\` volume, the fake GitHub's socket mounted), timed from the create call
to the same \`start\` event. The runners are the e2e test's real Docker-in-Docker fake runners: each
boots its own dockerd, takes a job from the fake GitHub, runs a nested \`docker run\`, exits. So
does each bare container: it is given a JIT config of its own and a job pinned to it, both made
before its create call (untimed), so that the containers started first load the engine and the
CPUs alike on both sides while the later ones start.
\`jitrunner server\` and \`jitrunner worker\` run as separate processes (worker capacity
${p.capacity}, so no job waits for a slot); the fake GitHub adds no latency.

- **One at a time**: ${p.isolated.total.n} jobs and ${p.bareIsolated.total.n} bare containers (after one
  warm-up of each), taking turns: a bare one, a job, a job, a bare one, and so on, so that neither
  always follows the other and both see the engine in the same state. Each starts only when the
  one before is gone (each has run its job, exited and been removed)
  and at least 1.5 s after it (so neither a slot nor GitHub's write throttle delays a job). The
  worker runs throughout, so its loops load the engine alike for both.
- **Burst**: ${p.burstSize} jobs queued at once; the baseline creates and starts
  ${p.burstSize} containers at once, while the worker idles. ${p.rounds.length} rounds of both, taking
  turns (which goes first alternates), each burst run to its end (every job done, every container
  gone) before the next; the burst series pool the rounds' ${p.burst.total.n} and ${p.bareBurst.total.n} containers.
  A single burst's median moved by seconds from one run to the next on these shared machines,
  either way: per round (p50 / p99), ${p.rounds
    .map((r, i) => `${i + 1}: jitrunner ${ms(r.jitrunner.p50)} / ${ms(r.jitrunner.p99)}, bare ${ms(r.bare.p50)} / ${ms(r.bare.p99)} (${r.bareFirst ? "bare" : "jitrunner"} first)`)
    .join("; ")}.

${table(["series", "step", "p50", "p99", "max"], [...seriesRows(p.bareIsolated), ...seriesRows(p.isolated), ...seriesRows(p.bareBurst), ...seriesRows(p.burst)])}

One at a time, jitrunner's pickup p50 is ${ms(p.isolated.total.p50)} against ${ms(p.bareIsolated.total.p50)}
for the bare create+start (**${ratio(p.isolated.total.p50, p.bareIsolated.total.p50)}**, overhead
**${ms(p.isolated.total.p50 - p.bareIsolated.total.p50)}**); p99 ${ms(p.isolated.total.p99)} against
${ms(p.bareIsolated.total.p99)} (${ratio(p.isolated.total.p99, p.bareIsolated.total.p99)}). Summed
step by step, jitrunner's own share is **${ms(ownSteps(p))}** at p50: received -> in BullMQ -> taken
(${ms((p.isolated.parts["received -> in BullMQ"]?.p50 ?? Number.NaN) + (p.isolated.parts["in BullMQ -> taken by worker"]?.p50 ?? Number.NaN))})
plus "taken -> container created" beyond the bare create
(${ms((p.isolated.parts["taken -> container created"]?.p50 ?? Number.NaN) - (p.bareIsolated.parts["start -> container created"]?.p50 ?? Number.NaN))}:
the JIT config call with the still-queued check alongside it, as the job is fresh
(\`github.overlapStillQueuedCheckSeconds\`), and the runner record's Redis writes; a call
through Octokit and its throttling plugin costs about 1 ms more than a bare fetch of the fake,
and a write one Redis round trip more for the shared write budget, since the plugin's schedulers
take no timer turns (src/github/request-gates.ts; through Bottleneck's they cost 10 ms more). Docker's own
"created -> started" varies by more than that from one container to the next (compare the two
series), which is why the totals can come out in either order.

**In the burst the worker ${allAtOnce ? `asks its engine for all ${p.burstSize} starts at once, as the bare baseline does` : `starts ${p.concurrentStarts} containers at a time on its engine, in order; the bare baseline asks the engine for all ${p.burstSize} at once`}**
(\`worker.concurrentStarts\` ${p.concurrentStarts}${p.concurrentStarts === STARTS ? ", the default" : `; default ${STARTS}`}). ${callsLine(p.concurrentCalls)} Every JIT config is a POST, and the GitHub client
starts at most ${WRITES} writes in any minute per installation (a sliding window,
\`github.writesPerMinute\`; src/github/write-window.ts), so no registration of a burst waits for that budget: they go out
as fast as the calls-at-once limit lets them (each launch also makes its still-queued check alongside), and
the runners' creates reach the engine close together (median gap between consecutive creates
${ms(p.burst.createGaps.p50)}; bare burst: ${ms(p.bareBurst.createGaps.p50)}). ${STARTS_TRADE} jitrunner: p50
${ms(p.burst.total.p50)}, p99 ${ms(p.burst.total.p99)} against ${ms(p.bareBurst.total.p50)} / ${ms(p.bareBurst.total.p99)} for the bare burst
(${ratio(p.burst.total.p50, p.bareBurst.total.p50)} at p50, ${ratio(p.burst.total.p99, p.bareBurst.total.p99)} at p99): ${burstVerdict(
  p.burst.total.p50 < p.bareBurst.total.p50,
  p.burst.total.p99 <= p.bareBurst.total.p99,
)}. By step: "in BullMQ -> taken by worker" took ${ms(p.burst.parts["in BullMQ -> taken by worker"]?.p50 ?? Number.NaN)} at p50
(p99 ${ms(p.burst.parts["in BullMQ -> taken by worker"]?.p99 ?? Number.NaN)}: once it finds demand, the worker takes up to ${TAKE_AHEAD} more that wait together, never
more than its free slots, while it serves the first; src/worker/worker.ts \`TAKE_AHEAD\`; a demand taken ahead counts as taken,
and what it then waits in the worker before its launch counts under the next step), "taken -> container created"
${ms(p.burst.parts["taken -> container created"]?.p50 ?? Number.NaN)} against ${ms(p.bareBurst.parts["start -> container created"]?.p50 ?? Number.NaN)} for the bare creates, and
"created -> started" ${ms(p.burst.parts["created -> started"]?.p50 ?? Number.NaN)} against ${ms(p.bareBurst.parts["created -> started"]?.p50 ?? Number.NaN)}${allAtOnce ? "" : " (it includes the wait for a turn)"}.${retakenLine(p)} At most
${p.burstMaxRunning} of a burst's runners ran at the same time (each lived ${ms(p.burst.lifetime.p50)} at p50),
so the worker's ${p.capacity} slots were never what held a job back.

${meansParagraph(p)}
${cpuParagraph(p, cpus)}

Cross-check: the worker's \`jitrunner_pickup_latency_seconds\` histogram counted ${p.metricPickup.count}
launches with a mean of ${ms((p.metricPickup.sum / p.metricPickup.count) * 1000)} (it includes the warm-up job and ends when the
start API call returns, a few ms after Docker's event). GitHub calls jitrunner made in this phase (${p.jobs} jobs; the bench's own registrations of its bare containers left out): ${calls(p.githubCalls)}.

${p.isolated.total.n} one-at-a-time pickups: with fewer than 100, p99 is the maximum (percentiles here are nearest rank). GitHub is a fake with no
latency: real \`generate-jitconfig\` and job lookups take tens to hundreds of ms each, so the
one-at-a-time overhead above is jitrunner's own cost, not what a user sees against github.com;
there, running the still-queued check alongside the registration saves one whole round trip.`;
}

/** A difference in ms with its sign: "+1078 ms", "-8.91 ms". */
function signed(v: number): string {
  return `${v >= 0 ? "+" : ""}${ms(v)}`;
}

/**
 * The bursts' mean pickup, pooled and per round: a burst's starts come in waves, and where its
 * median falls among them moves by seconds; the mean moves less.
 */
function meansParagraph(p: PickupResult): string {
  const perRound = p.rounds.every((r) => r.bare.mean !== undefined && r.jitrunner.mean !== undefined)
    ? ` Per round, jitrunner against bare: ${p.rounds.map((r, i) => `${i + 1}: ${ms(r.jitrunner.mean!)} / ${ms(r.bare.mean!)} (${ratio(r.jitrunner.mean!, r.bare.mean!)})`).join("; ")}.`
    : "";
  return `**Means.** A burst's containers start in waves (the engine finishes many starts together), and
where the median falls among the waves moves by seconds from one burst to the next. The mean moves
less: pooled, jitrunner's mean pickup was ${ms(p.burst.total.mean)} against ${ms(p.bareBurst.total.mean)} for the bare burst
(**${ratio(p.burst.total.mean, p.bareBurst.total.mean)}**, ${signed(p.burst.total.mean - p.bareBurst.total.mean)}).${perRound}`;
}

/**
 * Where the machine's CPU went while each kind of burst was being started (absent in runs before
 * the bench measured it): the mean over rounds of each window's CPU time.
 */
function cpuParagraph(p: PickupResult, cpus: number): string {
  const mean = (of: (r: PickupResult["rounds"][number]) => BurstCpu | undefined, f: (c: BurstCpu) => number) => {
    const values = p.rounds.flatMap((r) => {
      const c = of(r);
      return c ? [f(c)] : [];
    });
    return values.length === p.rounds.length && values.length > 0 ? values.reduce((a, b) => a + b, 0) / values.length : undefined;
  };
  const kinds = [
    { name: `bare, ${p.burstSize} at once`, of: (r: PickupResult["rounds"][number]) => r.bare.cpu },
    { name: `jitrunner, ${p.burstSize} jobs at once`, of: (r: PickupResult["rounds"][number]) => r.jitrunner.cpu },
  ].map((k) => ({
    name: k.name,
    window: mean(k.of, (c) => c.windowMs),
    machine: mean(k.of, (c) => c.machineMs),
    jitrunner: mean(k.of, (c) => c.jitrunnerMs),
    bench: mean(k.of, (c) => c.benchMs),
  }));
  const [bare, mine] = kinds as [(typeof kinds)[number], (typeof kinds)[number]];
  if ([bare, mine].some((k) => k.window === undefined || k.machine === undefined || k.jitrunner === undefined || k.bench === undefined)) return "";
  const busy = (k: (typeof kinds)[number]) => `${Math.round((k.machine! / (k.window! * cpus)) * 100)}%`;
  const extra = mine.jitrunner! - bare.jitrunner!;
  const rows: Row[] = kinds.map((k) => [k.name, ms(k.window!), `${ms(k.machine!)} (${busy(k)} of ${cpus} CPUs)`, ms(k.jitrunner!), ms(k.bench!), ms(k.machine! - k.jitrunner! - k.bench!)]);
  return `
**Where the CPUs went while a burst started.** From a burst's first webhook (jitrunner) or first
create call (bare) to its last container's start event, the CPU time each part of the machine
used, per burst (mean of the ${p.rounds.length} rounds):

${table(["burst", "window", "whole machine", "jitrunner: server, worker, Redis", "bench: fake GitHub, events", "the rest: engine, runners, kernel"], rows)}

The machine was all but saturated in both windows (${busy(bare)} and ${busy(mine)} busy), so CPU time
any process used there was time the engine's starts and the booting runners did not get.
jitrunner's three processes used ${ms(extra)} more of it in their own burst than while the bare
burst ran (${ms(extra / p.burstSize)} per job: taking the demand, the JIT config and still-queued
calls, the record writes, the Docker calls, the logs, and serving the webhooks). Spread over the
${cpus} CPUs that is about ${ms(extra / cpus)} by which the last start could come later on CPU alone;
the windows differed by ${ms(mine.window! - bare.window!)}.
`;
}

/** The Summary's pickup rows; their first cell starts with "pickup". */
export function pickupSummaryRows(p: PickupResult): Row[] {
  const overhead = p.isolated.total.p50 - p.bareIsolated.total.p50;
  return [
    ["pickup one at a time, p50 / p99", p50p99(p.isolated.total), `${p50p99(p.bareIsolated.total)} (bare create+start)`, `${ratio(p.isolated.total.p50, p.bareIsolated.total.p50)} / ${ratio(p.isolated.total.p99, p.bareIsolated.total.p99)}`, "p50 overhead < 50 ms", `${yes(overhead < 50)} (${ms(overhead)}; jitrunner's own steps ${ms(ownSteps(p))})`],
    [`pickup, burst of ${p.burstSize} (${p.rounds.length} rounds pooled), p50 / p99`, p50p99(p.burst.total), `${p50p99(p.bareBurst.total)} (${p.burstSize} bare at once)`, `${ratio(p.burst.total.p50, p.bareBurst.total.p50)} / ${ratio(p.burst.total.p99, p.bareBurst.total.p99)}`, "p50 overhead < 50 ms", `${yes(p.burst.total.p50 - p.bareBurst.total.p50 < 50)} (${ms(p.burst.total.p50 - p.bareBurst.total.p50)}; at p99 ${p.burst.total.p99 >= p.bareBurst.total.p99 ? "+" : ""}${ms(p.burst.total.p99 - p.bareBurst.total.p99)})`],
    [`pickup, burst of ${p.burstSize}, mean (the median moves with the engine's waves of starts)`, ms(p.burst.total.mean), `${ms(p.bareBurst.total.mean)} (${p.burstSize} bare at once)`, ratio(p.burst.total.mean, p.bareBurst.total.mean), "", signed(p.burst.total.mean - p.bareBurst.total.mean)],
  ];
}

/** Demands taken again after their first runner ended without a job, if any (Series.retaken). */
function retakenLine(p: PickupResult): string {
  const n = (p.burst.retaken ?? 0) + (p.isolated.retaken ?? 0);
  if (n === 0) return "";
  return ` ${n} demand${n === 1 ? " was" : "s were"} taken again (${p.burst.retaken ?? 0} of the bursts', ${p.isolated.retaken ?? 0} of the one-at-a-time ones) after the first runner ended
without a job, and launched again: BullMQ keeps only a demand's last take, so these are left out of the two steps
around the take, and their pickup is their first container's (the worker's log says why each runner ended).`;
}

/** What the burst's order of starts did in this run, against the bare burst's all at once. Pure. */
function burstVerdict(medianSooner: boolean, p99NoLater: boolean): string {
  if (medianSooner && p99NoLater) return "the median job started sooner and the 99th percentile no later";
  if (medianSooner) return "the median job started sooner, the 99th percentile later";
  if (p99NoLater) return "the median job started later and the 99th percentile no later";
  return "the median job and the 99th percentile both started later than in the bare burst";
}

/**
 * Why \`worker.concurrentStarts\` defaults to all of a burst: what holding starts back did on this
 * machine (pooled runs of 3 rounds, BENCH_CONCURRENT_STARTS=12 against 50, at fca4a62..14eb194).
 */
const STARTS_TRADE = `Holding starts back (a few at a time, in order) gets the first runners of a burst going sooner, but on
a 2-CPU machine of this kind (runs of 2026-12-05 and 2026-12-06) it cost more than it gained: the later starts then wait while the runners started first boot
their own dockerd on the same CPUs, and each is slower. In pooled runs of 3 rounds each on those days (earlier
runs, not this one), 12 at a time gave p50 1.16x, 1.23x and 1.29x the bare burst and p99 1.39x, 1.84x and 2.32x;
50 at once gave p50 1.00x, 1.06x and 1.18x and p99 0.80x, 1.37x and 1.40x. The spread between runs of the same
setting is as wide as the gap between the settings at p50 (this run's, below, is one more such run), but 12 at
a time was behind at p99 in every run.${STARTS >= 50 ? " So by default a worker asks its engine for up to 50 starts at once." : ""}`;
