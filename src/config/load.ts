import { createPrivateKey } from "node:crypto";
import { hostname } from "node:os";
import { posix } from "node:path";
import { LineCounter, parseDocument, type Document } from "yaml";
import { z, type ZodType } from "zod";
import { ConfigError } from "../errors.ts";
import { configSchema, secretFile, SENTINEL_ONLY, shownSecretPath, type ParsedConfig, type PoolConfig } from "./schema.ts";
import { lineAt, optionPath, placeOf, problemPath } from "./lines.ts";
import { Secret } from "./secret.ts";
import { nearest } from "../nearest.ts";

export type { PoolConfig } from "./schema.ts";

export interface Config extends Omit<ParsedConfig, "worker"> {
  worker: ParsedConfig["worker"] & { hostId: string };
  /**
   * privateKey and webhookSecret are empty when the mode loaded for does not use them (secretsNeeded);
   * adminToken and metricsToken are absent when not set, or not read by that mode (tokensNeeded);
   * previousWebhookSecret likewise: the one GitHub signed with before webhookSecret, accepted too
   * while a rotation is under way (github.previousWebhookSecretFile). redisSentinelPassword: the
   * sentinels' (redis.sentinelPasswordFile), read in every mode, absent when not set.
   */
  secrets: { privateKey: Secret; webhookSecret: Secret; previousWebhookSecret?: Secret; adminToken?: Secret; metricsToken?: Secret; redisSentinelPassword?: Secret };
}

export interface LoadSources {
  /** YAML text of the config file. */
  text: string;
  /** Environment, for secrets and overrides (JITRUNNER_*). */
  env: Record<string, string | undefined>;
  /** Reads a secret file; throws if it cannot. */
  readFile: (path: string) => string;
  /**
   * The uid this process runs as (default: process.getuid()), for the advice on a file it may not
   * read: the secrets are read before the process may run on as another user (JITRUNNER_USER),
   * so a file it cannot read must be made readable by this uid.
   */
  uid?: number | undefined;
  /**
   * What the config is loaded for, which says which GitHub secrets are read and required (the
   * others are neither read nor required, and left empty): `worker` the App's private key (it
   * calls GitHub), `server` the webhook secret (it checks deliveries), `all` (the default) both,
   * `none` neither, for commands that only read Redis (`status`, `drain`) on an operator's machine.
   * The bearer tokens likewise (tokensNeeded), and the Docker TLS files only where a worker runs.
   */
  secretsFor?: SecretsFor;
}

/** The run mode a config is loaded for (see LoadSources.secretsFor). */
export type SecretsFor = "server" | "worker" | "all" | "none";

const WHO_NEEDS = {
  privateKey: "worker and all need it: they call GitHub",
  webhookSecret: "server and all need it: they verify webhook deliveries",
};

/** Which GitHub secrets a mode needs: the key to call GitHub, the webhook secret to verify deliveries. */
export function secretsNeeded(mode: SecretsFor): { privateKey: boolean; webhookSecret: boolean } {
  return { privateKey: mode === "worker" || mode === "all", webhookSecret: mode === "server" || mode === "all" };
}

/**
 * Which bearer tokens a mode reads: the admin token guards the status page, which only the HTTP
 * side serves (server, all); the metrics token guards /metrics, which every run mode serves (a
 * worker too). Commands that only read Redis (`none`) read neither.
 */
export function tokensNeeded(mode: SecretsFor): { adminToken: boolean; metricsToken: boolean } {
  return { adminToken: mode === "server" || mode === "all", metricsToken: mode !== "none" };
}

/**
 * Whether a secret's file option can be read as a path: one that cannot (a secret pasted in its
 * place) is refused by the schema without its value, and never opened here (an error would echo it).
 */
const readablePath = (file: unknown): file is string => typeof file === "string" && secretFile().safeParse(file).success;

/** Options of worker.docker that name files a worker reads at start (TLS to its engine). */
const DOCKER_FILES = ["caFile", "certFile", "keyFile"] as const;

/**
 * Turns config text and environment into a validated Config, or throws ConfigError with every
 * problem found. Pure apart from `readFile` (and `uid`'s default). Secret values never appear in the errors.
 */
export function loadConfig(sources: LoadSources): Config {
  return loadConfigWithOrigins(sources).config;
}

/**
 * loadConfig, and the options the environment set, each with the variable that set it
 * ("server.port" -> "JITRUNNER_PORT"): for errors met later (Redis unreachable, port taken) to
 * name where a value came from, by the rule that set it, not a copy of that rule. Apart from the
 * config, so that printing the config (check-config) shows options only. `warnings`: what is
 * accepted but most likely wrong (placeholderWarnings), for the start to log and check-config to say.
 */
