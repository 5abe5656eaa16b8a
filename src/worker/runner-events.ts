import type { Redis } from "ioredis";

type Listener = (state: "busy" | "completed") => void;

/**
 * Runner state changes published by the server (from webhooks), delivered to the worker that
 * watches that runner. One subscriber connection per worker. Pub/sub keeps nothing for a
 * subscriber that is disconnected: a watcher's `missed` is called each time the subscriber is
 * subscribed again, for it to read what it may have missed.
 */
export class RunnerEvents {
  readonly #sub: Redis;
  readonly #channel: string;
  readonly #listeners = new Map<string, { listener: Listener; missed?: () => void }>();

  constructor(subscriber: Redis, channel: string) {
    this.#sub = subscriber;
    this.#channel = channel;
    subscriber.on("message", (channel: string, message: string) => {
      if (channel !== this.#channel) return;
      try {
        const { name, state } = JSON.parse(message) as { name: string; state: "busy" | "completed" };
        this.#listeners.get(name)?.listener(state);
      } catch {
        // Not ours to fail on: a malformed message is dropped.
      }
    });
    // ioredis sends its SUBSCRIBE again before "ready" is emitted; the PING's answer comes after it.
    subscriber.on("ready", () => {
      subscriber.ping().then(
        () => this.#listeners.forEach((l) => l.missed?.()),
        () => undefined,
      );
    });
  }

  async start(): Promise<void> {
    await this.#sub.subscribe(this.#channel);
  }

  on(name: string, listener: Listener, missed?: () => void): () => void {
    this.#listeners.set(name, { listener, missed });
    return () => this.#listeners.delete(name);
  }

  async close(): Promise<void> {
    this.#sub.disconnect();
  }
}
