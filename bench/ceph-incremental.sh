#!/usr/bin/env bash
# Incremental backup of an RBD snapshot: `rbd export-diff` piped into backy versus
# `rbd export` + `rbd diff` hints, for the same change, on a throwaway one-node cluster.
# Usage (from the repository root, after `npm run build`; needs Ceph, see README):
#   bash bench/ceph-incremental.sh [SIZE_GIB=2] [CHANGED_OBJECTS=5]
# Prints wall-clock seconds per step. Each method has its own backy store, so neither
# deduplicates against the other's objects.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_GIB=${1:-2}
CHANGED=${2:-5}
MINI_CEPH=../shared/tools/mini-ceph.sh
BACKY="node $PWD/bin/backy.js"
work=$(mktemp -d "${TMPDIR:-/tmp}/backy-ceph-bench.XXXXXX")
cluster=$work/cluster
trap 'bash "$MINI_CEPH" destroy "$cluster" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
step() { # step LABEL COMMAND-LINE: runs it (bash, pipefail), prints its time
  local t0; t0=$(date +%s.%N)
  bash -c "set -euo pipefail; $2"
  printf '%-58s %8s s\n' "$1" "$(secs "$t0")" >&2
}

for m in a b; do
  mkdir -p "$work/$m"
  printf '[MetaBackend]\nengine = sqlite:///%s\n[DataBackend]\ntype = file\npath = %s\n' \
    "$work/$m/backy.sqlite" "$work/$m/data" >"$work/$m/backy.cfg"
done
A="$BACKY -c $work/a/backy.cfg"
B="$BACKY -c $work/b/backy.cfg"

t0=$(date +%s.%N)
eval "$(MINI_CEPH_STORE_BYTES=$((SIZE_GIB * 3 + 2))G bash "$MINI_CEPH" start "$cluster" 2>/dev/null)"
echo "cluster start: $(secs "$t0") s" >&2
img=$MINI_CEPH_POOL/bench
head -c $((SIZE_GIB << 30)) /dev/urandom >"$work/src.img"
step "rbd import ${SIZE_GIB} GiB" "rbd import --no-progress $work/src.img $img"
rm -f "$work/src.img"
rbd snap create "$img@s1" 2>/dev/null

step "A full: rbd export-diff | backy --rbd-export-diff" \
  "rbd export-diff --no-progress $img@s1 - | $A backup --rbd-export-diff - bench@s1 >$work/a/uid1 2>/dev/null"
step "B full: rbd export + backy" \
  "rbd export --no-progress $img@s1 $work/s1.img && $B backup $work/s1.img bench >$work/b/uid1 2>/dev/null && rm $work/s1.img"

# The change: CHANGED objects get a 1 MiB write at an odd offset, one object is discarded.
/usr/bin/python3 - "$MINI_CEPH_POOL" "$CHANGED" "$SIZE_GIB" <<'PY'
import os, random, sys, rados, rbd
pool, changed, gib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
objects = gib * 256
c = rados.Rados(conffile=os.environ['CEPH_CONF']); c.connect()
io = c.open_ioctx(pool)
r = random.Random(42)
with rbd.Image(io, 'bench') as im:
    for o in r.sample(range(objects), changed):
        im.write(r.randbytes(1 << 20), o * (4 << 20) + 12345)
    im.discard((objects // 2) * (4 << 20), 4 << 20)
io.close(); c.shutdown()
PY
rbd snap create "$img@s2" 2>/dev/null

echo "incremental, $CHANGED objects changed + 1 discarded:" >&2
step "A: rbd export-diff --from-snap | backy --rbd-export-diff" \
  "rbd export-diff --no-progress --from-snap s1 $img@s2 - | $A backup --rbd-export-diff - -f \$(cat $work/a/uid1) bench@s2 >/dev/null 2>&1"
t0=$(date +%s.%N)
step "B1: rbd diff --from-snap --format=json" \
  "rbd diff --from-snap s1 $img@s2 --format=json >$work/s2.json"
step "B2: rbd export (whole snapshot)" "rbd export --no-progress $img@s2 $work/s2.img"
step "B3: backy backup -r hints -f" \
  "$B backup -r $work/s2.json -f \$(cat $work/b/uid1) $work/s2.img bench >/dev/null 2>&1"
echo "B total: $(secs "$t0") s" >&2