export function loadConfigWithOrigins({ text, env, readFile, uid = process.getuid?.(), secretsFor = "all" }: LoadSources): {
  config: Config;
  origins: ReadonlyMap<string, string>;
  /**
   * The secrets read from a variable rather than their option's file, by that option
   * ("github.privateKeyFile" -> "JITRUNNER_GITHUB_PRIVATE_KEY"): names only, for check-config to say.
   */
  secretOrigins: ReadonlyMap<string, string>;
  warnings: string[];
} {
  // parseDocument, not parse: parse prints the YAML library's warnings (an unknown `!tag`) through
  // process.emitWarning with the source line under them, and a line may hold a pool's credential.
  // Errors and warnings alike are refused here, each by its first line (where, not what).
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter });
  const firstLine = (err: unknown) => (err as Error).message.split("\n")[0]!.replace(/:$/, "");
  const yamlProblems = [...doc.errors, ...doc.warnings].map(firstLine);
  if (yamlProblems.length > 0) {
    throw new ConfigError(yamlProblems.map((m) => `config is not valid YAML: ${m}`));
  }
  let raw: unknown;
  try {
    raw = doc.toJS() ?? {};
  } catch (err) {
    throw new ConfigError([`config is not valid YAML: ${firstLine(err)}`]); // too many aliases
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(["config must be a YAML mapping"]);
  }
  const overridden = applyEnvOverrides(raw as Record<string, any>, env);

  const problems: string[] = [];
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const where = issue.path.length ? optionPath(issue.path) : "(top level)";
      if (issue.code === "unrecognized_keys") {
        problems.push(...issue.keys.map((key) => unrecognizedKey(where, issue.path, key, doc, lineCounter)));
        continue;
      }
      // A value an environment variable set: name the variable, the file does not hold it.
      const from = setBy(overridden, where);
      const place = from ? undefined : placeOf(doc, lineCounter, issue.path);
      problems.push(`${where}: ${issue.message}${from ? ` (from ${from})` : place ? ` (${place})` : ""}`);
    }
  }
  const schemaProblems = problems.length;
  const files: Files = { read: readFile, uid };

  const secret = (what: "privateKey" | "webhookSecret", envName: string, file: string | undefined): Secret | undefined => {
    const normalize = what === "privateKey" ? normalizePem : normalizeSecret;
    const fromEnv = env[envName];
    if (fromEnv) {
      // Only blanks (a newline, say): an empty webhook secret would let anyone sign deliveries.
      const value = normalize(fromEnv);
      if (!value) problems.push(`${what}: ${envName} holds only white space`);
      else if (what === "webhookSecret") problems.push(...weakWebhookSecret(what, envName, value));
      return new Secret(value);
    }
    if (!file) {
      problems.push(`${what}: set ${envName} or github.${what}File (${WHO_NEEDS[what]})`);
      return undefined;
    }
    if (!readablePath(file)) return undefined; // refused by the schema, unshown
    try {
      const value = normalize(files.read(file));
      if (!value) problems.push(`github.${what}File: ${shownSecretPath(file)} is empty`);
      else if (what === "webhookSecret") problems.push(...weakWebhookSecret(`github.${what}File`, shownSecretPath(file), value));
      return new Secret(value);
    } catch (err) {
      problems.push(cannotRead(`github.${what}File`, shownSecretPath(file), err, files.uid));
      return undefined;
    }
  };
  const gh = (raw as Record<string, any>).github ?? {};
  // A secret this mode does not use is not read at all: the internet-facing server never holds
  // the App's key, and a worker (no webhook route) never holds the webhook secret.
  const needs = secretsNeeded(secretsFor);
  const privateKey = needs.privateKey ? secret("privateKey", "JITRUNNER_GITHUB_PRIVATE_KEY", gh.privateKeyFile) : new Secret("");
  const webhookSecret = needs.webhookSecret ? secret("webhookSecret", "JITRUNNER_GITHUB_WEBHOOK_SECRET", gh.webhookSecretFile) : new Secret("");
  const previousWebhookSecret = needs.webhookSecret ? previousSecret(gh.previousWebhookSecretFile, env, files, problems) : undefined;
  const srv = (raw as Record<string, any>).server ?? {};
  // Likewise the tokens: a worker host mounts no admin token, an operator's shell neither.
  const tokens = tokensNeeded(secretsFor);
  const adminToken = tokens.adminToken ? optionalToken("server.adminTokenFile", "JITRUNNER_ADMIN_TOKEN", srv.adminTokenFile, env, files, problems) : undefined;
  const metricsToken = tokens.metricsToken ? optionalToken("server.metricsTokenFile", "JITRUNNER_METRICS_TOKEN", srv.metricsTokenFile, env, files, problems) : undefined;
  // Every mode reaches Redis, status and drain too: the sentinels' password is read for all.
  const redisSentinelPassword = sentinelPassword((raw as Record<string, any>).redis, env, files, problems);
  // The Docker TLS files, read by a worker at start: a missing one would fail it there, naming no option.
  const runsWorker = secretsFor === "worker" || secretsFor === "all";
  if (runsWorker) problems.push(...unreadableFiles((raw as Record<string, any>).worker?.docker, "worker.docker", DOCKER_FILES, files));
  const keyType = privateKey && privateKey.reveal() ? privateKeyType(privateKey.reveal()) : "rsa";
  if (keyType !== "rsa") {
    // Which one was read: the variable wins over the file, which is then not read at all.
    const fromEnv = !!env.JITRUNNER_GITHUB_PRIVATE_KEY;
    const source = fromEnv
      ? `JITRUNNER_GITHUB_PRIVATE_KEY${gh.privateKeyFile ? `, which is read instead of github.privateKeyFile (${shownSecretPath(String(gh.privateKeyFile))})` : ""}`
      : `github.privateKeyFile: ${shownSecretPath(String(gh.privateKeyFile))}`;
    problems.push(
      keyType === undefined
        ? `privateKey (from ${source}): not a PEM private key that can be read (expected '-----BEGIN ... PRIVATE KEY-----' with its lines intact; ` +
            "in an environment variable, its line breaks written as \\n)"
        : `privateKey (from ${source}): a key of type ${keyType}, not rsa: a GitHub App signs its tokens (JWTs) with RS256, which needs the App's RSA key; ` +
            "generate one in the App's settings (Private keys) and give the .pem GitHub downloads",
    );
  }

  // Each variable, when set, is read instead of its option's file (and the mode reads it).
  const secretOrigins = new Map<string, string>();
  const fromEnv = (read: boolean, option: string, envName: string) => read && env[envName] && secretOrigins.set(option, envName);
  fromEnv(needs.privateKey, "github.privateKeyFile", "JITRUNNER_GITHUB_PRIVATE_KEY");
  fromEnv(needs.webhookSecret, "github.webhookSecretFile", "JITRUNNER_GITHUB_WEBHOOK_SECRET");
  fromEnv(needs.webhookSecret, "github.previousWebhookSecretFile", "JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET");
  fromEnv(tokens.adminToken, "server.adminTokenFile", "JITRUNNER_ADMIN_TOKEN");
  fromEnv(tokens.metricsToken, "server.metricsTokenFile", "JITRUNNER_METRICS_TOKEN");
  fromEnv(true, "redis.sentinelPasswordFile", "JITRUNNER_REDIS_SENTINEL_PASSWORD");

  // On whatever parsed, so that a second run does not bring up problems the first could have named.
  problems.push(...crossCheck(parsed.success ? parsed.data : parsedParts(raw as Record<string, any>)));
  // The schema's problems have their place already; the others, each by the option it begins with.
  for (let i = schemaProblems; i < problems.length; i++) {
    problems[i] = located(problems[i]!, doc, lineCounter, [overridden, secretOrigins]);
  }
  if (problems.length > 0 || !parsed.success || !privateKey || !webhookSecret) {
    throw new ConfigError(problems);
  }
  const config: Config = {
    ...parsed.data,
    worker: { ...parsed.data.worker, hostId: parsed.data.worker.hostId ?? sanitizeHost(hostname()) },
    secrets: { privateKey, webhookSecret, ...(previousWebhookSecret && { previousWebhookSecret }), ...(adminToken && { adminToken }), ...(metricsToken && { metricsToken }), ...(redisSentinelPassword && { redisSentinelPassword }) },
  };
  // The engine's address matters only where a worker runs.
  const warnings = [...placeholderWarnings(config), ...(runsWorker ? [...dockerHostWarnings(config.worker.docker), ...warmCapacityWarnings(config)] : [])];
  return { config, origins: overridden, secretOrigins, warnings };
}

