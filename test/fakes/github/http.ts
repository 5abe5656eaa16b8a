// A tiny router for the fake: OpenAPI path templates (under an optional base path, as GHES
// serves them under /api/v3), auth, fault injection, request log.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { FakeAuth } from "./auth.ts";
import { requestCheck, type RequestCheck, type RequestProblem } from "./request-check.ts";

export type AuthKind = "app" | "installation" | "none";

/** What GitHub answers a valid installation token of `installationId` on a route outside that installation; undefined: allowed. */
export type AccessCheck = (installationId: number, method: string, template: string, params: Record<string, string>, tokenPermissions: Readonly<Record<string, string>>) => Reply | undefined;

export interface Req {
  method: string;
  path: string;
  query: URLSearchParams;
  params: Record<string, string>;
  body: Record<string, unknown>;
  headers: IncomingHttpHeaders;
}

export interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** Sent with its full length announced, then the connection closed halfway through the body. */
  cutShort?: boolean;
}

export interface Route {
  method: string;
  template: string; // the OpenAPI path template, e.g. /repos/{owner}/{repo}/actions/jobs/{job_id}
  auth: AuthKind;
  internal?: boolean; // runner/test routes: not GitHub's API, not logged in `requests`
  handle(req: Req): Reply | Promise<Reply>;
}

export interface Fault {
  route?: string; // template or concrete path; omitted: any GitHub API route
  method?: string;
  status?: number; // omitted: only delay, then answer normally
  times: number;
  headers?: Record<string, string>;
  body?: unknown;
  delayMs?: number;
  /** The request takes effect, then the client gets the fault instead (a response lost on its way back). */
  afterHandling?: boolean;
  /** The request takes effect and its answer's status and headers arrive, but the connection closes halfway through the body. */
  cutShort?: boolean;
  /**
   * The rate limit the fault plays, with GitHub's message and headers (`headers` still override):
   * `primary`, `x-ratelimit-remaining: 0` and the window's `x-ratelimit-reset`; `secondary`, the
   * "secondary rate limit" message with the usual counters and no `retry-after` unless `headers`
   * give one (GitHub often sends none). Omitted: a 403 without `body` is primary, a 429 without
   * `body` secondary, any other fault neither.
   */
  rateLimit?: "primary" | "secondary";
}

export interface RequestRecord {
  method: string;
  route: string;
  status: number;
  /** The request's path as sent, base path included. */
  path: string;
  /** When the request arrived (ms, real clock). */
  at: number;
  /** The installation whose live token the request carried; undefined without one (an App JWT, none, a stale token). */
  installationId?: number;
}

/** A request to GitHub's API that does not conform to GitHub's OpenAPI description (see request-check.ts). */
export interface InvalidRequest {
  method: string;
  /** The OpenAPI template of the route. */
  route: string;
  /** The path and query as sent, base path included. */
  path: string;
  /** What the description refuses, as the 422's message lists it (or "Problems parsing JSON"). */
  problems: string[];
  /** The fake's answer: 422 (400 for a body that is no JSON), or an injected fault, or 401 before the check. */
  status: number;
  /** The JSON body as sent (undefined when there was none). */
  body?: string;
  at: number;
}

const DOCS = "https://docs.github.com/rest";
const RATE_LIMIT_DOCS = "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api";
const MAX_BODY = 1 << 20;
const HOUR_MS = 3_600_000;

/**
 * Whose primary rate limit a request counts against: the credential's that made it ("Rate limits
 * for the REST API"). An installation token's installation (each has its own 5,000 an hour, the
 * base GitHub gives any installation); the App itself for calls with its JWT (/app/...), a budget
 * of its own; an unauthenticated call (no credential, or one GitHub does not take) its originating
 * IP address's, 60 an hour.
 */
export type RateBudget = { kind: "installation"; installationId: number } | { kind: "app"; appId: number } | { kind: "ip"; address: string };

const RATE_LIMITS: Record<RateBudget["kind"], number> = { installation: 5000, app: 5000, ip: 60 };

function budgetKey(budget: RateBudget): string {
  if (budget.kind === "installation") return `installation:${budget.installationId}`;
  return budget.kind === "app" ? "app" : `ip:${budget.address}`;
}

/** GitHub's error body ("Basic Error"; a 422 is a "Validation Error Simple", which has no status). */
export function ghError(status: number, message: string, documentationUrl = DOCS): Reply {
  const body = { message, documentation_url: documentationUrl };
  return { status, body: status === 422 ? body : { ...body, status: String(status) } };
}

