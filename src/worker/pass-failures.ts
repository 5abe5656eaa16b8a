import type { Logger } from "pino";
import { errorMessage } from "../errors.ts";

/** What names the item a pass failed on in its log line: a runner, a container, a volume, a host. */
export type PassItem = Record<string, string>;

/**
 * The failures of one pass of the host loop, item by item. Each item (a container, a volume, a
 * record, a gone host) is tried on its own, so one that keeps failing (a container the engine will
 * not remove, a registration GitHub will not delete) stops none of the others, on this pass or the
 * next. Each failure is logged once, at warn, with its item; the pass then ends in one error.
 */
export class PassFailures {
  readonly #log: Logger;
  readonly #failed: string[] = [];

  constructor(log: Logger) {
    this.#log = log;
  }

  get count(): number {
    return this.#failed.length;
  }

  /** Runs `fn` for `item`; a failure is logged and noted, not thrown. Resolves whether it succeeded. */
  async attempt(item: PassItem, what: string, fn: () => Promise<void>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (err) {
      this.fail(item, what, err);
      return false;
    }
  }

  /** Notes and logs that `what` failed for `item`. */
  fail(item: PassItem, what: string, err: unknown): void {
    const message = errorMessage(err);
    this.#failed.push(`${what} (${Object.values(item).join(", ")}): ${message}`);
    this.#log.warn({ ...item, err: message }, `${what} failed; the next pass tries again`);
  }

  /** One error for the whole pass, or undefined when nothing failed. */
  summary(): Error | undefined {
    const [first] = this.#failed;
    if (first === undefined) return undefined;
    return new Error(`${this.#failed.length} ${this.#failed.length === 1 ? "item" : "items"} failed; first: ${first}`);
  }
}
