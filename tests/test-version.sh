#!/usr/bin/env bash
# Proves the filter loads in the nbdkit it was built for, shows its
# parameters in --help, exports its debug flag, and that --help and
# --dump-plugin never touch the bitmap file.
source "$srcdir/functions.sh"

# Same-version guard: the nbdkit the tests run (the one on PATH), the
# nbdkit the filter was configured against, and the version compiled into
# the filter (nbdkit prints it for each loaded filter) must all agree.
v=$("$NBDKIT" --version | awk '$1 == "nbdkit" { print $2 }')
[ -n "$v" ] || fail "cannot read the version of $NBDKIT"
[ "$v" = "$BUILT_NBDKIT_VERSION" ] ||
    fail "nbdkit is $v but the filter was built against $BUILT_NBDKIT_VERSION"
vpath=$(nbdkit --version | awk '$1 == "nbdkit" { print $2 }')
[ "$vpath" = "$v" ] || fail "nbdkit on PATH is $vpath, $NBDKIT is $v"
fv=$("$NBDKIT" --filter="$FILTER" null --version | awk '$1 == "dirtybitmap" { print $2 }')
[ "$fv" = "$v" ] || fail "the filter reports nbdkit version '$fv', nbdkit is $v"

"$NBDKIT" --filter="$FILTER" null --help > help.out
for k in bitmap-file bitmap-name bitmap-granularity bitmap-mode bitmap-format bitmap-in-use \
         bitmap-region bitmap-persist-interval; do
    grep -q "$k=" help.out || fail "--help does not show $k"
done

"$NBDKIT" --filter="$FILTER" null bitmap-file=$PWD/x.qcow2 --dump-plugin >/dev/null
[ ! -e x.qcow2 ] || fail "--dump-plugin created the bitmap file"

# The debug flag is exported if setting it turns on the filter's own
# verbose message (our text, not nbdkit's), which is absent without it.
opened="dirtybitmap: $PWD/y.qcow2 opened, "
"$NBDKIT" -v --filter="$FILTER" null 1M \
    bitmap-file=$PWD/y.qcow2 --run true 2> dbg0.err
! grep -qF "$opened" dbg0.err || fail "verbose message without -D dirtybitmap.verbose=1"
"$NBDKIT" -v -D dirtybitmap.verbose=1 --filter="$FILTER" null 1M \
    bitmap-file=$PWD/y.qcow2 --run true 2> dbg.err
grep -qF "$opened" dbg.err ||
    { cat dbg.err; fail "debug flag dirtybitmap.verbose is not exported (or has no effect)"; }
echo OK
