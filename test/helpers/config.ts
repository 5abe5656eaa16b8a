import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { loadConfig, type Config } from "../../src/config/load.ts";
import type { ConfigInput } from "../../src/config/schema.ts";

export const WEBHOOK_SECRET = "test-webhook-secret-3f9a1c";

let key: string | undefined;
/** An RSA key that looks like a GitHub App key. */
export function testPrivateKey(): string {
  key ??= generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs1", format: "pem" }).toString();
  return key;
}

/** A validated Config through the real loader, from a partial config object. */
export function testConfig(input: Partial<ConfigInput> & { privateKey?: string; webhookSecret?: string; previousWebhookSecret?: string } = {}): Config {
  const { privateKey, webhookSecret, previousWebhookSecret, ...rest } = input;
  const raw: ConfigInput = {
    github: { appId: 1, apiUrl: "http://127.0.0.1:9/" },
    pools: [{ name: "default", labels: ["self-hosted", "linux", "x64"], image: "jitrunner-test-runner:latest" }],
    ...rest,
  } as ConfigInput;
  // Network `none` for every pool that names none, as every runner in tests (their traffic stays
  // on unix sockets): the default would put a runner on a bridge with a way out.
  raw.pools = (raw.pools as Array<Record<string, unknown>>).map((p) => ({ networkMode: "none", ...p })) as ConfigInput["pools"];
  return loadConfig({
    text: JSON.stringify(raw),
    env: {
      JITRUNNER_GITHUB_PRIVATE_KEY: privateKey ?? testPrivateKey(),
      JITRUNNER_GITHUB_WEBHOOK_SECRET: webhookSecret ?? WEBHOOK_SECRET,
      ...(previousWebhookSecret && { JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET: previousWebhookSecret }),
    },
    // Secrets come from the environment above; files named in the config (an engine's TLS
    // files) are read as jitrunner reads them.
    readFile: (path) => readFileSync(path, "utf8"),
  });
}
