import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { errorMessage, GitHubError } from "../errors.ts";
import type { GitHubClient, HookDelivery } from "../github/client.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { ReadResume, RedeliveryLog } from "../state/redeliveries.ts";
import { TimeUpNotice, type Loop, type PassBudget } from "./loops.ts";

export const GITHUB_DELIVERIES = "github-deliveries";

/** GitHub lets deliveries be redelivered for 3 days. */
const REDELIVERABLE_MS = 3 * 24 * 3600 * 1000;
/**
 * Each pass reads the newest deliveries down to this much before the newest one the last pass
 * read: an attempt still in flight then (GitHub waits 10 s for an answer, 30 s on GHES) may be
 * listed later, below it.
 */
const OVERLAP_MS = 60_000;
/** Pages of 100 deliveries one pass reads at most, unless set (`reconcile.deliveriesMaxPagesPerPass`). */
export const MAX_PAGES = 30;
/**
 * Redeliveries asked for one event at most, spaced out (retryDelayMs): a receiver that keeps
 * failing is not hammered, and a receiver down for up to about 23 hours still gets the event.
 */
export const MAX_REDELIVERIES_PER_EVENT = 7;
/** Failed redelivery requests (GitHub erring, rate-limiting, unreachable) for one event at most, spaced the same way. */
export const MAX_FAILED_REQUESTS_PER_EVENT = 7;
/**
 * A pass whose time limit is this far gone starts no more reads (the rest goes to redelivery
 * requests, so that slow reads cannot starve them), and at END_AT no more requests: it ends as a
 * pass stopped by its page or request limit does, its marks moved, well before it would be cut
 * off (its progress then lost with its marks).
 */
export const READ_UNTIL = 3 / 8;
export const END_AT = 3 / 4;
/** The wait before an event's second try, unless set (`reconcile.deliveriesRetrySeconds`); each wait after is 4 times the one before. */
export const RETRY_BASE_MS = 60_000;

/**
 * How long after its `n`th failure (n >= 1) an event waits before it is tried again: 1, 4, 16,
 * 64, 256 and 1,024 minutes. Seven tries span about 23 hours, well within the 3 days GitHub
 * lets a delivery be redelivered. Pure.
 */
export function retryDelayMs(n: number, baseMs: number = RETRY_BASE_MS): number {
  return baseMs * 4 ** Math.max(0, n - 1);
}

/** GitHub will not redeliver this delivery, however often asked (gone, too old, invalid). */
function refused(err: unknown): boolean {
  return err instanceof GitHubError && (err.status === 400 || err.status === 404 || err.status === 410 || err.status === 422);
}

/** A status worth another try: no answer, timeout, overload or a server error (not 4xx refusals). */
export function transientFailure(statusCode: number): boolean {
  return statusCode === 0 || statusCode === 408 || statusCode === 429 || statusCode >= 500;
}

/**
 * The events to redeliver, from one read of the App's delivery list: `workflow_job` events none
 * of whose attempts succeeded and whose latest attempt failed transiently; the latest attempt's id
 * for each. Not `waiting` ones: lost, one costs nothing (the worker's still-queued check launches
 * no runner for a job that waits for an approval), whereas redelivered after the approval it gains
 * nothing, and where the approval's `queued` left no note (it was the first of the attempt handled:
 * see DemandQueues.waitsForApproval) it would drop the demand that `queued` added, and the job
 * would wait for the queued-jobs loop. Pure.
 */
export function toRedeliver(deliveries: readonly HookDelivery[]): HookDelivery[] {
  const byGuid = new Map<string, HookDelivery[]>();
  for (const d of deliveries) byGuid.set(d.guid, [...(byGuid.get(d.guid) ?? []), d]);
  const out: HookDelivery[] = [];
  for (const attempts of byGuid.values()) {
    if (attempts.some((a) => a.statusCode >= 200 && a.statusCode < 300)) continue;
    const latest = attempts.reduce((a, b) => (b.id > a.id ? b : a));
    if (latest.event === "workflow_job" && latest.action !== "waiting" && transientFailure(latest.statusCode)) out.push(latest);
  }
  return out;
}

