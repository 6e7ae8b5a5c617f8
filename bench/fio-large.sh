#!/usr/bin/env bash
# Large random workload: fio 4K random writes, QD16, --norandommap, over
# `nbdkit null SIZE` (nothing stored: the filter's cost alone), nbdkit
# pinned to CPU 0 and fio to CPU 1, configurations interleaved (order
# rotated each run), each repeated RUNS times.  Prints, per config, the
# median (min-max) IOPS, the paired ratio to nofilter in the same run,
# the median p99.9 completion latency and its paired ratio, nbdkit's CPU
# time per I/O (utime + stime; less sensitive than wall-clock figures to
# other load on the machine, blind to time spent waiting); and for the
# filter configs the price of a crash: the dirty bytes in memory just
# before a kill -9 (the truly dirty area, from the control socket's
# status) next to what the file says after it (`dirtybitmap recover`,
# which reports the bytes dirty and how many of them lie in pre-marked
# regions; qemu mode: in_use, so the whole export).
#
#   bench/fio-large.sh SIZE uniform|zipf [RUNS] [RUNTIME] [CONFIG...]
#
# CONFIG is nofilter, qemu, crash-safe, or LABEL=KEY=VALUE[,KEY=VALUE...]
# for crash-safe with extra filter keys, e.g.
#   i5=bitmap-persist-interval=5   r64M=bitmap-region=64M
# Default configs: nofilter crash-safe qemu.  Keep RUNTIME >= 3 persist
# intervals (>= 95 s at the default 30 s) so that every run crosses the
# persist cycle several times.
set -euo pipefail
export PATH=/usr/bin:$PATH
size=${1:?size}; dist=${2:?uniform|zipf}; RUNS=${3:-3}; RUNTIME=${4:-100}
shift $(( $# < 4 ? $# : 4 ))
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(nofilter crash-safe qemu)
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
CLI=$top/dirtybitmap
w=$(mktemp -d /var/tmp/dbm-large.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$w"' EXIT

run_one () {  # CONFIG -> "IOPS P999_US CPU_US TRUE_DIRTY FILE_DIRTY PREMARKED"
    local cfg=$1 sock=$w/s.sock ctl=$w/ctl bm=$w/bm.qcow2
    local fargs=() keys=() mode=crash-safe
    rm -f $sock $ctl $bm
    case $cfg in
    nofilter) fargs=(--filter=nofilter) ;;
    qemu) mode=qemu ;;
    crash-safe) ;;
    *=*) IFS=, read -r -a keys <<< "${cfg#*=}" ;;
    *) echo "unknown config $cfg" >&2; exit 1 ;;
    esac
    [ $cfg = nofilter ] ||
        fargs=(--filter=$FILTER null $size bitmap-file=$bm bitmap-mode=$mode
               bitmap-control=$ctl "${keys[@]}")
    [ $cfg = nofilter ] && fargs+=(null $size)
    taskset -c 0 nbdkit -f -U $sock "${fargs[@]}" 2>$w/err &
    pid=$!
    for i in $(seq 300); do [ -S $sock ] && break; sleep 0.05; done
    local job=(--name=job --ioengine=nbd --uri="nbd+unix:///?socket=$sock"
               --rw=randwrite --bs=4k --iodepth=16 --norandommap
               --size=$size --time_based --runtime=$RUNTIME
               --output-format=json)
    [ $dist = zipf ] && job+=(--random_distribution=zipf:1.2)
    local t0 t1
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    taskset -c 1 fio "${job[@]}" > $w/out.json 2>/dev/null
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    local true_dirty=- file_dirty=- pre=-
    if [ $cfg != nofilter ]; then
        true_dirty=$("$CLI" status $ctl | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
print(sum(b["dirty_bytes"] for b in j["bitmaps"] if b["tracked"]))')
        kill -9 $pid; wait $pid 2>/dev/null || true; pid=
        # "...: N bytes dirty, of which at most M in regions pre-marked";
        # qemu mode: in_use, marked entirely dirty.
        "$CLI" recover $bm > $w/rec 2>&1 || true
        if grep -q "pre-marked" $w/rec; then
            file_dirty=$(sed -n 's/.*: \([0-9]*\) bytes dirty, of which.*/\1/p' $w/rec | head -1)
            pre=$(sed -n 's/.*at most \([0-9]*\) in regions pre-marked.*/\1/p' $w/rec | head -1)
        elif grep -q "in use" $w/rec; then
            file_dirty=$("$CLI" info $bm --json | /usr/bin/python3 -c '
import json, sys
j = json.load(sys.stdin)
print(sum(b.get("dirty_bytes", 0) for b in j["bitmaps"]))')
            pre=$file_dirty
        fi
    else
        kill $pid; wait $pid 2>/dev/null || true; pid=
    fi
    sed -n '/^{/,$p' $w/out.json > $w/clean.json
    /usr/bin/python3 - $w/clean.json $((t1 - t0)) $(getconf CLK_TCK) \
        $true_dirty $file_dirty $pre <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
w = j["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
cpu = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / max(w.get("total_ios", 0) or 1, 1)
print("%.0f %.0f %.2f %s %s %s" % (w["iops"], p["99.900000"] / 1000, cpu,
                                    *sys.argv[4:7]))
PY
}

declare -A iops lat cpu tdirty fdirty pre
for r in $(seq $RUNS); do
    n=${#configs[@]}; order=()
    for k in $(seq 0 $((n - 1))); do order+=("${configs[$(((k + r) % n))]}"); done
    for c in "${order[@]}"; do
        read -r i l u td fd pm < <(run_one $c)
        iops[$c]+="$i "; lat[$c]+="$l "; cpu[$c]+="$u "
        tdirty[$c]+="$td "; fdirty[$c]+="$fd "; pre[$c]+="$pm "
        echo "run $r $c: $i IOPS, p99.9 $l us, $u CPU us/IO, dirty in memory $td, in file after kill -9 $fd (pre-marked <= $pm)" >&2
    done
done

med () { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[1], a[NR]}'; }
paired () {  # paired ratio of list $1 to list $2: "median (min-max)"
    paste <(echo $1 | tr ' ' '\n') <(echo $2 | tr ' ' '\n') |
        awk 'NF == 2 && $2 > 0 { print $1 / $2 }' | sort -n |
        awk '{a[NR]=$1} END { if (NR) printf "%.3f (%.3f-%.3f)", a[int((NR+1)/2)], a[1], a[NR]; else print "-" }'
}
gib () { awk -v b=$1 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 2^30 }'; }

echo "null $size, $dist, 4K randwrite QD16 --norandommap, $RUNS interleaved runs of ${RUNTIME}s, $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}'), build $(git -C $top rev-parse --short HEAD 2>/dev/null || echo ?), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
printf "| %-34s | %-26s | %-22s | %-20s | %-22s | %-12s | %-14s | %-14s | %-14s |\n" config "IOPS median (min-max)" "paired vs nofilter" "p99.9 us med (min-max)" "p99.9 paired" "CPU us/IO" "dirty GiB (mem)" "after kill -9" "pre-marked <="
printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n" ------------------------------------ ---------------------------- ------------------------ ---------------------- ------------------------ -------------- ---------------- ---------------- ----------------
for c in "${configs[@]}"; do
    read -r m lo hi < <(echo ${iops[$c]} | med)
    read -r lm llo lhi < <(echo ${lat[$c]} | med)
    read -r um ulo uhi < <(echo ${cpu[$c]} | med)
    pi=- pl=-
    if [ -n "${iops[nofilter]:-}" ]; then
        pi=$(paired "${iops[$c]}" "${iops[nofilter]}")
        pl=$(paired "${lat[$c]}" "${lat[nofilter]}")
    fi
    td=- fd=- pm=-
    if [ $c != nofilter ]; then
        td=$(gib $(echo ${tdirty[$c]} | med | cut -d' ' -f1))
        fd=$(gib $(echo ${fdirty[$c]} | med | cut -d' ' -f1))
        pm=$(gib $(echo ${pre[$c]} | med | cut -d' ' -f1))
    fi
    printf "| %-34s | %-26s | %-22s | %-20s | %-22s | %-12s | %-14s | %-14s | %-14s |\n" "$c" "$m ($lo-$hi)" "$pi" "$lm ($llo-$lhi)" "$pl" "$um" "$td" "$fd" "$pm"
done
