#!/usr/bin/env bash
# Scale: a SIZE export (default 256T, QEMU's ceiling at 64K granularity)
# behind the filter (null plugin: only the bitmap work is measured), in
# both modes, and the same job against qemu-nbd serving a SIZE qcow2 with
# an enabled persistent bitmap.
#
#   bench/scale.sh [SIZE] [WRITES] [RUNS]
#
# Per run: start (until the socket answers, including creating the file
# at the first connection), WRITES writes of 64K at random 64K-aligned
# offsets (default 16384 = 1 GiB scattered), RSS of the server, a persist
# (qemu mode: a client flush; crash-safe: the control socket's 'persist',
# which shrinks pre-marked regions to exact bits), du of the bitmap file,
# a second batch of writes one granule further on each (new bits in the
# same bitmap pages: the steady state) and a second persist, and a
# restart (stop, start, first connection).  Medians (min-max).
# Last row, the filesystem's floor for a persist: the same bitmap pages
# (the 4 KiB pages of a 64K-granularity bitmap that the same writes
# dirty) written with one pwrite each into a fresh sparse file of the
# bitmap's size, then fdatasync; then again into the now allocated pages.
set -euo pipefail
export PATH=/usr/bin:$PATH
SIZE=${1:-256T}; WRITES=${2:-16384}; RUNS=${3:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
FILTER=$top/.libs/nbdkit-dirtybitmap-filter.so
D=$top/dirtybitmap
w=$(mktemp -d /var/tmp/dbm-scale.XXXXXX); trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$w"' EXIT

now () { date +%s.%N; }
rss_kib () { awk '/^VmRSS/ { print $2 }' /proc/$1/status; }

writes () {   # writes URI [SHIFT] -> seconds for WRITES scattered 64K writes
    /usr/bin/python3 - "$1" "$WRITES" "${2:-0}" <<'PY'
import nbd, random, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
n, size, shift = int(sys.argv[2]), h.get_size(), int(sys.argv[3])
rng = random.Random(1)
buf = b"w" * 65536
t = time.monotonic()
# Pipelined: 16 in flight, as a real client would.
inflight = 0
for i in range(n):
    off = (rng.randrange(0, size // 65536 - 1) + shift) * 65536
    h.aio_pwrite(buf, off)
    inflight += 1
    while h.aio_in_flight() >= 16:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
print("%.3f" % (time.monotonic() - t))
h.shutdown()
PY
}

flush_time () {   # flush_time URI -> seconds for one client flush
    /usr/bin/python3 -c '
import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
t = time.monotonic(); h.flush(); print("%.3f" % (time.monotonic() - t))
h.shutdown()' "$1"
}

wait_sock () { for i in $(seq 600); do [ -S "$1" ] && return 0; sleep 0.01; done; return 1; }

first_conn () {   # first_conn URI: connect once (creates the file)
    /usr/bin/python3 -c 'import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.shutdown()' "$1"
}

persist_time () {   # persist_time MODE -> seconds
    if [ $1 = qemu ]; then
        flush_time "nbd+unix:///?socket=$w/s.sock"
    else
        local a b; a=$(now); $D persist $w/ctl; b=$(now)
        echo "$b - $a" | bc
    fi
}

run_ours () {   # run_ours MODE -> start writes rss_mib persist du_mib persist2 restart
    local mode=$1 sock=$w/s.sock ctl=$w/ctl bm=$w/bm.qcow2 pid t0 t1 tw rss tp du tr tp2
    rm -f $sock $ctl $bm
    t0=$(now)
    nbdkit -f -U $sock --filter=$FILTER null $SIZE bitmap-file=$bm \
        bitmap-control=$ctl bitmap-mode=$mode 2>/dev/null &
    pid=$!
    wait_sock $sock; first_conn "nbd+unix:///?socket=$sock"
    t1=$(now)
    tw=$(writes "nbd+unix:///?socket=$sock")
    rss=$(rss_kib $pid)
    tp=$(persist_time $mode)
    du=$(du -k $bm | cut -f1)
    writes "nbd+unix:///?socket=$sock" 1 >/dev/null
    tp2=$(persist_time $mode)
    kill $pid; wait $pid 2>/dev/null || true
    rm -f $sock $ctl
    a=$(now)
    nbdkit -f -U $sock --filter=$FILTER null $SIZE bitmap-file=$bm \
        bitmap-mode=$mode 2>/dev/null &
    pid=$!
    wait_sock $sock; first_conn "nbd+unix:///?socket=$sock"
    b=$(now)
    tr=$(echo "$b - $a" | bc)
    kill $pid; wait $pid 2>/dev/null || true
    echo "$(echo "$t1 - $t0" | bc) $tw $(echo "scale=1; $rss / 1024" | bc) $tp $(echo "scale=1; $du / 1024" | bc) $tp2 $tr"
}

run_qemu () {   # the same job on qemu-nbd with an enabled persistent bitmap
    local sock=$w/q.sock img=$w/q.qcow2 pid t0 t1 tw rss tp du
    rm -f $sock $img
    qemu-img create -q -f qcow2 $img $SIZE
    qemu-img bitmap --add $img b0
    t0=$(now)
    qemu-nbd -f qcow2 -k $sock -t --cache=writeback $img &
    pid=$!
    wait_sock $sock; first_conn "nbd+unix:///?socket=$sock"
    t1=$(now)
    tw=$(writes "nbd+unix:///?socket=$sock")
    rss=$(rss_kib $pid)
    tp=$(flush_time "nbd+unix:///?socket=$sock")
    kill $pid; wait $pid 2>/dev/null || true
    # QEMU writes persistent bitmaps only when the image is closed.
    du=$(du -k $img | cut -f1)
    echo "$(echo "$t1 - $t0" | bc) $tw $(echo "scale=1; $rss / 1024" | bc) $tp $(echo "scale=1; $du / 1024" | bc) - -"
}

floor () {   # the persist floor: -> first_s second_s
    /usr/bin/python3 - "$SIZE" "$WRITES" "$w/floor" <<'PY'
import os, random, sys, time
units = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
s = sys.argv[1]
size = int(s[:-1]) << units[s[-1]] if s[-1] in units else int(s)
n = int(sys.argv[2])
rng = random.Random(1)   # the writes() sequence: the same pages
pages = set()
for i in range(n):
    off = rng.randrange(0, size // 65536 - 1) * 65536
    pages.add((off >> 16) >> 15)       # bit -> byte (>> 3) -> page (>> 12)
fd = os.open(sys.argv[3], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.ftruncate(fd, size // 65536 // 8)
page = b"\xff" * 4096
out = []
for rnd in range(2):
    t = time.monotonic()
    for p in sorted(pages):
        os.pwrite(fd, page, p * 4096)
    os.fdatasync(fd)
    out.append("%.3f" % (time.monotonic() - t))
os.close(fd); os.unlink(sys.argv[3])
print(" ".join(out))
PY
}

declare -A res
for r in $(seq "$RUNS"); do
    res[crash-safe]+="$(run_ours crash-safe);"
    res[qemu]+="$(run_ours qemu);"
    res[qemu-nbd]+="$(run_qemu);"
    f=($(floor))
    res[floor]+="- - - ${f[0]} - ${f[1]} -;"
done

/usr/bin/python3 - "$SIZE" "$WRITES" "$RUNS" "crash-safe=${res[crash-safe]}" \
    "qemu=${res[qemu]}" "qemu-nbd=${res[qemu-nbd]}" "floor=${res[floor]}" <<'PY'
import statistics, sys
size, writes, runs = sys.argv[1:4]
print("export %s, %s scattered 64K writes (QD16), %s runs, median (min-max)"
      % (size, writes, runs))
print("| server | start + first connection s | writes s | RSS MiB | persist s | du MiB | 2nd persist s | restart s |")
print("|---|---|---|---|---|---|---|---|")
names = {"crash-safe": "nbdkit + dirtybitmap, crash-safe",
         "qemu": "nbdkit + dirtybitmap, qemu mode",
         "qemu-nbd": "qemu-nbd, qcow2 + enabled persistent bitmap",
         "floor": "floor: the same bitmap pages, pwrite each + fdatasync"}
for arg in sys.argv[4:]:
    key, val = arg.split("=", 1)
    rows = [r.split() for r in val.split(";") if r.strip()]
    cells = []
    for col in zip(*rows):
        if col[0] == "-":
            cells.append("-")
            continue
        v = [float(x) for x in col]
        cells.append("%.3g (%.3g-%.3g)" % (statistics.median(v), min(v), max(v)))
    print("| %s | %s |" % (names[key], " | ".join(cells)))
print("qemu-nbd: persist = client flush (QEMU writes persistent bitmaps only "
      "at close); du includes the data clusters it wrote.")
PY
