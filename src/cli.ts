import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfigWithOrigins, type Config, type SecretsFor } from "./config/load.ts";
import { shownSecretPath } from "./config/schema.ts";
import { connectionWarnings } from "./docker/dockerode-driver.ts";
import { ConfigError, errorMessage, redactTokens } from "./errors.ts";
import { createLogger } from "./logger.ts";
import { start, type Mode } from "./main.ts";
import { drainHost, undoDrain } from "./cli/drain.ts";
import { COMMAND_HELP, USAGE } from "./cli/help.ts";
import { COMMAND_OPTIONS, OPTIONS } from "./cli/options.ts";
import { withoutPassword } from "./queue/redis-address.ts";
import { DEBUG_SKIP_SECRETS, debugShowsSecrets } from "./cli/debug-env.ts";
import { dropPrivileges, localDockerSocket, type DropResult } from "./cli/privileges.ts";
import { readDockerFiles, type DockerFiles } from "./docker/dockerode-driver.ts";
import { runUntilStopped } from "./cli/run.ts";
import { appManifest } from "./cli/manifest.ts";
import { statusCommand } from "./cli/status.ts";
import { nearest } from "./nearest.ts";

/**
 * Why the config file cannot be read, with the way forward: a first run has none yet, and
 * Compose bind-mounting a file that does not exist makes a directory in its place.
 */
