import { createPrivateKey, randomUUID, sign, type KeyObject } from "node:crypto";

/** GitHub accepts an App JWT that expires at most 10 minutes after it was issued. */
const LIFETIME_SECONDS = 600;
/** Issued this long before "now", as @octokit/auth-app's own signer does, for clocks a little ahead. */
const BACKDATE_SECONDS = 30;
/** Offsets smaller than this are Date-header rounding and network time, not skew. */
const SKEW_NOISE_SECONDS = 2;

/** Errors GitHub gives an App JWT whose times it does not accept (checked by auth-app's own retry too). */
export const JWT_TIME_ERROR = /'(Expiration time|Issued at)' claim \('(exp|iat)'\)/;

/**
 * GitHub's clock as seen from here, learned from the `Date` header of its answers. App JWTs carry
 * times that GitHub checks against its own clock, so a host whose clock is off by more than a
 * few seconds has its JWTs (and with them every installation token) refused.
 */
export class GitHubClock {
  #offsetSeconds = 0;

  /** Seconds GitHub's clock is ahead of ours (negative: behind). */
  get offsetSeconds(): number {
    return this.#offsetSeconds;
  }

  /** GitHub's time now, in ms. */
  now(): number {
    return Date.now() + this.#offsetSeconds * 1000;
  }

  /** Learns from one answer's Date header; returns the new offset when it changed. */
  observe(date: string | undefined): number | undefined {
    const at = date ? Date.parse(date) : Number.NaN;
    if (!Number.isFinite(at)) return undefined;
    // A Date header has whole seconds: its middle is half a second later.
    const offset = Math.round((at + 500 - Date.now()) / 1000);
    const next = Math.abs(offset) < SKEW_NOISE_SECONDS ? 0 : offset;
    if (Math.abs(next - this.#offsetSeconds) < SKEW_NOISE_SECONDS) return undefined;
    this.#offsetSeconds = next;
    return next;
  }
}

export type CreateJwt = (appId: string | number, timeDifference?: number) => Promise<{ jwt: string; expiresAt: string }>;

/**
 * auth-app's `createJwt`: RS256 App JWTs that carry a random `jti`. @octokit/auth-app's built-in
 * signer (universal-github-app-jwt) puts only iat/exp/iss in a JWT, so two processes signing in
 * the same second produce byte-identical tokens, and GitHub answers the second one's token request
 * with 404 (terraform-aws-github-runner#5025). Times follow GitHub's clock: auth-app's
 * `timeDifference` when it passes one (its retry after a time-claim 401), else `clock`.
 */
export function appJwtSigner(privateKeyPem: string, clock: GitHubClock): CreateJwt {
  // PKCS#1 (what GitHub hands out) and PKCS#8 both parse.
  const key: KeyObject = createPrivateKey(privateKeyPem);
  return async (appId, timeDifference) => {
    const now = Math.floor(Date.now() / 1000) + (timeDifference ?? clock.offsetSeconds);
    const iat = now - BACKDATE_SECONDS;
    const exp = iat + LIFETIME_SECONDS;
    const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString("base64url");
    const unsigned = `${b64({ alg: "RS256", typ: "JWT" })}.${b64({ iat, exp, iss: appId, jti: randomUUID() })}`;
    const signature = sign("RSA-SHA256", Buffer.from(unsigned), key).toString("base64url");
    return { jwt: `${unsigned}.${signature}`, expiresAt: new Date(exp * 1000).toISOString() };
  };
}
