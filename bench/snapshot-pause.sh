#!/usr/bin/env bash
# How long a checkpoint holds writes, plain and with --snapshot: one
# writer issues 4K random writes in a loop over a 1G file (crash-safe,
# one dirty granule per MiB beforehand); 16 checkpoints of each kind,
# interleaved in blocks of 8, 200 ms apart.  Prints each kind's median
# checkpoint time and the median and worst write latency seen while one
# was running.
#
#   bench/snapshot-pause.sh
set -euo pipefail
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
w=$(mktemp -d); trap 'kill $np 2>/dev/null; rm -rf "$w"' EXIT
cd "$w"
truncate -s 1G disk.img
nbdkit -f -U $w/s.sock --filter=$top/.libs/nbdkit-dirtybitmap-filter.so \
    file disk.img bitmap-file=$w/bm.qcow2 bitmap-control=$w/c.sock 2>log &
np=$!
for i in $(seq 300); do [ -S c.sock ] && break; sleep 0.1; done
/usr/bin/python3 - <<'PY'
import nbd, random, socket, statistics, threading, time
def ctl(cmd):
    s = socket.socket(socket.AF_UNIX); s.connect("c.sock")
    s.sendall((cmd + "\n").encode()); r = b""
    while not r.endswith(b"\n"):
        r += s.recv(65536)
    return r.decode().strip()
h = nbd.NBD(); h.connect_unix("s.sock")
for i in range(0, 1 << 30, 1 << 20):
    h.pwrite(b"x" * 4096, i)
lat, stop = [], False
def writer():
    rnd = random.Random(1); g = nbd.NBD(); g.connect_unix("s.sock")
    while not stop:
        t = time.monotonic()
        g.pwrite(b"y" * 4096, rnd.randrange(0, 1 << 18) * 4096)
        lat.append((t, time.monotonic() - t))
th = threading.Thread(target=writer); th.start(); time.sleep(0.5)
res = {}
n = 0
for kind in ("plain", "snapshot", "plain", "snapshot"):
    for i in range(8):
        n += 1
        name = "c%d" % n
        t0 = time.monotonic()
        r = ctl("checkpoint %s%s" % (name, " --snapshot" if kind == "snapshot" else ""))
        t1 = time.monotonic()
        assert r == "ok", r
        if kind == "snapshot":
            assert ctl("release " + name) == "ok"
        time.sleep(0.2)
        during = [l for (t, l) in lat if t0 - 0.01 <= t <= t1 + 0.01] or [0]
        res.setdefault(kind, []).append((t1 - t0, max(during)))
stop = True; th.join()
print("median write latency: %.3f ms" % (statistics.median(l for t, l in lat) * 1000))
for k, v in res.items():
    print("%-8s checkpoint %.1f ms (median); worst write during it: median %.1f ms, max %.1f ms"
          % (k, statistics.median(a for a, b in v) * 1000,
             statistics.median(b for a, b in v) * 1000, max(b for a, b in v) * 1000))
PY
