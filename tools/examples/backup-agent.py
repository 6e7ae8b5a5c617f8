#!/usr/bin/python3
"""An incremental-backup agent for an nbdkit export tracked by the
dirtybitmap filter (started with bitmap-control=SOCKET), copying every
backup from a point-in-time snapshot while the export stays in use.

  backup-agent.py full        --uri URI --control SOCKET --dir DIR
                              [--new-chain] [--keep-snapshot]
  backup-agent.py incremental --uri URI --control SOCKET --dir DIR
                              [--variant dirty|full] [--keep-snapshot]
  backup-agent.py release     --control SOCKET --dir DIR
  backup-agent.py restore     --dir DIR --out IMAGE [--upto N]

  common options: --json  --progress | --no-progress
                  --dirtybitmap PATH  --chunk-size BYTES

full         checkpoint bk-N --snapshot: from its cut on, writes go to the
             new bitmap bk-N, and the export as it was at the cut is served
             read-only as export snapshot:bk-N.  Copy that whole export
             (sparse, skipping what its extents say is zero) into DIR,
             release the snapshot, remove the agent's bitmap it froze.  A
             full backup in a DIR that already holds a chain adds a new
             full restore point to it; --new-chain starts a new chain
             instead: once the new full backup is complete, the earlier
             restore points are deleted and every bitmap named bk-N but the
             new one is removed (so a chain.json that cannot be read is
             replaced too).
incremental  checkpoint bk-N --snapshot=dirty, which freezes bk-(N-1): it
             says exactly which granules changed since the previous
             backup, and the dirty snapshot preserves just those.  Read the
             frozen bitmap with `dirtybitmap map`, copy its dirty extents
             from snapshot:bk-N into DIR, release the snapshot, remove
             bk-(N-1).  (--variant full takes a full snapshot instead.)
             Refused, before anything is done, when the chain's bitmap is
             missing or no longer records writes (someone else took a
             checkpoint): run `full`.  An export that grew is fine: the new
             area is dirty, and the restore point has the new size.
release      end what --keep-snapshot kept: the snapshots, and the bitmaps
             those backups read.
restore      write restore point N (default: the latest) to IMAGE: the
             latest full backup at or before N, then each increment after
             it up to N, in order.

Each restore point is the export as it was at its checkpoint's cut,
however busy the writers were during the copy.  The agent assumes it is
the only one taking checkpoints named bk-N on the export.

Every step survives a failure or a kill: DIR/op.json records the backup
in progress and the step it reached (checkpoint, copy, commit, cleanup)
and how much of the copy is durable.  Running the same command again
finishes that backup (and prints its line): a checkpoint already taken
is reused if its snapshot is still live (the copy resumes where it was
recorded); if the snapshot is gone (nbdkit restarted) or broken, it is
released and a new checkpoint is taken, and the increment then covers
the bitmaps of both (a full snapshot, read through the union of their
dirty extents).  Running the other command completes the interrupted
backup if it was committed, or else abandons it (its checkpoint's bitmap
then counts with the changes since the last restore point).
DIR/chain.json holds the committed restore points; only one agent works
in a DIR at a time (DIR/.lock).  What a run could not release or remove
(the server unreachable at the end) is retried by the next run.

On success one JSON line goes to stdout.  On failure a message goes to
stderr and the exit status is 1 (2 for bad usage); with --json the error
goes to stdout instead, as {"error": MESSAGE, "step": STEP}, STEP one of
usage, setup, lock, state, connect, status, check, checkpoint, map,
copy, release, commit, cleanup, abandon, restore.

--keep-snapshot leaves the snapshot (and the bitmaps the increment read)
in place, so that the backup can be checked against them; `release`
ends them.  --progress shows a progress bar on stderr (python3-tqdm;
without it, no bar and a note); the default is a bar when stderr is a
terminal.  --dirtybitmap names the dirtybitmap command (default:
$DIRTYBITMAP, then `dirtybitmap` on PATH, then the one in the build tree
beside this script).  --chunk-size is the size of each read and of each
step of the copy recorded in op.json (default 4M).

Test hooks: BACKUP_AGENT_KILL_AT=POINT kills the agent (SIGKILL) and
BACKUP_AGENT_FAIL_AT=POINT makes it fail at POINT: checkpoint-sent (the
command is sent, its reply not read), checkpoint (taken, not recorded),
copy:K (after the K-th chunk of this run is written, before it is
recorded), commit (the restore point is recorded, the backup not marked
done), cleanup (before the snapshot is released and bitmaps removed).
"""
import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

