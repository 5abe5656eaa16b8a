import { createAppAuth } from "@octokit/auth-app";
import { Octokit } from "@octokit/core";
import { throttling, type ThrottlingOptions } from "@octokit/plugin-throttling";
import { AsyncLocalStorage } from "node:async_hooks";
import { setImmediate as turn, setTimeout as delay } from "node:timers/promises";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Secret } from "../config/secret.ts";
import { Secret as SecretValue } from "../config/secret.ts";
import { GitHubError, NotSentError, RateLimitPausedError, errorMessage } from "../errors.ts";
import type { Metrics } from "../metrics/metrics.ts";
import { linkedSignal } from "../timers.ts";
import { GitHubClock, JWT_TIME_ERROR, appJwtSigner, type CreateJwt } from "./app-jwt.ts";
import { rateLimitResetPlugin, type RateLimitClock } from "./rate-limit-reset.ts";
import type {
  CallOptions,
  GitHubClient,
  HookDelivery,
  JitRequest,
  JitRunner,
  JobStatus,
  RegisteredRunner,
  RepositoryVisibility,
  RunJobsOptions,
  RunnerGroupSummary,
  RunnerScope,
  WorkflowJobSummary,
  WorkflowRunSummary,
} from "./client.ts";
import { ConcurrencyGroup, DEFAULT_CONCURRENT_CALLS, RetryScheduler, throttleSchedulers } from "./request-gates.ts";
import { RedisTokenCache } from "./token-cache.ts";
import { DEFAULT_WRITES_PER_MINUTE, SharedWriteWindow, WriteWindow, type WriteBudget, type WriteGate } from "./write-window.ts";

/** Pages read per listing at most: bounds one call of the reconciler. */
const MAX_PAGES = 20;
/** One HTTP attempt at most this long (a hung connection must not hold a launch forever). */
const ATTEMPT_TIMEOUT_MS = 30_000;
/** Rate-limited calls wait as GitHub says and retry this often at most... */
const RATE_LIMIT_RETRIES = 3;
/** ...unless told to wait longer than this: a primary window resets within the hour. */
const RATE_LIMIT_MAX_WAIT_SECONDS = 3900;
/**
 * How long after a token was minted for a refused one a 401 of the same installation retries with
 * it instead of minting again: the calls out with the refused token are answered within this.
 */
const REMINT_SHARED_MS = 30_000;
/** GitHub's message for a call the installation token has no permission for. */
const NOT_ACCESSIBLE = /^Resource not accessible by integration/i;
/**
 * A failed attempt is tried again this often at most, after 1, 4 and 9 s, when it may succeed:
 * 5xx, 408, or no answer (network error, attempt timeout). Never 409 or 422 (they carry meaning:
 * name taken, runner busy), nor 403/429 (the throttling plugin's: it waits as GitHub says), nor a
 * call its caller gave up on. @octokit/plugin-retry does the same, but through a Bottleneck
 * scheduler per call, whose timer hops added about 4 ms to every call (measured against the fake).
 * One budget per call: an installation token minted for a call is a request of its own with these
 * retries, and a call whose token could not be minted is not tried again (see mintFailed).
 */
const RETRIES = 3;
const RETRY_BASE_MS = 1000;
/** The reset fix first: its hook runs inside the throttling plugin's (see rate-limit-reset.ts). */
const JitOctokit = Octokit.plugin(rateLimitResetPlugin, throttling);
type JitOctokitInstance = InstanceType<typeof JitOctokit>;

/**
 * Set while a runner's deletion is asked for: the throttling plugin asks the write budget for a
 * write's start without its route, and a deletion is a background write there (it waits behind
 * registrations, and leaves them part of the window). It reaches the plugin's call of the budget
 * because nothing queues a call before it: the plugin's retry limiter and call groups are ours
 * (request-gates.ts), which run a call in its caller's context; Bottleneck's would not.
 */
const deleting = new AsyncLocalStorage<true>();

/**
 * The patience of the read being sent (CallOptions.maxWaitMs), for a check that runs inside the
 * throttling plugin with no sight of the call's options: the wait a call that queued behind the
 * installation's calls-at-once limit does before it starts (#calls). Reaches it as `deleting` does.
 */
const patience = new AsyncLocalStorage<number | undefined>();

export interface OctokitGitHubOptions {
  appId: number;
  privateKey: Secret;
  /** REST base: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server. */
  apiUrl: string;
  logger: Logger;
  metrics: Metrics;
  /**
   * With it, installation tokens and the write budget are shared by every process on this Redis
   * (keys under `redisPrefix`).
   */
  redis?: Redis;
  redisPrefix?: string;
  /**
   * Write starts allowed per installation in any `windowMs` (default DEFAULT_WRITES_PER_MINUTE a
   * minute), across every process on `redis` when it is given, else in this process.
   */
  writes?: { max: number; windowMs: number };
  /** Calls of one installation out at once at most, in this process (default DEFAULT_CONCURRENT_CALLS). */
  concurrentCalls?: number;
  /**
   * How long a secondary rate limit that names no wait (no `retry-after`) is waited out: GitHub
   * asks for at least a minute, the default. Tests shorten it.
   */
  secondaryLimitWaitSeconds?: number;
}

/** What a request hook sees (structurally: only what is used here). */
interface HookOptions {
  method?: string;
  url: string;
  request?: { signal?: AbortSignal };
}
interface HookResponse {
  status: number;
  headers: { date?: string; "x-ratelimit-remaining"?: string | number; "x-ratelimit-reset"?: string | number };
}

interface RequestFailure {
  status?: number;
  name?: string;
  message?: string;
  request?: { url?: string };
  response?: { headers?: Record<string, string | undefined>; data?: { message?: string } };
}

/**
 * GitHubClient over @octokit/core, built to survive real GitHub:
 * - App JWTs with a unique `jti` (two processes never send the same one) and times on GitHub's
 *   clock, learned from its Date headers (a time-claim 401 is retried once with the learned time);
 * - installation tokens from @octokit/auth-app, shared through Redis by every process; a token
 *   GitHub no longer accepts (401) is replaced and the call retried once;
 * - throttling per installation (`throttle.id`), waiting as `retry-after` / `x-ratelimit-reset`
 *   say, counted in `jitrunner_github_rate_limited_total`; the wait holds every call of the
 *   installation, reads too, in every process on the same Redis;
 * - retries on 5xx and network errors, never on 409/422 (they carry meaning: name taken, busy),
 *   and a failed token mint only by itself, not again for each attempt of its call;
 * - every route relative to `apiUrl`, so a GHES base path (`/api/v3`) is kept.
 */
