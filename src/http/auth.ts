import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { Secret } from "../config/secret.ts";

/**
 * True when `header` is `Bearer <token>`. Both sides are hashed before the constant-time compare,
 * so neither the token's bytes nor its length leak through timing.
 */
export function bearerMatches(header: string | undefined, token: Secret): boolean {
  const match = /^Bearer +(\S+) *$/i.exec(header ?? "");
  const given = createHash("sha256").update(match?.[1] ?? "").digest();
  const wanted = createHash("sha256").update(token.reveal()).digest();
  return timingSafeEqual(given, wanted) && match !== null;
}

/**
 * A preHandler that answers 401 unless the request carries the token. Without a token configured
 * the route is open (the operator chose so; README says how to protect it).
 */
export function requireBearer(token: Secret | undefined, realm: string) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (!token || bearerMatches(req.headers.authorization, token)) return;
    await reply
      .code(401)
      .header("www-authenticate", `Bearer realm="${realm}"`)
      .header("cache-control", "no-store")
      .send({ error: "missing or wrong bearer token" });
  };
}
