import type { Logger } from "pino";
import type { Config } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, WorkflowJobSummary, WorkflowRunSummary } from "../github/client.ts";
import type { DemandSink } from "../ingress/ingress.ts";
import { decideQueued, type WorkflowJobEvent } from "../ingress/policy.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ActiveRepo, ActiveRepos } from "../state/active-repos.ts";
import type { ActivityRecorder } from "../state/activity.ts";
import type { DemandQueues } from "../queue/demand-queue.ts";
import { registeredAt, type RunnerRecord, type RunnerStore } from "../state/runners.ts";
import { demandIdOf, MAX_RENEWALS, type Demand } from "../demand.ts";
import { listingCutNotice, listingOver, passTimeoutMs, type Loop, type PassBudget } from "./loops.ts";
import { PausedInstallations, RECONCILE_MAX_WAIT_MS } from "./paused.ts";

export const GITHUB_QUEUED = "github-queued";

/**
 * Failed demand given its launch attempts afresh per pass at most: a pool that cannot launch at all
 * (a missing image, say) costs at most this many jobs' worth of registrations a pass.
 */
export const MAX_RETRIES_PER_PASS = 10;

/**
 * A queued job whose demand completed (its runner ran another job) gets a runner of its own only
 * once the demand has been done this long, or, while the demand is still held, once its runner has
 * been busy with another job this long: runners launched for other jobs meanwhile may still
 * be booting, and whichever asks first gets this job. Renewed sooner, one of them is left idle.
 */
export const RENEW_AFTER_MS = 30_000;

/**
 * The demand for the same job as `demand`, renewal `n` (0: `demand` itself): a queue item of its
 * own (see demandId), as the item of a demand whose runner took another job stays active for as
 * long as that runner runs it, and cannot be replaced meanwhile. Pure.
 */
export function renewalOf(demand: Demand, n: number): Demand {
  if (n === 0) return demand;
  return { ...demand, renewal: n };
}

/**
 * Whether the runner launched for `jobId`'s demand took another job: GitHub marked it busy with, or
 * done with, a job of another id. One still registering, starting or idle may yet take it. Pure.
 */
export function tookAnotherJob(record: Pick<RunnerRecord, "state" | "jobId">, jobId: number): boolean {
  return (record.state === "busy" || record.state === "completed") && record.jobId !== undefined && record.jobId !== jobId;
}

/**
 * Run statuses that can hold queued jobs: a run in progress can still have jobs waiting, and a run
 * one of whose jobs waits for an environment's approval is `waiting` (listed under no other status)
 * while its sibling jobs are queued for runners. One list call per status and repository a pass.
 */
const RUN_STATUSES = ["queued", "in_progress", "waiting"] as const;

/**
 * What a webhook would have said about a queued job, from the REST API's view of it, so the
 * recovered job goes through exactly the policy a webhook does. Pure.
 */
export function queuedEventOf(job: WorkflowJobSummary, run: WorkflowRunSummary, installationId: number): WorkflowJobEvent {
  return {
    action: "queued",
    workflow_job: {
      id: job.id,
      run_id: job.runId,
      run_attempt: job.runAttempt,
      status: job.status,
      labels: job.labels,
      runner_name: job.runnerName,
    },
    repository: {
      name: run.repo,
      full_name: `${run.owner}/${run.repo}`,
      private: run.private,
      visibility: run.visibility,
      owner: { login: run.owner, type: run.ownerType },
    },
    installation: { id: installationId },
  };
}

export interface GitHubQueuedDeps {
  config: Pick<Config, "pools" | "policy">;
  github: Pick<GitHubClient, "listRuns" | "listRunJobs">;
  demand: Pick<DemandSink, "add" | "ended" | "addAgain"> & Pick<DemandQueues, "waitingFor" | "taken" | "held">;
  runners: Pick<RunnerStore, "findByDemand" | "forgetDemand">;
  /** Read for the repositories to list; touched for those the loop adds demand of (see noteActive). */
  repos: Pick<ActiveRepos, "list" | "touch">;
  intervalMs: number;
  windowMs: number;
  maxRepositories: number;
  /** Runs whose jobs are listed per pass at most: the ones listed longest ago (or never) first. */
  maxRunsPerPass: number;
  /**
   * A still-queued job whose demand ran out of launch attempts this long ago gets them afresh
   * (at most MAX_RETRIES_PER_PASS such jobs a pass); 0: never.
   */
  retryFailedAfterMs: number;
  /** Told of each failed demand retried, so the status stops showing the job's final failure. */
  activity?: Pick<ActivityRecorder, "demandRetried">;
  metrics: Metrics;
  logger: Logger;
}

