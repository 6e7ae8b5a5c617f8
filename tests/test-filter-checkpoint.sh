#!/usr/bin/env bash
# Checkpoints under load (both modes): 4 connections write continuously
# while a checkpoint is taken every 200 ms.  Afterwards every write is
# wholly in one bitmap between the checkpoints around it, and no bitmap
# has a bit no such write explains (tests/checkpoint_oracle.py).  While
# the server still runs, a disabled bitmap read by 'dirtybitmap map' and
# by qemu-nbd -r (locking off, like -U) equals what the file holds after
# shutdown.  Also: the control socket's protocol and errors.
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" -c "import nbd"
D=$DIRTYBITMAP
O="$PYTHON $srcdir/checkpoint_oracle.py"

for mode in crash-safe qemu; do
    rm -f b.qcow2 ctl
    start_nbdkit pid.$mode sock.$mode memory 16G bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$PWD/ctl bitmap-mode=$mode bitmap-persist-interval=1
    [ "$(stat -c %a ctl)" = 600 ] || fail "control socket mode $(stat -c %a ctl)"
    $O run "nbd+unix:///?socket=$PWD/sock.$mode" ctl log.$mode \
        --seconds 5 --interval 200
    ncp=$(grep -c '^C' log.$mode)
    [ "$ncp" -ge 5 ] || fail "only $ncp checkpoints"

    # Read while running: c2 is disabled and final.
    map_ours b.qcow2 c2 > running.ours
    map_qemu b.qcow2 c2 > running.qemu
    $D status ctl > status.json
    "$PYTHON" - "$ncp" <<'EOF' || fail "status JSON"
import json, sys
s = json.load(open("status.json"))
n = int(sys.argv[1])
names = [b["name"] for b in s["bitmaps"]]
assert names == ["dirtybitmap"] + ["c%d" % i for i in range(1, n + 1)], names
assert s["generation"] == n and s["export_size"] == 16 << 30, s
enabled = [b["name"] for b in s["bitmaps"] if b["enabled"]]
assert enabled == ["c%d" % n] and s["bitmaps"][-1]["tracked"], s
assert all(not b["in_use"] for b in s["bitmaps"][:-1]), s
assert all(b["granularity"] == 65536 for b in s["bitmaps"]), s
EOF
    kill_nbdkit "$(cat pid.$mode)"

    qemu_check b.qcow2
    mkdir -p maps.$mode
    for name in dirtybitmap $(awk '$1 == "C" { print $4 }' log.$mode); do
        map_ours b.qcow2 "$name" > maps.$mode/$name
    done
    $O check log.$mode 65536 dirtybitmap maps.$mode ||
        fail "$mode: checkpoint coverage"
    expect_map maps.$mode/c2 running.ours "$mode: c2 read while running (ours)"
    expect_map maps.$mode/c2 running.qemu "$mode: c2 read while running (qemu-nbd)"
    map_qemu b.qcow2 "c$ncp" > last.qemu
    expect_map maps.$mode/c$ncp last.qemu "$mode: last bitmap via qemu-nbd"
done

# Restart after checkpoints: recording goes on into the latest one (the
# default bitmap-name is not re-created next to it).
# A temporary file left by a writer killed inside a rewrite is removed
# when the first client connects (nothing on disk changes before that).
echo junk > b.qcow2.tmpAbC123
start_nbdkit pid.r sock.r memory 16G bitmap-file=$PWD/b.qcow2 bitmap-control=$PWD/ctl
[ -e b.qcow2.tmpAbC123 ] || fail "a file was removed before any client connected"
nbdsh -u "nbd+unix:///?socket=$PWD/sock.r" -c 'h.pwrite(b"r" * 512, 5 << 20)'
[ ! -e b.qcow2.tmpAbC123 ] || fail "stale temporary file not removed"
$D status ctl > status.json
json_check '[(b["granularity"], b["enabled"]) for b in j["bitmaps"]
             if b["name"] == "c'$ncp'"] == [(65536, True)]' < status.json ||
    fail "restart: c$ncp not enabled"
json_check '[(b["granularity"], b["enabled"]) for b in j["bitmaps"]
             if b["name"] == "dirtybitmap"] == [(65536, False)]' < status.json ||
    fail "restart: dirtybitmap re-created or re-enabled"

