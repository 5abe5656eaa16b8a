import type { Octokit, OctokitOptions } from "@octokit/core";

/** GitHub's clock as the plugin below needs it: learn from a Date header, and GitHub's time now (ms). */
export interface RateLimitClock {
  observe(date: string | undefined): void;
  now(): number;
}

/** The part of a failed request's error read here (octokit's RequestError). */
interface Refusal {
  status?: number;
  response?: { headers?: Record<string, string | number | undefined> };
}

/**
 * `x-ratelimit-reset` (epoch seconds on GitHub's clock) put on this host's clock, and never before
 * this host's current second. @octokit/plugin-throttling waits `ceil(reset - Date.now()) + 1` s
 * (none when that is negative), so with this the wait is at least 1 s.
 */
export function resetOnHostClock(resetSeconds: number, githubAheadMs: number, hostNowMs: number): number {
  return Math.max(Math.ceil((resetSeconds * 1000 - githubAheadMs) / 1000), Math.ceil(hostNowMs / 1000));
}

/**
 * @octokit/plugin-throttling reads `x-ratelimit-reset` against this host's Date.now(): with this
 * host's clock S s ahead of GitHub's, a reset less than S s away comes out as no wait at all, and a
 * rate-limited call is sent again at once until its retries run out. Applied before the throttling
 * plugin (so that its hook runs inside the throttling plugin's and sees the refusal first), this
 * learns GitHub's clock from the refusal's Date header and rewrites the refusal's reset onto this
 * host's clock (resetOnHostClock) before the throttling plugin reads it. Options: `githubClock`.
 */
export function rateLimitResetPlugin(octokit: Octokit, options: OctokitOptions): Record<string, never> {
  const clock = options.githubClock as RateLimitClock | undefined;
  if (!clock) return {};
  octokit.hook.wrap("request", async (request, opts) => {
    try {
      return await request(opts);
    } catch (err) {
      const refusal = err as Refusal | null;
      const headers = refusal?.response?.headers;
      const status = refusal?.status;
      const reset = Number(headers?.["x-ratelimit-reset"]);
      if (headers && (status === 403 || status === 429) && Number.isFinite(reset) && reset > 0) {
        clock.observe(headers.date === undefined ? undefined : String(headers.date));
        const now = Date.now();
        headers["x-ratelimit-reset"] = String(resetOnHostClock(reset, clock.now() - now, now));
      }
      throw err;
    }
  });
  return {};
}
