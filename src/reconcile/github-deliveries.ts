import type { Logger } from "pino";
import { GitHubError } from "../errors.ts";
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
  log: Pick<RedeliveryLog, "readUpTo" | "setReadUpTo" | "resume" | "setResume" | "take" | "asked">;
  intervalMs: number;
  /** How far back the first pass reads (capped at GitHub's 3 days). */
  windowMs: number;
  /** Redeliveries one pass asks for at most. */
  maxPerPass: number;
  metrics: Metrics;
  logger: Logger;
}

/** One page of the App's delivery list and the cursor it was read with (`undefined`: the top). */
interface Page {
  cursor: string | undefined;
  deliveries: HookDelivery[];
}

/**
 * Reads the list newest first from `cursor` (the top when undefined) down to `floor`, MAX_PAGES
 * pages at most. `next` is where the read goes on when the page limit stopped it before `floor`
 * and before the end of the list. Deliveries older than `floor` are left out.
 */
async function readDown(
  github: GitHubDeliveriesDeps["github"],
  cursor: string | undefined,
  floor: number,
  signal: AbortSignal,
): Promise<{ pages: Page[]; next?: string }> {
  const pages: Page[] = [];
  for (let page = 0; page < MAX_PAGES; page++) {
    signal.throwIfAborted();
    const { deliveries, next } = await github.listHookDeliveries({ signal, cursor });
    const kept = deliveries.filter((d) => Date.parse(d.deliveredAt) >= floor);
    pages.push({ cursor, deliveries: kept });
    if (kept.length < deliveries.length || !next) return { pages };
    cursor = next;
  }
  return { pages, next: cursor };
}

/** A saved cursor GitHub no longer takes (it answers 400 or 422): the read starts over from the top. */
function cursorRefused(err: unknown): boolean {
  return err instanceof GitHubError && (err.status === 400 || err.status === 422);
}

/**
 * Leader loop: the App's failed webhook deliveries. GitHub never retries a failed delivery by
 * itself; this loop asks it to, for `workflow_job` events that never reached us (receiver down,
 * restarting, timed out). The redelivery carries the original X-GitHub-Delivery, and the ingress
 * acts on a delivery id once, so a redelivery of something that did arrive changes nothing.
 * One call per page of the App's list, however many repositories: the cheap first line; the
 * `github-queued` loop is the backstop for events GitHub never sent.
 *
 * Each read goes down the list, newest first, to a little before the newest delivery the last
 * complete read saw (or to the lookback limit). A backlog larger than one pass may handle (more
 * pages than MAX_PAGES, more failures than `maxPerPass`) is read over several passes: the pass
 * saves GitHub's cursor of the first page it did not finish, and the next pass goes on from there;
 * only a read that got all the way down moves the "read up to" mark. A new failure waits until
 * the backlog is through. Nothing pins the read: events refused (4xx) or already asked for 3 times
 * are passed over, and deliveries beyond the lookback limit end the read.
 */
export function githubDeliveriesLoop(d: GitHubDeliveriesDeps): Loop {
  return {
    name: GITHUB_DELIVERIES,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal) {
      const now = Date.now();
      const upTo = await d.log.readUpTo();
      const floor = Math.max(now - Math.min(d.windowMs, REDELIVERABLE_MS), upTo - OVERLAP_MS);
      const resume = await d.log.resume();
      let read: Awaited<ReturnType<typeof readDown>>;
      try {
        read = await readDown(d.github, resume?.cursor, floor, signal);
      } catch (err) {
        if (resume && cursorRefused(err)) {
          d.logger.warn({ loop: GITHUB_DELIVERIES, err: (err as Error).message }, "GitHub refused the saved cursor: the next pass reads from the top");
          await d.log.setResume(undefined);
        }
        throw err;
      }
      const pageOf = new Map<number, number>();
      read.pages.forEach((p, i) => p.deliveries.forEach((delivery) => pageOf.set(delivery.id, i)));
      const all = read.pages.flatMap((p) => p.deliveries);
      // The newest delivery time when this read began at the top (kept across the passes of one read).
      const top = resume?.top ?? all.reduce((t, delivery) => Math.max(t, Date.parse(delivery.deliveredAt)), 0);

      const candidates = toRedeliver(all);
      let asked = 0;
      let stoppedAt: number | undefined;
      for (const [i, delivery] of candidates.entries()) {
        if (asked >= d.maxPerPass) {
          stoppedAt = i;
          break;
        }
        signal.throwIfAborted();
        if (!(await d.log.take(delivery.guid, delivery.id, MAX_REDELIVERIES_PER_EVENT))) continue;
        await d.github.redeliverHookDelivery(delivery.id, { signal });
        await d.log.asked(delivery.guid, delivery.id);
        asked++;
        d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_redelivered");
        d.logger.info(
          { loop: GITHUB_DELIVERIES, deliveryId: delivery.guid, action: delivery.action, status: delivery.statusCode },
          "asked GitHub to redeliver a failed workflow_job delivery",
        );
      }

      if (stoppedAt === undefined && read.next === undefined) {
        // All the way down: the next read stops a little before what this one began with.
        if (top > upTo) await d.log.setReadUpTo(top);
        if (resume) await d.log.setResume(undefined);
        return;
      }
      // Stopped early: go on from the first page not finished (its handled events are passed over
      // then: asked for already). A page read from the top needs no cursor: the mark has not moved.
      const cursor = stoppedAt === undefined ? read.next : read.pages[pageOf.get(candidates[stoppedAt]!.id)!]!.cursor;
      await d.log.setResume(cursor === undefined ? undefined : { cursor, top });
      d.logger.info(
        {
          loop: GITHUB_DELIVERIES,
          redelivered: asked,
          left: stoppedAt === undefined ? 0 : candidates.length - stoppedAt,
          unreadPages: read.next !== undefined,
        },
        "failed deliveries left for the next pass",
      );
    },
  };
}
