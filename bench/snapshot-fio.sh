#!/usr/bin/env bash
# Point-in-time snapshots (copy-before-write): the write cost of a live
# snapshot, side by side with QEMU's fleecing, in the same run.
#
#   bench/snapshot-fio.sh [RUNS] [RUNTIME]      (defaults 3 and 6 s;
#                                                 also env RUNS, RUNTIME)
#   env PIN=0       do not pin (default: servers on CPU 0, fio on CPU 1)
#   env PERF=1      after the runs, one more (b) run under perf record
#   env PROBE=0     skip the map-memory probe
#
# fio 4K randwrite QD16 (ioengine=nbd, --norandommap, --direct=1) for
# RUNTIME seconds on a raw 1G file (sparse, then filled once with random
# data so every copy reads and stores real data), against a server pinned
# to CPU 0.  Each run starts a fresh server per configuration, in an order
# rotated every run:
#
#   nofilter   nbdkit file --filter=nofilter (reference)
#   a          nbdkit file + dirtybitmap: first connection, `checkpoint`
#              (no snapshot), then the timed run (the tracker starts on a
#              fresh enabled bitmap, exactly as in (b))
#   b          the same with `checkpoint NAME --snapshot` right before the
#              timed run: the first writes after the cut (every write to a
#              granule not yet preserved copies 64K first); then status
#              (preserved_bytes, store_bytes, map_bytes, state) and release
#   a-pass     (a) then one sequential pass writing every granule (fio 1M
#              writes over the whole disk, not timed), then the timed run
#   c          (b) then the same pass, checked to have preserved every
#              granule (preserved_bytes == size), then the timed run: a
#              live snapshot with nothing left to copy
#   q-plain    qemu-storage-daemon, file node exported writable
#   q-cbw      qemu-storage-daemon with copy-before-write + snapshot-access
#              (QEMU's fleecing), fresh process and fresh sparse fleece.raw
#              per run: its first writes after the cut
#   q-cbw-pass q-cbw after the same sequential pass over `live`
#
# `sync` runs before every timed run (a pass leaves up to 1 GiB of dirty
# page cache to write back).  Reports per config median (min-max) IOPS,
# p99 and p99.9 completion latency (fio JSON), server CPU us per I/O, and
# the paired ratios per run and their median.
set -euo pipefail
export PATH=/usr/bin:$PATH
RUNS=${1:-${RUNS:-3}}; RUNTIME=${2:-${RUNTIME:-6}}
PIN=${PIN:-1}; PERF=${PERF:-0}; PROBE=${PROBE:-1}
top=$(cd "$(dirname "$0")/.." && pwd)
size=1G; bytes=$((1 << 30))

for t in fio nbdkit nbdsh qemu-storage-daemon python3 taskset; do
    command -v $t >/dev/null || { echo "snapshot-fio: $t not found (qemu-storage-daemon: apt-get install qemu-system-common)" >&2; exit 1; }
done

