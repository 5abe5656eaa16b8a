/**
 * The secrets rule, checked where it is most likely broken: on failure paths, where an error that
 * carries a request or its answer (a JIT config in a container create, a token in a header) gets
 * logged, counted or shown under "Recent launch failures". Every secret a test's jitrunner held
 * or was handed is looked for in its logs, its /metrics and its status page `/`.
 */
import assert from "node:assert/strict";
import type { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "./config.ts";

/** A secret and what to call it in a failure message (never the secret itself). */
interface Known {
  what: string;
  value: string;
}

/** Long enough to be the start of no other string, short enough to survive a message cut short. */
const PREFIX_CHARS = 32;

/**
 * Every secret of a test against `fake`: the installation tokens and encoded JIT configs it issued,
 * the runner token inside each JIT config, the webhook secret, and each line of the App's private key.
 */
export function secretsOf(fake: FakeGitHub, webhookSecret = WEBHOOK_SECRET): Known[] {
  const known: Known[] = [];
  const issued = fake.issuedSecrets();
  issued.forEach((value, i) => {
    const kind = value.startsWith("ghs_") ? "installation token" : "JIT config";
    known.push({ what: `${kind} #${i}`, value });
    // A token in GitHub's stateless format is a JWT after `ghs_APPID_`: its signature is what a
    // message cut at a dot would still hold.
    const signature = kind === "installation token" ? value.split(".")[2] : undefined;
    if (signature) known.push({ what: `the signature of installation token #${i}`, value: signature });
    if (kind === "JIT config") {
      const token = (() => {
        try {
          return (JSON.parse(Buffer.from(value, "base64").toString("utf8")) as { token?: unknown }).token;
        } catch {
          return undefined;
        }
      })();
      if (typeof token === "string" && token.length >= 16) known.push({ what: `runner token in JIT config #${i}`, value: token });
    }
  });
  known.push({ what: "webhook secret", value: webhookSecret });
  fake.privateKey
    .split("\n")
    .filter((line) => line.length >= 40 && !line.startsWith("-----"))
    .forEach((value, i) => known.push({ what: `private key line ${i + 1}`, value }));
  // A secret cut short (an error message truncated, a body shown in part) still starts as it did.
  for (const k of [...known]) {
    if (k.value.length > PREFIX_CHARS + 8) known.push({ what: `the first ${PREFIX_CHARS} characters of ${k.what}`, value: k.value.slice(0, PREFIX_CHARS) });
  }
  return known;
}

/** HTML with its character references decoded: an escaped secret is still a secret on the page. */
function unescapeHtml(html: string): string {
  const named: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", sol: "/", equals: "=", plus: "+" };
  return html
    .replace(/&#x([0-9a-f]+);/gi, (_m, hex: string) => String.fromCodePoint(parseInt(hex, 16)))
    .replace(/&#(\d+);/g, (_m, dec: string) => String.fromCodePoint(Number(dec)))
    .replace(/&([a-z]+);/gi, (m, name: string) => named[name.toLowerCase()] ?? m);
}

export interface Outputs {
  /** The system's log output. */
  logs?: string;
  /**
   * A running jitrunner: its /metrics, and its status page `/`, which must be served unless
   * `statusPage: false` says it is a worker (a page that broke must not pass unchecked).
   */
  sys?: { url: string; statusPage?: false };
  /** Any other text the test holds (an error's message and stack, a CLI's output), by name. */
  texts?: Record<string, string>;
  /** The webhook secret the system was given, when not WEBHOOK_SECRET. */
  webhookSecret?: string;
}

/**
 * Fails, naming the secret's kind and where it was found (never the secret), if any secret of
 * `secretsOf(fake)` appears in the outputs. Returns what was checked: the count of issued JIT
 * configs and tokens, for tests that must not pass by having issued none.
 */
export async function assertNoSecrets(fake: FakeGitHub, o: Outputs): Promise<{ jitConfigs: number; tokens: number; places: string[] }> {
  const texts: Record<string, string> = { ...o.texts };
  if (o.logs !== undefined) texts.logs = o.logs;
  if (o.sys) {
    const metrics = await fetch(`${o.sys.url}/metrics`, { signal: AbortSignal.timeout(10_000) });
    assert.equal(metrics.status, 200, "/metrics served");
    texts["/metrics"] = await metrics.text();
    const page = await fetch(`${o.sys.url}/`, { signal: AbortSignal.timeout(10_000) });
    if (o.sys.statusPage === false) assert.equal(page.status, 404, "a worker serves no status page");
    else {
      assert.equal(page.status, 200, "the status page served");
      texts["status page"] = unescapeHtml(await page.text());
    }
  }
  const known = secretsOf(fake, o.webhookSecret);
  const found: string[] = [];
  for (const [place, text] of Object.entries(texts)) {
    for (const k of known) if (text.includes(k.value)) found.push(`${k.what} in ${place}`);
  }
  assert.deepEqual(found, [], `secrets found: ${found.join("; ")}`);
  const issued = fake.issuedSecrets();
  return { jitConfigs: issued.filter((s) => !s.startsWith("ghs_")).length, tokens: issued.filter((s) => s.startsWith("ghs_")).length, places: Object.keys(texts) };
}
