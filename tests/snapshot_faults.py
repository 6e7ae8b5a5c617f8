#!/usr/bin/python3
"""Client side of tests/test-snapshot-faults.sh.  Each subcommand drives a
running nbdkit (SOCK, control socket CTL) and exits non-zero with a
message on the first thing that is not as promised.  Where the bitmaps are
checked afterwards, LOG (JSON) gets every write with the bitmaps it may be
in; 'cover LOG FILE' checks that each is wholly dirty in one of them.

  broken SOCK CTL LOG REASON_REGEX [--open-fails]
      the store breaks while a backup reads: writes all succeed, status
      says broken with a reason matching REASON_REGEX, reads fail with EIO
      (on the open reader and on a new one).  --open-fails: the store
      cannot even be created: the checkpoint is refused and not taken.
  killrun SOCK CTL LOG PID
      writers go on while a snapshot is read; half way through the read,
      nbdkit PID is killed with SIGKILL.  LOG: the writes acknowledged.
  release SOCK CTL LOG PID STOREDIR
      release while a reader is connected.
  grow SOCK CTL LOG DISK
      the export grows (file plugin) under a live snapshot.
  badinput SOCK CTL PID
      bad control commands change nothing.
  granularity SOCK CTL LOG GRAN
      bitmap-snapshot-granularity=GRAN: copies are GRAN bytes.
  cover LOG FILE
"""
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from snapshot_oracle import BLOCK, ask, status, stamp  # noqa: E402

import nbd  # noqa: E402

G = 65536


def die(msg):
    sys.exit("FAIL: " + msg)


def connect(sock, export=""):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (export, sock))
    return h


def snap_uri(sock, name):
    return "nbd+unix:///snapshot:%s?socket=%s" % (name, sock)


def list_exports(sock):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri("nbd+unix:///?socket=%s" % sock)
    names = []
    h.opt_list(lambda name, desc: names.append(name) or 0)
    h.opt_abort()
    return names


def expect_errno(what, fn, want):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            die("%s failed with %s, expected %s" %
                (what, e, errno.errorcode[want]))
        return
    die("%s succeeded, expected %s" % (what, errno.errorcode[want]))


def snap_entry(ctl, name):
    s = [x for x in status(ctl)["snapshots"] if x["name"] == name]
    return s[0] if s else None


def store_fds(pid, storedir):
    """The snapshot stores nbdkit PID holds open: {fd: (size, blocks)}."""
    out = {}
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            link = os.readlink(os.path.join(d, fd))
            if link.startswith(storedir + "/") and link.endswith("(deleted)"):
                st = os.stat(os.path.join(d, fd))
                out[int(fd)] = (st.st_size, st.st_blocks)
        except OSError:
            pass
    return out


class Log:
    def __init__(self, path):
        self.path = path
        self.writes = []

    def add(self, off, n, bitmaps):
        self.writes.append({"offset": off, "length": n, "bitmaps": bitmaps})

    def save(self):
        with open(self.path, "w") as f:
            json.dump(self.writes, f)


def write_all(h, log, seq0, offs, n, bitmaps, conn=1):
    for i, off in enumerate(offs):
        h.pwrite(stamp(conn, seq0 + i, off, n), off)
        log.add(off, n, bitmaps)


# ------------------------------------------------------------------ cases

