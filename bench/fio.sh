#!/usr/bin/env bash
# Wall-clock throughput with fio's nbd engine, nbdkit pinned to CPU 0 and
# fio to CPU 1, configurations interleaved (order rotated each run), each
# repeated RUNS times; prints median (min-max) IOPS, nbdkit CPU
# microseconds per I/O, and the paired ratio to nofilter.
#
#   bench/fio.sh randwrite|seqwrite|fsync32|multiconn [RUNS] [RUNTIME]
#
# randwrite: 4K random writes, QD16, memory 1G; each config twice: on a
#   fresh bitmap file, and on one already dirty everywhere (steady state).
# seqwrite:  64K sequential writes, QD16, memory 1G (already dirty).
# fsync32:   4K random writes with a flush every 32 writes, file plugin on
#   a sparse 1G file, bitmap already dirty.
# multiconn: randwrite over 4 connections (4 fio jobs, QD4 each).
set -euo pipefail
export PATH=/usr/bin:$PATH
work=${1:?workload}; RUNS=${2:-5}; RUNTIME=${3:-10}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
w=$(mktemp -d /var/tmp/dbm-bench.XXXXXX); trap 'rm -rf "$w"' EXIT
size=1G

configs=(nofilter qemu crash-safe)
states=(dirty)
[ "$work" = randwrite ] && states=(fresh dirty)

plugin_args () {
    case $work in
    fsync32) [ -f $w/disk.img ] || truncate -s $size $w/disk.img
             echo file $w/disk.img ;;
    *) echo memory $size ;;
    esac
}

run_one () {   # run_one CONFIG STATE -> "IOPS CPU_US_PER_IO"
    local cfg=$1 state=$2 sock=$w/s.sock pid iops t0 t1 ios
    local fargs=() pargs
    pargs=$(plugin_args)
    rm -f $sock
    case $cfg in
    nofilter) fargs=(--filter=nofilter) ;;
    *) fargs=(--filter=$FILTER)
       if [ "$state" = fresh ]; then rm -f $w/bm-$cfg.qcow2; fi
       ;;
    esac
    local extra=()
    [ $cfg != nofilter ] && extra=(bitmap-file=$w/bm-$cfg.qcow2 bitmap-mode=$cfg)
    taskset -c 0 nbdkit -f -U $sock "${fargs[@]}" $pargs "${extra[@]}" 2>/dev/null &
    pid=$!
    for i in $(seq 300); do [ -S $sock ] && break; sleep 0.05; done
    if [ "$state" = dirty ]; then
        # Dirty the whole bitmap first (not timed): one sequential pass,
        # for every config alike so the plugin's storage is in the same state.
        taskset -c 1 fio --name=pre --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
            --rw=write --bs=1M --iodepth=4 --size=$size >/dev/null 2>&1
    fi
    local job=(--name=job --ioengine=nbd --uri="nbd+unix:///?socket=$sock"
               --size=$size --time_based --runtime=$RUNTIME --output-format=json)
    case $work in
    randwrite) job+=(--rw=randwrite --bs=4k --iodepth=16) ;;
    seqwrite) job+=(--rw=write --bs=64k --iodepth=16) ;;
    fsync32) job+=(--rw=randwrite --bs=4k --iodepth=16 --fsync=32) ;;
    multiconn) job+=(--rw=randwrite --bs=4k --iodepth=4 --numjobs=4 --group_reporting) ;;
    esac
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    taskset -c 1 fio "${job[@]}" > $w/out.json 2>/dev/null
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true
    sed -n '/^{/,$p' $w/out.json > $w/clean.json
    /usr/bin/python3 - $w/clean.json $((t1 - t0)) $(getconf CLK_TCK) <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
w = j["jobs"][0]["write"]
ios = w["total_ios"] if "total_ios" in w else w["io_kbytes"]
iops = w["iops"]
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
print("%.0f %.2f" % (iops, ticks / hz * 1e6 / max(ios, 1)))
PY
}

declare -A res cpu
for r in $(seq $RUNS); do
    # Rotate the order each run, so no config always runs in the same
    # slot of a slow drift or of a neighbour's periodic load.
    n=${#configs[@]}; order=()
    for k in $(seq 0 $((n - 1))); do order+=("${configs[$(((k + r) % n))]}"); done
    for s in "${states[@]}"; do
        for c in "${order[@]}"; do
            read -r iops us < <(run_one $c $s)
            res[$c/$s]+="$iops "; cpu[$c/$s]+="$us "
            echo "run $r $c $s: $iops IOPS, $us us/IO" >&2
        done
    done
done

echo "workload $work, $RUNS interleaved runs of ${RUNTIME}s, $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}')"
# "paired": the median over runs of IOPS / nofilter's IOPS in the same
# run, which cancels the VM's slow drift better than a ratio of medians.
printf "| %-22s | %-28s | %-14s | %-10s | %-24s |\n" config "IOPS median (min-max)" "CPU us/IO med" "vs nofilter" "paired median (min-max)"
printf "|%s|%s|%s|%s|%s|\n" ------------------------ ------------------------------ ---------------- ------------ --------------------------
for s in "${states[@]}"; do
    nf=
    for c in "${configs[@]}"; do
        k=$c/$s; [ -n "${res[$k]:-}" ] || continue
        read -r med lo hi < <(echo ${res[$k]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[1], a[NR]}')
        cmed=$(echo ${cpu[$k]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        [ $c = nofilter ] && nf=$med
        ratio=$(awk -v a=$med -v b=${nf:-0} 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
        paired=$(paste <(echo ${res[$k]} | tr ' ' '\n') <(echo ${res[nofilter/$s]} | tr ' ' '\n') |
            awk 'NF == 2 && $2 > 0 { print $1 / $2 }' | sort -n |
            awk '{a[NR]=$1} END { printf "%.3f (%.3f-%.3f)", a[int((NR+1)/2)], a[1], a[NR] }')
        printf "| %-22s | %-28s | %-14s | %-10s | %-24s |\n" "$c ($s)" "$med ($lo-$hi)" "$cmed" "$ratio" "$paired"
    done
done
