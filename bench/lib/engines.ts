/**
 * Extra Docker engines for the multi-engine burst: test/helpers/engines.ts's `startEngine` (own
 * data and exec roots, pidfile and unix socket, no bridge, no iptables), named `bench-*` so they
 * never meet a test's engines. Each holds the same runner image as the default engine: an engine
 * kept from an earlier run whose image is older gets the current one copied in.
 */
import Docker from "dockerode";
import { DockerodeDriver } from "../../src/docker/dockerode-driver.ts";
import { killLeftoverShims, startEngine, type TestEngine } from "../../test/helpers/engines.ts";

/** Engines this process started and has not stopped yet, so a failed run can stop them. */
const open = new Set<TestEngine>();

export async function startBenchEngine(name: string, image: string): Promise<TestEngine> {
  if (!name.startsWith("bench-")) throw new Error(`bench engine names start with "bench-" (got ${name})`);
  const engine = await startEngine(name, image);
  open.add(engine);
  const want = (await new Docker().getImage(image).inspect()).Id;
  const have = await engine.docker.getImage(image).inspect().then((i) => i.Id, () => "");
  if (have !== want) {
    const stream = await engine.docker.loadImage(await new Docker().getImage(image).get());
    await new Promise((resolve, reject) => engine.docker.modem.followProgress(stream, (err) => (err ? reject(err) : resolve(undefined))));
  }
  return engine;
}

/**
 * Force-removes containers with their DinD data volumes, as a worker does (DockerodeDriver.remove):
 * `remove({ v: true })` deletes only anonymous volumes, and each runner's is named after it.
 * `docker` must be on a unix socket (the bench's engines are).
 */
export async function removeContainers(docker: Docker, ids: readonly string[]): Promise<void> {
  const driver = new DockerodeDriver({ socketPath: (docker.modem as { socketPath?: string }).socketPath });
  await Promise.allSettled(ids.map((id) => driver.remove(id)));
}

/** Removes every container left on the engine (it is the bench's alone), then stops it. */
export async function stopBenchEngine(engine: TestEngine): Promise<void> {
  const left = await engine.docker.listContainers({ all: true }).catch(() => []);
  await removeContainers(
    engine.docker,
    left.map((c) => c.Id),
  );
  await engine.stop();
  // Shims of containers the engine left when it was stopped in the middle of a start.
  killLeftoverShims(engine.root);
  open.delete(engine);
}

export async function stopAllBenchEngines(): Promise<void> {
  await Promise.allSettled([...open].map(stopBenchEngine));
}