export class OctokitGitHub implements GitHubClient {
  readonly #opts: OctokitGitHubOptions;
  readonly #clients = new Map<number, JitOctokitInstance>();
  readonly #clock = new GitHubClock();
  readonly #createJwt: CreateJwt;
  readonly #tokens: RedisTokenCache | undefined;
  /** The write budget of every installation this client calls for (`throttle.id` keys it). */
  readonly #writes: WriteBudget;
  /** The budget as the plugin's write group, telling it which writes are deletions (see `deleting`). */
  readonly #writeGate: WriteGate = {
    key: (id) => {
      const key = this.#writes.key(id);
      return { schedule: (options, fn) => key.schedule({ ...options, background: deleting.getStore() === true }, fn) };
    },
  };
  /** The throttling plugin's other schedulers, without Bottleneck's timer turns (see request-gates.ts). */
  readonly #calls: ConcurrencyGroup;
  // A token request is made with the App's JWT: once it has its place, it waits out a wait GitHub
  // asked of the App (a token request of any installation refused), so none queued behind the
  // refused one is sent meanwhile.
  readonly #tokenRequests = new ConcurrencyGroup(1, { before: () => this.#waitOutPause(APP_INSTALLATION, undefined, "installation token request") });
  /** One per client, as the plugin's own: each client's plugin hears only its own calls' failures. */
  readonly #retries: RetryScheduler[] = [];
  /** Runner group ids by installation/organization/name, resolved once. */
  readonly #groups = new Map<string, Promise<number>>();
  /** Aborted by close(): reads waiting out GitHub's wait fail with NotSentError. */
  readonly #closing = new AbortController();
  /** Installations a call was refused for a permission (said at warn the first time: #curable). */
  readonly #permissionRefused = new Set<number>();
  /** The last token minted for each installation because GitHub refused the one before (see #curable). */
  readonly #remints = new Map<number, { minting: Promise<unknown>; at?: number }>();
  /** Scopes whose runner list was cut at MAX_PAGES, said so once. */
  readonly #cappedScopes = new Set<string>();

  constructor(opts: OctokitGitHubOptions) {
    this.#opts = opts;
    this.#createJwt = appJwtSigner(opts.privateKey.reveal(), this.#clock);
    // A call that waited for its place behind the installation's limit, or a retry (which takes
    // none), waits out GitHub's wait once it may start: it was checked before it queued (reads in
    // #send, writes in the write budget), and a call refused meanwhile may have begun a wait, which
    // a burst queued behind the limit would otherwise all be sent into (each refusal making it
    // longer). The place of a refused call passes on before the plugin hears why it was refused:
    // a turn of the event loop first, so that its wait is heard (`limited`) when the next looks.
    this.#calls = new ConcurrencyGroup(opts.concurrentCalls ?? DEFAULT_CONCURRENT_CALLS, {
      afterWait: async (id) => {
        await turn();
        await this.#waitOut(id, undefined, "GitHub call", patience.getStore());
      },
    });
    const max = opts.writes?.max ?? DEFAULT_WRITES_PER_MINUTE;
    const windowMs = opts.writes?.windowMs ?? 60_000;
    const app = `${opts.redisPrefix ?? "jitrunner"}:github:app-${opts.appId}`;
    this.#writes = opts.redis
      ? new SharedWriteWindow(opts.redis, `${app}:writes`, max, windowMs, (err) => opts.logger.warn({ err: errorMessage(err) }, "could not share GitHub's wait through Redis"))
      : new WriteWindow(max, windowMs);
    this.#tokens = opts.redis ? new RedisTokenCache(opts.redis, `${app}:installation-token`, () => this.#clock.now()) : undefined;
  }

  close(): void {
    this.#closing.abort();
    this.#writes.close();
    for (const retries of this.#retries) retries.close();
  }

  /** Seconds GitHub's clock is ahead of this host's, as learned from its answers. */
  get clockOffsetSeconds(): number {
    return this.#clock.offsetSeconds;
  }

  #client(installationId: number): JitOctokitInstance {
    let client = this.#clients.get(installationId);
    if (client) return client;
    const { logger, metrics } = this.#opts;
    const throttleId = throttleIdOf(installationId);
    const limited =
      (kind: "primary" | "secondary") =>
      (retryAfter: number, options: { method: string; url: string; request?: ReadRequest }, _octokit: unknown, retryCount: number): boolean => {
        // A read whose caller would wait less (maxWaitMs) is not retried: #send says why it failed.
        const maxWaitMs = isRead(options.method) ? options.request?.maxWaitMs : undefined;
        const impatient = maxWaitMs !== undefined && Math.max(1, retryAfter) * 1000 > maxWaitMs;
        const again = retryCount < RATE_LIMIT_RETRIES && retryAfter <= RATE_LIMIT_MAX_WAIT_SECONDS && !impatient;
        metrics.githubRateLimited(kind, again ? "retried" : "gave_up");
        // GitHub's wait is for every request, not only the one refused: the plugin retries this one
        // after it, and no other call of this installation starts before it is over either (writes
        // wait in the write budget, reads in #send, calls queued behind the concurrency limit and
        // retries once they may start, in #calls; in every process sharing its Redis). Calls sent
        // during it are refused, and each refusal would make the wait longer (and may get the App
        // banned). The primary wait is on GitHub's clock and at least 1 s (rateLimitResetPlugin);
        // a wait of 0 still pauses calls for 1 s. A token request is the App's, made with its JWT:
        // the wait holds the App's calls, and every installation's token requests with them.
        const app = isTokenRequest(options.url);
        if (retryAfter <= RATE_LIMIT_MAX_WAIT_SECONDS) {
          this.#writes.pause(app ? throttleIdOf(APP_INSTALLATION) : throttleId, Math.max(1, retryAfter) * 1000);
        }
        logger.warn(
          { route: options.url, method: options.method, installationId: app ? APP_INSTALLATION : installationId, retryAfter, retryCount },
          again
            ? `GitHub ${kind} rate limit: waiting ${retryAfter} s as told, then retrying`
            : impatient
              ? `GitHub ${kind} rate limit: giving up on this call, whose caller waits ${maxWaitMs / 1000} s at most (the installation's other calls wait ${retryAfter} s)`
              : `GitHub ${kind} rate limit: giving up on this call`,
        );
        return again;
      };
    // A token request that failed (retried by itself already) fails the call that needed it: its
    // rate limit is not the call's to wait out or to retry.
    const retries = new RetryScheduler((err, args) => !mintFailed(args[2] as HookOptions, err as RequestFailure));
    this.#retries.push(retries);
    client = new JitOctokit({
      baseUrl: this.#opts.apiUrl.replace(/\/+$/, ""),
      authStrategy: createAppAuth,
      auth: {
        appId: this.#opts.appId,
        createJwt: this.#createJwt,
        // Installation 0: the App itself (App JWT routes such as /app/hook/deliveries).
        ...(installationId ? { installationId } : {}),
        ...(this.#tokens ? { cache: this.#tokens } : {}),
      },
      userAgent: "jitrunner",
      request: { fetch: fetchWithTimeout },
      githubClock: { observe: (date) => this.#observeClock(date), now: () => this.#clock.now() } satisfies RateLimitClock,
      log: { debug: () => {}, info: () => {}, warn: (m: string) => logger.warn(m), error: (m: string) => logger.error(m) },
      throttle: {
        id: throttleId,
        // The plugin only calls `key(id).schedule(options, fn)` on its write group (WriteGate).
        write: this.#writeGate as unknown as NonNullable<ThrottlingOptions["write"]>,
        ...throttleSchedulers({ global: this.#calls, auth: this.#tokenRequests, retryLimiter: retries }),
        onRateLimit: limited("primary"),
        onSecondaryRateLimit: limited("secondary"),
        ...(this.#opts.secondaryLimitWaitSeconds !== undefined && { fallbackSecondaryRateRetryAfter: this.#opts.secondaryLimitWaitSeconds }),
      },
    });
    const c = client;
    // Outermost: sees every call's final answer, token requests included (auth-app sends them through the same hooks).
    client.hook.wrap("request", (request, options) => this.#send(installationId, c, request, options));
    this.#clients.set(installationId, client);
    return client;
  }

  /**
   * One call: metrics, GitHub's clock, one retry after a 401 that a new JWT or token cures, and
   * retries with backoff of failures that may pass (see RETRIES).
   */
  async #send<O extends HookOptions, R extends HookResponse>(
    installationId: number,
    client: JitOctokitInstance,
    request: (options: O) => R | Promise<R>,
    options: O,
  ): Promise<R> {
    const signal = options.request?.signal;
    const read = isRead(options.method);
    // How long a read may wait out its installation's rate-limit wait (CallOptions.maxWaitMs).
    const maxWaitMs = read ? (options.request as ReadRequest | undefined)?.maxWaitMs : undefined;
    // A read whose caller gives up is let go at once while no attempt of it is out: while its
    // installation's token is being minted (the token request waits, out a wait GitHub asked of
    // the App, up to an hour, or through its own retries, in a gate no caller's signal reaches),
    // or while the throttling plugin waits out a rate limit its attempt was refused for. Once out,
    // the signal aborts the attempt's fetch itself, which fails as unanswered.
    const sending: Sending = { sent: false, lost: false };
    if (read && signal) {
      // In place: the hooks inside this one are bound to this very object (before-after-hook).
      options.request = { ...options.request, fetch: notingFetch(sending, signal, "GitHub read") } as HookOptions["request"];
    }
    const orGivenUp = <T>(call: () => Promise<T>): Promise<T> => {
      sending.sent = false;
      return read ? untilGivenUp("GitHub read", signal, sending, call) : call();
    };
    let cured = false;
    for (let retry = 0; ; retry++) {
      // Writes wait out GitHub's wait in the write budget (inside the throttling plugin); token
      // requests in their gate (#tokenRequests); reads here.
      if (read) await this.#waitOutPause(installationId, signal, "GitHub read", maxWaitMs);
      try {
        return this.#answered(installationId, options, await orGivenUp(async () => patience.run(maxWaitMs, () => request(options))));
      } catch (err) {
        // Never sent (its caller gave up, the client closed, or would not wait): no answer to count, nothing to retry.
        if (notSent(err) || err instanceof RateLimitPausedError) throw err;
        const failure = err as RequestFailure;
        this.#failed(options, failure);
        // Refused for a rate limit, and not retried because its caller would not wait that long
        // (see `limited`): said as the wait it began, which holds the installation's other calls.
        if (maxWaitMs !== undefined && rateLimited(failure)) {
          const ms = await this.#writes.pausedFor(throttleIdOf(installationId));
          if (ms > maxWaitMs) throw new RateLimitPausedError(installationId, Date.now() + ms);
        }
        if (!cured && !signal?.aborted && (await orGivenUp(() => this.#curable(installationId, client, failure)))) {
          cured = true;
          continue;
        }
        // A failed token mint has had its own retries (it went through this hook itself): retrying
        // the call would mint again for each of its attempts, 16 token requests over about 70 s
        // where GitHub is unreachable, instead of 4 over 14 s.
        if (retry >= RETRIES || signal?.aborted || !transient(failure) || mintFailed(options, failure)) throw err;
        const waited = await delay((retry + 1) ** 2 * RETRY_BASE_MS, true, { signal }).catch(() => false);
        if (!waited) throw err;
      }
    }
  }

  /**
   * Waits until no wait GitHub asked for holds `installationId`'s calls (in any process sharing
   * the write budget's Redis), for RATE_LIMIT_MAX_WAIT_SECONDS at most: a longer one fails the call
   * at once as rate limited (as a refused call told to wait that long gives up), and so does one
   * longer than `maxWaitMs`, the caller's patience, with RateLimitPausedError. A caller that gives
   * up meanwhile (`signal`), or the client closing, ends the wait in NotSentError: nothing was sent.
   */
  #waitOutPause(installationId: number, signal: AbortSignal | undefined, what = "GitHub read", maxWaitMs?: number): Promise<void> {
    return this.#waitOut(throttleIdOf(installationId), signal, what, maxWaitMs);
  }

  /** #waitOutPause, by the installation's throttle id. */
  async #waitOut(id: string, signal: AbortSignal | undefined, what: string, maxWaitMs?: number): Promise<void> {
    let waited = 0;
    for (;;) {
      if (signal?.aborted || this.#closing.signal.aborted) throw new NotSentError(what);
      const ms = await this.#writes.pausedFor(id);
      if (ms <= 0) return;
      if (maxWaitMs !== undefined && waited + ms > maxWaitMs) throw new RateLimitPausedError(installationOf(id), Date.now() + ms);
      if (waited + ms > RATE_LIMIT_MAX_WAIT_SECONDS * 1000) {
        throw new GitHubError(`rate limited: GitHub asked to wait ${Math.ceil(ms / 1000)} s more`, 429, { retryable: true });
      }
      // Linked only while waiting, and let go after (see linkedSignal).
      const stop = linkedSignal([signal, this.#closing.signal]);
      const done = await delay(ms, true, { signal: stop.signal })
        .catch(() => false)
        .finally(stop.dispose);
      if (!done) throw new NotSentError(what);
      waited += ms;
    }
  }

  #answered<R extends HookResponse>(installationId: number, options: HookOptions, response: R): R {
    const { metrics } = this.#opts;
    metrics.githubRequest(String(options.url), response.status);
    const remaining = Number(response.headers["x-ratelimit-remaining"]);
    this.#observeClock(response.headers.date);
    // A token request goes through an installation's client but is made with the App's JWT: its
    // counters are not the installation's (GitHub does not document which budget they describe).
    if (Number.isFinite(remaining) && !isTokenRequest(options.url)) {
      const reset = Number(response.headers["x-ratelimit-reset"]);
      const resetsAtMs = Number.isFinite(reset) ? reset * 1000 - this.#clock.offsetSeconds * 1000 : undefined;
      metrics.githubRateLimitRemaining(installationId, remaining, resetsAtMs);
    }
    return response;
  }

  #failed(options: HookOptions, err: RequestFailure): void {
    // A token request goes through this hook too: its failure is counted there, not again as the
    // failure of the call that needed the token.
    // No answer is counted as status 0 (the metric's "no response"), not as octokit's 500 for it.
    if (!mintFailed(options, err)) this.#opts.metrics.githubRequest(String(options.url), unanswered(err) ? 0 : (err.status ?? 0));
    this.#observeClock(err.response?.headers?.date);
  }

  #observeClock(date: string | undefined): void {
    const offset = this.#clock.observe(date);
    if (offset !== undefined) {
      this.#opts.logger.warn({ offsetSeconds: offset }, "GitHub's clock differs from this host's; App JWTs follow GitHub's");
    }
  }

  /**
   * True when a retry can succeed: a JWT refused for its times (the clock is learned now), a token
   * GitHub no longer takes, or one minted before the installation had the permission (see below).
   */
  async #curable(installationId: number, client: JitOctokitInstance, err: RequestFailure): Promise<boolean> {
    const message = err.response?.data?.message ?? err.message ?? "";
    if (err.status === 403 && NOT_ACCESSIBLE.test(message)) {
      // A token keeps the permissions its installation had when it was minted, and ours are shared
      // (Redis) for most of their hour: an operator who grants the App the permission a call
      // lacked (the owner accepting its new permissions) would see the refusals go on for up to an
      // hour, restarts or not. A permission still missing costs a token request a while, not one
      // per call; said at warn the first time for the installation, then at debug.
      if (installationId === APP_INSTALLATION) return false;
      const first = !this.#permissionRefused.has(installationId);
      this.#permissionRefused.add(installationId);
      return this.#remint(installationId, client, () =>
        this.#opts.logger[first ? "warn" : "debug"](
          { installationId },
          "GitHub refused a call as not accessible to the installation (a permission the App lacks, or lacked when its token was minted); minting a new token and trying once more",
        ),
      );
    }
    if (err.status !== 401) return false;
    if (JWT_TIME_ERROR.test(message)) return true;
    if (installationId === APP_INSTALLATION || isTokenRequest(err.request?.url)) return false;
    // Revoked or expired early: mint a new one (and share it) instead of failing for the rest of its life.
    return this.#remint(installationId, client, () => this.#opts.logger.warn({ installationId }, "GitHub refused the installation token; minting a new one"));
  }

  /**
   * Mints a new token for the installation (and shares it), once per refusal, not per call
   * refused: the calls that were out with the refused token get their refusals over a while, and
   * each minting again would cost a token request apiece. A call refused within REMINT_SHARED_MS
   * of a mint waits for it and retries with its token (a call is retried once, then fails).
   */
  async #remint(installationId: number, client: JitOctokitInstance, say: () => void): Promise<boolean> {
    const last = this.#remints.get(installationId);
    if (last && (last.at === undefined || performance.now() - last.at < REMINT_SHARED_MS)) {
      await last.minting;
      return true;
    }
    say();
    const remint: { minting: Promise<unknown>; at?: number } = { minting: client.auth({ type: "installation", refresh: true }) };
    this.#remints.set(installationId, remint);
    try {
      await remint.minting;
    } catch (err) {
      if (this.#remints.get(installationId) === remint) this.#remints.delete(installationId);
      throw err;
    }
    remint.at = performance.now();
    return true;
  }

  async generateJitConfig(scope: RunnerScope, req: JitRequest, opts: CallOptions = {}): Promise<JitRunner> {
    // The group's lookup is shared by every launch that needs it, so it takes no caller's signal: a
    // caller that gives up (a stop) while it waits (out a rate limit, say) ends at once, unsent.
    const groupId =
      req.runnerGroup === undefined
        ? (req.runnerGroupId ?? 1)
        : await untilGivenUp("generate JIT config", opts.signal, { sent: false, lost: false }, () => this.#runnerGroupId(scope, req.runnerGroup!));
    // Labels as given: a JIT runner gets exactly these (GitHub adds no defaults to it).
    const body = { name: req.name, labels: req.labels, runner_group_id: groupId, work_folder: "_work", request: unlessGivenUp(opts.signal) };
    try {
      const res = await untilGivenUp("generate JIT config", opts.signal, body.request, () =>
        this.#call("generate JIT config", () =>
          scope.repo
            ? this.#client(scope.installationId).request("POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig", {
                owner: scope.owner,
                repo: scope.repo,
                ...body,
              })
            : this.#client(scope.installationId).request("POST /orgs/{org}/actions/runners/generate-jitconfig", {
                org: scope.owner,
                ...body,
              }),
        ),
      );
      return { runnerId: res.data.runner.id, encodedJitConfig: new SecretValue(res.data.encoded_jit_config) };
    } catch (err) {
      // A group resolved by name may have been deleted or renamed since: resolve it again next time.
      if (req.runnerGroup !== undefined && err instanceof GitHubError && (err.status === 404 || err.status === 422)) {
        this.#groups.delete(groupKey(scope, req.runnerGroup));
      }
      // An attempt whose answer was lost may have registered the runner: said so, for its caller to
      // delete it by name (no runner id came back). Also when the call was then given up before a
      // retry went out: not "never sent".
      if (body.request.lost && (err instanceof GitHubError || err instanceof NotSentError)) {
        // A 409 then is that attempt's own name, not the job's fault: the launch may be tried again.
        if (err instanceof GitHubError) throw new GitHubError(err.message, err.status, { retryable: err.retryable || err.status === 409, cause: err, answerLost: true });
        throw new GitHubError("generate JIT config failed: given up after an attempt whose answer was lost", undefined, { retryable: true, cause: err, answerLost: true });
      }
      throw err;
    }
  }

  /** A runner group's id from its name (GET /orgs/{org}/actions/runner-groups), once per organization. */
  #runnerGroupId(scope: RunnerScope, name: string): Promise<number> {
    if (scope.repo) {
      return Promise.reject(new GitHubError(`runner group '${name}': runner groups are for organization runners only`, undefined, { retryable: false }));
    }
    const key = groupKey(scope, name);
    let id = this.#groups.get(key);
    if (!id) {
      id = this.#findRunnerGroup(scope, name);
      this.#groups.set(key, id);
      id.catch(() => this.#groups.delete(key));
    }
    return id;
  }

  async #findRunnerGroup(scope: RunnerScope, name: string): Promise<number> {
    const seen = await this.#listRunnerGroups(scope);
    const found = groupNamed(seen, name);
    if (!found) {
      const known = seen.map((g) => g.name).join(", ");
      throw new GitHubError(`runner group '${name}' does not exist in organization ${scope.owner} (it has: ${known})`, 404, { retryable: false });
    }
    this.#opts.logger.info({ org: scope.owner, runnerGroup: name, runnerGroupId: found.id }, "runner group resolved");
    return found.id;
  }

  /** Every runner group of the scope's organization (all pages, up to MAX_PAGES). */
  async #listRunnerGroups(scope: RunnerScope, opts: CallOptions = {}): Promise<RunnerGroupSummary[]> {
    const client = this.#client(scope.installationId);
    const seen: RunnerGroupSummary[] = [];
    for (let page = 1; page <= MAX_PAGES; page++) {
      const res = await this.#call("list runner groups", () =>
        client.request("GET /orgs/{org}/actions/runner-groups", { org: scope.owner, per_page: 100, page, request: readRequest(opts) }),
      );
      seen.push(
        ...res.data.runner_groups.map((g) => ({
          id: g.id,
          name: g.name,
          allowsPublicRepositories: g.allows_public_repositories,
          visibility: g.visibility,
          restrictedToWorkflows: g.restricted_to_workflows ?? false,
          selectedWorkflows: g.selected_workflows ?? [],
        })),
      );
      if (res.data.runner_groups.length < 100 || seen.length >= res.data.total_count) break;
    }
    return seen;
  }

  async getRunnerGroup(scope: RunnerScope, group: { id: number } | { name: string }, opts: CallOptions = {}): Promise<RunnerGroupSummary | undefined> {
    if (scope.repo) throw new GitHubError("runner groups are for organization runners only", undefined, { retryable: false });
    const seen = await this.#listRunnerGroups(scope, opts);
    if ("id" in group) return seen.find((g) => g.id === group.id);
    const found = groupNamed(seen, group.name);
    // The registration's look-up by name, spared: the worker asks this just before it registers.
    // Always the id found now: a group renamed since, and another made under its name, must not
    // have runners registered in the old one, which the worker did not check.
    if (found) this.#groups.set(groupKey(scope, group.name), Promise.resolve(found.id));
    return found;
  }

  async listRunnerGroupRepositories(scope: RunnerScope, groupId: number, opts: CallOptions = {}): Promise<{ names: string[]; complete: boolean }> {
    if (scope.repo) throw new GitHubError("runner groups are for organization runners only", undefined, { retryable: false });
    const client = this.#client(scope.installationId);
    const names: string[] = [];
    for (let page = 1; page <= MAX_PAGES; page++) {
      const res = await this.#call("list runner group repositories", () =>
        client.request("GET /orgs/{org}/actions/runner-groups/{runner_group_id}/repositories", {
          org: scope.owner,
          runner_group_id: groupId,
          per_page: 100,
          page,
          request: readRequest(opts),
        }),
      );
      names.push(...res.data.repositories.map((r) => r.name));
      if (res.data.repositories.length < 100 || names.length >= res.data.total_count) return { names, complete: true };
    }
    return { names, complete: false };
  }

  async getRepositoryVisibility(installationId: number, owner: string, repo: string, opts: CallOptions = {}): Promise<RepositoryVisibility> {
    const res = await this.#call("get repository", () =>
      this.#client(installationId).request("GET /repos/{owner}/{repo}", { owner, repo, request: readRequest(opts) }),
    );
    return { private: res.data.private, ...(res.data.visibility ? { visibility: res.data.visibility } : {}) };
  }

  async deleteRunner(scope: RunnerScope, runnerId: number): Promise<"deleted" | "not_found" | "busy"> {
    const request = noticingLostAnswers();
    try {
      await deleting.run(true, () =>
        this.#call("delete runner", () =>
          scope.repo
            ? this.#client(scope.installationId).request("DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}", {
                owner: scope.owner,
                repo: scope.repo,
                runner_id: runnerId,
                request,
              })
            : this.#client(scope.installationId).request("DELETE /orgs/{org}/actions/runners/{runner_id}", {
                org: scope.owner,
                runner_id: runnerId,
                request,
              }),
        ),
      );
      return "deleted";
    } catch (err) {
      // A 404 after an attempt that may have deleted the runner (its answer lost, the call retried)
      // is that attempt's work: "not_found" would say the runner removed itself, after a job.
      if (err instanceof GitHubError && err.status === 404) return request.lost ? "deleted" : "not_found";
      if (err instanceof GitHubError && err.status === 422) return this.#refusedDeletion(scope, runnerId, err, request.lost);
      throw err;
    }
  }

  /**
   * What a 422 to a runner's deletion means. GitHub answers 422 to a busy runner, but also to a
   * request it finds invalid or an endpoint it finds spammed (OpenAPI: "Validation failed, or the
   * endpoint has been spammed"); taken as busy, an idle runner would be recorded busy and never
   * deleted by its idle check. So GitHub is asked about the runner, only after a 422 (the normal
   * path costs no call more): busy when it says so; gone (404) as a 404 to the deletion; otherwise
   * the refusal is a failure worth another try, as a 5xx is (the caller's next check).
   */
  async #refusedDeletion(scope: RunnerScope, runnerId: number, refusal: GitHubError, lost: boolean): Promise<"deleted" | "not_found" | "busy"> {
    let registered: RegisteredRunner | undefined;
    try {
      registered = await this.getRunner(scope, runnerId);
    } catch (err) {
      throw new GitHubError(`${refusal.message}; asking whether the runner is busy failed: ${errorMessage(err)}`, 422, { retryable: true, cause: err });
    }
    if (registered === undefined) return lost ? "deleted" : "not_found";
    if (registered.busy) return "busy";
    throw new GitHubError(`${refusal.message} (the runner is not busy: ${registered.status})`, 422, { retryable: true, cause: refusal });
  }

  async deleteRunnerNamed(scope: RunnerScope, name: string): Promise<"deleted" | "not_found" | "busy"> {
    const client = this.#client(scope.installationId);
    const res = await this.#call("find runner by name", () =>
      scope.repo
        ? client.request("GET /repos/{owner}/{repo}/actions/runners", { owner: scope.owner, repo: scope.repo, name })
        : client.request("GET /orgs/{org}/actions/runners", { org: scope.owner, name }),
    );
    const runner = res.data.runners.find((r) => r.name === name);
    return runner ? this.deleteRunner(scope, runner.id) : "not_found";
  }

  async getJob(installationId: number, owner: string, repo: string, jobId: number): Promise<JobStatus> {
    const res = await this.#call("get job", () =>
      this.#client(installationId).request("GET /repos/{owner}/{repo}/actions/jobs/{job_id}", { owner, repo, job_id: jobId }),
    );
    return { status: res.data.status, conclusion: res.data.conclusion ?? null, runnerName: res.data.runner_name ?? null };
  }

  async getRunner(scope: RunnerScope, runnerId: number, opts: CallOptions = {}): Promise<RegisteredRunner | undefined> {
    const client = this.#client(scope.installationId);
    const request = readRequest(opts);
    try {
      const res = await this.#call("get runner", () =>
        scope.repo
          ? client.request("GET /repos/{owner}/{repo}/actions/runners/{runner_id}", { owner: scope.owner, repo: scope.repo, runner_id: runnerId, request })
          : client.request("GET /orgs/{org}/actions/runners/{runner_id}", { org: scope.owner, runner_id: runnerId, request }),
      );
      return { id: res.data.id, name: res.data.name, status: res.data.status, busy: res.data.busy };
    } catch (err) {
      if (err instanceof GitHubError && err.status === 404) return undefined;
      throw err;
    }
  }

  async listRunners(scope: RunnerScope, opts: CallOptions = {}): Promise<RegisteredRunner[]> {
    const client = this.#client(scope.installationId);
    const out: RegisteredRunner[] = [];
    for (let page = 1; page <= MAX_PAGES; page++) {
      const params = { per_page: 100, page, request: readRequest(opts) };
      const res = await this.#call("list runners", () =>
        scope.repo
          ? client.request("GET /repos/{owner}/{repo}/actions/runners", { owner: scope.owner, repo: scope.repo, ...params })
          : client.request("GET /orgs/{org}/actions/runners", { org: scope.owner, ...params }),
      );
      for (const r of res.data.runners) out.push({ id: r.id, name: r.name, status: r.status, busy: r.busy });
      if (res.data.runners.length < 100 || out.length >= res.data.total_count) return out;
    }
    this.#pageCapped(scope, out.length);
    return out;
  }

  /** Says once per scope (for the first 1,000 scopes) that a runner list stopped at MAX_PAGES. */
  #pageCapped(scope: RunnerScope, listed: number): void {
    const key = `${scope.installationId}/${scope.owner}/${scope.repo ?? ""}`.toLowerCase();
    if (this.#cappedScopes.has(key) || this.#cappedScopes.size >= 1000) return;
    this.#cappedScopes.add(key);
    this.#opts.logger.warn(
      { installationId: scope.installationId, owner: scope.owner, repo: scope.repo, listed, maxPages: MAX_PAGES },
      "runner list longer than the pages read per listing: the runners past them are not checked (said once per scope)",
    );
  }

  async listRuns(installationId: number, owner: string, repo: string, status: string, opts: CallOptions = {}): Promise<WorkflowRunSummary[]> {
    const client = this.#client(installationId);
    const out: WorkflowRunSummary[] = [];
    for (let page = 1; page <= MAX_PAGES; page++) {
      const res = await this.#call("list runs", () =>
        client.request("GET /repos/{owner}/{repo}/actions/runs", {
          owner,
          repo,
          status: status as "queued",
          per_page: 100,
          page,
          request: readRequest(opts),
        }),
      );
      for (const r of res.data.workflow_runs) {
        const repository = r.repository;
        out.push({ id: Number(r.id), owner: repository.owner.login, ownerType: repository.owner.type, repo: repository.name, private: repository.private, visibility: repository.visibility });
      }
      if (res.data.workflow_runs.length < 100 || out.length >= res.data.total_count) break;
    }
    return out;
  }

  async listRunJobs(installationId: number, owner: string, repo: string, runId: number, opts: RunJobsOptions = {}): Promise<WorkflowJobSummary[]> {
    const client = this.#client(installationId);
    const out: WorkflowJobSummary[] = [];
    for (let page = 1; page <= Math.min(opts.pages ?? MAX_PAGES, MAX_PAGES); page++) {
      const res = await this.#call("list run jobs", () =>
        client.request("GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs", {
          owner,
          repo,
          run_id: runId,
          filter: "latest",
          per_page: 100,
          page,
          request: readRequest(opts),
        }),
      );
      for (const j of res.data.jobs) {
        out.push({
          id: Number(j.id),
          runId: Number(j.run_id),
          runAttempt: j.run_attempt ?? 1,
          status: j.status,
          conclusion: j.conclusion ?? null,
          labels: j.labels,
          runnerName: j.runner_name ?? null,
        });
      }
      if (res.data.jobs.length < 100 || out.length >= res.data.total_count || opts.enough?.(out)) break;
    }
    return out;
  }

  async getApp(opts: CallOptions = {}): Promise<{ id: number; slug?: string }> {
    const res = await this.#call("get app", () => this.#client(APP_INSTALLATION).request("GET /app", { request: readRequest(opts) }));
    return { id: Number(res.data?.id), slug: res.data?.slug ?? undefined };
  }

  async listHookDeliveries(opts: CallOptions & { cursor?: string } = {}): Promise<{ deliveries: HookDelivery[]; next?: string }> {
    const res = await this.#call("list hook deliveries", () =>
      this.#client(APP_INSTALLATION).request("GET /app/hook/deliveries", {
        per_page: 100,
        ...(opts.cursor ? { cursor: opts.cursor } : {}),
        request: readRequest(opts),
      }),
    );
    const deliveries = res.data.map((d) => ({
      id: Number(d.id),
      guid: d.guid,
      deliveredAt: d.delivered_at,
      statusCode: d.status_code,
      event: d.event,
      action: d.action ?? null,
    }));
    const next = /<([^>]+)>;\s*rel="next"/.exec(String(res.headers.link ?? ""))?.[1];
    return { deliveries, next: next ? (new URL(next).searchParams.get("cursor") ?? undefined) : undefined };
  }

  async redeliverHookDelivery(id: number, opts: CallOptions = {}): Promise<void> {
    await this.#call("redeliver hook delivery", () =>
      this.#client(APP_INSTALLATION).request("POST /app/hook/deliveries/{delivery_id}/attempts", { delivery_id: id, request: { signal: opts.signal } }),
    );
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let res: T;
    try {
      res = await fn();
    } catch (err) {
      // Never sent (its caller gave up, the client closed, or would not wait out a rate limit): said as such.
      const never = notSent(err);
      if (never) throw never;
      if (err instanceof RateLimitPausedError) throw err;
      const e = err as RequestFailure;
      let status = e.status;
      // 403 without a rate limit is a permission GitHub will keep refusing.
      // 408: GitHub's own time limit on the request; `transient` tried it again already.
      const retryable = status === undefined || status === 0 || status === 408 || status >= 500 || rateLimited(e);
      // GitHub's message only: octokit's error carries the request, and with it tokens and JIT configs.
      let detail = e.response?.data?.message ?? errorMessage(err).split("\n")[0];
      // Not answered: no status, though octokit gives it 500. A failed fetch is the network (DNS, a
      // refused connection, a proxy, the attempt's time limit), said with where it was sent; an
      // abort is its caller giving up.
      if (unanswered(e)) {
        status = undefined;
        if (e.name === "HttpError") detail = `cannot reach GitHub at ${this.#opts.apiUrl}: ${detail}`;
      }
      // The installation token could not be minted: the status is the token request's, not the
      // call's, and is left out of the error. A 404 there is not "no such runner", nor a 422 "busy".
      if (isTokenRequest(e.request?.url)) {
        throw new GitHubError(`${what} failed: installation token${status ? ` (${status})` : ""}: ${detail}`, undefined, { retryable });
      }
      throw new GitHubError(`${what} failed${status ? ` (${status})` : ""}: ${detail}`, status, { retryable });
    }
    // Octokit answers a body it could not read or parse (cut short) with data "": the call may have
    // done its work (a runner registered) with no answer to show for it, as a lost answer.
    const { status, data } = res as { status?: number; data?: unknown };
    if ((status === 200 || status === 201) && (typeof data !== "object" || data === null)) {
      throw new GitHubError(`${what} failed: GitHub's answer (${status}) could not be read (cut short, or not JSON)`, undefined, { retryable: true, answerLost: true });
    }
    return res;
  }
}

