import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfig, type Config, type SecretsFor } from "./config/load.ts";
import { connectionWarnings } from "./docker/dockerode-driver.ts";
import { ConfigError, errorMessage } from "./errors.ts";
import { createLogger } from "./logger.ts";
import { start, type Mode } from "./main.ts";
import { drainHost, undoDrain } from "./cli/drain.ts";
import { COMMAND_HELP, USAGE } from "./cli/help.ts";
import { runUntilStopped } from "./cli/run.ts";
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

/**
 * The GitHub secrets a command loads (secretsNeeded): a run mode its own, `check-config` those of
 * the mode it is asked about (--mode; default `all`, both), `status` and `drain` none (they only
 * read Redis: an operator's shell needs no GitHub secret). Undefined: not a mode.
 */
function secretsForCommand(command: string, mode: string | undefined): SecretsFor | undefined {
  if (command === "status" || command === "drain") return "none";
  const wanted = command === "check-config" ? (mode ?? "all") : command;
  return wanted === "server" || wanted === "worker" || wanted === "all" ? wanted : undefined;
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
        undo: { type: "boolean" },
        json: { type: "boolean" },
        url: { type: "string" },
        name: { type: "string" },
        "redirect-url": { type: "string" },
        mode: { type: "string" },
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
  const secretsFor = secretsForCommand(command, values.mode);
  if (!secretsFor) {
    process.stderr.write(`jitrunner ${command}: --mode must be server, worker or all\n`);
    return 2;
  }
  const path = values.config ?? process.env.JITRUNNER_CONFIG ?? "jitrunner.yml";
  let config: Config;
  try {
    config = loadConfig({ text: readFileSync(path, "utf8"), env: process.env, readFile: (p) => readFileSync(p, "utf8"), secretsFor });
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`jitrunner: ${path}: ${err.message}\n`);
    else process.stderr.write(`jitrunner: cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}\n`);
    return 1;
  }
  if (command === "check-config") {
    const shown = { ...config, redis: { ...config.redis, url: withoutPassword(config.redis.url) } };
    process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
    if (values.mode !== "server") for (const w of connectionWarnings(config.worker.docker)) process.stderr.write(`jitrunner check-config: warning: ${w}\n`);
    return 0;
  }
  if (command === "drain") {
    if (!values.host) {
      process.stderr.write("jitrunner drain: --host ID is required\n");
      return 2;
    }
    if (values.undo) return undoDrain(config, values.host, process.stdout);
    return drainHost(config, values.host, !values["no-wait"], process.stdout);
  }
  if (command === "status") return statusCommand(config, { json: !!values.json }, process.stdout, process.stderr);

  const logger = createLogger(config.logLevel);
  const running = await start(config, command as Mode, logger);
  const code = await runUntilStopped(running, logger);
  logger.info(code === 0 ? "stopped" : "stopped, shutdown incomplete");
  return code;
}

/** Exit once stdout and stderr are flushed (a piped `check-config` must not be cut short). */
function exit(code: number): void {
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

main(process.argv.slice(2)).then(exit, (err) => {
  process.stderr.write(`jitrunner: ${errorMessage(err)}\n`);
  exit(1);
});
