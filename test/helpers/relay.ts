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
  let silent = false;
  const listening = await relayServer(() => connect(Number(target.port), target.hostname), { passing: () => !silent });
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String(listening.port);
  return { ...listening, url: url.toString(), silence: () => void (silent = true) };
}

/**
 * A loopback relay to `target` that passes everything both ways, but cuts one connection once
 * `cutAfter(marker)` was called: the first chunk from a client that contains `marker` goes on to
 * the server, and when the server's next bytes come, both sides are closed instead of passing
 * them (a command the server ran whose reply never came: a socket timeout, a failover, a network
 * blip). With `hold`, the connections made after that cut are closed at once until `reopen()`
 * (a Redis unreachable for a while: a client's reconnect, and what it sends again, waits for it).
 * `cuts` counts the connections cut; `url` is `target` with the relay's host and port.
 */
export async function cuttingRelay(
  target: URL,
): Promise<LoopbackServer & { url: string; cutAfter(marker: string, opts?: { hold?: boolean }): void; reopen(): void; readonly cuts: number }> {
  let marker: string | undefined;
  let hold = false;
  let held = false;
  let cuts = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    if (held) return void client.destroy();
    const upstream = connect(Number(target.port), target.hostname);
    let sent = false;
    track(sockets, client);
    track(sockets, upstream);
    client.on("data", (chunk: Buffer) => {
      if (marker !== undefined && chunk.includes(marker)) {
        marker = undefined;
        sent = true;
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (!sent) return void client.write(chunk);
      cuts++;
      held = hold;
      client.destroy();
      upstream.destroy();
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  const listening = await listen(server, sockets);
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String(listening.port);
  return {
    ...listening,
    url: url.toString(),
    cutAfter: (m, opts) => {
      marker = m;
      hold = opts?.hold ?? false;
    },
    reopen: () => void (held = false),
    get cuts() {
      return cuts;
    },
  };
}

/**
 * A TCP server on 127.0.0.1 (`port`, or any free one) that passes each connection's bytes both
 * ways to a connection of its own, `upstream()` (another address, a unix socket), while
 * `passing()` says so: what comes meanwhile is dropped. Either side closing closes the other.
 */
export async function relayServer(upstream: () => Socket, opts: { port?: number; passing?: () => boolean } = {}): Promise<LoopbackServer> {
  const sockets = new Set<Socket>();
  const passing = opts.passing ?? (() => true);
  const server = createServer((client) => {
    const other = upstream();
    for (const [from, to] of [[client, other], [other, client]] as const) {
      track(sockets, from);
      from.on("data", (chunk) => passing() && to.write(chunk));
      from.on("close", () => to.destroy());
    }
  });
  return listen(server, sockets, opts.port);
}

function track(sockets: Set<Socket>, s: Socket): void {
  sockets.add(s);
  s.on("error", () => undefined);
  s.on("close", () => sockets.delete(s));
}

async function listen(server: Server, sockets: Set<Socket>, port = 0): Promise<LoopbackServer> {
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(port, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
