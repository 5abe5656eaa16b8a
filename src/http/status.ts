import type { FastifyInstance } from "fastify";
import type { Secret } from "../config/secret.ts";
import type { StatusSnapshot } from "../state/status.ts";
import { requireBearer } from "./auth.ts";
import { CONTENT_SECURITY_POLICY, renderStatusPage } from "./status-page.ts";

export interface StatusRouteOptions {
  /** Reads the current facts (collectStatus over the real stores in production). */
  snapshot: () => Promise<StatusSnapshot>;
  /** When set, `Authorization: Bearer <token>` is required. */
  adminToken?: Secret;
}

/** GET /: the status page for operators. */
export async function statusRoutes(app: FastifyInstance, opts: StatusRouteOptions): Promise<void> {
  app.get("/", { preHandler: requireBearer(opts.adminToken, "jitrunner") }, async (_req, reply) => {
    const body = renderStatusPage(await opts.snapshot());
    return reply
      .type("text/html; charset=utf-8")
      .header("content-security-policy", CONTENT_SECURITY_POLICY)
      .header("x-content-type-options", "nosniff")
      .header("x-frame-options", "DENY")
      .header("referrer-policy", "no-referrer")
      .header("cache-control", "no-store")
      .send(body);
  });
}
