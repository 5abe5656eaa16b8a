/**
 * A pass-through for the fake runner protocol (test/fakes/PROTOCOL.md) that notes when each job
 * was handed to a runner, to the millisecond. The fake's own `started_at` is GitHub's, in whole
 * seconds, which is too coarse for a job start that takes a few hundred ms. The proxy listens on a
 * unix socket in a directory of its own (mounted into runner containers in place of the fake's)
 * and forwards every request unchanged to the fake's socket; the fake decides everything.
 */
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";

const ACQUIRE = /^\/_fake\/runners\/(\d+)\/acquire$/;

export interface Acquisition {
  /** when the fake's answer handing the job over reached the proxy, ms since the epoch */
  at: number;
  runnerId: number;
}

export class RunnerProxy {
  readonly #server: Server;
  readonly dir: string;
  /** First hand-over of each job, by job id. */
  readonly acquired: ReadonlyMap<number, Acquisition>;

  private constructor(server: Server, dir: string, acquired: ReadonlyMap<number, Acquisition>) {
    this.#server = server;
    this.dir = dir;
    this.acquired = acquired;
  }

  /** Listens on `<dir>/github.sock` (the file name runner pools expect) and forwards to `target`. */
  static async start(dir: string, target: string): Promise<RunnerProxy> {
    mkdirSync(dir, { recursive: true });
    const socketPath = join(dir, "github.sock");
    rmSync(socketPath, { force: true });
    const acquired = new Map<number, Acquisition>();
    const note = (jobId: number, runnerId: number) => {
      if (!acquired.has(jobId)) acquired.set(jobId, { at: Date.now(), runnerId });
    };
    const server = createServer((req, res) => forward(req, res, target, note));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(socketPath, () => resolve());
    });
    // The runner in the container runs as uid 1001 (as the fake's own socket allows).
    chmodSync(dir, 0o777);
    chmodSync(socketPath, 0o777);
    return new RunnerProxy(server, dir, acquired);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    rmSync(join(this.dir, "github.sock"), { force: true });
  }
}

function forward(req: IncomingMessage, res: ServerResponse, target: string, onAcquired: (jobId: number, runnerId: number) => void): void {
  const acquire = ACQUIRE.exec(req.url ?? "");
  const upstream = request({ socketPath: target, path: req.url, method: req.method, headers: req.headers }, (up) => {
    const chunks: Buffer[] = [];
    up.on("data", (c: Buffer) => chunks.push(c));
    up.on("end", () => {
      const body = Buffer.concat(chunks);
      if (acquire && up.statusCode === 200) {
        const jobId = (JSON.parse(body.toString("utf8")) as { job?: { id?: unknown } }).job?.id;
        if (typeof jobId === "number") onAcquired(jobId, Number(acquire[1]));
      }
      res.writeHead(up.statusCode ?? 502, up.headers);
      res.end(body);
    });
    up.on("error", () => res.destroy());
  });
  upstream.on("error", () => {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  });
  req.pipe(upstream);
}