/** The variable that set the option `where` names, or an option above it (`redis.sentinels` for `redis.sentinels[0]`). */
function setBy(fromEnv: ReadonlyMap<string, string>, where: string): string | undefined {
  return [...fromEnv].find(([key]) => where === key || where.startsWith(`${key}.`) || where.startsWith(`${key}[`))?.[1];
}

/**
 * `problem` with its place in the file, when it begins with an option the file holds (or one
 * above it) and no variable in `fromEnv` set that option instead: its value is not the file's.
 */
function located(problem: string, doc: Document, lineCounter: LineCounter, fromEnv: ReadonlyArray<ReadonlyMap<string, string>>): string {
  const path = problemPath(problem);
  if (path === undefined || fromEnv.some((origins) => setBy(origins, optionPath(path)))) return problem;
  const place = placeOf(doc, lineCounter, path);
  return place === undefined ? problem : `${problem} (${place})`;
}

/**
 * A key the schema does not know, with its line in the file and the nearest key the object at
 * `path` takes (a typo: `capacty` for `capacity`).
 */
function unrecognizedKey(where: string, path: ReadonlyArray<PropertyKey>, key: string, doc: Document, lineCounter: LineCounter): string {
  const line = lineAt(doc, lineCounter, [...path, key]);
  const meant = nearest(key, objectKeysAt(configSchema, path));
  const notes = [line === undefined ? undefined : `line ${line}`, meant === undefined ? undefined : `did you mean "${meant}"?`].filter(Boolean);
  return `${where}: Unrecognized key: "${key}"${notes.length ? ` (${notes.join("; ")})` : ""}`;
}

