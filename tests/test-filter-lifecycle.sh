#!/usr/bin/env bash
# Proves the QEMU-compatible lifecycle: in qemu mode the tracked bitmap is
# in_use on disk while serving and clean after SIGTERM; nothing on disk
# changes before the first client connects (a start that fails, or a
# read-only server killed with -9, leaves the file and no control socket
# behind); repeated quit signals during shutdown never crash nbdkit (the
# filter is unloaded safely); after kill -9 the
# file still passes qemu-img check, qemu-img info shows in-use, and the
# next start applies the policy (default: mark entirely dirty, with a log
# line; bitmap-in-use=refuse refuses).  In crash-safe mode kill -9 leaves a
# consistent superset that qemu-nbd -B can serve.
source "$srcdir/functions.sh"
DIRTYBITMAP=${DIRTYBITMAP:?}
requires "$NBDKIT" --version
requires nbdsh -c 'exit(0)'
requires qemu-img --version
D=$DIRTYBITMAP
size=$((64 << 20))
f=$PWD/bm.qcow2

# qemu mode: in_use while running, clean after SIGTERM.
# (A missing file is created at the first connection, before it is served.)
start_nbdkit pid1 $PWD/s1.sock memory $size bitmap-file=$f bitmap-mode=qemu
nbdsh -u "nbd+unix:///?socket=$PWD/s1.sock" -c 'h.pwrite(b"x" * 4096, 1 << 20)'
qemu-img info -U --output=json $f | grep -q '"in-use"' || fail "not in_use while running"
kill_nbdkit "$(cat pid1)"
# An existing file is left as it is until the first client connects; that
# client is served only once in_use is durable.
sum=$(md5sum < $f)
start_nbdkit pid1b $PWD/s1b.sock memory $size bitmap-file=$f bitmap-mode=qemu \
    bitmap-control=$PWD/c1b.sock
[ "$(md5sum < $f)" = "$sum" ] || fail "the file changed before any client connected"
nbdsh -u "nbd+unix:///?socket=$PWD/s1b.sock" -c 'assert h.get_size() > 0'
qemu-img info -U --output=json $f | grep -q '"in-use"' || fail "not in_use once a client connected"
kill_nbdkit "$(cat pid1b)"
[ ! -e c1b.sock ] || fail "control socket left after a clean stop"

# A start that fails after the filter is ready (the Unix socket path is
# taken by a directory, so nbdkit cannot bind it) changes nothing on disk
# and leaves no control socket.
mkdir taken.sock
sum=$(md5sum < $f)
set +e
"$NBDKIT" -U $PWD/taken.sock --filter="$FILTER" memory $size bitmap-file=$f \
    bitmap-mode=qemu bitmap-control=$PWD/c2.sock 2> err; rc=$?
set -e
[ $rc -ne 0 ] || fail "nbdkit started on a taken socket path"
[ "$(md5sum < $f)" = "$sum" ] || fail "a failed start changed the file"
qemu-img info --output=json $f | grep -q '"in-use"' && fail "a failed start left in_use"
[ ! -e c2.sock ] || fail "a failed start left the control socket"
# The same with a TCP port already in use.
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
open("port", "w").write(str(s.getsockname()[1])); sys.stdout.flush()
time.sleep(30)' &
holder=$!
cleanup_fn "kill $holder 2>/dev/null"
for i in $(seq 300); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || fail "the port holder did not start"
set +e
"$NBDKIT" -i 127.0.0.1 -p "$(cat port)" --filter="$FILTER" memory $size \
    bitmap-file=$f bitmap-mode=qemu bitmap-control=$PWD/c3.sock 2> err; rc=$?
set -e
kill $holder 2>/dev/null || true
[ $rc -ne 0 ] || fail "nbdkit started on a port in use"
[ "$(md5sum < $f)" = "$sum" ] || { cat err; fail "a failed start (port in use) changed the file"; }
[ ! -e c3.sock ] || fail "a failed start (port in use) left the control socket"