export interface GitHubDeliveriesDeps {
  github: Pick<GitHubClient, "listHookDeliveries" | "redeliverHookDelivery">;
  log: Pick<RedeliveryLog, "readUpTo" | "setReadUpTo" | "resume" | "setResume" | "event" | "asked" | "wait" | "failed" | "giveUp" | "settled" | "due">;
  intervalMs: number;
  /** How far back the first pass reads (capped at GitHub's 3 days). */
  windowMs: number;
  /** Redeliveries one pass asks for at most. */
  maxPerPass: number;
  /** Pages one pass reads at most (MAX_PAGES by default): the newest first, then the backlog. */
  maxPages?: number;
  metrics: Metrics;
  logger: Logger;
  /** The wait before an event's second try (RETRY_BASE_MS by default); each later one 4 times the one before. */
  retryBaseMs?: number;
  /** The time (ms); Date.now by default. */
  now?: () => number;
}

/** One page of the App's delivery list and the cursor it was read with (`undefined`: the top). */
interface Page {
  cursor: string | undefined;
  deliveries: HookDelivery[];
}

/**
 * Reads the list newest first from `cursor` (the top when undefined) down to `floor`, `maxPages`
 * pages at most, and no page but the first once `timeUp`. `next` is where the read goes on when
 * the page limit or the time (`timeUp` true) stopped it before `floor` and before the end of the
 * list. Deliveries older than `floor` are left out.
 */
