#!/usr/bin/env bash
# Proves crash-safe mode's promise with a short run of the crash harness:
# after kill -9 at random moments (during writes, flushes, persists, the
# first start and the restart), the bitmap covers every granule holding
# data and every acknowledged write, stays within the region bound, and
# qemu-img check exits 0.  bench/crash-soak.sh runs the long version.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires /usr/bin/python3 -c 'import nbd'
requires qemu-img --version
/usr/bin/python3 "$srcdir/crash_harness.py" --trials "${CRASH_TRIALS:-12}" \
    --workdir "$tmpdir"
echo OK
