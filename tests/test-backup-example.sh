#!/usr/bin/env bash
# The incremental-backup example (tools/examples/backup-agent.py) end to
# end, with writers (writes, zeroes, trims on 2 connections) running
# throughout: a full backup and 4 incrementals, each copied from a
# point-in-time snapshot (incrementals 1 and 3 from a dirty snapshot, 2
# and 4 from a full one), in both modes.  While each snapshot is still
# live (--keep-snapshot) the test checks that:
#  - the restore point equals the snapshot byte for byte: a full read of
#    the snapshot export (nbdcopy --no-extents); for a dirty snapshot,
#    which serves only its frozen bitmap's dirty granules, a read of each
#    of those extents, the rest equal to the previous restore point (the
#    snapshot's content there), and a read outside fails with EPERM;
#  - an incremental copied exactly the frozen bitmap's dirty extents, as
#    QEMU reads them (qemu-nbd -B): its extent list is theirs, and
#    bytes_copied is their sum;
#  - the writers wrote during the backup, and after its cut (the snapshot
#    preserved some data).
# Then `release` ends the snapshot and removes the consumed bitmap, and at
# the end every restore point still restores to what was checked.
source "$srcdir/functions.sh"
source "$srcdir/test-backup-agent-lib.sh"
SIZE=$((16 << 20))

for mode in crash-safe qemu; do
    rm -rf bk disk.img b.qcow2 restored.* sums
    truncate -s $SIZE disk.img
    start_nbdkit pid.$mode sock.$mode file disk.img bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$PWD/ctl.$mode bitmap-mode=$mode
    sock=$PWD/sock.$mode ctl=$PWD/ctl.$mode
    uri="nbd+unix:///?socket=$sock"
    A="$AGENT --uri $uri --control $ctl --dir bk --keep-snapshot"
    start_writer "$uri" 1
    for n in 0 1 2 3 4; do
        case $n in
            0) cmd=full ;;
            1|3) cmd="incremental --variant dirty" ;;
            *) cmd="incremental --variant full" ;;
        esac
        before=$(writes)
        $A $cmd > out || fail "$mode: backup $n: $(cat out)"
        after=$(writes)
        [ "$after" -gt "$before" ] ||
            fail "$mode: backup $n: no write during it ($before, $after)"
        cp=bk-$((n + 1))
        json_check "j['backup'] == $n and j['checkpoint'] == '$cp' and j['kept']
                    and j['bitmaps' if $n else 'kind'] == (['bk-$n'] if $n else 'full')" < out
        # Writes after the cut reached the snapshot's area (it preserved
        # their old contents): it is not the export as it is now.  Prints
        # the snapshot's variant, and the frozen bitmap's dirty_bytes.
        { read -r variant; read -r dirty; } < <("$PYTHON" -c '
import json, socket, sys, time
ctl, cp, frozen = sys.argv[1:4]
for i in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect(ctl)
    s.sendall(b"status\n")
    j = json.loads(s.makefile().readline())
    s.close()
    snap = [x for x in j["snapshots"] if x["name"] == cp][0]
    if snap["preserved_bytes"] > 0:
        break
    time.sleep(0.05)
else:
    sys.exit("snapshot %s: nothing written after the cut" % cp)
print(snap["variant"])
print([b["dirty_bytes"] for b in j["bitmaps"] if b["name"] == frozen][0])' \
            "$ctl" $cp $([ $n = 0 ] && echo dirtybitmap || echo bk-$n))
        [ -n "$dirty" ] || fail "$mode: backup $n: nothing written after the cut"
        if [ $n = 0 ] || [ $n = 2 ] || [ $n = 4 ]; then want=full; else want=dirty; fi
        [ "$variant" = $want ] || fail "$mode: backup $n: a $variant snapshot, not $want"
        if [ $n -gt 0 ]; then
            check_copied $n out
            # The filter's own count, for the record: it may exceed what
            # the file holds (reported with issue 13).
            copied=$(jget out "j['bytes_copied']")
            [ "$dirty" = "$copied" ] ||
                echo "NOTE: $mode: bitmap bk-$n: status says $dirty dirty bytes, its file $copied"
        fi
        check_point $n "$sock"
        sha256sum < restored.$n >> sums
        [ $n -gt 0 ] && rm -f restored.$((n - 1))
        $AGENT release --control "$ctl" --dir bk > rel
        json_check "j['released'] == ['$cp'] and
                    j['removed'] == ([] if $n == 0 else ['bk-$n'])" < rel
        "$DIRTYBITMAP" status "$ctl" | json_check "j['snapshots'] == [] and
            [b['name'] for b in j['bitmaps']] == ['dirtybitmap', '$cp']"
        echo "$mode: backup $n ($variant snapshot $cp) equals its snapshot; $(writes) writes so far"
    done
    stop_writer || fail "$mode: the writers failed"
    # Earlier restore points still restore to what was checked.
    head -n 4 sums | sed -n '1p;4p' > sums1
    for n in 0 3; do
        $AGENT restore --dir bk --out restored.img --upto $n > /dev/null
        sha256sum < restored.img
    done > sums2
    diff sums1 sums2 >&2 || fail "$mode: a restore point changed"
    rm -f restored.*
    kill_nbdkit "$(cat pid.$mode)"
    qemu_check b.qcow2
    echo "$mode: full + 4 incrementals from snapshots, each identical to its snapshot"
done
echo OK