/**
 * The keys the object schema at `path` in `schema` takes (through optional, default, transform
 * and the like, an array's element, a record's value); none when `path` leads to no object.
 */
function objectKeysAt(schema: z.ZodType, path: ReadonlyArray<PropertyKey>): string[] {
  let at: z.ZodType | undefined = schema;
  for (let i = 0; ; i++) {
    at = unwrapped(at);
    if (at === undefined) return [];
    if (i === path.length) return at instanceof z.ZodObject ? Object.keys(at.shape) : [];
    const step = path[i];
    if (at instanceof z.ZodObject && typeof step === "string") at = at.shape[step] as z.ZodType | undefined;
    else if (at instanceof z.ZodArray && typeof step === "number") at = at.element as z.ZodType;
    else if (at instanceof z.ZodRecord) at = at.valueType as z.ZodType;
    else return [];
  }
}

/** A schema without its wrappers (optional, default, prefault, nullable, a transform's pipe). */
function unwrapped(schema: z.ZodType | undefined): z.ZodType | undefined {
  let at = schema;
  for (;;) {
    if (at instanceof z.ZodOptional || at instanceof z.ZodDefault || at instanceof z.ZodPrefault || at instanceof z.ZodNullable) at = at.unwrap() as z.ZodType;
    else if (at instanceof z.ZodPipe) at = at.in as z.ZodType;
    else return at;
  }
}

/**
 * A worker.docker.host with no port, written in the config or in the host (the schema reads a
 * port, a scheme and a user written into the host: readDockerHost): docker-modem then goes to 80
 * (443 over https), where no engine listens by default. Accepted (an engine may listen on 80),
 * with a warning.
 */
export function dockerHostWarnings(docker: ParsedConfig["worker"]["docker"]): string[] {
  const { host, port, protocol } = docker;
  if (!host || protocol === "ssh") return []; // ssh: port 22 when none is given, as ssh's
  const defaultPort = protocol === "https" ? "443" : protocol === "http" ? "80" : "80 (443 over https)";
  if (port !== undefined) return [];
  return [
    `worker.docker.host without a port: port ${defaultPort} is used, not Docker's 2375 (2376 over TLS); set worker.docker.port to the port the engine listens on`,
  ];
}

/**
 * A worker keeps one slot per pool it serves free for demand and launches warm runners only into
 * the rest (`capacity` less the pools served): a host whose capacity leaves none never holds a
 * warm runner, and nothing else would say so. Said only for that case: minIdle is across the
 * fleet, so a host holding fewer than a pool's minIdle is no fault by itself.
 */
export function warmCapacityWarnings(config: Pick<Config, "pools" | "worker">): string[] {
  const served = config.worker.pools.length ? config.pools.filter((p) => config.worker.pools.includes(p.name)) : config.pools;
  const warm = served.filter((p) => p.minIdle > 0).map((p) => p.name);
  const { capacity } = config.worker;
  if (warm.length === 0 || capacity > served.length) return [];
  return [
    `worker.capacity: ${capacity} leaves no slot for warm runners on this host (one is kept free for demand per pool served, ${served.length} here): ` +
      `pools ${warm.join(", ")} get no warm runner from it; set capacity above ${served.length} plus the warm runners it should hold`,
  ];
}

/** The placeholders deploy/jitrunner.example.yml (and the Kubernetes ConfigMap) ship. */
const EXAMPLE = { appId: 123456, owner: "my-org", installationId: 12345678 };
const FROM_EXAMPLE = "the example config's placeholder";

/**
 * The example's placeholders still in a config: valid values, so accepted (a warning, not a
 * refusal), but a GitHub App id that is not the user's fails every call, and an allowedOwners of
 * my-org refuses every job of the user's real organization (ignored_owner_not_allowed).
 */
export function placeholderWarnings(config: Pick<Config, "github" | "policy" | "pools">): string[] {
  const warnings: string[] = [];
  if (config.github.appId === EXAMPLE.appId) {
    warnings.push(`github.appId: ${EXAMPLE.appId} is ${FROM_EXAMPLE}: set your GitHub App's id (its settings page, "App ID"); GitHub refuses the App's every call otherwise`);
  }
  const isExampleOwner = (o: string) => o.toLowerCase() === EXAMPLE.owner;
  if (config.policy.allowedOwners.some(isExampleOwner)) {
    warnings.push(
      `policy.allowedOwners: ${EXAMPLE.owner} is ${FROM_EXAMPLE}: jobs of any owner not listed are refused (ignored_owner_not_allowed); ` +
        "list your organization or user, or leave the list empty for any owner the App is installed on",
    );
  }
  const repoOfExample = (r: string) => isExampleOwner(r.split("/")[0] ?? "");
  if (config.policy.allowedRepositories.some(repoOfExample)) {
    warnings.push(`policy.allowedRepositories: ${EXAMPLE.owner}/... is ${FROM_EXAMPLE}: jobs of repositories not listed are refused (ignored_repo_not_allowed)`);
  }
  config.pools.forEach((pool, i) => {
    if (pool.warm?.installationId === EXAMPLE.installationId) {
      warnings.push(`pools[${i}].warm.installationId: ${EXAMPLE.installationId} is ${FROM_EXAMPLE}: set your installation's id (installation.id in any workflow_job webhook)`);
    }
    if (pool.warm && isExampleOwner(pool.warm.owner)) {
      warnings.push(`pools[${i}].warm.owner: ${EXAMPLE.owner} is ${FROM_EXAMPLE}: warm runners register with this owner; set your organization or user`);
    }
  });
  return warnings;
}

