#!/usr/bin/env bash
# Proves the filter loads in the nbdkit it was built for, shows its
# parameters in --help, exports its debug flag, and that --help and
# --dump-plugin never touch the bitmap file.
source "$srcdir/functions.sh"

v=$("$NBDKIT" --version | awk '{print $2}')
[ "$v" = "$BUILT_NBDKIT_VERSION" ] ||
    fail "nbdkit is $v but the filter was built against $BUILT_NBDKIT_VERSION"

"$NBDKIT" --filter="$FILTER" null --help > help.out
for k in bitmap-file bitmap-name bitmap-granularity bitmap-mode bitmap-format bitmap-in-use \
         bitmap-region bitmap-persist-interval; do
    grep -q "$k=" help.out || fail "--help does not show $k"
done

"$NBDKIT" --filter="$FILTER" null bitmap-file=$PWD/x.qcow2 --dump-plugin >/dev/null
[ ! -e x.qcow2 ] || fail "--dump-plugin created the bitmap file"

"$NBDKIT" -D dirtybitmap.verbose=1 --filter="$FILTER" null 1M \
    bitmap-file=$PWD/y.qcow2 --run true 2> dbg.err
if grep -q "does not contain a global variable" dbg.err; then
    fail "debug flag dirtybitmap.verbose is not exported"
fi
echo OK
