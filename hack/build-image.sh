#!/usr/bin/env bash
# Builds the operator image from the Dockerfile on a base made from Debian packages, and prints its name.
#
#   hack/build-image.sh                 build (or refresh) $PRESCALER_IMAGE, default prescaler:dev
#   hack/build-image.sh --stop-engine   stop the Docker engine this script started, if it is running
#
# Settings: PRESCALER_IMAGE (the tag), PRESCALER_CACHE, PRESCALER_BASE_IMAGE (a base to pull instead, e.g.
# python:3.11.13-slim-bookworm), PRESCALER_CA_BUNDLE (CA bundle for pip), PRESCALER_DEBIAN_MIRROR.
#
# No image registry is needed: the base is Debian bookworm with python3.11, made by mmdebstrap from the
# Debian mirror and imported into Docker once, tagged with a hash of its recipe, so a changed recipe makes a
# new base and an unchanged one is reused. The image build itself is incremental (Docker's layer cache): the
# dependency layer is rebuilt only when pyproject.toml changes. docker.io and mmdebstrap are installed from
# Debian when missing, and a Docker engine is started when none answers.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${PRESCALER_IMAGE:-prescaler:dev}"
CACHE="${PRESCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prescaler}"
# The engine this script starts keeps its state (images, build cache) here, beside the other build outputs:
# one directory for CI to keep or wipe, and nothing written where a system-managed engine keeps its own.
# Its pidfile is here too, so --stop-engine stops that engine and never one the machine runs anyway.
ENGINE_DIR="$CACHE/docker"
PIDFILE="$ENGINE_DIR/dockerd.pid"
mkdir -p "$ENGINE_DIR"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

log() { echo "build-image: $*" >&2; }

# Commands to run on exit, whichever way the script ends.
on_exit=()
run_on_exit() { local c; for c in "${on_exit[@]}"; do eval "$c"; done; }
trap run_on_exit EXIT

stop_engine() {
  local pid
  [ -s "$PIDFILE" ] || { log "no engine of this script is running"; return 0; }
  pid="$(cat "$PIDFILE")"
  if ! kill -0 "$pid" 2>/dev/null; then log "no engine of this script is running"; return 0; fi
  log "stopping dockerd (pid $pid)"
  $SUDO kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "dockerd (pid $pid) did not stop"; return 1
}

if [ "${1:-}" = "--stop-engine" ]; then stop_engine; exit; fi
[ $# -eq 0 ] || { echo "usage: $0 [--stop-engine]" >&2; exit 2; }

apt_install() {
  log "installing $*"
  $SUDO apt-get update -qq
  # Debian's packages start their services on install; this script starts the engine its own way.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    echo exit 101 | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
    on_exit+=('$SUDO rm -f /usr/sbin/policy-rc.d')
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

engine_up() { docker info >/dev/null 2>&1; }

# --- the engine: any that answers, else Debian's, started here ------------------------------------------
exec 9>"$ENGINE_DIR/lock"
flock 9  # concurrent callers: one installs and starts, the others find it running
if ! engine_up; then
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  log "starting dockerd (log: $ENGINE_DIR/dockerd.log)"
  # setsid: the engine outlives this script (and the test session that called it), like the local
  # PostgreSQL; stop it with --stop-engine. It must not inherit the lock's descriptor, or hold the lock.
  $SUDO setsid dockerd --data-root "$ENGINE_DIR/data" --pidfile "$PIDFILE" \
    >>"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 120); do engine_up && break; sleep 0.5; done
  engine_up || { tail -n 30 "$ENGINE_DIR/dockerd.log" >&2; log "dockerd did not come up"; exit 1; }
fi

# A CLI that builds with BuildKit (secrets, cache mounts): one with the buildx plugin, or a client older than
# 23.0, which has BuildKit built in (Debian 12's docker.io); newer clients without buildx cannot.
DOCKER=""
for cli in ${DOCKER_CLI:-} docker /usr/bin/docker; do
  command -v "$cli" >/dev/null 2>&1 || continue
  if "$cli" buildx version >/dev/null 2>&1; then DOCKER="$cli"; break; fi
  major="$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
  if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then DOCKER="$cli"; break; fi
done
if [ -z "$DOCKER" ]; then
  apt_install docker.io
  DOCKER=/usr/bin/docker
fi

# --- the base: Debian bookworm with python3.11, from Debian packages -----------------------------------
MIRROR="${PRESCALER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${PRESCALER_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
MMDEBSTRAP_ARGS=(
  --variant=minbase
  # Merged /usr without the usrmerge package, which would pull in all of perl.
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # python3.11-venv for the build stage's venv; libstdc++6 for Prophet's compiled Stan model.
  --include=python3.11,python3.11-venv,ca-certificates,libstdc++6
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  bookworm
)
SOURCES=(
  "deb $MIRROR bookworm main"
  "deb $MIRROR bookworm-updates main"
  "deb $SECURITY_MIRROR bookworm-security main"
)
IMPORT_CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'CMD ["python3"]'
)
# The mirror is not part of the recipe: any mirror serves the same suite. Security updates published later
# reach the base when its recipe changes (or after `docker rmi` of the base).
recipe_hash="$(printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" "${IMPORT_CHANGES[@]}" | sha256sum | cut -c1-12)"
BASE="prescaler-base:bookworm-py3.11-$recipe_hash"

# Where a registry is reachable, PRESCALER_BASE_IMAGE may name a public base instead (the Dockerfile's default).
if [ -n "${PRESCALER_BASE_IMAGE:-}" ]; then
  BASE="$PRESCALER_BASE_IMAGE"
elif ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  start=$(date +%s)
  log "building the base $BASE with mmdebstrap"
  work="$(mktemp -d "$CACHE/base.XXXXXX")"
  on_exit+=("rm -rf '$work'")
  if ! $SUDO mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" "$work/rootfs.tar" "${SOURCES[@]}" >"$work/log" 2>&1; then
    tail -n 30 "$work/log" >&2; log "mmdebstrap failed"; exit 1
  fi
  changes=(); for c in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$c"); done
  "$DOCKER" import "${changes[@]}" "$work/rootfs.tar" "$BASE" >/dev/null
  rm -rf "$work"
  log "base $BASE built in $(( $(date +%s) - start ))s"
fi
flock -u 9

# --- the image --------------------------------------------------------------------------------------------
# pip inside the build trusts the machine's CA bundle (a TLS-inspecting proxy's CA is in it, where there is one).
CA_BUNDLE="${PRESCALER_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
secret=(); [ -s "$CA_BUNDLE" ] && secret=(--secret "id=ca,src=$CA_BUNDLE")
start=$(date +%s)
build_log="$(mktemp "$ENGINE_DIR/build.XXXXXX.log")"
if ! DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --build-arg "BASE_IMAGE=$BASE" "${secret[@]}" \
    --tag "$IMAGE" "$ROOT" >"$build_log" 2>&1; then
  tail -n 40 "$build_log" >&2; log "docker build failed (full log: $build_log)"; exit 1
fi
rm -f "$build_log"
log "$IMAGE built in $(( $(date +%s) - start ))s on $BASE"
echo "$IMAGE"
