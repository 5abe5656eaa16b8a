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
  /**
   * Where the runner is registered at GitHub (installation, owner, repository: empty for an
   * organization runner) and its runner id: none is a secret. A running container found with no
   * Redis record (the records lost) is retired by them, GitHub asked first: one running a job is
   * left to finish it (422), not killed.
   */
  installation: "dev.jitrunner.installation",
  owner: "dev.jitrunner.owner",
  repo: "dev.jitrunner.repo",
  runnerId: "dev.jitrunner.runner-id",
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

export function runnerLabels(
  o: { pool: string; host: string; runnerName: string; demandId: string },
  registered?: { installationId: number; owner: string; repo: string; runnerId: number },
): Record<string, string> {
  return {
    [LABEL.managedBy]: MANAGED_BY,
    [LABEL.pool]: o.pool,
    [LABEL.host]: o.host,
    [LABEL.runnerName]: o.runnerName,
    [LABEL.demand]: o.demandId,
    ...(registered && {
      [LABEL.installation]: String(registered.installationId),
      [LABEL.owner]: registered.owner,
      [LABEL.repo]: registered.repo,
      [LABEL.runnerId]: String(registered.runnerId),
    }),
  };
}

/**
 * Where a container's runner is registered, from its labels (containers made before these labels
 * carry none: installation 0, nothing to ask GitHub by).
 */
export function registeredFromLabels(labels: Record<string, string>): { installationId: number; owner: string; repo: string; runnerId?: number } {
  const installationId = Number(labels[LABEL.installation] ?? 0);
  const runnerId = Number(labels[LABEL.runnerId] ?? 0);
  const owner = labels[LABEL.owner];
  if (!Number.isSafeInteger(installationId) || installationId <= 0 || !owner) return { installationId: 0, owner: "", repo: "" };
  return { installationId, owner, repo: labels[LABEL.repo] ?? "", ...(Number.isSafeInteger(runnerId) && runnerId > 0 && { runnerId }) };
}