const FAULT_MESSAGES: Record<number, string> = {
  401: "Bad credentials",
  404: "Not Found",
  409: "Conflict",
  422: "Validation Failed",
};

/** Whom GitHub's primary rate-limit message names: the installation, the App, or the IP address the budget is of. */
function exceededFor(budget: RateBudget): string {
  if (budget.kind === "installation") return `API rate limit exceeded for installation ID ${budget.installationId}.`;
  if (budget.kind === "app") return `API rate limit exceeded for app ID ${budget.appId}.`;
  return `API rate limit exceeded for ${budget.address}. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)`;
}

/**
 * GitHub's answer to a rate-limited call ("Rate limits for the REST API", "Exceeding the rate
 * limit"): a primary limit is a 403 or 429 with `x-ratelimit-remaining: 0` and the epoch second
 * the caller's window resets, its message naming whose budget ran out; a secondary limit a 403 or
 * 429 whose message says "secondary rate limit", with the usual counters, and `retry-after` only
 * sometimes.
 */
function rateLimitReply(
  kind: "primary" | "secondary",
  budget: RateBudget,
  resetSeconds: number,
): { message: string; documentationUrl: string; headers: Record<string, string> } {
  if (kind === "primary") {
    return {
      message: exceededFor(budget),
      documentationUrl: `${RATE_LIMIT_DOCS}#about-primary-rate-limits`,
      headers: { "x-ratelimit-remaining": "0", "x-ratelimit-used": String(RATE_LIMITS[budget.kind]), "x-ratelimit-reset": String(resetSeconds) },
    };
  }
  return {
    message: `You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID ${randomUUID().toUpperCase()}.`,
    documentationUrl: `${RATE_LIMIT_DOCS}#about-secondary-rate-limits`,
    headers: {},
  };
}

/** The rate limit a fault plays (Fault.rateLimit), if any. */
function rateLimitOf(fault: Fault): "primary" | "secondary" | undefined {
  if (fault.rateLimit) return fault.rateLimit;
  if (fault.body !== undefined) return undefined;
  return fault.status === 403 ? "primary" : fault.status === 429 ? "secondary" : undefined;
}

interface CompiledRoute extends Route {
  regex: RegExp;
  /** The request check of GitHub's operation (none for the fake's own routes). */
  check?: RequestCheck;
}

function compile(route: Route): CompiledRoute {
  const pattern = route.template
    .split(/(\{\w+\})/)
    .map((part) => {
      const m = /^\{(\w+)\}$/.exec(part);
      if (!m) return part.replace(/[.*+?^$()|[\]\\]/g, "\\$&");
      return m[1]?.endsWith("_id") ? `(?<${m[1]}>\\d+)` : `(?<${m[1]}>[^/]+)`;
    })
    .join("");
  // Compiled once per operation and process: a route GitHub does not document fails here, at start.
  const check = route.internal ? undefined : requestCheck(route.method, route.template);
  return { ...route, regex: new RegExp(`^${pattern}$`), check };
}

export class Router {
  readonly requests: RequestRecord[] = [];
  /** Requests to GitHub's routes that GitHub's OpenAPI description refuses, in order. */
  readonly invalid: InvalidRequest[] = [];
  private readonly routes: CompiledRoute[];
  private readonly faults: Fault[] = [];
  /**
   * The primary rate-limit windows, one per budget (budgetKey): each installation's, the App's,
   * each unauthenticated address's. On the fake's clock (as its Date header): a reset agrees with
   * it under skew. A budget's window starts with its first call, as GitHub's does.
   */
  private readonly windows = new Map<string, { start: number; used: number }>();

  private readonly basePath: string;
  private readonly access: AccessCheck | undefined;

  /**
   * `basePath`: GitHub's API routes are served only under it (e.g. "/api/v3"); the fake runner's
   * routes with or without it. `access`: whether an installation token reaches a route's owner.
   */
  constructor(routes: Route[], private readonly auth: FakeAuth, opts: { basePath?: string; access?: AccessCheck } = {}) {
    this.routes = routes.map(compile);
    this.basePath = (opts.basePath ?? "").replace(/\/+$/, "");
    this.access = opts.access;
  }

  get table(): Array<{ method: string; template: string; internal: boolean }> {
    return this.routes.map((r) => ({ method: r.method, template: r.template, internal: r.internal ?? false }));
  }

  inject(fault: Fault): void {
    this.faults.push({ ...fault });
  }

  /** Forgets the faults not used up whose `route` and `method` are those of `match` (omitted: any); how many. */
  clearFaults(match: { route?: string; method?: string }): number {
    const kept = this.faults.filter(
      (f) => (match.route !== undefined && f.route !== match.route) || (match.method !== undefined && f.method?.toUpperCase() !== match.method.toUpperCase()),
    );
    const cleared = this.faults.length - kept.length;
    this.faults.splice(0, this.faults.length, ...kept);
    return cleared;
  }