# The file is written by the first client, not at start: if it was
# replaced in between, that client is refused and neither file changes;
# a file that appeared at a missing path is never overwritten either.
start_nbdkit pidrp $PWD/srp.sock memory $size bitmap-file=$PWD/rp.qcow2
"$DIRTYBITMAP" create other.qcow2 --size $size --name other
cp other.qcow2 rp.qcow2; sum_other=$(md5sum < rp.qcow2)
nbdsh -u "nbd+unix:///?socket=$PWD/srp.sock" -c pass 2>/dev/null &&
    fail "a client was served after the file was replaced"
[ "$(md5sum < rp.qcow2)" = "$sum_other" ] || fail "the replacement file was changed"
kill_nbdkit "$(cat pidrp)"
[ "$(md5sum < rp.qcow2)" = "$sum_other" ] || fail "the replacement file was changed at stop"
rm -f appeared.qcow2
start_nbdkit pidap $PWD/sap.sock memory $size bitmap-file=$PWD/appeared.qcow2
cp other.qcow2 appeared.qcow2
nbdsh -u "nbd+unix:///?socket=$PWD/sap.sock" -c pass 2>/dev/null &&
    fail "a file that appeared after the start was overwritten"
[ "$(md5sum < appeared.qcow2)" = "$sum_other" ] || fail "the file that appeared was changed"
kill_nbdkit "$(cat pidap)"

# A plugin that cannot write needs no bitmap: the file is not created.
rm -f ro-plugin.qcow2
"$NBDKIT" -U - --filter="$FILTER" eval get_size='echo 1048576' \
    pread='dd if=/dev/zero count=$3 iflag=count_bytes status=none' \
    bitmap-file=$PWD/ro-plugin.qcow2 --run 'nbdsh -u "$uri" -c "h.pread(512, 0)"'
[ ! -e ro-plugin.qcow2 ] || fail "a bitmap file was created for a read-only plugin"

# A read-only server (nbdkit -r) never touches the file, even if killed.
start_nbdkit pidro $PWD/sro.sock -r memory $size bitmap-file=$f bitmap-mode=qemu
nbdsh -u "nbd+unix:///?socket=$PWD/sro.sock" -c '
h.pread(512, 0)
try:
    h.pwrite(b"x", 0)
    raise SystemExit("a write succeeded on a read-only server")
except nbd.Error:
    pass'
kill -9 "$(cat pidro)"; sleep 0.3
[ "$(md5sum < $f)" = "$sum" ] || fail "a read-only server changed the file"

# Repeated quit signals while nbdkit shuts down and unloads the filter
# never crash it (the handler chained onto nbdkit's stays mapped and is
# removed at unload).
for i in $(seq 10); do
    "$NBDKIT" -f -U $PWD/sq$i.sock --filter="$FILTER" memory $size \
        bitmap-file=$PWD/q$i.qcow2 bitmap-mode=qemu &
    p=$!
    cleanup_fn "kill -9 $p 2>/dev/null"
    for (( j=0; j<600; j++ )); do [ -S sq$i.sock ] && break; sleep 0.05; done
    [ -S sq$i.sock ] || fail "round $i: nbdkit did not start"
    nbdsh -u "nbd+unix:///?socket=$PWD/sq$i.sock" -c 'h.pwrite(b"x" * 512, 0)' ||
        fail "round $i: the write failed"
    ( while kill -TERM $p 2>/dev/null; do :; done ) &
    spammer=$!
    set +e; wait $p; rc=$?; set -e
    kill $spammer 2>/dev/null || true; wait $spammer 2>/dev/null || true
    [ $rc -eq 0 ] || fail "round $i: nbdkit exited with status $rc under repeated SIGTERM"
    qemu_check $PWD/q$i.qcow2
    qemu-img info --output=json $PWD/q$i.qcow2 | grep -q '"in-use"' &&
        fail "round $i: in_use left after SIGTERM"
