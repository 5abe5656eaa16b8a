import { pino, type Logger } from "pino";

/**
 * JSON logs. Secrets are kept out by construction (Secret values print as "[redacted]", errors
 * carry GitHub's or Docker's message, never the request); these paths are a second guard.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "jitrunner" },
      redact: {
        paths: [
          "privateKey",
          "*.privateKey",
          "webhookSecret",
          "*.webhookSecret",
          "token",
          "*.token",
          "encoded_jit_config",
          "*.encoded_jit_config",
          "jitConfig",
          "*.jitConfig",
          "req.headers.authorization",
          "req.headers['x-hub-signature-256']",
        ],
        censor: "[redacted]",
      },
    },
    destination as pino.DestinationStream | undefined,
  );
}
