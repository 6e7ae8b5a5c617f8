#!/usr/bin/env bash
# Instructions per 4K write request through nbdkit, counted by callgrind
# (deterministic up to thread-scheduling noise of about +-1.5%, unlike
# wall-clock on noisy 2-core VMs).
#   cost = (Ir(N writes) - Ir(0 writes)) / N
# N synchronous 4K writes at offsets (i * 7919 % 16384) * 4K of a 64M
# memory disk (so 1 in ~20 writes is the first into its 64K granule), then
# one flush.  Configurations interleaved, RUNS times; prints the median
# (min-max) and the ratio of medians to --filter=nofilter.
# STEADY=1: first write every 4K block once, in both the N=0 and the N
# run (so it cancels out): the steady state, no write is a first touch.
#   [STEADY=1] bench/callgrind.sh [N] [RUNS]      (run from the build tree)
set -euo pipefail
export PATH=/usr/bin:$PATH
N=${1:-20000}; RUNS=${2:-5}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
D=$top/dirtybitmap
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT

# The floor of any filter that intercepts pwrite: one that only calls on.
cat > $w/pass.c <<'EOF'
#include <nbdkit-filter.h>
static int
pass_pwrite (nbdkit_next *next, void *handle, const void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  return next->pwrite (next, buf, count, offset, flags, err);
}
static struct nbdkit_filter filter = { .name = "pass", .pwrite = pass_pwrite };
NBDKIT_REGISTER_FILTER (filter)
EOF
gcc -O2 -fPIC -shared -o $w/pass.so $w/pass.c

ir () {   # ir NWRITES ARGS... -> total instructions
    local n=$1; shift
    local sock=$w/s.sock out=$w/cg.out
    rm -f "$sock" "$out" "$w"/bm.qcow2
    [ -f $w/bm.orig ] && cp $w/bm.orig $w/bm.qcow2
    valgrind -q --tool=callgrind --callgrind-out-file="$out" \
        nbdkit -f -U "$sock" "$@" &
    local pid=$!
    for i in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
    nbdsh -u "nbd+unix:///?socket=$sock" -c "
buf = b'x' * 4096
if ${STEADY:-0}:
    for g in range(16384):
        h.pwrite(buf, g * 4096)
for i in range($n):
    h.pwrite(buf, (i * 7919 % 16384) * 4096)
h.flush()"
    kill $pid; wait $pid 2>/dev/null || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

configs=("plain memory" "nofilter" "pass-through filter (floor)"
         "dirtybitmap crash-safe" "dirtybitmap qemu"
         "crash-safe, 4 bitmaps" "crash-safe, 16 bitmaps"
         "crash-safe, granularity 512" "crash-safe, granularity 1M")

args_for () {
    rm -f $w/bm.orig
    case $1 in
    "plain memory") args=(memory 64M) ;;
    nofilter) args=(--filter=nofilter memory 64M) ;;
    "pass-through filter (floor)") args=(--filter=$w/pass.so memory 64M) ;;
    "dirtybitmap crash-safe") args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2) ;;
    "dirtybitmap qemu") args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2 bitmap-mode=qemu) ;;
    "crash-safe, "*" bitmaps")
        local k=${1#crash-safe, }; k=${k% bitmaps}
        $D create $w/bm.orig --size 64M >/dev/null
        for b in $(seq 2 "$k"); do $D add $w/bm.orig b$b >/dev/null; done
        args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2) ;;
    "crash-safe, granularity "*)
        args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2
              bitmap-granularity=${1#crash-safe, granularity }) ;;
    esac
}

declare -A res
for r in $(seq "$RUNS"); do
    for cfg in "${configs[@]}"; do
        args_for "$cfg"
        a=$(ir 0 "${args[@]}" 2>/dev/null)
        b=$(ir "$N" "${args[@]}" 2>/dev/null)
        res[$cfg]+="$(( (b - a) / N )) "
    done
done

printf "| config | Ir/write median (min-max), %d runs | vs nofilter |\n|---|---|---|\n" "$RUNS"
base=$(echo ${res[nofilter]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
for cfg in "${configs[@]}"; do
    echo ${res[$cfg]} | tr ' ' '\n' | sort -n | awk -v c="$cfg" -v b="$base" '
        {a[NR]=$1} END { m=a[int((NR+1)/2)];
        printf "| %s | %d (%d-%d) | %.3f |\n", c, m, a[1], a[NR], m / b }'
done
