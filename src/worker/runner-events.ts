import type { Redis } from "ioredis";

type Listener = (state: "busy" | "completed") => void;

/**
 * Runner state changes published by the server (from webhooks), delivered to the worker that
 * watches that runner. One subscriber connection per worker.
 */
export class RunnerEvents {
  readonly #sub: Redis;
  readonly #channel: string;
  readonly #listeners = new Map<string, Listener>();

  constructor(subscriber: Redis, channel: string) {
    this.#sub = subscriber;
    this.#channel = channel;
    subscriber.on("message", (channel: string, message: string) => {
      if (channel !== this.#channel) return;
      try {
        const { name, state } = JSON.parse(message) as { name: string; state: "busy" | "completed" };
        this.#listeners.get(name)?.(state);
      } catch {
        // Not ours to fail on: a malformed message is dropped.
      }
    });
  }

  async start(): Promise<void> {
    await this.#sub.subscribe(this.#channel);
  }

  on(name: string, listener: Listener): () => void {
    this.#listeners.set(name, listener);
    return () => this.#listeners.delete(name);
  }

  async close(): Promise<void> {
    this.#sub.disconnect();
  }
}
