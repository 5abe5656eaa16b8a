import { readFileSync } from "node:fs";
import Docker from "dockerode";
import { DockerError, errorMessage } from "../errors.ts";
import type { RunnerContainer, RunnerDriver, RunnerSpec } from "./driver.ts";

export interface DockerConnection {
  socketPath?: string;
  host?: string;
  port?: number;
  protocol?: "http" | "https" | "ssh";
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
}

const DOCKER_DATA = "/var/lib/docker";

/** RunnerDriver on a real Docker engine, through dockerode (unix socket, TCP+TLS or SSH). */
export class DockerodeDriver implements RunnerDriver {
  readonly #docker: Docker;

  constructor(connection: DockerConnection = {}) {
    const { caFile, certFile, keyFile, username, ...rest } = connection;
    const options: Docker.DockerOptions = { ...rest };
    if (caFile) options.ca = readFileSync(caFile);
    if (certFile) options.cert = readFileSync(certFile);
    if (keyFile) options.key = readFileSync(keyFile);
    if (username) options.username = username;
    if (connection.protocol === "ssh") options.sshOptions = { agent: process.env.SSH_AUTH_SOCK };
    this.#docker = rest.host || rest.socketPath ? new Docker(options) : new Docker();
  }

  async ping(): Promise<void> {
    await this.#call("ping", () => this.#docker.ping());
  }

  async create(spec: RunnerSpec): Promise<string> {
    const container = await this.#call("create container", () => this.#docker.createContainer(createOptions(spec)));
    return container.id;
  }

  async start(id: string): Promise<void> {
    await this.#call("start container", () => this.#docker.getContainer(id).start());
  }

  async wait(id: string, signal: AbortSignal): Promise<{ exitCode: number | null }> {
    const container = this.#docker.getContainer(id);
    try {
      const result = await container.wait({ abortSignal: signal });
      return { exitCode: typeof result?.StatusCode === "number" ? result.StatusCode : null };
    } catch (err) {
      if (signal.aborted) return { exitCode: null };
      if (statusOf(err) === 404) return { exitCode: null };
      throw new DockerError(`wait for container failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  async remove(id: string): Promise<void> {
    try {
      await this.#docker.getContainer(id).remove({ force: true, v: true });
    } catch (err) {
      const status = statusOf(err);
      // 404: already gone; 409: removal already in progress.
      if (status === 404 || status === 409) return;
      throw new DockerError(`remove container failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  async list(labels: Record<string, string>): Promise<RunnerContainer[]> {
    const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
    const found = await this.#call("list containers", () => this.#docker.listContainers({ all: true, filters }));
    return found.map((c) => ({
      id: c.Id,
      name: (c.Names[0] ?? "").replace(/^\//, ""),
      labels: c.Labels,
      running: c.State === "running" || c.State === "restarting",
      createdAt: c.Created * 1000,
    }));
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const status = statusOf(err);
      // Docker's message, never the request: the request carries the JIT config.
      const reason = (err as { json?: { message?: string } }).json?.message ?? errorMessage(err);
      throw new DockerError(`${what} failed${status ? ` (${status})` : ""}: ${reason}`, {
        retryable: status === undefined || status >= 500,
      });
    }
  }
}

function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown }).statusCode;
  return typeof s === "number" ? s : undefined;
}

/** The Docker API body for a runner container. Exported for tests. */
export function createOptions(spec: RunnerSpec): Docker.ContainerCreateOptions {
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
  return {
    name: spec.name,
    Image: spec.image,
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: spec.labels,
    // An anonymous volume: DinD's storage cannot sit on the container's overlay root, and
    // remove({ v: true }) deletes it with the container.
    Volumes: { [DOCKER_DATA]: {} },
    HostConfig: host,
    Tty: false,
    AttachStdout: false,
    AttachStderr: false,
  };
}
