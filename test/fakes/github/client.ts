// A raw test client for FakeGitHub: App JWT and installation token through the
// real @octokit/auth-app, then plain fetch so tests see exact statuses and bodies.
import { createAppAuth } from "@octokit/auth-app";
import { Octokit } from "@octokit/core";
import type { FakeGitHub } from "./index.ts";

export interface RawResponse {
  status: number;
  body: unknown;
  headers: Headers;
}

export type Credential = "app" | "installation" | "none" | { authorization: string };

export class FakeGitHubClient {
  private readonly octokit: Octokit;

  /** `installationId`: whose tokens `installation` calls carry (default: the fake's default installation). */
  constructor(private readonly fake: FakeGitHub, opts: { installationId?: number } = {}) {
    this.octokit = new Octokit({
      baseUrl: fake.url,
      authStrategy: createAppAuth,
      auth: { appId: fake.appId, privateKey: fake.privateKey, installationId: opts.installationId ?? fake.installationId },
    });
  }

  async appJwt(): Promise<string> {
    return ((await this.octokit.auth({ type: "app" })) as { token: string }).token;
  }

  async installationToken(): Promise<string> {
    return ((await this.octokit.auth({ type: "installation" })) as { token: string }).token;
  }

  async call(method: string, path: string, o: { body?: unknown; auth?: Credential } = {}): Promise<RawResponse> {
    const auth = o.auth ?? "installation";
    const headers: Record<string, string> = { accept: "application/vnd.github+json", "x-github-api-version": "2022-11-28" };
    if (auth === "app") headers.authorization = `bearer ${await this.appJwt()}`;
    else if (auth === "installation") headers.authorization = `token ${await this.installationToken()}`;
    else if (auth !== "none") headers.authorization = auth.authorization;
    if (o.body !== undefined) headers["content-type"] = "application/json; charset=utf-8";
    const res = await fetch(`${this.fake.url}${path}`, {
      method,
      headers,
      body: o.body === undefined ? undefined : JSON.stringify(o.body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    return { status: res.status, body: text ? (JSON.parse(text) as unknown) : undefined, headers: res.headers };
  }
}
