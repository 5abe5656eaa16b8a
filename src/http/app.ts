import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import type { Secret } from "../config/secret.ts";
import { errorMessage } from "../errors.ts";
import type { Ingress } from "../ingress/ingress.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { requireBearer } from "./auth.ts";
import { statusRoutes, type StatusRouteOptions } from "./status.ts";
import { webhookRoutes } from "./webhooks.ts";

/**
 * How long a request may take to arrive, headers and body: one whose client sends slowly or stops
 * half-way is answered 408 and its connection closed then, instead of holding the connection and up
 * to the body limit in memory for good (Fastify turns Node's own 300 s limit off), and a stop with
 * it. GitHub gives up on a delivery after 10 s.
 */
export const REQUEST_TIMEOUT_MS = 15_000;
/** How often Node looks for requests past that time (its default, 30 s, would let one run 45 s). */
const TIMEOUT_CHECK_MS = 1_000;

export interface AppDeps {
  logger: Logger;
  metrics: Metrics;
  /** Absent in `worker` mode: no webhook route. */
  webhooks?: { secret: Secret; previousSecret?: Secret; bodyLimit: number; ingress: Ingress; now?: () => number };
  /** Problems that make this process unready (empty: ready). */
  readiness: () => Promise<string[]>;
  /** The status page at `/`; absent: no page (a worker-only process). */
  status?: StatusRouteOptions;
  /** When set, /metrics needs `Authorization: Bearer <token>`. */
  metricsToken?: Secret;
}

/** Builds the HTTP app without listening: main.ts listens, tests use inject(). */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    // No line per request: a webhook logs what it did, and nothing else needs one.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.webhooks?.bodyLimit ?? 1024 * 1024,
    return503OnClosing: true,
    requestTimeout: REQUEST_TIMEOUT_MS,
    // Node applies it only when the server is created with it (Fastify sets it afterwards, which
    // alone does nothing: measured on Node 20 and 24).
    http: { requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: TIMEOUT_CHECK_MS },
  });

  app.setErrorHandler((err: Error & { statusCode?: number }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    // The message as a string, which the logger's serializer redacts (it passes objects through).
    if (status >= 500) req.log.error({ err: errorMessage(err), code: (err as { code?: string }).code }, "request failed");
    return reply.code(status).send({ error: status >= 500 ? "internal error" : err.message });
  });

  app.get("/healthz", async () => ({ status: "ok" }));
  app.get("/readyz", async (_req, reply) => {
    const problems = await deps.readiness();
    return reply.code(problems.length ? 503 : 200).send({ status: problems.length ? "unready" : "ready", problems });
  });
  app.get("/metrics", { preHandler: requireBearer(deps.metricsToken, "jitrunner-metrics") }, async (_req, reply) => {
    const body = await deps.metrics.render();
    return reply.type("text/plain; version=0.0.4; charset=utf-8").send(body);
  });

  if (deps.webhooks) {
    await app.register(webhookRoutes, { ...deps.webhooks, metrics: deps.metrics });
  }
  if (deps.status) await app.register(statusRoutes, deps.status);
  return app;
}
