#!/usr/bin/env bash
# jitrunner runner entrypoint: one job, its own Docker engine.
#
# As root: prepares cgroups for nesting, makes sure /var/lib/docker can hold an engine, starts
# dockerd in the background and waits for it, then runs the runner (as user `runner` when the image
# has one, else as root) with the container's environment, forwards SIGTERM/SIGINT to it, and when
# it exits kills the containers left running in its engine, stops dockerd and exits with the
# runner's exit code.
#
# Environment (all optional):
#   RUNNER_CMD              runner command, split on whitespace (default /home/runner/run.sh);
#                           arguments given to this entrypoint are appended to it
#   DOCKERD_ARGS            extra dockerd arguments, split on whitespace
#   DOCKERD_WAIT_SECONDS    how long to wait for dockerd to answer (default 60)
#   DOCKERD_STOP_SECONDS    how long dockerd gets to stop after SIGTERM (default 10)
#   DOCKER_IPTABLES_LEGACY  non-empty: make dockerd use iptables-legacy
#   ACTIONS_RUNNER_INPUT_JITCONFIG  read by the runner; passed through, never printed, and kept
#                           out of dockerd's environment
#
# Never print environment values here, and never enable xtrace: the JIT config is a credential.
set -euo pipefail

readonly DOCKERD_LOG=/var/log/dockerd.log
readonly DOCKER_ROOT=/var/lib/docker
readonly DOCKER_SOCK=/var/run/docker.sock

log() { printf '[entrypoint] %s\n' "$*" >&2; }

# A non-negative integer from the environment, or the default (with a note, but not the value).
int_env() {
  local name="$1" default="$2" value="${!1:-}"
  if [[ -z "$value" ]]; then
    echo "$default"
  elif [[ "$value" =~ ^[0-9]+$ ]]; then
    echo "$value"
  else
    log "$name is not a whole number of seconds; using $default"
    echo "$default"
  fi
}

now_ms() {
  local t="${EPOCHREALTIME/./}"
  echo $((t / 1000))
}

# --- root ---------------------------------------------------------------------------------------
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    exec sudo -n -E -- "$0" "$@"
  fi
  log "must run as root (the image sets USER root); cannot start dockerd"
  exit 1
fi

wait_seconds="$(int_env DOCKERD_WAIT_SECONDS 60)"
stop_seconds="$(int_env DOCKERD_STOP_SECONDS 10)"

dockerd_pid=""
dockerd_up=0 # 1 once it answered: before that, asking it for its containers could only hang
runner_pid=""
stop_signal="" # TERM or INT, once one has arrived
got_signal=0

# shellcheck disable=SC2317  # trap handlers
on_signal() {
  got_signal=1
  stop_signal="$1"
  if [[ -n "$runner_pid" ]]; then
    kill -s "$1" "$runner_pid" 2>/dev/null || true
  fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# The inner engine's state goes with this container, so its containers get no grace: one a job left
# running whose PID 1 ignores SIGTERM (`docker run -d busybox sleep 1000`) would hold dockerd's stop
# for its whole shutdown timeout (10 s), and the runner's slot with it. Bounded in time, as an engine
# that no longer answers must not hold the end either.
kill_inner_containers() {
  local killed
  killed="$(timeout -k 1 5 sh -c 'docker ps -q | xargs -r docker kill' 2>/dev/null)" || true
  if [[ -n "$killed" ]]; then
    log "killed $(wc -l <<<"$killed") container(s) left running in the runner's engine"
  fi
}

stop_dockerd() {
  local pid="$dockerd_pid"
  [[ -n "$pid" ]] || return 0
  dockerd_pid=""
  if kill -0 "$pid" 2>/dev/null; then
    ((dockerd_up)) && kill_inner_containers
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + stop_seconds))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "dockerd did not stop within ${stop_seconds}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317
on_exit() {
  local rc=$?
  trap - TERM INT
  stop_dockerd
  exit "$rc"
}
trap on_exit EXIT

# Mount options of the last mount on exactly this path, or nothing if it is not a mount point.
mount_opts() {
  awk -v p="$1" '$2 == p { o = $4 } END { if (o != "") print o }' /proc/self/mounts
}

is_read_only() {
  local opts
  opts="$(mount_opts "$1")"
  [[ ",$opts," == *,ro,* ]]
}