function unreadableConfig(path: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return `no config at ${path}: pass --config FILE or set JITRUNNER_CONFIG; start from deploy/jitrunner.example.yml`;
  if (code === "EISDIR") {
    return (
      `cannot read config ${path} (a directory: Docker creates one when a bind-mounted file does not exist; remove it and create the file. ` +
      "Under Compose, the file mounted at /etc/jitrunner/jitrunner.yml is ./jitrunner.yml beside docker-compose.yml: remove the directory there and copy deploy/jitrunner.example.yml to it)"
    );
  }
  if (code === "EACCES") {
    const uid = process.getuid?.();
    // uid 1000 is the image's `node`; on a host, most often the first login user: said only for it.
    const image = uid === 1000 ? "; the container image runs as uid 1000 unless started as root (the Compose files' user: root)" : "";
    return `cannot read config ${path} (EACCES): it must be readable by the user jitrunner runs as${uid === undefined ? "" : ` (uid ${uid})`}${image}`;
  }
  return `cannot read config ${path}: ${code ?? errorMessage(err)}`;
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

/** The options that take a value. */
type ValueOption = { [K in keyof typeof OPTIONS]: (typeof OPTIONS)[K]["type"] extends "string" ? K : never }[keyof typeof OPTIONS];

/** What each option that takes a value needs, for the line that says it was given none. */
const VALUE_NEEDED: Record<ValueOption, string> = {
  config: "a path to the config file",
  host: "a host's ID, its worker.hostId",
  url: "the base URL where GitHub reaches jitrunner",
  name: "the App's name",
  "redirect-url": "the URL GitHub sends the browser back to",
  mode: "server, worker or all",
};

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, tokens: true, options: OPTIONS });
  } catch (err) {
    // A mistyped option: said in one line, with the nearest the command takes, not parseArgs' text and the whole usage.
    if ((err as NodeJS.ErrnoException).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      process.stderr.write(`${unknownOption(argv)}\n`);
      return 2;
    }
    // Likewise an option given no value (last, or followed by another option), or a value it does not take.
    const line = (err as NodeJS.ErrnoException).code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" ? badOptionValue(argv) : undefined;
    if (line !== undefined) {
      process.stderr.write(`${line}\n`);
      return 2;
    }
    process.stderr.write(`jitrunner: ${errorMessage(err)}\n\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals, tokens } = parsed;
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
  const misuse = usageError(command, positionals, tokens);
  if (misuse) {
    process.stderr.write(`jitrunner ${command}: ${misuse}; see jitrunner ${command} --help\n`);
    return 2;
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
  // A usage error is said as one (exit 2) before the config is read, whatever the config.
  if (command === "drain" && !values.host) {
    process.stderr.write("jitrunner drain: --host ID is required\n");
    return 2;
  }
  const path = values.config ?? process.env.JITRUNNER_CONFIG ?? "jitrunner.yml";
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    process.stderr.write(`jitrunner: ${unreadableConfig(path, err)}\n`);
    return 1;
  }
  let config: Config;
  /** The options the environment set, by variable: errors about their values name it. */
  let origins: ReadonlyMap<string, string>;
  /** Accepted but most likely wrong (the example's placeholders): check-config says them, a start logs them. */
  let warnings: string[];
  /** The secrets a variable gave instead of their option's file (names only). */
  let secretOrigins: ReadonlyMap<string, string>;
  try {
    ({ config, origins, secretOrigins, warnings } = loadConfigWithOrigins({ text, env: process.env, readFile: (p) => readFileSync(p, "utf8"), secretsFor }));
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`jitrunner: ${path}: ${err.message}\n`);
    else process.stderr.write(`jitrunner: cannot load config ${path}: ${errorMessage(err)}\n`);
    return 1;
  }
  // Library debug output that would print secrets (see debug-env.ts): a start refuses it, check-config warns.
  const secretDebug = debugShowsSecrets(process.env.DEBUG);
  if (command === "check-config") {
    const pools = config.pools.map((pool) => ({ ...pool, env: Object.fromEntries(Object.entries(pool.env).map(([k, v]) => [k, shownEnvValue(k, v)])) }));
    // A secret file's path a mode does not read was not checked: shown only when plainly a path.
    const path = (file: string | undefined) => (file === undefined ? undefined : shownSecretPath(file));
    const shown = {
      ...config,
      github: { ...config.github, privateKeyFile: path(config.github.privateKeyFile), webhookSecretFile: path(config.github.webhookSecretFile), previousWebhookSecretFile: path(config.github.previousWebhookSecretFile) },
      server: { ...config.server, adminTokenFile: path(config.server.adminTokenFile), metricsTokenFile: path(config.server.metricsTokenFile) },
      worker: { ...config.worker, docker: { ...config.worker.docker, keyFile: path(config.worker.docker.keyFile) } },
      redis: { ...config.redis, url: withoutPassword(config.redis.url), sentinelPasswordFile: path(config.redis.sentinelPasswordFile) },
      pools,
    };
    process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
    // What the environment set wins over the file: an edit there to one of these changes nothing.
    const fromEnv = environmentNote(origins, secretOrigins);
    if (fromEnv) process.stderr.write(`jitrunner check-config: ${fromEnv}\n`);
    for (const w of warnings) process.stderr.write(`jitrunner check-config: warning: ${w}\n`);
    if (values.mode !== "server") for (const w of connectionWarnings(config.worker.docker)) process.stderr.write(`jitrunner check-config: warning: ${w}\n`);
    if (secretDebug.length > 0) {
      process.stderr.write(`jitrunner check-config: warning: DEBUG=${process.env.DEBUG} would print secrets (${secretDebug.join(", ")}): jitrunner refuses to start with it; add ${DEBUG_SKIP_SECRETS}\n`);
    }
    return 0;
  }
  // Secrets never reach the logs: not even through a library's debug output an operator turned on.
  // status and drain talk to Redis only: its client's output would print the Redis password.
  const printing =
    command === "server" || command === "worker" || command === "all"
      ? secretDebug
      : command === "status" || command === "drain"
        ? secretDebug.filter((name) => name.startsWith("ioredis"))
        : [];
  if (printing.length > 0) {
    process.stderr.write(
      `jitrunner ${command}: DEBUG=${process.env.DEBUG} turns on debug output that prints secrets (${printing.join(", ")}: JIT configs, installation tokens, the Redis password) to stderr: ` +
        `add ${DEBUG_SKIP_SECRETS} to it (DEBUG=${process.env.DEBUG},${DEBUG_SKIP_SECRETS}) or unset it\n`,
    );
    return 1;
  }
  if (command === "drain" || command === "status") exitOnSignals(command);
  if (command === "drain" && values.host) {
    if (values.undo) return undoDrain(config, values.host, process.stdout, process.stderr, origins);
    return drainHost(config, values.host, !values["no-wait"], process.stdout, process.stderr, origins);
  }
  if (command === "status") return statusCommand(config, { json: !!values.json, origins }, process.stdout, process.stderr);

  let dropped: DropResult | undefined;
  let dockerFiles: DockerFiles | undefined;
  try {
    const docker = config.worker.docker;
    const worker = command !== "server";
    // Read as the other secrets are, before the process may run on as another user.
    if (worker) dockerFiles = readDockerFiles(docker, process.env);
    dropped = dropPrivileges(process.env.JITRUNNER_USER, worker ? localDockerSocket(docker.socketPath, docker.host, process.env) : undefined);
    // docker-modem would read DOCKER_CERT_PATH's files again, as the user this process may now
    // run as: they are given to it as read (see DockerodeDriver). A configured engine takes none of
    // them, and docker-modem's defaults would still read them for DOCKER_HOST's (EACCES then).
    if (dockerFiles?.certPath || (worker && (docker.socketPath || docker.host))) delete process.env.DOCKER_CERT_PATH;
  } catch (err) {
    process.stderr.write(`jitrunner: ${errorMessage(err)}\n`);
    return 1;
  }
  const logger = createLogger(config.logLevel);
  if (dropped) logger.info(dropped, "config and secrets read as root; running on as this user");
  if (dropped?.socketGroupSkipped !== undefined) {
    logger.warn({ socket: dropped.socket }, "the Docker socket belongs to group 0 (root): not added; give it a group of its own (a docker group) for the worker to use it");
  }
  for (const w of warnings) logger.warn(`config: ${w}`);
  logger.info({ mode: command }, "starting");
  const code = await runUntilStopped((signal) => start(config, command as Mode, logger, { origins, dockerFiles, signal }), logger);
  logger.info(code === 0 ? "stopped" : "stopped, shutdown incomplete");
  return code;
}

/** The exit codes of an operator command stopped by a signal, as a shell gives them (128 + its number). */
export const SIGNAL_EXIT = { SIGINT: 130, SIGTERM: 143 } as const;

/**
 * status and drain hear SIGINT and SIGTERM themselves: run in a container (`docker compose run`,
 * as docs/operations.md shows), the process is PID 1, where a signal nothing listens for is
 * ignored, and a waiting drain would outlive Ctrl-C and `docker stop` for as long as the host's
 * jobs take. Stopping the wait is safe: a host told to drain drains all the same.
 */
function exitOnSignals(command: "status" | "drain"): void {
  const stop = (signal: keyof typeof SIGNAL_EXIT) => {
    const still = command === "drain" ? ": a host already told to drain drains all the same (jitrunner drain --host ID --undo takes it back)" : "";
    process.stderr.write(`jitrunner ${command}: stopped by ${signal}${still}\n`);
    process.exit(SIGNAL_EXIT[signal]);
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop(signal));
}

/**
 * The options the environment set (over the file's value), each with its variable, and the
 * secrets a variable gave in place of their option's file: names only, never a value.
 */
function environmentNote(origins: ReadonlyMap<string, string>, secretOrigins: ReadonlyMap<string, string>): string | undefined {
  const set = [...origins].map(([option, variable]) => `${option} (${variable})`);
  const secrets = [...secretOrigins].map(([option, variable]) => `${variable} (read instead of ${option})`);
  if (set.length + secrets.length === 0) return undefined;
  return [
    set.length > 0 ? `from the environment, over the config file: ${set.join(", ")}` : undefined,
    secrets.length > 0 ? `secrets from the environment: ${secrets.join(", ")}` : undefined,
  ]
    .filter(Boolean)
    .join("; ");
}

/**
 * What is wrong with how a known command was called, or undefined: an option it does not take
 * (parseArgs knows every command's options, so it accepts them all), an empty value (`--config=`),
 * words after the command, or drain's --undo with --no-wait.
 */
function usageError(command: string, positionals: string[], tokens: ReadonlyArray<{ kind: string; name?: string; rawName?: string; value?: string }>): string | undefined {
  const allowed = COMMAND_OPTIONS[command] ?? [];
  const foreign = tokens.find((t) => t.kind === "option" && t.name !== "help" && !allowed.includes(t.name!));
  if (foreign) return notAnOption(foreign.rawName!, command);
  const empty = tokens.find((t) => t.kind === "option" && t.value === "");
  if (empty) return `${empty.rawName!} needs a value (${VALUE_NEEDED[empty.name as ValueOption]})`;
  if (positionals.length > 1) return `unexpected argument '${positionals[1]}'`;
  if (tokens.some((t) => t.kind === "option" && t.name === "undo") && tokens.some((t) => t.kind === "option" && t.name === "no-wait")) {
    return "--undo and --no-wait do not go together";
  }
  return undefined;
}

/** "--X is not an option of CMD", with the nearest option CMD takes when one is near (long options only). */
function notAnOption(rawName: string, command: string | undefined): string {
  const own = command === undefined ? ["config", "help"] : [...(COMMAND_OPTIONS[command] ?? []), "help"];
  const meant = rawName.startsWith("--") ? nearest(rawName.slice(2), own) : undefined;
  return `${rawName} is not an option${command === undefined ? "" : ` of ${command}`}${meant === undefined ? "" : ` (did you mean --${meant}?)`}`;
}

/**
 * The line for an option no command takes (parseArgs refused it): read again leniently to find
 * the command it was given to (the first word that is one) and the option as typed.
 */
function unknownOption(argv: string[]): string {
  const { positionals, tokens } = parseArgs({ args: argv, allowPositionals: true, tokens: true, strict: false, options: OPTIONS });
  const command = positionals.find((p) => COMMAND_HELP[p] !== undefined);
  const unknown = tokens.find((t) => t.kind === "option" && !Object.hasOwn(OPTIONS, t.name));
  const rawName = unknown?.kind === "option" ? unknown.rawName : "an option";
  return command === undefined
    ? `jitrunner: ${notAnOption(rawName, undefined)}; see jitrunner --help`
    : `jitrunner ${command}: ${notAnOption(rawName, command)}; see jitrunner ${command} --help`;
}

/**
 * The line for an option parseArgs refused the value of (undefined when none is found): one that
 * needs a value given none (the last word, or followed by another option: parseArgs will not take
 * `--config --json` as the path `--json`), or one that takes none given one (`--json=yes`). An
 * option the command does not take is said as such, as usageError would.
 */
function badOptionValue(argv: string[]): string | undefined {
  const { positionals, tokens } = parseArgs({ args: argv, allowPositionals: true, tokens: true, strict: false, options: OPTIONS });
  const command = positionals.find((p) => COMMAND_HELP[p] !== undefined);
  for (const t of tokens) {
    if (t.kind !== "option" || !Object.hasOwn(OPTIONS, t.name)) continue;
    const problem = valueProblem(t.name as keyof typeof OPTIONS, t.rawName, t.value, t.inlineValue);
    if (problem === undefined) continue;
    const taken = command === undefined || t.name === "help" || (COMMAND_OPTIONS[command] ?? []).includes(t.name);
    const said = taken ? problem : notAnOption(t.rawName, command);
    return command === undefined ? `jitrunner: ${said}; see jitrunner --help` : `jitrunner ${command}: ${said}; see jitrunner ${command} --help`;
  }
  return undefined;
}

/**
 * What is wrong with the value an option was given, as parseArgs reads it (strict: false), or
 * undefined: none for one that needs one (missing, or another option taken in its place as strict
 * parsing refuses it: a word of two or more characters starting with '-'), one for one that takes none.
 */
function valueProblem(name: keyof typeof OPTIONS, rawName: string, value: string | undefined, inline: boolean | undefined): string | undefined {
  if (OPTIONS[name].type === "boolean") return inline ? `${rawName} takes no value` : undefined;
  const optionLike = value !== undefined && !inline && value.length > 1 && value.startsWith("-");
  return value === undefined || optionLike ? `${rawName} needs a value (${VALUE_NEEDED[name as ValueOption]})` : undefined;
}

/** Exit once stdout and stderr are flushed (a piped `check-config` must not be cut short). */
function exit(code: number): void {
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

main(process.argv.slice(2)).then(exit, (err) => {
  process.stderr.write(`jitrunner: ${errorMessage(err)}\n`);
  exit(1);
});

/**
 * A runner's environment value as check-config prints it (output that gets pasted into issues):
 * hidden under a name that says it is a credential; else a URL's password (up to its last `@`), a
 * URL's user name given alone that is long enough to be a token, the value of a query parameter
 * named as a credential, GitHub's tokens and JWTs, and a whole value that is one long token-like
 * run, hidden. Paths, plain words and other query values are shown as they are.
 */
function shownEnvValue(name: string, value: string): string {
  // Anywhere in the name (OPENAI_APIKEY, DB_PASS): a name that only looks like one (MONKEY) costs a hidden value.
  if (credentialName(name)) return "[redacted]";
  if (/^[A-Za-z0-9+/=_-]{40,}$/.test(value) && !value.startsWith("/")) return "[redacted]";
  return redactTokens(
    value
      // To the last '@' before a space: a password's '/', not percent-encoded, does not end it.
      .replace(/(\/\/[^/:@\s]*):\S*@/g, "$1:redacted@")
      .replace(/\/\/([^/:@\s]{16,})@/g, "//redacted@")
      .replace(/([?&])([^=&#\s]+)=([^&#\s]*)/g, (all, sep: string, key: string) => (credentialName(key) ? `${sep}${key}=redacted` : all)),
  );
}

/** Whether a name (of a variable, a query parameter) says its value is a credential. */
function credentialName(name: string): boolean {
  return /TOKEN|SECRET|PASS|PWD|CREDENTIAL|AUTH|KEY|PRIVATE|SIG|(^|_)PAT($|_)/i.test(name);
}
