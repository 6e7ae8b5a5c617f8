#!/usr/bin/env bash
# backup-agent.py survives being killed or failing at every step of a
# backup, with writers running throughout (crash-safe mode): rerunning
# the same command finishes that backup, reusing its checkpoint while its
# snapshot is live (the copy resumes where it was recorded), and taking a
# new one when the snapshot is gone (nbdkit restarted) or broken (its
# store cap reached).  After each rerun the restore point equals the
# snapshot it was read from, byte for byte, and an incremental copied
# exactly the dirty extents of the bitmaps it read.
#   point 0  full, killed after its 5th chunk: resumes at 4 MiB
#   point 1  incremental, killed once its checkpoint command is sent
#   point 2  incremental, killed after its 3rd chunk: resumes after the
#            2nd
#   point 3  incremental, an injected failure at commit (JSON error)
#   point 4  incremental, killed before its cleanup
#   point 5  incremental, killed after its checkpoint, nbdkit restarted:
#            the snapshot is gone, so a new checkpoint, a full snapshot,
#            and both bitmaps are read
#   point 6  incremental, killed after its checkpoint, its snapshot broken
#            by writes past bitmap-snapshot-max: released, redone
source "$srcdir/functions.sh"
source "$srcdir/test-backup-agent-lib.sh"

truncate -s 16M disk.img
ctl=$PWD/ctl sock=$PWD/sock uri="nbd+unix:///?socket=$PWD/sock"
start () {
    rm -f sock              # nbdkit leaves its socket behind
    start_nbdkit pid sock file disk.img bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$ctl "$@"
    start_writer "$uri" $RANDOM
}
restart () {
    stop_writer || fail "the writers failed"
    kill_nbdkit "$(cat pid)"
    start "$@"
}
start
# --keep-snapshot: each point is checked against its snapshot, then released.
A="$AGENT --uri $uri --control $ctl --dir bk --chunk-size 1M --keep-snapshot"

# run_killed POINT CMD...: the agent dies (SIGKILL) at POINT.
run_killed () {
    local point=$1 rc=0; shift
    BACKUP_AGENT_KILL_AT=$point $A "$@" > out 2> err || rc=$?
    [ $rc = 137 ] || fail "killed at $point: exit $rc, not 137: $(cat out err)"
    [ ! -s out ] || fail "killed at $point, yet it printed: $(cat out)"
    [ -s bk/op.json ] || fail "killed at $point: no op.json"
}
snapshots () { "$DIRTYBITMAP" status "$ctl" | json_get "[s['name'] for s in j['snapshots']]"; }
bitmaps () { "$DIRTYBITMAP" status "$ctl" | json_get "[b['name'] for b in j['bitmaps']]"; }
# finish N CP CMD...: the rerun; point N, from checkpoint CP.
finish () {
    local n=$1 cp=$2; shift 2
    $A "$@" > out || fail "point $n: the rerun failed: $(cat out)"
    json_check "j['backup'] == $n and j['checkpoint'] == '$cp' and j['resumed']" < out
    [ ! -e bk/op.json ] || fail "point $n: op.json left behind"
    [ $n = 0 ] || check_copied $n out
    check_point $n "$sock"
    $AGENT release --control "$ctl" --dir bk > /dev/null
    [ "$(snapshots)" = "[]" ] || fail "point $n: snapshots left: $(snapshots)"
    [ $n = 0 ] || rm -f restored.$((n - 1))
    echo "point $n: $(cat out)"
}

# 0: full, killed after writing its 5th 1M chunk, before recording it.
run_killed copy:5 full
json_check "j['step'] == 'copy' and j['done'] == 4 << 20" < bk/op.json
[ "$(snapshots)" = '["bk-1"]' ] || fail "snapshots: $(snapshots)"
finish 0 bk-1 full
json_check "j['resumed_at'] == 4 << 20 and j['redone'] == 0" < out

# 1: killed with the checkpoint command sent, its reply unread.
run_killed checkpoint-sent incremental
finish 1 bk-2 incremental
json_check "j['redone'] == 0 and j['variant'] == 'dirty'" < out

# 2: killed after the 3rd chunk of a dirty incremental.
run_killed copy:3 incremental
done=$(json_get "j['done']" < bk/op.json)
[ "$done" -gt 0 ] || fail "point 2: nothing recorded after 2 chunks"
finish 2 bk-3 incremental
json_check "j['resumed_at'] == $done and j['redone'] == 0" < out

# 3: an injected failure at commit: a JSON error, exit 1.
rc=0
BACKUP_AGENT_FAIL_AT=commit $A incremental --variant full --json > out || rc=$?
[ $rc = 1 ] || fail "failure at commit: exit $rc"
json_check "j['step'] == 'commit' and 'injected' in j['error']" < out
finish 3 bk-4 incremental
[ "$(bitmaps)" = '["dirtybitmap", "bk-4"]' ] || fail "bitmaps: $(bitmaps)"

# 4: killed after the commit, before its cleanup: the rerun cleans up and
# reports that backup (no new checkpoint).
run_killed cleanup incremental
finish 4 bk-5 incremental
[ "$(bitmaps)" = '["dirtybitmap", "bk-5"]' ] || fail "bitmaps: $(bitmaps)"

# 5: killed after its checkpoint; nbdkit restarts, so the snapshot is
# gone: bk-6 stays, a new checkpoint bk-7 (full snapshot) is taken, and
# the increment covers bk-5 and bk-6.
run_killed checkpoint incremental
[ "$(snapshots)" = '["bk-6"]' ] || fail "snapshots: $(snapshots)"
restart
[ "$(snapshots)" = "[]" ] || fail "snapshots after the restart: $(snapshots)"
finish 5 bk-7 incremental
json_check "j['redone'] == 1 and j['variant'] == 'full' and
            j['bitmaps'] == ['bk-5', 'bk-6']" < out
[ "$(bitmaps)" = '["dirtybitmap", "bk-7"]' ] || fail "bitmaps: $(bitmaps)"

# 6: the snapshot breaks (its store may hold 256K; a 2M overwrite of data
# needs more) while the agent is dead: released, a new checkpoint.
restart bitmap-snapshot-max=256K
"$PYTHON" -c 'import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite(b"\x5a" * (2 << 20), 8 << 20); h.shutdown()' "$uri"
run_killed checkpoint incremental --variant full
"$PYTHON" -c 'import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite(b"\xa5" * (2 << 20), 8 << 20); h.shutdown()' "$uri"
"$DIRTYBITMAP" status "$ctl" |
    json_check "[s['state'] for s in j['snapshots']] == ['broken']"
stop_writer || fail "the writers failed"
finish 6 bk-9 incremental
json_check "j['redone'] == 1 and j['bitmaps'] == ['bk-7', 'bk-8'] and
            any('broken' in w for w in j['warnings'])" < out
[ "$(bitmaps)" = '["dirtybitmap", "bk-9"]' ] || fail "bitmaps: $(bitmaps)"

# Every restore point restores, and the chain is whole.
for n in 0 1 2 3 4 5 6; do
    $AGENT restore --dir bk --out restored.img --upto $n > /dev/null
done
json_check "len(j['points']) == 7 and j['pending'] == ['bk-9'] and
            j['remove'] == [] and j['release'] == [] and j['kept'] == []" < bk/chain.json
kill_nbdkit "$(cat pid)"
qemu_check b.qcow2
echo OK
