import type { PoolConfig } from "../config/load.ts";

/**
 * The pool that serves a job, or undefined. A pool can serve a job when the job's labels are a
 * subset of the pool's labels, compared case-insensitively (as GitHub matches runners). Of several,
 * the most specific wins: the one with the fewest labels, then the first in the config.
 *
 * A job with no labels (`runs-on: { group: ... }` only) is a subset of every pool, but its webhooks
 * do not say which group it wants: a runner launched for it in another group could not take it and
 * would hold its slot until its idle timeout. Only pools that opt in (serveJobsWithoutLabels) serve it.
 */
export function matchPool<P extends Pick<PoolConfig, "labels"> & { serveJobsWithoutLabels?: boolean }>(
  jobLabels: readonly string[],
  pools: readonly P[],
): P | undefined {
  const wanted = jobLabels.map((l) => l.toLowerCase());
  let best: P | undefined;
  for (const pool of pools) {
    if (wanted.length === 0 && !pool.serveJobsWithoutLabels) continue;
    const offered = new Set(pool.labels.map((l) => l.toLowerCase()));
    if (!wanted.every((l) => offered.has(l))) continue;
    if (!best || pool.labels.length < best.labels.length) best = pool;
  }
  return best;
}

/**
 * Whether `pool` can register runners for a repository whose owner is of account type `ownerType`
 * (`repository.owner.type`, in a webhook and in the REST API's runs alike). Only an organization
 * has organization runners: for a user's repository GitHub answers 404 to
 * `/orgs/{user}/actions/runners/generate-jitconfig`, so an organization pool could never launch a
 * runner for it, and its demand would fail and be retried for good. Type unknown (a hand-made
 * payload; GitHub always sends it): any pool, as before.
 */
export function servesOwner(pool: Pick<PoolConfig, "scope">, ownerType: string | undefined): boolean {
  return pool.scope !== "organization" || ownerType === undefined || ownerType === "Organization";
}

/**
 * matchPool among the pools that can serve a repository of `ownerType` (servesOwner): for a user's
 * repository, the most specific repository pool whose labels the job's cover, even where an
 * organization pool with fewer labels would win for an organization's. GitHub routes a job by
 * labels, so that pool's runner takes it as well; only no runner at all would be worse.
 */
export function matchPoolForOwner<P extends Pick<PoolConfig, "labels" | "scope"> & { serveJobsWithoutLabels?: boolean }>(
  jobLabels: readonly string[],
  pools: readonly P[],
  ownerType: string | undefined,
): P | undefined {
  return matchPool(jobLabels, pools.filter((p) => servesOwner(p, ownerType)));
}

/** Why matchPool found no pool: the job names no labels (and no pool opts in), or no pool has them all. */
export function unmatchedReason(jobLabels: readonly string[]): "no_labels" | "no_pool" {
  return jobLabels.length === 0 ? "no_labels" : "no_pool";
}
