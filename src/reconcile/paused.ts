import { RateLimitPausedError } from "../errors.ts";

/**
 * How long a leader loop's GitHub read waits out its installation's rate-limit wait at most
 * (CallOptions.maxWaitMs). A primary limit's wait lasts until its window resets, up to an hour:
 * waited out, one installation out of its budget would hold every other installation's checks
 * until the pass's time limit cut it off, pass after pass. A few seconds still ride out the short
 * waits (a secondary limit's `retry-after` of a second or two).
 */
export const RECONCILE_MAX_WAIT_MS = 5_000;

/**
 * The installations one pass found paused by GitHub's rate limit (a read failed with
 * RateLimitPausedError): the pass skips the rest of their repositories and scopes, which would
 * each fail the same way, and says so once per installation instead of once per repository.
 */
export class PausedInstallations {
  readonly #paused = new Map<number, { skipped: number }>();

  /** Remembers `installationId` as paused when `err` says so; true then. */
  note(installationId: number, err: unknown): boolean {
    if (!(err instanceof RateLimitPausedError)) return false;
    if (!this.#paused.has(installationId)) this.#paused.set(installationId, { skipped: 0 });
    return true;
  }

  /** True (and counted) when the pass skips this installation's work: it was found paused. */
  skips(installationId: number): boolean {
    const p = this.#paused.get(installationId);
    if (p) p.skipped++;
    return p !== undefined;
  }

  /** What the pass skipped, for its failure's message: "" when nothing. */
  get summary(): string {
    let n = 0;
    for (const p of this.#paused.values()) n += p.skipped;
    return n === 0 ? "" : `; ${n} more skipped this pass: installation ${[...this.#paused.keys()].join(", ")} paused by GitHub's rate limit`;
  }
}
