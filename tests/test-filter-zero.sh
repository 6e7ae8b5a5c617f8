#!/usr/bin/env bash
# Zero-aware maps through nbdkit, both modes.  A random sequence of data
# writes, zero and trim requests, with checkpoints between: each frozen
# bitmap's 'map --json' says "zero" exactly where the oracle's last change
# to the whole granule was a zero or trim, "dirty" exactly where anything
# was written.  Then four connections at once, each in its own part of
# the disk: "zero" only where the oracle says so (it may say less).
# status and info agree on zero_bytes; the file passes qemu-img check,
# QEMU sees no extra enabled bitmap, and qemu-nbd -B + nbdinfo --map read
# the same dirty extents.  A read-write open by QEMU makes every range
# "not zero"; the next checkpoint drops the stale maps.  Removal (socket
# and CLI), 'clear', and growth (the new area is dirty, not zero).  A
# zero map cannot be enabled (CLI), nor tracked if QEMU enabled it.
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" -c "import nbd"
D=$DIRTYBITMAP
G=65536

# compare FILE NAME ORACLE_JSON MODE: exact | subset
compare () {
    "$D" map "$1" "$2" --json > map.json || fail "map $2"
    "$PYTHON" - map.json "$3" "$4" "$2" <<'EOF'
import json, sys
ext = json.load(open(sys.argv[1]))
want = json.load(open(sys.argv[2]))       # granule -> "data" | "zero"
mode, name = sys.argv[3], sys.argv[4]
G = 65536
got = {}
for e in ext:
    assert not e["zero"] or e["dirty"], e
    if not e["dirty"]:
        continue
    for g in range(e["offset"] // G, (e["offset"] + e["length"] - 1) // G + 1):
        got[str(g)] = "zero" if e["zero"] else "data"
bad = []
if set(got) != set(want):
    bad.append("dirty granules differ: extra %s, missing %s" %
               (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5]))
for g, v in got.items():
    w = want.get(g)
    if v == "zero" and w != "zero":
        bad.append("granule %s is zero in the map, last written with data" % g)
    if mode == "exact" and w == "zero" and v != "zero":
        bad.append("granule %s was last zeroed, the map says data" % g)
if bad:
    sys.exit("%s (%s): %s" % (name, mode, "; ".join(bad[:6])))
nz = sum(1 for v in want.values() if v == "zero")
print("%s: %d dirty granules, %d zero (oracle %d)" %
      (name, len(got), sum(1 for v in got.values() if v == "zero"), nz))
EOF
}

