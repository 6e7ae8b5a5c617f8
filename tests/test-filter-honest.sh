#!/usr/bin/env bash
# Proves the filter never claims what it cannot keep: flush is advertised
# exactly when the plugin can flush; a bitmap file deleted, replaced,
# truncated or overwritten while nbdkit runs makes the next flush fail
# with EIO and a clear error (in both modes), the bits stay in memory and
# 'persist' (or the clean shutdown) writes them back; a final save that
# fails is a non-zero exit with a line naming the file, the bitmap and the
# consequence; a size-0 export is served without a bitmap; a very large
# export gets a coarser granularity (with a note), and one no qcow2 file
# can describe is served read-only.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires /usr/bin/python3 -c 'import nbd'
requires qemu-img --version
requires nbdinfo --version
D=$DIRTYBITMAP
size=$((64 << 20))

# Flush: the plugin's answer, with and without the filter.
can_flush () {  # can_flush [FILTER-OPTION] PLUGIN ARGS... (filter keys last)
    "$NBDKIT" -U - "$@" --run 'nbdinfo --json "$uri"' |
        json_get 'j["exports"][0]["can_flush"]'
}
noflush=(eval get_size='echo 1048576' pwrite='cat > /dev/null'
         pread='dd if=/dev/zero count=$3 iflag=count_bytes status=none')
[ "$(can_flush "${noflush[@]}")" = false ] || fail "test assumption: eval without flush can flush"
[ "$(can_flush --filter="$FILTER" "${noflush[@]}" bitmap-file=$PWD/nf.qcow2)" = false ] ||
    fail "flush advertised although the plugin cannot flush"
[ "$(can_flush --filter="$FILTER" memory 1M bitmap-file=$PWD/f.qcow2)" = true ] ||
    fail "flush not advertised although the plugin can flush"

# The file changed behind nbdkit's back.
damage () {  # damage HOW FILE
    case $1 in
    unlink)   rm -f "$2" ;;
    replace)  cp "$2" "$2.new"; mv "$2.new" "$2" ;;
    truncate) truncate -s 65536 "$2" ;;
    header)   printf 'XXXX' | dd of="$2" bs=1 seek=0 conv=notrunc status=none ;;
    esac
}
message () {
    case $1 in
    unlink) echo "was deleted while nbdkit was using it" ;;
    replace) echo "was replaced by another file" ;;
    truncate) echo "was truncated or extended" ;;
    header) echo "header was overwritten" ;;
    esac
}
for mode in crash-safe qemu; do
    for how in unlink replace truncate header; do
        f=$PWD/$mode-$how.qcow2
        rm -f $f
        # In the foreground, to read its messages.
        "$NBDKIT" -f -U $PWD/sock.$mode.$how --filter="$FILTER" memory $size \
            bitmap-file=$f bitmap-mode=$mode bitmap-control=$PWD/ctl.$mode.$how \
            2> log.$mode.$how &
        p=$!
        cleanup_fn "kill -9 $p 2>/dev/null"
        for i in $(seq 600); do [ -S ctl.$mode.$how ] && break; sleep 0.05; done
        [ -S ctl.$mode.$how ] || fail "$mode/$how: nbdkit did not start"
        uri="nbd+unix:///?socket=$PWD/sock.$mode.$how"
        nbdsh -u "$uri" -c 'h.pwrite(b"a" * 512, 1 << 20); h.flush()'
        damage $how $f
        nbdsh -u "$uri" -c '
import errno
h.pwrite(b"b" * 512, 5 << 20)
try:
    h.flush()
    raise SystemExit("flush succeeded on a damaged bitmap file")
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
' || fail "$mode/$how: flush after damage"
        grep -q "$f: the bitmap file.*$(message $how)" log.$mode.$how ||
            { cat log.$mode.$how; fail "$mode/$how: no error saying what happened"; }
        # The bits are kept; 'persist' writes the file again from memory.
        $D persist ctl.$mode.$how > out || { cat out; fail "$mode/$how: persist did not repair"; }
        nbdsh -u "$uri" -c 'h.pwrite(b"c" * 512, 9 << 20); h.flush()' ||
            fail "$mode/$how: flush after repair"
        kill $p; wait $p || fail "$mode/$how: exit status $? after the repair"
        qemu_check $f
        map_ours $f dirtybitmap > got
        for off in $((1 << 20)) $((5 << 20)) $((9 << 20)); do
            covers got $off 512 || { cat got; fail "$mode/$how: write at $off lost"; }
        done
    done
done

