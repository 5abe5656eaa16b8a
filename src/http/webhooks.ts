import { createHmac, timingSafeEqual } from "node:crypto";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Secret } from "../config/secret.ts";
import { RedisRefusedError, RedisUnavailableError } from "../errors.ts";
import type { Ingress } from "../ingress/ingress.ts";
import { LogThrottle } from "../log-throttle.ts";
import type { Metrics, UnverifiedOutcome } from "../metrics/metrics.ts";

export interface WebhookRouteOptions {
  secret: Secret;
  /** The secret GitHub signed with before `secret`, accepted too while a rotation is under way. */
  previousSecret?: Secret;
  bodyLimit: number;
  ingress: Ingress;
  metrics: Metrics;
  /** The clock the log of refused deliveries is rate-limited by (tests); default Date.now. */
  now?: () => number;
}

/**
 * POST /webhooks/github. A body that is not `application/json` (415) or over the body limit (413)
 * is refused before it is read; then the signature is checked over the raw bytes before anything
 * is parsed, and only verified deliveries reach the ingress. GitHub waits 10 s for an answer and
 * does not retry, so the answer comes as soon as the demand is in Redis, or, when Redis cannot
 * take it, as a 503: within the server's Redis command timeout when Redis is unavailable, at once
 * when it answers with an error (it refuses writes). GitHub records the delivery as failed, and
 * the `github-deliveries` loop has it redelivered.
 */
export async function webhookRoutes(app: FastifyInstance, opts: WebhookRouteOptions): Promise<void> {
  const secret = opts.secret.reveal();
  const previous = opts.previousSecret?.reveal();
  // Said once each: which secret GitHub signs with, while both are accepted.
  const heard = { current: false, previous: false };
  // Deliveries refused for their signature, said at warn: the first at once, then at most one line
  // per BAD_SIGNATURE_LOG_WINDOW_MS with how many since (a prober, or a GitHub that signs with
  // another secret, cannot flood the log). Never the signature or the body.
  const badSignatures = new LogThrottle({ windowMs: BAD_SIGNATURE_LOG_WINDOW_MS, ...(opts.now && { now: opts.now }) });
  const badSignatureWhy = `signature does not match github.webhookSecretFile (or JITRUNNER_GITHUB_WEBHOOK_SECRET)${
    previous ? " nor github.previousWebhookSecretFile (or JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET)" : ""
  }: GitHub signs with another secret (the App's webhook secret), or the sender is not GitHub`;
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "buffer", bodyLimit: opts.bodyLimit }, (_req, body, done) => {
    done(null, body);
  });

  // Requests refused before the handler runs (when Fastify reads the body: not JSON 415, over the
  // body limit 413, a body that does not match its Content-Length 400) are counted as unverified
  // too, so that probes of every kind that reach the route show in the metric. Those Node or
  // Fastify answer before any hook (headers Node cannot parse, its 408 request timeout, the 503
  // while the server closes) are not counted.
  const onError = async (_req: FastifyRequest, _reply: FastifyReply, err: FastifyError): Promise<void> => {
    const outcome = refusedUnread(err);
    if (outcome) opts.metrics.unverifiedDelivery(outcome);
  };

  app.post("/webhooks/github", { onError }, async (req, reply) => {
    const receivedAt = Date.now();
    const signature = header(req.headers["x-hub-signature-256"]);
    const body = req.body;
    if (!Buffer.isBuffer(body)) {
      // No Content-Type and no body: Fastify parses nothing, and the route sees no buffer.
      opts.metrics.unverifiedDelivery("unsupported_media_type");
      return reply.code(415).send({ error: "the body must be application/json" });
    }
    if (!signature) {
      opts.metrics.unverifiedDelivery("unsigned");
      return reply.code(401).send({ error: "missing X-Hub-Signature-256" });
    }
    const current = signatureMatches(secret, body, signature);
    if (!current && !(previous && signatureMatches(previous, body, signature))) {
      opts.metrics.unverifiedDelivery("bad_signature");
      const refused = badSignatures.pass("bad_signature");
      if (refused !== undefined) req.log.warn({ refused }, `${refused} webhook ${refused === 1 ? "delivery" : "deliveries"} refused: ${badSignatureWhy}`);
      return reply.code(401).send({ error: "signature does not match" });
    }
    if (previous && !heard[current ? "current" : "previous"]) {
      heard[current ? "current" : "previous"] = true;
      req.log.info(
        current
          ? "a delivery signed with the webhook secret: once GitHub signs with it only, remove github.previousWebhookSecretFile (or JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET)"
          : "a delivery signed with the previous webhook secret (github.previousWebhookSecretFile): GitHub does not sign with the new one yet",
      );
    }
    // Verified from here on, but only the body: the headers are whatever the sender put there
    // (anyone holding one signed body can send it again with other headers). The delivery id is
    // claimed once (replays are answered "replayed"); the event name picks what is done and is a
    // metric label only when the ingress acts on it (Metrics.delivery).
    const event = header(req.headers["x-github-event"]);
    const deliveryId = header(req.headers["x-github-delivery"]);
    if (!event || !EVENT_NAME.test(event)) {
      opts.metrics.delivery("other", "none", "malformed");
      return reply.code(400).send({ error: event ? "invalid X-GitHub-Event" : "missing X-GitHub-Event" });
    }
    if (!deliveryId || deliveryId.length > 100) {
      opts.metrics.delivery(event, "none", "malformed");
      return reply.code(400).send({ error: "missing or invalid X-GitHub-Delivery" });
    }
    let payload: unknown;
    try {
      payload = JSON.parse(body.toString("utf8"));
    } catch {
      opts.metrics.delivery(event, "none", "malformed");
      return reply.code(400).send({ error: "body is not valid JSON" });
    }
    let outcome: string;
    try {
      outcome = await opts.ingress.handle({ event, deliveryId, payload, receivedAt });
    } catch (err) {
      // Not taken, and nothing half-done that a redelivery would not finish (logged and counted by the ingress).
      if (err instanceof RedisUnavailableError || err instanceof RedisRefusedError) {
        return reply.code(503).send({ error: `${err.message}: the delivery was not taken; deliver it again later` });
      }
      throw err;
    }
    if (outcome === "malformed") return reply.code(400).send({ error: `not a valid ${event === "repository" ? "repository" : "workflow_job"} payload` });
    return reply.code(event === "ping" ? 200 : 202).send({ outcome });
  });
}

