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

  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#used = Math.max(0, this.#used - 1);
  }
}
