import type { Logger } from "pino";
import type { PoolConfig } from "../config/load.ts";
import type { Demand } from "../demand.ts";
import { errorMessage } from "../errors.ts";
import { BestEffortWrites } from "../ingress/best-effort.ts";
import type { DemandSink } from "../ingress/ingress.ts";
import type { ActiveRepos } from "../state/active-repos.ts";

/** Notes in flight at most before an answer waits for its own (see BestEffortWrites). */
const MAX_NOTES_IN_FLIGHT = 1000;

/**
 * The ingress's demand sink, noting each repository whose queued jobs it accepts as recently
 * active (what the leader's loops ask GitHub about), with the scope of the pool that took the job:
 * only an organization pool's makes the owner's organization runner list worth reading. Noting is
 * best effort and off the webhook's answer: a webhook is never refused or held up because of it.
 */
export function notingActivity(
  sink: DemandSink,
  repos: Pick<ActiveRepos, "touch">,
  pools: readonly Pick<PoolConfig, "name" | "scope">[],
  logger: Logger,
): DemandSink {
  const notes = new BestEffortWrites(MAX_NOTES_IN_FLIGHT, (err) =>
    logger.debug({ err: errorMessage(err) }, "could not note an active repository"),
  );
  const scopes = new Map(pools.map((p) => [p.name, p.scope]));
  return {
    async add(demand: Demand, claim) {
      const result = await sink.add(demand, claim);
      if (result === "replayed") return result;
      const wait = notes.start(() => repos.touch({ installationId: demand.installationId, owner: demand.owner, repo: demand.repo, scope: scopes.get(demand.pool) ?? "repository" }));
      if (wait) await wait;
      return result;
    },
    cancel: (pool, jobId, runAttempt, over) => sink.cancel(pool, jobId, runAttempt, over),
    waitsForApproval: (pool, jobId, runAttempt) => sink.waitsForApproval(pool, jobId, runAttempt),
    ended: (demand) => sink.ended(demand),
    addAgain: (demand) => sink.addAgain(demand),
  };
}
