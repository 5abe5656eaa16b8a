// What route handlers share, and GitHub-style pagination.
import type { FakeAuth } from "./auth.ts";
import type { Req } from "./http.ts";
import type { Installations } from "./installations.ts";
import type { Urls } from "./shapes.ts";
import type { FakeJob, FakeState } from "./state.ts";
import type { JobAction } from "./webhooks.ts";

export interface Ctx {
  urls: Urls;
  state: FakeState;
  auth: FakeAuth;
  appId: number;
  installations: Installations;
  /** Send the job's webhook for `action`, built from its state now; resolves with the receiver's status. */
  emit(job: FakeJob, action: JobAction): Promise<number>;
}

/** One page of `items` (per_page default 30, max 100) and the Link header GitHub sends. */
export function paginate<T>(ctx: Ctx, req: Req, items: T[]): { items: T[]; headers: Record<string, string> } {
  const num = (name: string, fallback: number): number => {
    const n = Number.parseInt(req.query.get(name) ?? "", 10);
    return Number.isFinite(n) && n > 0 ? n : fallback;
  };
  const perPage = Math.min(num("per_page", 30), 100);
  const page = num("page", 1);
  const last = Math.max(1, Math.ceil(items.length / perPage));
  const link = (n: number, rel: string): string => {
    const q = new URLSearchParams(req.query);
    q.set("per_page", String(perPage));
    q.set("page", String(n));
    return `<${ctx.urls.api}${req.path}?${q.toString()}>; rel="${rel}"`;
  };
  const links: string[] = [];
  if (page > 1) links.push(link(page - 1, "prev"), link(1, "first"));
  if (page < last) links.push(link(page + 1, "next"), link(last, "last"));
  return {
    items: items.slice((page - 1) * perPage, page * perPage),
    headers: links.length > 0 ? { link: links.join(", ") } : {},
  };
}
