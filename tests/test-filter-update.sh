#!/usr/bin/env bash
# Checkpoints and removals change the file where it is (README: "a
# checkpoint costs the same with 0 or 32 bitmaps kept"): in both modes,
# 12 checkpoints keep the file's inode (no rewrite) and grow it by about
# one bitmap each, qemu-img check passes on the live file after each, and
# the retained bitmaps keep exactly the writes made before them.  Then 24
# rounds of checkpoint + removal of the oldest: the file is compacted now
# and then (the inode changes, the apparent size stays bounded).  A file
# replaced behind nbdkit's back is written again at the next checkpoint,
# not updated in the unlinked inode.  After kill -9 the file is still
# valid and holds every write.
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" -c "import nbd"
D=$DIRTYBITMAP

# write_at SOCKET OFFSET: one 4K write.
write_at () {
    nbdsh -u "nbd+unix:///?socket=$PWD/$1" \
        -c "h.pwrite(b'u' * 4096, $2)"
}

for mode in crash-safe qemu; do
    rm -f u.qcow2 ctl
    start_nbdkit pid.$mode sock.$mode memory 64G bitmap-file=$PWD/u.qcow2 \
        bitmap-control=$PWD/ctl bitmap-mode=$mode
    write_at sock.$mode 0
    ino=$(stat -c %i u.qcow2)
    size0=$(stat -c %s u.qcow2)
    # One bitmap of 64G at 64K granularity: 128 KiB of data clusters.
    for k in $(seq 1 12); do
        write_at sock.$mode $(( k << 30 ))
        $D checkpoint ctl k$k > /dev/null || fail "$mode: checkpoint k$k"
        [ "$(stat -c %i u.qcow2)" = "$ino" ] ||
            fail "$mode: checkpoint k$k rewrote the file (new inode)"
        qemu-img check -U u.qcow2 > /dev/null ||
            fail "$mode: qemu-img check after checkpoint k$k"
    done
    size=$(stat -c %s u.qcow2)
    # Each: a table cluster, 2 data clusters, directory and refcounts.
    (( size - size0 <= 12 * 8 * 64 * 1024 )) ||
        fail "$mode: 12 checkpoints grew the file from $size0 to $size bytes"
    # k3 was enabled from checkpoint k3 to k4: it holds the write at 4G.
    map_qemu $PWD/u.qcow2 k3 > k3.qemu
    echo "$(( 4 << 30 )) 65536" | expect_map - k3.qemu "$mode: k3"

    inodes=$ino
    for k in $(seq 13 36); do
        write_at sock.$mode $(( (k % 60) << 30 ))
        $D checkpoint ctl k$k > /dev/null || fail "$mode: checkpoint k$k"
        $D remove ctl k$((k - 12)) || fail "$mode: remove k$((k - 12))"
        inodes="$inodes $(stat -c %i u.qcow2)"
    done
    qemu-img check -U u.qcow2 > /dev/null || fail "$mode: check after removals"
    [ "$(echo $inodes | tr ' ' '\n' | sort -u | wc -l)" -gt 1 ] ||
        fail "$mode: 24 removals never compacted the file"
    size=$(stat -c %s u.qcow2)
    # 13 bitmaps live: compaction keeps the file under twice that, plus
    # what one round adds.
    (( size <= 2 * 13 * (128 + 64) * 1024 + 4 * 1024 * 1024 )) ||
        fail "$mode: the file grew to $size bytes with 13 bitmaps"
    $D status ctl | json_check '[b["name"] for b in j["bitmaps"]] ==
        ["dirtybitmap"] + ["k%d" % i for i in range(25, 37)]' ||
        fail "$mode: bitmaps listed"
    # A file replaced behind nbdkit's back: the next checkpoint writes the
    # file again from memory instead of updating the unlinked inode.
    cp u.qcow2 u.copy && mv u.copy u.qcow2
    $D checkpoint ctl z1 > /dev/null || fail "$mode: checkpoint z1"
    $D info u.qcow2 --json | json_check '"z1" in [b["name"] for b in j["bitmaps"]]' ||
        fail "$mode: z1 not in the file at the path"
    map_ours u.qcow2 k36 > k36.ours
    [ ! -s k36.ours ] || fail "$mode: k36 (no write while enabled) is not empty"
    write_at sock.$mode $(( 61 << 30 ))
    kill -9 "$(cat pid.$mode)"; sleep 0.5
    qemu_check u.qcow2
    map_ours u.qcow2 k35 > k35.ours
    echo "$(( 36 << 30 )) 65536" | expect_map - k35.ours "$mode: k35 after kill -9"
    if [ $mode = crash-safe ]; then
        covers <(map_ours u.qcow2 z1) $(( 61 << 30 )) 4096 ||
            fail "$mode: write before kill -9 lost"
    fi
done
echo OK
