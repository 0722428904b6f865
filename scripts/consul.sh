#!/usr/bin/env bash
# consul.sh — print the path of a Consul agent binary for the tests (and only that, on stdout).
#
# Order: $BEDROCK_CONSUL_BIN if set, else a `consul` on PATH, else the cached build at
# $BEDROCK_CACHE/consul-v1.12.9/consul (BEDROCK_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/bedrock),
# building it from the tools module (e2e/tools, Consul v1.12.9 from the Go module proxy) when missing.
# The build takes a few minutes on 2 cores. Progress goes to stderr.
#
# Usage: scripts/consul.sh [--build]   (--build: ignore PATH/env and ensure the cached build)
set -euo pipefail

CONSUL_VERSION=v1.12.9
CONSUL_COMMIT=96505027b1426110569a8e981a12de37216b3af7 # git commit of the v1.12.9 tag, for `consul version`
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${BEDROCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bedrock}"
DEST="$CACHE/consul-$CONSUL_VERSION/consul"
log() { printf 'consul.sh: %s\n' "$*" >&2; }

if [ "${1-}" != --build ]; then
  if [ -n "${BEDROCK_CONSUL_BIN-}" ]; then
    [ -x "$BEDROCK_CONSUL_BIN" ] || { log "BEDROCK_CONSUL_BIN=$BEDROCK_CONSUL_BIN is not an executable"; exit 1; }
    echo "$BEDROCK_CONSUL_BIN"; exit 0
  fi
  if p="$(command -v consul 2>/dev/null)"; then echo "$p"; exit 0; fi
fi

if [ -x "$DEST" ] && "$DEST" version >/dev/null 2>&1; then echo "$DEST"; exit 0; fi

mkdir -p "$(dirname "$DEST")"
tmp="$(mktemp "$DEST.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
log "building Consul $CONSUL_VERSION from e2e/tools into $DEST (takes a few minutes)"
start=$(date +%s)
(
  cd "$ROOT/e2e/tools"
  GOWORK=off CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X github.com/hashicorp/consul/version.GitCommit=${CONSUL_COMMIT:0:8}" \
    -o "$tmp" ./consul
) >&2
chmod 0755 "$tmp"
mv -f "$tmp" "$DEST"
trap - EXIT
log "built in $(( $(date +%s) - start ))s: $("$DEST" version | sed -n 1p)"
echo "$DEST"
