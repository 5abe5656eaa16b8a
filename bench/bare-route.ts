/**
 * The ingest baseline: a bare Fastify route on the same path that only reads the body (as a
 * buffer, as the real route does) and answers 202. No signature check, no parsing, no Redis.
 * Usage: node --import tsx bench/bare-route.ts PORT
 */
import Fastify from "fastify";

const port = Number(process.argv[2]);
const app = Fastify({ logger: false, bodyLimit: 25 * 1024 * 1024 });
app.removeAllContentTypeParsers();
app.addContentTypeParser("application/json", { parseAs: "buffer" }, (_req, body, done) => done(null, body));
app.post("/webhooks/github", async (req, reply) => {
  const bytes = Buffer.isBuffer(req.body) ? req.body.length : 0;
  return reply.code(202).send({ outcome: bytes > 0 ? "read" : "empty" });
});
app.get("/healthz", async () => ({ status: "ok" }));

await app.listen({ host: "127.0.0.1", port });
process.stdout.write(`bare route listening on ${port}\n`);
const stop = () => void app.close().then(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
