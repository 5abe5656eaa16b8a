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
  /**
   * Whether the job's repository is public (isPublicRepository), as GitHub said when the job was
   * queued (its webhook, or the run the reconciler listed): an organization pool's runner group may
   * admit no public repository (see WarmExposure). Absent in demand queued before it was recorded.
   */
  publicRepository?: boolean;
  labels: string[];
  /** When the `queued` webhook reached us (ms since epoch): the start of pickup latency. */
  receivedAt: number;
  deliveryId: string;
  /**
   * Absent for the demand a `queued` webhook (or its recovery) adds; n for the nth renewal the
   * queued-jobs loop added because the runners launched before it took other jobs (see
   * github-queued's renewals): a queue item of its own for the same job.
   */
  renewal?: number;
  /**
   * True for demand a `queued` delivery added for a job attempt seen before whose item had ended or
   * is gone: GitHub queued the job again after an approval, or it is a late redelivery or a
   * captured body sent again under a new delivery id, of a job long served (or, rarely, the first
   * delivery's own add was lost after its claim). Also set on demand a `waiting` delivery kept
   * because the job was queued again first (DemandQueues.waitsForApproval). The worker asks GitHub
   * whether the job is still queued before it registers anything, as for demand that waited.
   */
  seenBefore?: true;
  /**
   * How many times a launch for it failed with GitHub unavailable and it was handed back for a
   * while with no attempt spent (Lease.postpone): each wait twice the one before.
   */
  postponed?: number;
}

/** How a demand's queue item ended: its runner served it (`completed`) or it ran out of launch attempts (`failed`). */
export interface DemandEnd {
  outcome: "completed" | "failed";
  /** When, in ms since the epoch. */
  at: number;
}

/**
 * Renewals of a job attempt's demand at most: each one is a runner launched for the job that took
 * another job (see github-queued). Past the last, a done one is added again under its own id.
 */
export const MAX_RENEWALS = 10;

/** Queue job id of a demand: stable across redeliveries of the same job attempt; a renewal has one of its own. */
export function demandId(jobId: number, runAttempt: number, renewal?: number): string {
  return renewal ? `${jobId}-${runAttempt}-r${renewal}` : `${jobId}-${runAttempt}`;
}

/** The queue job id of `demand` (see demandId). */
export function demandIdOf(demand: Pick<Demand, "jobId" | "runAttempt" | "renewal">): string {
  return demandId(demand.jobId, demand.runAttempt, demand.renewal);
}

/** The queue job ids a job attempt's demand can have: its own, then its renewals' (see MAX_RENEWALS). */
export function demandIdsOf(jobId: number, runAttempt: number): string[] {
  return Array.from({ length: MAX_RENEWALS + 1 }, (_, n) => demandId(jobId, runAttempt, n));
}
