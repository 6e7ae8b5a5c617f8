#!/usr/bin/python3
"""Verdict for one fault-injection run.

  check_faults.py RESULTS.json FINAL_MAP MODE  (FINAL_MAP: "OFFSET LENGTH" lines)

  * every data request that reached the plugin is dirty in the final
    bitmap (read after a restart without faults): in qemu mode every one
    sent (the write path never touches the file); in crash-safe mode every
    one that succeeded (one whose pre-marking failed is refused before it
    is forwarded, and the memory plugin below never fails);
  * every flush/FUA that succeeded left a snapshot covering every write
    sent before it (never a false success);
  * failures are only ENOSPC or EIO, only on requests that change data or
    flush, and reads never fail.
"""
import json
import subprocess
import sys

res = json.load(open(sys.argv[1]))
mode = sys.argv[3]
G = 65536


def load(lines):
    return [tuple(map(int, l.split())) for l in lines if l.strip()]


def covered(ext, off):
    return any(a <= off and off + 4096 <= a + n for a, n in ext)


final = load(open(sys.argv[2]))
sent = []
bad = []
for r in res:
    if r["op"] in ("w", "fua", "trim", "zero") and (r["ok"] or mode == "qemu"):
        sent.append(r["offset"])
    if not r["ok"]:
        if r["op"] == "r":
            bad.append("a read failed")
        if r.get("errno") not in ("ENOSPC", "EIO"):
            bad.append("%s failed with %s" % (r["op"], r.get("errno")))
    if r["ok"] and "snap" in r:
        out = subprocess.run(["dirtybitmap-map-force", r["snap"]],
                             capture_output=True, text=True)
        snap = load(out.stdout.splitlines())
        for off in sent:
            if not covered(snap, off):
                bad.append("%s reply was a false success: write at %d "
                           "missing from the file" % (r["op"], off))
for off in sent:
    if not covered(final, off):
        bad.append("write at %d missing after restart" % off)
if bad:
    print("\n".join(sorted(set(bad))))
    sys.exit(1)
