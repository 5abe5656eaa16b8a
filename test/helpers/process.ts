import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface JitrunnerProcess {
  child: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** What it wrote to stdout alone (check-config's JSON, without the notes and warnings on stderr). */
  stdout(): string;
  /**
   * The exit code once the process has exited and its output has all been read (its pipes closed;
   * at most 5 s after the exit, should a process it started hold them open). With `limitMs`, a
   * process still running then is killed and the promise rejects with `what` and its output: a
   * command that should have ended hangs instead.
   */
  exited(limitMs?: number, what?: string): Promise<number | null>;
  /** SIGTERM, then the exit code, the output all read. */
  stop(): Promise<number | null>;
}

/** Runs the real CLI (`jitrunner <args>`) from source, as a separate process. */
export function runJitrunner(args: string[], env: Record<string, string> = {}): JitrunnerProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const chunks: string[] = [];
  const outChunks: string[] = [];
  child.stdout!.on("data", (d: Buffer) => {
    chunks.push(d.toString());
    outChunks.push(d.toString());
  });
  child.stderr!.on("data", (d: Buffer) => chunks.push(d.toString()));
  // "exit" can come before the last of the output is read; "close" comes after it.
  const exited = new Promise<number | null>((resolve) => {
    child.once("close", (code) => resolve(code));
    child.once("exit", (code) => setTimeout(() => resolve(code), 5_000).unref());
  });
  return {
    child,
    output: () => chunks.join(""),
    stdout: () => outChunks.join(""),
    exited: (limitMs, what = "still running") => {
      if (limitMs === undefined) return exited;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill("SIGKILL");
          reject(new Error(`${what} (after ${limitMs / 1000} s); it printed:\n${chunks.join("")}`));
        }, limitMs);
      });
      return Promise.race([exited, late]).finally(() => clearTimeout(timer));
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Polls `fn` until it returns something truthy, or fails naming `what`. */
export async function waitFor<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Writes the last `lines` lines of a process's log to stderr, under a heading: for a test that
 * failed, so CI's output shows what the process did (its logs carry no secrets: they are redacted).
 */
export function writeLogTail(label: string, log: string, lines = 400): void {
  const tail = log.trimEnd().split("\n").slice(-lines).join("\n");
  process.stderr.write(`--- last ${lines} lines of ${label}'s log\n${tail}\n`);
}
