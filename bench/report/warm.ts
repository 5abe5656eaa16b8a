/** The Warm runners section of BENCHMARKS.md and its Summary rows. */
import { ms, ratio, summarize } from "../lib/stats.ts";
import type { JobStart, WarmResult, WarmSeries } from "../warm.ts";
import { calls, runLine, table, yes, type Row, type RunInfo } from "./common.ts";

function find(w: WarmResult, kind: WarmSeries["kind"], series: WarmSeries["series"]): WarmSeries {
  return w.series.find((s) => s.kind === kind && s.series === series)!;
}

/** Which of a cold job's three steps took longest at p50. */
function largest(s: WarmSeries): string {
  const steps: Array<[string, number]> = [
    ["jitrunner's launch", s.toCreated.p50],
    ["Docker's start", s.createdToStarted.p50],
    ["the runner's boot", s.startedToTaken.p50],
  ];
  const [name] = steps.reduce((a, b) => (b[1] > a[1] ? b : a));
  return `; ${name} is the largest part`;
}

function idleRange(counts: number[]): string {
  const [lo, hi] = [Math.min(...counts), Math.max(...counts)];
  return lo === hi ? String(lo) : `${lo} to ${hi}`;
}

/** How many warm jobs a runner took before jitrunner had answered their webhook, if any. */
function taken(jobs: JobStart[]): string {
  const early = jobs.filter((j) => j.taken < j.answered).length;
  return early > 0 ? `; ${early} of ${jobs.length} were taken before that answer` : "";
}

/** "12x sooner": cold p50 over warm p50. */
function times(s: { warm: WarmSeries; cold: WarmSeries }): string {
  const x = s.cold.start.p50 / s.warm.start.p50;
  return Number.isFinite(x) ? `${x >= 10 ? x.toFixed(0) : x.toFixed(1)}x sooner` : "n/a";
}

/** Warm against cold, p50 and p90, "0.05x / 0.04x". */
function ratios(warm: WarmSeries, cold: WarmSeries): string {
  return `${ratio(warm.start.p50, cold.start.p50)} / ${ratio(warm.start.p90, cold.start.p90)}`;
}

export function warmSection(w: WarmResult, info: RunInfo): string {
  const one = { cold: find(w, "cold", "one at a time"), warm: find(w, "warm", "one at a time") };
  const burst = { cold: find(w, "cold", "burst"), warm: find(w, "warm", "burst") };
  const rows: Row[] = [one.cold, one.warm, burst.cold, burst.warm].map((s) => [
    `${s.kind} (minIdle ${s.kind === "cold" ? 0 : w.minIdle}), ${s.series === "burst" ? `${w.burst} at once` : "one at a time"}`,
    s.jobs.length,
    `**${ms(s.start.p50)}**`,
    ms(s.start.p90),
    ms(s.start.max),
    ms(s.toCreated.p50),
    ms(s.createdToStarted.p50),
    ms(s.startedToTaken.p50),
  ]);
  const warmAll = [...one.warm.jobs, ...burst.warm.jobs];
  const before = warmAll.map((j) => j.sent - j.created).sort((a, b) => a - b);
  const idleAtSend = warmAll.map((j) => j.idleWarmAtSend);
  return `## Warm runners

${runLine(info, "warm")}

Job start with and without a launch on its critical path. One \`jitrunner all\` process (capacity
${w.capacity}) serves two pools that differ only in \`minIdle\`: **cold** (\`minIdle: 0\`: a job's
runner is launched when its webhook arrives) and **warm** (\`minIdle: ${w.minIdle}\`, \`warm\` set to the
jobs' repository: ${w.minIdle} idle registered runners kept ready). Same runner image, profile and
mounts as the other phases. The same jobs go to both: ${w.isolated} to each one at a time,
alternately (cold first in odd rounds, warm first in even ones), each only when the system has
settled (every job done, exactly ${w.minIdle} warm runners online and idle at the fake GitHub and
nothing else registered, no container starting or stopping) and at least 1.5 s after the previous
one; then a burst of ${w.burst} jobs at once to each pool, each burst on a settled system. A warm-up job
per pool came first and is not counted.

**Job start** is timed from the moment the fake GitHub starts sending the \`queued\` webhook (the
job is queued from then on) to the moment it hands the job to a runner: its answer to the runner's
\`acquire\` call, timed to the millisecond on the runner protocol's unix socket (bench/lib/runner-proxy.ts
passes every call through to the fake unchanged; the fake's own \`started_at\` is GitHub's, in whole
seconds). The container steps are Docker's \`create\` and \`start\` events of the runner that took
the job.

${table(
  ["pool, series", "jobs", "job start p50", "p90", "max", "webhook -> container created p50", "created -> started p50", "started -> job taken p50"],
  rows,
)}

One at a time, a job starts in **${ms(one.warm.start.p50)}** at p50 on a warm pool against
**${ms(one.cold.start.p50)}** on a cold one (**${ratio(one.warm.start.p50, one.cold.start.p50)}**, ${times(one)}; p90
${ms(one.warm.start.p90)} against ${ms(one.cold.start.p90)}). In a burst of ${w.burst}: ${ms(burst.warm.start.p50)} against
${ms(burst.cold.start.p50)} (${ratio(burst.warm.start.p50, burst.cold.start.p50)}, ${times(burst)}). A cold job waits for jitrunner's launch (webhook ->
container created: ${ms(one.cold.toCreated.p50)}), Docker's start (${ms(one.cold.createdToStarted.p50)}) and then
the runner container's own boot: its dockerd, the runner coming online and its first poll
(${ms(one.cold.startedToTaken.p50)})${largest(one.cold)}. In the cold burst the launches share one engine and
the machine's CPUs: the runners' own boots (each starts a dockerd) overlap.

**No launch on the critical path: ${w.warmPrecreated} of ${w.warmJobs} warm jobs** ran on a runner whose container
was created before the job's webhook was sent (${w.warmPrecreated === w.warmJobs ? "all of them" : "**not all**"}), by ${ms(before[0] ?? Number.NaN)} at
least and ${ms(before[Math.floor(before.length / 2)] ?? Number.NaN)} at the median. What a warm job waits for is the
next poll of an idle runner: the fake runner asks for a job every 250 ms, so a warm start lies
between 0 and about 250 ms, and ${idleRange(idleAtSend)} idle warm runners were polling when each job was
queued. Each runner polls on a schedule of its own, from when it started, so a job waits for the
soonest next poll of the idle runners: more idle runners shorten the wait (for 3 whose polls fall
at independent moments, about 52 ms at the median and 134 ms at p90), and a burst of up to
\`minIdle\` jobs is taken in one round of polls. The real runner holds a long poll open with GitHub's broker instead; how fast
GitHub hands a job over that way is not something this bench can measure.
Webhook delivery and jitrunner play no part in it: GitHub hands a queued job to any idle runner
with matching labels, whether or not jitrunner has seen the webhook yet (jitrunner answered the
warm jobs' webhooks ${ms(summarize(warmAll.map((j) => j.answered - j.sent)).p50)} after they were sent at p50${taken(warmAll)}).

**What the warm pool costs per job.** ${launchesNote(w)} GitHub calls in this phase (warm-ups,
${w.warmJobs} warm and as many cold jobs, and every replacement): ${calls(w.githubCalls)}.
${w.completed} of ${2 * w.warmJobs} measured jobs completed, ${w.succeeded} succeeded.

Small samples (${w.isolated} per pool one at a time, ${w.burst} per burst): p90 is the maximum or next to it (percentiles here are nearest rank).`;
}

