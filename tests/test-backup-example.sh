#!/usr/bin/env bash
# The incremental-backup example (tools/examples/backup-agent.py) end to
# end: a full backup and 4 incrementals with random writes, zeroes and
# trims in between (both modes).  Each restore point equals the export at
# that moment byte for byte, and each incremental copied exactly the
# bitmap's dirty granules, no more than the granules the writes touched.
source "$srcdir/functions.sh"
requires qemu-img --version
requires nbdcopy --version
requires "$PYTHON" -c "import nbd"
AGENT="$PYTHON $srcdir/../tools/examples/backup-agent.py"
O="$PYTHON $srcdir/oracle.py"

for mode in crash-safe qemu; do
    rm -rf bk disk.img b.qcow2 log.* exp.*
    truncate -s 256M disk.img
    start_nbdkit pid.$mode sock.$mode file disk.img bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$PWD/ctl.$mode bitmap-mode=$mode
    uri="nbd+unix:///?socket=$PWD/sock.$mode"
    $O run "$uri" log.0 --seed 1 --ops 300 --conns 2 --max-len 300000
    $AGENT full --uri "$uri" --control ctl.$mode --dir bk > out
    nbdcopy "$uri" exp.0
    for n in 1 2 3 4; do
        $O run "$uri" log.$n --seed $((n + 10)) --ops $((n * 100)) --conns 2 \
            --max-len 200000
        $AGENT incremental --uri "$uri" --control ctl.$mode --dir bk > out
        nbdcopy "$uri" exp.$n
        copied=$("$PYTHON" -c 'import json,sys; print(json.load(open("out"))["bytes_copied"])')
        # Exactly the dirty granules of the writes since the last backup
        # (the bitmap is exact after a checkpoint, in both modes).
        want=$($O expect log.$n $((256 << 20)) 65536 | awk '{ s += $2 } END { print s + 0 }')
        [ "$copied" = "$want" ] ||
            fail "$mode: incremental $n copied $copied bytes, writes touched $want"
    done
    for n in 0 1 2 3 4; do
        $AGENT restore --dir bk --out restored.img --upto $n > /dev/null
        cmp restored.img exp.$n || fail "$mode: restore point $n differs"
    done
    # Consumed bitmaps are removed: only the original and the live one.
    "$DIRTYBITMAP" status ctl.$mode | json_get '[b["name"] for b in j["bitmaps"]]' > names
    [ "$(cat names)" = '["dirtybitmap", "bk-5"]' ] ||
        fail "$mode: bitmaps left: $(cat names)"
    kill_nbdkit "$(cat pid.$mode)"
    qemu_check b.qcow2
    echo "$mode: full + 4 incrementals restored identically"
done
echo OK