def broken(sock, ctl, logp, reason, open_fails=False):
    log = Log(logp)
    w = connect(sock)
    first = [b["name"] for b in status(ctl)["bitmaps"] if b["enabled"]][0]
    ngran = 32
    write_all(w, log, 1, [i * G for i in range(ngran)], G, [first])
    reply = refused = ask(ctl, "checkpoint c1 --snapshot")
    if open_fails:
        if not reply.startswith("error: ") or not re.search(reason, reply):
            die("checkpoint with no store: %r, expected an error matching "
                "%r" % (reply, reason))
        st = status(ctl)
        if any(b["name"] == "c1" for b in st["bitmaps"]) or st["snapshots"]:
            die("a refused snapshot took its checkpoint: %r" % st)
        write_all(w, log, 100, [0], G, [first])
        # The fault was one-shot: the next one works.
        reply = ask(ctl, "checkpoint c2 --snapshot")
        if reply != "ok":
            die("checkpoint c2 --snapshot after the fault: %r" % reply)
        r = nbd.NBD()
        r.connect_uri(snap_uri(sock, "c2"))
        if r.pread(G, 0) != stamp(1, 100, 0, G):
            die("c2: wrong contents")
        r.shutdown()
        if ask(ctl, "release c2") != "ok":
            die("release c2")
        write_all(w, log, 200, [G], G, ["c2"])
        w.shutdown()
        log.save()
        print("store creation failure: checkpoint refused (%s), nothing "
              "taken" % refused)
        return
    if reply != "ok":
        die("checkpoint c1 --snapshot: %r" % reply)
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c1"))
    # The backup starts: the first granules read fine.
    for i in range(2):
        if r.pread(G, i * G) != stamp(1, 1 + i, i * G, G):
            die("c1: granule %d: wrong contents before the fault" % i)
    # Overwrite everything: copies fill the store until it fails.  Every
    # write must succeed all the same.
    for rnd in range(2):
        write_all(w, log, 1000 * (rnd + 1), [i * G for i in range(ngran)],
                  G, ["c1"])
    for i in range(ngran):
        if w.pread(G, i * G) != stamp(1, 2000 + i, i * G, G):
            die("the export does not hold the write at %d" % (i * G))
    e = snap_entry(ctl, "c1")
    if e is None or e["state"] != "broken" or "reason" not in e or \
            not re.search(reason, e["reason"]):
        die("c1: status %r, expected broken with a reason matching %r" %
            (e, reason))
    if e["readers"] != 1:
        die("c1: readers %r, expected 1" % e["readers"])
    expect_errno("a read of the broken snapshot", lambda: r.pread(G, 0),
                 errno.EIO)
    expect_errno("a read of the broken snapshot beyond what was preserved",
                 lambda: r.pread(BLOCK, (ngran - 1) * G), errno.EIO)
    r2 = nbd.NBD()
    r2.connect_uri(snap_uri(sock, "c1"))
    expect_errno("a new reader of the broken snapshot",
                 lambda: r2.pread(BLOCK, 0), errno.EIO)
    r2.shutdown()
    r.shutdown()
    if ask(ctl, "release c1") != "ok":
        die("release of a broken snapshot")
    if status(ctl)["snapshots"]:
        die("snapshots left after release")
    write_all(w, log, 3000, [i * G for i in range(0, ngran, 4)], G, ["c1"])
    w.shutdown()
    log.save()
    print("broken: %s" % e["reason"])