# The clean shutdown rewrites a deleted file too, so nothing is lost.
f=$PWD/gone.qcow2
start_nbdkit pid.g sock.g memory $size bitmap-file=$f
nbdsh -u "nbd+unix:///?socket=$PWD/sock.g" -c 'h.pwrite(b"a" * 512, 7 << 20)'
rm $f
kill_nbdkit "$(cat pid.g)"
[ -f $f ] || fail "a deleted file was not written again at shutdown"
map_ours $f dirtybitmap > got
covers got $((7 << 20)) 512 || fail "deleted file: the write was lost"

# A failed final save: exit status 1 and one line saying what it means.
mkdir full
if mount -t tmpfs -o size=1m tmpfs full 2>/dev/null; then
    cleanup_fn "umount '$PWD/full'"
    for mode in qemu crash-safe; do
        rm -f full/*
        "$NBDKIT" -f -U $PWD/sock.full.$mode --filter="$FILTER" memory 4G \
            bitmap-file=$PWD/full/bm.qcow2 bitmap-granularity=4K \
            bitmap-mode=$mode bitmap-persist-interval=86400 2> err.$mode &
        p=$!
        cleanup_fn "kill -9 $p 2>/dev/null"
        for i in $(seq 600); do [ -S sock.full.$mode ] && break; sleep 0.05; done
        [ -S sock.full.$mode ] || fail "$mode: nbdkit did not start (full fs)"
        # Writes scattered over many bitmap pages, then a full filesystem.
        nbdsh -u "nbd+unix:///?socket=$PWD/sock.full.$mode" -c '
for i in range(200):
    try:
        h.pwrite(b"x" * 4096, i * (16 << 20))
    except nbd.Error:
        pass'
        dd if=/dev/zero of=full/filler bs=4k 2>/dev/null || true
        # crash-safe: a final persist has regions to write exact.
        kill $p
        set +e; wait $p; rc=$?; set -e
        rm -f full/filler
        if [ $mode = qemu ]; then
            [ $rc -eq 1 ] || { cat err.$mode; fail "qemu: failed final save exited $rc"; }
            grep -q "the final save of $PWD/full/bm.qcow2 failed: bitmap 'dirtybitmap' is left in_use, so the next start marks it entirely dirty" err.$mode ||
                { cat err.$mode; fail "qemu: final save message"; }
        else
            # Crash-safe: the file covers every write anyway; a failed
            # final shrink is still reported, and is exit status 1.
            if grep -q "the final save" err.$mode; then
                [ $rc -eq 1 ] || fail "crash-safe: failed final save exited $rc"
                grep -q "still covers every write (crash-safe)" err.$mode ||
                    { cat err.$mode; fail "crash-safe: final save message"; }
            else
                [ $rc -eq 0 ] || { cat err.$mode; fail "crash-safe: exit $rc"; }
            fi
        fi
        qemu_check full/bm.qcow2
    done
else
    [ "${CI:-}" = true ] && fail "cannot mount a tmpfs for the full-filesystem case"
    echo "tmpfs mount not permitted: final-save case not run"
fi

# Very large exports: a bitmap the filter creates gets the finest
# granularity that fits (with a note) and a cluster size whose L1 can
# describe the disk; a write at the very end is recorded and QEMU reads
# it.  Beyond what any qcow2 file can describe (2 EiB), the export is
# served read-only, with an error saying why.
for sz in $((1 << 50)) $((1 << 61)); do
    rm -f large.qcow2
    "$NBDKIT" -U - --filter="$FILTER" memory $sz bitmap-file=$PWD/large.qcow2 \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, h.get_size() - 512); h.flush()"' 2> err ||
        { cat err; fail "$sz: not served"; }
    grep -q "the default granularity 65536 is too fine for a $sz-byte export" err ||
        { cat err; fail "$sz: no note about the granularity"; }
    qemu_check large.qcow2
    g=$(qemu-img info --output=json large.qcow2 |
        json_get 'j["format-specific"]["data"]["bitmaps"][0]["granularity"]')
    # (QEMU's own view, qemu-nbd -B + nbdinfo --map, takes minutes over
    # 2^32 bits; qemu-img check and info above vouch for QEMU's reading.)
    [ "$(map_ours large.qcow2 dirtybitmap)" = "$((sz - g)) $g" ] ||
        fail "$sz: the write at the end is not in the bitmap"
done
rm -f large.qcow2
"$NBDKIT" -U - --filter="$FILTER" memory 9223372036854775807 \
    bitmap-file=$PWD/large.qcow2 --run 'nbdsh -u "$uri" -c "
assert h.get_size() == 9223372036854775807
assert h.is_read_only()
assert h.pread(512, 9223372036854775807 - 512) == bytearray(512)
"' 2> err || { cat err; fail "2^63-1: not served read-only"; }
grep -q "larger than any qcow2 file can describe" err && grep -q "served read-only" err ||
    { cat err; fail "2^63-1: no error saying why"; }
[ ! -e large.qcow2 ] || fail "2^63-1: a file was created"
# A chosen granularity that is too fine is refused, not changed.
"$NBDKIT" -U - --filter="$FILTER" memory $((1 << 50)) bitmap-granularity=64K \
    bitmap-file=$PWD/fine.qcow2 --run 'nbdsh -u "$uri" -c pass' 2> err &&
    fail "a too-fine chosen granularity was accepted"
grep -q "granularity 65536 is too fine" err || { cat err; fail "too-fine message"; }

# Exports smaller than a sector are tracked in one 512-byte sector.
for sz in 1 32 511; do
    rm -f tiny.qcow2
    "$NBDKIT" -U - --filter="$FILTER" memory $sz bitmap-file=$PWD/tiny.qcow2 \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\", h.get_size() - 1)"' 2> err ||
        { cat err; fail "size $sz: not served"; }
    [ "$(map_ours tiny.qcow2 dirtybitmap)" = "0 512" ] || fail "size $sz: map"
done

# A temporary left by a creation killed before its rename is removed when
# the file is created.
echo junk > new.qcow2.tmpXyZ789
"$NBDKIT" -U - --filter="$FILTER" memory 1M bitmap-file=$PWD/new.qcow2 \
    --run 'nbdsh -u "$uri" -c pass' 2> err
[ -f new.qcow2 ] && [ ! -e new.qcow2.tmpXyZ789 ] ||
    { cat err; fail "a stale temporary of a creation was not removed"; }

# The periodic persist keeps its promise: every bitmap-persist-interval
# seconds, pre-marked (all-ones) regions shrink to their exact bits, even
# for regions first written while a persist ran.  Writes go on for 3 s
# (3 persists), then stop; a few intervals later the file holds exactly
# the granules written, read while nbdkit still runs.  (A region touched in the last interval stays armed at the
# next persist and must still shrink at the one after, although no bit
# flips in between.)
start_nbdkit pid.p sock.p memory $size bitmap-file=$PWD/shrink.qcow2 \
    bitmap-region=1M bitmap-persist-interval=1
/usr/bin/python3 - "nbd+unix:///?socket=$PWD/sock.p" written <<'PY'
import random, sys, time
import nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
rng = random.Random(7)
size = h.get_size()
done = set()
end = time.time() + 3
while time.time() < end:
    off = rng.randrange(0, size // 65536) * 65536
    h.pwrite(b"w" * 512, off)
    done.add(off)
    time.sleep(0.002)
h.shutdown()
open(sys.argv[2], "w").write("".join("%d\n" % o for o in sorted(done)))
PY
# Two intervals suffice on an idle machine; poll up to 15 s (loaded CI).
exact=no
for i in $(seq 30); do
    sleep 0.5
    "$DIRTYBITMAP" map shrink.qcow2 dirtybitmap --json > shrink.json
    if /usr/bin/python3 - shrink.json written <<'PY'
import json, sys
ext = json.load(open(sys.argv[1]))
dirty = set()
for e in ext:
    if e["dirty"]:
        dirty.update(range(e["offset"], e["offset"] + e["length"], 65536))
written = {int(l) for l in open(sys.argv[2])}
if written - dirty:
    print("written granules missing: %d" % len(written - dirty))
    sys.exit(2)
sys.exit(0 if dirty == written else 1)
PY
    then exact=yes; break
    elif [ $? -eq 2 ]; then fail "a written granule is missing from the file"
    fi
done
[ $exact = yes ] || fail "periodic persist left pre-marked regions after 15 s"
kill_nbdkit "$(cat pid.p)"

# Size 0: served, nothing to track, no file.
for plugin in "null 0" "memory 0"; do
    rm -f zero.qcow2
    "$NBDKIT" -U - --filter="$FILTER" $plugin bitmap-file=$PWD/zero.qcow2 \
        --run 'nbdinfo --size "$uri"' > out || fail "$plugin: not served"
    [ "$(cat out)" = 0 ] || fail "$plugin: size $(cat out)"
    [ ! -e zero.qcow2 ] || fail "$plugin: a bitmap file was created for an empty export"
done
echo OK
