import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import { errorMessage } from "../errors.ts";
import type { GitHubClient, RunnerScope } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ActiveRepo, ActiveRepos } from "../state/active-repos.ts";
import type { RunnerStore } from "../state/runners.ts";
import { isOurRunner } from "../worker/names.ts";
import type { Loop } from "./loops.ts";

export const GITHUB_RUNNERS = "github-runners";

/**
 * Where our runners can be registered: each active repository when a pool registers per
 * repository, each active repository's owner when a pool registers per organization. Pure.
 */
export function scopesToCheck(repos: readonly ActiveRepo[], pools: readonly Pick<PoolConfig, "scope">[]): RunnerScope[] {
  const perRepo = pools.some((p) => p.scope === "repository");
  const perOrg = pools.some((p) => p.scope === "organization");
  const scopes = new Map<string, RunnerScope>();
  const add = (scope: RunnerScope) => {
    const key = scopeKey(scope);
    if (!scopes.has(key)) scopes.set(key, scope);
  };
  for (const r of repos) {
    if (perRepo) add({ installationId: r.installationId, owner: r.owner, repo: r.repo });
    if (perOrg) add({ installationId: r.installationId, owner: r.owner });
  }
  return [...scopes.values()];
}

function scopeKey(s: RunnerScope): string {
  return `${s.installationId}/${s.owner}/${s.repo ?? ""}`.toLowerCase();
}

export interface GitHubRunnersDeps {
  github: Pick<GitHubClient, "listRunners" | "deleteRunner">;
  runners: Pick<RunnerStore, "get">;
  repos: Pick<ActiveRepos, "list">;
  pools: readonly Pick<PoolConfig, "scope">[];
  namePrefix: string;
  intervalMs: number;
  windowMs: number;
  maxRepositories: number;
  /** How long a registration of ours must have been seen without a record before it is deleted. */
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
 * starts the grace period again, which only ever delays a deletion.
 */
export function githubRunnersLoop(d: GitHubRunnersDeps): Loop {
  const firstSeen = new Map<string, number>();
  return {
    name: GITHUB_RUNNERS,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal) {
      const scopes = scopesToCheck(await d.repos.list(d.windowMs, d.maxRepositories), d.pools);
      const seen = new Set<string>();
      const failed: string[] = [];
      for (const scope of scopes) {
        signal.throwIfAborted();
        try {
          for (const r of await d.github.listRunners(scope, { signal })) {
            if (!isOurRunner(d.namePrefix, r.name)) continue;
            const key = `${scopeKey(scope)}#${r.id}`;
            if (await d.runners.get(r.name)) continue;
            seen.add(key);
            const since = firstSeen.get(key) ?? Date.now();
            firstSeen.set(key, since);
            if (Date.now() - since < d.graceMs) continue;
            signal.throwIfAborted();
            const outcome = r.busy ? "busy" : await d.github.deleteRunner(scope, r.id);
            const log = d.logger.child({ loop: GITHUB_RUNNERS, runner: r.name, runnerId: r.id, owner: scope.owner, repo: scope.repo });
            if (outcome === "busy") {
              d.metrics.reconcileAction(GITHUB_RUNNERS, "runner_busy_kept");
              log.debug("registration without a record is running a job; kept");
              continue;
            }
            firstSeen.delete(key);
            seen.delete(key);
            if (outcome === "deleted") {
              d.metrics.reconcileAction(GITHUB_RUNNERS, "runner_deleted");
              log.info({ status: r.status }, "deleted a registration of ours that has no runner record");
            }
          }
        } catch (err) {
          if (signal.aborted) throw err;
          failed.push(`${scope.owner}/${scope.repo ?? "(organization)"}: ${errorMessage(err)}`);
        }
      }
      // Forget what is no longer listed (gone, or now has a record), so the map stays bounded.
      for (const key of firstSeen.keys()) if (!seen.has(key)) firstSeen.delete(key);
      if (failed.length > 0) throw new Error(`listing runners failed for ${failed.length} of ${scopes.length} scopes; first: ${failed[0]}`);
    },
  };
}
