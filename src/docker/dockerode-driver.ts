import { readFileSync, statSync } from "node:fs";
import { join, posix } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import Docker from "dockerode";
import { DEFAULT_CALL_TIMEOUT_SECONDS, DEFAULT_LAUNCH_CALL_TIMEOUT_SECONDS } from "../config/schema.ts";
import { DockerError, errorMessage } from "../errors.ts";
import { linkedSignal } from "../timers.ts";
import type { RunnerContainer, RunnerDriver, RunnerSpec } from "./driver.ts";
import { hostKeyVerifier, type HostKeyVerifier } from "./known-hosts.ts";
import { LABEL, MANAGED_BY, RUNNER_NETWORK } from "./labels.ts";

export interface DockerConnection {
  socketPath?: string;
  host?: string;
  port?: number;
  protocol?: "http" | "https" | "ssh";
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  /** OpenSSH known_hosts file the `ssh` engine's host key must be in (default: ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts). */
  knownHostsFile?: string;
  /** Time limit on calls that should answer promptly: list, inspect, remove, ping. */
  callTimeoutSeconds?: number;
  /** Time limit on creating and on starting a container. */
  launchCallTimeoutSeconds?: number;
}

type SshOptions = NonNullable<Docker.DockerOptions["sshOptions"]>;

/** The contents of TLS files: a CA (bundle), a client certificate and its key. */
export interface TlsFiles {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/**
 * What a worker reads of its engine's files at start (see `readDockerFiles`): the connection's TLS
 * files (caFile, certFile, keyFile), DOCKER_CERT_PATH's, and the configured known_hosts file.
 */
export interface DockerFiles extends TlsFiles {
  /**
   * DOCKER_CERT_PATH's three files, read when they serve the engine (readDockerFiles). docker-modem
   * reads them again for any DOCKER_HOST over TCP unless the variable is unset, as the CLI unsets
   * it for a configured engine too.
   */
  certPath?: Required<TlsFiles>;
  /** `knownHostsFile`'s text at start, if it could be read then: kept for a process that can no longer read it. */
  knownHosts?: string;
}

/**
 * Reads the connection's TLS files now: a process that runs on as another user (JITRUNNER_USER)
 * reads them before, as root, as it reads its other secrets. So are DOCKER_CERT_PATH's `ca.pem`,
 * `cert.pem` and `key.pem` when they serve the engine: DOCKER_HOST names it, over TCP or SSH, and
 * no engine is configured (lib/modem.js, defaultOpts); or a configured `https` engine names no
 * files of its own, which docker-modem leaves without them. The configured known_hosts file is read too,
 * if it can be, since it is read again on each SSH connection.
 */
export function readDockerFiles(
  connection: Pick<DockerConnection, "caFile" | "certFile" | "keyFile" | "knownHostsFile" | "host" | "socketPath" | "protocol">,
  env: NodeJS.ProcessEnv = process.env,
): DockerFiles {
  const { caFile, certFile, keyFile, knownHostsFile } = connection;
  const files: DockerFiles = {
    ...(caFile ? { ca: readFileSync(caFile) } : {}),
    ...(certFile ? { cert: readFileSync(certFile) } : {}),
    ...(keyFile ? { key: readFileSync(keyFile) } : {}),
  };
  const certPath = env.DOCKER_CERT_PATH;
  const dockerHost = env.DOCKER_HOST;
  // DOCKER_HOST's engine only: a configured one (socketPath, host) ignores DOCKER_HOST.
  const configured = !!(connection.host || connection.socketPath);
  const overTcp = !configured && !!dockerHost && !dockerHost.startsWith("unix://") && !dockerHost.startsWith("npipe://");
  // A configured `https` engine with no files of its own takes them too (README, worker.docker).
  const httpsWithout = !!connection.host && connection.protocol === "https" && !(caFile || certFile || keyFile);
  if (certPath && (overTcp || httpsWithout)) {
    const read = (name: string): Buffer => {
      try {
        return readFileSync(join(certPath, name));
      } catch (err) {
        throw new Error(`cannot read ${name} in DOCKER_CERT_PATH (${certPath}): ${errorMessage(err)}`);
      }
    };
    files.certPath = { ca: read("ca.pem"), cert: read("cert.pem"), key: read("key.pem") };
  }
  if (knownHostsFile) {
    try {
      files.knownHosts = readFileSync(knownHostsFile, "utf8");
    } catch {
      // Missing, or unreadable even now: the SSH connection's check says so (known-hosts.ts).
    }
  }
  return files;
}

const DOCKER_DATA = "/var/lib/docker";
/** Ends the name of each runner's own volume for DinD's storage (see `dataVolumeName`). */
const DATA_VOLUME_SUFFIX = "-var-lib-docker";
/** The bridge driver's option that lets (or, "false", keeps) a network's containers reach each other. */
const ICC = "com.docker.network.bridge.enable_icc";
/** The bridge driver's option for its interfaces' MTU. */
const MTU = "com.docker.network.driver.mtu";
/** How often a waited-for container's state is also looked at (see `wait`). */
const WAIT_POLL_MS = 10_000;

/**
 * RunnerDriver on a real Docker engine, through dockerode (unix socket, TCP+TLS or SSH).
 *
 * An engine can leave a call unanswered for good (a TCP or SSH connection that silently dropped, a
 * hung engine), and a caller awaiting it, such as a pass of the host loop, would never go on. So
 * every call that should answer promptly has a time limit (dockerode's `abortSignal`), after which
 * it fails with a DockerError naming the call and the limit. Calls that last as long as something
 * else does have none: the wait for a container to stop lasts as long as the runner runs.
 */
export class DockerodeDriver implements RunnerDriver {
  readonly #docker: Docker;
  readonly #callMs: number;
  readonly #launchCallMs: number;
  /** The engine's cgroup version, once asked (#cgroupV2). */
  #cgroupV2Asked: Promise<boolean> | undefined;
  /** For an engine over SSH: its host key's check (see known-hosts.ts). */
  readonly #hostKeys: HostKeyVerifier | undefined;
  /** What set the engine's address, for an error saying it cannot be reached (engineUnreachable). */
  readonly #where: string;

