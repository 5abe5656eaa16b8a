/**
 * An HTTP proxy on a unix socket in front of this machine's Docker engine, passing every request
 * through unchanged (streams too: events, waits) and counting container starts in flight, so a
 * test sees what the engine was asked at once.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

const START = /^\/(v[\d.]+\/)?containers\/[^/]+\/start(\?|$)/;

export interface DockerProxy {
  socketPath: string;
  /** Most start requests the engine had not answered yet at one time, so far. */
  readonly maxStartsInFlight: number;
  readonly starts: number;
  close(): Promise<void>;
}

export async function startDockerProxy(engineSocket = "/var/run/docker.sock"): Promise<DockerProxy> {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-docker-proxy-"));
  const socketPath = join(dir, "docker.sock");
  const counts = { inFlight: 0, max: 0, starts: 0 };
  const server: Server = createServer((req, res) => {
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
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
