#!/usr/bin/env bash
# Instructions per 4K write request through nbdkit, counted by callgrind
# (deterministic, unlike wall-clock on noisy 2-core VMs).
#   cost = (Ir(N writes) - Ir(0 writes)) / N
# for plain memory, --filter=nofilter, and the dirtybitmap filter in both
# modes.  Usage: bench/callgrind.sh [N]   (run from the build tree)
set -euo pipefail
export PATH=/usr/bin:$PATH
N=${1:-20000}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT

ir () {   # ir NWRITES ARGS... -> total instructions
    local n=$1; shift
    local sock=$w/s.sock out=$w/cg.out
    rm -f "$sock" "$out" "$w"/bm*.qcow2
    valgrind -q --tool=callgrind --callgrind-out-file="$out" \
        nbdkit -f -U "$sock" "$@" &
    local pid=$!
    for i in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
    nbdsh -u "nbd+unix:///?socket=$sock" -c "
buf = b'x' * 4096
for i in range($n):
    h.pwrite(buf, (i * 7919 % 16384) * 4096)
h.flush()"
    kill $pid; wait $pid 2>/dev/null || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

printf "%-34s %14s %14s %10s %8s\n" config "Ir N=0" "Ir N=$N" "Ir/write" "ratio"
base=
for cfg in "plain memory" "nofilter" "dirtybitmap crash-safe" "dirtybitmap qemu" \
           "dirtybitmap crash-safe, 4 bitmaps"; do
    case $cfg in
    "plain memory") args=(memory 64M) ;;
    nofilter) args=(--filter=nofilter memory 64M) ;;
    "dirtybitmap crash-safe") args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2) ;;
    "dirtybitmap qemu") args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm.qcow2 bitmap-mode=qemu) ;;
    "dirtybitmap crash-safe, 4 bitmaps")
        "$top/dirtybitmap" create $w/bm4.qcow2 --size 64M
        for b in b1 b2 b3; do "$top/dirtybitmap" add $w/bm4.qcow2 $b; done
        cp $w/bm4.qcow2 $w/bm4.orig
        args=(--filter="$FILTER" memory 64M bitmap-file=$w/bm4.qcow2) ;;
    esac
    [ -f $w/bm4.orig ] && cp $w/bm4.orig $w/bm4.qcow2
    a=$(ir 0 "${args[@]}" 2>/dev/null)
    [ -f $w/bm4.orig ] && cp $w/bm4.orig $w/bm4.qcow2
    b=$(ir "$N" "${args[@]}" 2>/dev/null)
    per=$(( (b - a) / N ))
    [ "$cfg" = nofilter ] && base=$per
    ratio=-
    [ -n "$base" ] && ratio=$(awk -v p=$per -v b=$base 'BEGIN { printf "%.3f", p / b }')
    printf "%-34s %14d %14d %10d %8s\n" "$cfg" "$a" "$b" "$per" "$ratio"
done
