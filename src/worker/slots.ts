/** A counting semaphore: the worker's runner slots. */
export class Slots {
  readonly capacity: number;
  #used = 0;
  readonly #waiters: Array<() => void> = [];

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  get used(): number {
    return this.#used;
  }

  async acquire(): Promise<void> {
    if (this.#used < this.capacity) {
      this.#used++;
      return;
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  /** Takes a free slot if there is one and nobody waits for it; never waits. */
  tryAcquire(): boolean {
    if (this.#used >= this.capacity || this.#waiters.length > 0) return false;
    this.#used++;
    return true;
  }

  /** Takes a slot back that was handed on, even over capacity for a moment. */
  take(): void {
    this.#used++;
  }

  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#used = Math.max(0, this.#used - 1);
  }
}
