#!/usr/bin/env bash
# The full benchmark set behind bench/README.md, in one go (about 45
# minutes on a 2-core VM; run it on an otherwise idle machine).  Each
# script prints its own result table; all of them go to stdout and to
# bench/results/DATE.txt.  Run from a built tree: make bench.
set -euo pipefail
export PATH=/usr/bin:$PATH
b=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$b/results"
out="$b/results/$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# $(date -u) $(git -C "$b/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
    bash "$b/callgrind.sh" 20000 5
    STEADY=1 bash "$b/callgrind.sh" 20000 5
    for w in randwrite seqwrite multiconn fsync32; do bash "$b/fio.sh" $w 5 8 2>/dev/null; done
    bash "$b/qemu-side.sh" 5 8
    bash "$b/checkpoint.sh" 3 10 1T 64G
    bash "$b/scale.sh" 256T 16384 3
    bash "$b/scale.sh" 16T 16384 1
    bash "$b/scale.sh" 1T 16384 1
} 2>&1 | tee "$out"