/** A queued or in-progress run, with the installation it was listed through. */
interface RunToCheck {
  run: WorkflowRunSummary;
  installationId: number;
}

/**
 * The runs whose jobs a pass lists: at most `max`, in order of how long each has waited: a run
 * listed before since its last listing, a run never listed since it was first seen plus `headStart`
 * (ties in listing order). A new run goes ahead of any run listed less than `headStart` ago, and a
 * run listed long ago is listed again even while new runs keep coming faster than the budget
 * (its later jobs, a `needs:` job's, can be queued with their webhooks lost too). Pure.
 */
export function runsToList<T extends { run: { id: number } }>(
  runs: readonly T[],
  lastListed: ReadonlyMap<number, number>,
  firstSeen: ReadonlyMap<number, number>,
  max: number,
  headStart: number,
): T[] {
  return runs
    .map((r, i) => ({ r, i, at: lastListed.get(r.run.id) ?? (firstSeen.get(r.run.id) ?? Number.POSITIVE_INFINITY) - headStart }))
    .sort((a, b) => a.at - b.at || a.i - b.i)
    .slice(0, max)
    .map((x) => x.r);
}

/**
 * The repositories a pass lists: at most `max`, those this leader has not listed yet first (most
 * recently active first, as `active` comes), then those it listed longest ago. More active
 * repositories than `max` are listed in turns, over several passes, rather than the least recently
 * active ones never: a job whose webhook was lost is no less likely there. Pure.
 */
export function reposToList(active: readonly ActiveRepo[], lastListed: ReadonlyMap<string, number>, max: number): ActiveRepo[] {
  return active
    .map((repo, i) => ({ repo, i, at: lastListed.get(repoKey(repo)) ?? Number.NEGATIVE_INFINITY }))
    .sort((a, b) => (a.at === b.at ? a.i - b.i : a.at - b.at))
    .slice(0, max)
    .map((x) => x.repo);
}

function repoKey(repo: ActiveRepo): string {
  return `${repo.installationId}/${repo.owner}/${repo.repo}`;
}

/**
 * Active repositories the loop takes in turns at most (a read of Redis each pass, and this
 * leader's memory of when it listed each): past these, the least recently active are left out.
 */
const MAX_ACTIVE_IN_TURNS = 10_000;

/** How far ahead of runs listed before a run never listed goes, in passes (see runsToList). */
const NEW_RUN_HEAD_START_PASSES = 3;

/**
 * Leader loop: GitHub's queued jobs against the demand we hold. For each recently active
 * repository (at most `maxRepositories` a pass, in turns: reposToList), the runs that are queued,
 * in progress or waiting (one of their jobs waits for an environment's approval while others are
 * queued), and their latest attempt's jobs; a job still queued that a pool serves is added as
 * demand through the same idempotent path as its webhook (keyed by job id and run attempt), so a
 * job whose `queued` webhook arrived adds nothing, and one whose webhook was lost (or came while
 * we were down) gets its runner. Demand the loop adds (recovered, renewed, retried) notes its
 * repository as active, as the ingress notes one whose webhook it accepts: a repository whose
 * webhooks keep failing stays listed while its jobs keep being recovered (noteActive).
 *
 * GitHub lists jobs per run only, so a backlog of queued runs would cost a call per run on every
 * pass: a pass lists at most `maxRunsPerPass` runs' jobs, those that waited longest first (a new
 * run with a head start of a few passes: runsToList), so a large backlog is covered over several
 * passes within a fixed budget, and runs listed before are listed again while new ones keep coming.
 *
 * With GitHub slow, listing every repository's runs could take the pass's whole time limit, and
 * the pass would be aborted before listing any run's jobs: a pass starts listing no repository past
 * half its limit (listingOver), lists the jobs of the runs it found, and the repositories it did
 * not reach are the first the next pass lists (their turn is noted only when their listing starts).
 */
