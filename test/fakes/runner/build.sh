#!/usr/bin/env bash
# Builds the images the tests run as runner containers (see test/fakes/PROTOCOL.md):
#
#   jitrunner-test-base:bookworm    debootstrap minbase + docker.io, iptables, ca-certificates,
#                                   busybox-static, imported with `docker import` (no registry needed)
#   jitrunner-test-runner:latest    the base + the real images/runner/entrypoint.sh, the host's node,
#                                   the fake runner (run.mjs behind a run.sh) and fake-job
#
# Idempotent: an image whose tag exists is kept, unless --rebuild. The runner image carries a hash
# of its inputs as a label and is rebuilt whenever they change (the base stays cached).
#
# Usage: test/fakes/runner/build.sh [--rebuild]
# Env:   JITRUNNER_TEST_BASE_IMAGE, JITRUNNER_TEST_RUNNER_IMAGE override the image names;
#        DOCKER_HOST is honoured by the docker client as usual.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

base_image="${JITRUNNER_TEST_BASE_IMAGE:-jitrunner-test-base:bookworm}"
runner_image="${JITRUNNER_TEST_RUNNER_IMAGE:-jitrunner-test-runner:latest}"
suite="bookworm"
hash_label="org.jitrunner.test.inputs-sha256"

rebuild=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    -h | --help)
      sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

# The classic builder works with every client/engine pair found on the project's machines
# (no buildx plugin there); keep it explicit.
export DOCKER_BUILDKIT=0

start_s=$SECONDS
step() { printf '[test-images +%ss] %s\n' "$((SECONDS - start_s))" "$*"; }
die() {
  printf '[test-images] ERROR: %s\n' "$*" >&2
  exit 1
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

work=""
rootfs=""
remove_rootfs() {
  if [[ -n "$rootfs" && -d "$rootfs" ]]; then
    # debootstrap mounts proc/sys inside the target; never let rm walk into a mount.
    local m
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$rootfs/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$rootfs"
  fi
  rootfs=""
}
cleanup() {
  remove_rootfs
  if [[ -n "$work" && -d "$work" ]]; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT

command -v docker >/dev/null || die "docker client not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock})"

# One build at a time on this machine: parallel test runs must not race each other's tags.
lockfile="${TMPDIR:-/tmp}/jitrunner-test-images.lock"
exec 9>"$lockfile"
if ! flock -n 9; then
  step "waiting for another build.sh to finish (lock $lockfile)"
  flock 9
fi

# --- the Debian mirror: whatever apt on this machine uses for the suite ---------------------------
# Prints the first enabled `deb` URI that serves "$suite" with component main, from deb822 *.sources
# and one-line *.list files. Prints nothing if none (debootstrap then uses its own default).
apt_mirror() {
  local f m
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    m="$(awk -v suite="$suite" '
      function flush() {
        if (enabled && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main /) {
          split(uris, u, " "); if (u[1] != "" && !found) { print u[1]; found = 1 }
        }
        types = ""; uris = ""; suites = ""; comps = ""; enabled = 1; key = ""
      }
      BEGIN { enabled = 1 }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]/ {
        # continuation line of a multi-line field
        val = $0; sub(/^[[:space:]]+/, "", val)
        if (key == "uris") uris = uris " " val
        else if (key == "suites") suites = suites " " val
        else if (key == "components") comps = comps " " val
        else if (key == "types") types = types " " val
        next
      }
      {
        key = tolower($1); sub(/:$/, "", key); $1 = ""; val = $0; sub(/^[[:space:]]+/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "components") comps = val
        else if (key == "enabled") enabled = (tolower(val) != "no")
      }
      END { flush() }
    ' "$f")"
    if [[ -n "$m" ]]; then
      echo "$m"
      return 0
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    m="$(awk -v suite="$suite" '
      found { next }
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        uri = $i; s = $(i + 1)
        if (s != suite) next
        for (j = i + 2; j <= NF; j++) if ($j == "main") { print uri; found = 1; next }
      }
    ' "$f")"
    if [[ -n "$m" ]]; then
      echo "$m"
      return 0
    fi
  done
  return 0
}

