/**
 * A Docker engine of the test's own, in memory, on a unix socket: the few Engine API calls
 * jitrunner's DockerodeDriver makes (ping, container create, start, wait, inspect, remove and list,
 * volume list and remove). Its containers run nothing: they are records that "run" from their start
 * until a test stops them or jitrunner removes them. For tests of the worker that need no real
 * runner (what it launches, refuses or reports), on machines or at times where the real engine is
 * not to be touched. `refuseCreate` makes every container create fail as an engine does (500,
 * Docker's `{message}`), with the test's words in it; `failPing` does the same to pings.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

interface FakeContainer {
  id: string;
  name: string;
  labels: Record<string, string>;
  running: boolean;
  created: number;
  /** Answers to open waits, given when the container stops or goes. */
  waiters: Array<() => void>;
}

export interface FakeEngine {
  socketPath: string;
  /** When set, every container create is answered 500 with this as Docker's message. */
  refuseCreate: string | undefined;
  /** When set, every ping is answered 500 with this as Docker's message. */
  failPing: string | undefined;
  /** Containers created and not removed, by id. */
  readonly containers: ReadonlyMap<string, Readonly<FakeContainer>>;
  /** Creates asked for, refused ones included. */
  readonly creates: number;
  /** Makes a container exit (0), as a runner does after its job. */
  stop(id: string): void;
  close(): Promise<void>;
}

const API = /^\/(?:v[\d.]+\/)?(.*?)(?:\?.*)?$/;

export async function startFakeEngine(): Promise<FakeEngine> {
  const dir = mkdtempSync(join(tmpdir(), "jr-fake-engine-"));
  const socketPath = join(dir, "docker.sock");
  const containers = new Map<string, FakeContainer>();
  let creates = 0;
  let next = 1;

  const send = (res: ServerResponse, status: number, body?: unknown) => {
    if (body === undefined) return void res.writeHead(status).end();
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  };
  const ended = (c: FakeContainer) => {
    c.running = false;
    for (const w of c.waiters.splice(0)) w();
  };
  const labelled = (c: FakeContainer, filters: string | null): boolean => {
    const wanted = (JSON.parse(filters ?? "{}") as { label?: string[] }).label ?? [];
    return wanted.every((f) => {
      const [k, v] = f.split(/=(.*)/s);
      return v === undefined ? k! in c.labels : c.labels[k!] === v;
    });
  };
  const body = async (req: IncomingMessage): Promise<Record<string, unknown>> => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    return text ? (JSON.parse(text) as Record<string, unknown>) : {};
  };

  const engine: FakeEngine = {
    socketPath,
    refuseCreate: undefined,
    failPing: undefined,
    containers,
    get creates() {
      return creates;
    },
    stop(id) {
      const c = containers.get(id);
      if (c) ended(c);
    },
    close: async () => {
      for (const c of containers.values()) ended(c);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive connections of the driver would hold the close until they idle out.
      server.closeAllConnections();
      await closed;
      rmSync(dir, { recursive: true, force: true });
    },
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://engine");
    const path = API.exec(url.pathname)?.[1] ?? "";
    const method = req.method ?? "GET";
    if (method === "GET" && path === "_ping" && engine.failPing !== undefined) return send(res, 500, { message: engine.failPing });
    if (method === "GET" && path === "_ping") return void res.writeHead(200, { "content-type": "text/plain" }).end("OK");
    if (method === "GET" && path === "containers/json") {
      const list = [...containers.values()].filter((c) => labelled(c, url.searchParams.get("filters")));
      return send(
        res,
        200,
        list.map((c) => ({ Id: c.id, Names: [`/${c.name}`], Labels: c.labels, State: c.running ? "running" : "exited", Created: Math.floor(c.created / 1000), Mounts: [] })),
      );
    }
    if (method === "POST" && path === "containers/create") {
      creates++;
      const spec = await body(req);
      if (engine.refuseCreate !== undefined) return send(res, 500, { message: engine.refuseCreate });
      const id = `${(next++).toString(16).padStart(8, "0")}${"0".repeat(56)}`;
      const name = url.searchParams.get("name") ?? id.slice(0, 12);
      containers.set(id, { id, name, labels: (spec.Labels as Record<string, string> | undefined) ?? {}, running: false, created: Date.now(), waiters: [] });
      return send(res, 201, { Id: id, Warnings: [] });
    }
    if (method === "GET" && path === "volumes") return send(res, 200, { Volumes: [], Warnings: [] });
    if (method === "DELETE" && path.startsWith("volumes/")) return send(res, 404, { message: "no such volume" });
    const m = /^containers\/([^/]+)(?:\/(start|wait|json))?$/.exec(path);
    const c = m ? containers.get(m[1]!) : undefined;
    if (!m || !c) return send(res, 404, { message: `No such container: ${m?.[1] ?? path}` });
    const action = m[2];
    if (method === "POST" && action === "start") {
      c.running = true;
      return send(res, 204);
    }
    if (method === "POST" && action === "wait") {
      if (!c.running) return send(res, 200, { StatusCode: 0 });
      c.waiters.push(() => send(res, 200, { StatusCode: 0 }));
      return;
    }
    if (method === "GET" && action === "json") {
      return send(res, 200, { Id: c.id, Name: `/${c.name}`, Config: { Labels: c.labels }, State: { Running: c.running, Restarting: false, ExitCode: 0 }, Mounts: [] });
    }
    if (method === "DELETE" && action === undefined) {
      containers.delete(c.id);
      ended(c);
      return send(res, 204);
    }
    send(res, 404, { message: `fake engine: ${method} ${path} not served` });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => send(res, 500, { message: String(err) }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => resolve());
  });
  return engine;
}