# Protocol: each error is one line, the socket survives misbehaving clients.
$D checkpoint ctl c1 2> err && fail "duplicate name accepted"
grep -q "bitmap 'c1' already exists" err || fail "duplicate: $(cat err)"
$D checkpoint ctl g1 --granularity 3000 2> err && fail "bad granularity accepted"
grep -q "granularity: 3000 is not a power of two" err || fail "granularity: $(cat err)"
$D remove ctl "c$ncp" 2> err && fail "removed the enabled bitmap"
grep -q "is recording writes" err || fail "remove enabled: $(cat err)"
$D remove ctl nosuch 2> err && fail "removed a missing bitmap"
grep -q "no bitmap named 'nosuch'" err || fail "remove missing: $(cat err)"
"$PYTHON" - <<'EOF' || fail "protocol"
import socket, time
def conn():
    s = socket.socket(socket.AF_UNIX); s.connect("ctl"); return s
# Junk, an unknown command, two commands in one packet, CRLF.
s = conn(); f = s.makefile("rb")
s.sendall(b"\x00\xff junk\nstatus\r\npersist\n\nfrobnicate\n")
r = [f.readline() for _ in range(5)]
assert r[4].startswith(b"error: usage: status | checkpoint"), r
assert r[0].startswith(b"error: the line contains a NUL byte"), r
assert r[1].startswith(b'{"file":'), r
assert r[2] == b"ok\n", r
assert r[3].startswith(b"error: empty command"), r
# A line that never ends is cut off; a client that vanishes mid-line.
s2 = conn(); s2.sendall(b"x" * 5000); f2 = s2.makefile("rb")
assert f2.readline().startswith(b"error: line longer"), "long line"
s3 = conn(); s3.sendall(b"stat"); s3.close()
# Still serving everyone.
s4 = conn(); s4.sendall(b"status\n")
assert s4.makefile("rb").readline().startswith(b'{"file":')
EOF
$D remove ctl c1 || fail "remove disabled c1"
$D status ctl | json_check '"c1" not in [b["name"] for b in j["bitmaps"]]' ||
    fail "c1 still listed"
kill_nbdkit "$(cat pid.r)"
[ ! -e ctl ] || fail "control socket left behind after shutdown"
qemu_check b.qcow2
covers <(map_ours b.qcow2 "c$ncp") $((5 << 20)) 512 || fail "restart write lost"

# Refusals at start.
: > notasocket
"$NBDKIT" -U - --filter="$FILTER" memory 1M bitmap-file=$PWD/n.qcow2 \
    bitmap-control=$PWD/notasocket --run true 2> err && fail "accepted a regular file"
grep -q "bitmap-control: $PWD/notasocket exists and is not a socket" err ||
    fail "not a socket: $(cat err)"
start_nbdkit pid.a sock.a memory 1M bitmap-file=$PWD/a.qcow2 bitmap-control=$PWD/ctl2
"$NBDKIT" -U - --filter="$FILTER" memory 1M bitmap-file=$PWD/n.qcow2 \
    bitmap-control=$PWD/ctl2 --run true 2> err && fail "stole a live socket"
grep -q "another process is serving this socket" err || fail "live: $(cat err)"
# ... and a refused start leaves an existing bitmap file untouched.
cp b.qcow2 keep.qcow2; sum=$(md5sum < keep.qcow2)
"$NBDKIT" -U - --filter="$FILTER" memory 16G bitmap-file=$PWD/keep.qcow2 \
    bitmap-control=$PWD/ctl2 bitmap-mode=qemu --run true 2> err && fail "stole a live socket"
