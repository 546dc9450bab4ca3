#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests (real registry, real FUSE
# mounts, kernel overlayfs as the reference). Needs root for FUSE, mounts and device nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=4