  readonly listener = (req: IncomingMessage, res: ServerResponse): void => {
    this.serve(req, res).catch((err: unknown) => {
      if (!res.headersSent) this.send(res, ghError(500, `fake GitHub: ${String(err)}`), this.budgetOf(req));
    });
  };

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const at = Date.now();
    const url = new URL(req.url ?? "/", "http://fake");
    const method = (req.method ?? "GET").toUpperCase();
    const raw = await readBody(req);
    const underBase = this.basePath === "" || url.pathname.startsWith(`${this.basePath}/`);
    const path = underBase ? url.pathname.slice(this.basePath.length) : url.pathname;
    const found = this.match(method, path, underBase);
    const routeName = found?.route.template ?? url.pathname;
    const internal = found?.route.internal ?? false;
    // Checked whatever the answer (an injected fault, a 401): the record is of what the client sent.
    const problem = raw === undefined ? undefined : found?.route.check?.(url.searchParams, raw);
    // Whose budget the call counts against is settled as it arrives, as its credential is then.
    const budget = this.budgetOf(req);
    const reply = await this.answer(method, path, url, raw, req.headers, found, problem, budget);
    if (!internal) {
      const installationId = budget.kind === "installation" ? budget.installationId : undefined;
      this.requests.push({ method, route: routeName, status: reply.status, path: url.pathname, at, ...(installationId === undefined ? {} : { installationId }) });
    }
    if (problem) {
      const body = raw && raw.length > 0 ? raw.toString("utf8").slice(0, 2000) : undefined;
      this.invalid.push({ method, route: routeName, path: `${url.pathname}${url.search}`, problems: problem.problems, status: reply.status, body, at });
    }
    this.send(res, reply, internal ? undefined : budget);
  }

  /** The budget of the credential the request carries (RateBudget). */
  private budgetOf(req: IncomingMessage): RateBudget {
    const authorization = req.headers.authorization;
    const installationId = this.auth.checkToken(authorization);
    if (installationId !== undefined) return { kind: "installation", installationId };
    if (authorization !== undefined && this.auth.checkJwt(authorization) === undefined) return { kind: "app", appId: this.auth.appId };
    // Loopback over TCP; the unix socket has no address: the fake's own host.
    return { kind: "ip", address: req.socket.remoteAddress?.replace(/^::ffff:/, "") || "127.0.0.1" };
  }

  private async answer(
    method: string,
    path: string,
    url: URL,
    raw: Buffer | undefined,
    headers: IncomingHttpHeaders,
    found: { route: CompiledRoute; params: Record<string, string> } | undefined,
    problem: RequestProblem | undefined,
    budget: RateBudget,
  ): Promise<Reply> {
    if (raw === undefined) return ghError(413, "Payload too large");
    const fault = this.takeFault(method, path, found?.route);
    if (fault?.delayMs) await sleep(Math.min(fault.delayMs, 60_000), undefined, { ref: false });
    if (fault?.cutShort) return { ...(await this.handle(method, path, url, raw, headers, found, problem)), cutShort: true };
    if (fault?.status === undefined) return this.handle(method, path, url, raw, headers, found, problem);
    const limit = rateLimitOf(fault);
    const limited = limit && rateLimitReply(limit, budget, this.resetSeconds(budget));
    const faulty: Reply = {
      status: fault.status,
      body: fault.body ?? (limited ? ghError(fault.status, limited.message, limited.documentationUrl) : ghError(fault.status, FAULT_MESSAGES[fault.status] ?? "Server Error")).body,
      headers: { ...limited?.headers, ...fault.headers },
    };
    if (fault.afterHandling) await this.handle(method, path, url, raw, headers, found, problem);
    return faulty;
  }

  private async handle(
    method: string,
    path: string,
    url: URL,
    raw: Buffer,
    headers: IncomingHttpHeaders,
    found: { route: CompiledRoute; params: Record<string, string> } | undefined,
    problem: RequestProblem | undefined,
  ): Promise<Reply> {
    if (!found) return ghError(404, "Not Found");
    const { route, params } = found;
    if (route.auth === "app") {
      const problem = this.auth.checkJwt(headers.authorization);
      if (problem) return ghError(401, problem);
    } else if (route.auth === "installation") {
      const installationId = this.auth.checkToken(headers.authorization);
      if (installationId === undefined) return ghError(401, "Bad credentials");
      // A valid token of another installation (installations.ts). Before the body is checked: a 422
      // for a repository the token cannot see would tell that it exists, which GitHub's 404 hides.
      const refused = this.access?.(installationId, method, route.template, params, this.auth.tokenPermissions(headers.authorization) ?? {});
      if (refused) return refused;
    }
    // After authentication, as GitHub checks: a body that is no JSON is a 400, one or a query the
    // operation's schemas refuse a 422 "Invalid request." (Validation Error Simple).
    if (problem?.status === 400) return ghError(400, "Problems parsing JSON", problem.documentationUrl);
    if (problem) return ghError(422, `Invalid request.\n\n${problem.problems.join("\n")}`, problem.documentationUrl);
    let body: Record<string, unknown> = {};
    if (raw.length > 0) {
      try {
        const parsed: unknown = JSON.parse(raw.toString("utf8"));
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object");
        body = parsed as Record<string, unknown>;
      } catch {
        return ghError(400, "Problems parsing JSON");
      }
    }
    return route.handle({ method, path, query: url.searchParams, params, body, headers });
  }

  /** Outside the base path only the fake runner's (internal) routes answer. */
  private match(method: string, path: string, underBase: boolean): { route: CompiledRoute; params: Record<string, string> } | undefined {
    for (const route of this.routes) {
      if (route.method !== method || (!underBase && !route.internal)) continue;
      const m = route.regex.exec(path);
      if (!m) continue;
      const params: Record<string, string> = {};
      for (const [k, v] of Object.entries(m.groups ?? {})) params[k] = decodeURIComponent(v);
      return { route, params };
    }
    return undefined;
  }

  private takeFault(method: string, path: string, route: CompiledRoute | undefined): Fault | undefined {
    const i = this.faults.findIndex(
      (f) =>
        f.times > 0 &&
        (f.method === undefined || f.method.toUpperCase() === method) &&
        (f.route === undefined ? !route?.internal : f.route === path || f.route === route?.template),
    );
    const fault = this.faults[i];
    if (!fault) return undefined;
    if (--fault.times <= 0) this.faults.splice(i, 1);
    return fault;
  }

  /** `budget`: the rate limit the answer reports (undefined: none, the fake runner's routes). */
  private send(res: ServerResponse, reply: Reply, budget: RateBudget | undefined): void {
    const headers: Record<string, string> = {
      "content-type": "application/json; charset=utf-8",
      "x-github-request-id": randomUUID().toUpperCase(),
      "x-github-media-type": "github.v3; format=json",
      date: new Date(this.auth.now()).toUTCString(),
      ...(budget ? this.rateHeaders(budget) : {}),
      ...reply.headers,
    };
    const text = reply.body === undefined ? "" : JSON.stringify(reply.body);
    if (reply.cutShort) {
      const bytes = Buffer.from(text);
      res.writeHead(reply.status, { ...headers, "content-length": String(bytes.length) });
      res.write(bytes.subarray(0, bytes.length >> 1), () => res.destroy());
      return;
    }
    res.writeHead(reply.status, headers);
    res.end(reply.status === 204 ? undefined : text);
  }

  /** The call counted against `budget`, and that budget's state after it, as GitHub's `x-ratelimit-*` headers say. */
  private rateHeaders(budget: RateBudget): Record<string, string> {
    const limit = RATE_LIMITS[budget.kind];
    const window = this.currentWindow(budget);
    // The fake answers past the limit (it refuses only through faults); GitHub's counter stops there.
    const used = (window.used = Math.min(limit, window.used + 1));
    return {
      "x-ratelimit-limit": String(limit),
      "x-ratelimit-remaining": String(Math.max(0, limit - used)),
      "x-ratelimit-reset": String(this.resetSeconds(budget)),
      "x-ratelimit-used": String(used),
      "x-ratelimit-resource": "core",
    };
  }

  private currentWindow(budget: RateBudget): { start: number; used: number } {
    const key = budgetKey(budget);
    const now = this.auth.now();
    const window = this.windows.get(key);
    // A clock set back (setClockSkew) starts a window too: its reset is never over an hour away.
    if (window && now - window.start < HOUR_MS && now >= window.start) return window;
    const started = { start: now, used: 0 };
    this.windows.set(key, started);
    return started;
  }

  /** When `budget`'s current rate-limit window ends (epoch seconds, as `x-ratelimit-reset`). */
  private resetSeconds(budget: RateBudget): number {
    return Math.ceil((this.currentWindow(budget).start + HOUR_MS) / 1000);
  }
}

/** The whole body, or undefined when it exceeds MAX_BODY. */
async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
