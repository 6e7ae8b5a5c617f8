#!/usr/bin/env bash
# Point-in-time snapshots when things go wrong (client side in
# tests/snapshot_faults.py), in both modes where the mode matters:
#  (a) the store fails mid-backup: ENOSPC from every write on (the
#      LD_PRELOAD shim of tests/faultinject.c watching the store opened
#      with open(DIR, O_TMPFILE)), one EIO, bitmap-snapshot-max reached,
#      and (where root may mount) a 1M tmpfs really full; the creation of
#      the store failing refuses the checkpoint.  Client writes all
#      succeed, the snapshot is broken with a reason, its readers get EIO,
#      the file passes qemu-img check and its bitmaps cover every write;
#  (b) kill -9 of nbdkit during a backup read: no file left in the bitmap
#      or snapshot directory, every acknowledged write covered after the
#      restart, which says snapshots were live (and only that once);
#  (c) release with a reader connected: its reads fail with EIO, the
#      export is unlisted and refused, the store's space is given back;
#  (d) the export grows (file plugin): the snapshot keeps its size and
#      contents;
#  (e) bad control commands and parameters are refused, naming the
#      problem, and change nothing;
#  (f) bitmap-snapshot-granularity: 4K copies 4K; its range is 4K..64M.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires "$PYTHON" -c 'import nbd'
requires qemu-img --version
requires cc --version
# timeout: hang guards only.
F="timeout 300 $PYTHON $srcdir/snapshot_faults.py"
N="timeout 300 $NBDKIT"
cc -shared -fPIC -O1 -o libfi.so "$srcdir/faultinject.c" -ldl
n=0


# Independent checks that fail are reported at the end, so that one does
# not hide the next.
failed=()
soft_fail () { echo "FAIL (reported at the end): $*" >&2; failed+=("$*"); }

# fresh: empty bitmap and store directories, a new socket name.
fresh () {
    rm -rf bm store; mkdir bm store
    n=$((n + 1)); sock=$PWD/sock.$n; ctl=$PWD/ctl.$n
}

# finish WHAT: stop the server (a clean exit), check the file and that its
# bitmaps cover every write logged in log.json; nothing may be left in the
# directories.
finish () {
    local st=0
    stop_server "$SERVER_PID" || st=$?
    [ $st = 0 ] || { cat nbdkit.$n.log; fail "$1: nbdkit exit status $st"; }
    qemu_check bm/b.qcow2
    $F cover log.json "$PWD/bm/b.qcow2" || fail "$1: bitmaps"
    [ "$(ls -A bm)" = b.qcow2 ] || fail "$1: left in the bitmap dir: $(ls -A bm)"
    [ -z "$(ls -A store)" ] || fail "$1: left in the store dir: $(ls -A store)"
}

# (a) The store fails.  The shim counts the store's open (call 1), then
# each write to it.  A store that cannot be created is refused the same in
# both modes: tried in one.
for mode in crash-safe qemu; do
    cases=("4 ENOSPC 1 full" "3 EIO 0 eio")
    [ $mode = crash-safe ] && cases+=("1 ENOSPC 0 open")
    for f in "${cases[@]}"; do
        set -- $f
        fresh
        store=$(realpath store)
        LD_PRELOAD=$PWD/libfi.so FAULT_PREFIX=$store FAULT_N=$1 \
            FAULT_ERRNO=$2 FAULT_STICKY=$3 \
            serve_fg nbdkit.$n.log "$sock" memory 64M \
            bitmap-file=$PWD/bm/b.qcow2 bitmap-control=$ctl \
            bitmap-mode=$mode bitmap-snapshot-dir=$store
        case $4 in
        open) $F broken "$sock" "$ctl" log.json \
                  "bitmap-snapshot-dir: $store: cannot create the snapshot store: No space left on device" \
                  --open-fails ;;
        full) $F broken "$sock" "$ctl" log.json \
                  "writing to the store in $store failed: No space left on device" ;;
        eio)  $F broken "$sock" "$ctl" log.json \
                  "writing to the store in $store failed: Input/output error" ;;
        esac || fail "$mode: store fault $f"
        finish "$mode: store fault $f"
    done
    fresh
    serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-control=$ctl bitmap-mode=$mode bitmap-snapshot-max=256K
    $F broken "$sock" "$ctl" log.json \
        "bitmap-snapshot-max \\(262144 bytes\\) reached" ||
        fail "$mode: bitmap-snapshot-max"
    finish "$mode: bitmap-snapshot-max"
done

# (a) A really full file system, where root may mount a tmpfs (not
# everywhere: the cases above cover a full store without it).
mkdir tiny
if mount -t tmpfs -o size=1M tmpfs tiny 2>/dev/null; then
    cleanup_fn "umount '$PWD/tiny' 2>/dev/null"
    fresh
    serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-control=$ctl bitmap-snapshot-dir=$PWD/tiny
    $F broken "$sock" "$ctl" log.json \
        "writing to the store in $PWD/tiny failed: No space left on device" ||
        fail "full tmpfs"
    finish "full tmpfs"
    [ -z "$(ls -A tiny)" ] || fail "full tmpfs: left: $(ls -A tiny)"
    umount tiny
else
    echo "tmpfs mount not permitted: the full-filesystem case is not run"
fi