/**
 * No answer came from GitHub: the fetch failed (octokit wraps that in a RequestError, name
 * HttpError, of status 500 with no response; so it does a fetch cut by its time limit) or was
 * aborted by its caller (octokit rethrows the AbortError, status 500 too).
 */
function unanswered(err: RequestFailure): boolean {
  return err.response === undefined && (err.name === "HttpError" || err.name === "AbortError");
}

/** The client of the App's own calls, made with its JWT (webhook deliveries), and the label of its rate-limit budget. */
const APP_INSTALLATION = 0;

/** A request for an installation token (made with the App's JWT, on the App's budget). */
function isTokenRequest(url: unknown): boolean {
  return String(url).includes("/access_tokens");
}

/**
 * The call `options` failed because the installation token it needed could not be minted: the
 * failure is the token request's, which went through #send on its own (counted and retried there).
 */
function mintFailed(options: HookOptions, err: RequestFailure): boolean {
  return isTokenRequest(err.request?.url) && !isTokenRequest(options.url);
}

function isRead(method: string | undefined): boolean {
  return method === "GET" || method === "HEAD";
}

/** GitHub refused the call for a rate limit: a 429, or a 403 saying so (else a 403 is a permission). */
function rateLimited(e: RequestFailure): boolean {
  return e.status === 429 || (e.status === 403 && (e.response?.headers?.["x-ratelimit-remaining"] === "0" || /rate limit/i.test(e.response?.data?.message ?? "")));
}

