#!/usr/bin/python3
"""Point-in-time snapshots under load, checked against an independent
record.  Shares no code with the C implementation.

  snapshot_oracle.py run --sock SOCK --ctl CTL --bitmap FILE --log LOG
                         [--snapshots N] [--interval MS] [--seed N]
                         [--writers N]
      WRITERS processes write continuously over their own connections
      (pwrite, zero, trim; 4K..256K at random 4K-aligned offsets).  Each
      4K block of a pwrite holds a header (magic, connection, sequence
      number, block offset) repeated, so every block read back names the
      one write it came from.  Every MS ms this process takes checkpoint
      c1, c2, ... with --snapshot (odd) or --snapshot=dirty (even); reader
      threads read each snapshot while the writers go on (a full one
      entirely; a dirty one exactly over the dirty extents of the bitmap
      its checkpoint froze, plus a read in each granule outside them, which
      must fail with EPERM), check its extents, its status entry and its listing, then
      release it (a read after that must fail with EIO, the export must be
      gone).  LOG (a pickle) records every write with the monotonic times
      just before it was sent and just after it was acknowledged, every
      checkpoint with the times just before its command was sent and just
      after its reply arrived, and the block contents each snapshot showed.

  snapshot_oracle.py check LOG FILE [--label TEXT]
      After the server has stopped (every bitmap final), with the bitmaps
      of FILE read by 'dirtybitmap map --json' ($DIRTYBITMAP):
      - snapshot: each 4K block a snapshot showed is the last write to it
        acknowledged before the checkpoint command was sent (or zeroes if
        none was), or a write in flight across the cut (sent before the
        reply arrived, acknowledged after the command was sent); never a
        write sent after the reply, never a write a later acknowledged
        write superseded before the command, never bytes no write made;
      - chain: an in-flight write a snapshot does not reflect (its block
        shows neither it nor a write sent after it was acknowledged) is
        dirty in the checkpoint's new bitmap (or a later one it may have
        landed in);
      - coverage: every write is wholly in one bitmap B_j, lo <= j <= hi,
        lo = checkpoints answered before it was sent, hi = checkpoints
        requested before it was acknowledged (so a write sent after c_k's
        reply is in c_k or later); precision: no bitmap has a dirty
        granule no such write explains;
      - a dirty snapshot's extents (read while the server ran) equal its
        frozen bitmap as finally saved.

Times are taken so that the oracle is conservative: "acknowledged before
the command was sent" uses the time after the write returned and the time
before the command was sent; "sent after the reply" uses the time before
the write was sent and the time after the reply arrived.  No timing is
asserted: a slow machine only widens the in-flight windows.
"""
import argparse
import errno
import json
import multiprocessing
import os
import pickle
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

BLOCK = 4096
MAGIC = b"SnOr"
HDR = struct.Struct("<4sIQQQ")          # 32 bytes
REPS = BLOCK // HDR.size
ZERO_BLOCK = bytes(BLOCK)
ZERO = 0                # block value: all zeroes
GARBAGE = -1            # block value: bytes no write made
UNREAD = -2             # block value: not read (outside a dirty snapshot)
CHUNK = 4 << 20
PROBE_CONN = 9


def key(conn, seq):
    return (conn << 40) | seq


def describe(v):
    if v == ZERO:
        return "zeroes"
    if v == GARBAGE:
        return "garbage"
    if v == UNREAD:
        return "unread"
    return "write %d.%d" % (v >> 40, v & ((1 << 40) - 1))


def stamp_block(conn, seq, off):
    chk = (conn * 0x9E3779B97F4A7C15 ^ seq * 0x100000001B3 ^ off) \
        & 0xFFFFFFFFFFFFFFFF
    return HDR.pack(MAGIC, conn, seq, off, chk) * REPS


def stamp(conn, seq, off, n):
    return b"".join(stamp_block(conn, seq, off + i)
                    for i in range(0, n, BLOCK))