def killrun(sock, ctl, logp, pid):
    writes = []
    lock = threading.Lock()
    stop = threading.Event()
    h0 = connect(sock)              # the file exists from here on
    size = h0.get_size()
    first = [b["name"] for b in status(ctl)["bitmaps"] if b["enabled"]][0]
    started = threading.Semaphore(0)

    def writer(conn):
        import random
        h = connect(sock)
        rng = random.Random(conn)
        seq = 0
        started.release()
        while not stop.is_set():
            seq += 1
            nb = rng.randint(1, 32)
            off = rng.randrange(0, size // BLOCK - nb + 1) * BLOCK
            buf = stamp(conn, seq, off, nb * BLOCK)
            t0 = time.monotonic_ns()
            try:
                h.pwrite(buf, off)
            except nbd.Error:
                return          # the server is gone
            t1 = time.monotonic_ns()
            with lock:
                writes.append((off, nb * BLOCK, t0, t1))
            if seq > 100000:
                return

    ts = [threading.Thread(target=writer, args=(c,)) for c in (1, 2)]
    for t in ts:
        t.start()
    for _ in ts:
        started.acquire()
    time.sleep(0.1)
    t_cs = time.monotonic_ns()
    reply = ask(ctl, "checkpoint c1 --snapshot")
    t_ok = time.monotonic_ns()
    if reply != "ok":
        stop.set()
        die("checkpoint c1 --snapshot: %r" % reply)
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c1"))
    chunk = 1 << 20
    read = 0
    try:
        for off in range(0, size, chunk):
            if off >= size // 2:
                os.kill(pid, signal.SIGKILL)        # mid-backup
                break
            r.pread(chunk, off)
            read += chunk
    finally:
        stop.set()
        for t in ts:
            t.join(120)
    log = Log(logp)
    for off, n, t0, t1 in writes:
        # In the bitmap before c1 if acknowledged before the command, in
        # c1 if sent after the reply, else in either.
        if t1 < t_cs:
            log.add(off, n, [first])
        elif t0 > t_ok:
            log.add(off, n, ["c1"])
        else:
            log.add(off, n, [first, "c1"])
    log.save()
    print("killed nbdkit %d after reading %d MiB of the snapshot; %d writes "
          "acknowledged" % (pid, read >> 20, len(writes)))


def release(sock, ctl, logp, pid, storedir):
    log = Log(logp)
    w = connect(sock)
    first = [b["name"] for b in status(ctl)["bitmaps"] if b["enabled"]][0]
    write_all(w, log, 1, [i * G for i in range(16)], G, [first])
    before = store_fds(pid, storedir)
    if ask(ctl, "checkpoint c1 --snapshot") != "ok":
        die("checkpoint c1 --snapshot")
    stores = {fd: v for fd, v in store_fds(pid, storedir).items()
              if fd not in before}
    if len(stores) != 1:
        die("expected one new store open in %s, found %r" %
            (storedir, stores))
    fd = list(stores)[0]
    if os.listdir(storedir):
        die("the store is visible in %s: %r" % (storedir,
                                                os.listdir(storedir)))
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c1"))
    if r.pread(G, 0) != stamp(1, 1, 0, G):
        die("c1: wrong contents")
    write_all(w, log, 100, [i * G for i in range(8)], G, ["c1"])
    e = snap_entry(ctl, "c1")
    if e is None or e["readers"] != 1 or e["store_bytes"] != 8 * G or \
            e["preserved_bytes"] != 8 * G or e["state"] != "active":
        die("c1 before release: %r" % e)
    sz = store_fds(pid, storedir).get(fd)
    if sz is None or sz[0] < 8 * G or sz[1] == 0:
        die("the store holds nothing on disk: %r" % (sz,))
    if r.pread(G, 7 * G) != stamp(1, 8, 7 * G, G):
        die("c1: a preserved granule reads wrong")
    if "snapshot:c1" not in list_exports(sock):
        die("snapshot:c1 not listed")
    reply = ask(ctl, "release c1")
    if reply != "ok":
        die("release c1: %r" % reply)
    expect_errno("the connected reader's read after release",
                 lambda: r.pread(G, 0), errno.EIO)
    expect_errno("the connected reader's read of a preserved granule after "
                 "release", lambda: r.pread(BLOCK, 7 * G), errno.EIO)
    lst = list_exports(sock)
    if "snapshot:c1" in lst:
        die("snapshot:c1 still listed after release: %r" % lst)
    h = nbd.NBD()
    try:
        h.connect_uri(snap_uri(sock, "c1"))
        die("a new connection to the released snapshot was accepted")
    except nbd.Error:
        pass
    if status(ctl)["snapshots"]:
        die("status still lists a snapshot: %r" % status(ctl)["snapshots"])
    # Its space is given back at once (the reader still holds it open).
    sz = store_fds(pid, storedir).get(fd)
    if sz is not None and (sz[0] != 0 or sz[1] != 0):
        die("the released store still holds %r (size, blocks)" % (sz,))
    reply = ask(ctl, "release c1")
    if not reply.startswith("error: ") or "c1" not in reply:
        die("a second release c1: %r" % reply)
    write_all(w, log, 200, [i * G for i in range(16)], G, ["c1"])
    r.shutdown()
    w.shutdown()
    log.save()
    print("release with a reader connected: EIO, unlisted, refused; store "
          "size after release %r" % (sz,))


def grow(sock, ctl, logp, disk):
    log = Log(logp)
    w = connect(sock)
    size = w.get_size()
    first = [b["name"] for b in status(ctl)["bitmaps"] if b["enabled"]][0]
    write_all(w, log, 1, range(0, size, 4 * G), G, [first])
    write_all(w, log, 500, [size - BLOCK], BLOCK, [first])
    if ask(ctl, "checkpoint c1 --snapshot") != "ok":
        die("checkpoint c1 --snapshot")
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c1"))
    before = hashlib.sha256(r.pread(size, 0)).hexdigest()
    write_all(w, log, 1000, [0, 4 * G], G, ["c1"])
    w.shutdown()
    os.truncate(disk, 2 * size)
    w = connect(sock)
    if w.get_size() != 2 * size:
        die("the export did not grow: %d" % w.get_size())
    write_all(w, log, 2000, [size, size + 5 * G, 2 * size - G, 8 * G], G,
              ["c1"])
    st = status(ctl)
    e = [x for x in st["snapshots"] if x["name"] == "c1"]
    if st["export_size"] != 2 * size or len(e) != 1 or \
            e[0]["size"] != size or e[0]["state"] != "active":
        die("after growth: export_size %r, snapshot %r" %
            (st["export_size"], e))
    if r.get_size() != size:
        die("the connected reader's size changed: %d" % r.get_size())
    r2 = nbd.NBD()
    r2.connect_uri(snap_uri(sock, "c1"))
    if r2.get_size() != size:
        die("a new reader sees size %d, expected %d" % (r2.get_size(), size))
    for h, who in ((r, "connected reader"), (r2, "new reader")):
        if hashlib.sha256(h.pread(size, 0)).hexdigest() != before:
            die("the %s sees other contents after the growth" % who)
    r2.shutdown()
    r.shutdown()
    if ask(ctl, "release c1") != "ok":
        die("release c1")
    w.shutdown()
    log.save()
    print("growth %d -> %d: snapshot keeps size %d and contents" %
          (size, 2 * size, size))


def badinput(sock, ctl, pid):
    # Before any client: refused for want of a size, or taken with the
    # size the plugin gave at start; either way consistent.
    reply = ask(ctl, "checkpoint early --snapshot")
    if reply == "ok":
        e = snap_entry(ctl, "early")
        r = nbd.NBD()
        r.connect_uri(snap_uri(sock, "early"))
        if e is None or e["size"] != r.get_size() or r.get_size() == 0 or \
                r.pread(G, 0) != bytes(G):
            die("a snapshot before any writer: %r" % e)
        r.shutdown()
        if ask(ctl, "release early") != "ok":
            die("release early")
    elif "no client has connected yet" not in reply:
        die("a snapshot before any writer: %r" % reply)
    w = connect(sock)
    w.pwrite(b"x" * G, 0)

    def state():
        st = status(ctl)
        st.pop("last_persist", None)
        return st, sorted(list_exports(sock)), \
            len(store_fds(pid, os.path.dirname(st["file"])))

    st0 = state()
    cases = [
        ("checkpoint x --snapshot=bogus", ["bogus"]),
        ("release nosuch", ["nosuch"]),
        ("release", ["release"]),
        ("release a b", ["release"]),
        ("checkpoint --snapshot", ["checkpoint"]),
        ("checkpoint x --snapshot --snapshot=dirty", ["snapshot"]),
        ("checkpoint x --snapshot=", ["snapshot"]),
        ("checkpoint x --snapshot 3000", ["3000"]),
        ("checkpoint x --snapshotfull", ["snapshot"]),
        ("checkpoint %s --snapshot" % st0[0]["bitmaps"][0]["name"],
         ["already exists"]),
        ("checkpoint %s --snapshot" % ("n" * 1100), ["NAME"]),
    ]
    bad = []
    for cmd, words in cases:
        reply = ask(ctl, cmd)
        ok = reply.startswith("error: ") and \
            all(wd.lower() in reply.lower() for wd in words)
        print("%-45.45s -> %s" % (cmd, reply[:150]))
        if not ok:
            bad.append("%r: reply %r does not name the problem (%s)" %
                       (cmd, reply, ", ".join(words)))
        if state() != st0:
            bad.append("%r changed the state: %r -> %r" %
                       (cmd, st0, state()))
    if bad:
        die("\n".join(bad))
    # The name x was not used up.
    for v in ("--snapshot=dirty", "--snapshot=full"):
        name = "x" + v[-4:]
        if ask(ctl, "checkpoint %s %s" % (name, v)) != "ok":
            die("checkpoint %s %s after the bad ones" % (name, v))
        if ask(ctl, "release " + name) != "ok":
            die("release " + name)
    w.shutdown()


def granularity(sock, ctl, logp, gran):
    """bitmap-snapshot-granularity=GRAN: copies are GRAN bytes."""
    log = Log(logp)
    w = connect(sock)
    first = [b["name"] for b in status(ctl)["bitmaps"] if b["enabled"]][0]
    write_all(w, log, 1, [0], G, [first])
    if ask(ctl, "checkpoint c1 --snapshot") != "ok":
        die("checkpoint c1 --snapshot")
    write_all(w, log, 10, [2 * gran], BLOCK, ["c1"])
    e = snap_entry(ctl, "c1")
    if e is None or e["granularity"] != gran or \
            e["store_bytes"] != gran or e["preserved_bytes"] != gran:
        die("c1 after one %d-byte write: %r, expected granularity, "
            "store_bytes and preserved_bytes %d" % (BLOCK, e, gran))
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c1"))
    if r.pread(G, 0) != stamp(1, 1, 0, G):
        die("c1: wrong contents")
    r.shutdown()
    if ask(ctl, "release c1") != "ok":
        die("release c1")
    # A dirty snapshot at this granularity: readable exactly where c1 is
    # dirty (its first 64K granule).
    if ask(ctl, "checkpoint c2 --snapshot=dirty") != "ok":
        die("checkpoint c2 --snapshot=dirty")
    write_all(w, log, 20, [0, G], G, ["c2"])
    r = nbd.NBD()
    r.connect_uri(snap_uri(sock, "c2"))
    want = bytearray(stamp(1, 1, 0, G))
    want[2 * gran:2 * gran + BLOCK] = stamp(1, 10, 2 * gran, BLOCK)
    if r.pread(G, 0) != want:
        die("c2: wrong contents")
    expect_errno("a read of c2 outside c1's dirty granule",
                 lambda: r.pread(BLOCK, G), errno.EPERM)
    r.shutdown()
    if ask(ctl, "release c2") != "ok":
        die("release c2")
    w.shutdown()
    log.save()
    print("bitmap-snapshot-granularity=%d: copies of %d bytes" % (gran, gran))


def cover(logp, path):
    D = os.environ["DIRTYBITMAP"]
    maps = {}

    def dirty(name):
        if name not in maps:
            out = subprocess.run([D, "map", path, name, "--json"],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                die("dirtybitmap map %s %s: %s" % (path, name, out.stderr))
            gs = set()
            for e in json.loads(out.stdout):
                if e["dirty"]:
                    gs.update(range(e["offset"] // G,
                                    (e["offset"] + e["length"] - 1) // G + 1))
            maps[name] = gs
        return maps[name]

    writes = json.load(open(logp))
    bad = 0
    for w in writes:
        g = set(range(w["offset"] // G, (w["offset"] + w["length"] - 1) // G
                      + 1))
        if not any(g <= dirty(b) for b in w["bitmaps"]):
            bad += 1
            if bad <= 5:
                print("write %d+%d is dirty in none of %s" %
                      (w["offset"], w["length"], w["bitmaps"]))
    if bad:
        die("%d of %d writes not covered by the bitmaps of %s" %
            (bad, len(writes), path))
    print("%d writes covered by %s" % (len(writes), sorted(maps)))


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    cmd = a[0]
    if cmd == "broken":
        broken(a[1], a[2], a[3], a[4], "--open-fails" in a)
    elif cmd == "killrun":
        killrun(a[1], a[2], a[3], int(a[4]))
    elif cmd == "release":
        release(a[1], a[2], a[3], int(a[4]), a[5])
    elif cmd == "grow":
        grow(a[1], a[2], a[3], a[4])
    elif cmd == "badinput":
        badinput(a[1], a[2], int(a[3]))
    elif cmd == "granularity":
        granularity(a[1], a[2], a[3], int(a[4]))
    elif cmd == "cover":
        cover(a[1], a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