/** What crossCheck looks at: the pools (undefined where one is not valid) and the worker section. */
interface CrossChecked {
  pools: Array<PoolConfig | undefined>;
  worker: ParsedConfig["worker"] | undefined;
  /** Every pool name given, valid pool or not (a worker's pool is not unknown because its pool has another problem). */
  poolNames?: string[];
  /**
   * Per pool, and for the worker section, the fields the schema refused and left out (defaults in
   * their place): cross-checks that name one are not reported, its own problem is.
   */
  dropped?: { pools: Array<Set<string> | undefined>; worker?: Set<string> };
}

/**
 * `value` by `schema`; failing that, parsed again without the top-level fields the schema refused
 * (defaults in their place), so that the cross-checks of the rest are reported in the same run:
 * a refused isolation must not hide a `networkMode: host`. Undefined when even that fails, or when
 * a field in `needed` (a pool's name) is among those refused.
 */
function lenient<T>(schema: ZodType<T>, value: unknown, needed: readonly string[] = []): { data: T; dropped?: Set<string> } | undefined {
  const first = schema.safeParse(value);
  if (first.success) return { data: first.data };
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const dropped = new Set(first.error.issues.map((issue) => issue.path[0]).filter((k): k is string => typeof k === "string"));
  if (dropped.size === 0 || needed.some((k) => dropped.has(k))) return undefined;
  const again = schema.safeParse(Object.fromEntries(Object.entries(value).filter(([k]) => !dropped.has(k))));
  return again.success ? { data: again.data, dropped } : undefined;
}

/** The sections crossCheck needs, each parsed alone, of a config that is not valid as a whole. */
function parsedParts(raw: Record<string, any>): CrossChecked {
  const list: unknown[] = Array.isArray(raw.pools) ? raw.pools : [];
  const pools = list.map((p) => lenient(configSchema.shape.pools.element, p, ["name"]));
  const worker = lenient(configSchema.shape.worker, raw.worker ?? {});
  const poolNames = list.map((p) => (p as { name?: unknown } | null)?.name).filter((n): n is string => typeof n === "string");
  return {
    pools: pools.map((p) => p?.data),
    worker: worker?.data,
    poolNames,
    dropped: { pools: pools.map((p) => p?.dropped), worker: worker?.dropped },
  };
}

/** Whether `problem` names one of `fields` (a field left out, whose default it would be about). */
function namesAny(problem: string, fields: Set<string> | undefined): boolean {
  return !!fields && [...fields].some((f) => new RegExp(`\\b${f}\\b`).test(problem));
}

function crossCheck(config: CrossChecked): string[] {
  const dropped = config.dropped;
  if (!dropped) return crossCheckAll(config);
  return crossCheckAll(config).filter((problem) => {
    const pool = /^pools\[(\d+)\][.:]/.exec(problem);
    if (pool) return !namesAny(problem, dropped.pools[Number(pool[1])]);
    return !(problem.startsWith("worker.") && namesAny(problem, dropped.worker));
  });
}