export function githubQueuedLoop(d: GitHubQueuedDeps): Loop {
  /** When each run still queued, in progress or waiting had its jobs listed last (this leader's memory). */
  const lastListed = new Map<number, number>();
  /** When this leader first saw each run still queued, in progress or waiting. */
  const firstSeen = new Map<number, number>();
  /** When this leader listed each active repository's runs last (see reposToList). */
  const reposListed = new Map<string, number>();
  /** The repository of each run in lastListed and firstSeen. */
  const runRepo = new Map<number, string>();
  let inTurns = false;
  const cut = listingCutNotice(d.logger.child({ loop: GITHUB_QUEUED }), "repositories' runs");
  return {
    name: GITHUB_QUEUED,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal, budget?: PassBudget) {
      const active = await d.repos.list(d.windowMs, Math.max(d.maxRepositories, MAX_ACTIVE_IN_TURNS));
      const activeKeys = new Set(active.map(repoKey));
      for (const key of reposListed.keys()) if (!activeKeys.has(key)) reposListed.delete(key);
      const repos = reposToList(active, reposListed, d.maxRepositories);
      if (active.length > d.maxRepositories !== inTurns) {
        inTurns = !inTurns;
        const log = d.logger.child({ loop: GITHUB_QUEUED, maxRepositories: d.maxRepositories });
        if (inTurns) log.info({ active: active.length }, "more active repositories than reconcile.maxRepositories: their queued runs are listed in turns, over several passes (said once until they fit again)");
        else log.info("every active repository's queued runs are listed each pass again");
      }
      const failed: string[] = [];
      const runs = new Map<number, RunToCheck>();
      const listed = new Set<string>();
      let reached = 0;
      // An installation out of its rate limit is skipped for the pass (its repositories' turn taken).
      const paused = new PausedInstallations();
      for (const repo of repos) {
        signal.throwIfAborted();
        if (listingOver(budget)) break;
        reached++;
        const key = repoKey(repo);
        reposListed.set(key, Date.now());
        if (paused.skips(repo.installationId)) continue;
        try {
          for (const run of await listOpenRuns(d, repo, signal)) {
            runs.set(run.id, { run, installationId: repo.installationId });
            runRepo.set(run.id, key);
          }
          listed.add(key);
        } catch (err) {
          if (signal.aborted) throw err;
          paused.note(repo.installationId, err);
          failed.push(`${repo.owner}/${repo.repo}: ${errorMessage(err)}`);
        }
      }
      cut.note(reached, repos.length, budget?.limitMs ?? passTimeoutMs(d.intervalMs));
      // A run is forgotten once its repository, listed this pass, no longer shows it, or is no
      // longer active. The runs of a repository not listed this pass (its turn to come, or its
      // listing failed) keep their place in runsToList's order: else, with repositories listed in
      // turns, every run would look new at each listing and those listed first would take every turn.
      for (const [id, key] of runRepo) {
        if (runs.has(id) || (!listed.has(key) && activeKeys.has(key))) continue;
        runRepo.delete(id);
        lastListed.delete(id);
        firstSeen.delete(id);
      }
      const now = Date.now();
      for (const id of runs.keys()) if (!firstSeen.has(id)) firstSeen.set(id, now);
      const pass: Pass = { failedDemand: [] };
      for (const { run, installationId } of runsToList([...runs.values()], lastListed, firstSeen, d.maxRunsPerPass, NEW_RUN_HEAD_START_PASSES * d.intervalMs)) {
        signal.throwIfAborted();
        if (paused.skips(installationId)) continue;
        try {
          await recoverRun(d, run, installationId, pass, signal);
          lastListed.set(run.id, Date.now());
        } catch (err) {
          if (signal.aborted) throw err;
          paused.note(installationId, err);
          failed.push(`${run.owner}/${run.repo} run ${run.id}: ${errorMessage(err)}`);
        }
      }
      // The ones that failed longest ago first: a job past this pass's share comes first next time.
      for (const f of pass.failedDemand.sort((a, b) => a.at - b.at).slice(0, MAX_RETRIES_PER_PASS)) {
        signal.throwIfAborted();
        try {
          await retryFailed(d, f);
        } catch (err) {
          if (signal.aborted) throw err;
          failed.push(`${f.ids.repo} job ${f.ids.jobId}: ${errorMessage(err)}`);
        }
      }
      const of = reached < repos.length ? `${reached} of ${repos.length} repositories listed: stopped at half the pass's time limit` : `${repos.length} repositories`;
      if (failed.length > 0) throw new Error(`checking queued jobs failed ${failed.length} times (${of}); first: ${failed[0]}${paused.summary}`);
    },
  };
}

async function listOpenRuns(d: GitHubQueuedDeps, repo: ActiveRepo, signal: AbortSignal): Promise<WorkflowRunSummary[]> {
  const runs = new Map<number, WorkflowRunSummary>();
  for (const status of RUN_STATUSES) {
    for (const run of await d.github.listRuns(repo.installationId, repo.owner, repo.repo, status, { signal, maxWaitMs: RECONCILE_MAX_WAIT_MS })) runs.set(run.id, run);
  }
  return [...runs.values()];
}