/** A read's request options: its caller's signal and patience (CallOptions), which #send reads. */
interface ReadRequest {
  signal?: AbortSignal;
  maxWaitMs?: number;
}

function readRequest(opts: CallOptions): ReadRequest {
  return { signal: opts.signal, ...(opts.maxWaitMs !== undefined && { maxWaitMs: opts.maxWaitMs }) };
}

/** A failure worth another attempt: 5xx, 408, or no answer at all. */
function transient(err: RequestFailure): boolean {
  const status = err.status;
  return status === undefined || status === 0 || status === 408 || status >= 500;
}

/** The throttling plugin's id of an installation's calls: their write budget and GitHub's waits are kept under it. */
function throttleIdOf(installationId: number): string {
  return `installation-${installationId}`;
}

/** The installation of a throttle id (throttleIdOf). */
function installationOf(throttleId: string): number {
  return Number(throttleId.slice("installation-".length));
}

/** The group of this name: spelt exactly so first, else in any case (as GitHub's names are shown). */
function groupNamed<G extends { name: string }>(groups: G[], name: string): G | undefined {
  return groups.find((g) => g.name === name) ?? groups.find((g) => g.name.toLowerCase() === name.toLowerCase());
}

function groupKey(scope: RunnerScope, name: string): string {
  return `${scope.installationId}/${scope.owner.toLowerCase()}/${name}`;
}