  /**
   * `warn` hears of a connection that exposes what it carries (see `connectionWarnings`); by
   * default, a process warning on stderr.
   */
  constructor(connection: DockerConnection = {}, o: { warn?: (message: string) => void; files?: DockerFiles } = {}) {
    const { caFile, certFile, keyFile, username, knownHostsFile, callTimeoutSeconds, launchCallTimeoutSeconds, ...rest } = connection;
    const warn = o.warn ?? ((message: string) => process.emitWarning(message, { code: "JITRUNNER_DOCKER_CLEARTEXT" }));
    for (const w of connectionWarnings(connection)) warn(w);
    this.#callMs = (callTimeoutSeconds ?? DEFAULT_CALL_TIMEOUT_SECONDS) * 1000;
    // Create and start under a burst are slow on a busy engine (10-20 s seen): a limit of their own,
    // longer, so that a slow engine is not taken for a hung one. One that gives up on a create or
    // start the engine then finishes leaves a labelled container: the host loop removes it.
    this.#launchCallMs = (launchCallTimeoutSeconds ?? DEFAULT_LAUNCH_CALL_TIMEOUT_SECONDS) * 1000;
    const options: Docker.DockerOptions = { ...rest };
    const files = o.files ?? readDockerFiles(connection);
    // The connection's own files, else DOCKER_CERT_PATH's (as docker-modem's defaults fill in the
    // options a connection lacks).
    const ca = files.ca ?? files.certPath?.ca;
    const cert = files.cert ?? files.certPath?.cert;
    const key = files.key ?? files.certPath?.key;
    if (ca) options.ca = ca;
    if (cert) options.cert = cert;
    if (key) options.key = key;
    if (username) options.username = username;
    const configured = !!(rest.host || rest.socketPath);
    this.#where = rest.socketPath
      ? "worker.docker.socketPath"
      : rest.host
        ? "worker.docker.host and port"
        : process.env.DOCKER_HOST
          ? "from DOCKER_HOST"
          : "worker.docker.socketPath or DOCKER_HOST";
    // With neither, docker-modem takes DOCKER_HOST (from process.env), which may be an ssh:// URL.
    // ssh2 connects to localhost when given no host.
    const ssh = configured ? (connection.protocol === "ssh" ? { host: rest.host ?? "localhost", port: rest.port } : undefined) : sshDockerHost(process.env);
    if (ssh) {
      // ssh2 accepts any host key unless given a hostVerifier.
      const hostKeys = hostKeyVerifier({
        ...ssh,
        files: knownHostsFile ? [knownHostsFile] : undefined,
        ...(knownHostsFile && files.knownHosts !== undefined ? { readAtStart: new Map([[knownHostsFile, files.knownHosts]]) } : {}),
      });
      this.#hostKeys = hostKeys;
      // Names ssh2 knows (known-hosts.ts takes them from its list).
      const algorithms = hostKeys.algorithms() as SshOptions["algorithms"];
      options.sshOptions = { agent: process.env.SSH_AUTH_SOCK, hostVerifier: (key: Buffer) => hostKeys.verify(key), ...(algorithms ? { algorithms } : {}) };
    }
    // Unconfigured, docker-modem takes the engine from DOCKER_HOST, and DOCKER_CERT_PATH's files as
    // read (the connection's own TLS files apply to a configured engine only, as ever). Configured,
    // DOCKER_HOST must not apply: docker-modem lays the options over what it read from DOCKER_HOST,
    // so an address the connection leaves out (host, port, protocol, user) would be DOCKER_HOST's,
    // and a host from it wins over a configured socketPath (checked by no host key when over SSH).
    this.#docker = configured
      ? new Docker({ ...NOT_FROM_DOCKER_HOST, ...options })
      : ssh
        ? new Docker({ sshOptions: options.sshOptions })
        : new Docker(files.certPath ? { ...files.certPath } : undefined);
  }