# The workload: PHASES of random requests, a checkpoint after each; the
# oracle of each interval goes to oracle.N.json.
workload () {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import json, nbd, os, random, subprocess, sys, threading
uri, ctl, par = sys.argv[1], sys.argv[2], sys.argv[3] == "par"
G = 65536
SIZE = 64 << 20
def op(h, rng, lo, hi, state, lock):
    n = rng.choice([512, 4096, G, 2 * G, 3 * G + 512, 7 * G])
    off = rng.randrange(lo, hi - n)
    if rng.random() < 0.5:
        off -= off % G                  # often whole granules
    k = rng.choice(["data", "data", "zero", "trim"])
    if k == "data":
        h.pwrite(bytes([rng.randrange(1, 256)]) * n, off)
    elif k == "zero":
        h.zero(n, off)
    else:
        h.trim(n, off)
    with lock:
        for g in range(off // G, (off + n - 1) // G + 1):
            whole = off <= g * G and (g + 1) * G <= off + n
            if k == "data":
                state[g] = "data"
            elif whole:
                state[g] = "zero"
            else:
                state.setdefault(g, "data")   # partial: not zero, dirty
rng = random.Random(11)
for phase in range(3):
    state, lock = {}, threading.Lock()
    if not par:
        h = nbd.NBD(); h.connect_uri(uri)
        for i in range(400):
            op(h, rng, 0, SIZE, state, lock)
        h.shutdown()
    else:
        def worker(w):
            r = random.Random(100 * phase + w)
            h = nbd.NBD(); h.connect_uri(uri)
            part = SIZE // 4
            for i in range(300):
                op(h, r, w * part, (w + 1) * part, state, lock)
            h.shutdown()
        ts = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
    json.dump({str(g): v for g, v in state.items()},
              open("oracle.%d.json" % phase, "w"))
    out = subprocess.run([os.environ["DIRTYBITMAP"],
                          "checkpoint", ctl, "k%d" % (phase + 1)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
EOF
}

for mode in crash-safe qemu; do
  for how in seq par; do
    rm -f b.qcow2 ctl oracle.*.json
    start_nbdkit pid.$mode.$how sock.$mode.$how memory 64M bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$PWD/ctl bitmap-mode=$mode
    uri="nbd+unix:///?socket=$PWD/sock.$mode.$how"
    DIRTYBITMAP=$D workload "$uri" ctl $how || fail "$mode $how: workload"
    want=exact; [ $how = seq ] || want=subset
    compare b.qcow2 dirtybitmap oracle.0.json $want || fail "$mode $how: dirtybitmap"
    compare b.qcow2 k1 oracle.1.json $want || fail "$mode $how: k1"
    compare b.qcow2 k2 oracle.2.json $want || fail "$mode $how: k2"
    # status (while running) and info agree on zero_bytes.
    $D status ctl > status.json
    $D info b.qcow2 --json > info.json
    "$PYTHON" - <<'EOF' || fail "$mode $how: status and info"
import json
s = json.load(open("status.json")); i = json.load(open("info.json"))
sz = {b["name"]: b["zero_bytes"] for b in s["bitmaps"]}
iz = {b["name"]: b["zero_bytes"] for b in i["bitmaps"]}
# qemu mode: the enabled bitmap is in use, its contents unknown to info.
assert all(sz[n] == iz[n] for n in iz if iz[n] is not None), (sz, iz)
assert list(sz) == list(iz), (sz, iz)
assert list(sz) == ["dirtybitmap", "k1", "k2", "k3"], sz
assert sz["k3"] == 0 and sz["dirtybitmap"] > 0, sz
EOF
    kill_nbdkit "$(cat pid.$mode.$how)"
    qemu_check b.qcow2
    # QEMU's view: one enabled bitmap, the zero maps disabled companions.
    qemu-img info --output=json b.qcow2 | json_check '
        [b["name"] for b in j["format-specific"]["data"]["bitmaps"]
         if "auto" in b["flags"]] == ["k3"] and
        sorted(b["name"] for b in j["format-specific"]["data"]["bitmaps"]
               if b["name"].endswith(" [zero]")) ==
        ["dirtybitmap [zero]", "k1 [zero]", "k2 [zero]"]' ||
        fail "$mode $how: QEMU's view of the bitmaps"
    map_ours b.qcow2 k1 > k1.ours
    map_qemu b.qcow2 k1 > k1.qemu
    expect_map k1.ours k1.qemu "$mode $how: k1 through qemu-nbd"
done
done

# The picture colours zero ranges.
$D map b.qcow2 k1 --svg k1.svg
grep -q 'class="zero"' k1.svg || fail "map --svg: no zero range drawn"

# 'clear' and 'remove' on the file take the zero map along.
cp b.qcow2 c.qcow2
$D clear c.qcow2 k1
$D remove c.qcow2 k2
qemu-img info --output=json c.qcow2 | json_check '
    sorted(b["name"] for b in j["format-specific"]["data"]["bitmaps"]) ==
    ["dirtybitmap", "dirtybitmap [zero]", "k1", "k3"]' ||
    fail "clear/remove left a zero map behind"
$D map c.qcow2 dirtybitmap --json | json_check 'any(e["zero"] for e in j)' ||
    fail "an unrelated zero map was lost"

# A zero map is never enabled: refused by the CLI; one QEMU enabled
# makes the filter refuse to start (it would be trusted once frozen).
cp b.qcow2 e.qcow2
if $D enable e.qcow2 "k1 [zero]" 2> enable.err; then
    fail "enable of a zero map accepted"
fi
grep -q "is kept for zero maps, which are never enabled" enable.err ||
    fail "enable of a zero map: $(cat enable.err)"
qemu-img bitmap --enable e.qcow2 "k1 [zero]"
cp e.qcow2 e.before
if "$NBDKIT" --filter="$FILTER" memory 64M bitmap-file=$PWD/e.qcow2 \
       --run true 2> start.err; then
    fail "started with an enabled bitmap named as a zero map"
fi
grep -q "bitmap 'k1 \[zero\]' is enabled, but its name ends in ' \[zero\]'" start.err ||
    fail "start with an enabled zero map's name: $(cat start.err)"
cmp -s e.qcow2 e.before || fail "a refused start changed the file"
qemu_check e.qcow2

# Over the socket: removal takes the zero map along.
start_nbdkit pid.r sock.r memory 64M bitmap-file=$PWD/b.qcow2 \
    bitmap-control=$PWD/ctl
$D remove ctl k1
$D info b.qcow2 --json | json_check '[b["name"] for b in j["bitmaps"]] ==
    ["dirtybitmap", "k2", "k3"]' || fail "socket removal"
kill_nbdkit "$(cat pid.r)"
qemu-img info --output=json b.qcow2 | json_check '
    "k1 [zero]" not in [b["name"] for b in j["format-specific"]["data"]["bitmaps"]]' ||
    fail "socket removal left k1's zero map"

# Growth: the zero maps grow with their bitmaps; the new area is dirty in
# each, zero in none.
start_nbdkit pid.g sock.g memory 96M bitmap-file=$PWD/b.qcow2 \
    bitmap-control=$PWD/ctl
nbdsh -u "nbd+unix:///?socket=$PWD/sock.g" -c 'h.pwrite(b"g" * 512, 0)'
kill_nbdkit "$(cat pid.g)"
qemu_check b.qcow2
$D map b.qcow2 k2 --json | json_check '
    all(e["dirty"] and not e["zero"] for e in j if e["offset"] >= 64 << 20) and
    any(e["zero"] for e in j) and j[-1]["offset"] + j[-1]["length"] == 96 << 20' ||
    fail "growth: k2's zero map"

# A read-write open by QEMU clears our autoclear bit: nothing is zero.
qemu-img check -r leaks b.qcow2 > /dev/null
$D map b.qcow2 k2 --json | json_check 'not any(e["zero"] for e in j)' ||
    fail "a zero map trusted after QEMU opened the file read-write"
# The next checkpoint drops those stale maps, with a note, and saves the
# new one.
serve_fg log.s sock.s memory 96M bitmap-file=$PWD/b.qcow2 \
    bitmap-control=$PWD/ctl
nbdsh -u "nbd+unix:///?socket=$PWD/sock.s" -c 'h.zero(65536 * 4, 0)'
$D checkpoint ctl k4
stop_server $SERVER_PID || true
grep -q "zero map 'dirtybitmap \[zero\]' dropped: another program opened the file read-write" log.s ||
    { cat log.s; fail "no note for a dropped stale zero map"; }
grep -q "error.*zero map" log.s && fail "a note labelled error"
qemu-img info --output=json b.qcow2 | json_check '
    sorted(b["name"] for b in j["format-specific"]["data"]["bitmaps"]
           if b["name"].endswith(" [zero]")) == ["k3 [zero]"]' ||
    fail "stale zero maps after the next checkpoint"
$D map b.qcow2 k3 --json | json_check 'j[0]["zero"] and j[0]["length"] == 4 * 65536' ||
    fail "the new zero map"
qemu_check b.qcow2
echo "zero-aware maps: ok"
