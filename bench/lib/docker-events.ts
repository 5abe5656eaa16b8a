/**
 * Docker's own record of container lifecycles (create, start, die, destroy), with the engine's
 * nanosecond timestamps. Used for "runner container started" in both jitrunner's and the bare
 * baseline's numbers, so both end at the same event.
 */
import type { Readable } from "node:stream";
import type Docker from "dockerode";

export interface Lifecycle {
  id: string;
  labels: Record<string, string>;
  /** ms since the epoch, fractional */
  create?: number;
  start?: number;
  die?: number;
  destroy?: number;
}

interface RawEvent {
  Type?: string;
  Action?: string;
  id?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
  timeNano?: number;
}

const ACTIONS = ["create", "start", "die", "destroy"] as const;
type Action = (typeof ACTIONS)[number];

export class ContainerEvents {
  readonly byId = new Map<string, Lifecycle>();
  readonly #stream: Readable;
  readonly #waiters = new Set<() => void>();

  private constructor(stream: Readable) {
    this.#stream = stream;
    let buffered = "";
    stream.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line) this.#take(JSON.parse(line) as RawEvent);
      }
    });
    stream.on("error", () => undefined);
  }

  /** Starts listening for container events of containers carrying `label` (key=value). */
  static async open(docker: Docker, label: string): Promise<ContainerEvents> {
    const stream = (await docker.getEvents({
      filters: { type: ["container"], event: [...ACTIONS], label: [label] },
    })) as unknown as Readable;
    return new ContainerEvents(stream);
  }

  #take(e: RawEvent): void {
    const id = e.Actor?.ID ?? e.id;
    const action = e.Action as Action | undefined;
    if (!id || !action || !ACTIONS.includes(action) || e.timeNano === undefined) return;
    let lc = this.byId.get(id);
    if (!lc) this.byId.set(id, (lc = { id, labels: {} }));
    for (const [k, v] of Object.entries(e.Actor?.Attributes ?? {})) if (k.includes(".")) lc.labels[k] = v;
    lc[action] ??= e.timeNano / 1e6;
    for (const w of this.#waiters) w();
  }

  all(): Lifecycle[] {
    return [...this.byId.values()];
  }

  /** Resolves with fn's value once it is truthy; rejects after `timeoutMs`. */
  until<T>(fn: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const v = fn();
        if (v !== undefined && v !== false) {
          done();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  close(): void {
    this.#stream.destroy();
  }
}

/** Most containers running at the same moment, from their start and die events. */
export function maxRunning(containers: Lifecycle[]): number {
  return maxConcurrent(containers, "start", "die");
}

/**
 * Most containers at the same moment between two of their events: start -> die (running), or
 * create -> destroy (existing: what a worker's slot and a pool's place cover, and more).
 */
export function maxConcurrent(containers: Lifecycle[], from: "create" | "start", to: "die" | "destroy"): number {
  const edges: Array<[number, number]> = [];
  for (const lc of containers) {
    const a = lc[from];
    if (a === undefined) continue;
    edges.push([a, 1]);
    const b = lc[to];
    if (b !== undefined) edges.push([b, -1]);
  }
  // At equal times an end counts before a beginning.
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  for (const [, d] of edges) max = Math.max(max, (now += d));
  return max;
}
