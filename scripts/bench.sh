#!/usr/bin/env bash
# The cold-start benchmark (see BENCHMARKS.md): installs its Debian packages, builds release
# binaries and runs strata-bench. Extra arguments go to strata-bench (--runs N, --profile P,
# --json FILE). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
pkgs=(debootstrap umoci strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -p strata -p strata-benches
exec ./target/release/strata-bench "$@"
