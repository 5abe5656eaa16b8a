import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfig, type Config } from "./config/load.ts";
import { ConfigError, errorMessage } from "./errors.ts";
import { createLogger } from "./logger.ts";
import { start, type Mode } from "./main.ts";

const USAGE = `Usage: jitrunner <command> --config FILE

Commands:
  server        webhook ingress, /metrics, /healthz, /readyz
  worker        launch and remove runner containers on this Docker host
  all           server and worker in one process (the single-host default)
  check-config  validate the config and print it resolved, secrets redacted

Options:
  -c, --config FILE   YAML config (default: $JITRUNNER_CONFIG or ./jitrunner.yml)
  -h, --help          show this help

Secrets come from files named in the config (github.privateKeyFile, github.webhookSecretFile)
or from JITRUNNER_GITHUB_PRIVATE_KEY and JITRUNNER_GITHUB_WEBHOOK_SECRET.
See README.md for every option.`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { config: { type: "string", short: "c" }, help: { type: "boolean", short: "h" } },
  });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  if (!["server", "worker", "all", "check-config"].includes(command)) {
    process.stderr.write(`jitrunner: unknown command '${command}'\n\n${USAGE}\n`);
    return 2;
  }
  const path = values.config ?? process.env.JITRUNNER_CONFIG ?? "jitrunner.yml";
  let config: Config;
  try {
    config = loadConfig({ text: readFileSync(path, "utf8"), env: process.env, readFile: (p) => readFileSync(p, "utf8") });
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`jitrunner: ${path}: ${err.message}\n`);
    else process.stderr.write(`jitrunner: cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}\n`);
    return 1;
  }
  if (command === "check-config") {
    process.stdout.write(`${JSON.stringify(config, null, 2)}\n`);
    return 0;
  }

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