build_base() {
  command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install -y debootstrap)"
  [[ "$(id -u)" == 0 ]] || die "building $base_image needs root (debootstrap)"
  local mirror
  mirror="$(apt_mirror)"
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/jitrunner-rootfs.XXXXXX")"
  step "debootstrap $suite into $rootfs (mirror: ${mirror:-debootstrap default}; about a minute)"
  local log="$rootfs.debootstrap.log"
  local args=(--variant=minbase "--include=docker.io,iptables,ca-certificates,busybox-static" "$suite" "$rootfs")
  [[ -n "$mirror" ]] && args+=("$mirror")
  if ! debootstrap "${args[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2 || true
    [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
    rm -f "$log"
    die "debootstrap failed"
  fi
  rm -f "$log"
  # Package caches and lists are of no use in the image.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  step "importing $base_image"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --message "jitrunner test base: debootstrap $suite minbase" - "$base_image" >/dev/null
  remove_rootfs
}

# --- base image ---------------------------------------------------------------------------------
if [[ "$rebuild" == 1 ]] || ! image_exists "$base_image"; then
  build_base
else
  step "$base_image exists, kept (--rebuild to rebuild)"
fi

# --- runner image: assemble a small build context -------------------------------------------------
node_bin="$(command -v node)" || die "node not found on PATH"
node_bin="$(readlink -f "$node_bin")"
entrypoint="$repo/images/runner/entrypoint.sh"
run_mjs="$here/run.mjs"
[[ -f "$entrypoint" ]] || die "missing $entrypoint"

work="$(mktemp -d "${TMPDIR:-/tmp}/jitrunner-runner-ctx.XXXXXX")"
install -m 0644 "$here/Dockerfile" "$work/Dockerfile"
install -m 0755 "$entrypoint" "$work/entrypoint.sh"
install -m 0755 "$here/fake-job.sh" "$work/fake-job.sh"
install -m 0755 "$node_bin" "$work/node"
mkdir -p "$work/fake-runner"
if [[ -f "$run_mjs" ]]; then
  install -m 0644 "$run_mjs" "$work/fake-runner/run.mjs"
else
  step "WARNING: $run_mjs does not exist; the image is built without it (its run.sh cannot work)"
fi
cat >"$work/run.sh" <<'EOF'
#!/bin/sh
# The fake runner's run.sh: the entrypoint starts it exactly as it starts the real runner's.
exec node /opt/fake-runner/run.mjs "$@"
EOF
chmod 0755 "$work/run.sh"

# The hash covers every input (paths and contents) and the base image's id.
base_id="$(docker image inspect --format '{{.Id}}' "$base_image")"
inputs_hash="$(
  cd "$work"
  {
    echo "base $base_id"
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
)"

current_hash=""
old_id=""
if image_exists "$runner_image"; then
  current_hash="$(docker image inspect --format "{{ index .Config.Labels \"$hash_label\" }}" "$runner_image" 2>/dev/null || true)"
  old_id="$(docker image inspect --format '{{.Id}}' "$runner_image")"
fi

if [[ "$rebuild" == 0 && -n "$current_hash" && "$current_hash" == "$inputs_hash" ]]; then
  step "$runner_image is up to date (inputs ${inputs_hash:0:12}), kept"
else
  if [[ -n "$old_id" ]]; then
    step "building $runner_image (inputs changed: ${current_hash:0:12} -> ${inputs_hash:0:12})"
  else
    step "building $runner_image (inputs ${inputs_hash:0:12})"
  fi
  build_log="$work.build.log"
  if ! docker build --quiet \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "INPUTS_SHA256=$inputs_hash" \
    --tag "$runner_image" "$work" >"$build_log" 2>&1; then
    cat "$build_log" >&2
    rm -f "$build_log"
    die "docker build of $runner_image failed"
  fi
  rm -f "$build_log"
  new_id="$(docker image inspect --format '{{.Id}}' "$runner_image")"
  # Drop the image this one replaced, once it has no tag left and no container uses it.
  if [[ -n "$old_id" && "$old_id" != "$new_id" ]] &&
    [[ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" == 0 ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
  fi
fi

step "done: $base_image, $runner_image"
