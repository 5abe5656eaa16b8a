/**
 * "Docs for every option", checked: every option of the config schema has a row in the options
 * table (README.md, "Configuration"), or is named in its section's row, with the schema's default
 * and every value of an enum; every environment variable jitrunner reads is in README.md or docs/,
 * and one the config loader reads for an option in that option's row; every option of every
 * command is in that command's --help (and in README.md). Read from the real schema, loader,
 * source and help, so a new option without its words fails here.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { COMMAND_HELP, USAGE } from "../../src/cli/help.ts";
import { COMMAND_OPTIONS, OPTIONS } from "../../src/cli/options.ts";
import { loadConfigWithOrigins } from "../../src/config/load.ts";
import { configSchema } from "../../src/config/schema.ts";
import { testPrivateKey } from "../helpers/config.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const read = (path: string) => readFileSync(`${ROOT}${path}`, "utf8");
const DOCS = ["README.md", ...readdirSync(`${ROOT}docs`).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
const README = read("README.md");
const ALL_DOCS = DOCS.map(read).join("\n");

/** A schema without its wrappers: optional, default, prefault, nullable, and a transform's input. */
function unwrap(schema: z.ZodType): z.ZodType {
  return unwrapNoting(schema).schema;
}

/** unwrap, noting whether a wrapper made the value optional, and the default one gave. */
function unwrapNoting(schema: z.ZodType): { schema: z.ZodType; optional: boolean; default?: { value: unknown } } {
  let at = schema;
  let optional = false;
  let given: { value: unknown } | undefined;
  for (;;) {
    if (at instanceof z.ZodDefault) given ??= { value: at.def.defaultValue as unknown };
    if (at instanceof z.ZodOptional || at instanceof z.ZodPrefault || at instanceof z.ZodNullable) optional = true;
    if (at instanceof z.ZodOptional || at instanceof z.ZodDefault || at instanceof z.ZodPrefault || at instanceof z.ZodNullable) at = at.unwrap() as z.ZodType;
    else if (at instanceof z.ZodPipe) at = at.in as z.ZodType;
    else return { schema: at, optional: optional || given !== undefined, ...(given && { default: given }) };
  }
}

/** What the schema says of an option's value when the file leaves it out. */
interface Omitted {
  /** Neither it nor a section above it may be left out. */
  required: boolean;
  /** The value it then takes, when the schema gives one. */
  default?: { value: unknown };
  /** The values it may take, when it is one of a few words (an enum). */
  values?: readonly string[];
}

/**
 * The config's options by path, as the README writes them (`pools[].warm.owner`): `leaves` take a
 * value (a list of values, a mapping of names to values, included), each with what it is when
 * left out; `sections` hold options (an object, or a list of objects as `pools[].mounts`).
 */
function optionPaths(schema: z.ZodType, prefix = "", inOptional = false, found = { leaves: new Map<string, Omitted>(), sections: [] as string[] }) {
  const { schema: at, optional, default: given } = unwrapNoting(schema);
  const maybeLeftOut = inOptional || optional;
  if (at instanceof z.ZodObject) {
    if (prefix) found.sections.push(prefix);
    for (const [key, child] of Object.entries(at.shape as Record<string, z.ZodType>)) optionPaths(child, prefix ? `${prefix}.${key}` : key, maybeLeftOut, found);
  } else if (at instanceof z.ZodArray && unwrap(at.element as z.ZodType) instanceof z.ZodObject) {
    found.sections.push(prefix);
    optionPaths(at.element as z.ZodType, `${prefix}[]`, maybeLeftOut, found);
  } else {
    const values = at instanceof z.ZodEnum ? (at.options as unknown[]).map(String) : undefined;
    found.leaves.set(prefix, { required: !maybeLeftOut, ...(given && { default: given }), ...(values && { values }) });
  }
  return found;
}

interface Row {
  /** The options the row's first cell names: `a.b`, and `a.b` / `a.c` or `a.b`, `.c` (a sibling). */
  names: string[];
  /** The default cell, backticks dropped. */
  defaults: string;
  /** The backticked words of the other cells. */
  spans: string[];
}

