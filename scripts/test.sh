#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the end-to-end tests (real registry, real FUSE
# mounts, kernel overlayfs as the reference). Needs root for FUSE, mounts and device nodes.
# Then a short fuzzing run of every parser of outside input (scripts/fuzz.sh; STRATA_FUZZ_SECS
# seconds per target, default 20). Ends with one line `N passed, N failed` summing every suite
# cargo ran (unit, e2e, doc tests) and every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --all-targets
log=$(mktemp)
fuzzlog=$(mktemp)
trap 'rm -f "$log" "$fuzzlog"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee "$log" || status=$?
bash scripts/fuzz.sh "${STRATA_FUZZ_SECS:-20}" 2>&1 | tee "$fuzzlog" || status=1
# cargo prints one `test result: ok. 12 passed; 0 failed; 1 ignored; ...` line per suite;
# fuzz.sh ends with its own `N passed, N failed` (one per target; a failed build counts one).
{
  grep '^test result:' "$log"
  grep -E '^[0-9]+ passed, [0-9]+ failed$' "$fuzzlog" | tail -1 || echo "0 passed, 1 failed"
} | awk '{
       for (i = 1; i <= NF; i++) {
         if ($(i) ~ /^passed[;,]?$/) p += $(i-1)
         if ($(i) ~ /^failed[;,]?$/) f += $(i-1)
       }
     }
     END { printf "%d passed, %d failed\n", p, f }'
exit "$status"