[ "$(md5sum < keep.qcow2)" = "$sum" ] || fail "failed start modified the file"
kill -9 "$(cat pid.a)"; sleep 0.5
[ -S ctl2 ] || fail "kill -9 should leave the socket"
start_nbdkit pid.b sock.b memory 1M bitmap-file=$PWD/a.qcow2 bitmap-control=$PWD/ctl2
$D status ctl2 > /dev/null || fail "stale socket not replaced"
# Before any client: the size was learnt at start, so the checkpoint
# creates the file (bitmap x enabled, the default one disabled).
[ ! -e a.qcow2 ] || fail "a.qcow2 exists before any client"
$D checkpoint ctl2 x 2> err || fail "checkpoint before any connection: $(cat err)"
qemu-img check -U a.qcow2 > /dev/null || fail "qemu-img check -U a.qcow2"
$D info a.qcow2 --json > info.json
/usr/bin/python3 - info.json <<'PY' || fail "file made by the first checkpoint"
import json, sys
b = {x["name"]: x for x in json.load(open(sys.argv[1]))["bitmaps"]}
assert set(b) == {"dirtybitmap", "x"}, b
assert "auto" in b["x"]["flags"] and "auto" not in b["dirtybitmap"]["flags"], b
PY
$D checkpoint ctl2 y --snapshot || fail "snapshot before any writer"
nbdinfo --list "nbd+unix:///?socket=$PWD/sock.b" | grep -q 'snapshot:y' ||
    fail "snapshot:y not listed"
kill_nbdkit "$(cat pid.b)"
# status reports the export's real size, not rounded up to 512 bytes.
start_nbdkit pid.c sock.c memory 1000001 bitmap-file=$PWD/odd.qcow2 \
    bitmap-control=$PWD/ctl3
$D checkpoint ctl3 o1
$D status ctl3 > st.json
/usr/bin/python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["export_size"] == 1000001, s' st.json ||
    fail "export_size: $(cat st.json)"
kill_nbdkit "$(cat pid.c)"
# status says how many writers are connected, and (crash-safe) how many
# bytes the file shows dirty only because their region is pre-marked.
start_nbdkit pid.d sock.d memory 64M bitmap-file=$PWD/pm.qcow2 \
    bitmap-control=$PWD/ctl4 bitmap-region=4M
"$PYTHON" - "nbd+unix:///?socket=$PWD/sock.d" ctl4 <<'PY' || fail "writers/premarked_bytes"
import json, socket, sys, nbd
def status():
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
    s.sendall(b"status\n"); r = b""
    while not r.endswith(b"\n"):
        r += s.recv(65536)
    return json.loads(r)
def ask(line):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
    s.sendall(line.encode() + b"\n"); r = b""
    while not r.endswith(b"\n"):
        r += s.recv(65536)
    return r.decode().strip()
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"x" * 4096, 0)
st = status()
b = [x for x in st["bitmaps"] if x["tracked"]][0]
assert st["writers"] == 1, st
# One 64K granule dirty in a 4M region written all-ones: 63 granules extra.
assert b["dirty_bytes"] == 65536 and b["premarked_bytes"] == 63 * 65536, b
# The file, read as it is: a live writer, and at most one whole region
# of its dirty bytes pre-marked.
import os, subprocess
i = json.loads(subprocess.run([os.environ["DIRTYBITMAP"], "info", "pm.qcow2",
                               "--json"], capture_output=True, check=True,
                              text=True).stdout)
assert i["writer"] == "live", i
assert i["bitmaps"][0]["premarked_bytes_max"] == 4 << 20, i
assert ask("persist") == "ok"
b = [x for x in status()["bitmaps"] if x["tracked"]][0]
assert b["premarked_bytes"] == 0, b
h.shutdown()
import time
for i in range(100):
    if status()["writers"] == 0:
        break
    time.sleep(0.05)
assert status()["writers"] == 0
PY
kill -9 "$(cat pid.d)"
for i in $(seq 100); do kill -0 "$(cat pid.d)" 2>/dev/null || break; sleep 0.1; done
$D info pm.qcow2 --json | "$PYTHON" -c 'import json,sys; i=json.load(sys.stdin); assert i["writer"] == "crashed", i' ||
    fail "info after kill -9: $($D info pm.qcow2 --json)"
"$NBDKIT" -U - --filter="$FILTER" memory 64M bitmap-file=$PWD/pm.qcow2 \
    --run 'nbdsh -u "$uri" -c pass' 2>/dev/null
$D info pm.qcow2 --json | "$PYTHON" -c 'import json,sys; i=json.load(sys.stdin); assert i["writer"] == "none" and i["bitmaps"][0]["premarked_bytes_max"] == 0, i' ||
    fail "info after a clean stop: $($D info pm.qcow2 --json)"
echo OK