const spansOf = (text: string) => [...text.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

/** The rows of every `| option | default | meaning |` table in `markdown`. */
function optionRows(markdown: string): Row[] {
  const rows: Row[] = [];
  let inTable = false;
  for (const line of markdown.split("\n")) {
    if (/^\|\s*option\s*\|\s*default\s*\|\s*meaning\s*\|/.test(line)) {
      inTable = true;
      continue;
    }
    if (!line.startsWith("|")) inTable = false;
    if (!inTable || /^\|[-|\s]+$/.test(line)) continue;
    const end = line.indexOf("|", 1);
    const names: string[] = [];
    for (const span of spansOf(line.slice(1, end))) {
      const previous = names.at(-1);
      names.push(span.startsWith(".") && previous ? previous.replace(/\.[^.]+$/, span) : span);
    }
    const rest = line.slice(end);
    rows.push({ names, defaults: rest.split("|")[1]!.trim().replace(/`/g, ""), spans: spansOf(rest) });
  }
  return rows;
}

/** The section an option is in, as its row names it: `pools[].mounts` for `pools[].mounts[].source`. */
const parentOf = (path: string) => path.replace(/\.[^.]+$/, "").replace(/\[\]$/, "");

/**
 * The options no row documents: none names it, and its section's row (`worker.docker`,
 * `pools[].resources`) does not name its key in backticks (`socketPath`, `{source, target, readOnly}`).
 */
function undocumented(leaves: readonly string[], rows: readonly Row[]): string[] {
  return leaves.filter((path) => {
    if (rows.some((r) => r.names.includes(path))) return false;
    const parent = parentOf(path);
    const key = path.slice(path.lastIndexOf(".") + 1);
    const word = new RegExp(`(?<![A-Za-z0-9_.])${key}(?![A-Za-z0-9_])`);
    return parent === path || !rows.some((r) => r.names.includes(parent) && r.spans.some((s) => word.test(s)));
  });
}

/** Words a default cell gives an empty list or mapping: no limit, no extra. */
const EMPTY = ["none", "any", "all"];

/**
 * Whether a default cell says what the schema does: `required` for an option that must be given,
 * the default's value (`600`, `bridge`, `1048576 (1 MiB)`, `[SYS_RESOURCE]`), a word for an empty
 * list; an option that may be left out with no default (its meaning then is the row's to say:
 * `—`, `the hostname`) anything but `required`.
 */
function saysDefault(cell: string, omitted: Omitted): boolean {
  if (omitted.required) return cell === "required";
  if (!omitted.default) return cell !== "required";
  const value = omitted.default.value;
  if (Array.isArray(value) && value.length > 0) return cell === `[${value.join(", ")}]`;
  if (typeof value === "object" && value !== null && Object.keys(value).length === 0) return EMPTY.includes(cell);
  return cell === String(value) || cell.startsWith(`${String(value)} (`);
}

/** Rows whose default cell says otherwise than the schema (a row of two options: `a` / `b`). */
function wrongDefaults(leaves: ReadonlyMap<string, Omitted>, rows: readonly Row[]): string[] {
  return rows.flatMap((row) => {
    const cells = row.defaults.split(" / ");
    return row.names.flatMap((name, i) => {
      const omitted = leaves.get(name);
      const cell = cells.length === row.names.length ? cells[i]! : row.defaults;
      if (!omitted || saysDefault(cell, omitted)) return [];
      return [`${name}: README says '${cell}', the schema ${omitted.required ? "requires it" : omitted.default ? JSON.stringify(omitted.default.value) : "has no default"}`];
    });
  });
}

const { leaves: omitted, sections } = optionPaths(configSchema);
const leaves = [...omitted.keys()];
const ROWS = DOCS.flatMap((file) => optionRows(read(file)));

test("the schema's options are all found, nested ones by their README path", () => {
  assert.ok(leaves.length >= 80, `only ${leaves.length} options found: ${leaves.join(", ")}`);
  for (const known of ["github.appId", "redis.sentinels", "server.port", "worker.docker.host", "worker.docker.knownHostsFile", "pools[].minIdle", "pools[].labels", "pools[].warm.repo", "pools[].resources.cpus", "pools[].mounts[].readOnly", "pools[].env", "logLevel"]) {
    assert.ok(leaves.includes(known), known);
  }
  for (const known of ["worker.docker", "pools[].resources", "pools[].mounts", "pools[].warm", "pools"]) assert.ok(sections.includes(known), known);
  assert.ok(ROWS.length >= 60, `only ${ROWS.length} option rows found`);
});

test("the check is not vacuous: without an option's row, or its word in its section's row, the option is reported", () => {
  // Each compared with what the README as it is lacks (test below): this one is about the check.
  const lacking = new Set(undocumented(leaves, ROWS));
  const undocumentedNow = (rows: readonly Row[]) => undocumented(leaves, rows).filter((p) => !lacking.has(p));
  const without = (name: string) => ROWS.filter((r) => !r.names.includes(name));
  assert.deepEqual(undocumentedNow(without("pools[].minIdle")), ["pools[].minIdle"]);
  assert.deepEqual(undocumentedNow(without("redis.sentinels")), ["redis.sentinels"]);
  // A row for two options (`server.host` / `server.port`), and one that names siblings (`.owner`).
  assert.deepEqual(undocumentedNow(without("server.port")), ["server.host", "server.port"]);
  assert.deepEqual(undocumentedNow(without("pools[].warm.owner")), ["pools[].warm.installationId", "pools[].warm.owner", "pools[].warm.repo"]);
  // A section's row that names its options' keys (worker.docker's socketPath, host...).
  const docker = undocumentedNow(without("worker.docker"));
  assert.ok(docker.includes("worker.docker.socketPath") && docker.includes("worker.docker.keyFile"), docker.join(", "));
  assert.ok(!docker.includes("worker.docker.knownHostsFile"), "an option with a row of its own needs no word in its section's");
  const noCpus = ROWS.map((r) => (r.names.includes("pools[].resources") ? { ...r, spans: r.spans.filter((s) => s !== "cpus") } : r));
  assert.deepEqual(undocumentedNow(noCpus), ["pools[].resources.cpus"]);
});

test("every config option has a row in the options table, or is named in its section's row", () => {
  assert.deepEqual(undocumented(leaves, ROWS), [], "add a row (| `path` | default | meaning |) to README.md's options table");
});

test("every option a row names is one the config takes (no row for an option that is gone)", () => {
  const known = new Set([...leaves, ...sections]);
  assert.deepEqual(ROWS.flatMap((r) => r.names).filter((n) => !known.has(n)), []);
});

test("every option's row gives the default the schema has (or says it is required)", () => {
  assert.deepEqual(wrongDefaults(omitted, ROWS), []);
  // Not vacuous: a default, a required option, one of a row of two, and an empty list, each changed.
  const changed = (name: string, defaults: string) => ROWS.map((r) => (r.names.includes(name) ? { ...r, defaults } : r));
  assert.deepEqual(wrongDefaults(omitted, changed("worker.capacity", "5")), ["worker.capacity: README says '5', the schema 4"]);
  assert.deepEqual(wrongDefaults(omitted, changed("pools[].name", "—")), ["pools[].name: README says '—', the schema requires it"]);
  assert.deepEqual(wrongDefaults(omitted, changed("server.port", "0.0.0.0 / 8081")), ["server.port: README says '8081', the schema 8080"]);
  assert.deepEqual(wrongDefaults(omitted, changed("pools[].capDrop", "none")), ['pools[].capDrop: README says \'none\', the schema ["SYS_RESOURCE"]']);
  assert.deepEqual(wrongDefaults(omitted, changed("redis.sentinels", "required")), ["redis.sentinels: README says 'required', the schema has no default"]);
  assert.equal(omitted.get("pools[].warm.installationId")?.required, false, "required only where its section is");
});

/** The row that documents an option: its own, or its section's. */
const rowOf = (rows: readonly Row[], path: string) => rows.find((r) => r.names.includes(path)) ?? rows.find((r) => r.names.includes(parentOf(path)));

/** The values of an option of a few words (an enum) that its row does not give in backticks. */
function unlistedValues(leaves: ReadonlyMap<string, Omitted>, rows: readonly Row[]): string[] {
  return [...leaves].flatMap(([path, { values }]) => {
    const row = rowOf(rows, path);
    return (values ?? []).filter((v) => !row?.spans.includes(v)).map((v) => `${path}: ${v}`);
  });
}

test("every value an option of a few words takes is in its row", () => {
  assert.ok([...omitted.values()].filter((o) => o.values).length >= 4, "the enums are found");
  assert.deepEqual(omitted.get("pools[].isolation")?.values, ["privileged", "capabilities", "sysbox"]);
  assert.deepEqual(unlistedValues(omitted, ROWS), []);
  const noSysbox = ROWS.map((r) => (r.names.includes("pools[].isolation") ? { ...r, spans: r.spans.filter((s) => s !== "sysbox") } : r));
  assert.deepEqual(unlistedValues(omitted, noSysbox), ["pools[].isolation: sysbox"]);
});

/** Every file under src, by path. */
function sources(dir = "src"): string[] {
  return readdirSync(`${ROOT}${dir}`, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(`${dir}/${e.name}`) : e.name.endsWith(".ts") ? [`${dir}/${e.name}`] : [],
  );
}

/**
 * The environment variables jitrunner reads: each `env.NAME` read anywhere (not one set), and each
 * JITRUNNER_* the config loader names (the secret variables are passed to its readers by name).
 */
function variablesRead(): Set<string> {
  const names = new Set<string>();
  for (const file of sources()) {
    const text = read(file);
    for (const m of text.matchAll(/\benv(?:\.|\[")([A-Z][A-Z0-9_]*)(?![A-Z0-9_])"?\]?(?!\s*=[^=])/g)) names.add(m[1]!);
    if (file.startsWith("src/config/")) for (const m of text.matchAll(/["`](JITRUNNER_[A-Z0-9_]+)["`]/g)) names.add(m[1]!);
  }
  return names;
}

test("every environment variable jitrunner reads is in README.md or docs/", () => {
  const names = variablesRead();
  assert.ok(names.size >= 20, [...names].join(", "));
  for (const known of ["JITRUNNER_REDIS_URL", "JITRUNNER_PORT", "JITRUNNER_GITHUB_PRIVATE_KEY", "JITRUNNER_REDIS_SENTINEL_PASSWORD", "JITRUNNER_CONFIG", "JITRUNNER_USER", "DOCKER_HOST"]) {
    assert.ok(names.has(known), known);
  }
  assert.ok(!names.has("HOME"), "a variable set, not read, is not counted");
  const documented = (name: string, text: string) => new RegExp(`(?<![A-Za-z0-9_])${name}(?![A-Za-z0-9_])`).test(text);
  assert.ok(!documented("JITRUNNER_REDIS_SENTINEL", ALL_DOCS), "a longer name does not count for a shorter one");
  assert.deepEqual([...names].filter((n) => !documented(n, ALL_DOCS)), []);
});

/** A valid value for each variable the config loader reads. */
const VARIABLE_VALUES: Record<string, string> = {
  JITRUNNER_REDIS_URL: "redis://127.0.0.1:6399",
  JITRUNNER_REDIS_SENTINELS: "127.0.0.1:26379",
  JITRUNNER_REDIS_SENTINEL_NAME: "mymaster",
  JITRUNNER_REDIS_SENTINEL_PASSWORD: "sentinel-password",
  JITRUNNER_HOST_ID: "host-1",
  JITRUNNER_PORT: "8081",
  JITRUNNER_LOG_LEVEL: "debug",
  JITRUNNER_GITHUB_PRIVATE_KEY: testPrivateKey(),
  JITRUNNER_GITHUB_WEBHOOK_SECRET: "webhook-secret-0123456789",
  JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET: "previous-secret-0123456789",
  JITRUNNER_ADMIN_TOKEN: "admin-token-0123456789",
  JITRUNNER_METRICS_TOKEN: "metrics-token-0123456789",
};

/** The option each variable sets or stands for, as the config loader says when every one is set. */
function variableOptions(): Map<string, string> {
  const { origins, secretOrigins } = loadConfigWithOrigins({
    text: "github:\n  appId: 42\npools:\n  - name: default\n    labels: [self-hosted]\n    image: runner:1\n",
    env: VARIABLE_VALUES,
    readFile: () => assert.fail("every secret comes from its variable here"),
  });
  return new Map([...origins, ...secretOrigins].map(([option, variable]) => [variable, option]));
}

test("every variable the config loader reads is named in the row of the option it sets or stands for", () => {
  const options = variableOptions();
  // Named in a string there, as the loader passes its variables by name (a comment's mention is not a read).
  const loaderReads = [...variablesRead()].filter((n) => n.startsWith("JITRUNNER_") && sources("src/config").some((f) => new RegExp(`["\`]${n}["\`]`).test(read(f))));
  assert.deepEqual(loaderReads.filter((n) => !options.has(n)), [], "give each such variable a value in VARIABLE_VALUES");
  assert.equal(options.get("JITRUNNER_PORT"), "server.port");
  assert.equal(options.get("JITRUNNER_GITHUB_PRIVATE_KEY"), "github.privateKeyFile");
  assert.ok(options.size >= 12, [...options.keys()].join(", "));
  const unnamed = (rows: readonly Row[]) =>
    [...options].filter(([variable, option]) => !rows.some((r) => r.names.includes(option) && r.spans.includes(variable))).map(([v, o]) => `${o} (${v})`);
  assert.deepEqual(unnamed(ROWS), []);
  // Not vacuous: the server.host / server.port row without its variable.
  const without = ROWS.map((r) => (r.names.includes("server.port") ? { ...r, spans: r.spans.filter((s) => s !== "JITRUNNER_PORT") } : r));
  assert.deepEqual(unnamed(without), ["server.port (JITRUNNER_PORT)"]);
  // The paragraph that lists the variables that win over the file names each of them.
  const overrides = /The environment variables the table names for options \(([^)]*)\)/.exec(README)?.[1] ?? "";
  const setOptions = [...options].filter(([variable, option]) => !option.endsWith("File") && variable.startsWith("JITRUNNER_")).map(([v]) => v);
  assert.ok(setOptions.length >= 6, setOptions.join(", "));
  assert.deepEqual(setOptions.filter((v) => !overrides.includes(`\`${v}\``)), []);
});

/** The options an `Options:` list names, as `--name` (with `-x, ` before it for a short one). */
function listedOptions(help: string): string[] {
  const at = help.indexOf("\nOptions:\n");
  assert.ok(at >= 0, `no Options: list in ${help.split("\n")[0]}`);
  const list = help.slice(at);
  return [...list.matchAll(/^\s+(?:-[a-z], )?--([a-z][a-z-]*)/gm)].map((m) => m[1]!);
}

test("every command's --help lists exactly the options it takes, and README.md names each", () => {
  assert.deepEqual(Object.keys(COMMAND_HELP).sort(), Object.keys(COMMAND_OPTIONS).sort());
  assert.deepEqual(listedOptions(COMMAND_HELP.drain!).sort(), ["config", "help", "host", "no-wait", "undo"]);
  for (const [command, options] of Object.entries(COMMAND_OPTIONS)) {
    const help = COMMAND_HELP[command]!;
    assert.match(USAGE, new RegExp(`^  ${command} `, "m"), `${command} in the overview`);
    assert.deepEqual(listedOptions(help).sort(), [...options, "help"].sort(), `jitrunner ${command} --help`);
    const usage = help.slice(0, help.indexOf("\n\n"));
    for (const option of options) {
      assert.ok(usage.includes(`--${option}`), `${command}: --${option} in the usage line`);
      const short = (OPTIONS[option as keyof typeof OPTIONS] as { short?: string }).short;
      if (short) assert.ok(help.includes(`-${short}, --${option}`), `${command}: -${short}`);
    }
  }
  const taken = new Set(Object.values(COMMAND_OPTIONS).flat());
  assert.deepEqual(Object.keys(OPTIONS).filter((o) => o !== "help" && !taken.has(o)), [], "an option no command takes");
  assert.deepEqual(Object.keys(OPTIONS).filter((o) => !README.includes(`--${o}`)), [], "options README.md does not name");
});