function crossCheckAll(config: CrossChecked): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  config.pools.forEach((pool, i) => {
    if (!pool) return;
    if (seen.has(pool.name)) problems.push(`pools[${i}].name: duplicate pool name '${pool.name}'`);
    seen.add(pool.name);
    if (pool.runnerGroup !== undefined && pool.runnerGroupId !== undefined) {
      problems.push(`pools[${i}]: give runnerGroup (a name) or runnerGroupId, not both`);
    }
    if (pool.runnerGroup !== undefined && pool.scope !== "organization") {
      problems.push(`pools[${i}].runnerGroup: runner groups are for organization runners; set scope: organization`);
    } else if (pool.runnerGroupId !== 1 && pool.scope !== "organization") {
      // A repository's runners are in its Default group (1): GitHub would refuse every registration.
      problems.push(`pools[${i}].runnerGroupId: runner groups are for organization runners (a repository's runners are in group 1, the Default); set scope: organization`);
    }
    // Default group: runnerGroupId 1, set by the schema when no group is given.
    if (pool.serveJobsWithoutLabels && (pool.scope !== "organization" || (pool.runnerGroup === undefined && pool.runnerGroupId === 1))) {
      problems.push(
        `pools[${i}].serveJobsWithoutLabels: only for a pool with scope: organization and a runner group of its own (runnerGroup, or a runnerGroupId other than 1, the Default group): ` +
          "a job with no labels names only a runner group, which its webhooks do not carry, so this pool's runners must be in the one group such jobs ask for",
      );
    }
    if (pool.minIdle > 0 && !pool.warm) {
      problems.push(`pools[${i}].warm: minIdle needs warm.installationId and warm.owner (and warm.repo for repository pools): where warm runners register`);
    }
    if (pool.warm && pool.scope === "repository" && !pool.warm.repo) {
      problems.push(`pools[${i}].warm.repo: a repository pool's warm runners register on one repository; name it`);
    }
    if (pool.maxRunners !== undefined && pool.minIdle > 0 && pool.minIdle >= pool.maxRunners) {
      // Warm runners wait with no idle deadline: holding every place, they would keep for good
      // any job none of them can take (another repository of the pool, another owner).
      problems.push(
        `pools[${i}].minIdle: ${pool.minIdle} warm runners ${pool.minIdle > pool.maxRunners ? "exceed" : "fill"} maxRunners (${pool.maxRunners}); ` +
          "a job no warm runner can take (another repository of the pool, another owner) would wait while they idle: set maxRunners above minIdle",
      );
    }
    // A runner in the host's network, or in another container's, reaches what listens on its
    // loopback: Redis, an engine on a loopback TCP port, jitrunner's own ports.
    if (pool.networkMode === "host" || pool.networkMode.startsWith("container:")) {
      problems.push(
        `pools[${i}].networkMode: '${pool.networkMode}' puts runners in ${pool.networkMode === "host" ? "the host's network" : "another container's network"}, where any job reaches what listens on its loopback (Redis, a Docker engine on a TCP port, jitrunner's own ports); use bridge, none, jitrunner-runners or a network of your own`,
      );
    }
    pool.mounts.forEach((m, j) => {
      // A runner never gets a Docker engine of the host: any job could take the host over.
      const reached = engineReachedBy(m.source);
      if (reached) {
        problems.push(
          `pools[${i}].mounts[${j}]: ${m.source} reaches ${reached}, where a container engine socket or an engine's state lives; runners must never get the host's engine`,
        );
      }
    });
  });
  if (!config.worker) return problems;
  const known = new Set([...seen, ...(config.poolNames ?? [])]);
  for (const [i, wanted] of config.worker.pools.entries()) {
    if (!known.has(wanted)) problems.push(`worker.pools[${i}]: no pool named '${wanted}'`);
  }
  const d = config.worker.docker;
  if (d.socketPath && d.host) problems.push("worker.docker: give socketPath or host, not both");
  return problems;
}

/**
 * What of the host gives a runner its engine: the Docker socket; the run directories of dockerd
 * (the socket of the containerd it starts), containerd (each container's config.json), podman and
 * rootless engines (/run/user/<uid>), each under /var/run too, which links to /run; and the
 * engines' state (every container's config.v2.json, runners' JIT configs among them).
 */
const ENGINE_RUN = ["/run/docker.sock", "/run/docker", "/run/containerd", "/run/podman", "/run/user"];
const ENGINE_PATHS = [...ENGINE_RUN, ...ENGINE_RUN.map((p) => `/var${p}`), "/var/lib/docker", "/var/lib/containerd"];

/**
 * The engine path (of ENGINE_PATHS, or any engine's *.sock) a bind mount source is, lies inside or
 * holds; undefined when none. Compared as Docker mounts it, cleaned: `//var/run`, `/var/./run` and
 * `/var/run/../run` are all /var/run.
 */
function engineReachedBy(source: string): string | undefined {
  const path = posix.normalize(source).replace(/\/+$/, "") || "/";
  if (/(^|\/)(docker|containerd|podman)\.sock$/.test(path)) return path;
  const dir = path === "/" ? "/" : `${path}/`;
  return ENGINE_PATHS.find((p) => p === path || p.startsWith(dir) || path.startsWith(`${p}/`));
}

/**
 * JITRUNNER_REDIS_URL and friends override the file, so one file serves several hosts. Returns
 * the keys set, each with the variable that set it.
 */
