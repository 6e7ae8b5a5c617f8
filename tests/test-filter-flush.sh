#!/usr/bin/env bash
# Proves flush and FUA durability: after a flush (or FUA write) reply, a
# copy of the bitmap file taken while nbdkit still runs shows every bit
# written before it, in both modes.  Also the incremental-backup interop
# path: qemu-img bitmap --merge from our file into a qcow2 disk.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires nbdsh -c 'exit(0)'
requires qemu-img --version
D=$DIRTYBITMAP
size=$((128 << 20))
# The last persisted contents, even of an in_use bitmap (qemu mode).
map_ours_force () { "$D" map "$1" "$2" --force | awk '$3 == "dirty" { print $1, $2 }'; }

for mode in qemu crash-safe; do
    f=$PWD/bm-$mode.qcow2
    truncate -s $size disk-$mode.img
    start_nbdkit pid-$mode $PWD/$mode.sock file disk-$mode.img \
        bitmap-file=$f bitmap-mode=$mode
    nbdsh -u "nbd+unix:///?socket=$PWD/$mode.sock" -c '
h.pwrite(b"x" * 4096, 5 << 20)
h.zero(100, 7 << 20)
h.flush()'
    cp $f copy1.qcow2
    map_ours_force copy1.qcow2 dirtybitmap > got
    covers got $((5 << 20)) 4096 && covers got $((7 << 20)) 100 ||
        { cat got; fail "$mode: flush did not make the bits durable"; }
    nbdsh -u "nbd+unix:///?socket=$PWD/$mode.sock" -c '
h.pwrite(b"y" * 512, 9 << 20, nbd.CMD_FLAG_FUA)'
    cp $f copy2.qcow2
    map_ours_force copy2.qcow2 dirtybitmap > got
    covers got $((9 << 20)) 512 || { cat got; fail "$mode: FUA did not make the bit durable"; }
    qemu_check copy2.qcow2
    if [ $mode = crash-safe ]; then
        # The live file is valid and servable by QEMU while nbdkit runs.
        map_qemu $f dirtybitmap > live
        covers live $((9 << 20)) 512 || fail "live qemu-nbd read misses a write"
    fi
    kill_nbdkit "$(cat pid-$mode)"
    qemu_check $f
    printf '5242880 65536\n7340032 65536\n9437184 65536\n' > want
    map_ours $f dirtybitmap > got
    expect_map want got "$mode: after shutdown"
done

# Merge into a qcow2 disk of the same size (the backup interop path).
qemu-img create -q -f qcow2 disk.qcow2 $size
qemu-img bitmap --add disk.qcow2 target
qemu-img bitmap --merge dirtybitmap -b $PWD/bm-qemu.qcow2 -F qcow2 disk.qcow2 target
map_qemu $PWD/disk.qcow2 target > got
expect_map want got "merged into disk.qcow2"
echo OK
