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

export function runnerLabels(o: { pool: string; host: string; runnerName: string; demandId: string }): Record<string, string> {
  return {
    [LABEL.managedBy]: MANAGED_BY,
    [LABEL.pool]: o.pool,
    [LABEL.host]: o.host,
    [LABEL.runnerName]: o.runnerName,
    [LABEL.demand]: o.demandId,
  };
}