# (b) kill -9 mid-backup; the store in the bitmap file's directory
# (the default) in one mode, in its own directory in the other.
for mode in crash-safe qemu; do
    fresh
    sd=(); [ $mode = qemu ] && sd=(bitmap-snapshot-dir=$PWD/store)
    serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-control=$ctl bitmap-mode=$mode "${sd[@]}"
    pid=$SERVER_PID
    $F killrun "$sock" "$ctl" log.json $pid || fail "$mode: kill -9 run"
    st=0; wait $pid || st=$?
    [ $st = 137 ] || fail "$mode: nbdkit $pid: exit status $st, not SIGKILL's"
    [ "$(ls -A bm)" = b.qcow2 ] || fail "$mode: after kill -9, left in the bitmap dir: $(ls -A bm)"
    [ -z "$(ls -A store)" ] || fail "$mode: after kill -9, left in the store dir: $(ls -A store)"
    qemu_check bm/b.qcow2
    # Crash-safe: the file as the crash left it covers every write
    # acknowledged.  QEMU mode: the recording bitmap is in_use (unknown)
    # until the next start settles it.
    if [ $mode = crash-safe ]; then
        $F cover log.json "$PWD/bm/b.qcow2" || fail "$mode: kill -9: bitmaps as left"
    fi
    # The next start (foreground, --run) says what was lost; a writer
    # settles the bitmaps.
    $N -U - --filter="$FILTER" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-mode=$mode "${sd[@]}" --run 'nbdsh -u "$uri" -c pass' \
        2> restart.log || { cat restart.log; fail "$mode: restart"; }
    grep -q "snapshots were live when the previous run stopped uncleanly" \
        restart.log || { cat restart.log; fail "$mode: restart after kill -9 did not say snapshots were live"; }
    qemu_check bm/b.qcow2
    $F cover log.json "$PWD/bm/b.qcow2" || fail "$mode: kill -9: bitmaps"
    [ "$(ls -A bm)" = b.qcow2 ] || fail "$mode: after restart, left in the bitmap dir: $(ls -A bm)"
    [ -z "$(ls -A store)" ] || fail "$mode: after restart, left in the store dir: $(ls -A store)"
    # Said once: the clean run in between cleared it.
    $N -U - --filter="$FILTER" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-mode=$mode --run 'nbdsh -u "$uri" -c pass' 2> restart2.log ||
        fail "$mode: second restart"
    ! grep -q "snapshots were live" restart2.log ||
        fail "$mode: a start after a clean run says snapshots were live"
done

# (c) Release with a reader connected.
fresh
serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
    bitmap-control=$ctl bitmap-snapshot-dir=$PWD/store
$F release "$sock" "$ctl" log.json $SERVER_PID "$(realpath store)" ||
    fail "release with a reader"
finish "release with a reader"

# (d) The export grows under a snapshot.
fresh
rm -f disk.img; truncate -s 16M disk.img
serve_fg nbdkit.$n.log "$sock" file "$PWD/disk.img" bitmap-file=$PWD/bm/b.qcow2 \
    bitmap-control=$ctl
$F grow "$sock" "$ctl" log.json "$PWD/disk.img" || fail "growth"
finish "growth"

# (e) Bad input.
fresh
serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
    bitmap-control=$ctl
$F badinput "$sock" "$ctl" $SERVER_PID || soft_fail "bad control commands"
st=0; stop_server $SERVER_PID || st=$?
[ $st = 0 ] || { cat nbdkit.$n.log; fail "bad input: nbdkit exit status $st"; }
qemu_check bm/b.qcow2

# (f) bitmap-snapshot-granularity: a power of two from 4K to 64M.
ok4k=false
for g in 4K 64K 64M; do
    fresh
    if $N -U - --filter="$FILTER" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-snapshot-granularity=$g --run 'nbdsh -u "$uri" -c pass' 2> err
    then
        [ $g = 4K ] && ok4k=true
    else
        soft_fail "bitmap-snapshot-granularity=$g refused: $(cat err)"
    fi
done
if $ok4k; then
    fresh
    serve_fg nbdkit.$n.log "$sock" memory 64M bitmap-file=$PWD/bm/b.qcow2 \
        bitmap-control=$ctl bitmap-snapshot-granularity=4K
    $F granularity "$sock" "$ctl" log.json 4096 || fail "4K snapshot granularity"
    finish "4K snapshot granularity"
fi
# Refused at start, the error naming the parameter or its value, and no
# file created.
while IFS='|' read -r p re; do
    fresh
    if $N -U - --filter="$FILTER" memory 1M bitmap-file=$PWD/bm/b.qcow2 \
        "$p" --run 'nbdsh -u "$uri" -c pass' 2> err; then
        soft_fail "accepted $p"
        continue
    fi
    grep -qE -- "$re" err || soft_fail "$p: the error does not name it: $(cat err)"
    [ -z "$(ls -A bm)" ] || fail "$p: a refused start created $(ls -A bm)"
done <<EOF
bitmap-snapshot-granularity=3000|bitmap-snapshot-granularity: .*3000
bitmap-snapshot-granularity=2K|bitmap-snapshot-granularity: .*2048
bitmap-snapshot-granularity=16|bitmap-snapshot-granularity: .*16
bitmap-snapshot-granularity=128M|bitmap-snapshot-granularity: .*134217728
bitmap-snapshot-max=lots|lots
bitmap-snapshot-dir=$PWD/nosuchdir|nosuchdir
bitmap-snapshot-dir=|bitmap-snapshot-dir: must not be empty
EOF
[ ${#failed[@]} = 0 ] || fail "$(printf '%s; ' "${failed[@]}")"
echo OK