/** The NotSentError that `err` is, or that octokit wrapped (as the cause of a RequestError). */
function notSent(err: unknown): NotSentError | undefined {
  if (err instanceof NotSentError) return err;
  const cause = (err as { cause?: unknown } | null)?.cause;
  return cause instanceof NotSentError ? cause : undefined;
}

/** A call's progress (a write's, or a read's with a signal), for its caller to give it up while no attempt of it is out (untilGivenUp). */
interface Sending {
  /** An attempt is out whose effect is unknown, or it was answered. */
  sent: boolean;
  /** An attempt may have acted without its answer reaching us (as noticingLostAnswers). */
  lost: boolean;
  /** Set by untilGivenUp: called when an answer leaves the call unsent again (a refusal). */
  unsent?: () => void;
}

/**
 * Request options for a write that its caller may give up on only while it waits for its turn (in
 * the write budget, or before a retry): a fetch that refuses to start once `signal` has aborted
 * and, once started, is not cut short by it (a registration may exist only the answer tells of).
 * A refusal (403, 429: rate limited, or not allowed) did nothing: after one the write is unsent
 * again until the retry that GitHub's wait leads to starts, so a caller that gives up during that
 * wait, or gave up while the refused attempt was out, is not held for it (a minute, or an hour);
 * unless an earlier attempt's answer was lost (`lost`, as noticingLostAnswers notes it, with or
 * without a signal): that one may have acted. The refusal itself still reaches the throttling
 * plugin, so the wait is kept for the installation's other writes. The signal also stops other
 * retries (see #send).
 */
