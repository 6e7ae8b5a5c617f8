#!/usr/bin/env bash
# backup-agent.py's interface promises (crash-safe mode):
#  - errors: with --json, {"error", "step"} on stdout and exit 1 (2 for
#    bad usage); without, a line on stderr and nothing on stdout; none of
#    the failures before a backup changes the server;
#  - a failure after the checkpoint no longer wedges the chain (the
#    rerun reuses the checkpoint: no "bitmap 'bk-2' already exists");
#  - --dirtybitmap: a missing command is refused before anything is done
#    on the server; a failing one fails the copy's map step, and the rerun
#    finishes; without it, the command is found on PATH or in the build
#    tree;
#  - one agent per directory (DIR/.lock);
#  - --progress: a tqdm bar on stderr; without python3-tqdm, no bar and a
#    note; no bar by default when stderr is not a terminal.
# Each restore point taken is compared with its live snapshot, and each
# incremental copied exactly its bitmap's dirty extents.
source "$srcdir/functions.sh"
requires "$PYTHON" -c "import tqdm"
source "$srcdir/test-backup-agent-lib.sh"

truncate -s 16M disk.img
ctl=$PWD/ctl sock=$PWD/sock uri="nbd+unix:///?socket=$PWD/sock"
start_nbdkit pid sock file disk.img bitmap-file=$PWD/b.qcow2 bitmap-control=$ctl
A="$AGENT --uri $uri --control $ctl --dir bk --keep-snapshot"

# --- errors, before any backup -------------------------------------------
expect_error 1 state $A incremental --json
expect_error 2 usage $AGENT full --dir bk --json
expect_error 2 usage $AGENT incremental --json --dir bk --uri "$uri" --control "$ctl" --new-chain
expect_error 2 usage $AGENT restore --dir bk --out x --upto zero --json
expect_error 1 status $AGENT full --uri "$uri" --control "$PWD/nosuch" --dir bk --json
expect_error 1 state $AGENT restore --dir nosuch --out x.img --json
# Without --json: one line on stderr, nothing on stdout.
rc=0
$A incremental --dir nosuch > out 2> err || rc=$?
[ $rc = 1 ] && [ ! -s out ] && grep -q '^backup-agent: state: ' err ||
    fail "a plain error: exit $rc, stdout '$(cat out)', stderr '$(cat err)'"
[ "$(bitmaps)" = "[]" ] || fail "the failures changed the server: $(bitmaps)"

# --- the first full ----------------------------------------------------------
write_some
$A full > out
json_check "j['backup'] == 0 and j['checkpoint'] == 'bk-1'" < out
keep 0

# --- a failure after the checkpoint does not wedge the chain -----------------
write_some
expect_error 1 copy env BACKUP_AGENT_FAIL_AT=copy:1 $A incremental --json
[ "$(bitmaps)" = '["dirtybitmap", "bk-1", "bk-2"]' ] || fail "bitmaps: $(bitmaps)"
$A incremental > out || fail "the rerun failed: $(cat out)"
json_check "j['backup'] == 1 and j['checkpoint'] == 'bk-2' and j['resumed']
            and j['redone'] == 0" < out
check_copied 1 out
keep 1

# --- --dirtybitmap -------------------------------------------------------
write_some
expect_error 1 setup $A incremental --json --dirtybitmap "$PWD/nosuch"
[ "$(bitmaps)" = '["dirtybitmap", "bk-2"]' ] || fail "a missing --dirtybitmap took a checkpoint: $(bitmaps)"
[ ! -e bk/op.json ] || fail "a missing --dirtybitmap started a backup"
# A command that fails once: the map step fails after the checkpoint.
cat > flaky <<EOF
#!/bin/sh
if [ ! -e "$PWD/flaky.done" ]; then touch "$PWD/flaky.done"; echo "flaky: no" >&2; exit 1; fi
exec "$DIRTYBITMAP" "\$@"
EOF
chmod +x flaky
expect_error 1 map $A incremental --json --dirtybitmap "$PWD/flaky"
grep -q "flaky: no" err.json || fail "the map error does not say why: $(cat err.json)"
$A incremental --dirtybitmap "$PWD/flaky" > out
json_check "j['backup'] == 2 and j['checkpoint'] == 'bk-3' and j['resumed']" < out
check_copied 2 out
keep 2
# Found without --dirtybitmap or $DIRTYBITMAP: on PATH, then in the build
# tree beside the script (when the build tree is the source tree).
mkdir -p bin && ln -sf "$DIRTYBITMAP" bin/dirtybitmap
write_some
env -u DIRTYBITMAP PATH="$PWD/bin:/usr/bin:/bin" $A incremental > out ||
    fail "dirtybitmap on PATH: $(cat out)"
keep 3
if [ "$(cd "$srcdir/.." && pwd -P)" = "$(cd "$(dirname "$DIRTYBITMAP")" && pwd -P)" ]; then
    write_some
    env -u DIRTYBITMAP PATH=/usr/bin:/bin $A incremental > out ||
        fail "dirtybitmap from the build tree: $(cat out)"
    keep 4
else
    echo "(not a source-tree build: no check of the build-tree default)"
    write_some
    $A incremental > out
    keep 4
fi

# --- one agent per directory ---------------------------------------------
"$PYTHON" -c 'import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(60)' bk/.lock locked &
holder=$!
cleanup_fn "kill $holder 2>/dev/null || true"
for (( i=0; i<100; i++ )); do [ -e locked ] && break; sleep 0.1; done
expect_error 1 lock $A incremental --json
kill $holder; wait $holder 2>/dev/null || true
[ ! -e bk/op.json ] || fail "a locked-out run started a backup"

# --- progress bars -------------------------------------------------------
write_some
$A incremental --progress > out 2> err
grep -q '100%' err && grep -q 'B/s' err || fail "no progress bar: $(cat err)"
keep 5
mkdir -p notqdm && echo 'raise ImportError("no tqdm here")' > notqdm/tqdm.py
write_some
PYTHONPATH=$PWD/notqdm $A incremental --progress > out 2> err
grep -q 'python3-tqdm is not installed' err && ! grep -q '100%' err ||
    fail "without tqdm: $(cat err)"
keep 6
write_some
$A incremental > out 2> err
[ ! -s err ] || fail "a bar (or noise) by default on a non-terminal: $(cat err)"
keep 7

kill_nbdkit "$(cat pid)"
qemu_check b.qcow2
echo OK
