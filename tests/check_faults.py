#!/usr/bin/python3
"""Verdict for one fault-injection run.

  check_faults.py RESULTS.json FINAL.qcow2 MODE

  * every data request that reached the plugin is dirty in the union of
    the bitmaps of the final file (read after a restart without faults):
    in qemu mode every one sent (the write path never touches the file);
    in crash-safe mode every one that succeeded (one whose pre-marking
    failed is refused before it is forwarded, and the plugin below never
    fails);
  * every flush/FUA that succeeded left a snapshot covering every write
    sent before it (never a false success);
  * a bitmap a checkpoint disabled may be removed, taking the writes
    before that checkpoint with it: those are exempt once the removal
    succeeded (and only then);
  * failures are only ENOSPC or EIO, only on requests that change data or
    flush, and reads never fail; control commands fail with a message; a
    growth that fails refuses the new connection (nbdkit's handshake error);
  * a read of the snapshot where a write landed after its cut returns the
    contents at the cut (zeroes) or fails with EIO (a broken snapshot, or
    one never taken: then the connection is refused), never the write;
  * no zero map calls zero a range that was not trimmed or zeroed.
"""
import json
import os
import subprocess
import sys

res = json.load(open(sys.argv[1]))
final_file = sys.argv[2]
mode = sys.argv[3]
D = os.environ["DIRTYBITMAP"]


# Every range a zero map may call zero: the workload's trim and zero
# requests (65536 bytes each, no data written there afterwards).
ZEROED = [(r["offset"], 65536) for r in res if r["op"] in ("trim", "zero")]


def union_map(path):
    """Dirty extents of every bitmap of PATH (last persisted contents);
    a zero extent outside ZEROED is a problem (bad)."""
    info = subprocess.run([D, "info", path, "--json"], capture_output=True,
                          text=True)
    if info.returncode != 0:
        return None
    ext = []
    for b in json.loads(info.stdout)["bitmaps"]:
        out = subprocess.run([D, "map", path, b["name"], "--json", "--force"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return None
        for e in json.loads(out.stdout):
            if e["zero"] and not any(a <= e["offset"] and
                                     e["offset"] + e["length"] <= a + n
                                     for a, n in ZEROED):
                bad.append("%s: bitmap %s calls %d+%d zero, never zeroed" %
                           (path, b["name"], e["offset"], e["length"]))
        ext += [(e["offset"], e["length"]) for e in json.loads(out.stdout)
                if e["dirty"]]
    return ext


def covered(ext, off):
    return any(a <= off and off + 4096 <= a + n for a, n in ext)


sent = []          # [offset, before_checkpoint]
checkpointed = False
bad = []
for r in res:
    if r["op"] in ("w", "fua", "trim", "zero") and (r["ok"] or mode == "qemu"):
        sent.append([r["offset"], False])
    if r["op"] == "snapread" and r["ok"] and r["data"] != "zero":
        bad.append("the snapshot shows %s data written after its cut" %
                   r["data"])
    if r["op"] in ("checkpoint", "snapshot"):
        # Whatever the reply said, the writes before it are in the bitmap
        # the checkpoint disabled if it took effect.
        for s in sent:
            s[1] = True
        checkpointed = True
    # A removal committed whose directory sync failed says so ("done, but
    # not yet durable"): it took effect all the same.
    if r["op"] == "remove" and (r["ok"] or "done, but not yet durable" in
                                r.get("reply", "")):
        if not checkpointed:
            bad.append("remove of the enabled bitmap succeeded")
        sent = [s for s in sent if not s[1]]
    if not r["ok"]:
        if r["op"] == "r":
            bad.append("a read failed")
        if r["op"] == "grow":
            pass        # the new connection is refused: nbdkit says ENOENT
        elif r["op"] == "snapread":
            if r.get("errno") not in ("EIO", "ENOENT", "EINVAL", None):
                bad.append("snapshot read failed with %s" % r.get("errno"))
        elif r["op"] in ("checkpoint", "remove", "snapshot", "release"):
            if not r.get("reply", "").startswith("error: "):
                bad.append("%s failed without an error line: %r" %
                           (r["op"], r.get("reply")))
        elif r.get("errno") not in ("ENOSPC", "EIO"):
            bad.append("%s failed with %s" % (r["op"], r.get("errno")))
    if r["ok"] and "snap" in r:
        snap = union_map(r["snap"])
        if snap is None:
            bad.append("%s reply, but the file copied after it is unreadable"
                       % r["op"])
            continue
        for off, _ in sent:
            if not covered(snap, off):
                bad.append("%s reply was a false success: write at %d "
                           "missing from the file" % (r["op"], off))
final = union_map(final_file)
if final is None:
    bad.append("final file unreadable")
else:
    for off, _ in sent:
        if not covered(final, off):
            bad.append("write at %d missing after restart" % off)
if bad:
    print("\n".join(sorted(set(bad))))
    sys.exit(1)