function unlessGivenUp(signal: AbortSignal | undefined): { signal?: AbortSignal; fetch: typeof fetch } & Sending {
  const sending: Sending = { sent: false, lost: false };
  return Object.assign(sending, { ...(signal ? { signal } : {}), fetch: notingFetch(sending, signal, "GitHub write") });
}

/**
 * A fetch that notes in `sending` whether an attempt of a call is out (see unlessGivenUp): it
 * refuses to start once `signal` has aborted, and a refusal (403, 429) leaves the call unsent
 * again. A write's attempt, once started, is not cut short by the signal, and one whose answer may
 * have been lost keeps the write sent; a read's attempt is cut off by it (it changes nothing).
 */
function notingFetch(sending: Sending, signal: AbortSignal | undefined, what: "GitHub write" | "GitHub read"): typeof fetch {
  const write = what === "GitHub write";
  return (async (input, init = {}) => {
    if (signal?.aborted) throw new NotSentError(what);
    sending.sent = true;
    let response: Response;
    try {
      response = await fetchWithTimeout(input, write ? { ...init, signal: undefined } : init);
    } catch (err) {
      if (write) sending.lost = true;
      throw err;
    }
    if (write && (response.status === 408 || response.status >= 500)) sending.lost = true;
    if ((response.status === 403 || response.status === 429) && !sending.lost) {
      sending.sent = false;
      sending.unsent?.();
    }
    return response;
  }) as typeof fetch;
}

