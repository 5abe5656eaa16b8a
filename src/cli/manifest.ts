/** The GitHub App manifest (GitHub's manifest flow) for a jitrunner reachable at `url`. */
export interface AppManifest {
  name: string;
  url: string;
  description: string;
  hook_attributes: { url: string; active: boolean };
  redirect_url?: string;
  public: boolean;
  default_permissions: Record<string, "read" | "write">;
  default_events: string[];
}

export const DEFAULT_BASE_URL = "https://YOUR-HOST";

/**
 * Exactly what jitrunner needs: register and delete runners (repository Administration: write;
 * organization Self-hosted runners: write) and read jobs (Actions: read), with `workflow_job`
 * webhooks, and `repository` ones (Metadata, which every App has), for a warm repository made
 * public. Nothing more.
 */
export const APP_PERMISSIONS: Readonly<Record<string, "read" | "write">> = Object.freeze({
  administration: "write",
  actions: "read",
  organization_self_hosted_runners: "write",
});

export function appManifest(opts: { url?: string; name?: string; redirectUrl?: string } = {}): AppManifest {
  const base = checkUrl(opts.url ?? DEFAULT_BASE_URL, "--url").trim().replace(/\/+$/, "");
  const name = (opts.name ?? "jitrunner").trim();
  if (!name || name.length > 34) throw new Error("--name: 1 to 34 characters (GitHub's limit for App names)");
  return {
    name,
    url: base,
    description: "Just-in-time, Docker-in-Docker self-hosted GitHub Actions runners (jitrunner)",
    hook_attributes: { url: `${base}/webhooks/github`, active: true },
    ...(opts.redirectUrl && { redirect_url: checkUrl(opts.redirectUrl, "--redirect-url").trim() }),
    public: false,
    default_permissions: { ...APP_PERMISSIONS },
    default_events: ["workflow_job", "repository"],
  };
}

function checkUrl(value: string, option: string): string {
  let url: URL;
  try {
    url = new URL(value.trim());
  } catch {
    throw new Error(`${option}: not a URL: ${value}`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error(`${option}: must be an http(s) URL: ${value}`);
  if (url.search || url.hash) throw new Error(`${option}: no query or fragment: ${value}`);
  return value;
}