function applyEnvOverrides(raw: Record<string, any>, env: Record<string, string | undefined>): Map<string, string> {
  const overridden = new Map<string, string>();
  const set = (section: string, key: string, value: unknown, from: string) => {
    raw[section] = { ...(raw[section] ?? {}), [key]: value };
    overridden.set(`${section}.${key}`, from);
  };
  if (env.JITRUNNER_REDIS_URL) set("redis", "url", env.JITRUNNER_REDIS_URL, "JITRUNNER_REDIS_URL");
  // Comma-separated, as a Compose file or a unit's Environment= gives them; each checked by the schema.
  if (env.JITRUNNER_REDIS_SENTINELS) {
    set("redis", "sentinels", env.JITRUNNER_REDIS_SENTINELS.split(",").map((a) => a.trim()).filter((a) => a !== ""), "JITRUNNER_REDIS_SENTINELS");
  }
  if (env.JITRUNNER_REDIS_SENTINEL_NAME) set("redis", "sentinelName", env.JITRUNNER_REDIS_SENTINEL_NAME, "JITRUNNER_REDIS_SENTINEL_NAME");
  if (env.JITRUNNER_HOST_ID) set("worker", "hostId", env.JITRUNNER_HOST_ID, "JITRUNNER_HOST_ID");
  // Only white space is no port (Number(" ") is 0, an ephemeral one): kept as given, for the schema to refuse.
  if (env.JITRUNNER_PORT) set("server", "port", env.JITRUNNER_PORT.trim() === "" ? env.JITRUNNER_PORT : Number(env.JITRUNNER_PORT), "JITRUNNER_PORT");
  if (env.JITRUNNER_LOG_LEVEL) {
    raw.logLevel = env.JITRUNNER_LOG_LEVEL;
    overridden.set("logLevel", "JITRUNNER_LOG_LEVEL");
  }
  return overridden;
}

/** How the loader reads the files a config names, and the uid it reads them as (LoadSources.uid). */
interface Files {
  read: (path: string) => string;
  uid: number | undefined;
}

/** The uid the container image runs as (its user `node`), unless started as root. */
const IMAGE_UID = 1000;

/**
 * A file that cannot be read, as a config problem naming its option. Permission denied says who
 * must be able to read it: `uid`, the user this process runs as (secrets are read before it may
 * run on as JITRUNNER_USER, so that one never matters here). Not uid 1000 for every process: on a
 * host, 1000 is most often the first login user, who should never hold the App's key.
 */
function cannotRead(option: string, file: string, err: unknown, uid: number | undefined): string {
  const code = (err as NodeJS.ErrnoException).code ?? "error";
  if (code === "EISDIR") {
    return `${option}: cannot read ${file}: it is a directory (Docker creates one when a bind-mounted file does not exist; remove it and create the file)`;
  }
  if (code !== "EACCES") return `${option}: cannot read ${file} (${code})`;
  const target = file.startsWith("(") ? "the file" : file;
  if (uid === undefined) return `${option}: cannot read ${file} (EACCES): it must be readable by the user jitrunner runs as`;
  const image =
    uid === IMAGE_UID
      ? `; in the container image, whose user is uid ${IMAGE_UID}, start it as root instead (the Compose files' user: root): it reads its secrets as root, then runs on as uid ${IMAGE_UID}`
      : "";
  return `${option}: cannot read ${file} (EACCES): it must be readable by the user jitrunner runs as (uid ${uid}): chown ${uid} ${target}, mode 0400 or 0600${image}`;
}

/** Problems with the files a config section names (each read once: missing, unreadable, empty). */
function unreadableFiles(section: unknown, where: string, keys: readonly string[], files: Files): string[] {
  if (typeof section !== "object" || section === null) return [];
  const problems: string[] = [];
  for (const key of keys) {
    const file = (section as Record<string, unknown>)[key];
    if (typeof file !== "string" || !file) continue;
    if (key === "keyFile" && !readablePath(file)) continue; // refused by the schema, unshown
    const shown = key === "keyFile" ? shownSecretPath(file) : file;
    try {
      if (!files.read(file).trim()) problems.push(`${where}.${key}: ${shown} is empty`);
    } catch (err) {
      problems.push(cannotRead(`${where}.${key}`, shown, err, files.uid));
    }
  }
  return problems;
}

/** Shortest bearer token accepted: a guessable token protects nothing. */
const TOKEN_MIN_LENGTH = 16;

/** Shortest webhook secret accepted: whoever guesses it can sign deliveries that launch runners. */
const WEBHOOK_SECRET_MIN_LENGTH = 16;

/** The placeholder deploy/kubernetes/secret.example.yml ships: a value holding it was never filled in. */
const SECRET_PLACEHOLDERS = ["REPLACE_ME"];

/** Why a webhook secret (trimmed, not empty) is too weak to sign with, naming where it came from. */
function weakWebhookSecret(option: string, from: string, value: string): string[] {
  const make = "make one with `openssl rand -hex 32` and give GitHub the same in the App's settings";
  const placeholder = SECRET_PLACEHOLDERS.find((p) => value.toUpperCase().includes(p));
  if (placeholder) return [`${option}: the webhook secret (from ${from}) still holds ${placeholder}, the example files' placeholder; ${make}`];
  if (value.length < WEBHOOK_SECRET_MIN_LENGTH) {
    return [`${option}: the webhook secret (from ${from}) must be at least ${WEBHOOK_SECRET_MIN_LENGTH} characters; ${make}`];
  }
  return [];
}