  async ping(): Promise<void> {
    // dockerode's ping takes options (abortSignal) as its other calls do; its types say none.
    const ping = this.#docker.ping.bind(this.#docker) as unknown as (opts: { abortSignal: AbortSignal }) => Promise<unknown>;
    await this.#call("ping", this.#callMs, (abortSignal) => ping({ abortSignal }));
  }

  /**
   * Whether the engine runs on cgroup v2, asked once. An ask that fails rejects (a retryable
   * DockerError) and is asked again by the next create: unknown is never taken for v1, which
   * would leave a runner without a cgroup namespace of its own on a v2 engine whose default is
   * the host's (see createOptions). An engine that answers without a CgroupVersion predates
   * Docker 20.10, which has no cgroup v2 support: v1.
   */
  #cgroupV2(): Promise<boolean> {
    // dockerode's info takes options (abortSignal) as its other calls do; its types say none.
    const info = this.#docker.info.bind(this.#docker) as unknown as (opts: { abortSignal: AbortSignal }) => Promise<{ CgroupVersion?: string }>;
    this.#cgroupV2Asked ??= this.#call("engine info", this.#callMs, (abortSignal) => info({ abortSignal })).then(
      (answer) => answer.CgroupVersion === "2",
      (err: unknown) => {
        this.#cgroupV2Asked = undefined;
        throw new DockerError(`could not learn the engine's cgroup version, so no runner is created: ${errorMessage(err)}`, { retryable: true, cause: err });
      },
    );
    return this.#cgroupV2Asked;
  }

  async hasImage(image: string): Promise<boolean> {
    try {
      // dockerode's image inspect takes no abortSignal: past the limit the call fails all the
      // same, its request left to end by itself.
      await this.#limited("inspect image", this.#callMs, () => this.#docker.getImage(image).inspect());
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw this.#failed("inspect image", err);
    }
  }

  async create(spec: RunnerSpec): Promise<string> {
    try {
      // The options go to the engine as the request body: they hold the JIT config, so no error
      // made here repeats it (see #call). Only the name goes in the URL: given the options alone,
      // docker-modem puts all of them in its query string too (a request line an engine's debug
      // log, or a proxy in front of it, would log).
      const { name, ...body } = createOptions(spec, { cgroupV2: await this.#cgroupV2() });
      const container = await this.#call("create container", this.#launchCallMs, (abortSignal) =>
        this.#docker.createContainer({ _query: { name }, _body: body, abortSignal } as Docker.ContainerCreateOptions),
      );
      return container.id;
    } catch (err) {
      // A create the engine fails half-way can leave the volume made (it does while shutting down).
      if (ownsDataVolume(spec)) await this.#removeVolume(dataVolumeName(spec.name)).catch(() => undefined);
      throw err;
    }
  }

  async ensureRunnerNetwork(): Promise<void> {
    let found = await this.#runnerNetworks();
    if (found.length === 0) {
      // The engine's `mtu` setting applies to its default bridge only: a network made without it
      // would get 1500 where the host's path needs less (a cloud's 1460, a VPN), and large
      // transfers would hang.
      const mtu = (await this.#networksNamed("bridge"))[0]?.Options?.[MTU];
      try {
        await this.#limited("create network", this.#callMs, (abortSignal) =>
          this.#docker.createNetwork({
            Name: RUNNER_NETWORK,
            Driver: "bridge",
            Options: { [ICC]: "false", ...(mtu ? { [MTU]: mtu } : {}) },
            Labels: { [LABEL.managedBy]: MANAGED_BY },
            abortSignal,
          } as Docker.NetworkCreateOptions),
        );
      } catch (err) {
        // 409: made since the look, by another worker on this engine.
        if (statusOf(err) !== 409) throw this.#failed("create network", err);
      }
      found = await this.#runnerNetworks();
    }
    // Docker's check that a name is free is not atomic: workers of one engine starting at once can
    // each make one, and a container naming it then fails ("ambiguous"). Every worker keeps the same
    // one, the first made, and removes the others (one in use, or gone already, is left alone).
    const [kept, ...extra] = found.sort((a, b) => createdAt(a.Created).localeCompare(createdAt(b.Created)) || a.Id.localeCompare(b.Id));
    for (const n of extra) {
      await this.#limited("remove network", this.#callMs, (abortSignal) => this.#docker.getNetwork(n.Id).remove({ abortSignal })).catch((err: unknown) => {
        if (statusOf(err) !== 404 && statusOf(err) !== 409) throw this.#failed("remove network", err);
      });
    }
    if (!kept) throw new DockerError(`network ${RUNNER_NETWORK} was made but the engine does not list it`);
    if (kept.Driver === "bridge" && kept.Options?.[ICC] === "false") return;
    throw new DockerError(
      `network ${RUNNER_NETWORK} exists on this engine but lets its containers reach each other (driver ${kept.Driver}, ${ICC}=${kept.Options?.[ICC] ?? "unset"}): ` +
        `remove it (docker network rm ${RUNNER_NETWORK}) for jitrunner to make its own, or set the pools' networkMode to a network of yours`,
      { retryable: false },
    );
  }

  /** The engine's networks named RUNNER_NETWORK. */
  #runnerNetworks(): Promise<Docker.NetworkInspectInfo[]> {
    return this.#networksNamed(RUNNER_NETWORK);
  }

  /** The engine's networks named `name` (its name filter also matches longer names). */
  async #networksNamed(name: string): Promise<Docker.NetworkInspectInfo[]> {
    const filters = { name: [name] };
    const all = await this.#call("list networks", this.#callMs, (abortSignal) => this.#docker.listNetworks({ filters, abortSignal }));
    return all.filter((n) => n.Name === name);
  }

  async start(id: string): Promise<void> {
    const start = () => this.#call("start container", this.#launchCallMs, (abortSignal) => this.#docker.getContainer(id).start({ abortSignal }));
    try {
      await start();
    } catch (err) {
      // The runners' network went after the worker made it: `docker network prune` removes it
      // whenever no runner is running. Or another of that name came since (a worker on this
      // engine that stopped between making one and removing its own: see ensureRunnerNetwork).
      // Made again, or cut to one, and the start tried once more. Docker 28 and later say it as
      // "failed to set up container networking: network ... not found", 20.10 without the prefix.
      const networkGone = err instanceof DockerError && err.message.includes(`(404): `) && err.message.includes(`network ${RUNNER_NETWORK} not found`);
      if (!networkGone && !(err instanceof DockerError && err.message.includes(`network ${RUNNER_NETWORK} is ambiguous`))) throw err;
      await this.ensureRunnerNetwork();
      await start();
    }
  }

  /** No time limit on the wait itself: it lasts as long as the container runs. */
  async wait(id: string, signal: AbortSignal): Promise<{ exitCode: number | null }> {
    const container = this.#docker.getContainer(id);
    // An engine that shuts down while a wait is open may never answer it, nor close it visibly
    // (seen with a container started during the engine's shutdown): a slow look at the
    // container's state ends the wait all the same, once the engine answers again.
    const done = new AbortController();
    const stop = () => done.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      // An abort before the listener was added does not fire it.
      if (signal.aborted) return { exitCode: null };
      return await Promise.race([this.#engineWait(container, done.signal), this.#pollStopped(container, done.signal)]);
    } finally {
      done.abort();
      signal.removeEventListener("abort", stop);
    }
  }

  /**
   * The engine's wait, opened again whenever it fails short of saying the container is gone: a
   * broken wait (an SSH or TCP link that dropped, a proxy's idle timeout, an engine restarted with
   * live-restore) says nothing of the container, which may be running its job still. A container
   * that stopped meanwhile is seen by #pollStopped.
   */
  async #engineWait(container: Docker.Container, signal: AbortSignal): Promise<{ exitCode: number | null }> {
    for (let failures = 0; ; failures++) {
      try {
        const result = await container.wait({ abortSignal: signal });
        return { exitCode: typeof result?.StatusCode === "number" ? result.StatusCode : null };
      } catch (err) {
        if (signal.aborted || statusOf(err) === 404) return { exitCode: null };
      }
      const backoff = Math.min(WAIT_POLL_MS, 500 * 2 ** failures);
      if (!(await sleep(backoff, true, { signal }).catch(() => false))) return { exitCode: null };
    }
  }

  /** Resolves once the container is seen stopped or gone; errors (engine down) are looked past. */
  async #pollStopped(container: Docker.Container, signal: AbortSignal): Promise<{ exitCode: number | null }> {
    while (!signal.aborted) {
      const slept = await sleep(WAIT_POLL_MS, true, { signal }).catch(() => false);
      if (!slept) break;
      try {
        const state = (await this.#limited("inspect container", this.#callMs, (abortSignal) => container.inspect({ abortSignal }), signal)).State;
        if (!state.Running && !state.Restarting) return { exitCode: state.ExitCode };
      } catch (err) {
        if (statusOf(err) === 404) return { exitCode: null };
      }
    }
    return { exitCode: null };
  }

  async remove(id: string): Promise<{ volumesLeft: Array<{ volume: string; error: Error }> }> {
    const container = this.#docker.getContainer(id);
    // Its data volume is named, and remove({ v: true }) deletes only anonymous ones. Only the
    // one named after this container: a pool's own volume mounted there (a cache) is not ours.
    const volumes = await this.#limited("inspect container", this.#callMs, (abortSignal) => container.inspect({ abortSignal })).then(
      (c) => c.Mounts.filter((m) => m.Type === "volume" && m.Name === dataVolumeName(c.Name.replace(/^\//, ""))).map((m) => m.Name!),
      () => [],
    );
    try {
      await this.#limited("remove container", this.#callMs, (abortSignal) => container.remove({ force: true, v: true, abortSignal }));
    } catch (err) {
      const status = statusOf(err);
      // 404: already gone; 409: removal already in progress (a volume left is the host loop's).
      if (status === 404 || status === 409) return { volumesLeft: [] };
      if (err instanceof DockerError) throw err;
      throw new DockerError(`remove container failed: ${this.#reason(err)}`, { cause: err });
    }
    // The container is gone: its removal is done, whatever becomes of the volume (failed here,
    // a teardown would stop short of the registration and the record).
    const volumesLeft: Array<{ volume: string; error: Error }> = [];
    for (const volume of volumes) await this.#removeVolume(volume).catch((error: Error) => volumesLeft.push({ volume, error }));
    return { volumesLeft };
  }

  /** 404 (gone) and 409 (in use) are not errors: what stays is left to `removeUnusedVolumes`. */
  async #removeVolume(name: string): Promise<boolean> {
    try {
      await this.#limited("remove volume", this.#callMs, (abortSignal) => this.#docker.getVolume(name).remove({ abortSignal }));
      return true;
    } catch (err) {
      const status = statusOf(err);
      if (status === 404 || status === 409) return false;
      if (err instanceof DockerError) throw err;
      throw new DockerError(`remove volume failed: ${this.#reason(err)}`, { cause: err });
    }
  }

  async list(labels: Record<string, string>): Promise<RunnerContainer[]> {
    const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
    const found = await this.#call("list containers", this.#callMs, (abortSignal) => this.#docker.listContainers({ all: true, filters, abortSignal }));
    return found.map((c) => ({
      id: c.Id,
      name: (c.Names[0] ?? "").replace(/^\//, ""),
      labels: c.Labels,
      // Paused (`docker pause`) counts as running, as wait() counts it (State.Running): its job
      // goes on once unpaused, and the host loop must not take it for stopped and remove it.
      running: c.State === "running" || c.State === "restarting" || c.State === "paused",
      createdAt: c.Created * 1000,
    }));
  }

  async removeUnusedVolumes(labels: Record<string, string>, namePrefix: string): Promise<{ removed: number; failed: Array<{ volume: string; error: Error }> }> {
    // `dangling`: referenced by no container, not even a stopped or half-created one.
    const filters = { dangling: ["true"] };
    const found = await this.#call("list volumes", this.#callMs, (abortSignal) => this.#docker.listVolumes({ filters, abortSignal } as Docker.VolumeListOptions));
    let removed = 0;
    const failed: Array<{ volume: string; error: Error }> = [];
    for (const v of found.Volumes ?? []) {
      const labelled = Object.entries(labels).every(([k, value]) => v.Labels?.[k] === value);
      // A create the engine failed while shutting down leaves the volume without its labels.
      const unlabelled = Object.keys(v.Labels ?? {}).length === 0 && isDataVolumeOf(namePrefix, v.Name);
      if (!labelled && !unlabelled) continue;
      try {
        if (await this.#removeVolume(v.Name)) removed++;
      } catch (err) {
        failed.push({ volume: v.Name, error: err instanceof Error ? err : new Error(String(err)) });
      }
    }
    return { removed, failed };
  }

  async #call<T>(what: string, ms: number, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    try {
      return await this.#limited(what, ms, fn);
    } catch (err) {
      throw this.#failed(what, err);
    }
  }

  /** `what`'s failure as a DockerError: Docker's message with its status, never the request. */
  #failed(what: string, err: unknown): DockerError {
    if (err instanceof DockerError) return err;
    // The engine was never reached: said as such (for the ping at start, alone), with the fix.
    const unreachable = engineUnreachable(err, this.#where);
    if (unreachable) return new DockerError(what === "ping" ? unreachable : `${what} failed: ${unreachable}`, { retryable: true });
    const status = statusOf(err);
    // Docker's message, never the request: the request carries the JIT config.
    return new DockerError(`${what} failed${status ? ` (${status})` : ""}: ${this.#reason(err)}`, {
      retryable: status === undefined || status >= 500,
    });
  }

  /** Docker's message, or for an SSH host key refused, why (ssh2 says only "Host denied"). */
  #reason(err: unknown): string {
    const message = (err as { json?: { message?: string } }).json?.message ?? errorMessage(err);
    const refusal = this.#hostKeys?.refusal;
    return refusal && /host denied/i.test(message) ? refusal : message;
  }

  /**
   * `fn`'s call to the engine, given a signal that aborts it after `ms` (or when `signal` aborts).
   * Past the limit it rejects with a DockerError naming the call and the limit, even should the
   * aborted request not end; any other failure is `fn`'s own, unchanged.
   */
  async #limited<T>(what: string, ms: number, fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const limit = AbortSignal.timeout(ms);
    // Not AbortSignal.any: a watch's signal lives as long as its runner (see linkedSignal).
    const linked = signal ? linkedSignal([signal, limit]) : undefined;
    const combined = linked?.signal ?? limit;
    // Our words only: never the request, which for a create carries the JIT config.
    const late = () => new DockerError(`Docker engine did not answer '${what}' within ${ms / 1000} s`, { retryable: true });
    let onAbort: (() => void) | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      onAbort = () => reject(late());
      limit.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([fn(combined), timedOut]);
    } catch (err) {
      // The aborted request's own error (an AbortError) says less than ours.
      if (limit.aborted && !signal?.aborted) throw late();
      throw err;
    } finally {
      limit.removeEventListener("abort", onAbort!);
      linked?.dispose();
    }
  }
}