# --- cgroups ------------------------------------------------------------------------------------
prepare_cgroups() {
  local cg=/sys/fs/cgroup
  if [[ ! -d "$cg" ]]; then
    log "no $cg; dockerd will likely fail"
    return 0
  fi
  if is_read_only "$cg"; then
    mount -o remount,rw "$cg" 2>/dev/null || log "could not remount $cg read-write"
  fi

  if [[ -f "$cg/cgroup.controllers" ]]; then
    # cgroup v2 (as moby's hack/dind): a group with processes cannot hand controllers down, so move
    # every process here into a child group, then enable all controllers for the subtree.
    # Only in a cgroup namespace of our own (we see ourselves at its root): with the host's
    # namespace, this directory would be the host's root group.
    if [[ "$(cat /proc/self/cgroup)" != "0::/" ]]; then
      log "not in a private cgroup namespace; leaving cgroups as they are"
      return 0
    fi
    mkdir -p "$cg/init" 2>/dev/null || {
      log "cannot create $cg/init; nested containers may lack cgroup controllers"
      return 0
    }
    local pid controller controllers=()
    while read -r pid; do
      echo "$pid" >"$cg/init/cgroup.procs" 2>/dev/null || true # it may be gone already
    done <"$cg/cgroup.procs"
    read -r -a controllers <"$cg/cgroup.controllers" || true
    for controller in "${controllers[@]}"; do
      echo "+$controller" >"$cg/cgroup.subtree_control" 2>/dev/null ||
        log "could not enable cgroup controller $controller for nesting"
    done
  else
    # cgroup v1: each controller hierarchy is its own mount, read-only unless privileged.
    local dir
    for dir in "$cg"/*/; do
      dir="${dir%/}"
      [[ -L "$dir" ]] && continue # e.g. cpu -> cpu,cpuacct: its target is in the list too
      if is_read_only "$dir"; then
        mount -o remount,bind,rw "$dir" 2>/dev/null || log "could not remount $dir read-write"
      fi
    done
  fi
}

# --- /var/lib/docker ----------------------------------------------------------------------------
dockerd_extra=()

prepare_docker_root() {
  # Left over if this container was started before: no engine runs here yet, so they are stale.
  rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  if [[ " ${DOCKERD_ARGS:-} " == *" --data-root"* ]]; then
    return 0 # the engine's state lives elsewhere
  fi
  mkdir -p "$DOCKER_ROOT"
  if [[ -z "$(mount_opts "$DOCKER_ROOT")" ]]; then
    local fstype
    fstype="$(stat -f -c %T "$DOCKER_ROOT" 2>/dev/null || echo unknown)"
    if [[ "$fstype" == overlay* ]]; then
      log "$DOCKER_ROOT is not a volume but part of the container's overlay file system"
      if [[ " ${DOCKERD_ARGS:-} " != *" --storage-driver"* && " ${DOCKERD_ARGS:-} " != *" -s "* ]]; then
        log "overlay2 cannot run there; using the slow vfs storage driver (mount a volume on $DOCKER_ROOT)"
        dockerd_extra+=(--storage-driver=vfs)
      fi
    fi
  fi
  if ! touch "$DOCKER_ROOT/.jitrunner-write-test" 2>/dev/null; then
    log "$DOCKER_ROOT is not writable"
    return 1
  fi
  rm -f "$DOCKER_ROOT/.jitrunner-write-test"
}

# --- iptables -----------------------------------------------------------------------------------
dockerd_path="$PATH"

# dockerd calls `iptables`; where the nf_tables backend does not work (old kernels, missing
# modules) but the legacy one does, put legacy first on dockerd's PATH.
choose_iptables() {
  if ! command -v iptables >/dev/null 2>&1; then
    log "iptables not found; dockerd cannot set up its bridge network"
    return 0
  fi
  if [[ -z "${DOCKER_IPTABLES_LEGACY:-}" ]] && iptables -t nat -n -L >/dev/null 2>&1; then
    return 0
  fi
  command -v iptables-legacy >/dev/null 2>&1 || return 0
  if [[ -z "${DOCKER_IPTABLES_LEGACY:-}" ]] && ! iptables-legacy -t nat -n -L >/dev/null 2>&1; then
    log "neither iptables backend works here; dockerd will likely fail"
    return 0
  fi
  local dir=/run/jitrunner/iptables-legacy tool target
  mkdir -p "$dir"
  for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    if target="$(command -v "$tool-legacy" 2>/dev/null)"; then
      ln -sf "$target" "$dir/$tool"
    fi
  done
  dockerd_path="$dir:$PATH"
  log "dockerd uses iptables-legacy"
}

# --- dockerd ------------------------------------------------------------------------------------
start_dockerd() {
  local args=()
  if [[ -n "${DOCKERD_ARGS:-}" ]]; then
    read -r -a args <<<"$DOCKERD_ARGS"
    log "starting dockerd with extra DOCKERD_ARGS (log: $DOCKERD_LOG)"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
  fi
  # The JIT config is the runner's alone.
  env -u ACTIONS_RUNNER_INPUT_JITCONFIG PATH="$dockerd_path" \
    dockerd "${dockerd_extra[@]}" "${args[@]}" >>"$DOCKERD_LOG" 2>&1 &
  dockerd_pid=$!
}

show_dockerd_log() {
  log "last lines of $DOCKERD_LOG:"
  tail -n 40 "$DOCKERD_LOG" >&2 || true
}

# 0: dockerd answers; 1: it died or did not answer in time; 2: a stop signal arrived meanwhile.
wait_for_dockerd() {
  local started deadline limit probe status
  started="$(now_ms)"
  deadline=$((SECONDS + wait_seconds))
  while :; do
    # dockerd makes its socket before it can answer, and `docker info` waits for an answer with no
    # time limit of its own: a dockerd hung in its initialisation would hold it for ever, past
    # DOCKERD_WAIT_SECONDS. So each probe is bounded (by the time left, at most 5 s), and it runs in
    # the background: bash runs a trap only between commands, but `wait` returns when a trapped
    # signal arrives, so a `docker stop` ends the wait at once, not at the end of its grace period.
    [[ -z "$stop_signal" ]] || return 2
    limit=$((deadline - SECONDS))
    ((limit <= 5)) || limit=5
    ((limit >= 1)) || limit=1
    timeout -k 1 "$limit" docker info >/dev/null 2>&1 &
    probe=$!
    status=0
    wait "$probe" || status=$?
    if [[ -n "$stop_signal" ]]; then
      kill "$probe" 2>/dev/null || true
      wait "$probe" 2>/dev/null || true
      return 2
    fi
    if ((status == 0)); then
      dockerd_up=1
      local ms=$(($(now_ms) - started))
      log "dockerd is up after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
      return 0
    fi
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
      log "dockerd exited during start-up"
      show_dockerd_log
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "dockerd did not answer within ${wait_seconds}s"
      show_dockerd_log
      return 1
    fi
    sleep 0.2
  done
}

# --- runner -------------------------------------------------------------------------------------
run_as=()

choose_user() {
  if ! id runner >/dev/null 2>&1; then
    export RUNNER_ALLOW_RUNASROOT=1
    log "no user 'runner' in this image; the runner runs as root"
    return 0
  fi
  local uid gid home
  uid="$(id -u runner)"
  gid="$(id -g runner)"
  home="$(getent passwd runner | cut -d: -f6)"
  # The runner must be able to use the inner engine: the socket's group is normally `docker`,
  # which the official image's runner user belongs to.
  if [[ -S "$DOCKER_SOCK" ]]; then
    local sock_gid g member=0
    sock_gid="$(stat -c %g "$DOCKER_SOCK")"
    for g in $(id -G runner); do
      [[ "$g" == "$sock_gid" ]] && member=1
    done
    if ((member == 0)); then
      chgrp "$gid" "$DOCKER_SOCK"
      chmod 0660 "$DOCKER_SOCK"
      log "gave user runner's group access to $DOCKER_SOCK"
    fi
  fi
  export HOME="${home:-/home/runner}" USER=runner LOGNAME=runner
  if command -v setpriv >/dev/null 2>&1; then
    run_as=(setpriv "--reuid=$uid" "--regid=$gid" --init-groups --)
  else
    run_as=(runuser -u runner -m --)
  fi
  log "the runner runs as user runner (uid $uid)"
}

main() {
  local runner_cmd=() rc status
  read -r -a runner_cmd <<<"${RUNNER_CMD:-/home/runner/run.sh}"
  runner_cmd+=("$@")
  if ((${#runner_cmd[@]} == 0)); then
    log "RUNNER_CMD is empty"
    exit 2
  fi

  prepare_cgroups
  prepare_docker_root
  choose_iptables
  start_dockerd
  status=0
  wait_for_dockerd || status=$?
  case "$status" in
    0) ;;
    2)
      log "got SIG$stop_signal before the runner started; stopping"
      [[ "$stop_signal" == INT ]] && exit 130
      exit 143
      ;;
    *) exit 1 ;;
  esac

  choose_user
  if ! command -v "${runner_cmd[0]}" >/dev/null 2>&1; then
    log "the runner command (RUNNER_CMD) is not found or not executable"
    exit 127
  fi
  if [[ -n "$stop_signal" ]]; then
    log "got SIG$stop_signal before the runner started; stopping"
    [[ "$stop_signal" == INT ]] && exit 130
    exit 143
  fi

  # Job control only for this spawn: the runner gets its own process group and, unlike a plain
  # background job, does not start with SIGINT ignored, so a forwarded SIGINT reaches it.
  set -m
  "${run_as[@]}" "${runner_cmd[@]}" &
  runner_pid=$!
  set +m
  log "runner started"
  if [[ -n "$stop_signal" ]]; then
    kill -s "$stop_signal" "$runner_pid" 2>/dev/null || true # arrived while it was being spawned
  fi

  # `wait` returns early (status > 128) when a trapped signal arrives; the trap has forwarded it,
  # so wait again for the runner's own exit status.
  rc=""
  while :; do
    got_signal=0
    status=0
    wait "$runner_pid" || status=$?
    if ((status == 127)) && [[ -n "$rc" ]]; then
      break # already collected: rc holds its status
    fi
    rc="$status"
    ((got_signal && status > 128)) || break
  done
  runner_pid=""
  log "runner exited with status $rc; stopping dockerd"
  stop_dockerd
  exit "$rc"
}

main "$@"
