#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests (real registry, real FUSE
# mounts, kernel overlayfs as the reference). Needs root for FUSE, mounts and device nodes.
# Ends with one line `N passed, N failed` summing every suite cargo ran (unit, e2e, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee "$log" || status=$?
# cargo prints one `test result: ok. 12 passed; 0 failed; 1 ignored; ...` line per suite.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i) ~ /^passed;?$/) p += $(i-1)
         if ($(i) ~ /^failed;?$/) f += $(i-1)
       }
     }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
