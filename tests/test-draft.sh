#!/usr/bin/env bash
# Proves the 2015 draft layout end to end: a zero-size container holding
# bitmaps for drives of different sizes; the filter tracks the named one
# (bitmap-format=draft-2015) and leaves the others as they were; its map
# equals the oracle; draft -> qemu conversion passes qemu-img check and
# qemu-nbd -B shows the same map; qemu -> draft -> qemu is lossless; QEMU
# refuses the draft file, our tools name its layout; each draft constraint
# has its own error; a read_only bitmap is never modified.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires nbdsh -c 'exit(0)'
requires qemu-img --version
requires qemu-nbd --version
D=$DIRTYBITMAP
size=$((96 << 20))

# A container with a bitmap for another drive (5 GiB) with some bits.
$D create c.qcow2 --format draft-2015 --size 5G --name other --granularity 1M
$D add c.qcow2 ro --size 1G
$D info c.qcow2 | grep -q "^layout: draft-2015" || fail "info does not name the layout"
$D info c.qcow2 | grep -q "QEMU cannot open this file" || fail "info does not warn"
set +e; qemu-img info c.qcow2 > out 2>&1; rc=$?; set -e
[ $rc -ne 0 ] && grep -q "Invalid extension length" out || fail "qemu-img opened a draft file"

# The filter tracks the named bitmap, created from the export size.
"$NBDKIT" -U - --filter="$FILTER" memory $size bitmap-file=$PWD/c.qcow2 \
    bitmap-format=draft-2015 bitmap-name=disk \
    --run "/usr/bin/python3 $ORACLE run \"\$uri\" ops.log --seed 7 --ops 100 --conns 2" \
    2> err
# Crash-safe regions are sized from this drive's size, not the
# container's virtual size 0 (which once made one region of 1 PiB).
! grep -q "bitmap-region" err || fail "draft: region size: $(cat err)"
$D check c.qcow2 >/dev/null || fail "container invalid after the filter"
/usr/bin/python3 "$ORACLE" expect ops.log $size 65536 > want
map_ours c.qcow2 disk > got
expect_map want got "draft: filter map"
$D info c.qcow2 --json | /usr/bin/python3 -c '
import json, sys
i = json.load(sys.stdin)
assert i["layout"] == "draft-2015" and i["virtual_size"] == 0, i
b = {x["name"]: x for x in i["bitmaps"]}
assert b["disk"]["size"] == 96 << 20, b
assert b["other"]["size"] == 5 << 30 and b["other"]["dirty_bytes"] == 0, b
assert b["ro"]["size"] == 1 << 30, b
'
# Restart: bits accumulate; the size check uses the named bitmap's size.
"$NBDKIT" -U - --filter="$FILTER" memory $size bitmap-file=$PWD/c.qcow2 \
    bitmap-format=draft-2015 bitmap-name=disk bitmap-mode=qemu \
    --run "/usr/bin/python3 $ORACLE run \"\$uri\" ops.log --seed 8 --ops 50"
/usr/bin/python3 "$ORACLE" expect ops.log $size 65536 > want
map_ours c.qcow2 disk > got
expect_map want got "draft: after a second run"

# Layout mismatch is refused, naming the layout.
set +e
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$PWD/c.qcow2 --run true 2> err; rc=$?
set -e
[ $rc -ne 0 ] && grep -q "has the draft-2015 layout but bitmap-format=qemu" err ||
    { cat err; fail "qemu format accepted a draft file"; }

# draft -> qemu: one drive size at a time.
set +e; $D convert --to qemu c.qcow2 q.qcow2 2> err; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "choose one with --bitmap NAME" err || fail "mixed sizes converted"
$D convert --to qemu c.qcow2 q.qcow2 --bitmap disk
qemu_check q.qcow2
map_qemu $PWD/q.qcow2 disk > got
expect_map want got "draft -> qemu, read by qemu-nbd"