/**
 * `call`, or NotSentError as soon as `signal` has aborted while no attempt of it is out (at the
 * abort, or at a refusal after it). The call itself goes on waiting for its turn (the throttling
 * plugin's queues take no signal) until it comes, when the fetch above refuses it, or until the
 * client closes (close()).
 */
async function untilGivenUp<T>(what: string, signal: AbortSignal | undefined, request: Sending, call: () => Promise<T>): Promise<T> {
  const running = call();
  if (!signal) return running;
  let check: (() => void) | undefined;
  const givenUp = new Promise<never>((_, reject) => {
    check = () => {
      if (signal.aborted && !request.sent) reject(new NotSentError(what));
    };
    request.unsent = check;
    if (signal.aborted) check();
    else signal.addEventListener("abort", check, { once: true });
  });
  try {
    return await Promise.race([running, givenUp]);
  } finally {
    signal.removeEventListener("abort", check!);
    request.unsent = undefined;
    // Settles later with the refusal of the fetch above, or with an answer after all: handled here.
    running.catch(() => undefined);
  }
}

/**
 * Request options that note whether an attempt of the call may have acted at GitHub without its
 * answer reaching us: a 5xx or 408 (GitHub may have acted before failing, or a proxy lost its
 * answer) or no answer at all (network error, attempt timeout). #send retries exactly these, so
 * once `lost` is set, a retry's answer may describe what the lost attempt did, not the call's own
 * effect. A network error before anything was sent sets it too: which one it was cannot be told.
 */
function noticingLostAnswers(): { fetch: typeof fetch; lost: boolean } {
  const request = {
    lost: false,
    fetch: (async (input, init) => {
      try {
        const response = await fetchWithTimeout(input, init);
        if (response.status === 408 || response.status >= 500) request.lost = true;
        return response;
      } catch (err) {
        request.lost = true;
        throw err;
      }
    }) as typeof fetch,
  };
  return request;
}

/** fetch with a time limit on each attempt, on top of the caller's own signal. */
const fetchWithTimeout: typeof fetch = (input, init = {}) => {
  // Let go of the caller's signal at the time limit (the body may still be read until then), or
  // at once should the fetch fail: not AbortSignal.any, whose composites a long-lived caller's
  // signal (a loop's closing one) would keep for good (see linkedSignal).
  const limited = linkedSignal([init.signal ?? undefined], ATTEMPT_TIMEOUT_MS);
  return fetch(input, { ...init, signal: limited.signal }).catch((err: unknown) => {
    limited.dispose();
    throw err;
  });
};
