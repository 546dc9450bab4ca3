#!/usr/bin/env bash
# Fuzzes every parser of outside input (fuzz/fuzz_targets/: references, manifests and configs,
# TOC JSON and frames, eStargz, tar, SOCI ztoc, Dockerfile, .dockerignore) for SECONDS each
# (default 20: the short run CI does). Installs nightly and cargo-fuzz when missing.
# Prints `fuzz <target>: passed` or `fuzz <target>: failed (...)` per target, then
# `N passed, N failed`; exits non-zero when any target found a crash, a panic, a hang (an input
# taking over 10 s) or an allocation over 1 GiB. A crashing input is kept in
# fuzz/artifacts/<target>/; replay it with `cd fuzz && cargo +nightly fuzz run -a <target> <file>`.
set -uo pipefail
seconds=${1:-20}
cd "$(dirname "$0")/../fuzz"
if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal || exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz || exit 1
fi
# -a: debug assertions, so an arithmetic overflow on hostile lengths is a crash here too.
if ! cargo +nightly fuzz build -a; then
  echo "fuzz build: failed"
  echo "0 passed, 1 failed"
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$target" "corpus/$target"
  log="$work/$target.log"
  # New inputs go to the scratch corpus (first); the committed seeds are only read.
  if cargo +nightly fuzz run -a "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=1024 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    echo "fuzz $target: passed (${runs:-?} inputs in ${seconds}s)"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    crash=$(grep -o 'artifacts/[^ ]*' "$log" | tail -1)
    echo "fuzz $target: failed (input kept in fuzz/${crash:-artifacts/$target/})"
    # The cause: the panic message (and the line after it), or libFuzzer's own verdict. The
    # `Running ...` line is skipped: its `-timeout=` flag would match.
    grep -v '^ *Running ' "$log" |
      grep -m1 -A1 -E "panicked at|ERROR: libFuzzer|SUMMARY|out-of-memory|timeout after" |
      sed 's/^/  /'
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
