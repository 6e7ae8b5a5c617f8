#!/usr/bin/python3
"""Checkpoints under load, checked against an independent record.

  checkpoint_oracle.py run URI CONTROL LOG --seconds S --interval MS
      Several processes write (pwrite/zero/trim) at random over their own
      NBD connections while this process takes a checkpoint c1, c2, ...
      every MS milliseconds over the control socket.  LOG records every
      write with the monotonic times it was sent and acknowledged, and
      every checkpoint with the times it was requested and answered.

  checkpoint_oracle.py check LOG GRANULARITY FIRST MAPDIR
      MAPDIR/NAME holds "OFFSET LENGTH" dirty extents of bitmap NAME
      (FIRST is the bitmap that recorded before c1).  Checks:
      - coverage: each write is wholly in one bitmap B_j with a <= j <= b,
        a = checkpoints answered before it was sent, b = checkpoints
        requested before it was acknowledged;
      - precision: each dirty granule of B_j belongs to a write that may
        land in B_j (a <= j <= b).
Shares no code with the C implementation.
"""
import multiprocessing
import os
import random
import socket
import sys
import time


def writer(uri, seconds, seed, out, connected):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    connected.release()
    size = h.get_size()
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    recs = []
    while time.monotonic() < end:
        n = rng.randint(1, 256 * 1024)
        off = rng.randrange(0, size)
        n = min(n, size - off)
        kind = rng.choice(["pwrite", "pwrite", "zero", "trim"])
        t0 = time.monotonic()
        if kind == "pwrite":
            h.pwrite(bytes([rng.randrange(1, 256)]) * n, off)
        elif kind == "zero":
            h.zero(n, off)
        else:
            h.trim(n, off)
        t1 = time.monotonic()
        recs.append("W %.9f %.9f %d %d\n" % (t0, t1, off, n))
    h.shutdown()
    with open(out, "w") as f:
        f.writelines(recs)


def ask(control, line):
    s = socket.socket(socket.AF_UNIX)
    s.connect(control)
    s.sendall((line + "\n").encode())
    reply = s.makefile().readline().strip()
    s.close()
    return reply


def run(uri, control, log, seconds, interval_ms, procs=4):
    parts = ["%s.%d" % (log, i) for i in range(procs)]
    connected = multiprocessing.Semaphore(0)
    ps = [multiprocessing.Process(target=writer,
                                  args=(uri, seconds, 1000 + i, parts[i],
                                        connected))
          for i in range(procs)]
    for p in ps:
        p.start()
    # The file exists from the first connection on; checkpoint only once
    # every writer is connected (a slow machine may take a while).
    for p in ps:
        if not connected.acquire(timeout=60):
            sys.exit("a writer did not connect within 60 s")
    recs = []
    k = 0
    end = time.monotonic() + seconds
    time.sleep(interval_ms / 2000)
    while time.monotonic() < end:
        k += 1
        t0 = time.monotonic()
        reply = ask(control, "checkpoint c%d" % k)
        t1 = time.monotonic()
        if reply != "ok":
            sys.exit("checkpoint c%d: %s" % (k, reply))
        recs.append("C %.9f %.9f c%d\n" % (t0, t1, k))
        time.sleep(interval_ms / 1000)
    for p in ps:
        p.join()
        if p.exitcode != 0:
            sys.exit("a writer failed")
    with open(log, "w") as f:
        f.writelines(recs)
        for part in parts:
            with open(part) as g:
                f.write(g.read())
            os.unlink(part)
    print("%d checkpoints, %d writes" % (k, sum(1 for r in open(log)) - k))


def granules(lst):
    s = set()
    for off, n in lst:
        s.update(range(off >> G, ((off + n - 1) >> G) + 1))
    return s


def check(log, gran, first, mapdir):
    global G
    G = gran.bit_length() - 1
    cps, writes = [], []
    for line in open(log):
        f = line.split()
        if f[0] == "C":
            cps.append((float(f[1]), float(f[2]), f[3]))
        else:
            writes.append((float(f[1]), float(f[2]), int(f[3]), int(f[4])))
    names = [first] + [c[2] for c in cps]
    maps = []
    for name in names:
        ext = []
        for line in open(os.path.join(mapdir, name)):
            off, n = map(int, line.split())
            ext.append((off, n))
        maps.append(granules(ext))
    bad = 0
    allowed = [set() for _ in names]
    for t0, t1, off, n in writes:
        a = sum(1 for c in cps if c[1] < t0)
        b = sum(1 for c in cps if c[0] < t1)
        g = granules([(off, n)])
        for j in range(a, b + 1):
            allowed[j] |= g
        if not any(g <= maps[j] for j in range(a, b + 1)):
            bad += 1
            if bad <= 5:
                print("write %d+%d (sent %.6f, acked %.6f) is in no single "
                      "bitmap of %s" % (off, n, t0, t1, names[a:b + 1]))
    for j, name in enumerate(names):
        extra = maps[j] - allowed[j]
        if extra:
            bad += 1
            print("bitmap %s: %d dirty granules no write explains (first "
                  "at byte %d)" % (name, len(extra), min(extra) << G))
    print("%d writes, %d bitmaps checked, %d violations" %
          (len(writes), len(names), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "run":
        args = sys.argv[2:]
        seconds = float(args[args.index("--seconds") + 1])
        interval = float(args[args.index("--interval") + 1])
        run(args[0], args[1], args[2], seconds, interval)
    elif cmd == "check":
        sys.exit(check(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    else:
        sys.exit(__doc__)