/** A still-queued job whose demand ran out of launch attempts at `at`, long enough ago. */
export interface FailedDemand {
  demand: Demand;
  at: number;
  ids: { loop: string; jobId: number; runId: number; repo: string; pool: string };
  /** The runner the note of who served the demand named when it was found failed, if any. */
  servedBy?: string;
}

/** What one pass found along the way. */
interface Pass {
  failedDemand: FailedDemand[];
}

async function recoverRun(d: GitHubQueuedDeps, run: WorkflowRunSummary, installationId: number, pass: Pass, signal: AbortSignal): Promise<void> {
  const jobs = await d.github.listRunJobs(installationId, run.owner, run.repo, run.id, { signal, maxWaitMs: RECONCILE_MAX_WAIT_MS });
  for (const job of jobs) {
    if (job.status !== "queued") continue;
    const receivedAt = Date.now();
    const decision = decideQueued(queuedEventOf(job, run, installationId), d.config, { deliveryId: `reconcile-${job.id}`, receivedAt });
    if (decision.kind !== "enqueue") continue;
    signal.throwIfAborted();
    const ids = { loop: GITHUB_QUEUED, jobId: job.id, runId: run.id, repo: `${run.owner}/${run.repo}`, pool: decision.pool.name };
    await recoverJob(d, decision.demand, ids, pass);
  }
}

type JobIds = FailedDemand["ids"];

/**
 * One queued job's demand and its renewals, in order: the first one not used up is looked after
 * as ever (added if missing, retried if failed), and a used-up one (its runner took another job)
 * passes the job on to the next renewal, which is added if it is not there yet. Redis only: no
 * GitHub call.
 */
async function recoverJob(d: GitHubQueuedDeps, first: Demand, ids: JobIds, pass: Pass): Promise<void> {
  for (let n = 0; n <= MAX_RENEWALS; n++) {
    const demand = renewalOf(first, n);
    const id = demandIdOf(demand);
    const last = n === MAX_RENEWALS;
    // A renewal not added yet waits while demand of another job that a runner of the same pool and
    // place would serve is still waiting: that runner, once launched, can take this job (a runner
    // takes any job its labels match), as the one launched for this job took another. Added now,
    // it would be one runner too many in a full pool. If the job still waits once that demand has
    // been taken, it gets its renewal then.
    if (n > 0 && !(await renewalKnown(d, demand)) && (await otherDemandWaits(d, first))) return;
    const served = await d.runners.findByDemand(id);
    if (served?.record) {
      // Its runner lives and took another job: the item stays active for as long as that job
      // runs and cannot be replaced, so the job needs the next renewal. Not before
      // RENEW_AFTER_MS, for the same reason as a done demand's (see there).
      if (!tookAnotherJob(served.record, first.jobId)) return;
      if (last || Date.now() - (served.record.busyAt ?? 0) < RENEW_AFTER_MS) return;
      continue;
    }
    if (served && !(await d.demand.ended(demand))) {
      // A runner that served this demand and is gone, while GitHub still lists the job as queued,
      // took another job, and BullMQ no longer holds the done item (kept an hour). Passed on
      // to the renewal if there is one; else the note (kept 7 days) would make the worker take
      // demand added now as served: forgotten first. A done item's note stays: it tells the
      // item was used up once BullMQ drops it.
      if (!last && (await renewalKnown(d, renewalOf(first, n + 1)))) continue;
      await d.runners.forgetDemand(id, served.name);
    }
    const added = await d.demand.add(demand);
    if (added === "added") {
      await noteActive(d, demand, ids);
      if (n === 0) {
        d.metrics.reconcileAction(GITHUB_QUEUED, "demand_recovered");
        d.logger.info(ids, "recovered a queued job that had no demand (its webhook was lost)");
      } else {
        d.metrics.reconcileAction(GITHUB_QUEUED, "demand_renewed");
        d.logger.info({ ...ids, renewal: n }, "a queued job's runner took another job: demand of its own added");
      }
      return;
    }
    if (added !== "duplicate") return;
    const ended = await d.demand.ended(demand);
    if (!ended) return;
    if (ended.outcome === "completed") {
      // Its demand is done and the runner that served it is gone, yet the job still waits: that
      // runner took another job (one whose own demand was missing). It needs a runner of its own:
      // the next renewal (added, or looked at if an earlier pass added it). A runner still there
      // may yet take this job: wait for it; so may the runners launched for other jobs, still
      // booting when this demand was done.
      if (Date.now() - ended.at < RENEW_AFTER_MS) return;
      const servedBy = await d.runners.findByDemand(id);
      if (servedBy?.record) return;
      if (!last) continue;
      // Out of renewals: this one again, with the record of which runner served it forgotten,
      // so the worker does not take it as served.
      if (servedBy) await d.runners.forgetDemand(id, servedBy.name);
      if (!(await d.demand.addAgain(demand))) return;
      await noteActive(d, demand, ids);
      d.metrics.reconcileAction(GITHUB_QUEUED, "demand_renewed");
      d.logger.info({ ...ids, renewal: n }, "a queued job's runner took another job: its demand added again");
      return;
    }
    // Its launches all failed (GitHub or the hosts failing for longer than the backoff lasts), and
    // the job still waits: after a while, and a few jobs a pass, it gets its attempts afresh.
    if (d.retryFailedAfterMs <= 0 || Date.now() - ended.at < d.retryFailedAfterMs) return;
    pass.failedDemand.push({ demand, at: ended.at, ids, ...(served && { servedBy: served.name }) });
    return;
  }
}

