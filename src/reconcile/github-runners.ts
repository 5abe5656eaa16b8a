import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, RegisteredRunner, RunnerScope } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ActiveOrganization, ActiveRepo, ActiveRepos } from "../state/active-repos.ts";
import { scopeOf, type RunnerRecord, type RunnerStore } from "../state/runners.ts";
import { isOurRunner } from "../worker/names.ts";
import { listingCutNotice, listingOver, passTimeoutMs, type Loop, type PassBudget } from "./loops.ts";
import { PausedInstallations, RECONCILE_MAX_WAIT_MS } from "./paused.ts";

export const GITHUB_RUNNERS = "github-runners";

/**
 * Where our runners can be registered, each scope once: every pool's warm scope (warm runners
 * register there before any job names a repository, and a repository whose jobs stopped never turns
 * up among the active ones), the scopes of runners recorded in Redis (`recorded`), then each active
 * repository when a pool registers per repository, and each owner an organization pool served
 * (`organizations`) when a pool registers per organization. Not every active repository's owner:
 * one served only by repository pools may be a user account, whose organization runner list
 * GitHub refuses (404) on every pass. Pure.
 */
export function scopesToCheck(
  repos: readonly ActiveRepo[],
  organizations: readonly Omit<ActiveOrganization, "seenAt">[],
  pools: readonly Pick<PoolConfig, "scope" | "warm">[],
  recorded: readonly RunnerScope[] = [],
): RunnerScope[] {
  const perRepo = pools.some((p) => p.scope === "repository");
  const perOrg = pools.some((p) => p.scope === "organization");
  const scopes = new Map<string, RunnerScope>();
  const add = (scope: RunnerScope) => {
    const key = scopeKey(scope);
    if (!scopes.has(key)) scopes.set(key, scope);
  };
  for (const p of pools) {
    if (!p.warm) continue;
    if (p.scope === "organization") add({ installationId: p.warm.installationId, owner: p.warm.owner });
    else if (p.warm.repo) add({ installationId: p.warm.installationId, owner: p.warm.owner, repo: p.warm.repo });
  }
  for (const s of recorded) add(s);
  if (perRepo) for (const r of repos) add({ installationId: r.installationId, owner: r.owner, repo: r.repo });
  if (perOrg) for (const o of organizations) add({ installationId: o.installationId, owner: o.owner });
  return [...scopes.values()];
}

/** The scopes of `records`, newest record first, each once, at most `max`; `more` when some were left out. */
export function recordedScopes(records: readonly Pick<RunnerRecord, "installationId" | "owner" | "repo" | "createdAt">[], max: number): { scopes: RunnerScope[]; more: boolean } {
  const scopes = new Map<string, RunnerScope>();
  for (const r of [...records].sort((a, b) => b.createdAt - a.createdAt)) {
    const scope = scopeOf(r);
    const key = scopeKey(scope);
    if (scopes.has(key)) continue;
    if (scopes.size >= max) return { scopes: [...scopes.values()], more: true };
    scopes.set(key, scope);
  }
  return { scopes: [...scopes.values()], more: false };
}

/**
 * `scopes` in the order a pass lists them: those listed longest ago (in passes; never: first)
 * first, ties in the order given. Every scope is listed each pass while GitHub answers in time;
 * a pass that stops listing at its deadline leaves the rest to be listed first by the next. Pure.
 */
export function scopesInTurn(scopes: readonly RunnerScope[], lastListed: ReadonlyMap<string, number>): RunnerScope[] {
  return scopes
    .map((scope, i) => ({ scope, i, at: lastListed.get(scopeKey(scope)) ?? Number.NEGATIVE_INFINITY }))
    .sort((a, b) => (a.at === b.at ? a.i - b.i : a.at - b.at))
    .map((x) => x.scope);
}

function scopeKey(s: RunnerScope): string {
  return `${s.installationId}/${s.owner}/${s.repo ?? ""}`.toLowerCase();
}

