#!/usr/bin/env bash
# Proves interop both ways with Debian's QEMU: files QEMU made and dirtied
# (qemu-img bitmap, qemu-io) read identically through our library and
# through qemu-nbd -B; files we edited stay readable by qemu-img; and our
# bitmap merges into a qcow2 disk of the same size (the backup path).
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
D=$DIRTYBITMAP

# QEMU-made, including guest data written by qemu-io, a 512-byte bitmap,
# a merged bitmap and a disabled one.
qemu-img create -q -f qcow2 d.qcow2 10G
qemu-img bitmap --add d.qcow2 b0
qemu-img bitmap --add -g 512 d.qcow2 small
qemu-io -f qcow2 -c 'write 0 64k' -c 'write 1M 128k' -c 'write 5G 4k' \
    -c 'write -z 10737352704 64k' -c 'write 3M 1k' d.qcow2 >/dev/null
qemu-img bitmap --add d.qcow2 merged
qemu-img bitmap --merge b0 d.qcow2 merged
qemu-img bitmap --disable d.qcow2 b0
for b in b0 small merged; do
    map_ours d.qcow2 $b > ours.$b
    map_qemu d.qcow2 $b > qemu.$b
    [ -s qemu.$b ] || fail "qemu shows no dirty extents for $b"
    expect_map qemu.$b ours.$b "qemu-made bitmap $b"
done
$D check d.qcow2 >/dev/null || fail "our check rejects a qemu-made file"

# Files we edit stay readable by QEMU, and keep other bitmaps' contents.
qemu-img create -q -f qcow2 m.qcow2 10G
qemu-img bitmap --add m.qcow2 keep
qemu-img bitmap --merge b0 -b d.qcow2 -F qcow2 m.qcow2 keep
map_qemu m.qcow2 keep > before
$D add m.qcow2 extra --granularity 128K
$D add m.qcow2 extra2
$D remove m.qcow2 extra2
$D clear m.qcow2 extra
qemu_check m.qcow2
map_qemu m.qcow2 keep > after
expect_map before after "bitmap 'keep' after our edits"
qemu-img bitmap --add m.qcow2 byqemu      # QEMU can still modify our file
qemu_check m.qcow2
$D check m.qcow2 >/dev/null

# Merge our bitmap into a qcow2 disk of the same size.
qemu-img create -q -f qcow2 disk.qcow2 10G
qemu-img bitmap --add disk.qcow2 target
qemu-img bitmap --merge keep -b m.qcow2 -F qcow2 disk.qcow2 target
map_qemu disk.qcow2 target > merged
expect_map before merged "merge into a disk"

