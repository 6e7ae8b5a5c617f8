#!/usr/bin/env bash
# The demo of ./quickstart.sh demo, both layouts side by side:
#  1. QEMU's layout (the default): an external qcow2 that QEMU's own tools
#     read, with one bitmap for the export.
#  2. The 2015 draft's layout (bitmap-format=draft-2015): a zero-size
#     qcow2 container holding bitmaps for several drives, each with its
#     own size; dirtybitmap info shows them, convert turns one into a
#     file QEMU reads.
#   tools/examples/demo.sh FILTER.so DIRTYBITMAP
set -euo pipefail
export PATH=/usr/bin:$PATH
FILTER=${1:?the filter .so}; D=${2:?the dirtybitmap command}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT

writes='nbdsh -u "$uri" -c "
h.pwrite(b\"hello\" * 1000, 0)
h.zero(1 << 20, 100 << 20)
h.trim(128 << 20, 64 << 20)
h.flush()"'

echo "=== 1. QEMU's layout (default): one bitmap file per export, read by QEMU's tools"
echo "== nbdkit --filter=dirtybitmap memory 1G bitmap-file=$d/disk.bitmaps.qcow2"
nbdkit -U - --filter="$FILTER" memory 1G bitmap-file="$d/disk.bitmaps.qcow2" \
    --run "$writes"
echo "== qemu-img info $d/disk.bitmaps.qcow2"
qemu-img info "$d/disk.bitmaps.qcow2"
echo "== qemu-img check"
qemu-img check "$d/disk.bitmaps.qcow2"
echo "== dirtybitmap info (the strip: dirty density across the disk)"
"$D" info "$d/disk.bitmaps.qcow2"
echo "== dirtybitmap map (dirty extents)"
"$D" map "$d/disk.bitmaps.qcow2" dirtybitmap | grep dirty

echo
echo "=== 2. The 2015 draft's layout: one zero-size container for several drives"
for drive in drive-a:1G drive-b:256M; do
    name=${drive%%:*}; size=${drive#*:}
    echo "== nbdkit --filter=dirtybitmap memory $size bitmap-file=$d/vm.bitmaps.qcow2 bitmap-format=draft-2015 bitmap-name=$name"
    nbdkit -U - --filter="$FILTER" memory "$size" \
        bitmap-file="$d/vm.bitmaps.qcow2" bitmap-format=draft-2015 \
        bitmap-name="$name" --run "$writes"
done
echo "== dirtybitmap info (virtual size 0: the container holds no disk)"
"$D" info "$d/vm.bitmaps.qcow2"
echo "== dirtybitmap convert --to qemu ... --bitmap drive-b (a file QEMU reads)"
"$D" convert --to qemu "$d/vm.bitmaps.qcow2" "$d/drive-b.qcow2" --bitmap drive-b
qemu-img info "$d/drive-b.qcow2" | grep -E "virtual size|name:"
echo
echo "QEMU's layout is the default: QEMU, qemu-nbd -B and nbdinfo read it."
echo "bitmap-format=draft-2015 keeps every drive's bitmap in one container;"
echo "dirtybitmap converts between the two."
