#!/usr/bin/python3
"""A small incremental-backup agent for an nbdkit export tracked by the
dirtybitmap filter (started with bitmap-control=SOCKET).

  backup-agent.py full        --uri URI --control SOCKET --dir DIR
  backup-agent.py incremental --uri URI --control SOCKET --dir DIR
  backup-agent.py restore     --dir DIR --out IMAGE [--upto N]

full:        checkpoint bk-1 (from now on writes go to bitmap bk-1), then
             copy the whole export to DIR/0.img (sparse).
incremental: checkpoint bk-N+1, which freezes bk-N: it now says exactly
             which granules changed since the previous backup.  Read its
             dirty extents from the bitmap file (a disabled bitmap may be
             read while the filter runs), copy only those from the export
             into DIR/N.data, list them in DIR/N.json, then remove bk-N.
restore:     write 0.img, then apply each increment in order.

Each step prints one JSON line (bytes copied, extents).  The chain's state
lives in DIR/chain.json.  Writes that race with a copy are caught by the
next increment (the bitmap that records them is already in place), but a
backup taken while the export is busy is not a point-in-time image:
quiesce the writers if you need one.
"""
import argparse
import json
import os
import socket
import subprocess
import sys

CHUNK = 4 << 20


def ask(control, line):
    s = socket.socket(socket.AF_UNIX)
    s.connect(control)
    s.sendall((line + "\n").encode())
    reply = s.makefile().readline().strip()
    s.close()
    if reply.startswith("error: "):
        sys.exit("backup-agent: %s: %s" % (line, reply[7:]))
    return reply


def connect(uri):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def load_chain(d):
    with open(os.path.join(d, "chain.json")) as f:
        return json.load(f)


def save_chain(d, chain):
    tmp = os.path.join(d, "chain.json.tmp")
    with open(tmp, "w") as f:
        json.dump(chain, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(d, "chain.json"))


def full(args):
    os.makedirs(args.dir, exist_ok=True)
    ask(args.control, "checkpoint bk-1")
    h = connect(args.uri)
    size = h.get_size()
    copied = 0
    with open(os.path.join(args.dir, "0.img"), "wb") as out:
        out.truncate(size)
        for off in range(0, size, CHUNK):
            buf = h.pread(min(CHUNK, size - off), off)
            if buf.count(0) != len(buf):         # leave zeros as holes
                out.seek(off)
                out.write(buf)
            copied += len(buf)
    h.shutdown()
    save_chain(args.dir, {"size": size, "next": 1, "bitmap": "bk-1"})
    print(json.dumps({"backup": 0, "bytes_copied": copied}))


def dirty_extents(bitmap_file, name):
    out = subprocess.run([os.environ.get("DIRTYBITMAP", "dirtybitmap"),
                          "map", bitmap_file, name, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return [(e["offset"], e["length"]) for e in json.loads(out) if e["dirty"]]


def incremental(args):
    chain = load_chain(args.dir)
    n, old = chain["next"], chain["bitmap"]
    new = "bk-%d" % (n + 1)
    ask(args.control, "checkpoint " + new)
    # From here OLD is disabled and final on disk.
    status = json.loads(ask(args.control, "status"))
    if status["export_size"] != chain["size"]:
        sys.exit("backup-agent: the export size changed: take a full backup")
    extents = dirty_extents(status["file"], old)
    h = connect(args.uri)
    copied = 0
    with open(os.path.join(args.dir, "%d.data" % n), "wb") as data:
        for off, length in extents:
            for o in range(off, off + length, CHUNK):
                data.write(h.pread(min(CHUNK, off + length - o), o))
        data.flush()
        os.fsync(data.fileno())
        copied = data.tell()
    h.shutdown()
    with open(os.path.join(args.dir, "%d.json" % n), "w") as f:
        json.dump(extents, f)
    chain.update(next=n + 1, bitmap=new)
    save_chain(args.dir, chain)
    ask(args.control, "remove " + old)
    print(json.dumps({"backup": n, "bitmap": old, "extents": len(extents),
                      "bytes_copied": copied}))


def restore(args):
    chain = load_chain(args.dir)
    upto = chain["next"] - 1 if args.upto is None else args.upto
    with open(os.path.join(args.dir, "0.img"), "rb") as src, \
         open(args.out, "wb") as out:
        out.truncate(chain["size"])
        while True:
            off = src.tell()
            buf = src.read(CHUNK)
            if not buf:
                break
            if buf.count(0) != len(buf):
                out.seek(off)
                out.write(buf)
        for n in range(1, upto + 1):
            with open(os.path.join(args.dir, "%d.json" % n)) as f:
                extents = json.load(f)
            with open(os.path.join(args.dir, "%d.data" % n), "rb") as data:
                for off, length in extents:
                    out.seek(off)
                    out.write(data.read(length))
    print(json.dumps({"restored": args.out, "increments": upto}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["full", "incremental", "restore"])
    p.add_argument("--uri")
    p.add_argument("--control")
    p.add_argument("--dir", required=True)
    p.add_argument("--out")
    p.add_argument("--upto", type=int)
    args = p.parse_args()
    if args.command in ("full", "incremental") and not (args.uri and args.control):
        p.error("%s needs --uri and --control" % args.command)
    if args.command == "restore" and not args.out:
        p.error("restore needs --out")
    {"full": full, "incremental": incremental, "restore": restore}[args.command](args)


if __name__ == "__main__":
    main()