export interface GitHubRunnersDeps {
  github: Pick<GitHubClient, "listRunners" | "deleteRunner" | "getRunner">;
  runners: Pick<RunnerStore, "get" | "listAll" | "mark">;
  repos: Pick<ActiveRepos, "list" | "listOrganizations">;
  pools: readonly Pick<PoolConfig, "scope" | "warm">[];
  namePrefix: string;
  intervalMs: number;
  windowMs: number;
  /**
   * Active repositories checked a pass at most; organizations, and scopes of recorded runners, at
   * most as many each.
   */
  maxRepositories: number;
  /**
   * How long a registration of ours must have been seen without a record before it is deleted,
   * and a runner recorded busy seen without a registration before it is marked completed.
   */
  graceMs: number;
  metrics: Metrics;
  logger: Logger;
}

/**
 * Leader loop: GitHub's runner list against Redis. A registration with our name prefix and no
 * runner record (its launch crashed, its teardown could not reach GitHub, Redis lost it) is
 * deleted once it has been seen that way for the grace period. GitHub's 422 "busy" is final:
 * a runner running a job is never touched (it removes itself after the job, being ephemeral).
 * GitHub's list carries no creation time, so "seen since" is kept in memory: a new leader
 * starts the grace period again, which only ever delays a deletion. A pass whose list of a scope
 * failed, or that a cap left the scope out of, does not: its registrations' grace goes on.
 *
 * The other way round, a runner recorded busy whose registration GitHub no longer lists has ended
 * its job (an ephemeral runner's registration goes with its job), whether or not its `completed`
 * webhook came: one that did not (lost, and its redelivery too) would leave the runner, should it
 * hang instead of exiting, running and holding its slot until its worker restarted. Once it has
 * been missing from its scope's list for the grace period, it is marked completed, as that webhook
 * would have marked it, and its worker removes it after `worker.completedGraceSeconds`. Only scopes
 * listed this pass count, and only runners marked busy before the pass began. A list read page by
 * page can miss an entry while runners come and go (or stop at its page limit), and removing a
 * runner that still runs its job would fail that job; so GitHub is asked about the runner itself
 * before it is marked (one call, only for a runner missing that long), and a runner it still
 * knows is left alone.
 *
 * With GitHub slow, listing every scope could take the pass's whole time limit, and the pass would
 * be aborted before that check: a pass starts listing no scope past half its limit
 * (listingOver) and checks the busy runners of the scopes it listed; the scopes it did not
 * reach are the first the next pass lists (scopesInTurn).
 */
export function githubRunnersLoop(d: GitHubRunnersDeps): Loop {
  const firstSeen = new Map<string, number>();
  const missingSince = new Map<string, number>();
  /** The pass in which each scope's listing last started (see scopesInTurn). */
  const scopesListed = new Map<string, number>();
  let passes = 0;
  const capped = new CapNotice(d);
  const cut = listingCutNotice(d.logger.child({ loop: GITHUB_RUNNERS }), "runner lists");
  return {
    name: GITHUB_RUNNERS,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal, budget?: PassBudget) {
      const began = Date.now();
      const pass = ++passes;
      const all = await passScopes(d, capped);
      const keys = new Set(all.map(scopeKey));
      for (const key of scopesListed.keys()) if (!keys.has(key)) scopesListed.delete(key);
      const scopes = scopesInTurn(all, scopesListed);
      const seen = new Set<string>();
      const failed: string[] = [];
      /** Scopes listed this pass, and the names of ours each list holds. */
      const listed = new Map<string, Set<string>>();
      let reached = 0;
      // An installation out of its rate limit is skipped for the pass: its scopes count as not listed.
      const paused = new PausedInstallations();
      for (const scope of scopes) {
        signal.throwIfAborted();
        if (listingOver(budget)) break;
        reached++;
        if (paused.skips(scope.installationId)) continue;
        scopesListed.set(scopeKey(scope), pass);
        let registrations: RegisteredRunner[];
        try {
          registrations = await d.github.listRunners(scope, { signal, maxWaitMs: RECONCILE_MAX_WAIT_MS });
        } catch (err) {
          if (signal.aborted) throw err;
          paused.note(scope.installationId, err);
          failed.push(`${scope.owner}/${scope.repo ?? "(organization)"}: ${errorMessage(err)}`);
          continue;
        }
        const ours = registrations.filter((r) => isOurRunner(d.namePrefix, r.name));
        // The whole list, before anything is done about it: a registration that fails below
        // leaves the names complete for the busy runners' check.
        listed.set(scopeKey(scope), new Set(ours.map((r) => r.name)));
        for (const r of ours) {
          signal.throwIfAborted();
          const key = `${scopeKey(scope)}#${r.id}`;
          try {
            await deleteIfOrphan(d, scope, r, key, firstSeen, seen);
          } catch (err) {
            if (signal.aborted) throw err;
            // Kept as seen: its grace goes on, and it is tried again next pass.
            if (firstSeen.has(key)) seen.add(key);
            failed.push(`${scope.owner}/${scope.repo ?? "(organization)"} runner ${r.name}: ${errorMessage(err)}`);
            d.logger.warn({ loop: GITHUB_RUNNERS, runner: r.name, runnerId: r.id, owner: scope.owner, repo: scope.repo, err: errorMessage(err) }, "checking a registration of ours failed; the others go on");
          }
        }
      }
      // Forget what is no longer listed (gone, or now has a record), so the map stays bounded; only
      // in scopes listed this pass: one whose list failed or that a cap left out keeps its grace.
      for (const key of firstSeen.keys()) if (!seen.has(key) && listed.has(key.slice(0, key.lastIndexOf("#")))) firstSeen.delete(key);
      cut.note(reached, scopes.length, budget?.limitMs ?? passTimeoutMs(d.intervalMs));
      await endBusyRunnersGoneFromGitHub(d, listed, began, missingSince, failed, signal, paused);
      const of = reached < scopes.length ? `${reached} of ${scopes.length} scopes listed: stopped at half the pass's time limit` : `${scopes.length} scopes`;
      if (failed.length > 0) throw new Error(`checking runners failed ${failed.length} times (${of}); first: ${failed[0]}${paused.summary}`);
    },
  };
}

