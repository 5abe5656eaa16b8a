import type { Isolation } from "../config/schema.ts";
import type { Secret } from "../config/secret.ts";

/** Everything needed to create one runner container. */
export interface RunnerSpec {
  name: string;
  image: string;
  /** The JIT config; becomes ACTIONS_RUNNER_INPUT_JITCONFIG in the container. */
  jitConfig: Secret;
  env: Record<string, string>;
  labels: Record<string, string>;
  isolation: Isolation;
  capDrop: string[];
  resources: { cpus?: number; memoryMb?: number; pidsLimit?: number };
  networkMode: string;
  mounts: Array<{ source: string; target: string; readOnly: boolean }>;
}

export interface RunnerContainer {
  id: string;
  name: string;
  labels: Record<string, string>;
  running: boolean;
  createdAt: number;
}

/** The Docker engine as the worker needs it. One real implementation: DockerodeDriver. */
export interface RunnerDriver {
  ping(): Promise<void>;
  /**
   * Makes RUNNER_NETWORK on the engine if it is missing. Rejects, saying what to do, when a network
   * of that name exists that lets its containers reach each other (not one jitrunner made).
   */
  ensureRunnerNetwork(): Promise<void>;
  /**
   * Whether the engine has `image` (an image inspect: 404 is false). Rejects (DockerError) when
   * the engine fails to say. Never pulls.
   */
  hasImage(image: string): Promise<boolean>;
  create(spec: RunnerSpec): Promise<string>;
  start(id: string): Promise<void>;
  /** Resolves when the container stops (or is gone), or when `signal` aborts. */
  wait(id: string, signal: AbortSignal): Promise<{ exitCode: number | null }>;
  /**
   * Removes the container and its volumes; a missing container is not an error. Once the
   * container is gone, a volume the engine did not remove (slow to delete a job's gigabytes of
   * layers, an engine error) fails nothing: it is named in `volumesLeft`, for removeUnusedVolumes.
   */
  remove(id: string): Promise<{ volumesLeft: Array<{ volume: string; error: Error }> }>;
  /** Containers carrying all of these labels, running or not. */
  list(labels: Record<string, string>): Promise<RunnerContainer[]>;
  /**
   * Removes runner volumes that no container uses: those carrying all of these labels, and those
   * named for a runner of `namePrefix` that lost their labels (a create the engine failed half-way
   * while shutting down leaves such a volume). Each volume on its own: one the engine refuses to
   * remove stops none of the others. Resolves how many it removed and which it could not (with
   * the engine's word); rejects only when the volumes cannot be listed.
   */
  removeUnusedVolumes(labels: Record<string, string>, namePrefix: string): Promise<{ removed: number; failed: Array<{ volume: string; error: Error }> }>;
}
