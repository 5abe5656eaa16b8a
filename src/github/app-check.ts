import type { Logger } from "pino";
import { GitHubError, errorMessage, redact } from "../errors.ts";
import type { GitHubClient } from "./client.ts";

/** What /readyz says while GitHub refuses the App's JWT (fixed words: the detail is in the log). */
export const APP_JWT_REFUSED = "github: App JWT refused";

/** How soon a check that did not pass (refused, or GitHub unavailable) is made again. */
export const APP_RECHECK_MS = 60_000;

/**
 * One App JWT call (`GET /app`) at a worker's start, so that a wrong `github.appId` or private key
 * is said at once, not by the first job's launch: GitHub answering 401 makes the process unready
 * (APP_JWT_REFUSED) and is logged at error, until a later check passes (one that GitHub fails
 * does not end it). GitHub unreachable or failing (no answer, 5xx, a rate limit) is said at warn
 * and is no problem of the process's. Either way it is asked again every APP_RECHECK_MS until it
 * passes. Never waited for by the start.
 */
export class AppCredentialsCheck {
  readonly #github: Pick<GitHubClient, "getApp">;
  readonly #logger: Logger;
  readonly #recheckMs: number;
  readonly #stop = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #refused = false;
  /** What the last failed check said (logged when it changes). */
  #said: string | undefined;
  #running: Promise<void> | undefined;

  constructor(o: { github: Pick<GitHubClient, "getApp">; logger: Logger; recheckMs?: number }) {
    this.#github = o.github;
    this.#logger = o.logger.child({ check: "github-app" });
    this.#recheckMs = o.recheckMs ?? APP_RECHECK_MS;
  }

  /** The readiness problem, while GitHub refuses the App's JWT. */
  get problem(): typeof APP_JWT_REFUSED | undefined {
    return this.#refused ? APP_JWT_REFUSED : undefined;
  }

  /** Checks now, in the background (the first check; later ones follow while it fails). */
  start(): void {
    this.#running = this.#check();
  }

  /** No check after this; one under way is let go. */
  stop(): void {
    this.#stop.abort();
    clearTimeout(this.#timer);
  }

  /** The check under way, if any: for tests and a stop that waits. */
  get settled(): Promise<void> {
    return this.#running ?? Promise.resolve();
  }

  async #check(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    try {
      const app = await this.#github.getApp({ signal: this.#stop.signal });
      if (this.#refused || this.#said) this.#logger.info({ appId: app.id }, "GitHub accepts the App's JWT");
      this.#refused = false;
      this.#said = undefined;
      return;
    } catch (err) {
      if (this.#stop.signal.aborted) return;
      const detail = redact(errorMessage(err));
      const refused = err instanceof GitHubError && err.status === 401;
      // GitHub failing says nothing of the credentials: a refusal lasts until a check passes.
      if (refused) this.#refused = true;
      if (detail !== this.#said) {
        if (refused) this.#logger.error({ err: detail }, "GitHub refuses the App's JWT: check github.appId and github.privateKeyFile");
        else this.#logger.warn({ err: detail }, `could not check the App's credentials at GitHub (GET /app); asked again in ${this.#recheckMs / 1000} s`);
      }
      this.#said = detail;
    }
    this.#timer = setTimeout(() => (this.#running = this.#check()), this.#recheckMs);
    this.#timer.unref();
  }
}
