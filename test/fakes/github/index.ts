// FakeGitHub: an HTTP fake of the parts of GitHub jitrunner uses (REST API on
// 127.0.0.1, runner protocol on a unix socket, signed workflow_job webhooks).
// See test/fakes/PROTOCOL.md and test/fakes/github/README.md.
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { FakeAuth } from "./auth.ts";
import type { Ctx } from "./context.ts";
import { Router, type Fault, type InvalidRequest, type RequestRecord } from "./http.ts";
import { appRoutes } from "./routes-app.ts";
import { fakeRunnerRoutes } from "./routes-fake-runner.ts";
import { Installations, type AccountType, type FakeInstallation } from "./installations.ts";
import { hookRoutes } from "./routes-hooks.ts";
import { jobRoutes } from "./routes-jobs.ts";
import { runnerRoutes } from "./routes-runners.ts";
import { FakeState, type FakeJob, type FakeRunner } from "./state.ts";
import { publicizedPayload, WebhookSender, workflowJobPayload, type DeliveryRecord, type HeldDelivery } from "./webhooks.ts";

export type { FakeJob, FakeRunner, RunnerScope, Conclusion } from "./state.ts";
export type { Fault, InvalidRequest, RequestRecord } from "./http.ts";
export type { DeliveryRecord, HeldDelivery } from "./webhooks.ts";
export type { AccountType, FakeInstallation } from "./installations.ts";

export interface FakeGitHubOptions {
  appId?: number;
  webhookSecret: string;
  webhookUrl?: string;
  socketDir?: string;
  /** The default installation's id (1): it covers every owner no installation of `installations` covers. */
  installationId?: number;
  /** More installations, one per account (see addInstallation). */
  installations?: Array<{ owner: string; id?: number; type?: AccountType }>;
  /** Serve GitHub's API under this path, as GHES does under "/api/v3" (`url` includes it). */
  basePath?: string;
  /** The fake's clock runs this far ahead of the real one (negative: behind); see setClockSkew. */
  clockSkewSeconds?: number;
  /** Answer 404 to a token request whose App JWT was used before, as GitHub does for identical JWTs. */
  rejectReusedAppJwts?: boolean;
  /**
   * `GET /app/hook/deliveries` pages hold at most this many (default 100), whatever `per_page`
   * asks: GitHub documents `per_page` as a maximum ("max 100") and the next page in the `link`
   * header, which clients follow. With small pages a test outgrows the pages a client reads in one
   * go with a few dozen deliveries instead of over a thousand (jitrunner asks 100 a page).
   */
  hookDeliveriesPageSize?: number;
}

export interface QueueJobOptions {
  owner: string;
  repo: string;
  labels: string[];
  private?: boolean;
  runAttempt?: number;
  runId?: number; // add the job to an existing run (default: a new run)
  name?: string;
  /**
   * Only the runner of this name may take the job. GitHub hands a queued job to whichever idle
   * runner with matching labels asks first; this is a test's way to pick that runner.
   */
  onlyRunner?: string;
  /**
   * The job waits for an environment's approval: status `waiting` (no runner may take it), its run
   * `waiting` as long as it does, until approveJob. GitHub says `queued` and then `waiting`, both
   * with status `waiting`.
   */
  waitForApproval?: boolean;
}

function listen(server: Server, target: { port: number; host: string } | string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    const done = (): void => {
      server.off("error", reject);
      resolve();
    };
    if (typeof target === "string") server.listen(target, done);
    else server.listen(target.port, target.host, done);
  });
}