/**
 * The webhook secret GitHub signed with before the current one, from env or file, held to the
 * same bar; undefined when neither is given.
 */
function previousSecret(file: unknown, env: Record<string, string | undefined>, files: Files, problems: string[]): Secret | undefined {
  const envName = "JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET";
  const option = "github.previousWebhookSecretFile";
  let value: string;
  let from: string;
  if (env[envName]) {
    value = normalizeSecret(env[envName]);
    from = envName;
  } else if (typeof file === "string") {
    if (!readablePath(file)) return undefined; // refused by the schema, unshown
    from = shownSecretPath(file);
    try {
      value = normalizeSecret(files.read(file));
    } catch (err) {
      problems.push(cannotRead(option, from, err, files.uid));
      return undefined;
    }
  } else return undefined;
  if (!value) {
    problems.push(`${option}: ${from} holds only white space`);
    return undefined;
  }
  const weak = weakWebhookSecret(option, from, value);
  problems.push(...weak);
  return weak.length > 0 ? undefined : new Secret(value);
}

/**
 * An optional secret from env or file, trimmed, and where it came from (the variable, or the
 * file's path as it may be shown); undefined when neither is given or the file cannot be read.
 */
function optionalSecret(
  option: string,
  envName: string,
  file: unknown,
  env: Record<string, string | undefined>,
  files: Files,
  problems: string[],
): { value: string; from: string } | undefined {
  if (env[envName]) return { value: env[envName].trim(), from: envName };
  if (typeof file !== "string") return undefined;
  if (!readablePath(file)) return undefined; // refused by the schema, unshown
  try {
    return { value: files.read(file).trim(), from: shownSecretPath(file) };
  } catch (err) {
    problems.push(cannotRead(option, shownSecretPath(file), err, files.uid));
    return undefined;
  }
}

/** An optional bearer token from env or file; undefined when neither is given. */
function optionalToken(
  option: string,
  envName: string,
  file: unknown,
  env: Record<string, string | undefined>,
  files: Files,
  problems: string[],
): Secret | undefined {
  const token = optionalSecret(option, envName, file, env, files, problems);
  if (!token) return undefined;
  if (token.value.length < TOKEN_MIN_LENGTH || /\s/.test(token.value)) {
    problems.push(`${option}: the token (from ${token.from}) must be at least ${TOKEN_MIN_LENGTH} characters without spaces`);
    return undefined;
  }
  return new Secret(token.value);
}

/**
 * The sentinels' password (redis.sentinelPasswordFile, or env JITRUNNER_REDIS_SENTINEL_PASSWORD);
 * undefined when not given. Refused without Sentinel (half a setup), and a sentinelUsername
 * without it (the sentinels would be asked as the default user).
 */
function sentinelPassword(redis: unknown, env: Record<string, string | undefined>, files: Files, problems: string[]): Secret | undefined {
  const option = "redis.sentinelPasswordFile";
  const envName = "JITRUNNER_REDIS_SENTINEL_PASSWORD";
  const section = (typeof redis === "object" && redis !== null ? redis : {}) as Record<string, unknown>;
  const sentinel = section.sentinels !== undefined || section.sentinelName !== undefined;
  // The file's option without Sentinel is the schema's to refuse; the variable is said here.
  if (env[envName] && !sentinel) {
    problems.push(`${envName} ${SENTINEL_ONLY}`);
    return undefined;
  }
  const password = optionalSecret(option, envName, section.sentinelPasswordFile, env, files, problems);
  if (password && !password.value) {
    problems.push(`${option}: ${password.from} holds only white space`);
    return undefined;
  }
  if (section.sentinelUsername !== undefined && sentinel && !env[envName] && section.sentinelPasswordFile === undefined) {
    problems.push(`redis.sentinelUsername: needs the sentinels' password too (redis.sentinelPasswordFile, or ${envName})`);
  }
  return password && new Secret(password.value);
}

/**
 * The type of the private key `pem` holds ("rsa", "ec", "ed25519"...), or undefined when Node
 * cannot read it: one whose line breaks an environment file ate (systemd turns an unquoted \n into
 * n) still looks like a PEM, and would fail only at start; one of another type than RSA would fail
 * every JWT (RS256).
 */
function privateKeyType(pem: string): string | undefined {
  try {
    return createPrivateKey(pem).asymmetricKeyType ?? "unknown";
  } catch {
    return undefined;
  }
}

/** Secrets from files often end in a newline: surrounding white space is dropped, nothing else. */
function normalizeSecret(value: string): string {
  return value.trim();
}

/**
 * A PEM private key: trimmed, and its line breaks restored when written as a literal \n (a PEM
 * passed through an environment variable). Only for the key: in a webhook secret, backslash-n
 * is two characters of the secret that GitHub signs with.
 */
function normalizePem(value: string): string {
  return normalizeSecret(value.replace(/\\n/g, "\n"));
}

function sanitizeHost(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 63) || "host";
}