/**
 * Why the engine could not be reached, in an operator's words, or undefined when `err` is not a
 * failed connect: its address, what set it (`where`), and the fix for the usual causes: a socket
 * whose group this process lacks (JITRUNNER_USER adds it when started as root), no socket (no
 * dockerd, a wrong path).
 */
export function engineUnreachable(err: unknown, where: string): string | undefined {
  const e = err as (NodeJS.ErrnoException & { address?: string; port?: number }) | undefined;
  if (e?.syscall !== "connect" || !e.code || !e.address) return undefined;
  const socket = e.port === undefined;
  const head = `cannot reach the Docker engine at ${socket ? e.address : `${e.address}:${e.port}`} (${where})`;
  if (e.code === "EACCES") return `${head}: permission denied; ${socketAccess(e.address)}`;
  if (e.code === "ENOENT") return `${head}: no socket there: is dockerd running, and is the path right?`;
  if (e.code === "ECONNREFUSED") return `${head}: connection refused: ${socket ? "no dockerd listens on the socket (is it running?)" : "nothing listens there"}`;
  return `${head}: ${e.message}`;
}

/** Who this process is, next to the socket's group: the group it needs, and how to give it. */
function socketAccess(path: string): string {
  const who = `this process (uid ${process.getuid?.() ?? "?"}, groups [${(process.getgroups?.() ?? []).join(", ")}])`;
  let gid: number | undefined;
  try {
    gid = statSync(path).gid;
  } catch {
    return `${who} may not use the socket`;
  }
  if (process.getgroups?.().includes(gid)) return `${who} is in the socket's group ${gid}, which may not use it: check its mode (stat -c %a ${path})`;
  return `${who} needs the socket's group ${gid}: add the user to group ${gid} (the jitrunner image adds it itself when started as root, as the Compose files start it; see JITRUNNER_USER)`;
}

