#!/usr/bin/env bash
# Records docker's golden transcripts into tests/golden/out/ and the engine version into
# tests/golden/ENGINE: every scenario of tests/golden/scenarios/ run with CLI=docker, normalized
# by tests/golden/normalize.rules (see tests/golden/README.md).
#
#   scripts/record-docker.sh [--peers DIR] [SCENARIO...]
#
# With DOCKER_HOST set, records against that engine. Otherwise starts a private Docker Engine
# from DIR (default /work/peers/bin: dockerd, containerd, runc, containerd-shim-runc-v2; built by
# shared/peers/build.sh) with its own roots and socket in a temp dir, and stops it at the end.
# The docker CLI client (28.x) must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=/work/peers/bin
if [ "${1:-}" = "--peers" ]; then
  peers=$2
  shift 2
fi
command -v docker >/dev/null || { echo "record-docker: the docker CLI client is missing" >&2; exit 1; }
cargo build -q -p strata --bin strata
cargo build -q -p strata-tests --example golden
dockerd_pid=
d=
stop_engine() {
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$dockerd_pid" 2>/dev/null || true
    # dockerd stops its containerd; unmount what it may leave behind, then drop the roots.
    grep " $d/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$d"
  fi
}
if [ -z "${DOCKER_HOST:-}" ]; then
  [ -x "$peers/dockerd" ] || { echo "record-docker: no dockerd in $peers (give --peers DIR)" >&2; exit 1; }
  d=$(mktemp -d /tmp/dk.XXXXXX)  # short: socket paths are limited to 108 bytes
  trap stop_engine EXIT
  PATH=$peers:$PATH "$peers/dockerd" --data-root "$d/root" --exec-root "$d/exec" \
    --pidfile "$d/docker.pid" -H "unix://$d/docker.sock" --iptables=false --ip6tables=false \
    --bridge=none --userland-proxy=false --insecure-registry 127.0.0.0/8 \
    >"$d/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$d/docker.sock"
  for _ in $(seq 1 150); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker version >/dev/null || { cat "$d/dockerd.log" >&2; exit 1; }
fi
dockerd_bin=$peers/dockerd
GOLDEN_DOCKERD_VERSION="$( [ -x "$dockerd_bin" ] && "$dockerd_bin" --version || echo unknown) (moby v2 module v2.0.0-beta.24 when built by shared/peers/build.sh)"
export GOLDEN_DOCKERD_VERSION
target=${CARGO_TARGET_DIR:-target}
"$target/debug/examples/golden" record "$@"
