import type { Logger } from "pino";
import type { Demand } from "../demand.ts";
import { errorMessage } from "../errors.ts";
import type { DemandSink } from "../ingress/ingress.ts";
import type { ActiveRepos } from "../state/active-repos.ts";

/**
 * The ingress's demand sink, noting each repository whose queued jobs it accepts as recently
 * active (what the leader's loops ask GitHub about). Noting is best effort: a webhook is never
 * refused because of it.
 */
export function notingActivity(sink: DemandSink, repos: Pick<ActiveRepos, "touch">, logger: Logger): DemandSink {
  return {
    async add(demand: Demand) {
      const result = await sink.add(demand);
      await repos
        .touch({ installationId: demand.installationId, owner: demand.owner, repo: demand.repo })
        .catch((err) => logger.debug({ err: errorMessage(err) }, "could not note an active repository"));
      return result;
    },
    cancel: (pool, demandId) => sink.cancel(pool, demandId),
  };
}
