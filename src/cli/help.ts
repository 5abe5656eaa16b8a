/** The `jitrunner` command's help: one overview and one text per command (`jitrunner CMD --help`). */

const CONFIG_OPTION = `  -c, --config FILE   YAML config (default: $JITRUNNER_CONFIG or ./jitrunner.yml)`;

export const USAGE = `Usage: jitrunner <command> [options]

Commands:
  server        webhook ingress, status page, /metrics, /healthz, /readyz
  worker        launch and remove runner containers on this Docker host
  all           server and worker in one process (the single-host default)
  check-config  validate the config and print it resolved, secrets redacted
  status        pools, hosts, runners, queue depth, recent jobs and failures, from Redis
  drain         --host ID [--no-wait | --undo]: stop a host taking demand, wait for its jobs, let it exit
  app-manifest  print the GitHub App manifest (permissions and events jitrunner needs)

Options:
${CONFIG_OPTION}
  -h, --help          show this help, or a command's: jitrunner <command> --help

A command refuses options it does not list in its help (exit 2).

Secrets come from files named in the config (github.privateKeyFile, github.webhookSecretFile)
or from JITRUNNER_GITHUB_PRIVATE_KEY and JITRUNNER_GITHUB_WEBHOOK_SECRET. Each mode reads only
the ones it uses: server the webhook secret, worker the private key, all both; status and drain
neither. Likewise the tokens: server.adminTokenFile server and all, server.metricsTokenFile
server, worker and all; status and drain neither. See README.md for every option.`;

const RUN_NOTE = `SIGTERM stops taking demand, lets launches in flight finish and leaves running runners
running; a restarted worker adopts them.`;

const RUN_FAILED = `1 the config is not valid, the start failed, the stop could not
close everything ("shutdown incomplete" in the log), or a second signal cut the stop short.`;

/** A worker (worker, all) also exits at the end of a drain; a server is never drained. */
const RUN_EXIT = `Exit codes: 0 stopped (SIGTERM, SIGINT, or the end of a drain) with everything closed;
${RUN_FAILED}`;

const SERVER_EXIT = `Exit codes: 0 stopped (SIGTERM, SIGINT) with everything closed; ${RUN_FAILED}`;

export const COMMAND_HELP: Record<string, string> = {
  server: `Usage: jitrunner server --config FILE

Serves, on server.host:server.port: POST /webhooks/github (the App's webhook), GET / (the status
page; needs the admin token when one is set), GET /metrics, GET /healthz and GET /readyz.
Runs no runners: pair it with one or more \`jitrunner worker\`. Needs the webhook secret, not
the App's private key (it never calls GitHub): do not give the server the key.

${SERVER_EXIT}

Options:
${CONFIG_OPTION}
  -h, --help          show this help`,

  worker: `Usage: jitrunner worker --config FILE

Takes demand for its pools while it has free slots (worker.capacity), launches one JIT runner
container per job on this host's Docker engine and removes it when done. Serves /metrics,
/healthz and /readyz on server.port. ${RUN_NOTE}
Needs the App's private key, not the webhook secret (it serves no webhooks).

${RUN_EXIT}

Options:
${CONFIG_OPTION}
  -h, --help          show this help`,

  all: `Usage: jitrunner all --config FILE

\`server\` and \`worker\` in one process: the single-host default. ${RUN_NOTE}
Needs both the App's private key and the webhook secret.

${RUN_EXIT}

Options:
${CONFIG_OPTION}
  -h, --help          show this help`,

  "check-config": `Usage: jitrunner check-config --config FILE [--mode server|worker|all]

Validates the config (every problem at once) and prints it resolved, with defaults filled in and
secrets redacted. The files it reads are those of the mode it is asked about: server the
webhook secret, worker the App's private key, all (the default) both; the admin token file for
server and all, the metrics token file for every mode; worker.docker's caFile, certFile and
keyFile for worker and all. Exits 1 when the config is not valid, 2 for a --mode that is not
one of the three.

Options:
${CONFIG_OPTION}
      --mode MODE     check the config as \`jitrunner MODE\` would load it (default: all)
  -h, --help          show this help`,

  status: `Usage: jitrunner status --config FILE [--json]

Reads Redis (redis.url or redis.sentinels, redis.prefix) and prints what the status page shows:
pools with their queue depth, hosts and runners with state and age, recent jobs and recent launch
failures.
Exits 1 when Redis cannot be reached or a part could not be read (it says which); each step waits
at most 5 s for Redis.

Options:
${CONFIG_OPTION}
      --json          print the facts as JSON instead of tables
  -h, --help          show this help`,

  drain: `Usage: jitrunner drain --config FILE --host ID [--no-wait]
       jitrunner drain --config FILE --host ID --undo

Stops host ID taking new demand; its running jobs finish, then its worker exits. Waits until the
host has left the fleet, with a progress line every 10 s. Each call to Redis waits at most 5 s.
The host stays drained (for 7 days at most): a worker started on it again, by a restart policy
or by hand, takes no demand and stays up idle until --undo removes the drain mark.

Exit codes: 0 the host drained (or, with --no-wait, was told to; with --undo, its mark removed);
1 no live host ID (with --undo: no drain mark on ID), or Redis cannot be reached or stopped
answering (the host, once told, still drains); 3 the host's worker stopped beating (killed,
crashed, stopped) with runners of it still recorded: they may still be running jobs, see
\`jitrunner status\`; 2 --host missing, or an option drain does not take; 130 (SIGINT, Ctrl-C) or
143 (SIGTERM) the wait stopped (the host, once told, still drains).

Options:
${CONFIG_OPTION}
      --host ID       the host to drain (worker.hostId)
      --no-wait       return as soon as the host is told
      --undo          remove the host's drain mark: its worker takes demand again
  -h, --help          show this help`,

  "app-manifest": `Usage: jitrunner app-manifest [--url BASE] [--name NAME] [--redirect-url URL]

Prints the GitHub App manifest for GitHub's manifest flow: webhook BASE/webhooks/github, the
workflow_job and repository events, and exactly the permissions jitrunner needs (Administration:
write, Actions: read, organization Self-hosted runners: write). Needs no config. README.md, "Or
from a manifest" (under "Create the GitHub App"), shows how to use it.

Options:
      --url BASE          where GitHub reaches jitrunner (default: https://YOUR-HOST)
      --name NAME         the App's name (default: jitrunner; GitHub lets you change it)
      --redirect-url URL  where GitHub sends the browser back with the code to exchange
  -h, --help              show this help`,
};
