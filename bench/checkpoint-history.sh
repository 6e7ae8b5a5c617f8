#!/usr/bin/env bash
# Checkpoint latency as a function of retained history.
#
#   bench/checkpoint-history.sh [RUNS] [SIZE] [WRITES] [POINTS]
#
# nbdkit (null plugin of SIZE, default 16T: the data goes nowhere, only
# the bitmap work is measured) with the filter, a control socket and a
# fresh bitmap file, in both modes (crash-safe default parameters, and
# bitmap-mode=qemu).  One libnbd client then repeats, for k = 1, 2, ...:
# WRITES (default 16384) 4K writes at random 64K-aligned offsets over the
# whole export (1 GiB worth of scattered writes; QD16; fixed seed, a new
# stretch of the sequence for each k), waits for all of them, and takes
# checkpoint ck-k over the control socket, timing that request alone
# (time.monotonic around the line sent and the 'ok' read back).
#
# Checkpoint k is taken with k-1 retained disabled bitmaps (the original
# bitmap and ck-1 .. ck-(k-2), each holding its WRITES scattered writes,
# none removed) plus the enabled one it disables, which holds WRITES
# writes too.  So "retained R" is checkpoint k = R + 1, and the series
# runs to the largest R in POINTS (default "0 8 32": 33 checkpoints).
# At each point: the latency, the file's du and apparent size after the
# checkpoint, and (at every point but the first and last) 'qemu-img check
# -U' of the live file; after the last point nbdkit is stopped and
# 'qemu-img check' (without -U) runs on the file it left.
#
# The whole series runs RUNS times (default 3), the modes interleaved, a
# fresh file each time.  Prints per point and mode the median latency
# (min-max over runs), du and apparent size (medians), the qemu-img check
# results, and the ratio of the median at the largest point to the one
# at 0 (the target is <= 2).  Also every checkpoint's median latency, on
# one line per mode, to show the shape, and each run's latencies at the
# points (this VM is shared: a slow run shows there).  ~5.2 min per run
# (both modes) on a 2-vCPU VM.
#
# Last, the filesystem's floor for the same rewrite (FLOOR_RUNS times,
# default 3, median; RUNS=0 runs only this): at each point, a fresh
# sparse file of R+1 bitmaps' size gets the very pages R+1 bitmaps of
# WRITES scattered bits occupy (one 4K pwrite each, 64K granularity),
# fsync, then rename over an older file and close the last descriptor of
# the replaced one, which frees its blocks: the old file holds the pages
# of R bitmaps (qemu mode: its enabled bitmap was never written, no
# flush) or R+1 (crash-safe: the enabled bitmap's pre-marked regions).
set -euo pipefail
export PATH=/usr/bin:$PATH
RUNS=${1:-3}; SIZE=${2:-16T}; WRITES=${3:-16384}; POINTS=${4:-0 8 32}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
[ -f "$FILTER" ] || { echo "$FILTER: not built (run make)" >&2; exit 1; }
w=$(mktemp -d /var/tmp/dbm-ckhist.XXXXXX)
cleanup () {   # series runs in a subshell: its nbdkit's pid is in a file
    if [ -s "$w/nbdkit.pid" ]; then kill "$(cat "$w/nbdkit.pid")" 2>/dev/null || true; sleep 0.5; fi
    rm -rf "$w"
}
trap cleanup EXIT

series () {   # series MODE RUN -> lines "k latency_ms du_kib apparent_bytes check"
    local mode=$1 run=$2 sock=$w/s.sock ctl=$w/ctl bm=$w/bm.qcow2 rc pid
    rm -f $sock $ctl $bm
    nbdkit -f -U $sock --filter=$FILTER null $SIZE \
        bitmap-file=$bm bitmap-control=$ctl bitmap-mode=$mode 2>$w/nbdkit.log &
    pid=$!; echo $pid > $w/nbdkit.pid
    for i in $(seq 600); do [ -S $sock ] && break; sleep 0.01; done
    /usr/bin/python3 - "$sock" "$ctl" "$bm" "$WRITES" "$POINTS" "$run" <<'PY' > $w/series.out && rc=0 || rc=$?
import nbd, os, random, socket, subprocess, sys, time
sock, ctl, bm, writes, points, run = sys.argv[1:7]
writes = int(writes)
points = sorted(int(p) for p in points.split())
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sock)
size = h.get_size()
# The control socket appears once nbdkit serves; the file exists after
# the first connection (above).
for i in range(600):
    if os.path.exists(ctl):
        break
    time.sleep(0.01)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(ctl)