function stop(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

export class FakeGitHub {
  readonly appId: number;
  /** The default installation's id: its tokens work on every owner no added installation covers. */
  readonly installationId: number;
  readonly privateKey: string;
  readonly url: string;
  readonly socketPath: string;
  /** Files endJob put beside the socket, removed by close(). */
  private readonly endFiles = new Set<string>();

  private constructor(
    private readonly state: FakeState,
    private readonly auth: FakeAuth,
    private readonly router: Router,
    private readonly hooks: WebhookSender,
    private readonly ctx: Ctx,
    private readonly servers: Server[],
    private readonly ownSocketDir: string | undefined,
  ) {
    this.appId = auth.appId;
    this.installationId = ctx.installations.fallback.id;
    this.privateKey = auth.privateKey;
    this.url = ctx.urls.api;
    this.socketPath = servers[1]?.address() as string;
  }

  static async start(opts: FakeGitHubOptions): Promise<FakeGitHub> {
    const state = new FakeState();
    const auth = new FakeAuth(opts.appId ?? 12345);
    const installations = new Installations(opts.installationId ?? 1);
    for (const i of opts.installations ?? []) installations.add(i.owner, i);
    auth.skewMs = (opts.clockSkewSeconds ?? 0) * 1000;
    auth.rejectReusedJwts = opts.rejectReusedAppJwts ?? false;
    const basePath = (opts.basePath ?? "").replace(/\/+$/, "");
    if (basePath && !/^\/[\w./-]+$/.test(basePath)) throw new Error(`FakeGitHub: basePath must look like /api/v3, got ${opts.basePath}`);
    const hooks = new WebhookSender({ secret: opts.webhookSecret, appId: auth.appId, hookId: 400_000_000 + auth.appId, url: opts.webhookUrl });
    const ctx: Ctx = {
      urls: { api: "", html: "https://github.com" },
      state,
      auth,
      appId: auth.appId,
      installations,
      // The installation covering the job's owner when the event happens, as GitHub sends it.
      emit: (job, action) => hooks.deliver(job.id, action, workflowJobPayload(ctx.urls, state, installations.forOwner(job.owner), job, action)),
    };
    const routes = [...appRoutes(ctx), ...runnerRoutes(ctx), ...jobRoutes(ctx), ...fakeRunnerRoutes(ctx), ...hookRoutes(ctx, hooks, opts.hookDeliveriesPageSize)];
    const access = (installationId: number, method: string, template: string, params: Record<string, string>, tokenPermissions: Readonly<Record<string, string>>) =>
      installations.refusal(installationId, method, template, params, state, tokenPermissions);
    const router = new Router(routes, auth, { basePath, access });
    const tcp = createServer(router.listener);
    const unix = createServer(router.listener);
    const ownSocketDir = opts.socketDir ? undefined : await mkdtemp(join(tmpdir(), "fake-github-"));
    const dir = opts.socketDir ?? ownSocketDir ?? "";
    await mkdir(dir, { recursive: true });
    const socketPath = join(dir, "github.sock");
    await rm(socketPath, { force: true });
    await listen(tcp, { port: 0, host: "127.0.0.1" });
    await listen(unix, socketPath);
    await chmod(dir, 0o777); // the runner in a container runs as uid 1001
    await chmod(socketPath, 0o777);
    ctx.urls.api = `http://127.0.0.1:${(tcp.address() as AddressInfo).port}${basePath}`;
    return new FakeGitHub(state, auth, router, hooks, ctx, [tcp, unix], ownSocketDir);
  }

  /** REST calls made to the fake (runner-protocol calls excluded), in order. */
  get requests(): RequestRecord[] {
    return this.router.requests;
  }

  /**
   * Requests to GitHub's API that GitHub's OpenAPI description refuses (query parameters, JSON
   * body), in order: each was answered 422 (400 for a body that is no JSON) unless a fault or a 401
   * came first. Should stay empty: `close()` fails the test process when it is not (see there).
   */
  invalidRequests(): InvalidRequest[] {
    return structuredClone(this.router.invalid);
  }

  /** The invalid requests so far, forgotten (a test that sends some on purpose takes and checks them). */
  takeInvalidRequests(): InvalidRequest[] {
    return this.router.invalid.splice(0);
  }

  /** Webhook deliveries attempted, in order of completion. */
  get deliveries(): DeliveryRecord[] {
    return this.hooks.deliveries;
  }

  /** Every route the fake serves (OpenAPI templates); `internal` marks the runner protocol. */
  get routes(): Array<{ method: string; template: string; internal: boolean }> {
    return this.router.table;
  }

  setWebhookUrl(url: string): void {
    this.hooks.url = url;
  }

  /** The next `fault.times` matching requests get this answer (and/or delay). */
  inject(fault: Fault): void {
    this.router.inject(fault);
  }

  /**
   * Forgets the injected faults not used up yet whose `route` and `method` are the ones given
   * (as injected; omitted: any), so that GitHub answers as it would from now on: a fault that
   * lasts until the test says it ends. Returns how many were forgotten.
   */
  clearFaults(match: { route?: string; method?: string } = {}): number {
    return this.router.clearFaults(match);
  }

  async queueJob(o: QueueJobOptions): Promise<FakeJob> {
    if (o.labels.length === 0) throw new Error("queueJob: a job needs at least one label");
    const run = o.runId === undefined ? undefined : [...this.state.jobs.values()].find((j) => j.run_id === o.runId);
    if (run && (run.owner !== o.owner || run.repo !== o.repo)) throw new Error(`queueJob: run ${o.runId} belongs to ${run.owner}/${run.repo}`);
    const job = this.state.createJob({ ...o, waiting: o.waitForApproval });
    if (o.onlyRunner) this.state.pinned.set(job.id, o.onlyRunner);
    await this.ctx.emit(job, "queued");
    if (o.waitForApproval) await this.ctx.emit(job, "waiting");
    return structuredClone(job);
  }

  /** Approve a job waiting for an environment's approval: `queued` from now on, with its webhook. */
  async approveJob(id: number): Promise<void> {
    const job = this.state.jobs.get(id);
    if (!job) throw new Error(`approveJob: no job ${id}`);
    if (!this.state.approve(job)) throw new Error(`approveJob: job ${id} is ${job.status}, not waiting`);
    await this.ctx.emit(job, "queued");
  }

  /**
   * From now on only the runner named `runner` may take the queued job (see QueueJobOptions.onlyRunner);
   * none: whichever idle runner with matching labels asks first, as on GitHub.
   */
  pinJob(id: number, runner?: string): void {
    if (!this.state.jobs.has(id)) throw new Error(`pinJob: no job ${id}`);
    if (runner === undefined) this.state.pinned.delete(id);
    else this.state.pinned.set(id, runner);
  }

  /** Cancel a job: completed/cancelled plus its completed webhook. A running job's runner stays busy until it reports. */
  async cancelJob(id: number): Promise<void> {
    const job = this.state.jobs.get(id);
    if (!job) throw new Error(`cancelJob: no job ${id}`);
    if (!this.state.complete(job, "cancelled")) throw new Error(`cancelJob: job ${id} is already completed`);
    await this.ctx.emit(job, "completed");
  }

  /**
   * Hold webhooks back from now on (`false`: send new ones at once again; held ones stay held).
   * GitHub promises no order: `sendHeld` delivers held events late, shuffled or several times.
   */
  holdWebhooks(hold = true): void {
    this.hooks.holding = hold;
  }

  /** Events held back and not yet sent, oldest first. */
  heldWebhooks(): HeldDelivery[] {
    return this.hooks.heldDeliveries();
  }

  /** Send a held event `times` times (the first its delivery, the rest redeliveries of the same id); the receiver's statuses. */
  sendHeld(id: string, times = 1): Promise<number[]> {
    return this.hooks.sendHeld(id, times);
  }

  /**
   * A job queued before the test began, whose `queued` webhook GitHub attempted at `deliveredAt`
   * (ms) and got `status` for (0: no answer): listed by `GET /app/hook/deliveries` and redelivered
   * on request (its payload built now, as queueJob's), but nothing is sent now. Attempt ids follow
   * the calls, as GitHub's follow time: add the oldest first, before any webhook sent now.
   */
  addPastDelivery(o: { owner: string; repo: string; labels: string[]; status: number; deliveredAt: number }): DeliveryRecord {
    const job = this.state.createJob(o);
    const payload = workflowJobPayload(this.ctx.urls, this.state, this.ctx.installations.forOwner(job.owner), job, "queued");
    return structuredClone(this.hooks.past({ jobId: job.id, action: "queued", payload, status: o.status, deliveredAt: o.deliveredAt }));
  }

  /** Resend a past delivery (same X-GitHub-Delivery); resolves with the receiver's status. */
  redeliver(deliveryId: string): Promise<number> {
    return this.hooks.redeliver(deliveryId);
  }

  /**
   * Add an organization runner group; returns its id. Group 1 ("Default") always exists.
   * `allowsPublicRepositories`: its runners may take public repositories' jobs (GitHub's default:
   * no; without it, a public repository's job goes to none of them, whatever its visibility).
   * `repositories` ("owner/name"): visibility `selected`, its runners take jobs of these only
   * (see setRunnerGroupRepositories). `privateRepositories`: visibility `private` ("Private
   * repositories"), its runners take jobs of private and internal repositories only, whatever
   * `allowsPublicRepositories` says; not with `repositories`. `selectedWorkflows`:
   * `restricted_to_workflows` with these (said, not enforced: a fake job has no workflow file).
   */
  addRunnerGroup(name: string, opts: { allowsPublicRepositories?: boolean; repositories?: string[]; privateRepositories?: boolean; selectedWorkflows?: string[] } = {}): number {
    if (opts.repositories && opts.privateRepositories) throw new Error("addRunnerGroup: a group's visibility is `selected` or `private`, not both");
    const id = Math.max(...this.state.runnerGroups.keys()) + 1;
    this.state.runnerGroups.set(id, name);
    if (opts.allowsPublicRepositories) this.state.publicRunnerGroups.add(id);
    if (opts.privateRepositories) this.state.privateRunnerGroups.add(id);
    if (opts.repositories) this.setRunnerGroupRepositories(id, opts.repositories);
    if (opts.selectedWorkflows) this.state.workflowRunnerGroups.set(id, [...opts.selectedWorkflows]);
    return id;
  }

  /**
   * A runner group's repository access: `selected` with these repositories ("owner/name", any
   * case; one the fake has not met yet is made, private), or all of them (`undefined`), or its
   * private and internal ones (`"private"`).
   */
  setRunnerGroupRepositories(id: number, repositories: string[] | "private" | undefined): void {
    this.state.privateRunnerGroups.delete(id);
    if (repositories === "private") this.state.privateRunnerGroups.add(id);
    if (!repositories || repositories === "private") {
      this.state.selectedRunnerGroups.delete(id);
      return;
    }
    const names = repositories.map((full) => {
      const [owner = "", name = ""] = full.split("/");
      const info = this.state.repoInfo(owner, name);
      return `${info.owner}/${info.name}`.toLowerCase();
    });
    this.state.selectedRunnerGroups.set(id, new Set(names));
  }

  /**
   * Install the App on `owner`'s account (case-insensitive), one installation per account as on
   * GitHub: from now on its tokens work on `owner`'s repositories and, for an organization, its
   * organization routes, and nowhere else; the default installation's no longer do there. Later
   * webhooks of `owner`'s jobs carry its id. `id` defaults to one above the highest so far.
   */
  addInstallation(owner: string, opts: { id?: number; type?: AccountType } = {}): FakeInstallation {
    return { ...this.ctx.installations.add(owner, opts) };
  }

  /**
   * Change what installation `id` may do, as its account's owner does by accepting the App's new
   * permissions (or the App by dropping some): tokens minted from now on carry them; those minted
   * before keep the ones they were minted with, as GitHub's do.
   */
  setPermissions(id: number, permissions: Record<string, string>): void {
    const found = this.ctx.installations.byId(id);
    if (!found) throw new Error(`setPermissions: no installation ${id}`);
    Object.assign(found.permissions, permissions);
  }

  /** Every installation, the default one first (its `account` undefined: it covers every owner no other does). */
  installations(): FakeInstallation[] {
    return structuredClone(this.ctx.installations.list());
  }

  /**
   * Make a repository public or private, as its admin can at any time; later jobs and `GET
   * /repos/{owner}/{repo}` follow. No webhook: as for an App not subscribed to Repository events
   * (see publicize).
   */
  setRepositoryPrivate(owner: string, repo: string, isPrivate: boolean): void {
    this.state.repoInfo(owner, repo, isPrivate);
  }

  /**
   * Make a repository public, as its admin can at any time, and send the `repository` `publicized`
   * webhook GitHub sends an App subscribed to Repository events; resolves to the receiver's status.
   */
  publicize(owner: string, repo: string): Promise<number> {
    this.state.repoInfo(owner, repo, false);
    const payload = publicizedPayload(this.ctx.urls, this.state, this.ctx.installations.forOwner(owner), owner, repo);
    return this.hooks.deliver(0, "publicized", payload, "repository");
  }

  /** Set the fake's clock to run `seconds` ahead of the real one (negative: behind): its Date header and JWT checks follow. */
  setClockSkew(seconds: number): void {
    this.auth.skewMs = seconds * 1000;
  }

  /** Every secret the fake handed out: installation tokens and encoded JIT configs. */
  issuedSecrets(): string[] {
    return [...this.auth.issuedTokens(), ...this.state.issuedJitConfigs];
  }

  /** Make every installation token issued so far invalid (401 from then on). */
  expireTokens(): void {
    this.auth.expireTokens();
  }

  /**
   * Ends a running fake job before its FAKE_JOB_SECONDS (test/fakes/PROTOCOL.md): its fake-job
   * script sees a file `end-<job id>` beside the socket, which the runner container mounts.
   */
  async endJob(id: number): Promise<void> {
    const file = join(dirname(this.socketPath), `end-${id}`);
    await writeFile(file, "", { mode: 0o644 });
    this.endFiles.add(file);
  }

  jobs(): FakeJob[] {
    return structuredClone([...this.state.jobs.values()]);
  }

  runners(): FakeRunner[] {
    return structuredClone([...this.state.runners.values()]);
  }

  /** Resolves once every webhook queued so far has been attempted. */
  webhooksIdle(): Promise<void> {
    return this.hooks.idle();
  }

  async waitFor<T>(fn: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = fn();
      if (value !== undefined && value !== false) return value;
      if (Date.now() >= deadline) throw new Error(`FakeGitHub.waitFor: timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(50);
    }
  }

  /**
   * Stops the fake. When a request did not conform to GitHub's OpenAPI description (and was not
   * taken by takeInvalidRequests), it says which on stderr and sets the process's exit code to 1:
   * the test file fails (node --test) even when the refusal was swallowed by a retry or a log line.
   * It does not throw, so a test's cleanup after it still runs.
   */
  async close(): Promise<void> {
    await Promise.all(this.servers.map(stop));
    await this.hooks.idle();
    if (this.ownSocketDir) await rm(this.ownSocketDir, { recursive: true, force: true });
    else {
      // A directory of the test's: the next fake there numbers its jobs from 1 again.
      await rm(this.socketPath, { force: true });
      for (const file of this.endFiles) await rm(file, { force: true });
    }
    const invalid = this.takeInvalidRequests();
    if (invalid.length > 0) {
      process.exitCode = 1;
      const lines = invalid.map((r) => `  ${r.method} ${r.path} (${r.route}) -> ${r.status}${r.body ? ` body ${r.body.slice(0, 300)}` : ""}\n    ${r.problems.join("\n    ")}`);
      console.error(`FakeGitHub: ${invalid.length} request(s) that GitHub's OpenAPI description refuses (exit code set to 1):\n${lines.join("\n")}`);
    }
  }
}