CHUNK = 4 << 20
MAX_REQUEST = 32 << 20          # the largest NBD read libnbd sends
PREFIX = "bk-"
MAX_REDO = 3                    # new checkpoints per run when snapshots break
VERSION = 2                     # of chain.json


class AgentError(Exception):
    def __init__(self, msg, step=None, code=1):
        super().__init__(msg)
        self.step = step
        self.code = code


class ServerError(AgentError):
    """The control socket answered error: ..."""


class SnapshotLost(Exception):
    """The snapshot being copied is gone or broken (a new one is taken)."""


_step = ["setup"]


def step(name):
    _step[0] = name


def hook(point):
    """The test hooks: see the docstring."""
    if os.environ.get("BACKUP_AGENT_KILL_AT") == point:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("BACKUP_AGENT_FAIL_AT") == point:
        raise AgentError("injected failure at %s (BACKUP_AGENT_FAIL_AT)" % point)


# ---------------------------------------------------------------- the server

class Control:
    def __init__(self, path):
        self.path = path

    def ask(self, line, after_send=None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(600)
        try:
            try:
                s.connect(self.path)
            except OSError as e:
                raise AgentError("cannot connect to the control socket %s: %s"
                                 % (self.path, e.strerror or e))
            s.sendall((line + "\n").encode())
            if after_send:
                after_send()
            reply = s.makefile("r", encoding="utf-8",
                               errors="replace").readline()
        except socket.timeout:
            raise AgentError("%s: no reply from %s" % (line, self.path))
        except OSError as e:
            raise AgentError("%s: %s: %s" % (line, self.path, e.strerror or e))
        finally:
            s.close()
        if not reply.endswith("\n"):
            raise AgentError("%s: the control socket closed without a reply"
                             % line)
        reply = reply.strip()
        if reply.startswith("error: "):
            raise ServerError("%s: %s" % (line, reply[7:]))
        return reply

    def status(self):
        reply = self.ask("status")
        try:
            st = json.loads(reply)
        except ValueError:
            raise AgentError("status: not JSON: %r" % reply[:200])
        st.setdefault("bitmaps", [])
        st.setdefault("snapshots", [])
        return st


def bitmap_of(st, name):
    return next((b for b in st["bitmaps"] if b["name"] == name), None)


def snapshot_of(st, name):
    return next((s for s in st["snapshots"] if s["name"] == name), None)


def nbd_module():
    try:
        import nbd
    except ImportError as e:
        raise AgentError("the libnbd Python module is missing "
                         "(python3-libnbd): %s" % e)
    return nbd


def open_export(uri, export=None):
    """A handle on URI, or on the export EXPORT of the same server."""
    nbd = nbd_module()
    h = nbd.NBD()
    try:
        h.add_meta_context("base:allocation")
        if export is None:
            h.connect_uri(uri)
        else:
            h.set_opt_mode(True)
            h.connect_uri(uri)
            h.set_export_name(export)
            h.opt_go()
    except nbd.Error as e:
        raise AgentError("cannot open %s%s: %s" % (
            uri, "" if export is None else " (export %s)" % export, e))
    return h


def close_export(h):
    try:
        h.shutdown()
    except Exception:
        pass


def find_dirtybitmap(arg):
    """The dirtybitmap command: --dirtybitmap, $DIRTYBITMAP, PATH, the build
    tree (this script is tools/examples/ in it)."""
    if arg:
        cands, what = [arg], "--dirtybitmap %s" % arg
    elif os.environ.get("DIRTYBITMAP"):
        cands, what = [os.environ["DIRTYBITMAP"]], \
            "DIRTYBITMAP=%s" % os.environ["DIRTYBITMAP"]
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        cands = [shutil.which("dirtybitmap") or "",
                 os.path.join(here, "..", "..", "dirtybitmap")]
        what = "dirtybitmap (on PATH or in the build tree %s)" % \
            os.path.normpath(os.path.join(here, "..", ".."))
    for c in cands:
        p = c if os.sep in c else shutil.which(c)
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return os.path.abspath(p)
    raise AgentError("cannot find the dirtybitmap command: %s is not an "
                     "executable file (see --dirtybitmap)" % what, "setup")


def dirty_extents(cli, bitmap_file, names, size):
    """The union of the dirty extents of bitmaps NAMES, clipped to SIZE."""
    ext = []
    for name in names:
        try:
            r = subprocess.run([cli, "map", bitmap_file, name, "--json"],
                               capture_output=True, text=True, timeout=600)
        except OSError as e:
            raise AgentError("%s: %s" % (cli, e))
        if r.returncode != 0:
            raise AgentError("%s map %s %s: %s" % (
                cli, bitmap_file, name,
                (r.stderr.strip() or "exit status %d" % r.returncode)))
        try:
            ext += [(e["offset"], e["length"]) for e in json.loads(r.stdout)
                    if e["dirty"]]
        except (ValueError, KeyError, TypeError):
            raise AgentError("%s map %s %s --json: unexpected output %r" % (
                cli, bitmap_file, name, r.stdout[:200]))
    out = []
    for off, length in sorted(ext):
        end = min(off + length, size)
        if end <= off:
            continue
        if out and off <= out[-1][0] + out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[0] + last[1], end) - last[0])
        else:
            out.append((off, end - off))
    return out


