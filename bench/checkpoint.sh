#!/usr/bin/env bash
# Checkpoint latency, and write latency while checkpoints are taken.
#
#   bench/checkpoint.sh [RUNS] [RUNTIME] [SIZE] [DIRTY]
#
# nbdkit (null plugin of SIZE, default 1T, pinned to CPU 0: the data goes
# nowhere, only the bitmap work is measured) with the filter and a control
# socket; the first DIRTY (default 64G) bytes are dirtied first (a 4K write
# per 64K granule, not timed), so each checkpoint rewrites a file whose
# bitmaps hold that many dirty bytes.  Then fio (CPU 1) runs 4K random
# writes at QD16 over the first DIRTY bytes for RUNTIME seconds, once
# without checkpoints and once with a checkpoint every second (the bitmap
# two checkpoints back removed each time, as a backup agent would), the
# two interleaved, RUNS times, in both modes.  Prints medians (min-max) of:
# checkpoint latency (client-side, the 'ok' round trip), and fio's write
# completion latency percentiles.
set -euo pipefail
export PATH=/usr/bin:$PATH
RUNS=${1:-3}; RUNTIME=${2:-10}; SIZE=${3:-1T}; DIRTY=${4:-64G}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
D=$top/dirtybitmap
w=$(mktemp -d /var/tmp/dbm-ckpt.XXXXXX); trap 'rm -rf "$w"' EXIT

run_one () {   # run_one MODE WITH_CHECKPOINTS -> "p50 p99 p99.9 max | ckpt ms..."
    local mode=$1 with=$2 sock=$w/s.sock ctl=$w/ctl pid k=0
    rm -f $sock $ctl $w/bm.qcow2 $w/ckpt.ms
    taskset -c 0 nbdkit -f -U $sock --filter=$FILTER null $SIZE \
        bitmap-file=$w/bm.qcow2 bitmap-control=$ctl bitmap-mode=$mode 2>/dev/null &
    pid=$!
    for i in $(seq 300); do [ -S $sock ] && break; sleep 0.05; done
    taskset -c 1 fio --name=pre --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        --rw=write:60k --bs=4k --iodepth=16 --size=$DIRTY >/dev/null 2>&1
    $D checkpoint $ctl c0 >/dev/null
    taskset -c 1 fio --name=job --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        --rw=randwrite --bs=4k --iodepth=16 --size=$DIRTY --time_based \
        --runtime=$RUNTIME --output-format=json > $w/out.json 2>/dev/null &
    local fpid=$!
    if [ "$with" = yes ]; then
        sleep 1
        while kill -0 $fpid 2>/dev/null; do
            k=$((k + 1))
            local t0 t1
            t0=$(date +%s%N)
            $D checkpoint $ctl c$k >/dev/null || break
            t1=$(date +%s%N)
            echo $(( (t1 - t0) / 1000 )) >> $w/ckpt.ms
            [ $k -ge 2 ] && $D remove $ctl c$((k - 2)) >/dev/null
            sleep 1
        done
    fi
    wait $fpid || true
    kill $pid; wait $pid 2>/dev/null || true
    sed -n '/^{/,$p' $w/out.json > $w/clean.json
    /usr/bin/python3 - $w/clean.json $w/ckpt.ms <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
p = j["jobs"][0]["write"]["clat_ns"]["percentile"]
mx = j["jobs"][0]["write"]["clat_ns"]["max"]
c = [int(x) / 1000 for x in open(sys.argv[2])] if os.path.exists(sys.argv[2]) else []
c.sort()
cm = "%.1f %.1f %.1f %d" % (c[len(c) // 2], c[0], c[-1], len(c)) if c else "- - - 0"
print("%.0f %.0f %.0f %.0f %s" % (p["50.000000"] / 1e3, p["99.000000"] / 1e3,
                                  p["99.900000"] / 1e3, mx / 1e3, cm))
PY
}

declare -A res
for r in $(seq "$RUNS"); do
    for mode in crash-safe qemu; do
        for with in no yes; do
            res[$mode.$with]+="$(run_one $mode $with);"
        done
    done
done

/usr/bin/python3 - "$SIZE" "$DIRTY" "$RUNS" "$RUNTIME" \
    "crash-safe.no=${res[crash-safe.no]}" "crash-safe.yes=${res[crash-safe.yes]}" \
    "qemu.no=${res[qemu.no]}" "qemu.yes=${res[qemu.yes]}" <<'PY'
import statistics, sys
size, dirty, runs, rt = sys.argv[1:5]
print("export %s, %s dirty, 4K randwrite QD16, %s runs x %s s, medians (min-max)"
      % (size, dirty, runs, rt))
print("| mode | checkpoints | write clat p50 us | p99 us | p99.9 us | max us | checkpoint ms |")
print("|---|---|---|---|---|---|---|")
def mm(v, fmt="%.0f"):
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(v), min(v), max(v))
for arg in sys.argv[5:]:
    key, val = arg.split("=", 1)
    rows = [r.split() for r in val.split(";") if r.strip()]
    cols = list(zip(*rows))
    lat = [mm([float(x) for x in cols[i]]) for i in range(4)]
    mode, with_ = key.split(".")
    if with_ == "yes":
        meds = [float(x) for x in cols[4]]
        mins = [float(x) for x in cols[5]]
        maxs = [float(x) for x in cols[6]]
        n = sum(int(x) for x in cols[7])
        ck = "%.1f (%.1f-%.1f), n=%d" % (statistics.median(meds), min(mins), max(maxs), n)
    else:
        ck = "-"
    print("| %s | %s | %s | %s | %s | %s | %s |" % (mode, "every 1 s" if with_ == "yes" else "none",
                                                 lat[0], lat[1], lat[2], lat[3], ck))
PY
