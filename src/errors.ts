/**
 * Small coded errors. The code says what happens next: `retryable` errors are retried with
 * backoff by the queue; the others give up (and, for HTTP, map to a status).
 */
export class JitrunnerError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  constructor(code: string, message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

/** Every problem in a configuration, reported at once. */
export class ConfigError extends JitrunnerError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super("E_CONFIG", `invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.problems = problems;
  }
}

/**
 * A call to GitHub failed; `status` is the HTTP status when there was one. `answerLost`: an
 * attempt of the call may have acted at GitHub without its answer reaching us (a 5xx, 408 or no
 * answer, then retried): a JIT registration may exist though the call failed.
 */
export class GitHubError extends JitrunnerError {
  readonly status: number | undefined;
  readonly answerLost: boolean;
  constructor(message: string, status: number | undefined, opts: { retryable: boolean; cause?: unknown; answerLost?: boolean }) {
    super("E_GITHUB", message, opts);
    this.status = status;
    this.answerLost = opts.answerLost ?? false;
  }
}

/**
 * A read not sent, or not tried again, because GitHub asked its installation to wait (a rate limit,
 * shared by every process on the same Redis) until `until` (ms, this host's clock), longer than its
 * caller would wait (CallOptions.maxWaitMs). Retryable: the same call succeeds once the wait is over.
 */
export class RateLimitPausedError extends GitHubError {
  readonly installationId: number;
  readonly until: number;
  constructor(installationId: number, until: number) {
    const at = new Date(until).toISOString().slice(11, 16);
    const minutes = Math.max(1, Math.ceil((until - Date.now()) / 60_000));
    super(`installation ${installationId} is paused by GitHub's rate limit until ${at} UTC (in ${minutes} min)`, 429, { retryable: true });
    this.installationId = installationId;
    this.until = until;
  }
}

/**
 * A call given up before it was sent (its caller stopped: a worker shutting down): nothing reached
 * GitHub, so nothing needs undoing there.
 */
export class NotSentError extends JitrunnerError {
  constructor(what: string) {
    super("E_NOT_SENT", `${what}: given up before it was sent`, { retryable: true });
  }
}

/**
 * A lease's demand is no longer its own: its lock lapsed (Redis away for longer than the lease)
 * and the demand went back to the queue, or to another lease. What the lease would have recorded
 * (completed, failed, handed back) is the demand's current holder's to say.
 */
export class LeaseLostError extends JitrunnerError {
  constructor(demandId: string, cause: unknown) {
    super("E_LEASE_LOST", `the lease on demand ${demandId} lapsed: the demand is back in the queue or another lease's`, { retryable: false, cause });
  }
}

/** A start given up between its steps because a stop was asked for (StartOptions.signal). */
export class StartAbortedError extends JitrunnerError {
  constructor() {
    super("E_START_ABORTED", "the start was given up: a stop was asked for", { retryable: false });
  }
}

/**
 * The Docker engine refused or failed an operation (E_DOCKER), or this host's engine lacks what a
 * launch needs (`code`: E_IMAGE_MISSING, a pool's image not on it). Either is this host's, not the
 * job's: the demand is tried again, by another host perhaps.
 */
export class DockerError extends JitrunnerError {
  constructor(message: string, opts: { retryable?: boolean; cause?: unknown; code?: string } = {}) {
    super(opts.code ?? "E_DOCKER", message, { retryable: opts.retryable ?? true, cause: opts.cause });
  }
}

/** A launch's pool image is not on this host's Docker engine (workers never pull). */
export const IMAGE_MISSING = "E_IMAGE_MISSING";

/**
 * GitHub failed the call, not the caller: no answer (a time limit, a refused connection), 408, a
 * 5xx, or a rate limit waited out past the client's patience (403 or 429, retryable), each after
 * the client's own retries.
 */