function launchesNote(w: WarmResult): string {
  const unused =
    w.adoptionsLogged > 0
      ? ` The worker takes a demand a few ms after its webhook, usually before the runner's \`in_progress\` says which ` +
        `runner GitHub gave the job to, and adopts the oldest idle warm runner: in ${w.adoptedOther} of the ${w.adoptionsLogged} ` +
        `warm jobs whose adoption it logged, that was not the runner that ran the job. The demand then follows its job to the ` +
        `runner that took it, and the adopted runner is a warm runner again (src/worker/worker.ts, #handOver): ` +
        `${w.adoptedUnused} adopted runners idled out at the pool's idle timeout (${w.idleTimeoutS} s here, 600 s by default) ` +
        `without a job, and no replacement was launched for one.`
      : "";
  return `Launches per measured job: cold ${w.launchesPerJob.cold.toFixed(2)}, warm ${w.launchesPerJob.warm.toFixed(2)} (a warm job is replaced by a launch off its critical path).${unused}`;
}

/** The Summary's warm rows; their first cell starts with "warm". */
export function warmSummaryRows(w: WarmResult): Row[] {
  const one = { cold: find(w, "cold", "one at a time"), warm: find(w, "warm", "one at a time") };
  const burst = { cold: find(w, "cold", "burst"), warm: find(w, "warm", "burst") };
  return [
    [
      `warm runners: job start one at a time, p50 / p90 (minIdle ${w.minIdle})`,
      `${ms(one.warm.start.p50)} / ${ms(one.warm.start.p90)}`,
      `${ms(one.cold.start.p50)} / ${ms(one.cold.start.p90)} (minIdle 0)`,
      ratios(one.warm, one.cold),
      "no launch on the critical path",
      `${yes(w.warmPrecreated === w.warmJobs)}: ${w.warmPrecreated} of ${w.warmJobs} warm jobs on a runner created before their webhook`,
    ],
    [
      `warm runners: job start, burst of ${w.burst}, p50 / p90`,
      `${ms(burst.warm.start.p50)} / ${ms(burst.warm.start.p90)}`,
      `${ms(burst.cold.start.p50)} / ${ms(burst.cold.start.p90)} (minIdle 0)`,
      ratios(burst.warm, burst.cold),
      "",
      "",
    ],
  ];
}
