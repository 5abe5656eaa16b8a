/**
 * An HTTP proxy on a unix socket in front of this machine's Docker engine, passing every request
 * through unchanged (streams too: events, waits) and counting container starts in flight, so a
 * test sees what the engine was asked at once. It can also refuse to remove chosen containers, as
 * an engine does that cannot unmount what a Docker-in-Docker container left mounted.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

const START = /^\/(v[\d.]+\/)?containers\/[^/]+\/start(\?|$)/;
const REMOVE = /^\/(v[\d.]+\/)?containers\/([^/?]+)(\?|$)/;

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
  close(): Promise<void>;
}

export async function startDockerProxy(engineSocket = "/var/run/docker.sock"): Promise<DockerProxy> {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-docker-proxy-"));
  const socketPath = join(dir, "docker.sock");
  const counts = { inFlight: 0, max: 0, starts: 0 };
  const refuseRemoval = new Set<string>();
  const server: Server = createServer((req, res) => {
    const removing = req.method === "DELETE" ? REMOVE.exec(req.url ?? "")?.[2] : undefined;
    if (removing && refuseRemoval.has(removing)) {
      const message = `could not remove container ${removing}: unlinkat /var/lib/docker/overlay2/merged: device or resource busy`;
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ message }));
      return;
    }
    const isStart = req.method === "POST" && START.test(req.url ?? "");
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
  });
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
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