/**
 * The scopes one pass lists (scopesToCheck): every warm scope, the scopes of recorded runners, the
 * active repositories and the organizations organization pools served, these three capped at
 * `maxRepositories` each.
 */
async function passScopes(d: GitHubRunnersDeps, capped: CapNotice): Promise<RunnerScope[]> {
  // One more than the cap: whether the cap left any out.
  const active = await d.repos.list(d.windowMs, d.maxRepositories + 1);
  const organizations = await d.repos.listOrganizations(d.windowMs, d.maxRepositories + 1);
  const recorded = recordedScopes(await d.runners.listAll(), d.maxRepositories);
  const activeLeftOut = active.length > d.maxRepositories || organizations.length > d.maxRepositories;
  capped.note({ activeLeftOut, recordedLeftOut: recorded.more });
  return scopesToCheck(active.slice(0, d.maxRepositories), organizations.slice(0, d.maxRepositories), d.pools, recorded.scopes);
}

/**
 * Says once that a cap left scopes out of the passes (a registration of ours there is found only
 * once its repository is among the newest again), and once that passes are whole again; not every
 * pass.
 */
class CapNotice {
  readonly #d: Pick<GitHubRunnersDeps, "maxRepositories" | "windowMs" | "logger">;
  #leftOut = false;

  constructor(d: Pick<GitHubRunnersDeps, "maxRepositories" | "windowMs" | "logger">) {
    this.#d = d;
  }