w=$(mktemp -d /var/tmp/dbm-snapfio.XXXXXX)
pid=
stop () {   # stop the current server (SIGTERM, then wait for it)
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop; rm -rf "$w"' EXIT
trap 'exit 130' INT TERM

# Take one copy of the build, so that a rebuild in the tree during the
# run cannot change the filter between configurations.
for i in $(seq 120); do
    [ -f "$top/.libs/nbdkit-dirtybitmap-filter.so" ] &&
        cp "$top/.libs/nbdkit-dirtybitmap-filter.so" "$w/filter.so" 2>/dev/null && break
    sleep 1
done
[ -f "$w/filter.so" ] || { echo "snapshot-fio: no $top/.libs/nbdkit-dirtybitmap-filter.so" >&2; exit 1; }
FILTER=$w/filter.so

if [ "$PIN" = 1 ]; then SRV=(taskset -c 0); CLI=(taskset -c 1); else SRV=(); CLI=(); fi

cat > "$w/ctl.py" <<'PY'
import json, socket, sys
def ctl(path, line):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((line + "\n").encode())
    r = b""
    while not r.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            break
        r += d
    s.close()
    return r.decode().strip()
if __name__ == "__main__":
    path, cmd = sys.argv[1], sys.argv[2]
    if cmd == "snapstatus":
        # "preserved_bytes store_bytes map_bytes state granularity size" of
        # snapshot NAME, or "none"
        st = json.loads(ctl(path, "status"))
        for s in st["snapshots"]:
            if s["name"] == sys.argv[3]:
                print(s["preserved_bytes"], s["store_bytes"], s["map_bytes"],
                      s["state"], s["granularity"], s["size"])
                break
        else:
            print("none")
    else:
        r = ctl(path, " ".join(sys.argv[2:]))
        print(r)
        sys.exit(0 if r == "ok" or r.startswith("{") else 1)
PY
ctl () { python3 "$w/ctl.py" "$w/ctl" "$@"; }

# fio JSON -> "IOPS P50_US P99_US P99.9_US IOS" (fio prints a line before
# the JSON: skip to the first line starting with '{').
cat > "$w/fiojson.py" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
lines = text.splitlines(True)
start = next(i for i, l in enumerate(lines) if l.startswith("{"))
j = json.loads("".join(lines[start:]))
wr = j["jobs"][0]["write"]
p = wr["clat_ns"]["percentile"]
print("%.0f %.1f %.1f %.1f %d" % (wr["iops"], p["50.000000"] / 1e3,
      p["99.000000"] / 1e3, p["99.900000"] / 1e3, wr["total_ios"]))
PY

wait_sock () { for i in $(seq 400); do [ -S "$1" ] && return 0; sleep 0.05; done
               echo "snapshot-fio: no socket $1" >&2; cat "$w/server.err" >&2; exit 1; }

start_nbdkit () {   # start_nbdkit nofilter|filter
    rm -f "$w/s.sock" "$w/ctl" "$w/bm.qcow2"
    if [ "$1" = nofilter ]; then
        "${SRV[@]}" nbdkit -f -U "$w/s.sock" --filter=nofilter file "$w/disk.raw" 2>"$w/server.err" &
        pid=$!; wait_sock "$w/s.sock"
    else
        "${SRV[@]}" nbdkit -f -U "$w/s.sock" --filter="$FILTER" file "$w/disk.raw" \
            bitmap-file="$w/bm.qcow2" bitmap-control="$w/ctl" \
            bitmap-snapshot-dir="$w" 2>"$w/server.err" &
        pid=$!; wait_sock "$w/s.sock"; wait_sock "$w/ctl"
        # A checkpoint needs a first connection (it creates the bitmap file).
        nbdsh -u "nbd+unix:///?socket=$w/s.sock" -c 'h.get_size()'
    fi
    URI="nbd+unix:///?socket=$w/s.sock"
}

QSD_FLEECE=(--blockdev driver=file,node-name=tgt,filename=@W@/fleece.raw
    --blockdev driver=copy-before-write,node-name=cbw,file=disk,target=tgt
    --blockdev driver=snapshot-access,node-name=snap,file=cbw)
start_qsd () {      # start_qsd plain|cbw
    local args=(--blockdev "driver=file,node-name=disk,filename=$w/disk.raw")
    rm -f "$w/q.sock" "$w/fleece.raw"
    if [ "$1" = cbw ]; then
        truncate -s $size "$w/fleece.raw"      # sparse, as large as disk.raw
        args+=("${QSD_FLEECE[@]//@W@/$w}")
        args+=(--nbd-server "addr.type=unix,addr.path=$w/q.sock"
               --export type=nbd,id=e1,node-name=cbw,name=live,writable=on
               --export type=nbd,id=e2,node-name=snap,name=snap)
    else
        args+=(--nbd-server "addr.type=unix,addr.path=$w/q.sock"
               --export type=nbd,id=e1,node-name=disk,name=live,writable=on)
    fi
    "${SRV[@]}" qemu-storage-daemon "${args[@]}" 2>"$w/server.err" &
    pid=$!; wait_sock "$w/q.sock"
    URI="nbd+unix:///live?socket=$w/q.sock"
}

seqpass () {        # write every granule once (not timed)
    "${CLI[@]}" fio --name=pass --ioengine=nbd --uri="$URI" --rw=write --bs=1M \
        --iodepth=4 --size=$size --direct=1 >/dev/null 2>&1
}

timed () {          # timed -> "IOPS P50 P99 P99.9 CPU_US_PER_IO"
    local t0 t1 r
    sync
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    "${CLI[@]}" fio --name=job --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
        --iodepth=16 --size=$size --norandommap --direct=1 --time_based \
        --runtime="$RUNTIME" --output-format=json > "$w/out.json" 2>"$w/fio.err"
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    read -r iops p50 p99 p999 ios < <(python3 "$w/fiojson.py" "$w/out.json")
    echo "$iops $p50 $p99 $p999 $(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$ios" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / (n > 0 ? n : 1) }')"
}

