#!/usr/bin/env bash
# Installs what strata's demo and tests need from Debian's archive. Idempotent; run as root.
set -euo pipefail
pkgs=(docker-registry fuse3 busybox-static zstd curl tar attr skopeo ca-certificates libseccomp-dev python3-minimal)
# bzip2 and xz make the compressed archives that the ADD tests unpack.
pkgs+=(bzip2 xz-utils)
# podman, crun, runc and umoci: the interop tests' real writers and readers.
pkgs+=(podman crun runc umoci)
# containerd 1.6 (with ctr and containerd-shim-runc-v2): the snapshotter's engine tests;
# protobuf-compiler: protoc, which the containerd and CRI gRPC crates build their protos with.
pkgs+=(containerd protobuf-compiler)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package may start its own registry on :5000; strata's demo and tests start their own.
command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
# The interop tests build stargz-snapshotter's writer (tests/tools/stargz-writer) with Go and
# the Go module proxy; fetch its modules now so the tests need no network.
command -v go >/dev/null || { echo "go (1.22 or newer) is required for the interop tests: https://go.dev/dl" >&2; exit 1; }
(cd "$(dirname "$0")/../tests/tools/stargz-writer" && go mod download)
# The SOCI interop test builds soci-ztoc (soci-snapshotter's generated ztoc reader and writer).
(cd "$(dirname "$0")/../tests/tools/soci-ztoc" && go mod download)
