import { pino, type Logger } from "pino";
import { redact } from "./errors.ts";

/** Keys whose values never reach a log line, at the top of a line's fields or one level down. */
const SECRET_KEYS = ["privateKey", "webhookSecret", "previousWebhookSecret", "token", "encoded_jit_config", "jitConfig"];
const SECRET_KEY_SET = new Set(SECRET_KEYS);
const CENSOR = "[redacted]";
/**
 * Log lines are written in batches of this many bytes, and at least once a second: a line per
 * delivery then costs no write of its own under load, and a quiet process's line waits at most a
 * second. Whatever is held when the process exits is written before it goes.
 */
const WRITE_BATCH_BYTES = 4096;
const FLUSH_EVERY_MS = 1000;

/**
 * JSON logs. Secrets are kept out by construction (Secret values print as "[redacted]", errors
 * carry GitHub's or Docker's message, never the request); censoring the known secret keys is a
 * second guard: pino's redaction at the top level (of a line's fields and of a child logger's),
 * censorNested one level down. pino's wildcard paths (`*.token`) would do the second too, at about
 * 4 µs on every line (measured: as much as the rest of the line costs). An error's text, under the
 * `err` key, is GitHub's or Docker's words: it goes through `redact` as it does on the status page.
 * `destination` (tests): where lines go, as they are made; default stdout.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "jitrunner" },
      formatters: { log: censorNested },
      serializers: { err: redactedError },
      // err.rawPacket: the bytes of a request Node's HTTP parser refused (its headers, a token's
      // among them), which Fastify logs at trace level with the error.
      redact: { paths: [...SECRET_KEYS, "req.headers.authorization", "req.headers['x-hub-signature-256']", "err.rawPacket"], censor: CENSOR },
    },
    (destination as pino.DestinationStream | undefined) ??
      pino.destination({ dest: 1, minLength: WRITE_BATCH_BYTES, periodicFlush: FLUSH_EVERY_MS }),
  );
}

/**
 * A line's `err`: a message (most lines log `errorMessage(err)`) redacted, or an Error serialized
 * as pino does by default, with its message and the stack's message lines (its own and its
 * causes') redacted; the frames (`    at ...`: paths and line numbers) are kept as they are. A Redis
 * client's error names the command it failed on: the arguments (a token the cache wrote) are left out.
 */
export function redactedError(value: unknown): unknown {
  if (typeof value === "string") return redact(value);
  if (!(value instanceof Error)) return value;
  const out = pino.stdSerializers.err(value);
  out.message = redact(out.message);
  if (typeof out.stack === "string") out.stack = out.stack.split("\n").map((l) => (FRAME.test(l) ? l : redact(l))).join("\n");
  const command = out["command"] as { name?: unknown; args?: unknown } | undefined;
  if (command && typeof command === "object") out["command"] = { name: command.name };
  return out;
}

const FRAME = /^\s+at /;

/**
 * A line's fields with every secret key inside a plain-object field censored. Copies only what
 * it changes: the caller's objects keep their values.
 */
export function censorNested(fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (!isPlainObject(value)) continue;
    let inner: Record<string, unknown> | undefined;
    for (const k of Object.keys(value)) if (SECRET_KEY_SET.has(k)) (inner ??= { ...value })[k] = CENSOR;
    if (inner) (out ??= { ...fields })[key] = inner;
  }
  return out ?? fields;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}
