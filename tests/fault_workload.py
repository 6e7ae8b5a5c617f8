#!/usr/bin/python3
"""Scripted workload for the fault-injection test.

  fault_workload.py URI BITMAP_FILE OUT.json

Runs a fixed sequence of requests on one connection, one at a time, and
records each outcome.  After every flush or FUA write that succeeds it
copies the bitmap file to OUT.json's directory (snap-K.qcow2), so the test
can check that the reply was not a false success.
"""
import errno
import json
import os
import shutil
import sys

import nbd

uri, bm, out = sys.argv[1], sys.argv[2], sys.argv[3]
h = nbd.NBD()
h.connect_uri(uri)
M = 1 << 20
ops = [("w", 0), ("w", 3 * M), ("flush",), ("r", 0), ("w", 9 * M),
       ("fua", 12 * M), ("trim", 17 * M), ("zero", 21 * M), ("flush",),
       ("w", 33 * M), ("w", 45 * M), ("flush",), ("fua", 50 * M)]
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
            h.trim(4096, op[1])
        elif op[0] == "zero":
            h.zero(4096, op[1])
        elif op[0] == "r":
            h.pread(4096, op[1])
        elif op[0] == "flush":
            h.flush()
        if op[0] in ("flush", "fua"):
            k += 1
            snap = os.path.join(os.path.dirname(out), "snap-%d.qcow2" % k)
            shutil.copy(bm, snap)
            rec["snap"] = snap
    except nbd.Error as e:
        rec["ok"] = False
        rec["errno"] = errno.errorcode.get(e.errnum, str(e.errnum))
    log.append(rec)
h.shutdown()
json.dump(log, open(out, "w"))