/** The host and port of a `DOCKER_HOST=ssh://[user@]host[:port]`, if that is what it is. */
function sshDockerHost(env: NodeJS.ProcessEnv): { host: string; port?: number } | undefined {
  if (!env.DOCKER_HOST?.startsWith("ssh://")) return undefined;
  const url = new URL(env.DOCKER_HOST);
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), ...(url.port ? { port: Number(url.port) } : {}) };
}

/** Whether `host` names this machine: a loopback address or `localhost`. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h.endsWith(".localhost") || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\./.test(h);
}

/**
 * What is wrong, short of an error, with a way to the engine: plain HTTP (`protocol: http`, or a
 * host with neither `https` nor TLS files, or `DOCKER_HOST=tcp://` without DOCKER_TLS_VERIFY) to an
 * engine on another machine sends every container-create body, each runner's JIT config in it,
 * unencrypted, and lets anyone on the way drive the engine.
 */
export function connectionWarnings(connection: DockerConnection, env: NodeJS.ProcessEnv = process.env): string[] {
  let host = connection.host;
  let protocol = connection.protocol ?? (connection.caFile && connection.certFile && connection.keyFile ? "https" : "http");
  if (!connection.host && !connection.socketPath) {
    // docker-modem's reading of DOCKER_HOST (lib/modem.js, defaultOpts).
    const url = env.DOCKER_HOST;
    if (!url || url.startsWith("unix://") || url.startsWith("npipe://")) return [];
    let parsed: URL;
    try {
      parsed = new URL(url.includes("//") ? url : `tcp://${url}`);
    } catch {
      return [];
    }
    host = parsed.hostname;
    protocol = env.DOCKER_TLS_VERIFY === "1" || parsed.port === "2376" ? "https" : parsed.protocol === "ssh:" ? "ssh" : "http";
  }
  if (protocol !== "http" || !host || isLoopback(host)) return [];
  return [
    `worker.docker: the Docker engine at ${host} is reached over plain HTTP: every runner's JIT config goes to it unencrypted and anyone on the way can drive the engine. Use protocol https with TLS client certificates (caFile, certFile, keyFile) or ssh.`,
  ];
}

