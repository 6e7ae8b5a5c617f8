#!/usr/bin/env bash
# Side by side with QEMU: the cost of dirty tracking in each, same job,
# same run.  fio (nbd engine, CPU 1) does 4K random writes at QD16 for
# RUNTIME seconds against a server pinned to CPU 0:
#   qemu-nbd, qcow2 (1G, preallocated) without a bitmap / with an enabled
#     persistent bitmap (qemu-img bitmap --add): QEMU's own tracking cost;
#   nbdkit file plugin on a raw 1G file with --filter=nofilter / with the
#     dirtybitmap filter (crash-safe, then qemu mode).
# Configurations interleaved, RUNS times; median (min-max) IOPS, and each
# tracker's ratio to its own untracked server.
#   bench/qemu-side.sh [RUNS] [RUNTIME]
set -euo pipefail
export PATH=/usr/bin:$PATH
RUNS=${1:-5}; RUNTIME=${2:-10}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
w=$(mktemp -d /var/tmp/dbm-qside.XXXXXX); trap 'rm -rf "$w"' EXIT

# Both disks fully written once (not timed), so no run pays for block
# allocation or unwritten-extent conversion.
qemu-img create -q -f qcow2 -o preallocation=full $w/q.qcow2 1G
qemu-io -c 'write -P 1 0 1G' $w/q.qcow2 >/dev/null
dd if=/dev/zero of=$w/raw.img bs=1M count=1024 conv=fsync status=none

iops () {   # iops SOCKET -> IOPS of the timed fio run
    taskset -c 1 fio --name=job --ioengine=nbd --uri="nbd+unix:///?socket=$1" \
        --rw=randwrite --bs=4k --iodepth=16 --size=1G --time_based \
        --runtime=$RUNTIME --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | /usr/bin/python3 -c '
import json, sys; print("%.0f" % json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
}

run_one () {
    local cfg=$1 sock=$w/s.sock pid
    rm -f $sock $w/bm.qcow2
    case $cfg in
    qemu-nbd|qemu-nbd+bitmap)
        qemu-img bitmap --remove $w/q.qcow2 b0 2>/dev/null || true
        [ $cfg = qemu-nbd+bitmap ] && qemu-img bitmap --add $w/q.qcow2 b0
        taskset -c 0 qemu-nbd -f qcow2 -k $sock -t --cache=writeback --aio=threads \
            $w/q.qcow2 &
        ;;
    nofilter)
        taskset -c 0 nbdkit -f -U $sock --filter=nofilter file $w/raw.img & ;;
    crash-safe|qemu)
        taskset -c 0 nbdkit -f -U $sock --filter=$FILTER file $w/raw.img \
            bitmap-file=$w/bm.qcow2 bitmap-mode=$cfg 2>/dev/null & ;;
    esac
    pid=$!
    for i in $(seq 300); do [ -S $sock ] && break; sleep 0.05; done
    iops $sock
    kill $pid; wait $pid 2>/dev/null || true
}

configs=(qemu-nbd qemu-nbd+bitmap nofilter crash-safe qemu)
declare -A res
for r in $(seq "$RUNS"); do
    # Rotated order each run (see fio.sh).
    n=${#configs[@]}
    for k in $(seq 0 $((n - 1))); do
        cfg=${configs[$(((k + r) % n))]}
        res[$cfg]+="$(run_one $cfg) "
    done
done

/usr/bin/python3 - "$RUNS" "$RUNTIME" "${configs[@]/%/=}" <<PY
import statistics, sys
res = {$(for c in "${configs[@]}"; do printf '"%s": [%s], ' "$c" "$(echo ${res[$c]} | tr ' ' ',')"; done)}
base = {"qemu-nbd": "qemu-nbd", "qemu-nbd+bitmap": "qemu-nbd",
        "nofilter": "nofilter", "crash-safe": "nofilter", "qemu": "nofilter"}
names = {"qemu-nbd": "qemu-nbd, qcow2, no bitmap",
         "qemu-nbd+bitmap": "qemu-nbd, qcow2, enabled persistent bitmap",
         "nofilter": "nbdkit file, --filter=nofilter",
         "crash-safe": "nbdkit file, dirtybitmap crash-safe",
         "qemu": "nbdkit file, dirtybitmap qemu mode"}
print("4K randwrite QD16, 1G, %s runs x %s s, median (min-max)" % (sys.argv[1], sys.argv[2]))
print("| server | IOPS | vs the same server untracked |")
print("|---|---|---|")
for k, v in res.items():
    m = statistics.median(v)
    print("| %s | %.0f (%.0f-%.0f) | %.3f |" % (names[k], m, min(v), max(v),
          m / statistics.median(res[base[k]])))
PY
