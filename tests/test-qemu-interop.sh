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
echo OK