snapcheck () {      # snapcheck NAME WANT_ALL -> "preserved store map state"
    local s; s=$(python3 "$w/ctl.py" "$w/ctl" snapstatus "$1")
    read -r pres store map state gran ssize <<<"$s"
    if [ "$state" != active ]; then
        echo "snapshot-fio: snapshot $1 is $s (want active)" >&2; exit 1
    fi
    if [ "$2" = all ] && [ "$pres" != "$ssize" ]; then
        echo "snapshot-fio: pass preserved $pres of $ssize bytes" >&2; exit 1
    fi
    echo "$pres $store $map $state"
}

run_one () {        # run_one CONFIG RUN: appends one line to $w/results
    local cfg=$1 r=$2 res extra="-" name=ck$2
    case $cfg in
    nofilter) start_nbdkit nofilter; res=$(timed) ;;
    a)        start_nbdkit filter; sync; ctl checkpoint $name >/dev/null; res=$(timed) ;;
    a-pass)   start_nbdkit filter; ctl checkpoint $name >/dev/null; seqpass; res=$(timed) ;;
    b)        start_nbdkit filter; sync; ctl checkpoint $name --snapshot >/dev/null
              res=$(timed); extra=$(snapcheck $name some | tr ' ' ,)
              ctl release $name >/dev/null ;;
    c)        start_nbdkit filter; ctl checkpoint $name --snapshot >/dev/null
              seqpass; snapcheck $name all >/dev/null
              res=$(timed); extra=$(snapcheck $name all | tr ' ' ,)
              ctl release $name >/dev/null ;;
    q-plain)  start_qsd plain; res=$(timed) ;;
    q-cbw)    start_qsd cbw; res=$(timed)
              extra=$(( $(stat -c %b "$w/fleece.raw") * 512 )) ;;
    q-cbw-pass) start_qsd cbw; seqpass; res=$(timed)
              extra=$(( $(stat -c %b "$w/fleece.raw") * 512 )) ;;
    esac
    stop
    rm -f "$w/fleece.raw"
    echo "$r $cfg $res $extra" >> "$w/results"
    echo "run $r $cfg $res $extra" >&2
}

echo "snapshot-fio: $(date -u +%FT%TZ), $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}'), $(qemu-storage-daemon --version | head -1), $(fio --version)" >&2
echo "snapshot-fio: filter $(md5sum < "$FILTER" | cut -c1-12) (.so of $(stat -c %y "$top/.libs/nbdkit-dirtybitmap-filter.so" | cut -c1-19)), RUNS=$RUNS RUNTIME=${RUNTIME}s PIN=$PIN" >&2

# The disk: sparse 1G, then filled once with random data (not zeroes, so
# that every copy stores a granule instead of noting a zero one).
truncate -s $size "$w/disk.raw"
dd if=/dev/urandom of="$w/disk.raw" bs=1M count=1024 conv=notrunc,fsync status=none

