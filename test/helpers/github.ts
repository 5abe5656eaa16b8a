import type { FakeGitHub } from "../fakes/github/index.ts";
import assert from "node:assert/strict";
import { Secret } from "../../src/config/secret.ts";
import { GitHubError } from "../../src/errors.ts";
import { OctokitGitHub, type OctokitGitHubOptions } from "../../src/github/octokit-client.ts";
import { createLogger } from "../../src/logger.ts";
import { Metrics } from "../../src/metrics/metrics.ts";

/**
 * jitrunner's real GitHub client, talking to `fake` as the App: silent, with metrics of its own,
 * unless `extra` says otherwise (a logger to read, shared metrics, a write budget, a shorter wait).
 */
export function githubFor(fake: FakeGitHub, extra: Partial<OctokitGitHubOptions> = {}): OctokitGitHub {
  return new OctokitGitHub({
    appId: fake.appId,
    privateKey: new Secret(fake.privateKey),
    apiUrl: fake.url,
    logger: createLogger("silent"),
    metrics: new Metrics({ processMetrics: false }),
    ...extra,
  });
}

/** The GitHubError `p` rejects with (failing the test if it resolves, or rejects with anything else). */
export async function githubFailure(p: Promise<unknown>): Promise<GitHubError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof GitHubError, `expected a GitHubError, got ${String(err)}`);
  return err;
}
