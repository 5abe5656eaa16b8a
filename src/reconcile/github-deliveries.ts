import type { Logger } from "pino";
import type { GitHubClient, HookDelivery } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { RedeliveryLog } from "../state/redeliveries.ts";
import type { Loop } from "./loops.ts";

export const GITHUB_DELIVERIES = "github-deliveries";

/** GitHub lets deliveries be redelivered for 3 days. */
const REDELIVERABLE_MS = 3 * 24 * 3600 * 1000;
/** Each pass re-reads this much before where the last one stopped (deliveries land out of order). */
const OVERLAP_MS = 10 * 60 * 1000;
const MAX_PAGES = 10;
/** Redeliveries asked for one event at most: a receiver that keeps failing is not hammered. */
export const MAX_REDELIVERIES_PER_EVENT = 3;

/** A status worth another try: no answer, timeout, overload or a server error (not 4xx refusals). */
export function transientFailure(statusCode: number): boolean {
  return statusCode === 0 || statusCode === 408 || statusCode === 429 || statusCode >= 500;
}

/**
 * The events to redeliver, from one read of the App's delivery list: `workflow_job` events none
 * of whose attempts succeeded and whose latest attempt failed transiently; the latest attempt's id
 * for each. Pure.
 */
export function toRedeliver(deliveries: readonly HookDelivery[]): HookDelivery[] {
  const byGuid = new Map<string, HookDelivery[]>();
  for (const d of deliveries) byGuid.set(d.guid, [...(byGuid.get(d.guid) ?? []), d]);
  const out: HookDelivery[] = [];
  for (const attempts of byGuid.values()) {
    if (attempts.some((a) => a.statusCode >= 200 && a.statusCode < 300)) continue;
    const latest = attempts.reduce((a, b) => (b.id > a.id ? b : a));
    if (latest.event === "workflow_job" && transientFailure(latest.statusCode)) out.push(latest);
  }
  return out;
}

export interface GitHubDeliveriesDeps {
  github: Pick<GitHubClient, "listHookDeliveries" | "redeliverHookDelivery">;
  log: Pick<RedeliveryLog, "readUpTo" | "setReadUpTo" | "take">;
  intervalMs: number;
  /** How far back the first pass reads (capped at GitHub's 3 days). */
  windowMs: number;
  /** Redeliveries one pass asks for at most. */
  maxPerPass: number;
  metrics: Metrics;
  logger: Logger;
}

/**
 * Leader loop: the App's failed webhook deliveries. GitHub never retries a failed delivery by
 * itself; this loop asks it to, for `workflow_job` events that never reached us (receiver down,
 * restarting, timed out). The redelivery carries the original X-GitHub-Delivery, and the ingress
 * acts on a delivery id once, so a redelivery of something that did arrive changes nothing.
 * One call per page of the App's list, however many repositories: the cheap first line; the
 * `github-queued` loop is the backstop for events GitHub never sent.
 */
export function githubDeliveriesLoop(d: GitHubDeliveriesDeps): Loop {
  return {
    name: GITHUB_DELIVERIES,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal) {
      const now = Date.now();
      const since = Math.max(now - Math.min(d.windowMs, REDELIVERABLE_MS), (await d.log.readUpTo()) - OVERLAP_MS);
      const read: HookDelivery[] = [];
      let newest = 0;
      let cursor: string | undefined;
      for (let page = 0; page < MAX_PAGES; page++) {
        signal.throwIfAborted();
        const { deliveries, next } = await d.github.listHookDeliveries({ signal, cursor });
        let older = false;
        for (const delivery of deliveries) {
          const at = Date.parse(delivery.deliveredAt);
          if (at < since) older = true;
          else read.push(delivery);
          if (at > newest) newest = at;
        }
        if (older || !next) break;
        cursor = next;
      }
      let asked = 0;
      for (const delivery of toRedeliver(read)) {
        if (asked >= d.maxPerPass) break;
        signal.throwIfAborted();
        if (!(await d.log.take(delivery.guid, MAX_REDELIVERIES_PER_EVENT))) continue;
        await d.github.redeliverHookDelivery(delivery.id, { signal });
        asked++;
        d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_redelivered");
        d.logger.info(
          { loop: GITHUB_DELIVERIES, deliveryId: delivery.guid, action: delivery.action, status: delivery.statusCode },
          "asked GitHub to redeliver a failed workflow_job delivery",
        );
      }
      if (newest > 0) await d.log.setReadUpTo(newest);
    },
  };
}
