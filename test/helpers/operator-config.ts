import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import type { FakeGitHub } from "../fakes/github/index.ts";
import { WEBHOOK_SECRET } from "./config.ts";

const dirs: string[] = [];
// The key and secret do not outlive the test file's process, whichever way its hooks end.
process.on("exit", () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/**
 * A config file like an operator's, for `jitrunner ... --config FILE`: `config` plus a `github`
 * section for the fake, whose App key and webhook secret are files beside it (mode 0600). Its
 * directory is removed when the process exits. Returns the file's path.
 */
export function writeOperatorConfig(fake: FakeGitHub, config: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), "jitrunner-config-"));
  dirs.push(dir);
  writeFileSync(join(dir, "app.pem"), fake.privateKey, { mode: 0o600 });
  writeFileSync(join(dir, "webhook-secret"), WEBHOOK_SECRET, { mode: 0o600 });
  const github = { appId: fake.appId, apiUrl: fake.url, privateKeyFile: join(dir, "app.pem"), webhookSecretFile: join(dir, "webhook-secret") };
  const file = join(dir, "jitrunner.yml");
  writeFileSync(file, stringify({ github, ...config }));
  return file;
}