# Every refcount width QEMU can create (refcount_order 0..6): QEMU-dirtied
# files read identically, and an edit by our CLI rewrites the file in the
# canonical 16-bit layout without touching the other bitmap.
py=/usr/bin/python3
for n in 1 2 4 8 16 32 64; do
    # w: dirtied by guest writes (so it holds guest data and L2 tables).
    qemu-img create -q -f qcow2 -o refcount_bits=$n w$n.qcow2 10G
    qemu-img bitmap --add w$n.qcow2 b0
    qemu-io -f qcow2 -c 'write 0 64k' -c 'write 1M 128k' -c 'write 5G 4k' \
        w$n.qcow2 >/dev/null
    # e: bitmap-only (editable by our CLI), dirtied by a QEMU merge.
    qemu-img create -q -f qcow2 -o refcount_bits=$n e$n.qcow2 10G
    qemu-img bitmap --add e$n.qcow2 keep
    qemu-img bitmap --merge b0 -b w$n.qcow2 -F qcow2 e$n.qcow2 keep
    for f in w$n:b0 e$n:keep; do
        file=${f%%:*}.qcow2 b=${f#*:}
        map_ours $file $b > rc.ours
        map_qemu $file $b > rc.qemu
        [ -s rc.qemu ] || fail "refcount_bits=$n: qemu shows no dirty extents"
        expect_map rc.qemu rc.ours "refcount_bits=$n $file bitmap $b"
        $D check $file >/dev/null || fail "refcount_bits=$n: our check rejects $file"
        # info: the bitmaps' names and granularities as QEMU reports them.
        $D info --json $file > rc.ours.json
        qemu-img info --output=json $file > rc.qemu.json
        $py - rc.ours.json rc.qemu.json "$n" <<'PY' || fail "refcount_bits=$n $file: info differs"
import json, sys
ours = json.load(open(sys.argv[1]))
qemu = json.load(open(sys.argv[2]))
q = qemu["format-specific"]["data"]
assert q["refcount-bits"] == int(sys.argv[3]), q["refcount-bits"]
assert ours["virtual_size"] == qemu["virtual-size"]
assert ours["cluster_size"] == qemu["cluster-size"]
a = sorted((b["name"], b["granularity"]) for b in ours["bitmaps"])
b = sorted((b["name"], b["granularity"]) for b in q["bitmaps"])
assert a == b, (a, b)
PY
    done
    map_qemu e$n.qcow2 keep > rc.before
    $D add e$n.qcow2 extra
    qemu_check e$n.qcow2
    map_qemu e$n.qcow2 keep > rc.after
    expect_map rc.before rc.after "refcount_bits=$n: bitmap 'keep' after our add"
    map_ours e$n.qcow2 keep > rc.ours
    expect_map rc.before rc.ours "refcount_bits=$n: our map after our add"
    qemu-img info --output=json e$n.qcow2 | $py -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"]
assert d["refcount-bits"] == 16, d["refcount-bits"]
assert sorted(b["name"] for b in d["bitmaps"]) == ["extra", "keep"]
' || fail "refcount_bits=$n: not rewritten canonically with both bitmaps"
done

# A corrupted narrow refcount: clear the L1 table cluster's entry in place,
# following the spec's packing (sub-byte entries from the least
# significant bit up).  QEMU must call it corrupt (proving the edit hit the
# right bits), and we give one clear line naming the entry: exit 1.
for n in 1 2 4; do
    qemu-img create -q -f qcow2 -o refcount_bits=$n z$n.qcow2 1G
    qemu-img bitmap --add z$n.qcow2 b0
    where=$($py "$srcdir/set_refcount.py" z$n.qcow2 0)
    set +e
    qemu-img check z$n.qcow2 >/dev/null 2>&1; qrc=$?
    $D check z$n.qcow2 > rc.out 2>&1; rc=$?
    $D info z$n.qcow2 >/dev/null 2>&1; rc2=$?
    $D map z$n.qcow2 b0 >/dev/null 2>&1; rc3=$?
    set -e
    [ $qrc -eq 2 ] || fail "refcount_bits=$n: qemu-img check exit $qrc, want 2"
    [ $rc -eq 1 ] || { cat rc.out; fail "refcount_bits=$n corrupt: exit $rc, want 1"; }
    [ "$(grep -c . rc.out)" -eq 1 ] || { cat rc.out; fail "refcount_bits=$n: not one line"; }
    grep -qF "refcount is 0 ($where)" rc.out ||
        { cat rc.out; fail "refcount_bits=$n: message lacks '$where'"; }
    [ $rc2 -eq 1 ] && [ $rc3 -eq 1 ] || fail "refcount_bits=$n: info/map exit $rc2/$rc3"
done
# Refcounts above the references are leaks (exit 1) at every width,
# including a 64-bit value no narrower type could hold.
for nv in 2:3 4:15 64:9223372036854775808; do
    n=${nv%%:*} v=${nv#*:}
    qemu-img create -q -f qcow2 -o refcount_bits=$n h$n.qcow2 1G
    qemu-img bitmap --add h$n.qcow2 b0
    $py "$srcdir/set_refcount.py" h$n.qcow2 $v > /dev/null
    set +e
    qemu-img check h$n.qcow2 >/dev/null 2>&1; qrc=$?
    $D check h$n.qcow2 > rc.out 2>&1; rc=$?
    set -e
    [ $qrc -eq 3 ] || fail "refcount_bits=$n high: qemu-img check exit $qrc, want 3"
    [ $rc -eq 1 ] && grep -q "1 leaked cluster" rc.out ||
        { cat rc.out; fail "refcount_bits=$n high: exit $rc, want 1 and a leak"; }
done
echo OK
