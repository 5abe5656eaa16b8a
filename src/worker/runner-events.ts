import type { Redis } from "ioredis";

type Listener = (state: "busy" | "completed") => void;

/** How often an idle subscriber asks Redis for a sign of life. */
export const KEEPALIVE_PING_MS = 30_000;
/** A repository GitHub made public; undefined: any may have been (messages were missed). */
type PublicizedListener = (where: { owner: string; repo: string } | undefined) => void;

/**
 * Runner state changes published by the server (from webhooks), delivered to the worker that
 * watches that runner; and repositories made public, delivered to every listener. One subscriber
 * connection per worker. Pub/sub keeps nothing for a subscriber that is disconnected: a watcher's
 * `missed`, and every publicized listener (with undefined), is called each time the subscriber is
 * subscribed again, for it to read what it may have missed.
 *
 * A subscriber sends nothing of its own, so a Redis that goes silent without FIN or RST (a
 * failover behind one name, a dropped NAT flow) would be noticed only by TCP keep-alive, about
 * 11 minutes on Linux defaults, with every event meanwhile lost. It pings every KEEPALIVE_PING_MS:
 * a ping unanswered within the connection's socket timeout (REDIS_SOCKET_TIMEOUT_MS) drops the
 * socket, and the reconnection calls `missed`.
 */
export class RunnerEvents {
  readonly #sub: Redis;
  readonly #channel: string;
  readonly #listeners = new Map<string, { listener: Listener; missed?: () => void }>();
  readonly #publicized = new Set<PublicizedListener>();
  readonly #keepAlive: NodeJS.Timeout;

  constructor(subscriber: Redis, channel: string, opts: { keepAlivePingMs?: number } = {}) {
    this.#sub = subscriber;
    this.#channel = channel;
    // Only while connected: a ping queued offline would be answered by the reconnection anyway.
    this.#keepAlive = setInterval(() => {
      if (subscriber.status === "ready") subscriber.ping().catch(() => undefined);
    }, opts.keepAlivePingMs ?? KEEPALIVE_PING_MS).unref();
    subscriber.on("message", (channel: string, message: string) => {
      if (channel !== this.#channel) return;
      try {
        const m = JSON.parse(message) as { name?: string; state?: "busy" | "completed"; publicized?: { owner?: unknown; repo?: unknown } };
        const p = m.publicized;
        if (p) {
          if (typeof p.owner === "string" && typeof p.repo === "string") this.#publicized.forEach((l) => l({ owner: p.owner as string, repo: p.repo as string }));
        } else if (m.name && m.state) {
          this.#listeners.get(m.name)?.listener(m.state);
        }
      } catch {
        // Not ours to fail on: a malformed message is dropped.
      }
    });
    // ioredis sends its SUBSCRIBE again before "ready" is emitted; the PING's answer comes after it.
    subscriber.on("ready", () => {
      subscriber.ping().then(
        () => {
          this.#listeners.forEach((l) => l.missed?.());
          this.#publicized.forEach((l) => l(undefined));
        },
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

  /** Hears of repositories GitHub made public (RunnerStore.announcePublicized). */
  onPublicized(listener: PublicizedListener): () => void {
    this.#publicized.add(listener);
    return () => this.#publicized.delete(listener);
  }

  async close(): Promise<void> {
    clearInterval(this.#keepAlive);
    this.#sub.disconnect();
  }
}
