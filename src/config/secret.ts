import { inspect } from "node:util";

const REDACTED = "[redacted]";

/**
 * A secret value that cannot leak by accident: printing, logging, JSON-encoding or
 * string-interpolating it yields "[redacted]". Only `reveal()` gives the value.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return REDACTED;
  }
  toJSON(): string {
    return REDACTED;
  }
  [inspect.custom](): string {
    return REDACTED;
  }
}
