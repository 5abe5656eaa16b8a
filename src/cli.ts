import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfig, type Config } from "./config/load.ts";
import { ConfigError, errorMessage } from "./errors.ts";
import { createLogger } from "./logger.ts";
import { start, type Mode } from "./main.ts";
import { drainHost } from "./cli/drain.ts";
import { COMMAND_HELP, USAGE } from "./cli/help.ts";
import { appManifest } from "./cli/manifest.ts";
import { statusCommand } from "./cli/status.ts";

/** A URL as it may be printed: a password in it (`redis://:PASSWORD@host`, `?password=`) replaced. */
function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (!u.password && !u.searchParams.has("password")) return url;
    if (u.password) u.password = "redacted";
    if (u.searchParams.has("password")) u.searchParams.set("password", "redacted");
    return u.href;
  } catch {
    // Not a URL the WHATWG parser takes: hide whatever stands before an @.
    return url.replace(/\/\/[^/]*@/, "//redacted@");
  }
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: "string", short: "c" },
        help: { type: "boolean", short: "h" },
        host: { type: "string" },
        "no-wait": { type: "boolean" },
        json: { type: "boolean" },
        url: { type: "string" },
        name: { type: "string" },
        "redirect-url": { type: "string" },
      },
    });
  } catch (err) {
    process.stderr.write(`jitrunner: ${errorMessage(err)}\n\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const command = positionals[0];
  if (!command) {
    process.stdout.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const help = COMMAND_HELP[command];
  if (!help) {
    process.stderr.write(`jitrunner: unknown command '${command}'\n\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${help}\n`);
    return 0;
  }
  if (command === "app-manifest") {
    try {
      const manifest = appManifest({ url: values.url, name: values.name, redirectUrl: values["redirect-url"] });
      process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
      return 0;
    } catch (err) {
      process.stderr.write(`jitrunner app-manifest: ${errorMessage(err)}\n`);
      return 2;
    }
  }
  const path = values.config ?? process.env.JITRUNNER_CONFIG ?? "jitrunner.yml";
  let config: Config;
  try {
    // status and drain only read Redis: an operator's shell needs no GitHub secrets for them.
    const githubSecrets = command !== "status" && command !== "drain";
    config = loadConfig({ text: readFileSync(path, "utf8"), env: process.env, readFile: (p) => readFileSync(p, "utf8"), githubSecrets });
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`jitrunner: ${path}: ${err.message}\n`);
    else process.stderr.write(`jitrunner: cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}\n`);
    return 1;
  }
  if (command === "check-config") {
    const shown = { ...config, redis: { ...config.redis, url: withoutPassword(config.redis.url) } };
    process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
    return 0;
  }
  if (command === "drain") {
    if (!values.host) {
      process.stderr.write("jitrunner drain: --host ID is required\n");
      return 2;
    }
    return drainHost(config, values.host, !values["no-wait"], process.stdout);
  }
  if (command === "status") return statusCommand(config, { json: !!values.json }, process.stdout, process.stderr);

  const logger = createLogger(config.logLevel);
  const running = await start(config, command as Mode, logger);
  await new Promise<void>((resolve) => {
    let signals = 0;
    const onSignal = (signal: string) => {
      if (++signals > 1) {
        logger.warn({ signal }, "second signal: exiting now");
        process.exit(1);
      }
      logger.info({ signal }, "shutting down: no new demand, finishing in-flight launches");
      running.close().then(resolve, (err) => {
        logger.error({ err: errorMessage(err) }, "shutdown incomplete");
        resolve();
      });
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    void running.drained.then(() => {
      logger.info("drained: every job on this host finished; exiting");
      running.close().then(resolve, resolve);
    });
  });
  logger.info("stopped");
  return 0;
}

/** Exit once stdout and stderr are flushed (a piped `check-config` must not be cut short). */
function exit(code: number): void {
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

main(process.argv.slice(2)).then(exit, (err) => {
  process.stderr.write(`jitrunner: ${errorMessage(err)}\n`);
  exit(1);
});