cf = c.makefile("rb")
def control(line):
    c.sendall(line.encode() + b"\n")
    reply = cf.readline().decode().strip()
    if reply != "ok":
        sys.exit("control %r: %r" % (line, reply))
rng = random.Random(1000 + int(run))   # fixed per run, the same in both modes
buf = b"w" * 4096
granules = size // 65536
for k in range(1, points[-1] + 2):
    for i in range(writes):
        h.aio_pwrite(buf, rng.randrange(0, granules) * 65536)
        while h.aio_in_flight() >= 16:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    t = time.monotonic()
    control("checkpoint ck-%d" % k)
    ms = (time.monotonic() - t) * 1000
    st = os.stat(bm)
    check = "-"
    retained = k - 1
    if retained in points and retained not in (points[0], points[-1]):
        r = subprocess.run(["qemu-img", "check", "-U", bm],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        check = "ok" if r.returncode == 0 else "rc%d" % r.returncode
        if r.returncode:
            sys.stderr.write(r.stdout.decode())
    print(k, "%.2f" % ms, st.st_blocks // 2, st.st_size, check, flush=True)
h.shutdown()
c.close()
PY
    kill $pid; wait $pid 2>/dev/null || true; rm -f $w/nbdkit.pid
    [ $rc -eq 0 ] || { echo "series $mode run $run failed:" >&2; cat $w/nbdkit.log >&2; exit 1; }
    rc=0; qemu-img check $bm > $w/check.out 2>&1 || rc=$?
    [ $rc -eq 0 ] || { echo "qemu-img check ($mode, run $run) exit $rc:" >&2; cat $w/check.out >&2; }
    # The last line's check column: the check of the stopped file.
    /usr/bin/python3 -c '
import sys
lines = open(sys.argv[1]).read().split("\n")
lines = [l for l in lines if l]
f = lines[-1].split(); f[4] = "ok" if sys.argv[2] == "0" else "rc" + sys.argv[2]
lines[-1] = " ".join(f)
print("\n".join(lines))' $w/series.out $rc
}

floor () {   # the same page writes + fsync + freeing of the replaced file
    /usr/bin/python3 - "$SIZE" "$WRITES" "$POINTS" "${FLOOR_RUNS:-3}" "$w" <<'PY'
import os, random, statistics, sys, time
units = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
s, writes, points, runs, w = sys.argv[1:6]
size = int(s[:-1]) << units[s[-1]] if s[-1] in units else int(s)
writes, runs = int(writes), int(runs)
points = sorted(int(p) for p in points.split())
bpages = (size // 65536 // 8 + 4095) // 4096     # pages of one bitmap
page = b"\xff" * 4096
rng = random.Random(1)
def write_file(path, nb):   # -> fd, pages, pwrite s, fsync s
    t = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, nb * bpages * 4096)
    n = 0
    for b in range(nb):
        for p in sorted({rng.randrange(0, size // 65536) >> 15 for i in range(writes)}):
            os.pwrite(fd, page, (b * bpages + p) * 4096)
            n += 1
    t1 = time.monotonic()
    os.fsync(fd)
    return fd, n, t1 - t, time.monotonic() - t1
res = {}
for r in range(runs):
    for p in points:
        for old in (p, p + 1):
            oldfd = write_file(w + "/old", old)[0] if old else None
            fd, n, tw, ts = write_file(w + "/new", p + 1)
            os.rename(w + "/new", w + "/old")
            t = time.monotonic()
            if oldfd is not None:
                os.close(oldfd)
            tc = time.monotonic() - t
            os.close(fd)
            os.unlink(w + "/old")
            res.setdefault((p, old), []).append((n, tw, ts, tc))
print("floor: the same pages pwritten + fsync into a fresh file, renamed over a file "
      "with the pages of R (R+1) bitmaps, close of the replaced file; %d runs, median s" % runs)
print("| retained R | pages written | pwrite s | fsync s | close replaced, R bitmaps | total | close replaced, R+1 bitmaps | total |")
print("|---|---|---|---|---|---|---|---|")
for p in points:
    a, b = res[(p, p)], res[(p, p + 1)]
    med = lambda v, i: statistics.median(x[i] for x in v)
    tw, ts = med(a + b, 1), med(a + b, 2)
    print("| %d | %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |"
          % (p, med(a, 0), tw, ts, med(a, 3), tw + ts + med(a, 3), med(b, 3), tw + ts + med(b, 3)))
PY
}

if [ "$RUNS" -eq 0 ]; then floor; exit 0; fi

declare -A res
t0=$(date +%s)
for r in $(seq "$RUNS"); do
    for mode in crash-safe qemu; do
        out=$(series $mode $r) || exit 1
        res[$mode]+="$(echo "$out" | tr '\n' ',');"
        echo "run $r $mode done at +$(( $(date +%s) - t0 )) s" >&2
    done
done

/usr/bin/python3 - "$SIZE" "$WRITES" "$RUNS" "$POINTS" \
    "crash-safe=${res[crash-safe]}" "qemu=${res[qemu]}" <<'PY'
import statistics, sys
size, writes, runs, points = sys.argv[1:5]
points = sorted(int(p) for p in points.split())
print("export %s (null), %s scattered 4K writes per checkpoint interval (QD16), "
      "%s runs, median (min-max) over runs" % (size, writes, runs))
print("| retained disabled bitmaps | mode | checkpoint ms | du MiB | apparent MiB | qemu-img check |")
print("|---|---|---|---|---|---|")
data = {}
for arg in sys.argv[5:]:
    mode, val = arg.split("=", 1)
    runs_ = []
    for series in val.split(";"):
        if not series.strip():
            continue
        rows = {}
        for line in series.split(","):
            if line.strip():
                k, ms, du, ap, ck = line.split()
                rows[int(k) - 1] = (float(ms), int(du), int(ap), ck)
        runs_.append(rows)
    data[mode] = runs_
for p in points:
    for mode, runs_ in data.items():
        ms = [r[p][0] for r in runs_]
        du = statistics.median(r[p][1] for r in runs_) / 1024
        ap = statistics.median(r[p][2] for r in runs_) / 2**20
        cks = [r[p][3] for r in runs_]
        ck = "-" if all(c == "-" for c in cks) else \
            ("no errors (%d/%d)" % (cks.count("ok"), len(cks)) if all(c == "ok" for c in cks)
             else "ERRORS: " + " ".join(cks))
        if p == points[-1]:
            ck += " after stop"
        elif p != points[0]:
            ck += " live, -U"
        print("| %d | %s | %.1f (%.1f-%.1f) | %.1f | %.1f | %s |"
              % (p, mode, statistics.median(ms), min(ms), max(ms), du, ap, ck))
for mode, runs_ in data.items():
    m0 = statistics.median(r[points[0]][0] for r in runs_)
    mn = statistics.median(r[points[-1]][0] for r in runs_)
    print("%s: median at %d retained / at %d = %.2f (target <= 2: %s)"
          % (mode, points[-1], points[0], mn / m0, "met" if mn <= 2 * m0 else "NOT met"))
for mode, runs_ in data.items():
    for i, r in enumerate(runs_):
        print("%s run %d, ms at retained %s: %s" % (mode, i + 1, "/".join(map(str, points)),
                                                   " ".join("%.0f" % r[p][0] for p in points)))
for mode, runs_ in data.items():
    print("%s, median ms by retained 0..%d: %s" % (mode, points[-1], " ".join(
        "%.0f" % statistics.median(r[p][0] for r in runs_) for p in range(points[-1] + 1))))
PY
floor
