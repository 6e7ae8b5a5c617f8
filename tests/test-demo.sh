#!/usr/bin/env bash
# ./quickstart.sh demo's body (tools/examples/demo.sh) runs as written and
# shows both layouts: QEMU's (qemu-img reads it, with the bitmap), and
# the draft's zero-size container holding two drives' bitmaps, converted
# for QEMU; the first lines a newcomer sees never say "error".
source "$srcdir/functions.sh"
requires qemu-img --version
requires nbdsh --version
bash "$srcdir/../tools/examples/demo.sh" "$FILTER" "$DIRTYBITMAP" > out 2>&1 ||
    { cat out; fail "demo failed"; }
! grep -q "error:" out || { cat out; fail "the demo prints an error label"; }
grep -q "^=== 1. QEMU's layout" out && grep -q "^=== 2. The 2015 draft" out ||
    fail "demo sections"
grep -q "No errors were found on the image" out || fail "qemu-img check"
grep -q "^layout: draft-2015" out && grep -q "^virtual size: 0$" out ||
    fail "the container: $(cat out)"
grep -q "^  drive-a: size 1073741824" out && grep -q "^  drive-b: size 268435456" out ||
    fail "the two drives"
grep -q "name: drive-b" out && grep -q "virtual size: 256 MiB" out ||
    fail "convert for QEMU"
echo OK