export function githubUnavailable(err: unknown): boolean {
  if (!(err instanceof GitHubError) || !err.retryable) return false;
  const status = err.status;
  return status === undefined || status === 408 || status === 403 || status === 429 || status >= 500;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Error messages come from GitHub and Docker, not from requests, but keep anything that looks
 * like a credential out of what operators read and share (log lines, the status page, what BullMQ
 * keeps of a failure): bearer values, GitHub's tokens (`ghs_...`, dots and all) and JWTs, and long
 * token-like strings, 40 or more characters of base64 (an installation token, a JIT config, a
 * key's line). Two kinds of such runs say what
 * failed and are kept: lowercase hex (a container's id, a digest) and a lowercase path (an image's
 * or a file's), which no random token is.
 */
export function redact(message: string): string {
  return redactTokens(message.replace(/\b(bearer|basic)\s+\S+/gi, "$1 [redacted]"))
    .replace(/\b(token|authorization|secret|password)(\s*[:=]\s*)\S+/gi, "$1$2[redacted]")
    .replace(/[A-Za-z0-9+/_=-]{40,}/g, (run) => (NAMES_A_THING.test(run) ? run : "[redacted]"));
}

/** GitHub's tokens whole, dots and all (an installation token may be `ghs_APPID_` and a JWT), and JWTs, redacted. */
export function redactTokens(text: string): string {
  return text.replace(/\b(?:gh[opsur]_|github_pat_)[A-Za-z0-9_.-]+/g, "[redacted]").replace(/\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, "[redacted]");
}

/** Lowercase hex, or lowercase words with a `/` among them. */
const NAMES_A_THING = /^(?:[0-9a-f]+|[a-z0-9_-]*\/[a-z0-9/_-]*)$/;

/**
 * Redis did not take a command: the connection is down (the server's connections hold no commands
 * while it is), Redis did not answer within the connection's command timeout, or it is still
 * loading its data. Nothing after that command was done; doing it all again later is safe
 * (a webhook: GitHub's redelivery, which the `github-deliveries` loop asks for).
 */
export class RedisUnavailableError extends JitrunnerError {
  /** Why, in words of our own: never Redis's URL or reply text. */
  readonly reason: string;
  constructor(reason: string, cause: unknown) {
    super("E_REDIS_UNAVAILABLE", `Redis is unavailable (${reason})`, { retryable: true, cause });
    this.reason = reason;
  }
}

/**
 * Why `err` says that Redis is unavailable, or undefined when it says something else (a bug, a
 * WRONGTYPE reply). Matched on what ioredis and BullMQ reject a command with: they have no error
 * classes for these but ConnectionClosedError and MaxRetriesPerRequestError.
 */
export function redisUnavailableReason(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  if (err.message === "Stream isn't writeable and enableOfflineQueue options is false") return "not connected";
  if (err.message === "Command timed out") return "no answer within the command timeout";
  if (err.name === "ConnectionClosedError" || err.name === "MaxRetriesPerRequestError" || err.message.startsWith("Connection is closed")) {
    return "connection lost";
  }
  if (err.message.startsWith("LOADING ")) return "loading its data";
  return undefined;
}

/**
 * Redis answered a command with an error reply: it refuses writes (`OOM` under `noeviction`,
 * `MISCONF`, `READONLY`, `NOREPLICAS`), the connection is not authenticated (`NOAUTH`), or
 * something else went wrong in it. Nothing after that command was done; it needs Redis fixed,
 * not a reconnection, and doing it all again then is safe.
 */
export class RedisRefusedError extends JitrunnerError {
  /** The reply's error code (`OOM`, `MISCONF`, ...): never the rest of its text, which is Redis's. */
  readonly reply: string;
  constructor(reply: string, cause: unknown) {
    super("E_REDIS_REFUSED", `Redis refused the command (${reply})`, { retryable: true, cause });
    this.reply = reply;
  }
}

/**
 * The error reply Redis answered with, when `err` is one (ioredis's ReplyError): its first line,
 * without the location a script's reply ends with (`script: SHA, on @user_script:4.`), so that
 * the same refusal reads the same whichever command met it. Undefined for anything else.
 */
export function redisErrorReply(err: unknown): { code: string; message: string } | undefined {
  if (!(err instanceof Error) || err.name !== "ReplyError") return undefined;
  const message = (err.message.split("\n")[0] ?? "").replace(/ script: [0-9a-f]+, on @[\w:]+\.?$/, "").slice(0, 200);
  return { code: /^[A-Z]+(?= |$)/.exec(message)?.[0] ?? "ERR", message };
}
