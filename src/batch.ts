import type { Redis } from "ioredis";

/**
 * Gathers the calls made during one turn of the event loop and runs them together when the turn
 * ends (setImmediate). Under load, the deliveries whose requests or replies arrived together share
 * one Redis write instead of paying one each (on a loopback or virtual network, the write and the
 * wake-up it causes cost more than the command); a call made alone waits only for the end of its
 * own turn. Every call settles with its own result or its own error.
 */
export class TurnBatch<I, O> {
  readonly #run: (inputs: I[]) => Promise<Array<O | Error>>;
  readonly #max: number;
  #pending: Array<{ input: I; resolve: (out: O) => void; reject: (err: unknown) => void }> = [];

  /**
   * `run` gets the inputs of one turn, in call order, and returns one result (or Error) per input;
   * if it throws, every call of that batch rejects with that error. At most `max` inputs per batch:
   * the rest go in the next one.
   */
  constructor(run: (inputs: I[]) => Promise<Array<O | Error>>, max = 500) {
    this.#run = run;
    this.#max = max;
  }

  call(input: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      if (this.#pending.length === 0) setImmediate(() => this.#flush());
      this.#pending.push({ input, resolve, reject });
    });
  }

  #flush(): void {
    const calls = this.#pending.splice(0, this.#max);
    if (this.#pending.length > 0) setImmediate(() => this.#flush());
    let running: Promise<Array<O | Error>>;
    try {
      running = this.#run(calls.map((c) => c.input));
    } catch (err) {
      running = Promise.reject(err);
    }
    running.then(
      (results) => {
        calls.forEach((c, i) => {
          const out = results[i];
          if (out instanceof Error) c.reject(out);
          else if (i >= results.length) c.reject(new Error("batch returned fewer results than calls"));
          else c.resolve(out as O);
        });
      },
      (err: unknown) => {
        for (const c of calls) c.reject(err);
      },
    );
  }
}

/**
 * Runs `send`, which issues commands on `redis`, with the connection's socket corked until the
 * microtasks it set off have run: the commands leave in one write, as a pipeline's would, without
 * a pipeline. ioredis copies every script defined on a connection onto each pipeline or MULTI made
 * on it, and BullMQ defines some fifty on the connection it is given: measured here, about 27 µs
 * per pipeline on that connection, more than the commands of a turn's batch cost. BullMQ's add
 * writes its command a few promise steps after it is called, hence the wait; a command written
 * later than that (its connection was not ready) goes in a write of its own.
 */
export function inOneWrite<T>(redis: Redis, send: () => T): T {
  const socket = redis.status === "ready" ? redis.stream : undefined;
  if (!socket) return send();
  socket.cork();
  try {
    return send();
  } finally {
    // A tick queued from a microtask runs once the microtask queue is empty.
    queueMicrotask(() => process.nextTick(() => socket.uncork()));
  }
}