/**
 * The outcome of a request Fastify refused before the handler read it, or undefined for an error
 * of the handler's own (a 500: logged by the app's error handler, see buildApp).
 */
function refusedUnread(err: FastifyError): UnverifiedOutcome | undefined {
  if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") return "too_large";
  if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") return "unsupported_media_type";
  const status = err.statusCode ?? 500;
  return status >= 400 && status < 500 ? "bad_request" : undefined;
}

/** At most one line per this long says the deliveries refused for their signature since the last. */
export const BAD_SIGNATURE_LOG_WINDOW_MS = 60_000;

const SIGNATURE = /^sha256=([0-9a-f]{64})$/i;
/**
 * What GitHub sends as an event name (`workflow_job`, `ping`, `installation_repositories`,
 * `projects_v2_item`). A header sent twice reaches the route joined (Node joins a repeated header
 * with ", "): that is no event name, and is refused rather than taken for an event of another kind.
 */
const EVENT_NAME = /^[a-z0-9_]{1,64}$/;

/**
 * GitHub's `X-Hub-Signature-256`: HMAC-SHA256 of the raw body, compared in constant time (what
 * @octokit/webhooks' verify does). Computed over the bytes as received, which is what GitHub
 * signed, rather than over a decoded and re-encoded string: exact for any body, and one copy of
 * it less per delivery.
 */
function signatureMatches(secret: string, body: Buffer, header: string): boolean {
  const hex = SIGNATURE.exec(header)?.[1];
  if (!hex) return false;
  const expected = createHmac("sha256", secret).update(body).digest();
  const given = Buffer.from(hex, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