configs=(nofilter a b a-pass c q-plain q-cbw q-cbw-pass)
: > "$w/results"
for r in $(seq "$RUNS"); do
    n=${#configs[@]}
    for k in $(seq 0 $((n - 1))); do
        cfg=${configs[$(((k + r) % n))]}
        # Not in a $(...) subshell: the EXIT trap must see the server's pid.
        run_one "$cfg" "$r"
    done
done

python3 - "$w/results" "$RUNS" "$RUNTIME" "$PIN" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
runs, runtime, pin = sys.argv[2], sys.argv[3], sys.argv[4]
R = {}        # R[cfg][run] = dict
for r, cfg, iops, p50, p99, p999, cpu, extra in rows:
    R.setdefault(cfg, {})[int(r)] = dict(iops=float(iops), p50=float(p50),
        p99=float(p99), p999=float(p999), cpu=float(cpu), extra=extra)
names = {
    "nofilter": "nbdkit file, --filter=nofilter",
    "a": "(a) nbdkit + filter, no snapshot",
    "b": "(b) + live full snapshot, first writes after the cut",
    "a-pass": "(a') (a) after a sequential pass",
    "c": "(c) + live snapshot, every granule preserved",
    "q-plain": "qsd plain (file node)",
    "q-cbw": "qsd cbw, first writes after the cut",
    "q-cbw-pass": "qsd cbw, after a sequential pass",
}
def mm(v, f="%.0f"):
    return (f + " (" + f + "-" + f + ")") % (st.median(v), min(v), max(v))
print("4K randwrite QD16, 1G raw file, %s interleaved runs x %s s, %s" %
      (runs, runtime, "servers on CPU 0, fio on CPU 1" if pin == "1" else "unpinned"))
print()
print("| config | IOPS median (min-max) | p99 us | p99.9 us | server CPU us/IO |")
print("|---|---|---|---|---|")
for c in names:
    if c not in R:
        continue
    d = R[c].values()
    print("| %s | %s | %s | %s | %s |" % (names[c], mm([x["iops"] for x in d]),
          mm([x["p99"] for x in d]), mm([x["p999"] for x in d]),
          "%.2f" % st.median([x["cpu"] for x in d])))
print()
ratios = [("(b)/(a)", "b", "a"), ("(c)/(a)", "c", "a"), ("(c)/(a')", "c", "a-pass"),
          ("(a')/(a)", "a-pass", "a"), ("(a)/nofilter", "a", "nofilter"),
          ("qemu cbw/plain", "q-cbw", "q-plain"),
          ("qemu cbw-pass/plain", "q-cbw-pass", "q-plain"),
          ("(b)/qemu-cbw", "b", "q-cbw"), ("(c)/qemu-cbw-pass", "c", "q-cbw-pass"),
          ("q-plain/nofilter", "q-plain", "nofilter")]
rr = list(sorted(R.get("a", {})))
print("| paired ratio | " + " | ".join("run %d" % i for i in rr) + " | median |")
print("|---|" + "---|" * (len(rr) + 1))
P = {}
for label, x, y in ratios:
    v = [R[x][i]["iops"] / R[y][i]["iops"] for i in rr if i in R.get(x, {}) and i in R.get(y, {})]
    P[label] = dict(zip(rr, v))
    print("| %s | %s | **%.3f** |" % (label, " | ".join("%.3f" % t for t in v), st.median(v)))
print()
# The same pairs in server CPU time per I/O (utime + stime of the whole
# server process over the timed run / I/Os): less sensitive than IOPS to
# how much of CPU 0 other processes take, on a shared machine.
print("| paired ratio of server CPU us/IO | " + " | ".join("run %d" % i for i in rr) + " | median |")
print("|---|" + "---|" * (len(rr) + 1))
for label, x, y in ratios:
    v = [R[x][i]["cpu"] / R[y][i]["cpu"] for i in rr if i in R.get(x, {}) and i in R.get(y, {})]
    print("| %s | %s | **%.3f** |" % (label, " | ".join("%.3f" % t for t in v), st.median(v)))
print()
# Targets, per run and on the medians of the paired ratios.
b_vs_q = [P["(b)/qemu-cbw"][i] >= 1 for i in rr]
rel = [P["(b)/(a)"][i] >= P["qemu cbw/plain"][i] for i in rr]
c_ok = [P["(c)/(a)"][i] >= 0.97 for i in rr]
print("targets: (b) >= qemu cbw IOPS: %d/%d runs, median ratio %.3f" %
      (sum(b_vs_q), len(rr), st.median(P["(b)/qemu-cbw"].values())))
print("         (b)/(a) >= qemu cbw/plain: %d/%d runs, medians %.3f vs %.3f" %
      (sum(rel), len(rr), st.median(P["(b)/(a)"].values()), st.median(P["qemu cbw/plain"].values())))
print("         (c)/(a) >= 0.97: %d/%d runs, median %.3f ((c)/(a') %.3f)" %
      (sum(c_ok), len(rr), st.median(P["(c)/(a)"].values()), st.median(P["(c)/(a')"].values())))
print()
print("| snapshot after its timed run | run | preserved bytes (granules) | store bytes | map_bytes | map bytes / preserved granule | state |")
print("|---|---|---|---|---|---|---|")
for c in ("b", "c"):
    for i in sorted(R.get(c, {})):
        pres, store, mapb, state = R[c][i]["extra"].split(",")
        g = int(pres) // 65536
        print("| (%s) | %d | %s (%d) | %s | %s | %.2f | %s |" % (c, i, pres, g, store, mapb,
              int(mapb) / g if g else 0, state))
for c in ("q-cbw", "q-cbw-pass"):
    for i in sorted(R.get(c, {})):
        print("| %s (fleece.raw allocated) | %d | %s | | | | |" % (c, i, R[c][i]["extra"]))
PY

if [ "$PROBE" = 1 ]; then
    # Map memory against preserved granules: a sparse 16G export (reads of
    # holes are zeroes, so nothing is stored, but the map records each
    # granule), one snapshot, granules preserved by 4K writes: dense
    # (contiguous granules), then scattered (one granule per 512, i.e. one
    # per leaf of the map), map_bytes read after each step.
    rm -f "$w/disk.raw"; truncate -s 16G "$w/disk.raw"
    start_nbdkit filter
    ctl checkpoint probe --snapshot >/dev/null
    echo
    echo "map probe (16 GiB sparse export, 262144 granules of 64K; leaf = 512 granules, 2 KiB; block = 512 leaves, 4 KiB):"
    echo
    echo "| pattern | preserved granules | map_bytes | map bytes / preserved granule |"
    echo "|---|---|---|---|"
    nbdsh -u "$URI" -c "
import sys
sys.path.insert(0, '$w')
from ctl import ctl
import json
buf = b'x' * 4096
G = 65536
def show(label):
    s = json.loads(ctl('$w/ctl', 'status'))['snapshots'][0]
    g = s['preserved_bytes'] // G
    print('| %s | %d | %d | %.1f |' % (label, g, s['map_bytes'], s['map_bytes'] / g if g else 0))
show('none')
done = 0
for n in (1, 512, 4096, 32768):
    for k in range(done, n):
        h.pwrite(buf, k * G)
    done = n
    show('dense, granules 0..%d' % (n - 1))
h.flush()
" 2>&1
    ctl release probe >/dev/null
    ctl checkpoint probe2 --snapshot >/dev/null
    nbdsh -u "$URI" -c "
import sys
sys.path.insert(0, '$w')
from ctl import ctl
import json
buf = b'x' * 4096
G = 65536
def show(label):
    s = json.loads(ctl('$w/ctl', 'status'))['snapshots'][0]
    g = s['preserved_bytes'] // G
    print('| %s | %d | %d | %.1f |' % (label, g, s['map_bytes'], s['map_bytes'] / g if g else 0))
done = 0
for n in (1, 64, 512):
    for k in range(done, n):
        h.pwrite(buf, k * 512 * G)
    done = n
    show('scattered, one per leaf, %d leaves' % n)
" 2>&1
    ctl release probe2 >/dev/null
    stop
fi

if [ "$PERF" = 1 ]; then
    # One more (b) run with perf sampling the server (call graphs), on the
    # 1G disk again.
    rm -f "$w/disk.raw"; truncate -s $size "$w/disk.raw"
    dd if=/dev/urandom of="$w/disk.raw" bs=1M count=1024 conv=notrunc,fsync status=none
    start_nbdkit filter; sync; ctl checkpoint perf --snapshot >/dev/null
    perf record -q -g -o "$w/perf.data" -p "$pid" -- sleep "$RUNTIME" 2>"$w/perf.err" &
    ppid=$!
    res=$(timed); wait $ppid || true
    echo; echo "perf (b) run: $res"
    perf report -i "$w/perf.data" --no-children -g none --percent-limit 0.5 \
        --sort dso,sym --stdio > "$w/perf.txt" 2>>"$w/perf.err" || true
    grep -v -e '^#' -e '^$' "$w/perf.txt" | sed -n 1,40p || true
    [ -s "$w/perf.txt" ] || { echo "no perf report:"; cat "$w/perf.err"; }
    ctl release perf >/dev/null; stop
fi
