import { createAppAuth } from "@octokit/auth-app";
import { Octokit } from "@octokit/core";
import { retry } from "@octokit/plugin-retry";
import { throttling } from "@octokit/plugin-throttling";
import type { Logger } from "pino";
import type { Secret } from "../config/secret.ts";
import { Secret as SecretValue } from "../config/secret.ts";
import { GitHubError, errorMessage } from "../errors.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { GitHubClient, JitRunner, JobStatus, RunnerScope } from "./client.ts";

const JitOctokit = Octokit.plugin(throttling, retry);
type JitOctokitInstance = InstanceType<typeof JitOctokit>;

export interface OctokitGitHubOptions {
  appId: number;
  privateKey: Secret;
  apiUrl: string;
  logger: Logger;
  metrics: Metrics;
}

/**
 * GitHubClient over @octokit/core: App installation tokens from @octokit/auth-app, per-installation
 * throttling, retries on 5xx/network errors but never on 409/422 (they carry meaning: name taken,
 * runner busy).
 */
export class OctokitGitHub implements GitHubClient {
  readonly #opts: OctokitGitHubOptions;
  readonly #clients = new Map<number, JitOctokitInstance>();

  constructor(opts: OctokitGitHubOptions) {
    this.#opts = opts;
  }

  #client(installationId: number): JitOctokitInstance {
    let client = this.#clients.get(installationId);
    if (client) return client;
    const { logger, metrics } = this.#opts;
    client = new JitOctokit({
      baseUrl: this.#opts.apiUrl.replace(/\/+$/, ""),
      authStrategy: createAppAuth,
      auth: { appId: this.#opts.appId, privateKey: this.#opts.privateKey.reveal(), installationId },
      userAgent: "jitrunner",
      log: { debug: () => {}, info: () => {}, warn: (m: string) => logger.warn(m), error: (m: string) => logger.error(m) },
      retry: { doNotRetry: [400, 401, 403, 404, 409, 410, 422, 451] },
      throttle: {
        id: `installation-${installationId}`,
        onRateLimit: (retryAfter: number, options: { method: string; url: string }, _o: unknown, retryCount: number) => {
          logger.warn({ route: options.url, retryAfter }, "GitHub rate limit hit");
          return retryCount < 3;
        },
        onSecondaryRateLimit: (retryAfter: number, options: { method: string; url: string }, _o: unknown, retryCount: number) => {
          logger.warn({ route: options.url, retryAfter }, "GitHub secondary rate limit hit");
          return retryCount < 3;
        },
      },
    });
    client.hook.after("request", (response, options) => {
      metrics.githubRequest(String(options.url), response.status);
      const remaining = Number(response.headers["x-ratelimit-remaining"]);
      if (Number.isFinite(remaining)) metrics.githubRateLimitRemaining(installationId, remaining);
    });
    client.hook.error("request", (error, options) => {
      metrics.githubRequest(String(options.url), (error as { status?: number }).status ?? 0);
      throw error;
    });
    this.#clients.set(installationId, client);
    return client;
  }

  async generateJitConfig(scope: RunnerScope, req: { name: string; labels: string[]; runnerGroupId: number }): Promise<JitRunner> {
    const body = { name: req.name, labels: req.labels, runner_group_id: req.runnerGroupId, work_folder: "_work" };
    const res = await this.#call("generate JIT config", () =>
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
    );
    return { runnerId: res.data.runner.id, encodedJitConfig: new SecretValue(res.data.encoded_jit_config) };
  }

  async deleteRunner(scope: RunnerScope, runnerId: number): Promise<"deleted" | "not_found" | "busy"> {
    try {
      await this.#call("delete runner", () =>
        scope.repo
          ? this.#client(scope.installationId).request("DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}", {
              owner: scope.owner,
              repo: scope.repo,
              runner_id: runnerId,
            })
          : this.#client(scope.installationId).request("DELETE /orgs/{org}/actions/runners/{runner_id}", {
              org: scope.owner,
              runner_id: runnerId,
            }),
      );
      return "deleted";
    } catch (err) {
      if (err instanceof GitHubError && err.status === 404) return "not_found";
      if (err instanceof GitHubError && err.status === 422) return "busy";
      throw err;
    }
  }

  async getJob(installationId: number, owner: string, repo: string, jobId: number): Promise<JobStatus> {
    const res = await this.#call("get job", () =>
      this.#client(installationId).request("GET /repos/{owner}/{repo}/actions/jobs/{job_id}", { owner, repo, job_id: jobId }),
    );
    return { status: res.data.status, conclusion: res.data.conclusion ?? null, runnerName: res.data.runner_name ?? null };
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const status = (err as { status?: number }).status;
      const retryable = status === undefined || status === 0 || status >= 500 || status === 429 || status === 403;
      // GitHub's message only: octokit's error carries the request, and with it tokens and JIT configs.
      const detail = (err as { response?: { data?: { message?: string } } }).response?.data?.message ?? errorMessage(err).split("\n")[0];
      throw new GitHubError(`${what} failed${status ? ` (${status})` : ""}: ${detail}`, status, { retryable });
    }
  }
}
