/** A counting semaphore: the worker's runner slots, and the launcher's concurrent starts. */
export class Slots {
  readonly capacity: number;
  #used = 0;
  readonly #waiters: Array<() => void> = [];
  #watchers: Array<() => void> = [];

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  get used(): number {
    return this.#used;
  }

  get free(): number {
    return Math.max(0, this.capacity - this.#used);
  }

  async acquire(): Promise<void> {
    if (this.#used < this.capacity) {
      this.#used++;
      return;
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  /**
   * Takes a free slot if there is one beyond `reserve` and nobody waits for it; never waits.
   */
  tryAcquire(reserve = 0): boolean {
    if (this.#used + reserve >= this.capacity || this.#waiters.length > 0) return false;
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
    this.notify();
  }

  /** Resolves at the next release or notify(): the moment to look at `free` again. */
  changed(): Promise<void> {
    return new Promise<void>((resolve) => this.#watchers.push(resolve));
  }

  /** Wakes everyone waiting in changed() (a release does, and so should a stop). */
  notify(): void {
    const watchers = this.#watchers;
    this.#watchers = [];
    for (const w of watchers) w();
  }
}
