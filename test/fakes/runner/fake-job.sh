#!/usr/bin/env bash
# The "job" the fake runner runs (test/fakes/PROTOCOL.md): a nested container inside the runner
# container's own Docker engine, with no network. Its exit status is the job's outcome.
set -euo pipefail

image="jitrunner-inner"

if ! docker image inspect "$image" >/dev/null 2>&1; then
  # No registry: the inner image is just a static busybox, imported from a directory.
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' EXIT
  cp /bin/busybox "$dir/busybox"
  tar -C "$dir" -c . | docker import - "$image" >/dev/null
fi

docker run --rm --network none "$image" /busybox echo nested-ok
# A job that leaves a container of its own running when it ends, as `docker run -d` services do:
# FAKE_JOB_LEAVE_RUNNING=1. Its PID 1 (a sleep) ignores SIGTERM, as many such programs do.
if [[ "${FAKE_JOB_LEAVE_RUNNING:-}" == 1 ]]; then
  echo "left running: $(docker run -d --network none "$image" /busybox sleep 1000)"
fi
# Tests that need a job still running (restarts, shutdown) make it last longer: FAKE_JOB_SECONDS,
# or less once the test ends it (FakeGitHub.endJob: a file `end-<job id>` beside the socket).
if [[ "${FAKE_JOB_SECONDS:-0}" != 0 ]]; then
  ends="$(dirname "${FAKE_GITHUB_SOCKET:-/fake-github/github.sock}")/end-${FAKE_JOB_ID:-}"
  sleep "$FAKE_JOB_SECONDS" &
  lasting=$!
  while kill -0 "$lasting" 2>/dev/null && [[ ! -e "$ends" ]]; do
    sleep 0.2
  done
  kill "$lasting" 2>/dev/null || true
fi