# qemu -> draft -> qemu is lossless (maps, granularities, flags).
$D create r.qcow2 --size 1G --granularity 4K --name a
$D add r.qcow2 b --granularity 2M --disabled
qemu-img create -q -f qcow2 s.qcow2 1G
qemu-img bitmap --add s.qcow2 s
qemu-io -f qcow2 -c 'write 0 64k' -c 'write 700M 3M' s.qcow2 >/dev/null
qemu-img bitmap --merge s -b s.qcow2 -F qcow2 r.qcow2 a
qemu-img bitmap --merge s -b s.qcow2 -F qcow2 r.qcow2 b
$D convert --to draft-2015 r.qcow2 rd.qcow2
$D convert --to qemu rd.qcow2 rq.qcow2
qemu_check rq.qcow2
for b in a b; do
    map_qemu $PWD/r.qcow2 $b > m1; map_qemu $PWD/rq.qcow2 $b > m2
    expect_map m1 m2 "round trip of bitmap $b"
done
$D info r.qcow2 | grep "^  " > i1; $D info rq.qcow2 | grep "^  " > i2
diff -u i1 i2 || fail "round trip changed granularity or flags"

# The filter leaves the container's other bitmaps (with contents) intact.
for b in a b; do map_ours rd.qcow2 $b > before.$b; done
$D info rd.qcow2 | grep "^  [^ ]" > info.before
"$NBDKIT" -U - --filter="$FILTER" memory $size bitmap-file=$PWD/rd.qcow2 \
    bitmap-format=draft-2015 bitmap-name=newdisk \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"q\" * 100, 0)"'
for b in a b; do
    [ -s before.$b ] || fail "bitmap $b has no contents to preserve"
    map_ours rd.qcow2 $b > after.$b
    expect_map before.$b after.$b "other bitmap $b after the filter ran"
done
$D info rd.qcow2 | grep "^  [^ ]" | grep -v newdisk > info.after
diff -u info.before info.after || fail "other bitmaps' metadata changed"
[ "$(map_ours rd.qcow2 newdisk)" = "0 65536" ] || fail "newdisk"

# read_only: never modified, by the CLI or the filter.
/usr/bin/python3 - c.qcow2 <<'PY'
import struct, sys
p = sys.argv[1]; d = bytearray(open(p, "rb").read())
doff = struct.unpack_from(">Q", d, 112 + 16)[0]
pos = doff
for _ in range(struct.unpack_from(">I", d, 112 + 8)[0]):
    n = struct.unpack_from(">H", d, pos + 28)[0]
    if bytes(d[pos + 30:pos + 30 + n]) == b"ro":
        struct.pack_into(">I", d, pos + 24, 8)
    pos += (30 + n + 7) // 8 * 8
open(p, "wb").write(d)
PY
$D info c.qcow2 | grep -q "ro: size 1073741824, granularity 65536, flags read-only" || fail "read-only flag"
set +e; $D clear c.qcow2 ro 2> err; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "is read_only" err || fail "CLI modified a read_only bitmap"
set +e
"$NBDKIT" --filter="$FILTER" memory 1G bitmap-file=$PWD/c.qcow2 \
    bitmap-format=draft-2015 bitmap-name=ro --run true 2> err; rc=$?
set -e
[ $rc -ne 0 ] && grep -q "bitmap 'ro' is read_only" err || { cat err; fail "filter tracked a read_only bitmap"; }

# Malformed draft files: one error per constraint.
mkdir cases
$D create base.qcow2 --format draft-2015 --size 1G --name alpha
$D add base.qcow2 bravo --size 2G
/usr/bin/python3 "$srcdir/malformed.py" base.qcow2 cases draft > cases.tsv
n=0
while IFS=$'\t' read -r file expect; do
    n=$((n+1))
    set +e; $D check "$file" > out 2>&1; rc=$?; set -e
    [ $rc -eq 1 ] || { cat out; fail "$file: exit $rc, want 1"; }
    grep -qF -- "$expect" out || { cat out; fail "$file: message lacks '$expect'"; }
done < cases.tsv
echo "$n malformed draft cases checked"
echo OK
