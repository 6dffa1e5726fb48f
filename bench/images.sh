#!/usr/bin/env bash
# Image benchmark: pull of a ~95 MB single-layer image (debootstrap --variant=minbase) from a
# local docker-registry by `bulkhead pull` vs `skopeo copy` to an OCI directory, a second
# (no-op) pull, and the root-disk build. Prints figures; not a test.
#
# Usage: bench/images.sh [path/to/bulkhead]   (default: target/release/bulkhead, built if missing)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${BULKHEAD_BENCH_CACHE:-$HOME/.cache/bulkhead/bench}
bulkhead=${1:-$repo/target/release/bulkhead}
runs=${RUNS:-3}
mkdir -p "$cache"

if [ ! -x "$bulkhead" ]; then
  (cd "$repo" && cargo build --release -p bulkhead-cli >&2)
fi

rootfs_tar=$cache/minbase.tar
if [ ! -s "$rootfs_tar" ]; then
  echo "bench: debootstrap --variant=minbase bookworm (cached in $cache)" >&2
  rm -rf "$cache/minbase"
  debootstrap --variant=minbase bookworm "$cache/minbase" http://deb.debian.org/debian >&2
  tar -C "$cache/minbase" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
fi

work=$(mktemp -d)
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $host
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fs "http://$host/v2/" >/dev/null && break; sleep 0.1; done

# One gzip layer, pushed by skopeo (the reference tool) from an OCI layout made by bulkhead import.
"$bulkhead" --root "$work/seed" import "$rootfs_tar" bench/minbase:latest >/dev/null
"$bulkhead" --root "$work/seed" save -o "$work/seed.tar" bench/minbase:latest
skopeo copy --quiet --dest-compress --dest-compress-format gzip --dest-tls-verify=false \
  "oci-archive:$work/seed.tar" "docker://$host/bench/minbase:latest"
image=$host/bench/minbase:latest
layer_mb=$(skopeo inspect --tls-verify=false "docker://$image" --raw |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(round(sum(l["size"] for l in m["layers"])/1e6,1))')

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

echo "image: $image, layer ${layer_mb} MB compressed, rootfs $(du -sh "$rootfs_tar" | cut -f1) uncompressed"
printf '%-34s %s\n' "step" "seconds (runs: $runs)"
for i in $(seq "$runs"); do
  rm -rf "$work/skopeo" "$work/bh"
  sync
  t0=$(now); skopeo copy --quiet --src-tls-verify=false "docker://$image" "oci:$work/skopeo:latest"; t1=$(now)
  s=$(elapsed "$t0" "$t1")
  t0=$(now); "$bulkhead" --root "$work/bh" pull -q --insecure "$image" >/dev/null; t1=$(now)
  b=$(elapsed "$t0" "$t1")
  t0=$(now); "$bulkhead" --root "$work/bh" pull -q --insecure "$image" >/dev/null; t1=$(now)
  b2=$(elapsed "$t0" "$t1")
  t0=$(now); disk=$("$bulkhead" --root "$work/bh" image disk "$image"); t1=$(now)
  d=$(elapsed "$t0" "$t1")
  ratio=$(python3 -c "print(f'{$b / $s:.2f}')")
  printf 'run %s: skopeo copy %s | bulkhead pull %s (%sx) | second pull %s | root disk %s (%s MB)\n' \
    "$i" "$s" "$b" "$ratio" "$b2" "$d" "$(( $(stat -c %s "$disk") / 1000000 ))"
done

# For comparison: erofs from the same tree (no device-node fix-ups possible with erofs-utils 1.5).
mkdir -p "$work/tree"
tar -C "$work/tree" -xf "$rootfs_tar"
t0=$(now); mkfs.erofs --quiet "$work/erofs.img" "$work/tree" >/dev/null; t1=$(now)
echo "erofs (mkfs.erofs, uncompressed, from an unpacked tree): $(elapsed "$t0" "$t1") s, $(( $(stat -c %s "$work/erofs.img") / 1000000 )) MB"
