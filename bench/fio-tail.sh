#!/usr/bin/env bash
# Where a p99.9 tail comes from: one short fio run (4K randwrite QD16
# --norandommap over `null SIZE`, nbdkit on CPU 0, fio on CPU 1), its
# p99/p99.9/p99.99 after RAMP seconds, and nbdkit's futex calls and
# context switches over 5 s in the middle of the run (perf stat).
#
#   bench/fio-tail.sh nofilter|qemu|crash-safe SIZE [RAMP] [RUNTIME]
#
# EXTRA="KEY=VALUE ..." adds filter keys (e.g. bitmap-granularity=64M),
# FIO_EXTRA fio options (e.g. --rate_iops=150000), NBDKIT_ARGS nbdkit
# options (e.g. "-t 4"), NBDKIT_ENV its environment.
set -euo pipefail
export PATH=/usr/bin:$PATH
cfg=${1:?config}; size=${2:?size}; ramp=${3:-10}; rt=${4:-20}
EXTRA=${EXTRA:-}
top=$(cd "$(dirname "$0")/.." && pwd)
w=$(mktemp -d /var/tmp/dbm-tail.XXXXXX); sock=$w/s.sock; pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$w"' EXIT
if [ "$cfg" = nofilter ]; then
    args=(--filter=nofilter null $size)
else
    args=(--filter=$top/.libs/nbdkit-dirtybitmap-filter.so null $size
          bitmap-file=$w/bm.qcow2 bitmap-mode=$cfg $EXTRA)
fi
taskset -c 0 env ${NBDKIT_ENV:-} nbdkit -f ${NBDKIT_ARGS:-} -U $sock "${args[@]}" 2> $w/err &
pid=$!
for i in $(seq 200); do [ -S $sock ] && break; sleep 0.05; done
taskset -c 1 fio --name=job --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
    --rw=randwrite --bs=4k --iodepth=16 --norandommap --size=$size \
    --time_based --ramp_time=$ramp --runtime=$rt --output-format=json ${FIO_EXTRA:-} \
    > $w/out.json 2> /dev/null &
fio_pid=$!
sleep $(( ramp + rt / 2 > 3 ? ramp + rt / 2 - 3 : 1 ))
perf stat -x, -e syscalls:sys_enter_futex,context-switches -p $pid -- sleep 5 \
    2> $w/perf || true
wait $fio_pid
kill $pid; wait $pid 2>/dev/null || true; pid=
sed -n '/^{/,$p' $w/out.json | /usr/bin/python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
c = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        c[f[2]] = int(f[0])
print("%s %s ramp %ss: %d IOPS, p99 %d us, p99.9 %d us, p99.99 %d us; "
      "in 5 s: %s futex calls, %s context switches" % (
    sys.argv[2], sys.argv[3], sys.argv[4], w["iops"], p["99.000000"] / 1000,
    p["99.900000"] / 1000, p["99.990000"] / 1000,
    c.get("syscalls:sys_enter_futex", "?"), c.get("context-switches", "?")))
' $w/perf "$cfg" "$size" "$ramp"
