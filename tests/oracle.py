#!/usr/bin/python3
"""Independent oracle for the tests: run a random workload through libnbd
and record every range written, then compute the dirty extents a bitmap of
a given granularity must show.  Shares no code with the C implementation.

  oracle.py run URI LOG --seed N --ops N [--conns N] [--max-len N] [--flush]
  oracle.py expect LOG SIZE GRANULARITY     -> "OFFSET LENGTH" lines
"""
import random
import sys
import threading


def run(uri, log, seed, nops, conns, max_len, flush_at_end):
    import nbd
    handles = []
    for _ in range(conns):
        h = nbd.NBD()
        h.connect_uri(uri)
        handles.append(h)
    size = handles[0].get_size()
    can_trim = handles[0].can_trim()
    lock = threading.Lock()
    ranges = []

    def worker(i):
        rng = random.Random(seed * 1000 + i)
        h = handles[i]
        for _ in range(nops):
            n = rng.randint(1, max_len)
            off = rng.randrange(0, size)
            n = min(n, size - off)
            kind = rng.choice(["pwrite", "pwrite", "zero", "trim"])
            if kind == "trim" and not can_trim:
                kind = "zero"
            if kind == "pwrite":
                h.pwrite(bytes([rng.randrange(1, 256)]) * n, off)
            elif kind == "zero":
                h.zero(n, off)
            else:
                h.trim(n, off)
            with lock:
                ranges.append((off, n))
        if flush_at_end:
            h.flush()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handles:
        h.shutdown()
    with open(log, "a") as f:
        for off, n in ranges:
            f.write("%d %d\n" % (off, n))


def expect(log, size, gran):
    size = (size + 511) // 512 * 512
    granules = set()
    with open(log) as f:
        for line in f:
            off, n = map(int, line.split())
            if n == 0:
                continue
            for g in range(off // gran, (off + n - 1) // gran + 1):
                granules.add(g)
    start = None
    prev = None
    out = []
    for g in sorted(granules):
        if start is None:
            start = prev = g
        elif g == prev + 1:
            prev = g
        else:
            out.append((start, prev))
            start = prev = g
    if start is not None:
        out.append((start, prev))
    for a, b in out:
        lo = a * gran
        hi = min((b + 1) * gran, size)
        print(lo, hi - lo)


def main():
    args = sys.argv[1:]
    if args[0] == "run":
        uri, log = args[1], args[2]
        opts = {"--seed": 1, "--ops": 100, "--conns": 1, "--max-len": 200000}
        flush = "--flush" in args
        rest = [a for a in args[3:] if a != "--flush"]
        for k, v in zip(rest[::2], rest[1::2]):
            opts[k] = int(v)
        run(uri, log, opts["--seed"], opts["--ops"], opts["--conns"],
            opts["--max-len"], flush)
    elif args[0] == "expect":
        expect(args[1], int(args[2]), int(args[3]))
    else:
        sys.exit("usage: see the docstring")


if __name__ == "__main__":
    main()
