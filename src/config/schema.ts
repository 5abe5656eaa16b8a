import { z } from "zod";
import { DEFAULT_CONCURRENT_CALLS } from "../github/request-gates.ts";
import { DEFAULT_WRITES_PER_MINUTE } from "../github/write-window.ts";

/** Isolation profiles of a runner container (docs/security.md, "Isolation profiles"). */
export const ISOLATION_PROFILES = ["privileged", "capabilities", "sysbox"] as const;
export type Isolation = (typeof ISOLATION_PROFILES)[number];

const name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,30}$/, "must be 1-31 characters of a-z, 0-9 and '-', starting with a letter or digit");

const label = z.string().min(1).max(256);
/**
 * The longest time any option in seconds may give: each ends up as a timer or a time limit, and
 * Node runs a timer of over 24.8 days after 1 ms instead (a warning, not an error), so a huge value
 * meant as "rarely" would act at once; a few options multiply theirs (3 beats to a gone host).
 */
const MAX_WAIT_SECONDS = 7 * 24 * 3600;
const TOO_LONG = `at most ${MAX_WAIT_SECONDS} (7 days)`;

/**
 * The path of a file that holds a secret: one line, no PEM header. A value that is not one is
 * the secret pasted in its place (a PEM key, say), refused without being echoed. `env` names the
 * variable that may hold the secret instead.
 */
export function secretFile(env?: string) {
  const instead = env ? `, or set ${env} instead` : "";
  return z
    .string()
    .refine(
      (value) => !/[\r\n]|-----BEGIN/.test(value) && value.length <= 4096,
      `must be the path of a file that holds the secret, not the secret itself (the value is not shown): write it to a file and name that file here${instead}`,
    );
}

/**
 * A secret file's path as errors and check-config show it: absolute, or relative starting with
 * ./ or ../ (a path, plainly). Any other value is not shown: it may be a token or secret written
 * where its file's path belongs (a path so written is read from the working directory all the same).
 */
export function shownSecretPath(file: string): string {
  return /^\.{0,2}\//.test(file) ? file : "(a relative path, not shown in case it is the secret itself: start it with ./ to show it)";
}

/**
 * Whether a URL the WHATWG parser takes holds an '@' it did not read as the end of the user name
 * and password: a password's '/', '#' or '?' ended the host early (`redis://default:6379#pass@host`
 * reads host `default`, port 6379 and no password), so the '@' and the password before it are
 * left in the path, query or fragment.
 */
export function atOutsideUserInfo(url: string): boolean {
  const u = new URL(url);
  if (`${u.pathname}${u.hash}`.includes("@")) return true;
  // In the query, only as the value of a parameter ioredis reads as such (`?password=p@ss`).
  return [...u.searchParams].some(([key, value]) => key.includes("@") || (value.includes("@") && key !== "password" && key !== "username"));
}

/** What a Sentinel option set without redis.sentinels and redis.sentinelName is told. */
export const SENTINEL_ONLY = "is for Redis Sentinel: set redis.sentinels and redis.sentinelName too, or leave it out";

/**
 * A sentinel's address: `host:port`, the host a name, an IPv4 address or an IPv6 one in brackets
 * (`[::1]:26379`). No scheme or password: the sentinels' password is one for all
 * (redis.sentinelPasswordFile), and TLS follows redis.url's scheme.
 */
export const sentinelAddress = z.string().superRefine((value, ctx) => {
  const port = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/.exec(value)?.[1];
  if (port === undefined) ctx.addIssue({ code: "custom", message: "must be host:port, as 10.0.0.5:26379, sentinel-1:26379 or [fd00::5]:26379" });
  else if (Number(port) < 1 || Number(port) > 65535) ctx.addIssue({ code: "custom", message: "must have a port from 1 to 65535" });
});

/** A sentinel address (sentinelAddress) as ioredis takes it. */
export function parseSentinelAddress(value: string): { host: string; port: number } {
  const at = value.lastIndexOf(":");
  return { host: value.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(value.slice(at + 1)) };
}

const mount = z
  .object({
    source: z.string().min(1),
    target: z.string().startsWith("/", "must be an absolute path"),
    readOnly: z.boolean().default(false),
  })
  .strict();

