#!/usr/bin/env bash
# Proves every bad parameter gives a clear one-line error naming the key,
# a non-zero exit, and leaves the user's file untouched; and that an export
# whose size differs from the file's is refused with both sizes named.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires nbdsh -c 'exit(0)'
D=$DIRTYBITMAP

$D create good.qcow2 --size 1G
sum=$(md5sum < good.qcow2)

# bad_param EXPECTED ARGS...: nbdkit must fail with EXPECTED on stderr.
bad_param () {
    local expect=$1; shift
    set +e
    "$NBDKIT" --filter="$FILTER" memory 1G "$@" --run true > out 2>&1
    local rc=$?
    set -e
    [ $rc -ne 0 ] || fail "started with: $*"
    grep -qF -- "$expect" out || { cat out; fail "message for '$*' lacks '$expect'"; }
}

bad_param "the bitmap-file parameter is required"
bad_param "bitmap-file: must not be empty" bitmap-file=
bad_param "bitmap-control: must not be empty" bitmap-file=$PWD/c.qcow2 bitmap-control=
long=$PWD/$(printf 'x%.0s' $(seq 1 110))
bad_param "bitmap-control: $long: path longer than 107 bytes" \
    bitmap-file=$PWD/c.qcow2 bitmap-control=$long
bad_param "bitmap-granularity: 3000 is not a power of two" \
    bitmap-file=$PWD/good.qcow2 bitmap-granularity=3000
bad_param "bitmap-granularity: 256 is outside 512..2147483648" \
    bitmap-file=$PWD/good.qcow2 bitmap-granularity=256
bad_param "bitmap-granularity: 4294967296 is outside" \
    bitmap-file=$PWD/good.qcow2 bitmap-granularity=4G
bad_param "bitmap-granularity: '64Q' has an unknown unit" \
    bitmap-file=$PWD/good.qcow2 bitmap-granularity=64Q
bad_param "bitmap-granularity: empty size" \
    bitmap-file=$PWD/good.qcow2 bitmap-granularity=
bad_param "bitmap-name: a bitmap name must be 1 to 1023 bytes, got 0" \
    bitmap-file=$PWD/good.qcow2 bitmap-name=
bad_param "bitmap-name: a bitmap name must be 1 to 1023 bytes, got 1024" \
    bitmap-file=$PWD/good.qcow2 bitmap-name=$(printf 'n%.0s' $(seq 1024))
bad_param "bitmap-name: the bitmap name has a blank or control character at offset 1" \
    bitmap-file=$PWD/good.qcow2 "bitmap-name=a b"
bad_param "bitmap-name: the bitmap name has a blank or control character at offset 2" \
    bitmap-file=$PWD/good.qcow2 bitmap-name=$'ab\x1b[31m'
bad_param "bitmap-name: the bitmap name is not valid UTF-8 (byte 0xff at offset 1)" \
    bitmap-file=$PWD/good.qcow2 bitmap-name=$'a\xff'
bad_param "bitmap-mode: 'fast' is not crash-safe or qemu" \
    bitmap-file=$PWD/good.qcow2 bitmap-mode=fast
bad_param "bitmap-format: 'qcow3' is not qemu or draft-2015" \
    bitmap-file=$PWD/good.qcow2 bitmap-format=qcow3
bad_param "bitmap-in-use: 'maybe' is not dirty or refuse" \
    bitmap-file=$PWD/good.qcow2 bitmap-in-use=maybe
bad_param "bitmap-region: 1000 is outside" \
    bitmap-file=$PWD/good.qcow2 bitmap-region=1000
bad_param "bitmap-persist-interval: 'soon' is not a number of seconds" \
    bitmap-file=$PWD/good.qcow2 bitmap-persist-interval=soon
mkdir adir
bad_param "adir: is a directory, not a bitmap file" bitmap-file=$PWD/adir
bad_param "nodir/x.qcow2: cannot create the file: No such file or directory" \
    bitmap-file=$PWD/nodir/x.qcow2
echo "not qcow2 at all, just text, long enough for a header........................................................" > text.qcow2
bad_param "not a qcow2 file" bitmap-file=$PWD/text.qcow2
ln -s $PWD/nowhere dangling.qcow2
bad_param "dangling.qcow2: symbolic link to a missing file" \
    bitmap-file=$PWD/dangling.qcow2