# ------------------------------------------------------------- the directory

def save_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_chain():
    return {"version": VERSION, "points": [], "pending": [], "seq": 0,
            "files": 0, "remove": [], "release": [], "kept": [],
            "discard": []}


class Dir:
    def __init__(self, path, create):
        self.path = path
        if create:
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise AgentError("%s: no such directory (no backup there yet)"
                             % path, "state")
        self.lock_fd = None

    def p(self, name):
        return os.path.join(self.path, name)

    def lock(self):
        step("lock")
        fd = os.open(self.p(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentError("%s: another backup-agent is working in this "
                             "directory" % self.path)
        self.lock_fd = fd

    def load_chain(self, fresh_ok=False):
        """chain.json; FRESH_OK: a missing or unreadable one is a new chain."""
        step("state")
        try:
            with open(self.p("chain.json")) as f:
                chain = json.load(f)
            if not isinstance(chain, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return new_chain()
        except (OSError, ValueError) as e:
            if fresh_ok:
                return new_chain()
            raise AgentError("%s is unreadable (%s): start a new chain with "
                             "`full --new-chain`" % (self.p("chain.json"), e))
        if chain.get("version") != VERSION:
            if fresh_ok:
                return new_chain()
            raise AgentError("%s was written by another version of "
                             "backup-agent: start a new chain with "
                             "`full --new-chain`" % self.p("chain.json"))
        for k, v in new_chain().items():
            chain.setdefault(k, v)
        return chain

    def save_chain(self, chain):
        save_json(self.p("chain.json"), chain)

    def load_op(self):
        try:
            with open(self.p("op.json")) as f:
                op = json.load(f)
            if not isinstance(op, dict) or "op" not in op:
                raise ValueError("not a backup in progress")
            return op
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise AgentError("%s is unreadable (%s): remove it to abandon the "
                             "interrupted backup" % (self.p("op.json"), e),
                             "state")

    def save_op(self, op):
        save_json(self.p("op.json"), op)

    def drop_op(self):
        try:
            os.unlink(self.p("op.json"))
        except FileNotFoundError:
            pass


# ------------------------------------------------------------ progress bars

class NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


_tqdm_missing_said = [False]


def make_bar(args, total, desc, initial=0):
    want = args.progress
    if want is None:
        want = sys.stderr.isatty()
    if not want or total <= 0:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        if args.progress and not _tqdm_missing_said[0]:
            print("backup-agent: no progress bar: python3-tqdm is not "
                  "installed", file=sys.stderr)
            _tqdm_missing_said[0] = True
        return NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="B",
                unit_scale=True, unit_divisor=1024, file=sys.stderr,
                mininterval=0.5, dynamic_ncols=True)


# ------------------------------------------------------------------ copying

def zero_runs(h, nbd, off, n, use_extents):
    """(offset, length, is_zero) covering [off, off+n)."""
    if not use_extents:
        yield off, n, False
        return
    pos, end = off, off + n
    while pos < end:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext == "base:allocation":
                got.append(entries)
            return 0
        h.block_status(end - pos, pos, cb)
        if not got or not got[0]:
            yield pos, end - pos, False
            return
        e = got[0]
        for i in range(0, len(e) - 1, 2):
            length = min(e[i], end - pos)
            if length <= 0:
                break
            yield pos, length, bool(e[i + 1] & nbd.STATE_ZERO)
            pos += length
            if pos >= end:
                break


def copy_full(args, d, op, h, bar):
    """Copy the whole snapshot into the image, from op["done"] on."""
    nbd = nbd_module()
    path = d.p(op["file"] + ".img")
    size, chunk = op["size"], op["chunk"]
    done = op["done"]
    mode = "r+b" if done and os.path.exists(path) else "w+b"
    if mode == "w+b":
        done = op["done"] = op["copied"] = 0
    zero = bytes(chunk)
    use_extents = h.can_meta_context("base:allocation")
    chunks = 0
    with open(path, mode) as out:
        # Whatever a killed run wrote past what it recorded goes: holes.
        out.truncate(done)
        out.truncate(size)
        off = done
        while off < size:
            n = min(chunk, size - off)
            for o, length, is_zero in zero_runs(h, nbd, off, n, use_extents):
                if is_zero:
                    continue
                buf = h.pread(length, o)
                op["copied"] += length
                if buf != zero[:length]:
                    out.seek(o)
                    out.write(buf)
            off += n
            chunks += 1
            out.flush()
            hook("copy:%d" % chunks)
            os.fsync(out.fileno())
            op["done"] = off
            d.save_op(op)
            bar.update(n)


def copy_extents(args, d, op, h, bar):
    """Copy the increment's extents, in order, into its data file."""
    path = d.p(op["file"] + ".data")
    with open(d.p(op["file"] + ".json")) as f:
        extents = json.load(f)
    chunk, done = op["chunk"], op["done"]
    mode = "r+b" if done and os.path.exists(path) else "w+b"
    if mode == "w+b":
        done = op["done"] = 0
    chunks = 0
    with open(path, mode) as data:
        data.truncate(done)
        data.seek(done)
        pos = 0                          # bytes of the extents before (off)
        for off, length in extents:
            if pos + length <= done:
                pos += length
                continue
            o = off + max(0, done - pos)
            end = off + length
            while o < end:
                n = min(chunk, end - o)
                data.write(h.pread(n, o))
                o += n
                chunks += 1
                data.flush()
                hook("copy:%d" % chunks)
                os.fsync(data.fileno())
                op["done"] = data.tell()
                d.save_op(op)
                bar.update(n)
            pos += length
    op["copied"] = op["done"]


# -------------------------------------------------------------- the backups

def next_name(chain, st, op=None):
    n = chain["seq"]
    names = [b["name"] for b in st["bitmaps"]] + \
            [s["name"] for s in st["snapshots"]]
    if op:
        names += op["read"] + [op["checkpoint"]]
    for name in names:
        m = re.fullmatch(re.escape(PREFIX) + r"([0-9]+)", name)
        if m:
            n = max(n, int(m.group(1)))
    chain["seq"] = n + 1
    return PREFIX + str(n + 1)


def ensure_file(args, ctl, st):
    """A snapshot needs the export's size: at least one client must have
    connected since nbdkit started.  Be that client."""
    if st.get("export_size", 0):
        return st
    step("connect")
    close_export(open_export(args.uri))
    step("status")
    return ctl.status()


def start_op(args, d, chain, ctl, st):
    """Journal a new backup: nothing is changed on the server yet."""
    kind = args.command
    if kind == "incremental":
        step("check")
        if not chain["points"]:
            raise AgentError("no full backup in %s yet: run `full` first"
                             % d.path)
        for name in chain["pending"]:
            if bitmap_of(st, name) is None:
                raise AgentError(
                    "bitmap '%s', which records the changes since restore "
                    "point %d, is not in %s (was the bitmap file replaced?): "
                    "those changes are unknown; run `full`" % (
                        name, len(chain["points"]) - 1, st.get("file")))
        live = chain["pending"][-1] if chain["pending"] else None
        if live is None or not bitmap_of(st, live)["enabled"]:
            raise AgentError(
                "bitmap '%s' no longer records writes (another checkpoint "
                "was taken on this export), so the changes since restore "
                "point %d are not all in this agent's bitmaps; run `full`"
                % (live, len(chain["points"]) - 1))
        variant = args.variant or "dirty"
        if len(chain["pending"]) > 1:
            variant = "full"
    else:
        variant = "full"
    read = list(chain["pending"])
    if getattr(args, "new_chain", False):
        # A new chain drops every bitmap of this agent's (bk-N) but those
        # kept with a snapshot: also those of a chain.json that could not
        # be read.
        kept = {b for k in chain["kept"] for b in k["bitmaps"]}
        read += [b["name"] for b in st["bitmaps"]
                 if re.fullmatch(re.escape(PREFIX) + r"[0-9]+", b["name"])
                 and b["name"] not in read and b["name"] not in kept]
    chain["files"] += 1
    op = {"op": kind, "new_chain": bool(getattr(args, "new_chain", False)),
          "checkpoint": next_name(chain, st), "variant": variant,
          "read": read, "step": "checkpoint",
          "file": str(chain["files"]), "size": None, "done": 0,
          "copied": 0, "chunk": args.chunk_size, "redone": 0,
          "keep": args.keep_snapshot,
          "resumed_at": None, "warnings": [], "started": time.time()}
    d.save_chain(chain)          # the file and bitmap numbers are taken
    d.save_op(op)
    return op


def remove_files(d, op):
    for ext in (".img", ".data", ".json", ".json.tmp"):
        try:
            os.unlink(d.p(op["file"] + ext))
        except FileNotFoundError:
            pass


def redo(d, chain, ctl, op, st, why):
    """The snapshot of op's checkpoint is gone or broken: release it, and
    journal a new checkpoint.  The one taken stays ours: the changes since
    the last restore point are now in op["read"] and it."""
    step("release")
    if snapshot_of(st, op["checkpoint"]):
        try:
            ctl.ask("release " + op["checkpoint"])
        except ServerError:
            pass
    op["warnings"].append("snapshot %s: %s; a new checkpoint is taken"
                          % (op["checkpoint"], why))
    if bitmap_of(st, op["checkpoint"]):
        op["read"].append(op["checkpoint"])
    if op["op"] == "incremental" and len(op["read"]) > 1:
        op["variant"] = "full"
    remove_files(d, op)
    op.update(checkpoint=next_name(chain, st, op), step="checkpoint",
              size=None, done=0, copied=0, redone=op["redone"] + 1)
    d.save_chain(chain)
    d.save_op(op)


def take_checkpoint(args, ctl, op):
    step("checkpoint")
    name = op["checkpoint"]
    st = ctl.status()
    if bitmap_of(st, name) is None:
        line = "checkpoint %s %s" % (
            name, "--snapshot" if op["variant"] == "full"
            else "--snapshot=dirty")
        try:
            ctl.ask(line, after_send=lambda: hook("checkpoint-sent"))
        except ServerError as e:
            # Taken all the same (say, saved but not durable)?  Then go on.
            if bitmap_of(ctl.status(), name) is None:
                raise
            op["warnings"].append(str(e))
    hook("checkpoint")


def copy_step(args, d, chain, ctl, op, cli):
    """Copy from the snapshot; SnapshotLost if it is gone or broken."""
    step("copy")
    st = ctl.status()
    snap = snapshot_of(st, op["checkpoint"])
    if snap is None:
        raise SnapshotLost("it is not live (nbdkit restarted?)", st)
    if snap.get("state") != "active":
        raise SnapshotLost("it is %s: %s" % (snap.get("state"),
                                             snap.get("reason", "")), st)
    if op["size"] is None:
        op["size"] = snap["size"]
        op["done"] = op["copied"] = 0
        if op["op"] == "incremental":
            step("map")
            ext = dirty_extents(cli, st["file"], op["read"], op["size"])
            save_json(d.p(op["file"] + ".json"), ext)
            op["extents"] = len(ext)
            op["total"] = sum(e[1] for e in ext)
            step("copy")
        else:
            op["total"] = op["size"]
        d.save_op(op)
    elif op["done"]:
        op["resumed_at"] = op["done"]
    export = snap.get("export", "snapshot:" + op["checkpoint"])
    try:
        h = open_export(args.uri, export)
    except AgentError as e:
        st = ctl.status()
        snap = snapshot_of(st, op["checkpoint"])
        if snap is None or snap.get("state") != "active":
            raise SnapshotLost("it ended before it could be opened (%s)"
                               % e, st)
        raise
    nbd = nbd_module()
    bar = make_bar(args, op["total"], "%s %s" % (op["op"], op["checkpoint"]),
                   op["done"])
    try:
        if h.get_size() != op["size"]:
            raise AgentError("export %s is %d bytes, status says %d" % (
                export, h.get_size(), op["size"]))
        if op["op"] == "full":
            copy_full(args, d, op, h, bar)
        else:
            copy_extents(args, d, op, h, bar)
    except nbd.Error as e:
        st = ctl.status()
        snap = snapshot_of(st, op["checkpoint"])
        if snap is None or snap.get("state") != "active":
            raise SnapshotLost("%s while copying (%s)" % (
                "it ended" if snap is None else "it broke: %s"
                % snap.get("reason", ""), e), st)
        raise AgentError("reading %s: %s" % (export, e))
    finally:
        bar.close()
        close_export(h)
    op["step"] = "commit"
    d.save_op(op)


def commit(args, d, chain, op):
    step("commit")
    points = chain["points"]
    if not (points and points[-1]["checkpoint"] == op["checkpoint"]):
        p = {"kind": op["op"], "checkpoint": op["checkpoint"],
             "size": op["size"], "bytes": op["copied"], "time": time.time()}
        if op["op"] == "full":
            p["image"] = op["file"] + ".img"
        else:
            p.update(data=op["file"] + ".data", extents=op["file"] + ".json",
                     bitmaps=op["read"], variant=op["variant"])
        if op["new_chain"]:
            # Every earlier restore point's files go, also those of a
            # chain.json that could not be read.
            chain["discard"] = sorted(
                f for f in os.listdir(d.path)
                if re.fullmatch(r"[0-9]+\.(img|data|json)", f)
                and f != p["image"])
            chain["points"] = points = []
        points.append(p)
        keep = bool(op.get("keep"))
        kept_bitmaps = op["read"] if op["op"] == "incremental" and keep else []
        chain["remove"] += [b for b in op["read"] if b not in kept_bitmaps]
        if keep:
            chain["kept"].append({"snapshot": op["checkpoint"],
                                  "bitmaps": kept_bitmaps})
        else:
            chain["release"].append(op["checkpoint"])
        chain["pending"] = [op["checkpoint"]]
        d.save_chain(chain)
    hook("commit")
    p = points[-1]
    res = {"backup": len(points) - 1, "kind": op["op"],
           "checkpoint": op["checkpoint"],
           "snapshot": "snapshot:" + op["checkpoint"],
           "variant": op["variant"], "size": op["size"],
           "bytes_copied": op["copied"], "new_chain": op["new_chain"],
           "kept": any(k["snapshot"] == op["checkpoint"]
                       for k in chain["kept"]),
           "redone": op["redone"], "resumed_at": op["resumed_at"]}
    if op["op"] == "incremental":
        res.update(bitmap=op["read"][-1] if len(op["read"]) == 1 else None,
                   bitmaps=op["read"], extents=op.get("extents"))
    op.update(step="cleanup", result=res)
    d.save_op(op)
    hook("cleanup")
    return p


def cleanup(d, chain, ctl, warnings):
    """Release, remove and delete what the chain no longer needs.  A
    failure here loses nothing: it is retried by the next run."""
    step("cleanup")
    if not (chain["release"] or chain["remove"] or chain["discard"]):
        return
    try:
        st = ctl.status()
        for name in list(chain["release"]):
            if snapshot_of(st, name):
                ctl.ask("release " + name)
            chain["release"].remove(name)
        for name in list(chain["remove"]):
            b = bitmap_of(st, name)
            if b is None:
                chain["remove"].remove(name)
            elif not b["enabled"] and name not in chain["pending"]:
                ctl.ask("remove " + name)
                chain["remove"].remove(name)
        for f in list(chain["discard"]):
            try:
                os.unlink(d.p(f))
            except FileNotFoundError:
                pass
            chain["discard"].remove(f)
    except AgentError as e:
        warnings.append("cleanup (retried by the next run): %s" % e)
    d.save_chain(chain)


def abandon(d, chain, ctl, op):
    """Give up the interrupted backup OP: its snapshot is released, and
    its checkpoint (if taken) joins the bitmaps pending since the last
    restore point."""
    step("abandon")
    st = ctl.status()
    pending = list(op["read"])
    if bitmap_of(st, op["checkpoint"]):
        pending.append(op["checkpoint"])
    if snapshot_of(st, op["checkpoint"]):
        chain["release"].append(op["checkpoint"])
    chain["pending"] = pending
    remove_files(d, op)
    d.save_chain(chain)
    d.drop_op()


def backup(args):
    d = Dir(args.dir, create=args.command == "full")
    d.lock()
    new = bool(getattr(args, "new_chain", False))
    chain = d.load_chain(fresh_ok=new)
    op = d.load_op()
    cli = None
    if args.command == "incremental" and (op is None or op["op"] != "incremental"):
        # A new incremental: refuse now rather than after its checkpoint.
        cli = find_dirtybitmap(args.dirtybitmap)
    ctl = Control(args.control)
    step("status")
    st = ensure_file(args, ctl, ctl.status())
    warnings = []
    resumed = False
    if args.command == "incremental" and not chain["points"] and not (
            op and op["op"] == "full" and op["step"] in ("commit", "cleanup")):
        step("check")
        raise AgentError("no full backup in %s yet: run `full`%s" % (
            d.path, " (to finish the one interrupted)"
            if op and op["op"] == "full" else " first"))
    if op is not None and op["op"] == args.command:
        # Finish the interrupted backup: that is what this run is for.
        resumed = True
        if new and op["step"] in ("checkpoint", "copy"):
            op["new_chain"] = True
        if op["step"] in ("checkpoint", "copy", "commit"):
            op["keep"] = args.keep_snapshot
    elif op is not None and op["step"] in ("commit", "cleanup"):
        # Another command's backup, already taken: complete it quietly.
        if op["step"] == "commit":
            commit(args, d, chain, op)
        cleanup(d, chain, ctl, warnings)
        d.drop_op()
        op = None
    elif op is not None:
        abandon(d, chain, ctl, op)
        warnings.append("the interrupted %s backup (checkpoint %s) was "
                        "abandoned" % (op["op"], op["checkpoint"]))
        op = None
    if op is None:
        cleanup(d, chain, ctl, warnings)
        step("status")
        op = start_op(args, d, chain, ctl, ctl.status())
    redos = 0
    while op["step"] in ("checkpoint", "copy"):
        if op["op"] == "incremental" and cli is None:
            cli = find_dirtybitmap(args.dirtybitmap)
        if op["step"] == "checkpoint":
            take_checkpoint(args, ctl, op)
            op["step"] = "copy"
            d.save_op(op)
        try:
            copy_step(args, d, chain, ctl, op, cli)
        except SnapshotLost as e:
            why, st = e.args
            redos += 1
            if redos > MAX_REDO:
                raise AgentError("snapshot %s: %s (%d new checkpoints "
                                 "taken in this run; run again to retry)"
                                 % (op["checkpoint"], why, MAX_REDO), "copy")
            redo(d, chain, ctl, op, st, why)
    if op["step"] == "commit":
        commit(args, d, chain, op)
    res = dict(op["result"])
    cleanup(d, chain, ctl, warnings)
    d.drop_op()
    res["resumed"] = resumed
    w = op.get("warnings", []) + warnings
    if w:
        res["warnings"] = w
    return res


def release(args):
    d = Dir(args.dir, create=False)
    d.lock()
    chain = d.load_chain()
    ctl = Control(args.control)
    done = {"released": [k["snapshot"] for k in chain["kept"]],
            "removed": [b for k in chain["kept"] for b in k["bitmaps"]]}
    for k in chain["kept"]:
        chain["release"].append(k["snapshot"])
        chain["remove"] += k["bitmaps"]
    chain["kept"] = []
    d.save_chain(chain)
    warnings = []
    cleanup(d, chain, ctl, warnings)
    if warnings:
        raise AgentError(warnings[0], "release")
    return done


def restore(args):
    d = Dir(args.dir, create=False)
    chain = d.load_chain()
    step("restore")
    points = chain["points"]
    if not points:
        raise AgentError("no backup in %s" % d.path)
    upto = len(points) - 1 if args.upto is None else args.upto
    if not 0 <= upto < len(points):
        raise AgentError("no restore point %d (0..%d)" % (upto,
                                                         len(points) - 1))
    base = max(i for i in range(upto + 1) if points[i]["kind"] == "full")
    chunk = args.chunk_size
    zero = bytes(chunk)
    try:
        with open(d.p(points[base]["image"]), "rb") as src, \
                open(args.out, "wb") as out:
            out.truncate(points[upto]["size"])
            bar = make_bar(args, points[base]["size"], "restore")
            while True:
                off = src.tell()
                buf = src.read(chunk)
                if not buf:
                    break
                if buf != zero[:len(buf)]:
                    out.seek(off)
                    out.write(buf)
                bar.update(len(buf))
            bar.close()
            for i in range(base + 1, upto + 1):
                p = points[i]
                with open(d.p(p["extents"])) as f:
                    extents = json.load(f)
                with open(d.p(p["data"]), "rb") as data:
                    want = sum(e[1] for e in extents)
                    have = os.fstat(data.fileno()).st_size
                    if have != want:
                        raise AgentError("%s holds %d bytes, its extents %d"
                                         % (d.p(p["data"]), have, want))
                    for off, length in extents:
                        while length:
                            n = min(chunk, length)
                            out.seek(off)
                            out.write(data.read(n))
                            off += n
                            length -= n
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        raise AgentError(str(e))
    return {"restored": args.out, "upto": upto, "full": base,
            "increments": upto - base, "size": points[upto]["size"]}


# --------------------------------------------------------------------- main

class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise AgentError("%s (see --help)" % message, "usage", 2)


def size_arg(s):
    m = re.fullmatch(r"([0-9]+)([KMG]?)", s.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError("%r is not a size" % s)
    n = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
    if not 4096 <= n <= MAX_REQUEST or n % 512:
        raise argparse.ArgumentTypeError(
            "%s: must be a multiple of 512 in 4K..32M" % s)
    return n


def main():
    p = Parser(description=__doc__.split("\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("command",
                   choices=["full", "incremental", "release", "restore"])
    p.add_argument("--uri", help="the export (nbd+unix:///?socket=...)")
    p.add_argument("--control", help="the filter's bitmap-control socket")
    p.add_argument("--dir", required=True, help="the backup directory")
    p.add_argument("--out", help="restore: the image to write")
    p.add_argument("--upto", type=int, help="restore: the restore point")
    p.add_argument("--new-chain", action="store_true",
                   help="full: start a new chain")
    p.add_argument("--keep-snapshot", action="store_true",
                   help="leave the snapshot for `release`")
    p.add_argument("--variant", choices=["dirty", "full"],
                   help="incremental: the snapshot taken (default dirty)")
    p.add_argument("--dirtybitmap", help="the dirtybitmap command")
    p.add_argument("--json", action="store_true",
                   help="errors as JSON on stdout")
    p.add_argument("--progress", action="store_true", default=None,
                   help="a progress bar (python3-tqdm) on stderr")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--chunk-size", type=size_arg, default=CHUNK,
                   help="bytes per read and per recorded step (4M)")
    json_errors = "--json" in sys.argv[1:]
    try:
        args = p.parse_args()
        if args.command in ("full", "incremental") and \
                not (args.uri and args.control):
            p.error("%s needs --uri and --control" % args.command)
        if args.command == "release" and not args.control:
            p.error("release needs --control")
        if args.command == "restore" and not args.out:
            p.error("restore needs --out")
        if args.new_chain and args.command != "full":
            p.error("--new-chain goes with full")
        if args.variant and args.command != "incremental":
            p.error("--variant goes with incremental")
        res = {"full": backup, "incremental": backup, "release": release,
               "restore": restore}[args.command](args)
        print(json.dumps(res), flush=True)
    except (AgentError, OSError, KeyboardInterrupt, Exception) as e:
        if isinstance(e, AgentError):
            msg, where, code = str(e), e.step or _step[0], e.code
        elif isinstance(e, KeyboardInterrupt):
            msg, where, code = "interrupted", _step[0], 130
        elif isinstance(e, OSError):
            msg, where, code = str(e), _step[0], 1
        else:
            msg, where, code = "%s: %s" % (type(e).__name__, e), _step[0], 1
            if not json_errors:
                import traceback
                traceback.print_exc()
        if json_errors:
            print(json.dumps({"error": msg, "step": where}), flush=True)
        else:
            print("backup-agent: %s: %s" % (where, msg), file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
