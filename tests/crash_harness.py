#!/usr/bin/python3
"""Crash harness: kill -9 nbdkit (file plugin, crash-safe mode) at random
moments while several writers send non-zero data, then verify the bitmap
file the crash left behind.

Per trial:
  * the bitmap file exists if any write was acknowledged (the filter
    creates it at the first connection, before serving it); a kill before
    any connection leaves no file, which is fine if nothing was
    acknowledged and no data reached the disk (counted and logged);
  * qemu-img check exits 0 and the bitmap is consistent (not in_use);
  * every granule whose content on disk is no longer zero is dirty (data
    that reached the plugin is the ground truth, acked or not);
  * every write whose reply a writer received is dirty;
  * every dirty region (bitmap-region bytes) intersects a write that was
    at least sent (the documented over-approximation bound);
  * zero maps: writers also send zero and trim requests; no granule a
    frozen bitmap's map calls zero had a data write acknowledged before
    the checkpoint that froze it was asked for and sent after every zero
    or trim request covering it had returned (then its last change
    before the cut was certainly data).
Also kills during the very first start (file being created) and during
the restart that rewrites the file (a client connects at once, since the
filter may defer both to the first connection); the restart after that
serves one write and must leave no temporary file behind.  Unless --no-checkpoints, a thread
takes checkpoints (control socket) at random moments while the writers
run, so kills also land inside checkpoints; the checks then apply to the
union of all bitmaps, and a restart must leave no temporary file behind.

With --large, the export is a 1 TiB sparse file and bitmap-region is not
given (so the filter picks 256 MiB: 4096 regions), the writers write small
ranges at random over all of it, and each round lasts 1-3 persist
intervals: most regions go idle for an interval between two writes into
them, so every persist disarms and writes exact hundreds of regions that
the writers then arm again, and the kills land in that re-arm storm.  The
disk is read through SEEK_DATA, the bitmap through its extents.

  crash_harness.py --trials N --workdir DIR [--large]
Environment: NBDKIT, FILTER, DIRTYBITMAP.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd

NBDKIT = os.environ["NBDKIT"]
FILTER = os.environ["FILTER"]
CLI = os.environ["DIRTYBITMAP"]
SIZE = 64 << 20
GRAN = 65536
REGION = 4 << 20
LARGE = False           # --large: see the docstring
MAXW = 200000           # largest write
ROUND = (0.05, 1.5)     # seconds writers run before the kill


def set_large():
    global LARGE, SIZE, REGION, MAXW, ROUND
    LARGE = True
    SIZE = 1 << 40
    REGION = SIZE // 4096       # the filter's own choice for this size
    MAXW = 65536
    ROUND = (1.0, 3.0)


def filter_args(disk, bm):
    """The plugin and filter arguments of every server of a trial: the
    same region size everywhere, since the region bound is checked."""
    region = [] if LARGE else ["bitmap-region=%d" % REGION]
    return ["--filter=" + FILTER, "file", disk, "bitmap-file=" + bm,
            *region, "bitmap-persist-interval=1"]


def start(workdir, disk, bm, extra=()):
    sock = os.path.join(workdir, "s.sock")
    pidf = os.path.join(workdir, "pid")
    for p in (sock, pidf):
        if os.path.exists(p):
            os.unlink(p)
    subprocess.run([NBDKIT, "-P", pidf, "-U", sock, *filter_args(disk, bm),
                    "bitmap-control=" + os.path.join(workdir, "ctl"), *extra],
                   check=True,
                   stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(pidf) and os.path.getsize(pidf) and os.path.exists(sock):
            break
        time.sleep(0.02)
    if os.environ.get("ZDEBUG"):
        print("start %.4f" % time.monotonic())
    return int(open(pidf).read()), "nbd+unix:///?socket=" + sock


_final = {}


def dirty_map(bm):
    """Dirty extents of the union of every bitmap in the file, and the
    zero extents of each disabled one with the bitmap after it (the
    checkpoint that froze it): [(name, next name, extents)].  A disabled
    bitmap is final (only a removal could change it, and nothing here
    removes), so its extents are read once."""
    info = json.loads(subprocess.run([CLI, "info", bm, "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    ext, zeros = [], []
    names = [b["name"] for b in info["bitmaps"]]
    for i, b in enumerate(info["bitmaps"]):
        key = (bm, b["name"])
        if key not in _final:
            out = json.loads(subprocess.run([CLI, "map", bm, b["name"],
                                             "--json"], check=True,
                                            capture_output=True,
                                            text=True).stdout)
            e = [(x["offset"], x["length"]) for x in out if x["dirty"]]
            z = [(x["offset"], x["length"]) for x in out if x["zero"]]
            if "auto" not in b["flags"]:
                _final[key] = e, z
        else:
            e, z = _final[key]
        ext += e
        if z and i + 1 < len(names):
            zeros.append((b["name"], names[i + 1], z))
    return ext, zeros


CHECKPOINTS = True
_ck = [0]
_ck_ok = [0]


# Checkpoint name -> time.monotonic() it was asked, and it answered (the
# cut lies between: absent if no answer came).
_ck_asked = {}
_ck_done = {}


def checkpointer(workdir, seed, stop):
    import socket
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0.05, 0.4)):
        _ck[0] += 1
        _ck_asked["c%d" % _ck[0]] = time.monotonic()
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(os.path.join(workdir, "ctl"))
            s.sendall(b"checkpoint c%d\n" % _ck[0])
            reply = s.makefile().readline().strip()
            if reply == "ok":
                _ck_ok[0] += 1
            _ck_done["c%d" % _ck[0]] = time.monotonic()
            if os.environ.get("ZDEBUG"):
                print("ck c%d done %.4f %r" % (_ck[0], time.monotonic(), reply))
            s.close()
        except OSError:
            pass        # the server is being killed


def is_dirty(ext, off, n):
    for a, l in ext:
        if a <= off and off + n <= a + l:
            return True
    return False


# Every request of the current trial: [kind, off, n, sent at, acked at]
# (time.monotonic(); acked None if no reply came).
_ops = []
_zchecked = set()       # frozen bitmaps whose zero map was checked


def writer(uri, seed, sent, acked, stop):
    rng = random.Random(seed)
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        while not stop.is_set():
            n = rng.randint(1, MAXW)
            off = rng.randrange(0, SIZE - n)
            if rng.random() < 0.5:
                off -= off % GRAN
            kind = rng.choices(["data", "zero", "trim"], [70, 15, 15])[0]
            op = [kind, off, n, time.monotonic(), None]
            sent.append((off, n))
            _ops.append(op)
            if rng.random() < 0.1:
                h.flush()
            if kind == "data":
                h.pwrite(bytes([rng.randrange(1, 256)]) * n, off)
            elif kind == "zero":
                h.zero(n, off)
            else:
                h.trim(n, off)
            op[4] = time.monotonic()
            acked.append((off, n))
    except Exception:
        pass


def zero_problems(zeros):
    """Granules a frozen zero map calls zero although a data write,
    acknowledged before the freezing checkpoint was asked for, began after
    every zero or trim request covering the granule that may have come
    before the cut (sent before the checkpoint answered) had returned."""
    by_g = {}
    for op in _ops:
        kind, off, n = op[0], op[1], op[2]
        for g in range(off // GRAN, (off + n - 1) // GRAN + 1):
            whole = off <= g * GRAN and (g + 1) * GRAN <= off + n
            if kind == "data" or whole:
                by_g.setdefault(g, []).append(op)
    problems = []
    for name, frozen_by, ext in zeros:
        t_cut = _ck_asked.get(frozen_by)
        if t_cut is None or name in _zchecked:
            continue
        # Final: checked once, with the requests of the run that froze it
        # (its zero bits were all set in that run: a start begins with an
        # empty map, so the soak may forget the requests of earlier runs).
        _zchecked.add(name)
        t_done = _ck_done.get(frozen_by, float("inf"))
        for a, l in ext:
            for g in range(a // GRAN, (a + l) // GRAN):
                ops = by_g.get(g, [])
                zs = [op for op in ops if op[0] != "data" and op[3] < t_done]
                for w in ops:
                    if (w[0] == "data" and w[4] is not None and w[4] < t_cut
                            and all(z[4] is not None and z[4] < w[3]
                                    for z in zs)):
                        problems.append("granule %d is zero in %s's map, but "
                                        "data was written after its last "
                                        "zero request" % (g, name))
                        if os.environ.get("ZDEBUG"):
                            print("cut %s asked %.4f done %.4f" % (frozen_by, t_cut, t_done))
                            for op in by_g.get(g, []):
                                print("  op", op)
                        break
                if problems:
                    return problems
    return problems


def kill_early(workdir, name, disk, bm, rng, sent, acked):
    """Start nbdkit in the foreground with a client connecting as soon as
    the socket appears, and kill -9 it within 0.1 s: during start-up or
    while the first client is being prepared (where the file is created,
    or an existing one brought into use and rewritten)."""
    sock = os.path.join(workdir, name)
    if os.path.lexists(sock):
        os.unlink(sock)
    p = subprocess.Popen([NBDKIT, "-f", "-U", sock, *filter_args(disk, bm)],
                         stderr=subprocess.DEVNULL)
    stop = threading.Event()
    seed = rng.random()

    def early():
        while not stop.is_set() and not os.path.exists(sock):
            time.sleep(0.001)
        writer("nbd+unix:///?socket=" + sock, seed, sent, acked, stop)
    th = threading.Thread(target=early)
    th.start()
    time.sleep(rng.uniform(0, 0.1))
    if os.environ.get("ZDEBUG"):
        print("early kill %.4f" % time.monotonic())
    p.send_signal(signal.SIGKILL)
    p.wait()
    stop.set()
    th.join()


def start_writers(uri, rng, sent, acked, n):
    stop = threading.Event()
    ths = [threading.Thread(target=writer,
                            args=(uri, rng.random(), sent, acked, stop))
           for _ in range(n)]
    if CHECKPOINTS:
        workdir = os.path.dirname(uri.split("socket=")[1])
        ths.append(threading.Thread(target=checkpointer,
                                    args=(workdir, rng.random(), stop)))
    for th in ths:
        th.start()
    return stop, ths


def wait_exit(pid):
    for _ in range(600):
        try:
            os.kill(pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            return


def data_extents(f):
    """(offset, length) of the data of a sparse file (SEEK_DATA): holes
    read as zeroes, so they need no reading."""
    end = os.fstat(f.fileno()).st_size
    off = 0
    while off < end:
        try:
            d = os.lseek(f.fileno(), off, os.SEEK_DATA)
        except OSError:
            return
        h = os.lseek(f.fileno(), d, os.SEEK_HOLE)
        yield d, h - d
        off = h


def disk_has_data(disk):
    with open(disk, "rb") as f:
        for d, n in data_extents(f):
            f.seek(d)
            while n > 0:
                chunk = f.read(min(n, 1 << 20))
                if not chunk:
                    break
                if chunk.count(0) != len(chunk):
                    return True
                n -= len(chunk)
    return False


_nofile = [0]
_zstats = [0]           # bytes the zero maps called zero, at all checks
_rstats = []            # --large: (regions dirty, all-ones) per check


def verify(bm, disk, sent, acked, what):
    """Problems of the bitmap file BM after a kill or a restart."""
    if not os.path.lexists(bm):
        # Only possible if no client got as far as being served.
        problems = []
        if acked:
            problems.append("no bitmap file %s, but %d write(s) were "
                            "acknowledged" % (bm, len(acked)))
        if disk_has_data(disk):
            problems.append("no bitmap file %s, but data reached the disk"
                            % bm)
        if not problems:
            _nofile[0] += 1
            print("%s: no bitmap file yet (no client was served before the "
                  "kill, nothing acknowledged): fine" % what, flush=True)
        return problems
    problems = []
    r = subprocess.run(["qemu-img", "check", bm], capture_output=True, text=True)
    if r.returncode != 0:
        return ["qemu-img check exit %d: %s" % (r.returncode, r.stdout + r.stderr)]
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", bm],
                          capture_output=True, text=True).stdout
    if "in-use" in info:
        problems.append("bitmap left in_use")
    ext, zeros = dirty_map(bm)
    problems += zero_problems(zeros)
    _zstats[0] += sum(l for _, _, z in zeros for _, l in z)
    # Dirty granules as an array: O(1) per check however long the history.
    dg = bytearray(SIZE // GRAN)
    for a, l in ext:
        g0, g1 = a // GRAN, (a + l + GRAN - 1) // GRAN
        dg[g0:g1] = b"\1" * (g1 - g0)
    if LARGE:
        # Regions dirty in the file, and how many of them all-ones: the
        # others were shrunk by a persist (and re-armed if written since).
        rg = REGION // GRAN
        counts = [dg[r * rg:(r + 1) * rg].count(1)
                  for r in range(SIZE // REGION)]
        _rstats.append((sum(1 for c in counts if c),
                        sum(1 for c in counts if c == rg)))
    with open(disk, "rb") as f:
        for d, n in data_extents(f):
            g = d // GRAN
            f.seek(g * GRAN)
            bad = False
            while g * GRAN < d + n:
                chunk = f.read(GRAN)
                if not chunk:
                    break
                if chunk.count(0) != len(chunk) and not dg[g]:
                    problems.append("granule %d has data but is clean" % g)
                    bad = True
                    break
                g += 1
            if bad:
                break
    for off, n in acked:
        for gg in range(off // GRAN, (off + n - 1) // GRAN + 1):
            if not dg[gg]:
                problems.append("acked write %d+%d not dirty" % (off, n))
                break
    touched = set()
    for off, n in sent:
        for rr in range(off // REGION, (off + n - 1) // REGION + 1):
            touched.add(rr)
    for a, l in ext:
        for rr in range(a // REGION, (a + l - 1) // REGION + 1):
            if rr not in touched:
                problems.append("region %d dirty but never written" % rr)
                break
    return problems


def trial(workdir, rng, t):
    disk = os.path.join(workdir, "disk%d.img" % t)
    bm = os.path.join(workdir, "bm%d.qcow2" % t)
    if os.path.lexists(bm):     # left by an earlier run's failed trial
        os.unlink(bm)
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    sent, acked = [], []
    # Sometimes kill during the very first start: the next start must work.
    if rng.random() < 0.2:
        kill_early(workdir, "x.sock", disk, bm, rng, sent, acked)
    for rnd in range(2):
        pid, uri = start(workdir, disk, bm)
        stop, ths = start_writers(uri, rng, sent, acked, 3)
        time.sleep(rng.uniform(*ROUND))
        if os.environ.get("ZDEBUG"):
            print("kill %.4f" % time.monotonic())
        os.kill(pid, signal.SIGKILL)
        # Dying takes a moment (a thread may be inside fdatasync); its
        # locks go with it, and qemu-img check needs them gone.
        wait_exit(pid)
        stop.set()
        for th in ths:
            th.join()
        problems = verify(bm, disk, sent, acked,
                          "trial %d round %d" % (t, rnd))
        if problems:
            return problems
    # Kill during the restart (which rewrites the file), then start again
    # and serve one write: by then any temporary file must be gone.
    kill_early(workdir, "y.sock", disk, bm, rng, sent, acked)
    pid, uri = start(workdir, disk, bm)
    h = nbd.NBD()
    h.connect_uri(uri)
    off = rng.randrange(0, SIZE - 4096)
    sent.append((off, 4096))
    h.pwrite(b"r" * 4096, off)
    acked.append((off, 4096))
    h.shutdown()
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid)
    problems = verify(bm, disk, sent, acked, "trial %d restart" % t)
    left = [f for f in os.listdir(workdir)
            if f.startswith(os.path.basename(bm) + ".tmp")]
    if left:
        problems.append("temporary files left after a restart: %s" % left)
    for f in (disk, bm):
        if os.path.lexists(f):
            os.unlink(f)
    _final.clear()
    _zchecked.clear()
    del _ops[:]
    return problems


def soak(workdir, rng, seconds):
    """One disk and one bitmap file across many kill -9 / restart rounds,
    with periodic clean restarts too; verified after every round."""
    disk = os.path.join(workdir, "soak.img")
    bm = os.path.join(workdir, "soak.qcow2")
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    sent, acked = [], []
    end = time.time() + seconds
    rounds = kills = violations = nacked = compact_len = 0
    while time.time() < end:
        rounds += 1
        # Temporaries a killed rewrite left behind are stale: the first
        # client's activation removes them (nothing on disk changes before
        # a client connects), so they must be gone once a write of this
        # round is acknowledged.  (Checking for any temporary while the
        # server runs would see a checkpoint's live one.)
        stale = [f for f in os.listdir(workdir)
                 if f.startswith("soak.qcow2.tmp")]
        pid, uri = start(workdir, disk, bm)
        n0 = len(acked)
        del _ops[:]     # see zero_problems
        stop, ths = start_writers(uri, rng, sent, acked, 4)
        deadline = time.time() + 10
        while len(acked) == n0 and time.time() < deadline:
            time.sleep(0.005)
        left = [f for f in stale if os.path.exists(os.path.join(workdir, f))]
        if left and len(acked) > n0:
            violations += 1
            print("round %d: temporary files left: %s" % (rounds, left))
        time.sleep(rng.uniform(0.5, 5))
        if rng.random() < 0.8:
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid)
            kills += 1
            stop.set()
        else:
            stop.set()
            for th in ths:
                th.join()
            os.kill(pid, signal.SIGTERM)
            wait_exit(pid)
        for th in ths:
            th.join()
        nacked += len(acked) - compact_len
        # Keep the history compact: one entry per granule / region.
        acked[:] = [(g * GRAN, 1) for g in sorted({gg for off, n in acked
                    for gg in range(off // GRAN, (off + n - 1) // GRAN + 1)})]
        sent[:] = [(r * REGION, 1) for r in sorted({rr for off, n in sent
                   for rr in range(off // REGION, (off + n - 1) // REGION + 1)})]
        compact_len = len(acked)
        problems = verify(bm, disk, sent, acked, "round %d" % rounds)
        if problems:
            violations += 1
            print("round %d: VIOLATION: %s" % (rounds, "; ".join(problems[:3])))
    print("soak: %d s, %d rounds (%d kill -9, %d clean restarts), %d writes "
          "acknowledged, %d checkpoints, %d checks without a bitmap file "
          "(nothing acknowledged), %d violations"
          % (seconds, rounds, kills, rounds - kills, nacked, _ck_ok[0],
             _nofile[0], violations))
    return violations


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--soak-seconds", type=int, default=0)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--no-checkpoints", action="store_true")
    ap.add_argument("--large", action="store_true")
    a = ap.parse_args()
    if a.large:
        set_large()
    global CHECKPOINTS
    CHECKPOINTS = not a.no_checkpoints
    rng = random.Random(a.seed)
    if a.soak_seconds:
        sys.exit(1 if soak(a.workdir, rng, a.soak_seconds) else 0)
    violations = 0
    for t in range(a.trials):
        problems = trial(a.workdir, rng, t)
        if problems:
            violations += 1
            print("trial %d: VIOLATION: %s" % (t, "; ".join(problems[:3])))
    print("crash harness%s: seed %d, %d trials (%d kills), %d checkpoints, "
          "%d checks without a bitmap file (nothing acknowledged), %d bytes "
          "called zero by frozen maps at the checks, %d violations"
          % (" (--large: 1 TiB, 4096 regions)" if LARGE else "",
             a.seed, a.trials, a.trials * 2, _ck_ok[0], _nofile[0],
             _zstats[0], violations))
    if _rstats:
        d = sorted(x[0] for x in _rstats)
        f = sorted(x[1] for x in _rstats)
        print("regions in the file at the checks (median, max): dirty %d, %d;"
              " all-ones (pre-marked) %d, %d; checks with exact dirty "
              "regions (shrunk by a persist): %d of %d"
              % (d[len(d) // 2], d[-1], f[len(f) // 2], f[-1],
                 sum(1 for x in _rstats if x[0] > x[1]), len(_rstats)))
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