done
qemu_check $f
qemu-img info --output=json $f | grep -q '"in-use"' && fail "in_use after SIGTERM"
[ "$(map_ours $f dirtybitmap)" = "1048576 65536" ] || fail "bits after SIGTERM"

# qemu mode, SIGTERM while an idle client stays connected: nbdkit keeps
# running until the client leaves, but the bitmap is saved and in_use
# cleared at once (so a SIGKILL from a service manager loses nothing).
start_nbdkit pidi $PWD/si.sock memory $size bitmap-file=$f bitmap-mode=qemu
nbdsh -u "nbd+unix:///?socket=$PWD/si.sock" -c '
import time
h.pwrite(b"x" * 10, 3 << 20)
time.sleep(8)' &
client=$!
sleep 1.5
qemu-img info -U --output=json $f | grep -q '"in-use"' || fail "not in_use before SIGTERM"
kill "$(cat pidi)"
for i in $(seq 50); do
    qemu-img info -U --output=json $f | grep -q '"in-use"' || break
    sleep 0.1
done
kill -0 "$(cat pidi)" || fail "nbdkit exited although a client is connected"
qemu-img info -U --output=json $f | grep -q '"in-use"' && fail "idle client: in_use not cleared at SIGTERM"
cp $f idle-copy.qcow2
"$DIRTYBITMAP" map idle-copy.qcow2 dirtybitmap | grep -q "^ *3145728 .*dirty" ||
    fail "idle client: the write before SIGTERM is not saved"
kill -9 "$(cat pidi)"; wait $client 2>/dev/null || true
qemu_check $f
qemu-img info --output=json $f | grep -q '"in-use"' && fail "in_use after SIGKILL following SIGTERM"

# qemu mode: kill -9.
start_nbdkit pid2 $PWD/s2.sock memory $size bitmap-file=$f bitmap-mode=qemu
nbdsh -u "nbd+unix:///?socket=$PWD/s2.sock" -c 'h.pwrite(b"x" * 4096, 2 << 20)'
kill -9 "$(cat pid2)"; sleep 0.5
qemu_check $f
qemu-img info --output=json $f | grep -q '"in-use"' || fail "in_use not kept after kill -9"
set +e
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$f bitmap-mode=qemu \
    bitmap-in-use=refuse --run true 2> err; rc=$?
set -e
[ $rc -ne 0 ] || fail "bitmap-in-use=refuse started"
grep -q "bitmap 'dirtybitmap' is in use or inconsistent" err || { cat err; fail "refuse message"; }
qemu-img info --output=json $f | grep -q '"in-use"' || fail "refusal modified the file"
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$f bitmap-mode=qemu \
    --run 'nbdsh -u "$uri" -c pass' 2> err
grep -q "was in use (unclean shutdown): marked entirely dirty" err || { cat err; fail "policy log line"; }
grep -q "error" err && { cat err; fail "an informational message is labelled error"; }
[ "$(map_ours $f dirtybitmap)" = "0 $size" ] || fail "not entirely dirty after crash"
qemu_check $f

# -s (one connection on stdin/stdout): clean state after the client leaves.
h=$PWD/single.qcow2
nbdsh -c "
h.connect_command(['$NBDKIT', '-s', '--filter=$FILTER', 'memory', '$size',
                   'bitmap-file=$h', 'bitmap-mode=qemu'])
h.pwrite(b'x' * 10, 5 << 20)
h.shutdown()"
for i in $(seq 50); do
    qemu-img info --output=json $h 2>/dev/null | grep -q '"in-use"' || break
    sleep 0.1
done
qemu-img info --output=json $h | grep -q '"in-use"' && fail "-s: in_use after exit"
[ "$(map_ours $h dirtybitmap)" = "5242880 65536" ] || fail "-s: bits"

