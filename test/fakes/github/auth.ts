// App credentials: a fresh RSA key, App JWT verification (RS256) and installation tokens,
// on the fake's own clock (which may be skewed from the caller's, as a real server's may be).
import { createPublicKey, generateKeyPairSync, randomBytes, verify, type KeyObject } from "node:crypto";

const MAX_JWT_SECONDS = 600; // GitHub: exp at most 10 minutes in the future
const CLOCK_SKEW_SECONDS = 60;
const TOKEN_SECONDS = 3600;

export class FakeAuth {
  readonly privateKey: string;
  private readonly publicKey: KeyObject;
  /** Each token's expiry (ms, the fake's clock), the installation it was minted for and that installation's permissions then. */
  private readonly tokens = new Map<string, { expires: number; installationId: number; permissions: Readonly<Record<string, string>> }>();
  private readonly usedJwts = new Set<string>();
  /** The fake's clock minus the real one, in ms (setClockSkew). */
  skewMs = 0;
  /** Answer 404 to an installation token request whose App JWT was used before (GitHub does, for byte-identical JWTs). */
  rejectReusedJwts = false;

  constructor(readonly appId: number) {
    const pair = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      privateKeyEncoding: { type: "pkcs1", format: "pem" }, // what GitHub hands out
      publicKeyEncoding: { type: "spki", format: "pem" },
    });
    this.privateKey = pair.privateKey;
    this.publicKey = createPublicKey(pair.publicKey);
  }

  /** The fake server's time in ms: what its Date header says and what JWTs are checked against. */
  now(): number {
    return Date.now() + this.skewMs;
  }

  /** True when this JWT was presented before (and remembers it). Only with `rejectReusedJwts`. */
  replayed(authorization: string | undefined): boolean {
    if (!this.rejectReusedJwts) return false;
    const jwt = (authorization ?? "").replace(/^bearer\s+/i, "");
    if (this.usedJwts.has(jwt)) return true;
    this.usedJwts.add(jwt);
    return false;
  }

  /** undefined when the header carries a valid App JWT, else GitHub's error message. */
  checkJwt(authorization: string | undefined): string | undefined {
    const m = /^bearer\s+([\w-]+)\.([\w-]+)\.([\w-]+)$/i.exec(authorization ?? "");
    if (!m) return "A JSON web token could not be decoded";
    const [, h = "", p = "", s = ""] = m;
    let header: { alg?: unknown };
    let claims: { iss?: unknown; exp?: unknown; iat?: unknown };
    try {
      header = JSON.parse(Buffer.from(h, "base64url").toString("utf8"));
      claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
    } catch {
      return "A JSON web token could not be decoded";
    }
    if (header.alg !== "RS256") return "A JSON web token could not be decoded";
    if (!verify("RSA-SHA256", Buffer.from(`${h}.${p}`), this.publicKey, Buffer.from(s, "base64url"))) {
      return "A JSON web token could not be decoded";
    }
    const nowS = Math.floor(this.now() / 1000);
    if (String(claims.iss) !== String(this.appId)) return "'Issuer' claim ('iss') must be the App's id";
    if (typeof claims.iat !== "number" || claims.iat > nowS + CLOCK_SKEW_SECONDS) {
      return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
    }
    if (typeof claims.exp !== "number" || claims.exp <= nowS) {
      return "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
    }
    if (claims.exp > nowS + MAX_JWT_SECONDS) return "'Expiration time' claim ('exp') is too far in the future";
    return undefined;
  }

  /** Every installation token handed out, for tests that grep output for secrets. */
  issuedTokens(): string[] {
    return [...this.tokens.keys()];
  }

  /**
   * A token for `installationId` only: the Router refuses it on owners other installations cover,
   * and on routes that need a permission not among `permissions` (the installation's at the mint).
   */
  issueToken(installationId: number, permissions: Readonly<Record<string, string>>): { token: string; expiresAt: string } {
    const expires = this.now() + TOKEN_SECONDS * 1000;
    // GitHub's stateless format (`ghs_APPID_JWT`), rolled out from April 2026 (the endpoint's
    // description in GitHub's OpenAPI: apps must not rely on 40 characters), every other token;
    // the others as before: `ghs_` and 36 letters and digits (base64url's `-` and `_` are not in them).
    const token =
      this.tokens.size % 2 === 1
        ? `ghs_${this.appId}_${[{ alg: "RS256", typ: "JWT" }, { iss: this.appId, ins: installationId, exp: Math.floor(expires / 1000) }]
            .map((part) => Buffer.from(JSON.stringify(part)).toString("base64url"))
            .join(".")}.${randomBytes(256).toString("base64url")}`
        : `ghs_${randomBytes(36).toString("base64").replace(/[^A-Za-z0-9]/g, "").slice(0, 36).padEnd(36, "0")}`;
    this.tokens.set(token, { expires, installationId, permissions: { ...permissions } });
    return { token, expiresAt: new Date(expires).toISOString().replace(/\.\d{3}Z$/, "Z") };
  }

  /** The installation of the live installation token the header carries (`token X` or `bearer X`); undefined when none. */
  checkToken(authorization: string | undefined): number | undefined {
    const m = /^(?:token|bearer)\s+(\S+)$/i.exec(authorization ?? "");
    const issued = m?.[1] ? this.tokens.get(m[1]) : undefined;
    return issued && issued.expires > this.now() ? issued.installationId : undefined;
  }

  /** The permissions the live installation token in the header was minted with; undefined when none. */
  tokenPermissions(authorization: string | undefined): Readonly<Record<string, string>> | undefined {
    const m = /^(?:token|bearer)\s+(\S+)$/i.exec(authorization ?? "");
    const issued = m?.[1] ? this.tokens.get(m[1]) : undefined;
    return issued && issued.expires > this.now() ? issued.permissions : undefined;
  }

  /** Test helper: make every issued installation token expire now. */
  expireTokens(): void {
    for (const issued of this.tokens.values()) issued.expires = 0;
  }
}
