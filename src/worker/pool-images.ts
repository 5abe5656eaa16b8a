import type { PoolConfig } from "../config/load.ts";
import type { RunnerDriver } from "../docker/driver.ts";
import { DockerError, IMAGE_MISSING } from "../errors.ts";

/** How long an image found on the engine is taken to be there still: a burst's launches ask once. */
export const IMAGE_PRESENT_TTL_MS = 60_000;

/**
 * Whether pools' images are on this host's engine, asked through the driver (its call limits).
 * Workers never pull: a launch whose image is missing would register at GitHub, fail its create
 * (404, no such image), and delete the registration again, on each of its attempts. A positive
 * answer is kept IMAGE_PRESENT_TTL_MS; a missing image is asked again each time (an operator may
 * build or pull it at any moment). Launches asking at once share one inspect.
 */
export class PoolImages {
  readonly #driver: Pick<RunnerDriver, "hasImage">;
  readonly #now: () => number;
  /** Images found present, until when that answer holds. */
  readonly #present = new Map<string, number>();
  readonly #asking = new Map<string, Promise<boolean>>();

  constructor(driver: Pick<RunnerDriver, "hasImage">, o: { now?: () => number } = {}) {
    this.#driver = driver;
    this.#now = o.now ?? Date.now;
  }

  /** Whether the engine has `image`; rejects (DockerError) when the engine cannot say. */
  has(image: string): Promise<boolean> {
    if ((this.#present.get(image) ?? 0) > this.#now()) return Promise.resolve(true);
    let asking = this.#asking.get(image);
    if (!asking) {
      asking = this.#driver
        .hasImage(image)
        .then((found) => {
          if (found) this.#present.set(image, this.#now() + IMAGE_PRESENT_TTL_MS);
          else this.#present.delete(image);
          return found;
        })
        .finally(() => this.#asking.delete(image));
      this.#asking.set(image, asking);
    }
    return asking;
  }

  /** Rejects with E_IMAGE_MISSING (a DockerError: this host's, tried again) when `pool`'s image is not on the engine. */
  async require(pool: Pick<PoolConfig, "name" | "image">): Promise<void> {
    if (await this.has(pool.image)) return;
    throw new DockerError(missingImage(pool), { code: IMAGE_MISSING });
  }
}

/** What a missing pool image is told as: what it is, and what to do. */
export function missingImage(pool: Pick<PoolConfig, "name" | "image">): string {
  return `image ${pool.image} of pool ${pool.name} is not on this Docker engine: build or pull it on this host (workers never pull)`;
}
