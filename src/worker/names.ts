import { randomBytes } from "node:crypto";

/**
 * A unique runner name: `<prefix>-<pool>-<10 hex>`, at most 59 characters (16 + 1 + 31 + 1 + 10; GitHub allows 64).
 * The prefix marks registrations as ours when the reconciler reads GitHub's runner list.
 */
export function runnerName(prefix: string, pool: string): string {
  return `${prefix}-${pool}-${randomBytes(5).toString("hex")}`;
}

export function isOurRunner(prefix: string, name: string | null | undefined): boolean {
  return !!name && name.startsWith(`${prefix}-`);
}
