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

/** A call to GitHub failed; `status` is the HTTP status when there was one. */
export class GitHubError extends JitrunnerError {
  readonly status: number | undefined;
  constructor(message: string, status: number | undefined, opts: { retryable: boolean; cause?: unknown }) {
    super("E_GITHUB", message, opts);
    this.status = status;
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

/** The Docker engine refused or failed an operation. */
export class DockerError extends JitrunnerError {
  constructor(message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super("E_DOCKER", message, { retryable: opts.retryable ?? true, cause: opts.cause });
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
