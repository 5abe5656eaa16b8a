/**
 * Why a worker takes no demand, or fails at it, in fixed words. `/readyz` answers without a token
 * (it serves probes and load balancers), so what it says must name no organization, repository,
 * runner group, pool, host, image, SSH fingerprint or GitHub/Docker message: those are in a
 * problem's `detail`, which the worker logs (and a demand's launch failure is on the status page,
 * behind the admin token).
 */
export const UNREADY = {
  engine: "worker: engine unreachable",
  hostTaken: "worker: host held by another process",
  takingDemand: "worker: taking demand failing",
  poolLimit: "worker: pool limit check failing",
  launches: "worker: launches failing",
  hostLoop: "worker: host reconcile failing",
} as const;

export type UnreadyReason = (typeof UNREADY)[keyof typeof UNREADY];

/** A worker problem: `reason` for anyone, `detail` for the log. */
export interface WorkerProblem {
  reason: UnreadyReason;
  detail: string;
}