function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown }).statusCode;
  return typeof s === "number" ? s : undefined;
}

/**
 * An engine's RFC 3339 time, as a string that sorts as the time does: Docker drops trailing zeros
 * from the nanoseconds (".1234Z" would sort after ".12345Z").
 */
function createdAt(rfc3339: string): string {
  return rfc3339.replace(/\.(\d+)/, (_m, fraction: string) => `.${fraction.padEnd(9, "0")}`);
}

/** The name of a runner container's own volume for DinD's storage. */
export function dataVolumeName(containerName: string): string {
  return `${containerName}${DATA_VOLUME_SUFFIX}`;
}

/**
 * Whether `volume` is named as the data volume of a runner whose name starts with `namePrefix`
 * (runnerName: the prefix and '-', the pool, '-', 10 hex digits), not merely alike.
 */
function isDataVolumeOf(namePrefix: string, volume: string): boolean {
  if (!volume.startsWith(namePrefix) || !volume.endsWith(DATA_VOLUME_SUFFIX)) return false;
  return /^[a-z0-9][a-z0-9-]*-[0-9a-f]{10}$/.test(volume.slice(namePrefix.length, -DATA_VOLUME_SUFFIX.length));
}

/**
 * Unless the pool mounts something of its own there: compared as Docker cleans a target
 * (`/var/lib/docker/` is the same place), else the engine refuses two mounts at one point.
 */
