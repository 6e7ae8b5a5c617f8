#!/usr/bin/env bash
# backup-agent.py's chain management (crash-safe mode):
#  - an interrupted first full: an incremental is refused, saying to run
#    full, which finishes it;
#  - a second full backup in the same chain, then incrementals on it;
#  - an interrupted incremental abandoned by a full (its checkpoint joins
#    the bitmaps the full consumes);
#  - earlier restore points restore from the right full backup;
#  - full --new-chain: the old restore points and bitmaps go; an
#    unreadable chain.json is refused (saying so) until --new-chain;
#  - an export that grew: the increment covers the new area, and the
#    restore point has the new size;
#  - a checkpoint taken by someone else: an incremental is refused (the
#    changes are not all in the agent's bitmaps), a full backup works.
# Each restore point taken is compared with its live snapshot, and each
# incremental copied exactly its bitmaps' dirty extents.
source "$srcdir/functions.sh"
source "$srcdir/test-backup-agent-lib.sh"

truncate -s 16M disk.img
ctl=$PWD/ctl sock=$PWD/sock uri="nbd+unix:///?socket=$PWD/sock"
start_nbdkit pid sock file disk.img bitmap-file=$PWD/b.qcow2 bitmap-control=$ctl
A="$AGENT --uri $uri --control $ctl --dir bk --keep-snapshot"

# --- a chain: a full and 2 incrementals ------------------------------------
# The full is interrupted, and an incremental cannot take its place (nor
# abandon it): it says to run full, which finishes it.
write_some
BACKUP_AGENT_KILL_AT=copy:2 $A full > out 2>&1 || true
[ -e bk/op.json ] || fail "the killed full left no op.json"
expect_error 1 check $A incremental --json
grep -q "run .full. (to finish the one interrupted)" err.json || fail "$(cat err.json)"
[ -e bk/op.json ] && [ "$(snapshots)" = '["bk-1"]' ] || fail "the interrupted full was touched"
$A full > out
json_check "j['backup'] == 0 and j['checkpoint'] == 'bk-1' and j['resumed']" < out
keep 0
for n in 1 2; do
    write_some
    $A incremental > out
    json_check "j['backup'] == $n and j['bitmaps'] == ['bk-$n']" < out
    [ $n != 2 ] || check_copied $n out
    keep $n
done

# --- a second full, in the same chain ------------------------------------
write_some
$A full > out || fail "a second full: $(cat out)"
json_check "j['backup'] == 3 and j['kind'] == 'full' and j['checkpoint'] == 'bk-4'
            and not j['new_chain']" < out
keep 3
[ "$(bitmaps)" = '["dirtybitmap", "bk-4"]' ] || fail "bitmaps after a second full: $(bitmaps)"
write_some
$A incremental > out
json_check "j['backup'] == 4 and j['bitmaps'] == ['bk-4']" < out
check_copied 4 out
keep 4
# An interrupted incremental, then a full: the incremental is abandoned.
write_some
BACKUP_AGENT_KILL_AT=copy:1 $A incremental > out 2>&1 || true
[ -e bk/op.json ] || fail "the killed incremental left no op.json"
$A full > out
json_check "j['backup'] == 5 and j['checkpoint'] == 'bk-7' and
            any('abandoned' in w for w in j['warnings'])" < out
keep 5
[ "$(bitmaps)" = '["dirtybitmap", "bk-7"]' ] || fail "bitmaps after abandoning: $(bitmaps)"
write_some
$A incremental > out
json_check "j['backup'] == 6 and j['bitmaps'] == ['bk-7']" < out
check_copied 6 out
keep 6
# Earlier points restore from the right full backup, to what was checked.
for n in 2 4; do
    $AGENT restore --dir bk --out restored.img --upto $n > out
    json_check "j['full'] == $( [ $n = 4 ] && echo 3 || echo 0) and
                j['increments'] == $( [ $n = 4 ] && echo 1 || echo 2)" < out
    cmp restored.img restored.$n || fail "restore point $n changed"
done

# --- a new chain ---------------------------------------------------------
write_some
$A full --new-chain > out
json_check "j['backup'] == 0 and j['new_chain'] and j['checkpoint'] == 'bk-9'" < out
rm -f restored.*
keep 0
json_check "len(j['points']) == 1 and j['discard'] == []" < bk/chain.json
img=$(json_get "j['points'][0]['image']" < bk/chain.json)
[ "$(ls bk)" = "$(printf '%s\n' chain.json "$img" | sort)" ] ||
    fail "old restore points left: $(ls bk)"
[ "$(bitmaps)" = '["dirtybitmap", "bk-9"]' ] || fail "bitmaps after a new chain: $(bitmaps)"
write_some
$A incremental > out
json_check "j['backup'] == 1 and j['bitmaps'] == ['bk-9']" < out
check_copied 1 out
keep 1
# An unreadable chain.json: refused, until a new chain.
echo '{"points": [' > bk/chain.json
expect_error 1 state $A incremental --json
grep -q -- "--new-chain" err.json || fail "the error does not say what to do: $(cat err.json)"
expect_error 1 state $A full --json
write_some
$A full --new-chain > out
json_check "j['backup'] == 0 and j['checkpoint'] == 'bk-11'" < out
rm -f restored.*
keep 0
img=$(json_get "j['points'][0]['image']" < bk/chain.json)
[ "$(ls bk)" = "$(printf '%s\n' chain.json "$img" | sort)" ] ||
    fail "the unreadable chain's restore points are left: $(ls bk)"
[ "$(bitmaps)" = '["dirtybitmap", "bk-11"]' ] ||
    fail "the unreadable chain's bitmaps are left: $(bitmaps)"

# --- the export grows: the increment covers the new area ----------------
truncate -s 20M disk.img
write_some                      # a new connection: the bitmaps grow
$A incremental > out
json_check "j['backup'] == 1 and j['checkpoint'] == 'bk-12' and j['size'] == 20 << 20" < out
check_copied 1 out
covers union.1 $((16 << 20)) $((4 << 20)) ||
    fail "the new area is not in the increment: $(cat union.1)"
keep 1
[ "$(stat -c %s restored.1)" = $((20 << 20)) ] || fail "restored.1 is not 20M"

# --- someone else's checkpoint: the changes are no longer all in the
# agent's bitmaps; refused (nothing changed on the server), then a full.
"$DIRTYBITMAP" checkpoint "$ctl" foreign > /dev/null
write_some
expect_error 1 check $A incremental --json
grep -q "no longer records writes" err.json || fail "why refused: $(cat err.json)"
[ "$(bitmaps)" = '["dirtybitmap", "bk-12", "foreign"]' ] || fail "bitmaps: $(bitmaps)"
$A full > out
json_check "j['backup'] == 2 and j['checkpoint'] == 'bk-13'" < out
keep 2
[ "$(bitmaps)" = '["dirtybitmap", "foreign", "bk-13"]' ] || fail "bitmaps: $(bitmaps)"

kill_nbdkit "$(cat pid)"
qemu_check b.qcow2
echo OK
