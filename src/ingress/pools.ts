import type { PoolConfig } from "../config/load.ts";

/**
 * The pool that serves a job, or undefined. A pool can serve a job when the job's labels are a
 * subset of the pool's labels, compared case-insensitively (as GitHub matches runners). Of several,
 * the most specific wins: the one with the fewest labels, then the first in the config.
 */
export function matchPool<P extends Pick<PoolConfig, "labels">>(jobLabels: readonly string[], pools: readonly P[]): P | undefined {
  const wanted = jobLabels.map((l) => l.toLowerCase());
  let best: P | undefined;
  for (const pool of pools) {
    const offered = new Set(pool.labels.map((l) => l.toLowerCase()));
    if (!wanted.every((l) => offered.has(l))) continue;
    if (!best || pool.labels.length < best.labels.length) best = pool;
  }
  return best;
}
