/**
 * An HTTP proxy on a unix socket in front of this machine's Docker engine, passing every request
 * through unchanged (streams too: events, waits) and counting container starts in flight, so a
 * test sees what the engine was asked at once. It can also refuse to remove chosen containers, as
 * an engine does that cannot unmount what a Docker-in-Docker container left mounted, and leave
 * chosen requests unanswered, as an engine does that hangs or whose connection silently dropped,
 * answer chosen requests with an engine's error of the test's words (a refused create, a failed
 * ping), and cut the connections of open container waits, as a dropped SSH or TCP link does.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** `POST` this: a container start. */
export const START_CONTAINER = /^\/(v[\d.]+\/)?containers\/[^/]+\/start(\?|$)/;
const REMOVE = /^\/(v[\d.]+\/)?containers\/([^/?]+)(\?|$)/;
/** `GET` this: a container list (`docker ps`). */
export const LIST_CONTAINERS = /^\/(v[\d.]+\/)?containers\/json(\?|$)/;
/** `POST` this: a container create. */
export const CREATE_CONTAINER = /^\/(v[\d.]+\/)?containers\/create(\?|$)/;
const WAIT = /^\/(v[\d.]+\/)?containers\/[^/]+\/wait(\?|$)/;
/** `GET` this: a ping. */
export const PING = /^\/(v[\d.]+\/)?_ping(\?|$)/;

/** Requests the proxy holds unanswered; see `DockerProxy.hang`. */
export interface Hang {
  /** Requests held so far. */
  readonly held: number;
  /** Requests held whose caller still waits (has not closed its connection). */
  readonly waiting: number;
  /** Holds no more; those held whose caller still waits go on to the engine. */
  release(): void;
}

/** Requests the proxy answers with an error of its own; see `DockerProxy.fail`. */
export interface Failing {
  /** Requests answered with the error so far. */
  readonly answered: number;
  /** Fails no more: from now on those requests go on to the engine. */
  stop(): void;
}

interface Failed {
  method: string;
  path: RegExp;
  status: number;
  message: string;
  answered: number;
  times: number;
}

interface Held {
  method: string;
  path: RegExp;
  held: number;
  requests: Array<{ req: IncomingMessage; res: ServerResponse }>;
}

/** Whether the caller of a held request still waits for its answer. */
function stillWaiting({ req, res }: { req: IncomingMessage; res: ServerResponse }): boolean {
  return !res.destroyed && !req.socket.destroyed;
}

export interface DockerProxy {
  socketPath: string;
  /** Most start requests the engine had not answered yet at one time, so far. */
  readonly maxStartsInFlight: number;
  readonly starts: number;
  /**
   * Containers (full ids) whose removal the engine refuses, answering 500 "device or resource
   * busy" as it does for a container whose mounts it cannot undo. Tests add and delete ids.
   */
  readonly refuseRemoval: Set<string>;
  /**
   * From now on, requests of `method` whose path matches `path` get no answer at all (the engine
   * never sees them) until the hang is released.
   */
  hang(method: string, path: RegExp): Hang;
  /**
   * From now on, requests of `method` whose path matches `path` are answered `status` (500 by
   * default) with Docker's error body, `{"message": message}`, as the engine answers a create it
   * cannot do (an image it cannot pull) or a ping it cannot serve; the engine never sees them.
   * With `times`, only that many are answered so (then it stops by itself).
   */
  fail(method: string, path: RegExp, message: string, status?: number, times?: number): Failing;
  /** Cuts the connection of every container wait open now (the engine's side stays); how many. */
  cutWaits(): number;
  close(): Promise<void>;
}

export async function startDockerProxy(engineSocket = "/var/run/docker.sock"): Promise<DockerProxy> {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-docker-proxy-"));
  const socketPath = join(dir, "docker.sock");
  const counts = { inFlight: 0, max: 0, starts: 0 };
  const refuseRemoval = new Set<string>();
  const hangs = new Set<Held>();
  const failures = new Set<Failed>();
  const waits = new Set<IncomingMessage>();
  const server: Server = createServer((req, res) => {
    const failing = [...failures].find((f) => f.method === req.method && f.path.test(req.url ?? ""));
    if (failing) {
      if (++failing.answered >= failing.times) failures.delete(failing);
      // The body (a create's spec) is not read: drained, so the connection stays usable.
      req.resume();
      res.writeHead(failing.status, { "content-type": "application/json" });
      res.end(JSON.stringify({ message: failing.message }));
      return;
    }
    const hang = [...hangs].find((h) => h.method === req.method && h.path.test(req.url ?? ""));
    if (hang) {
      hang.held++;
      hang.requests.push({ req, res });
      return;
    }
    forward(req, res);
  });
  const forward = (req: IncomingMessage, res: ServerResponse) => {
    const removing = req.method === "DELETE" ? REMOVE.exec(req.url ?? "")?.[2] : undefined;
    if (removing && refuseRemoval.has(removing)) {
      const message = `could not remove container ${removing}: unlinkat /var/lib/docker/overlay2/merged: device or resource busy`;
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ message }));
      return;
    }
    if (req.method === "POST" && WAIT.test(req.url ?? "")) {
      waits.add(req);
      req.socket.once("close", () => waits.delete(req));
    }
    const isStart = req.method === "POST" && START_CONTAINER.test(req.url ?? "");
    let open = isStart;
    if (isStart) {
      counts.starts++;
      counts.max = Math.max(counts.max, ++counts.inFlight);
    }
    const done = () => {
      if (open) counts.inFlight--;
      open = false;
    };
    const upstream = request({ socketPath: engineSocket, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
      answer.on("end", done);
    });
    upstream.on("error", (err) => {
      done();
      if (!res.headersSent) res.writeHead(502);
      res.end(String(err));
    });
    res.on("close", () => {
      done();
      upstream.destroy();
    });
    req.pipe(upstream);
  };
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    socketPath,
    get maxStartsInFlight() {
      return counts.max;
    },
    get starts() {
      return counts.starts;
    },
    refuseRemoval,
    hang: (method, path) => {
      const h: Held = { method, path, held: 0, requests: [] };
      hangs.add(h);
      return {
        get held() {
          return h.held;
        },
        get waiting() {
          return h.requests.filter(stillWaiting).length;
        },
        release: () => {
          hangs.delete(h);
          for (const r of h.requests.splice(0)) if (stillWaiting(r)) forward(r.req, r.res);
        },
      };
    },
    fail: (method, path, message, status = 500, times = Number.POSITIVE_INFINITY) => {
      const f: Failed = { method, path, status, message, answered: 0, times };
      failures.add(f);
      return {
        get answered() {
          return f.answered;
        },
        stop: () => void failures.delete(f),
      };
    },
    cutWaits: () => {
      const open = [...waits];
      for (const req of open) req.socket.destroy();
      return open.length;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