/**
 * Whether demand of `first`'s pool for another job, whose runner would register where `first`'s
 * would, is still to get a runner or has one that has taken no job: waits to be taken, or is held
 * by a worker (waiting for room, launching) with no runner recorded yet, or with a runner still
 * registering, starting or idle. Either runner can take `first`'s job.
 */
async function otherDemandWaits(d: GitHubQueuedDeps, first: Demand): Promise<boolean> {
  const pool = d.config.pools.find((p) => p.name === first.pool);
  if (!pool) return false;
  const other = (w: Demand) => w.jobId !== first.jobId && registeredAt(pool, w, first);
  if (await d.demand.waitingFor(first.pool, other)) return true;
  for (const held of await d.demand.taken(first.pool, other)) {
    const runner = await d.runners.findByDemand(demandIdOf(held));
    if (!runner) return true;
    if (runner.record && runner.record.jobId === undefined && runner.record.state !== "busy" && runner.record.state !== "completed") return true;
  }
  return false;
}

/**
 * Whether a renewal was added before: BullMQ holds its item (waiting for room, taken, ended), or
 * a runner was launched for it (its item dropped since).
 */
async function renewalKnown(d: GitHubQueuedDeps, renewal: Demand): Promise<boolean> {
  if (await d.demand.held(renewal)) return true;
  return (await d.runners.findByDemand(demandIdOf(renewal))) !== undefined;
}

/**
 * Failed demand found this pass given its launch attempts afresh: the note of the runner that served
 * it when it was found (one whose launch failed, or that took another job) forgotten first, so the
 * worker does not take it as served. Only that runner's: should a new `queued` delivery have replaced
 * the item since, and a worker launched a runner for it, that runner's note stays (else the demand,
 * taken again after its lease lapsed, would get a second runner), and the item, pending, is not added.
 * A retry is told to the activity log, so the status shows the job waiting again rather than its
 * final failure.
 */
export async function retryFailed(d: Pick<GitHubQueuedDeps, "config" | "demand" | "runners" | "repos" | "activity" | "metrics" | "logger">, { demand, at, ids, servedBy }: FailedDemand): Promise<void> {
  if (servedBy) await d.runners.forgetDemand(demandIdOf(demand), servedBy);
  if (!(await d.demand.addAgain(demand))) return;
  await noteActive(d, demand, ids);
  // Best effort, as at the ingress: the demand is retried whether or not the status hears of it.
  await d.activity?.demandRetried(demand).catch((err: unknown) => d.logger.debug({ ...ids, err: errorMessage(err) }, "could not write the activity log"));
  d.metrics.reconcileAction(GITHUB_QUEUED, "demand_retried");
  d.logger.info({ ...ids, failedAt: new Date(at).toISOString() }, "a queued job whose launches all failed: its demand added again with fresh attempts");
}

/**
 * Notes `demand`'s repository as active (with its pool's scope, as the ingress does), so the loops
 * go on listing it past `reconcile.activeWindowSeconds` after its last accepted webhook while the
 * loop keeps finding its queued jobs: else a repository whose webhooks all fail (a secret mismatch's
 * 401 is not redelivered) would have its jobs recovered for a day, then no more. Best effort, as at
 * the ingress: the demand is added whether or not the note is written (a failure is logged).
 */
async function noteActive(d: Pick<GitHubQueuedDeps, "config" | "repos" | "logger">, demand: Demand, ids: JobIds): Promise<void> {
  const scope = d.config.pools.find((p) => p.name === demand.pool)?.scope ?? "repository";
  try {
    await d.repos.touch({ installationId: demand.installationId, owner: demand.owner, repo: demand.repo, scope });
  } catch (err) {
    d.logger.warn({ ...ids, err: errorMessage(err) }, "could not note the repository of recovered demand as active");
  }
}
