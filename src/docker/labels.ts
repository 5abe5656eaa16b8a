/**
 * Labels on every container jitrunner creates. Cleanup only ever touches containers that carry
 * MANAGED_BY with our value and this host's id; pool config cannot override these (they are
 * applied last).
 */
export const LABEL = {
  managedBy: "dev.jitrunner.managed-by",
  pool: "dev.jitrunner.pool",
  host: "dev.jitrunner.host",
  runnerName: "dev.jitrunner.runner-name",
  demand: "dev.jitrunner.demand",
} as const;

export const MANAGED_BY = "jitrunner";

/**
 * The network a pool's runners join with `networkMode: jitrunner-runners`: a bridge that each
 * worker makes on its engine, with traffic between its containers off. On Docker's default bridge,
 * a runner reaches every other container on the host: another repository's runner, and any port a
 * job publishes on its own engine. Not the default: on a user-defined network Docker gives
 * containers its embedded resolver (127.0.0.11), which the runner's own engine cannot pass on to
 * the containers a job starts, and they then resolve names through public DNS (moby/moby#20037).
 * Named apart from what an operator may have called a network for jitrunner itself.
 */
export const RUNNER_NETWORK = "jitrunner-runners";

export function runnerLabels(o: { pool: string; host: string; runnerName: string; demandId: string }): Record<string, string> {
  return {
    [LABEL.managedBy]: MANAGED_BY,
    [LABEL.pool]: o.pool,
    [LABEL.host]: o.host,
    [LABEL.runnerName]: o.runnerName,
    [LABEL.demand]: o.demandId,
  };
}
