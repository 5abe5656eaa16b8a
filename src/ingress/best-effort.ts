/**
 * Writes that a webhook's answer does not wait for (operators' bookkeeping: the activity log, the
 * active-repository set), with a bound. At most `limit` are in flight; past it, the caller waits
 * for its own write, so a slow Redis slows the answers down instead of growing a backlog of
 * promises without end. A failed write is handed to `onError` and otherwise ignored: bookkeeping
 * never fails a delivery.
 */
export class BestEffortWrites {
  readonly #limit: number;
  readonly #onError: (err: unknown) => void;
  #inFlight = 0;

  constructor(limit: number, onError: (err: unknown) => void) {
    this.#limit = limit;
    this.#onError = onError;
  }

  /** Writes started and not yet settled. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Starts `write`. Undefined when the caller need not wait; over the limit, a promise that settles
   * (never rejects) with this write.
   */
  start(write: () => Promise<unknown>): Promise<void> | undefined {
    this.#inFlight++;
    let writing: Promise<unknown>;
    try {
      writing = write();
    } catch (err) {
      writing = Promise.reject(err);
    }
    const settled = writing.then(
      () => {
        this.#inFlight--;
      },
      (err: unknown) => {
        this.#inFlight--;
        this.#onError(err);
      },
    );
    return this.#inFlight > this.#limit ? settled : undefined;
  }
}