const pool = z
  .object({
    name,
    // Once each: GitHub compares labels without regard to case, and a pool's count of them decides
    // between pools that both match a job (the fewest wins), which a label given twice would skew.
    labels: z
      .array(label)
      .min(1)
      .max(100)
      .superRefine((labels, ctx) => {
        const seen = new Set<string>();
        for (const l of labels) {
          if (seen.has(l.toLowerCase())) ctx.addIssue({ code: "custom", message: `label '${l}' is given twice (labels are compared without regard to case)` });
          seen.add(l.toLowerCase());
        }
      }),
    image: z.string().min(1),
    scope: z.enum(["repository", "organization"]).default("repository"),
    /** Organization runner group by id (default 1, "Default")... */
    runnerGroupId: z.number().int().positive().optional(),
    /** ...or by name, resolved once through GitHub's API; not both (checked in load.ts). */
    runnerGroup: z.string().trim().min(1).max(256).optional(),
    isolation: z.enum(ISOLATION_PROFILES).default("privileged"),
    capDrop: z.array(z.string().regex(/^[A-Z_]+$/)).default(["SYS_RESOURCE"]),
    resources: z
      .object({
        cpus: z.number().positive().optional(),
        memoryMb: z.number().int().positive().optional(),
        pidsLimit: z.number().int().positive().optional(),
      })
      .strict()
      .prefault({}),
    networkMode: z.string().min(1).default("bridge"),
    mounts: z.array(mount).default([]),
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
    allowPublicRepositories: z.boolean().default(false),
    /**
     * Serve jobs that name no labels (`runs-on: { group: ... }` only). Their webhooks do not say
     * which group they want, so a runner launched for one may be in the wrong group and take
     * nothing: only for an organization pool with a runner group of its own (checked in load.ts).
     */
    serveJobsWithoutLabels: z.boolean().default(false),
    idleTimeoutSeconds: z.number().int().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(600),
    /** A runner GitHub does not list online this long after its container started is removed. */
    startTimeoutSeconds: z.number().int().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(300),
    /** Runners of this pool at once across every host; unset: no global limit. */
    maxRunners: z.number().int().positive().optional(),
    /** Idle registered runners kept ready across the fleet, so a job starts with no launch on its critical path. */
    minIdle: z.number().int().min(0).default(0),
    /** Where warm runners register (a JIT runner is registered before any job names a repository). */
    warm: z
      .object({
        installationId: z.number().int().positive(),
        owner: z.string().min(1),
        /** Required for repository-scoped pools. */
        repo: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  // The Default group when neither a group id nor a name is given.
  .transform((p) => ({ ...p, runnerGroupId: p.runnerGroup === undefined ? (p.runnerGroupId ?? 1) : p.runnerGroupId }));

/**
 * Container starts in flight at once on an engine. Held back to a few, in order, the first runners
 * of a burst start sooner, but the later starts then wait while the runners started first boot
 * their own dockerd on the same CPUs: measured on 2 CPUs, 12 at a time made the median and the last
 * start of a burst of 50 later than all at once did (BENCHMARKS.md, "Pickup"). So a whole burst at
 * once, as far as a host's capacity goes; a lower number is a guard for an engine that is slow to
 * take many starts together (each has `launchCallTimeoutSeconds`).
 */
export const DEFAULT_CONCURRENT_STARTS = 50;

/**
 * How long a worker's stop waits for launches in flight and demand held (`worker.stopTimeoutSeconds`):
 * under the 5 minutes the Compose files give a stop, so that the process ends by itself, its logs
 * written, rather than by SIGKILL.
 */
export const DEFAULT_STOP_TIMEOUT_SECONDS = 240;

/**
 * How long a Docker call that should answer promptly (list, inspect, remove, ping) may go
 * unanswered before it fails: an engine whose connection silently dropped (TCP, SSH) or that hangs
 * never answers, and a host loop pass waiting on it would never end. Generous: a busy engine takes
 * seconds, not a minute.
 */
export const DEFAULT_CALL_TIMEOUT_SECONDS = 60;

/**
 * The same for creating and starting a runner container, which a busy engine under a burst can
 * take 10-20 s over (DinD's volume, cgroups, network setup): twice the other limit.
 */
export const DEFAULT_LAUNCH_CALL_TIMEOUT_SECONDS = 120;

/** The schemes a worker.docker.host URL may have, as Docker's own DOCKER_HOST and -H take them. */
const DOCKER_HOST_SCHEMES = ["tcp", "http", "https", "ssh"];

/**
 * worker.docker.host written as Docker's own tools take an engine's address, a URL
 * (`tcp://engine:2376`, `https://engine:2376`, `ssh://user@engine`) or `name:port`
 * (`engine:2375`, `[fd00::5]:2376`), read into the host, port, protocol and username that the
 * connection takes apart: docker-modem reads `host` as a name or an address only, so written as
 * it stands the connection would go to port 80 of a name that does not resolve. `tcp` is https
 * when the config names TLS files, http otherwise. A part written both ways must agree.
 */
function readDockerHost<D extends { host?: string | undefined; port?: number | undefined; protocol?: "http" | "https" | "ssh" | undefined; username?: string | undefined; caFile?: string | undefined; certFile?: string | undefined; keyFile?: unknown }>(
  d: D,
  ctx: z.RefinementCtx,
): D {
  const host = d.host;
  if (host === undefined) return d;
  let written: { name: string; port?: number; protocol?: "http" | "https" | "ssh"; username?: string };
  if (host.includes("://")) {
    const url = URL.canParse(host) ? new URL(host) : undefined;
    const scheme = url?.protocol.slice(0, -1).toLowerCase() ?? "";
    if (!url || !DOCKER_HOST_SCHEMES.includes(scheme) || url.hostname === "" || url.password !== "" || !["", "/"].includes(url.pathname) || url.search !== "" || url.hash !== "") {
      const shown = url?.password ? host.replace(/\/\/.*@/, "//redacted@") : host; // a password is never repeated
      ctx.addIssue({ code: "custom", path: ["host"], message: `'${shown}' is not an engine's address: give a name or an address, name:port, or a URL tcp://, http://, https:// or ssh://[user@]name[:port] (no password, path or query)` });
      return d;
    }
    const tls = d.caFile !== undefined || d.certFile !== undefined || d.keyFile !== undefined;
    written = {
      name: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      ...(url.port !== "" && { port: Number(url.port) }),
      protocol: scheme === "tcp" ? (d.protocol ?? (tls ? "https" : "http")) : (scheme as "http" | "https" | "ssh"),
      ...(url.username !== "" && { username: decodeURIComponent(url.username) }),
    };
  } else {
    const m = /^(?:([^:[\]]+)|\[([^\]]*)\]):(\d+)$/.exec(host);
    if (!m) return d;
    written = { name: m[1] ?? m[2] ?? "", port: Number(m[3]) };
  }
  const disagree = (option: "port" | "protocol" | "username") => d[option] !== undefined && written[option] !== undefined && d[option] !== written[option];
  for (const option of ["port", "protocol", "username"] as const) {
    if (disagree(option)) ctx.addIssue({ code: "custom", path: [option], message: `${String(d[option])} disagrees with host '${host}', which says ${String(written[option])}: give it in one place` });
  }
  if (written.port !== undefined && (written.port < 1 || written.port > 65535)) ctx.addIssue({ code: "custom", path: ["host"], message: `'${host}' has a port outside 1 to 65535` });
  return {
    ...d,
    host: written.name,
    ...(written.port !== undefined && { port: written.port }),
    ...(written.protocol !== undefined && { protocol: written.protocol }),
    ...(written.username !== undefined && { username: written.username }),
  };
}

const docker = z
  .object({
    socketPath: z.string().optional(),
    host: z.string().optional(),
    port: z.number().int().positive().optional(),
    protocol: z.enum(["http", "https", "ssh"]).optional(),
    /** TLS client files for `https` (Docker's --tlsverify). */
    caFile: z.string().optional(),
    certFile: z.string().optional(),
    keyFile: secretFile().optional(),
    /** User for `ssh` (keys from the SSH agent, SSH_AUTH_SOCK). */
    username: z.string().optional(),
    /**
     * OpenSSH known_hosts file that must hold the `ssh` engine's host key, as for the docker CLI
     * (unset: ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts). An unknown or changed key is refused.
     */
    knownHostsFile: z.string().optional(),
    /** Time limit on list, inspect, remove and ping calls (not on waits for a container to stop). */
    callTimeoutSeconds: z.number().min(1).max(MAX_WAIT_SECONDS, TOO_LONG).default(DEFAULT_CALL_TIMEOUT_SECONDS),
    /** Time limit on creating and on starting a runner container. */
    launchCallTimeoutSeconds: z.number().min(1).max(MAX_WAIT_SECONDS, TOO_LONG).default(DEFAULT_LAUNCH_CALL_TIMEOUT_SECONDS),
  })
  .strict()
  .transform(readDockerHost)
  .prefault({});

export const configSchema = z
  .object({
    github: z
      .object({
        appId: z.number().int().positive(),
        apiUrl: z
          .url()
          // It is named in errors and logs ("cannot reach GitHub at ..."); the App authenticates by its key.
          .refine((url) => !URL.canParse(url) || (new URL(url).username === "" && new URL(url).password === ""), "must not hold a user name or password")
          .default("https://api.github.com"),
        privateKeyFile: secretFile("JITRUNNER_GITHUB_PRIVATE_KEY").optional(),
        webhookSecretFile: secretFile("JITRUNNER_GITHUB_WEBHOOK_SECRET").optional(),
        previousWebhookSecretFile: secretFile("JITRUNNER_GITHUB_PREVIOUS_WEBHOOK_SECRET").optional(),
        checkStillQueued: z.boolean().default(true),
        overlapStillQueuedCheckSeconds: z.number().min(0).max(3600).default(10),
        writesPerMinute: z.number().int().min(1).max(10_000).default(DEFAULT_WRITES_PER_MINUTE),
        concurrentCalls: z.number().int().min(1).max(100).default(DEFAULT_CONCURRENT_CALLS),
      })
      .strict(),
    redis: z
      .object({
        url: z
          .string()
          .regex(/^rediss?:\/\//, "must be a redis:// or rediss:// URL")
          // Unparsable (a password with '/', '#' or '?' in it): the value is not echoed, it may hold the password.
          .refine((url) => URL.canParse(url), "must be a valid URL: percent-encode a password's '/', '#', '?' and '@' (e.g. '/' as %2F)")
          // Parsed, but not as meant: ioredis would connect to the wrong host without the password.
          .refine(
            (url) => !URL.canParse(url) || !atOutsideUserInfo(url),
            "has an '@' that does not end a user name and password (a '/', '#' or '?' in the password ended the host early): percent-encode a password's '/', '#', '?' and '@' (e.g. '/' as %2F)",
          )
          .default("redis://127.0.0.1:6379"),
        prefix: z.string().regex(/^[A-Za-z0-9_-]+$/).default("jitrunner"),
        /**
         * Redis Sentinel: the sentinels asked for the master's address, each `host:port` (with
         * sentinelName). The URL then gives the password, user name, database and TLS, not the address.
         */
        sentinels: z.array(sentinelAddress).min(1, "name at least one sentinel, or leave redis.sentinels out").optional(),
        /** The master's name, as the sentinels monitor it (`sentinel monitor NAME ...`). */
        sentinelName: z.string().regex(/^[^\s"']{1,256}$/, "must be the master's name as the sentinels monitor it (sentinel monitor NAME ...): no spaces or quotes").optional(),
        /** ACL user the sentinels are asked as (with a sentinel password). */
        sentinelUsername: z.string().min(1).max(256).optional(),
        /** File with the sentinels' password (or env JITRUNNER_REDIS_SENTINEL_PASSWORD); unset: none. */
        sentinelPasswordFile: secretFile("JITRUNNER_REDIS_SENTINEL_PASSWORD").optional(),
      })
      .strict()
      .superRefine((redis, ctx) => {
        // Half a Sentinel setup is refused, not taken for none (which would connect to redis.url's address).
        const sentinel = redis.sentinels !== undefined || redis.sentinelName !== undefined;
        if (redis.sentinels && redis.sentinelName === undefined) {
          ctx.addIssue({ code: "custom", path: ["sentinelName"], message: "redis.sentinels needs the name of the master they monitor (sentinel monitor NAME ...)" });
        }
        if (redis.sentinelName !== undefined && !redis.sentinels) {
          ctx.addIssue({ code: "custom", path: ["sentinels"], message: "redis.sentinelName needs the sentinels to ask for that master (host:port each)" });
        }
        for (const key of ["sentinelUsername", "sentinelPasswordFile"] as const) {
          if (redis[key] !== undefined && !sentinel) ctx.addIssue({ code: "custom", path: [key], message: SENTINEL_ONLY });
        }
      })
      .prefault({}),
    server: z
      .object({
        host: z.string().default("0.0.0.0"),
        port: z.number().int().min(0).max(65535).default(8080),
        /**
         * A webhook body is read whole before its signature can be checked: the limit bounds what
         * each unauthenticated connection makes the server hold. The events served are a few KB,
         * more with a long job's `steps` list; GitHub caps any payload at 25 MB.
         */
        bodyLimitBytes: z.number().int().positive().default(1024 * 1024),
        /**
         * How long a webhook delivery waits for a Redis connection that is reconnecting (a Redis
         * restart or failover) before it is answered 503. GitHub waits 10 s for an answer, and the
         * delivery's Redis commands may take up to 3 s each once connected.
         */
        redisWaitSeconds: z.number().min(0).max(5).default(3),
        /** File with the token the status page requires (or env JITRUNNER_ADMIN_TOKEN); unset: open. */
        adminTokenFile: secretFile("JITRUNNER_ADMIN_TOKEN").optional(),
        /** File with the token /metrics requires (or env JITRUNNER_METRICS_TOKEN); unset: open. */
        metricsTokenFile: secretFile("JITRUNNER_METRICS_TOKEN").optional(),
      })
      .strict()
      .prefault({}),
    worker: z
      .object({
        hostId: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/).optional(),
        capacity: z.number().int().positive().default(4),
        pools: z.array(name).default([]),
        docker,
        completedGraceSeconds: z.number().nonnegative().max(MAX_WAIT_SECONDS, TOO_LONG).default(30),
        launchAttempts: z.number().int().positive().default(5),
        /** Container starts in flight on this worker's engine at once; more wait their turn (see Launcher). */
        concurrentStarts: z.number().int().positive().default(DEFAULT_CONCURRENT_STARTS),
        reconcileIntervalSeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(30),
        /** A runner of a gone host recorded busy this long is asked about at GitHub, then once per this long (lost `completed` webhooks). */
        goneHostBusyCheckSeconds: z.number().nonnegative().max(MAX_WAIT_SECONDS, TOO_LONG).default(300),
        heartbeatSeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(5),
        /** How long a stop waits for launches in flight and demand held before it leaves them to lapse (RunnerWorker.stop). */
        stopTimeoutSeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(DEFAULT_STOP_TIMEOUT_SECONDS),
        /** A demand lease's lock, renewed every third of it; a dead worker's demand is back within about twice this. */
        leaseSeconds: z.number().min(5).max(3600).default(30),
      })
      .strict()
      .prefault({}),
    policy: z
      .object({
        allowedOwners: z.array(z.string().min(1)).default([]),
        allowedRepositories: z.array(z.string().regex(/^[^/\s]+\/[^/\s]+$/, "must be owner/repo")).default([]),
      })
      .strict()
      .prefault({}),
    /** Leader-side reconciliation (src/reconcile): one elected worker compares GitHub with Redis. */
    reconcile: z
      .object({
        leaderLockSeconds: z.number().min(1).max(MAX_WAIT_SECONDS, TOO_LONG).default(15),
        runnersIntervalSeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(300),
        queuedIntervalSeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(300),
        queuedMaxRunsPerPass: z.number().int().positive().default(100),
        retryFailedDemandSeconds: z.number().min(0).max(MAX_WAIT_SECONDS, TOO_LONG).default(900),
        deliveriesIntervalSeconds: z.number().min(0).max(MAX_WAIT_SECONDS, TOO_LONG).default(60),
        deliveriesMaxPerPass: z.number().int().positive().default(100),
        deliveriesMaxPagesPerPass: z.number().int().positive().max(1000).default(30),
        deliveriesRetrySeconds: z.number().positive().max(MAX_WAIT_SECONDS, TOO_LONG).default(60),
        activeWindowSeconds: z.number().positive().default(24 * 3600),
        maxRepositories: z.number().int().positive().default(100),
        orphanGraceSeconds: z.number().nonnegative().max(MAX_WAIT_SECONDS, TOO_LONG).default(300),
      })
      .strict()
      .prefault({}),
    runnerNamePrefix: z.string().regex(/^[a-z0-9][a-z0-9-]{0,15}$/).default("jitrunner"),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace"]).default("info"),
    pools: z.array(pool).min(1, "at least one pool is needed"),
  })
  .strict();

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type PoolConfig = ParsedConfig["pools"][number];
