#!/usr/bin/env bash
# The filter's own instructions per steady 4K write, counted by callgrind
# on its entry point alone (bench/callgrind.sh counts whole requests,
# whose +-1.5% noise is larger than the few instructions at stake).
#
#   bench/callgrind-fn.sh [TREE] [MODE] [zero]
#
# nbdkit memory 64M with the filter of build tree TREE (default: this
# one) in MODE (crash-safe or qemu); each 4K block written once, then
# 20000 writes at (i * 7919 % 16384) * 4K (all steady), then a flush:
# 36384 writes.  Prints the self cost of dirtybitmap_pwrite (the steady
# path is inlined into it) per write, split by source file, and the
# total.  Deterministic: two runs of one build agree to 0.1.
# With "zero": one zero request (of the last granule) first, so that zero
# maps count every data write (the steady state is then
# tracker_enter_counted_noop, behind two calls); the total is then the
# self cost of every function of the filter, per write, and the same
# run without the zero request is printed first for comparison.
set -euo pipefail
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
tree=${1:-$top}; mode=${2:-crash-safe}; zero=${3:-}
if [ "$zero" = zero ]; then
    for z in 0 1; do
        ZERO_FIRST=$z "$0" "$tree" "$mode" all | tail -1 |
            sed "s/total/total, all filter functions, zero request first: $z/"
    done
    exit 0
fi
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
valgrind -q --tool=callgrind --callgrind-out-file=$w/cg.out \
    nbdkit -f -U $w/s.sock --filter=$tree/.libs/nbdkit-dirtybitmap-filter.so \
    memory 64M bitmap-file=$w/bm.qcow2 bitmap-mode=$mode 2>/dev/null &
pid=$!
for i in $(seq 300); do [ -S $w/s.sock ] && break; sleep 0.1; done
nbdsh -u "nbd+unix:///?socket=$w/s.sock" -c "
buf = b'x' * 4096
if ${ZERO_FIRST:-0}:
    h.zero(65536, (64 << 20) - 65536)
for g in range(16384):
    h.pwrite(buf, g * 4096)
for i in range(20000):
    h.pwrite(buf, (i * 7919 % 16384) * 4096)
h.flush()"
kill $pid; wait $pid 2>/dev/null || true
if [ "$zero" = all ]; then
    pat='^ *[0-9,]+ .*(common|filter)/[a-z-]+\.[ch]:'
else
    pat=':dirtybitmap_pwrite( |$)'
fi
callgrind_annotate --auto=no --inclusive=no $w/cg.out 2>/dev/null |
    grep -E "$pat" |
    awk '{ x = $1; gsub(",", "", x); t += x
           name = $0; sub(/^ *[0-9,]+ *(\([^)]*\))? */, "", name)
           printf "%6.1f %s\n", x / 36384, name }
         END { printf "%6.1f total\n", t / 36384 }'