def decode(blk, off):
    """The value of the 4K block BLK read at byte offset OFF."""
    if blk == ZERO_BLOCK:
        return ZERO
    try:
        magic, conn, seq, boff, _ = HDR.unpack_from(blk)
    except struct.error:
        return GARBAGE
    if magic != MAGIC or boff != off or \
            blk != stamp_block(conn, seq, boff):
        return GARBAGE
    return key(conn, seq)


def ask(ctl, line, timeout=120):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(ctl)
        s.sendall((line + "\n").encode())
        return s.makefile("rb").readline().decode().rstrip("\r\n")
    finally:
        s.close()


def status(ctl):
    return json.loads(ask(ctl, "status"))


def bitmap_map(dirtybitmap, path, name):
    """Dirty extents [(offset, length)] of bitmap NAME of PATH."""
    out = subprocess.run([dirtybitmap, "map", path, name, "--json"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("dirtybitmap map %s %s: %s" %
                           (path, name, out.stderr.strip()))
    return [(e["offset"], e["length"]) for e in json.loads(out.stdout)
            if e["dirty"]]


# ---------------------------------------------------------------- run

def writer(uri, conn, seed, stop, ready, out, max_seconds):
    import nbd
    recs = []
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        size = h.get_size()
        can_trim = h.can_trim()
        ready.release()
        rng = random.Random(seed)
        seq = 0
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            nb = rng.randint(1, 64)
            off = rng.randrange(0, size // BLOCK - nb + 1) * BLOCK
            n = nb * BLOCK
            kind = rng.choices("wzt", weights=(6, 2, 2))[0]
            if kind == "t" and not can_trim:
                kind = "z"
            seq += 1
            buf = stamp(conn, seq, off, n) if kind == "w" else None
            err = None
            t0 = time.monotonic_ns()
            try:
                if kind == "w":
                    h.pwrite(buf, off)
                elif kind == "z":
                    h.zero(n, off)
                else:
                    h.trim(n, off)
            except nbd.Error as e:
                err = str(e)
            t1 = time.monotonic_ns()
            recs.append((conn, seq, kind, off, n, t0, t1, err))
            if err:
                break
        h.shutdown()
    except Exception:
        recs.append((conn, -1, "x", 0, 0, 0, 0, traceback.format_exc()))
        ready.release()
    with open(out, "wb") as f:
        pickle.dump(recs, f)


class Run:
    def __init__(self, a):
        self.a = a
        self.failures = []
        self.lock = threading.Lock()
        self.results = {}
        self.dirtybitmap = os.environ["DIRTYBITMAP"]
        self.base = "nbd+unix:///?socket=%s" % a.sock

    def fail(self, msg):
        with self.lock:
            self.failures.append(msg)
        print("FAIL: " + msg, file=sys.stderr, flush=True)

    def uri(self, name):
        return "nbd+unix:///snapshot:%s?socket=%s" % (name, self.a.sock)

    def list_exports(self):
        import nbd
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_uri(self.base)
        names = []
        h.opt_list(lambda name, desc: names.append(name) or 0)
        h.opt_abort()
        return names

    def probe_trim(self):
        """Trim must read back as zeroes on this plugin (the oracle treats
        trim as writing zeroes); the probe's writes are logged too."""
        import nbd
        h = nbd.NBD()
        h.connect_uri(self.base)
        recs = []
        off, n = 0, 16 * BLOCK
        ops = [("w", lambda: h.pwrite(stamp(PROBE_CONN, 1, off, n), off))]
        if h.can_trim():
            ops.append(("t", lambda: h.trim(n, off)))
        else:
            ops.append(("z", lambda: h.zero(n, off)))
        for seq, (kind, op) in enumerate(ops, 1):
            t0 = time.monotonic_ns()
            op()
            t1 = time.monotonic_ns()
            recs.append((PROBE_CONN, seq, kind, off, n, t0, t1, None))
        got = h.pread(n, off)
        h.shutdown()
        if got != bytes(n):
            sys.exit("trim on this plugin does not read back as zeroes: the "
                     "oracle would need to allow the old data too")
        return recs

    def read_snapshot(self, job):
        import nbd
        k, name, variant, extents, size = job[:5]
        res = {"values": None, "zero_ext_blocks": 0, "eperm": None,
               "bytes": 0}
        nblocks = size // BLOCK
        values = [UNREAD] * nblocks
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_uri(self.uri(name))
        if h.get_size() != size:
            self.fail("%s: size %d, expected %d" % (name, h.get_size(), size))
        if not h.is_read_only():
            self.fail("%s: not read-only" % name)
        # Writes, zeroes and trims are refused by the server (libnbd's own
        # check of the read-only flag is turned off, so they are sent).
        h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
        at = extents[0][0] if variant == "dirty" and extents else 0
        for what, op in (("write", lambda: h.pwrite(b"x" * BLOCK, at)),
                         ("zero", lambda: h.zero(BLOCK, at)),
                         ("trim", lambda: h.trim(BLOCK, at))):
            try:
                op()
                self.fail("%s: a %s to the snapshot succeeded" % (name, what))
            except nbd.Error as e:
                if e.errnum != errno.EPERM:
                    self.fail("%s: a %s to the snapshot failed with %s, "
                              "expected EPERM" % (name, what, e))
        st = [s for s in status(self.a.ctl)["snapshots"]
              if s["name"] == name]
        want = {"name": name, "export": "snapshot:" + name,
                "variant": variant, "size": size, "granularity": 65536,
                "state": "active"}
        if len(st) != 1 or any(st[0].get(f) != v for f, v in want.items()) \
                or st[0].get("readers", 0) < 1:
            self.fail("%s: status entry %r, expected %r with readers >= 1"
                      % (name, st, want))
        ranges = [(0, size)] if variant == "full" else extents
        for a, n in ranges:
            for off in range(a, a + n, CHUNK):
                c = min(CHUNK, a + n - off)
                try:
                    data = h.pread(c, off)
                except nbd.Error as e:
                    self.fail("%s: read %d+%d failed: %s" % (name, off, c, e))
                    continue
                res["bytes"] += c
                for i in range(0, c, BLOCK):
                    values[(off + i) // BLOCK] = \
                        decode(data[i:i + BLOCK], off + i)
        # base:allocation must be true for what was read: a zero extent
        # holds zeroes.
        for a, n in ranges:
            pos, end = a, a + n
            while pos < end:
                got = []

                def cb(ctx, offset, entries, err):
                    if ctx == "base:allocation":
                        got.extend(entries)
                    return 0
                h.block_status(min(end - pos, 1 << 30), pos, cb)
                if not got:
                    self.fail("%s: no extents at %d" % (name, pos))
                    break
                for i in range(0, len(got), 2):
                    ln, fl = got[i], got[i + 1]
                    ln = min(ln, end - pos)
                    if fl & nbd.STATE_ZERO:
                        for b in range(pos // BLOCK, (pos + ln) // BLOCK):
                            res["zero_ext_blocks"] += 1
                            if values[b] != ZERO:
                                self.fail("%s: extent %d+%d says zero, block "
                                          "%d holds %s" % (name, pos, ln,
                                                           b * BLOCK,
                                                           describe(values[b])))
                                break
                    pos += ln
                    if pos >= end:
                        break
        if variant == "dirty":
            # Every granule outside the frozen bitmap's dirty extents: a
            # read of its first block fails with EPERM.
            outside = outside_granules(extents, size, self.gran)
            res["eperm"] = len(outside)
            res["readable_outside"] = []
            readable = []
            for off in outside:
                try:
                    h.pread(BLOCK, off)
                    readable.append(off)
                except nbd.Error as e:
                    if e.errnum != errno.EPERM:
                        self.fail("%s: read at %d outside the dirty extents "
                                  "failed with %s, expected EPERM" %
                                  (name, off, e))
            res["readable_outside"] = readable
            if readable:
                self.fail("%s: %d of the %d granules outside the frozen "
                          "bitmap %s's dirty extents are readable (expected "
                          "EPERM), first at offsets %s" %
                          (name, len(readable), len(outside), job[5],
                           readable[:5]))
        lst = self.list_exports()
        if "snapshot:" + name not in lst:
            self.fail("%s: not listed while live: %r" % (name, lst))
        reply = ask(self.a.ctl, "release " + name)
        if reply != "ok":
            self.fail("release %s: %s" % (name, reply))
        inside = ranges[0][0] if ranges else None
        if inside is not None:
            try:
                h.pread(BLOCK, inside)
                self.fail("%s: a read after release succeeded" % name)
            except nbd.Error as e:
                if e.errnum != errno.EIO:
                    self.fail("%s: a read after release failed with %s, "
                              "expected EIO" % (name, e))
        h.shutdown()
        lst = self.list_exports()
        if "snapshot:" + name in lst:
            self.fail("%s: still listed after release: %r" % (name, lst))
        if any(s["name"] == name for s in status(self.a.ctl)["snapshots"]):
            self.fail("%s: still in status after release" % name)
        res["values"] = values
        return res

    def reader(self, jobs):
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                r = self.read_snapshot(job)
            except Exception:
                self.fail("reader of %s: %s" % (job[1],
                                                traceback.format_exc()))
                r = None
            with self.lock:
                self.results[job[0]] = r

    def go(self):
        a = self.a
        probe = self.probe_trim()
        mp = multiprocessing.get_context("fork")
        stop = mp.Event()
        ready = mp.Semaphore(0)
        parts = ["%s.w%d" % (a.log, i) for i in range(a.writers)]
        ps = [mp.Process(target=writer,
                         args=(self.base, i + 1, a.seed * 100 + i, stop,
                               ready, parts[i], 120))
              for i in range(a.writers)]
        for p in ps:
            p.start()
        for _ in ps:
            if not ready.acquire(timeout=60):
                stop.set()
                sys.exit("a writer did not connect within 60 s")
        st = status(a.ctl)
        size = st["export_size"]
        enabled = [b["name"] for b in st["bitmaps"] if b["enabled"]]
        if len(enabled) != 1:
            sys.exit("expected one enabled bitmap: %r" % st["bitmaps"])
        gran = [b["granularity"] for b in st["bitmaps"] if b["enabled"]][0]
        self.gran = gran
        jobs = queue.Queue()
        readers = [threading.Thread(target=self.reader, args=(jobs,))
                   for _ in range(2)]
        for t in readers:
            t.start()
        cps = []
        frozen = enabled[0]
        try:
            time.sleep(a.interval / 2000)
            for k in range(1, a.snapshots + 1):
                name = "c%d" % k
                variant = "full" if k % 2 else "dirty"
                cmd = "checkpoint %s --snapshot%s" % \
                    (name, "" if variant == "full" else "=dirty")
                t_cs = time.monotonic_ns()
                reply = ask(a.ctl, cmd)
                t_ok = time.monotonic_ns()
                if reply != "ok":
                    self.fail("%s: %s" % (cmd, reply))
                    break
                extents = None
                if variant == "dirty":
                    extents = bitmap_map(self.dirtybitmap, a.bitmap, frozen)
                cps.append({"name": name, "variant": variant, "t_cs": t_cs,
                            "t_ok": t_ok, "frozen": frozen,
                            "extents": extents})
                jobs.put((k, name, variant, extents, size, frozen))
                frozen = name
                rest = t_cs / 1e9 + a.interval / 1000 - time.monotonic()
                if rest > 0:
                    time.sleep(rest)
        finally:
            for _ in readers:
                jobs.put(None)
            for t in readers:
                t.join()
            stop.set()
            for p in ps:
                p.join(120)
                if p.exitcode != 0:
                    self.fail("a writer exited with %s" % p.exitcode)
        writes = list(probe)
        for part in parts:
            with open(part, "rb") as f:
                writes += pickle.load(f)
            os.unlink(part)
        for w in writes:
            if w[7] is not None:
                self.fail("client request %s %d+%d (conn %d) failed: %s" %
                          (w[2], w[3], w[4], w[0], w[7]))
        snaps = {k: r for k, r in self.results.items() if r}
        with open(a.log, "wb") as f:
            pickle.dump({"size": size, "granularity": gran,
                         "first": enabled[0], "cps": cps,
                         "writes": [w[:7] for w in writes if w[1] >= 0],
                         "snaps": snaps}, f)
        print("run: %d snapshots, %d writes, %d MiB read from snapshots, "
              "%d failures" % (len(cps), len(writes),
                               sum(r["bytes"] for r in snaps.values()) >> 20,
                               len(self.failures)))
        if len(snaps) != len(cps):
            self.fail("%d snapshots taken, %d read" % (len(cps), len(snaps)))
        return 1 if self.failures else 0


def outside_granules(extents, size, gran):
    """The offsets of the granules not in EXTENTS."""
    inside = set()
    for a, n in extents:
        inside.update(range(a // gran, (a + n - 1) // gran + 1))
    return [g * gran for g in range((size + gran - 1) // gran)
            if g not in inside]


# ---------------------------------------------------------------- check

def check(log, path, label):
    with open(log, "rb") as f:
        L = pickle.load(f)
    D = os.environ["DIRTYBITMAP"]
    size, gran, cps, writes = L["size"], L["granularity"], L["cps"], \
        L["writes"]
    G = gran.bit_length() - 1
    nblocks = size // BLOCK
    names = [L["first"]] + [c["name"] for c in cps]
    maps = []
    for name in names:
        gs = set()
        for off, n in bitmap_map(D, path, name):
            gs.update(range(off >> G, ((off + n - 1) >> G) + 1))
        maps.append(gs)
    bad = []

    def violation(msg):
        bad.append(msg)
        if len(bad) <= 20:
            print("VIOLATION: " + msg)

    t0 = [w[5] for w in writes]
    t1 = [w[6] for w in writes]
    val = [key(w[0], w[1]) if w[2] == "w" else ZERO for w in writes]
    wname = ["%s %d.%d %d+%d" % ({"w": "pwrite", "z": "zero",
                                   "t": "trim"}[w[2]], w[0], w[1], w[3], w[4])
             for w in writes]
    by_key = {val[i]: i for i in range(len(writes)) if writes[i][2] == "w"}
    lo = [sum(1 for c in cps if c["t_ok"] < t0[i]) for i in range(len(writes))]
    hi = [sum(1 for c in cps if c["t_cs"] < t1[i]) for i in range(len(writes))]
    bw = [[] for _ in range(nblocks)]
    for i, w in enumerate(writes):
        for b in range(w[3] // BLOCK, (w[3] + w[4]) // BLOCK):
            bw[b].append(i)

    # Coverage and precision of the bitmaps.
    allowed = [set() for _ in names]
    for i, w in enumerate(writes):
        g = set(range(w[3] >> G, ((w[3] + w[4] - 1) >> G) + 1))
        for j in range(lo[i], hi[i] + 1):
            allowed[j] |= g
        if not any(g <= maps[j] for j in range(lo[i], hi[i] + 1)):
            violation("%s (lo %d, hi %d) is in no single bitmap of %s" %
                      (wname[i], lo[i], hi[i], names[lo[i]:hi[i] + 1]))
    for j, name in enumerate(names):
        extra = maps[j] - allowed[j]
        if extra:
            violation("bitmap %s: %d dirty granules no write explains (first "
                      "at byte %d)" % (name, len(extra), min(extra) << G))

    blocks = inflight_total = chain_checked = eperm = 0
    nfull = ndirty = 0
    for k, c in enumerate(cps, 1):
        r = L["snaps"].get(k)
        if r is None:
            violation("snapshot %s was not read" % c["name"])
            continue
        if c["variant"] == "full":
            nfull += 1
        else:
            ndirty += 1
            gs = set()
            for off, n in c["extents"]:
                gs.update(range(off >> G, ((off + n - 1) >> G) + 1))
            if gs != maps[k - 1]:
                violation("%s: the dirty extents read while running differ "
                          "from bitmap %s as saved" % (c["name"], c["frozen"]))
        eperm += r["eperm"] or 0
        # Diagnosis for granules outside a dirty snapshot that were
        # readable (the run failed for them): did a write in flight across
        # the cut touch them?
        for off in r.get("readable_outside", []):
            bs = range(off // BLOCK, (off + gran) // BLOCK)
            infl = sorted({i for b in bs for i in bw[b]
                           if t0[i] < c["t_ok"] and t1[i] >= c["t_cs"]})
            print("note: %s: granule %d (outside %s's dirty extents) was "
                  "readable; writes in flight across the cut touching it: "
                  "%s" % (c["name"], off, c["frozen"],
                          [wname[i] for i in infl] or "none"))
        t_cs, t_ok = c["t_cs"], c["t_ok"]
        values = r["values"]
        inflight_k = set()
        for b in range(nblocks):
            v = values[b]
            if v == UNREAD:
                continue
            blocks += 1
            ws = bw[b]
            pre = [i for i in ws if t1[i] < t_cs]
            m = max((t0[i] for i in pre), default=None)
            ok = set()
            for i in pre:
                if t1[i] >= m:
                    ok.add(val[i])
            if not pre:
                ok.add(ZERO)
            infl = [i for i in ws if t0[i] < t_ok and t1[i] >= t_cs]
            inflight_k.update(infl)
            for i in infl:
                ok.add(val[i])
            if v not in ok:
                why = "no write made these bytes"
                if v > 0:
                    i = by_key.get(v)
                    if i is None:
                        why = "no such write was sent"
                    elif t0[i] >= t_ok:
                        why = "%s was sent %.3f ms after the reply" % (
                            wname[i], (t0[i] - t_ok) / 1e6)
                    elif i not in ws:
                        why = "%s does not touch this block" % wname[i]
                    else:
                        why = "%s was superseded before the command" % \
                            wname[i]
                elif v == ZERO:
                    why = "zeroes, but a data write was acknowledged before"
                violation("snapshot %s block %d: %s; allowed %s: %s" %
                          (c["name"], b * BLOCK, describe(v),
                           sorted(describe(x) for x in ok)[:6], why))
            # The chain: an in-flight write that is certainly after the cut
            # (the block shows a write, or zeroes, it was sent after the
            # acknowledgement of) must be in the new bitmap, or in a later
            # one it may have landed in.
            if v == GARBAGE:
                continue
            if v == ZERO:
                made = [x for x in ws if val[x] == ZERO]
                last_ack = max((t1[x] for x in made), default=0)
            else:
                x = by_key.get(v)
                last_ack = t1[x] if x is not None and x in ws else None
            if last_ack is None:
                continue
            for i in infl:
                if val[i] == v or t0[i] <= last_ack:
                    continue        # perhaps before what the cut holds
                chain_checked += 1
                g = b * BLOCK >> G
                if not any(g in maps[j] for j in range(k, hi[i] + 1)):
                    violation("snapshot %s block %d holds %s; %s, sent after "
                              "that was acknowledged, is dirty in none of %s"
                              % (c["name"], b * BLOCK, describe(v), wname[i],
                                 names[k:hi[i] + 1]))
        inflight_total += len(inflight_k)
    print("%s: %d snapshots (%d full, %d dirty), %d blocks checked, %d "
          "writes (%d in flight across cuts, %d not reflected checked in the "
          "new bitmap), %d bitmaps, %d granules outside dirty snapshots "
          "probed, %d violations" %
          (label, len(cps), nfull, ndirty, blocks, len(writes),
           inflight_total, chain_checked, len(names), eperm, len(bad)))
    return 1 if bad else 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("--sock", required=True)
        p.add_argument("--ctl", required=True)
        p.add_argument("--bitmap", required=True)
        p.add_argument("--log", required=True)
        p.add_argument("--snapshots", type=int, default=8)
        p.add_argument("--interval", type=int, default=200)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--writers", type=int, default=4)
        sys.exit(Run(p.parse_args()).go())
    elif len(sys.argv) > 1 and sys.argv[1] == "check":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("log")
        p.add_argument("file")
        p.add_argument("--label", default="")
        a = p.parse_args()
        sys.exit(check(a.log, a.file, a.label))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
