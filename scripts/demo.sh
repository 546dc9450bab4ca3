#!/usr/bin/env bash
# strata's main job, end to end: install what is needed, build, start a real registry on
# 127.0.0.1, push a sample image (plain gzip layers, as most images are), convert it to the
# native lazy format, pull it lazily, mount it, read files cold, and show the bytes that
# reached the registry for each step (from the registry's own access log). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace --bins --examples -q
strata=target/release/strata
work=$(mktemp -d /tmp/strata-demo.XXXXXX)
port=$(shuf -i 20000-60000 -n 1)
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$(shuf -i 20000-60000 -n 1); done
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $reg}
YML
docker-registry serve "$work/registry.yml" >"$work/access.log" 2>"$work/registry.err" &
registry_pid=$!
mnt=$work/mnt
cleanup() {
  "$strata" --root "$work/state" umount "$mnt" 2>/dev/null || true
  kill "$registry_pid" 2>/dev/null || true
}
trap cleanup EXIT
until curl -sf "http://$reg/v2/" >/dev/null; do sleep 0.1; done

# Bytes strata fetched from the registry since the log had $1 lines.
fetched() { tail -n +"$(( $1 + 1 ))" "$work/access.log" | awk '/strata\// { n++; b += $10 } END { printf "%d requests, %d bytes", n, b }'; }
mark() { wc -l <"$work/access.log"; }

echo "== pushing a sample image to $reg (busybox-static, files of every kind, a 64 MiB data file; gzip layers)"
target/release/examples/seed "$reg" demo/app:1 gzip big busybox
echo "== strata convert $reg/demo/app:1 $reg/demo/app:1-lazy"
"$strata" --root "$work/convert" convert "$reg/demo/app:1" "$reg/demo/app:1-lazy"

export STRATA_ROOT=$work/state
m=$(mark); echo "== strata pull $reg/demo/app:1-lazy"
"$strata" pull "$reg/demo/app:1-lazy"
echo "   fetched: $(fetched "$m")"
"$strata" images
mkdir -p "$mnt"
m=$(mark); echo "== strata mount --detach $reg/demo/app:1-lazy $mnt"
time "$strata" mount --detach "$reg/demo/app:1-lazy" "$mnt"
echo "   entries visible: $(find "$mnt" | wc -l); fetched: $(fetched "$m")"
m=$(mark); echo "== cat $mnt/etc/os-release (cold)"
cat "$mnt/etc/os-release"
echo "   fetched: $(fetched "$m")"
m=$(mark); echo "== $mnt/bin/busybox echo hello (a 2 MB static binary, run cold from the mount)"
"$mnt/bin/busybox" echo hello from a lazily mounted image
echo "   fetched: $(fetched "$m")"
m=$(mark); echo "== 1 MiB from the middle of the 64 MiB file"
dd if="$mnt/data/big.bin" bs=1M skip=32 count=1 status=none | wc -c
echo "   fetched: $(fetched "$m")"
"$strata" umount "$mnt"
echo "== unmounted; state in $work"
