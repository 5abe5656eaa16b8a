import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";

/** A loopback TCP server the test can close, connections and all. */
export interface LoopbackServer {
  port: number;
  close(): Promise<void>;
}

/** A TCP server on loopback that accepts connections and never writes a byte: a hung Redis. */
export async function silentServer(): Promise<LoopbackServer> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => track(sockets, s));
  return listen(server, sockets);
}

/**
 * A loopback relay to `target` (a URL's host and port) that passes everything both ways until
 * `silence()`; from then on it passes nothing either way, and keeps the connections open (a hung
 * Redis, a half-open connection, a stalled network path), so that only the clients behind it lose
 * their server. `url` is `target` with the relay's host and port.
 */
export async function silenceableRelay(target: URL): Promise<LoopbackServer & { url: string; silence(): void }> {
  const sockets = new Set<Socket>();
  let silent = false;
  const server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      track(sockets, from);
      from.on("data", (chunk) => silent || to.write(chunk));
      from.on("close", () => to.destroy());
    }
  });
  const listening = await listen(server, sockets);
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String(listening.port);
  return { ...listening, url: url.toString(), silence: () => void (silent = true) };
}

function track(sockets: Set<Socket>, s: Socket): void {
  sockets.add(s);
  s.on("error", () => undefined);
  s.on("close", () => sockets.delete(s));
}

async function listen(server: Server, sockets: Set<Socket>): Promise<LoopbackServer> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