  note(c: { activeLeftOut: boolean; recordedLeftOut: boolean }): void {
    const leftOut = c.activeLeftOut || c.recordedLeftOut;
    if (leftOut === this.#leftOut) return;
    this.#leftOut = leftOut;
    const log = this.#d.logger.child({ loop: GITHUB_RUNNERS, maxRepositories: this.#d.maxRepositories });
    if (leftOut) {
      log.warn(
        { activeLeftOut: c.activeLeftOut, recordedLeftOut: c.recordedLeftOut, activeWindowSeconds: this.#d.windowMs / 1000 },
        "more repositories than reconcile.maxRepositories: runner lists of the least recent ones are not checked (said once until they fit again)",
      );
    } else {
      log.info("every active repository's runner list is checked again");
    }
  }
}

/**
 * A registration of ours: kept while it has a record or is in its grace period (noted in
 * `firstSeen` and `seen`), else deleted unless GitHub says it is busy.
 */
async function deleteIfOrphan(
  d: GitHubRunnersDeps,
  scope: RunnerScope,
  r: RegisteredRunner,
  key: string,
  firstSeen: Map<string, number>,
  seen: Set<string>,
): Promise<void> {
  if (await d.runners.get(r.name)) return;
  seen.add(key);
  const since = firstSeen.get(key) ?? Date.now();
  firstSeen.set(key, since);
  if (Date.now() - since < d.graceMs) return;
  const outcome = r.busy ? "busy" : await d.github.deleteRunner(scope, r.id);
  const log = d.logger.child({ loop: GITHUB_RUNNERS, runner: r.name, runnerId: r.id, owner: scope.owner, repo: scope.repo });
  if (outcome === "busy") {
    d.metrics.reconcileAction(GITHUB_RUNNERS, "runner_busy_kept");
    log.debug("registration without a record is running a job; kept");
    return;
  }
  firstSeen.delete(key);
  seen.delete(key);
  if (outcome === "deleted") {
    d.metrics.reconcileAction(GITHUB_RUNNERS, "runner_deleted");
    log.info({ status: r.status }, "deleted a registration of ours that has no runner record");
  }
}

/**
 * Marks completed the runners recorded busy (since before `began`) that their scope's list, taken
 * this pass, no longer names, once missing for the grace period and unknown to GitHub when asked
 * about by id (see githubRunnersLoop). A runner whose look fails is added to `failed` and keeps its
 * grace; the later runners are still looked at.
 */
async function endBusyRunnersGoneFromGitHub(
  d: GitHubRunnersDeps,
  listed: ReadonlyMap<string, ReadonlySet<string>>,
  began: number,
  missingSince: Map<string, number>,
  failed: string[],
  signal: AbortSignal,
  paused: PausedInstallations,
): Promise<void> {
  // Missing from this pass's list, or in a scope not listed this pass (its list failed, or a cap
  // left it out): the grace of either goes on.
  const missing = new Set<string>();
  for (const r of await d.runners.listAll()) {
    if (r.state !== "busy" || r.busyAt === undefined || r.busyAt >= began) continue;
    const names = listed.get(scopeKey(scopeOf(r)));
    if (!names) missing.add(r.name);
    if (!names || names.has(r.name)) continue;
    const since = missingSince.get(r.name) ?? Date.now();
    missing.add(r.name);
    missingSince.set(r.name, since);
    if (Date.now() - since < d.graceMs || r.runnerId === undefined) continue;
    signal.throwIfAborted();
    if (paused.skips(r.installationId)) continue;
    // A failed look keeps the runner's grace, and it is asked about again next pass; the runners
    // after it are still looked at (one GitHub keeps refusing must not hide the others). One GitHub
    // still knows was missed by a list: left alone, and the grace starts again should it go missing again.
    let known: RegisteredRunner | undefined;
    try {
      known = await d.github.getRunner(scopeOf(r), r.runnerId, { signal, maxWaitMs: RECONCILE_MAX_WAIT_MS });
    } catch (err) {
      if (signal.aborted) throw err;
      paused.note(r.installationId, err);
      failed.push(`${r.owner}/${r.repo ?? "(organization)"} busy runner ${r.name}: ${errorMessage(err)}`);
      d.logger.warn({ loop: GITHUB_RUNNERS, runner: r.name, runnerId: r.runnerId, owner: r.owner, repo: r.repo, err: errorMessage(err) }, "asking GitHub about a runner recorded busy failed; the others go on");
      continue;
    }
    missingSince.delete(r.name);
    if (known) continue;
    if (!(await d.runners.mark(r.name, "completed", r.jobId ?? 0))) continue;
    d.metrics.reconcileAction(GITHUB_RUNNERS, "busy_runner_ended");
    d.logger.warn(
      { loop: GITHUB_RUNNERS, runner: r.name, runnerId: r.runnerId, host: r.host, jobId: r.jobId },
      "runner recorded busy is no longer registered at GitHub (its job is over) and no completed webhook came; marked completed, its worker removes it",
    );
  }
  for (const name of missingSince.keys()) if (!missing.has(name)) missingSince.delete(name);
}
