// A webhook receiver for tests of the fake itself: collects deliveries and
// checks X-Hub-Signature-256 independently of @octokit/webhooks (node:crypto).
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";

export interface Received {
  headers: IncomingHttpHeaders;
  raw: string;
  payload: Record<string, unknown>;
  signatureOk: boolean;
}

export interface Receiver {
  url: string;
  received: Received[];
  /** Status to answer with (default 200). */
  status: number;
  close(): Promise<void>;
}

export function signatureOk(secret: string, raw: string, header: unknown): boolean {
  const want = Buffer.from(`sha256=${createHmac("sha256", secret).update(raw).digest("hex")}`);
  const got = Buffer.from(typeof header === "string" ? header : "");
  return got.length === want.length && timingSafeEqual(got, want);
}

export async function startReceiver(secret: string): Promise<Receiver> {
  const received: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      let payload: Record<string, unknown> = {};
      try {
        payload = JSON.parse(raw) as Record<string, unknown>;
      } catch {
        // recorded with an empty payload; the test's assertions will say so
      }
      received.push({ headers: req.headers, raw, payload, signatureOk: signatureOk(secret, raw, req.headers["x-hub-signature-256"]) });
      res.writeHead(receiver.status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const receiver: Receiver = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/webhooks/github`,
    received,
    status: 200,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return receiver;
}
