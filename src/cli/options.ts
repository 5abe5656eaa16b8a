/**
 * The options of the `jitrunner` command: every one parseArgs knows (OPTIONS), and which command
 * takes which (COMMAND_OPTIONS). Apart from cli.ts, which runs on import, so that a test can hold
 * them against each command's help (src/cli/help.ts).
 */

/** Every command's options, for parseArgs: which command takes which is COMMAND_OPTIONS. */
export const OPTIONS = {
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
} as const;

/** The options each command takes (besides --help): any other is refused rather than ignored. */
export const COMMAND_OPTIONS: Record<string, readonly string[]> = {
  server: ["config"],
  worker: ["config"],
  all: ["config"],
  "check-config": ["config", "mode"],
  status: ["config", "json"],
  drain: ["config", "host", "no-wait", "undo"],
  "app-manifest": ["url", "name", "redirect-url"],
} satisfies Record<string, ReadonlyArray<keyof typeof OPTIONS>>;