async function readDown(
  github: GitHubDeliveriesDeps["github"],
  cursor: string | undefined,
  floor: number,
  maxPages: number,
  signal: AbortSignal,
  timeUp: () => boolean,
): Promise<{ pages: Page[]; next?: string; timeUp?: true }> {
  const pages: Page[] = [];
  for (let page = 0; page < maxPages; page++) {
    signal.throwIfAborted();
    if (page > 0 && timeUp()) return { pages, next: cursor, timeUp: true };
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

/** What one pass has done so far. */
interface Pass {
  /** Redelivery requests sent, accepted or not: what `maxPerPass` bounds. */
  requests: number;
  /** Redeliveries GitHub accepted. */
  asked: number;
  /** Requests that failed, as "guid: message". */
  failed: string[];
}

/**
 * Asks GitHub to redeliver `attemptId` of event `guid`, and notes the outcome. A failed request
 * is no try (nothing reached the receiver): the event waits for another request, spaced like
 * tries, up to MAX_FAILED_REQUESTS_PER_EVENT; a request GitHub refuses for good ends the event.
 * Neither ends the pass.
 */
async function ask(
  d: GitHubDeliveriesDeps,
  event: { guid: string; attemptId: number; action?: string | null; status?: number },
  pass: Pass,
  now: number,
  signal: AbortSignal,
): Promise<void> {
  const { guid, attemptId } = event;
  const log = d.logger.child({ loop: GITHUB_DELIVERIES, deliveryId: guid, attemptId });
  pass.requests++;
  try {
    await d.github.redeliverHookDelivery(attemptId, { signal });
  } catch (err) {
    if (signal.aborted) throw err;
    pass.failed.push(`${guid}: ${errorMessage(err)}`);
    if (refused(err)) {
      await d.log.giveUp(guid);
      d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_refused");
      log.warn({ err: errorMessage(err) }, "GitHub refused to redeliver a failed workflow_job delivery; passed over");
      return;
    }
    const failures = await d.log.failed(guid, randomUUID());
    if (failures >= MAX_FAILED_REQUESTS_PER_EVENT) {
      await d.log.giveUp(guid);
      d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_given_up");
      log.warn({ err: errorMessage(err), failures }, "asking GitHub to redeliver a failed workflow_job delivery failed too often; passed over");
      return;
    }
    const notBefore = now + retryDelayMs(failures, d.retryBaseMs);
    await d.log.wait(guid, attemptId, notBefore);
    d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_request_failed");
    log.warn({ err: errorMessage(err), failures, retryAt: new Date(notBefore).toISOString() }, "asking GitHub to redeliver a failed workflow_job delivery failed; asked again later");
    return;
  }
  await d.log.asked(guid, attemptId);
  pass.asked++;
  d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_redelivered");
  log.info({ action: event.action, status: event.status }, "asked GitHub to redeliver a failed workflow_job delivery");
}

/** What one pass read, for `marksAfter`. */
export interface PassRead {
  /** The mark and backlog the pass began with. */
  upTo: number;
  backlog: ReadResume | undefined;
  /** How far down the newest pages were to be read. */
  topFloor: number;
  /** The newest delivery time read (0: none). */
  newest: number;
  /** Pages read from the top, and GitHub's cursor below them if the page limit stopped that read short. */
  topPages: number;
  topNext: string | undefined;
  /** Whether the backlog was read this pass (only after the newest pages, all of them), and its cursor below the pages read. */
  olderRead: boolean;
  olderNext: string | undefined;
  /** The first page (counted from the top page, then on through the backlog's) with a failure the request limit left, and its cursor. */
  stop?: { page: number; cursor: string | undefined };
}

/**
 * The mark and backlog the next pass begins with. Every page above `stop` is done; the rest of
 * the newest pages, and the backlog's, are read again later. A gap among the newest pages joins
 * the backlog as one read from the gap down to the lower of the two floors: the pages between
 * are read twice, a cost paid only by a pass that could not finish its newest pages. Pure.
 */
export function marksAfter(r: PassRead): { upTo: number; backlog: ReadResume | undefined } {
  const upTo = Math.max(r.upTo, r.newest);
  const joined = (cursor: string): ReadResume => ({ cursor, floor: Math.min(r.topFloor, r.backlog?.floor ?? r.topFloor) });
  if (r.stop) {
    // Stopped on the top page: nothing done, the next pass reads it all again.
    if (r.stop.cursor === undefined) return { upTo: r.upTo, backlog: r.backlog };
    if (r.stop.page < r.topPages) return { upTo, backlog: joined(r.stop.cursor) };
    return { upTo, backlog: { cursor: r.stop.cursor, floor: r.backlog!.floor } };
  }
  if (r.topNext !== undefined) return { upTo, backlog: joined(r.topNext) };
  if (!r.olderRead) return { upTo, backlog: r.backlog };
  return { upTo, backlog: r.olderNext === undefined ? undefined : { cursor: r.olderNext, floor: r.backlog!.floor } };
}

/**
 * Leader loop: the App's failed webhook deliveries. GitHub never retries a failed delivery by
 * itself; this loop asks it to, for `workflow_job` events that never reached us (receiver down,
 * restarting, timed out). The redelivery carries the original X-GitHub-Delivery, and the ingress
 * acts on a delivery id once, so a redelivery of something that did arrive changes nothing.
 * One call per page of the App's list, however many repositories: the cheap first line; the
 * `github-queued` loop is the backstop for events GitHub never sent.
 *
 * An event's first redelivery is asked for at once. GitHub makes it at once, so while our
 * receiver is still down it fails too: the next try waits until that attempt failed 1 minute
 * ago, then 4, 16, 64, 256, 1,024 (retryDelayMs), MAX_REDELIVERIES_PER_EVENT tries in all
 * (about 23 hours), after which the event is passed over: a receiver that keeps failing is not
 * hammered, and one down for hours still gets its events. A waiting event is kept in Redis with
 * its time, and asked for then without the list being read that far back again. A redelivery
 * request that fails (GitHub erring, rate limiting, unreachable) counts no try: the event waits
 * the same way for another request, and the pass goes on with the others.
 *
 * The App gets a delivery for every job of its installations, GitHub-hosted ones too, so the list
 * can grow by thousands a minute. Each pass first reads the newest deliveries, down to a minute
 * before the newest one the last pass read (the first pass: the lookback window), so that a new
 * failure is found within a pass or two; then it spends the pages left on the backlog: older
 * pages not read yet (the lookback of the first pass, a gap left by a pass whose newest pages
 * took more pages than it may read, or failures left by the request limit), from GitHub's cursor
 * saved by the last pass. A pass that stops early (more pages than `maxPages`, more requests than
 * `maxPerPass`) saves the cursor of the first page it did not finish, and a later pass goes on
 * from there (its handled events are passed over then: asked for already, or waiting); so does a
 * pass whose time limit is running out (READ_UNTIL, END_AT), where one cut off at the limit would
 * move no marks (as a pass whose term lapsed must not) and the next would start over. Nothing
 * pins the read: events waiting for their time, refused (4xx) or out of tries are passed over,
 * and deliveries beyond the lookback limit end the read.
 */
export function githubDeliveriesLoop(d: GitHubDeliveriesDeps): Loop {
  const clock = d.now ?? Date.now;
  const maxPages = d.maxPages ?? MAX_PAGES;
  // Said once when the newest pages start taking more than a pass may read, and once when they fit again.
  let behind = false;
  // Said once when passes start stopping at their time limit, and once when one finishes in time again.
  const slow = new TimeUpNotice(
    d.logger.child({ loop: GITHUB_DELIVERIES }),
    "GitHub answers too slowly for a pass to finish within its time limit: each pass stops early and the next goes on from there",
    "a pass finished within its time limit again",
  );
  return {
    name: GITHUB_DELIVERIES,
    intervalMs: d.intervalMs,
    leaderOnly: true,
    async run(signal, budget?: PassBudget) {
      const now = clock();
      // Whether the pass stopped reading or asking early for time, leaving the rest to the next.
      let timeUp = false;
      /** Whether `share` of the pass's time limit is gone (never without one): then it stops early. */
      const past = (share: number): boolean => {
        if (budget === undefined || budget.leftMs() > budget.limitMs * (1 - share)) return false;
        timeUp = true;
        return true;
      };
      const readTimeUp = () => past(READ_UNTIL);
      const lookback = now - REDELIVERABLE_MS;
      const upTo = await d.log.readUpTo();
      const backlog = await d.log.resume();
      // The window bounds the first read only: after a pass, down to a little before what it read,
      // however long ago (an outage longer than the window), as far as GitHub redelivers.
      const topFloor = upTo > 0 ? Math.max(lookback, upTo - OVERLAP_MS) : now - Math.min(d.windowMs, REDELIVERABLE_MS);
      const top = await readDown(d.github, undefined, topFloor, maxPages, signal, readTimeUp);
      let older: Awaited<ReturnType<typeof readDown>> | undefined;
      if (backlog && top.next === undefined && top.pages.length < maxPages && !readTimeUp()) {
        try {
          older = await readDown(d.github, backlog.cursor, Math.max(lookback, backlog.floor), maxPages - top.pages.length, signal, readTimeUp);
        } catch (err) {
          if (cursorRefused(err)) {
            // Its pages are read again from the top: the next pass goes down to the backlog's floor.
            d.logger.warn({ loop: GITHUB_DELIVERIES, err: (err as Error).message }, "GitHub refused the saved cursor: the next pass reads from the top");
            await d.log.setReadUpTo(Math.min(upTo, backlog.floor + OVERLAP_MS));
            await d.log.setResume(undefined);
          }
          throw err;
        }
      }
      const pages = [...top.pages, ...(older?.pages ?? [])];
      // A page read twice (the backlog's top inside the newest pages) counts where it was read first.
      const pageOf = new Map<number, number>();
      pages.forEach((p, i) => p.deliveries.forEach((delivery) => pageOf.has(delivery.id) || pageOf.set(delivery.id, i)));
      const all = pages.flatMap((p) => p.deliveries);
      const newest = top.pages.flatMap((p) => p.deliveries).reduce((t, delivery) => Math.max(t, Date.parse(delivery.deliveredAt)), 0);
      await d.log.settled([...new Set(all.filter((x) => x.statusCode >= 200 && x.statusCode < 300).map((x) => x.guid))]);

      const pass: Pass = { requests: 0, asked: 0, failed: [] };
      // Out of time: the requests not made yet are left for the next pass, as those past maxPerPass are.
      const endTimeUp = () => past(END_AT);
      // Events whose wait is over first: they have waited longest.
      for (const due of await d.log.due(now, d.maxPerPass)) {
        signal.throwIfAborted();
        if (endTimeUp()) break;
        await ask(d, due, pass, now, signal);
      }
      const candidates = toRedeliver(all);
      let stoppedAt: number | undefined;
      for (const [i, delivery] of candidates.entries()) {
        if (pass.requests >= d.maxPerPass) {
          stoppedAt = i;
          break;
        }
        signal.throwIfAborted();
        const event = await d.log.event(delivery.guid);
        // Passed over: given up; its redelivery asked for, the new attempt not listed yet; waiting.
        if (event.gaveUp || event.asked >= delivery.id || event.waitingUntil !== undefined) continue;
        if (event.tries >= MAX_REDELIVERIES_PER_EVENT) {
          await d.log.giveUp(delivery.guid);
          d.metrics.reconcileAction(GITHUB_DELIVERIES, "delivery_given_up");
          d.logger.warn(
            { loop: GITHUB_DELIVERIES, deliveryId: delivery.guid, tries: event.tries, status: delivery.statusCode },
            "a failed workflow_job delivery failed again on every redelivery; passed over",
          );
          continue;
        }
        // The latest attempt is the last redelivery's: the next try waits until it failed long enough ago.
        const notBefore = event.tries === 0 ? now : Date.parse(delivery.deliveredAt) + retryDelayMs(event.tries, d.retryBaseMs);
        if (notBefore > now) {
          await d.log.wait(delivery.guid, delivery.id, notBefore);
          continue;
        }
        if (endTimeUp()) {
          stoppedAt = i;
          break;
        }
        await ask(d, { guid: delivery.guid, attemptId: delivery.id, action: delivery.action, status: delivery.statusCode }, pass, now, signal);
      }

      // Abandoned meanwhile (the term lapsed while Redis was away, or cut off at its time limit): its
      // marks are no longer this process's to move, and would overwrite the new leader's.
      signal.throwIfAborted();
      const stopPage = stoppedAt === undefined ? undefined : pageOf.get(candidates[stoppedAt]!.id)!;
      const next = marksAfter({
        upTo,
        backlog,
        topFloor,
        newest,
        topPages: top.pages.length,
        topNext: top.next,
        olderRead: older !== undefined,
        olderNext: older?.next,
        ...(stopPage === undefined ? {} : { stop: { page: stopPage, cursor: pages[stopPage]!.cursor } }),
      });
      if (next.upTo > upTo) await d.log.setReadUpTo(next.upTo);
      if (next.backlog?.cursor !== backlog?.cursor || next.backlog?.floor !== backlog?.floor) await d.log.setResume(next.backlog);
      // A first read's lookback deeper than a pass may read is a backlog, not a pass falling behind.
      if (upTo > 0 && top.next !== undefined && !top.timeUp && !behind) {
        behind = true;
        d.logger.warn(
          { loop: GITHUB_DELIVERIES, pages: maxPages },
          "the deliveries since the last pass take more pages than a pass may read: new failures are found late (raise reconcile.deliveriesMaxPagesPerPass, or run passes more often)",
        );
      } else if (top.next === undefined && behind) {
        behind = false;
        d.logger.info({ loop: GITHUB_DELIVERIES }, "the deliveries since the last pass fit in a pass's pages again");
      }
      slow.note(timeUp, { limitSeconds: Math.round((budget?.limitMs ?? 0) / 1000) });
      if (stoppedAt !== undefined || next.backlog !== undefined) {
        d.logger.info(
          {
            loop: GITHUB_DELIVERIES,
            redelivered: pass.asked,
            left: stoppedAt === undefined ? 0 : candidates.length - stoppedAt,
            unreadPages: next.backlog !== undefined,
            timeUp,
          },
          "failed deliveries left for the next pass",
        );
      }
      if (pass.failed.length > 0) throw new Error(`${pass.failed.length} of ${pass.requests} redelivery requests failed; first: ${pass.failed[0]}`);
    },
  };
}