[ -L dangling.qcow2 ] || fail "the dangling symlink was replaced"
# A disk too big for the requested granularity (more than 512 MiB of bitmap).
set +e
"$NBDKIT" -U - --filter="$FILTER" memory 4T bitmap-file=$PWD/fresh.qcow2 \
    bitmap-granularity=512 --run 'nbdsh -u "$uri" -c pass' > out 2>&1; rc=$?
set -e
[ $rc -ne 0 ] && grep -q "granularity 512 is too fine" out || { cat out; fail "too fine"; }
[ ! -e fresh.qcow2 ] || fail "a failed start created the file"
[ "$(md5sum < good.qcow2)" = "$sum" ] || fail "a failed start modified good.qcow2"
# A read-only filesystem: refused at start, file untouched.
mkdir ro
if mount -t tmpfs -o size=4m tmpfs ro 2>/dev/null; then
    cleanup_fn "umount '$PWD/ro'"
    cp good.qcow2 ro/
    mount -o remount,ro ro
    bad_param "ro/good.qcow2: open: Read-only file system" bitmap-file=$PWD/ro/good.qcow2
    [ "$(md5sum < ro/good.qcow2)" = "$sum" ] || fail "read-only case modified the file"
else
    [ "${CI:-}" = true ] && fail "cannot mount a tmpfs for the read-only case"
    echo "tmpfs mount not permitted: read-only case not run"
fi
# A symlink to a valid file: the link survives, the target is updated.
ln -s $PWD/good.qcow2 link.qcow2
"$NBDKIT" --filter="$FILTER" memory 1G bitmap-file=$PWD/link.qcow2 --run true
[ -L link.qcow2 ] || fail "the symlink was replaced by a file"
sum=$(md5sum < good.qcow2)
"$NBDKIT" -U - --filter="$FILTER" memory 1G bitmap-file=$PWD/link.qcow2 \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"s\" * 512, 1 << 20)"'
[ -L link.qcow2 ] || fail "the symlink was replaced by a file"
[ "$(readlink link.qcow2)" = "$PWD/good.qcow2" ] || fail "the symlink was retargeted"
[ "$(md5sum < good.qcow2)" != "$sum" ] || fail "the target was not updated through the symlink"
covers <(map_ours good.qcow2 dirtybitmap) $((1 << 20)) 512 ||
    fail "the write through the symlink is not in the target's bitmap"
$D check good.qcow2 >/dev/null || fail "the target is not valid after the writes"

# A corrupt file: refused with the library's message, file untouched.
$D create corrupt.qcow2 --size 1G
printf '\2' | dd of=corrupt.qcow2 bs=1 seek=$((0x20000 + 16)) conv=notrunc status=none
sum2=$(md5sum < corrupt.qcow2)
bad_param "must be 1 (dirty tracking)" bitmap-file=$PWD/corrupt.qcow2
[ "$(md5sum < corrupt.qcow2)" = "$sum2" ] || fail "failed start modified the corrupt file"

# A smaller export (shrinking): refused per connection, both sizes named,
# file intact.  (A larger one grows the file: tests/test-filter-grow.sh.)
sum3=$(md5sum < good.qcow2)
set +e
"$NBDKIT" -U - --filter="$FILTER" memory 512M bitmap-file=$PWD/good.qcow2 \
    --run 'nbdsh -u "$uri" -c "pass"' > out 2>&1
set -e
grep -q "export size 536870912 (rounded up to 536870912) is smaller than the size 1073741824 of bitmap 'dirtybitmap' in the file: shrinking is not supported" out ||
    { cat out; fail "size mismatch message"; }
[ "$(md5sum < good.qcow2)" = "$sum3" ] || fail "refused shrink modified the file"
$D check good.qcow2 >/dev/null

# A bitmap-name absent from an existing file is added; others are kept.
"$NBDKIT" -U - --filter="$FILTER" memory 1G bitmap-file=$PWD/good.qcow2 \
    bitmap-name=second bitmap-granularity=1M \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"z\", 0)"'
$D info good.qcow2 | grep -q "second: granularity 1048576, flags auto" || fail "bitmap-name not added"
$D info good.qcow2 | grep -q "dirtybitmap: granularity 65536" || fail "existing bitmap lost"
echo OK
