#!/usr/bin/env bash
# Proves the locks held while running are compatible with QEMU's image
# locking: qemu-img bitmap and qemu-io refuse to modify the file, a second
# nbdkit with the same file refuses to start, read-only 'qemu-img info -U'
# still works, and after shutdown everything works again.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires qemu-img --version
requires qemu-io --version
f=$PWD/bm.qcow2

"$DIRTYBITMAP" create $f --size 1G
start_nbdkit pid $PWD/s.sock memory 1G bitmap-file=$f
set +e
qemu-img bitmap --add $f other 2> err; rc=$?
set -e
[ $rc -ne 0 ] && grep -q 'Failed to get "write" lock' err || { cat err; fail "qemu-img bitmap was not refused"; }
qemu-img info $f > /dev/null 2> err && fail "qemu-img info without -U was allowed"
grep -q 'Failed to get shared "write" lock' err || { cat err; fail "qemu-img info message"; }
qemu-io -f qcow2 -c 'read 0 512' $f > /dev/null 2>&1 && fail "qemu-io opened the file"
qemu-img info -U $f | grep -q "dirtybitmap" || fail "qemu-img info -U failed"
set +e
"$NBDKIT" --filter="$FILTER" memory 1G bitmap-file=$f --run true 2> err; rc=$?
set -e
[ $rc -ne 0 ] && grep -q "is another process using it" err || { cat err; fail "second nbdkit started"; }
"$DIRTYBITMAP" add $f other 2> err && fail "our CLI modified a locked file"
grep -q "is another process using it" err || fail "CLI lock message"
"$DIRTYBITMAP" info $f > /dev/null || fail "read-only CLI info refused"
kill_nbdkit "$(cat pid)"
qemu-img bitmap --add $f other
qemu_check $f

# And the other way: a QEMU writer holds the file, nbdkit refuses.
qemu-io -f qcow2 -c 'sleep 3000' $f > /dev/null 2>&1 &
qpid=$!
cleanup_fn "kill $qpid 2>/dev/null"
sleep 1
set +e
"$NBDKIT" --filter="$FILTER" memory 1G bitmap-file=$f --run true 2> err; rc=$?
set -e
kill $qpid; wait $qpid 2>/dev/null || true
[ $rc -ne 0 ] && grep -q "is another process using it" err || { cat err; fail "started while qemu-io held the file"; }
qemu_check $f
echo OK