function ownsDataVolume(spec: RunnerSpec): boolean {
  return !spec.mounts.some((m) => posix.normalize(m.target).replace(/(.)\/+$/, "$1") === DOCKER_DATA);
}

/**
 * docker-modem's options that DOCKER_HOST fills in (and, with it, DOCKER_CERT_PATH's files and
 * DOCKER_CLIENT_TIMEOUT), left out: what a configured connection does not name. docker-modem
 * speaks TLS whenever it holds a key, certificate and CA: even over a configured unix socket.
 */
const NOT_FROM_DOCKER_HOST: Docker.DockerOptions = {
  host: undefined,
  port: undefined,
  protocol: undefined,
  username: undefined,
  pathPrefix: undefined,
  ca: undefined,
  cert: undefined,
  key: undefined,
  timeout: undefined,
} as Docker.DockerOptions;

/**
 * The Docker API body for a runner container; `cgroupV2`: the engine runs on cgroup v2. Exported
 * for tests.
 */
export function createOptions(spec: RunnerSpec, engine: { cgroupV2?: boolean } = {}): Docker.ContainerCreateOptions {
  const env = { ...spec.env, ACTIONS_RUNNER_INPUT_JITCONFIG: spec.jitConfig.reveal() };
  const host: Docker.HostConfig = {
    NetworkMode: spec.networkMode,
    Binds: spec.mounts.map((m) => `${m.source}:${m.target}${m.readOnly ? ":ro" : ""}`),
    AutoRemove: false,
    RestartPolicy: { Name: "no" },
    Init: false,
  };
  if (spec.resources.cpus) host.NanoCpus = Math.round(spec.resources.cpus * 1e9);
  if (spec.resources.memoryMb) host.Memory = spec.resources.memoryMb * 1024 * 1024;
  if (spec.resources.pidsLimit) host.PidsLimit = spec.resources.pidsLimit;
  // A fresh volume of its own (DinD's storage cannot sit on the container's overlay root), named
  // after the runner and labelled as ours, so that one left behind (an engine that shuts down
  // fails creates half-way, and removals) is known as ours; `remove` deletes it.
  if (ownsDataVolume(spec)) {
    host.Mounts = [
      { Type: "volume", Source: dataVolumeName(spec.name), Target: DOCKER_DATA, VolumeOptions: { Labels: spec.labels } } as Docker.MountSettings,
    ];
  }
  switch (spec.isolation) {
    case "privileged":
      host.Privileged = true;
      break;
    case "capabilities":
      host.CapAdd = ["ALL"];
      host.CapDrop = spec.capDrop;
      host.SecurityOpt = ["seccomp=unconfined", "apparmor=unconfined"];
      // The CLI's `--security-opt systempaths=unconfined`: nothing masked, nothing read-only.
      (host as Record<string, unknown>).MaskedPaths = [];
      (host as Record<string, unknown>).ReadonlyPaths = [];
      break;
    case "sysbox":
      host.Runtime = "sysbox-runc";
      break;
  }
  // On cgroup v2, a cgroup namespace of its own, whatever the engine's default: with the host's
  // (`default-cgroupns-mode: host` in daemon.json), the inner engine would see the host's whole
  // cgroup tree, writable when privileged, and put the job's containers outside the pool's memory,
  // CPU and pids limits (the entrypoint then leaves cgroups alone, saying so). Docker's own default
  // on v2 is private already; on v1 a namespace is not what confines the inner engine.
  if (engine.cgroupV2 && spec.isolation !== "sysbox") (host as Record<string, unknown>).CgroupnsMode = "private";
  return {
    name: spec.name,
    Image: spec.image,
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: spec.labels,
    HostConfig: host,
    Tty: false,
    AttachStdout: false,
    AttachStderr: false,
  };
}
