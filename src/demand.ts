/**
 * One unit of demand: a queued workflow job that needs one runner from one pool.
 * This is what travels on the queue from the ingress to a worker.
 */
export interface Demand {
  pool: string;
  jobId: number;
  runId: number;
  runAttempt: number;
  owner: string;
  repo: string;
  installationId: number;
  labels: string[];
  /** When the `queued` webhook reached us (ms since epoch): the start of pickup latency. */
  receivedAt: number;
  deliveryId: string;
}

/** How a demand's queue item ended: its runner served it (`completed`) or it ran out of launch attempts (`failed`). */
export interface DemandEnd {
  outcome: "completed" | "failed";
  /** When, in ms since the epoch. */
  at: number;
}

/** Queue job id of a demand: stable across redeliveries of the same job attempt. */
export function demandId(jobId: number, runAttempt: number): string {
  return `${jobId}-${runAttempt}`;
}
