#!/usr/bin/env bash
# prereqs.sh — make sure this machine has what Bedrock's build, tests and benches need.
#
# Idempotent and non-interactive (works with CI=true and no stdin). As root it installs what is
# missing with apt-get (Debian packages); otherwise it prints exactly what to install and fails.
# When no Docker engine answers it starts `dockerd` in the background, logging to
# $BEDROCK_CACHE/dockerd.log, and waits until `docker info` works (extra dockerd flags: $BEDROCK_DOCKERD_ARGS).
#
# Usage: scripts/prereqs.sh [test] [proto] [docker] [--check]
#   test    (default) docker engine + iproute2, rsync, syncthing, busybox-static (tests and benches)
#   docker  the docker engine only
#   proto   protobuf-compiler (for `make proto`)
#   --check only report, never install or start anything
set -euo pipefail

CACHE="${BEDROCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bedrock}"
log() { printf 'prereqs: %s\n' "$*" >&2; }

want_docker=0 want_tools=0 want_proto=0 check_only=0
for a in "$@"; do
  case "$a" in
    test) want_docker=1 want_tools=1 ;;
    docker) want_docker=1 ;;
    proto) want_proto=1 ;;
    --check) check_only=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) log "unknown argument: $a"; exit 2 ;;
  esac
done
if [ $((want_docker + want_tools + want_proto)) -eq 0 ]; then want_docker=1 want_tools=1; fi

# command -> Debian package providing it
missing_pkgs=()
need() { # need CMD PKG
  if command -v "$1" >/dev/null 2>&1; then
    log "ok: $1 ($(command -v "$1"))"
  else
    log "missing: $1 (Debian package $2)"
    missing_pkgs+=("$2")
  fi
}

command -v go >/dev/null 2>&1 || { log "missing: go (Go toolchain, see go.mod for the version)"; exit 1; }
if [ "$want_docker" = 1 ]; then need dockerd docker.io; fi
if [ "$want_tools" = 1 ]; then
  need ip iproute2
  need rsync rsync
  need syncthing syncthing
  # the driver's test image copies a static busybox (sh, stty) next to the test app
  if [ -x /bin/busybox ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    log "ok: static busybox (/bin/busybox)"
  else
    log "missing: static /bin/busybox (Debian package busybox-static)"
    missing_pkgs+=(busybox-static)
  fi
fi
if [ "$want_proto" = 1 ]; then need protoc protobuf-compiler; fi
# the docker CLI may exist without an engine; docker.io brings both
if [ "$want_docker" = 1 ] && ! command -v docker >/dev/null 2>&1; then
  case " ${missing_pkgs[*]-} " in *" docker.io "*) ;; *) missing_pkgs+=(docker.io) ;; esac
fi

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else SUDO=(none); fi
  fi
  if [ "$check_only" = 1 ] || [ "${SUDO[0]-}" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    log "please install: apt-get update && apt-get install -y --no-install-recommends ${missing_pkgs[*]}"
    exit 1
  fi
  log "installing with apt-get: ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do
    if "${SUDO[@]}" apt-get update -q </dev/null &&
      "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" </dev/null; then
      break
    fi
    if [ "$attempt" = 3 ]; then log "apt-get failed 3 times"; exit 1; fi
    log "apt-get failed (attempt $attempt), retrying in 5s"
    sleep 5
  done
fi

if [ "$want_docker" = 1 ]; then
  if docker info >/dev/null 2>&1; then
    log "ok: docker engine answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  elif [ "$check_only" = 1 ]; then
    log "no docker engine answers (run scripts/prereqs.sh to start dockerd)"
    exit 1
  else
    mkdir -p "$CACHE"
    dlog="$CACHE/dockerd.log"
    DSUDO=()
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then DSUDO=(sudo -n); else
        log "no docker engine answers and not root: start one (e.g. 'sudo dockerd &' or 'sudo systemctl start docker')"
        exit 1
      fi
    fi
    log "no docker engine answers: starting dockerd in the background (log: $dlog)"
    # setsid + nohup: the engine outlives this script (and make, and .ci/run's shell)
    # BEDROCK_DOCKERD_ARGS: extra dockerd flags (word-split), e.g. a second engine for testing this script
    # shellcheck disable=SC2086
    nohup setsid "${DSUDO[@]}" dockerd ${BEDROCK_DOCKERD_ARGS-} >>"$dlog" 2>&1 </dev/null &
    for i in $(seq 1 120); do
      if docker info >/dev/null 2>&1; then break; fi
      if [ "$i" = 120 ]; then
        log "dockerd did not answer within 60s; last lines of $dlog:"
        tail -n 30 "$dlog" >&2 || true
        exit 1
      fi
      sleep 0.5
    done
    log "ok: docker engine answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  fi
fi
log "all prerequisites present"
