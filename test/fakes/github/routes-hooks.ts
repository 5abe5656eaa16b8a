// The App's webhook deliveries: list them (newest first, cursor pagination) and ask for a
// redelivery, as GitHub's `/app/hook/deliveries` routes do (App JWT).
import type { Ctx } from "./context.ts";
import { ghError, type Route } from "./http.ts";
import type { DeliveryRecord, WebhookSender } from "./webhooks.ts";

const DOCS = "https://docs.github.com/rest/apps/webhooks";

function statusText(code: number): string {
  if (code === 0) return "failed to connect to host";
  return code >= 200 && code < 300 ? "OK" : `Invalid HTTP Response: ${code}`;
}

function item(d: DeliveryRecord) {
  return {
    id: d.attemptId,
    guid: d.id,
    delivered_at: d.deliveredAt,
    redelivery: d.redelivery,
    duration: d.durationMs / 1000,
    status: statusText(d.status),
    status_code: d.status,
    event: d.event,
    action: d.action,
    installation_id: d.installationId,
    repository_id: d.repositoryId,
    throttled_at: null,
  };
}

/**
 * `pageSize`: the list's pages hold at most this many, whatever `per_page` asks (see
 * FakeGitHubOptions.hookDeliveriesPageSize).
 */
export function hookRoutes(ctx: Ctx, hooks: WebhookSender, pageSize = 100): Route[] {
  return [
    {
      method: "GET",
      template: "/app/hook/deliveries",
      auth: "app",
      handle: (req) => {
        const perPage = Math.min(Math.max(Number.parseInt(req.query.get("per_page") ?? "", 10) || 30, 1), 100);
        const cursor = req.query.get("cursor");
        const from = cursor ? Number(/^v1_(\d+)$/.exec(cursor)?.[1] ?? Number.NaN) : Number.POSITIVE_INFINITY;
        if (Number.isNaN(from)) return ghError(400, "Invalid cursor", DOCS);
        // GitHub's description of `status` (the Router refuses any other value than these two):
        // "success" is a status_code of 200-399, "failure" one of 400-599, both inclusive. A delivery
        // that got no answer (status_code 0, "failed to connect to host", or a timeout) is in neither.
        const status = req.query.get("status");
        const inRange = (code: number): boolean => (status === "success" ? code >= 200 && code <= 399 : code >= 400 && code <= 599);
        const all = [...hooks.deliveries]
          .filter((d) => status === null || inRange(d.status))
          .sort((a, b) => b.attemptId - a.attemptId)
          .filter((d) => d.attemptId <= from);
        const size = Math.min(perPage, pageSize);
        const page = all.slice(0, size);
        const rest = all[size];
        const headers: Record<string, string> = {};
        if (rest) {
          const q = new URLSearchParams(req.query);
          q.set("per_page", String(perPage));
          q.set("cursor", `v1_${rest.attemptId}`);
          headers.link = `<${ctx.urls.api}${req.path}?${q.toString()}>; rel="next"`;
        }
        return { status: 200, body: page.map(item), headers };
      },
    },
    {
      method: "POST",
      template: "/app/hook/deliveries/{delivery_id}/attempts",
      auth: "app",
      handle: (req) => {
        const found = hooks.deliveries.find((d) => d.attemptId === Number(req.params.delivery_id));
        if (!found) return ghError(404, "Not Found", DOCS);
        // GitHub accepts at once and delivers later.
        void hooks.redeliver(found.id).catch(() => undefined);
        return { status: 202, body: {} };
      },
    },
  ];
}
