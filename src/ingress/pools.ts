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

/** Why matchPool found no pool: the job names no labels (and no pool opts in), or no pool has them all. */
export function unmatchedReason(jobLabels: readonly string[]): "no_labels" | "no_pool" {
  return jobLabels.length === 0 ? "no_labels" : "no_pool";
}
