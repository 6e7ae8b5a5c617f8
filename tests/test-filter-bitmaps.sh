#!/usr/bin/env bash
# Proves every enabled bitmap is updated at its own granularity, exactly as
# QEMU does (including one added with 'qemu-img bitmap --add -g' while
# nbdkit was stopped), and a disabled bitmap is preserved untouched.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires nbdsh -c 'exit(0)'
requires qemu-img --version
D=$DIRTYBITMAP
size=$((64 << 20))

for mode in crash-safe qemu; do
    f=$PWD/bm-$mode.qcow2
    # First run creates the file with the default bitmap.
    "$NBDKIT" -U - --filter="$FILTER" memory $size bitmap-file=$f \
        bitmap-mode=$mode --run 'nbdsh -u "$uri" -c "h.pwrite(b\"a\" * 10, 0)"'
    qemu-img bitmap --add -g 4096 $f fine
    qemu-img bitmap --add -g 1M $f frozen
    qemu-img bitmap --disable $f frozen
    # Give 'frozen' some contents of its own, then run again.
    qemu-img bitmap --merge dirtybitmap $f frozen
    map_ours $f frozen > frozen.before
    "$NBDKIT" -U - --filter="$FILTER" memory $size bitmap-file=$f \
        bitmap-mode=$mode \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"b\" * 5000, 10 << 20); h.zero(100, 20 << 20)"'
    qemu_check $f
    printf '0 65536\n10485760 65536\n20971520 65536\n' > want
    map_ours $f dirtybitmap > got; expect_map want got "$mode: 64K bitmap"
    map_qemu $f dirtybitmap > got; expect_map want got "$mode: 64K bitmap via qemu"
    printf '10485760 8192\n20971520 4096\n' > want
    map_ours $f fine > got; expect_map want got "$mode: 4K bitmap added by qemu-img"
    map_qemu $f fine > got; expect_map want got "$mode: 4K bitmap via qemu"
    map_ours $f frozen > got; expect_map frozen.before got "$mode: disabled bitmap"
    $D info $f | grep -q "frozen: granularity 1048576, flags -," || fail "$mode: frozen flags"
done
echo OK
