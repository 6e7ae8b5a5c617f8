#!/usr/bin/python3
"""Scripted workload for the fault-injection test.

  fault_workload.py URI BITMAP_FILE OUT.json [CONTROL_SOCKET [DISK_IMAGE]]

Runs a fixed sequence of requests on one connection, one at a time, and
records each outcome.  After every flush or FUA write that succeeds it
copies the bitmap file to OUT.json's directory (snap-K.qcow2), so the test
can check that the reply was not a false success.  With CONTROL_SOCKET it
also takes a checkpoint and removes the bitmap that checkpoint disabled
(so faults hit the rewrites of checkpoint and removal, and the zero map
the checkpoint saves for the whole granules trimmed and zeroed), then a
checkpoint with a snapshot, a write its copy-before-write must preserve,
a read of the snapshot there (it must never show the new data) and its
release (so faults hit the snapshot's store and its note in the
bitmap file); with DISK_IMAGE
(the file plugin's file) it then grows the disk and connects again, so
that the new connection grows the bitmap file (faults hit growth).
"""
import errno
import json
import os
import shutil
import socket
import sys
import urllib.parse

import nbd

uri, bm, out = sys.argv[1], sys.argv[2], sys.argv[3]
ctl = sys.argv[4] if len(sys.argv) > 4 else None
disk = sys.argv[5] if len(sys.argv) > 5 else None
M = 1 << 20
ops = [("w", 0), ("w", 3 * M), ("flush",), ("r", 0), ("w", 9 * M),
       ("fua", 12 * M), ("trim", 17 * M), ("zero", 21 * M), ("flush",)]
if ctl:
    ops += [("checkpoint", "c1"), ("w", 33 * M), ("flush",),
            ("remove", "dirtybitmap"), ("w", 45 * M), ("flush",),
            ("snapshot", "s1"), ("w", 40 * M), ("snapread", 40 * M),
            ("release", "s1")]
else:
    ops += [("w", 33 * M), ("w", 45 * M), ("flush",)]
ops += [("fua", 50 * M)]
if disk:
    ops += [("grow", 16 * M), ("w", 66 * M), ("w", 76 * M), ("flush",)]


def control(line):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(ctl)
    s.sendall((line + "\n").encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    return reply.decode().strip()


h = nbd.NBD()
h.connect_uri(uri)
log = []
k = 0
for op in ops:
    rec = {"op": op[0], "offset": op[1] if len(op) > 1 else None, "ok": True}
    try:
        if op[0] == "w":
            h.pwrite(b"d" * 4096, op[1])
        elif op[0] == "fua":
            h.pwrite(b"f" * 4096, op[1], nbd.CMD_FLAG_FUA)
        elif op[0] == "trim":
            h.trim(65536, op[1])        # whole granules: a zero map to save
        elif op[0] == "zero":
            h.zero(65536, op[1])
        elif op[0] == "r":
            h.pread(4096, op[1])
        elif op[0] == "flush":
            h.flush()
        elif op[0] in ("checkpoint", "remove", "release", "snapshot"):
            line = ("checkpoint %s --snapshot" % op[1] if op[0] == "snapshot"
                    else "%s %s" % op)
            reply = control(line)
            rec["reply"] = reply
            rec["ok"] = reply == "ok"
        elif op[0] == "snapread":
            # The snapshot's bytes where a write landed after the cut:
            # zeroes (the disk's contents then), or a clean failure.
            rec["errno"] = None
            s = nbd.NBD()
            u = urllib.parse.urlsplit(uri)
            s.connect_uri("%s://%s/snapshot:s1?%s" % (u.scheme, u.netloc,
                                                     u.query))
            assert s.get_export_name() == "snapshot:s1"
            data = s.pread(4096, op[1])
            s.shutdown()
            rec["data"] = ("zero" if data == bytes(4096) else
                           "new" if data == b"d" * 4096 else "other")
        elif op[0] == "grow":
            # A larger disk, seen by the next connection.
            h.shutdown()
            with open(disk, "r+b") as f:
                f.truncate(os.path.getsize(disk) + op[1])
            h = nbd.NBD()
            h.connect_uri(uri)
        if op[0] in ("flush", "fua"):
            k += 1
            snap = os.path.join(os.path.dirname(out), "snap-%d.qcow2" % k)
            shutil.copy(bm, snap)
            rec["snap"] = snap
    except nbd.Error as e:
        rec["ok"] = False
        rec["errno"] = errno.errorcode.get(e.errnum, str(e.errnum))
        if op[0] == "grow":
            # The new connection was refused (growth failed): try once more
            # so the rest of the run still has a connection.
            try:
                h = nbd.NBD()
                h.connect_uri(uri)
            except nbd.Error:
                log.append(rec)
                break
    log.append(rec)
try:
    h.shutdown()
except nbd.Error:
    pass
json.dump(log, open(out, "w"))