# crash-safe mode: kill -9 leaves a consistent superset, usable by QEMU.
g=$PWD/cs.qcow2
start_nbdkit pid3 $PWD/s3.sock memory $size bitmap-file=$g
nbdsh -u "nbd+unix:///?socket=$PWD/s3.sock" -c '
h.pwrite(b"x" * 4096, 3 << 20)
h.zero(65536, 40 << 20)'
kill -9 "$(cat pid3)"; sleep 0.5
qemu_check $g
qemu-img info --output=json $g | grep -q '"in-use"' && fail "crash-safe left in_use"
map_qemu $g dirtybitmap > got
/usr/bin/python3 - got <<'PY'
import sys
ext = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
def covered(o, n):
    return any(a <= o and o + n <= a + l for a, l in ext)
assert covered(3 << 20, 4096) and covered(40 << 20, 65536), ext
# bound: at most the two 64 MiB regions touched (the whole 64M disk here)
assert sum(l for a, l in ext) <= 64 << 20, ext
PY
cp $g crashed.qcow2
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$g --run true 2> err
grep -q "the previous run did not shut down cleanly; bitmap 'dirtybitmap' covers every write it forwarded: 67108864 bytes dirty, of which at most 67108864 in regions pre-marked as a precaution" err ||
    { cat err; fail "crash-safe restart did not report the unclean shutdown"; }
qemu_check $g
# A file already in our layout is updated in place at start (same inode);
# one QEMU rewrote is rewritten into it.
ino=$(stat -c %i $g)
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$g --run 'nbdsh -u "$uri" -c pass'
[ "$(stat -c %i $g)" = "$ino" ] || fail "restart rewrote a canonical file"
qemu-img bitmap --add $g extra
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$g --run 'nbdsh -u "$uri" -c pass'
[ "$(stat -c %i $g)" != "$ino" ] || fail "a QEMU-rewritten file was not rewritten"
qemu_check $g
"$DIRTYBITMAP" remove $g extra
# Several bitmaps, one crash: one line says it all, naming each.
m=$PWD/multi.qcow2
"$DIRTYBITMAP" create $m --size $size
"$DIRTYBITMAP" add $m second
start_nbdkit pid5 $PWD/s5.sock memory $size bitmap-file=$m
nbdsh -u "nbd+unix:///?socket=$PWD/s5.sock" -c 'h.pwrite(b"x" * 4096, 0)'
kill -9 "$(cat pid5)"; sleep 0.5
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$m --run true 2> err
[ "$(grep -c 'did not shut down cleanly' err)" = 1 ] ||
    { cat err; fail "the restart report is not one line"; }
grep -q "cleanly; bitmap 'dirtybitmap' covers every write it forwarded: [0-9]* bytes dirty, of which at most [0-9]* in regions pre-marked as a precaution; bitmap 'second' covers every write" err ||
    { cat err; fail "the restart report does not name each bitmap"; }
# After a clean shutdown there is nothing to report.
"$NBDKIT" --filter="$FILTER" memory $size bitmap-file=$g --run true 2> err
grep -q "did not shut down cleanly" err && fail "clean shutdown reported as unclean"

# Offline recovery without nbdkit, for both kinds of crash.
D=$DIRTYBITMAP
$D recover crashed.qcow2 > out
grep -q "covers every write it forwarded" out || { cat out; fail "recover: crash-safe report"; }
$D recover crashed.qcow2 | grep -q "nothing to recover" || fail "recover twice"
start_nbdkit pid4 $PWD/s4.sock memory $size bitmap-file=$PWD/q.qcow2 bitmap-mode=qemu
nbdsh -u "nbd+unix:///?socket=$PWD/s4.sock" -c 'h.pwrite(b"x", 0)'
kill -9 "$(cat pid4)"; sleep 0.5
$D recover q.qcow2 > out
grep -q "bitmap 'dirtybitmap' was in use (unclean shutdown): marked entirely dirty" out ||
    { cat out; fail "recover: in-use bitmap"; }
qemu_check q.qcow2
qemu-img info --output=json q.qcow2 | grep -q '"in-use"' && fail "recover left in_use"
map_qemu $PWD/q.qcow2 dirtybitmap > got
[ "$(cat got)" = "0 $size" ] || { cat got; fail "recovered bitmap not entirely dirty"; }
echo OK
