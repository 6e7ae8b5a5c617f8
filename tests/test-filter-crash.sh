#!/usr/bin/env bash
# Proves crash-safe mode's promise with a short run of the crash harness:
# after kill -9 at random moments (during writes, flushes, persists, the
# first start and the restart), the bitmap covers every granule holding
# data and every acknowledged write, stays within the region bound, and
# qemu-img check exits 0; also over a 1 TiB sparse export of 4096 regions
# whose persists disarm hundreds of regions that writers re-arm at once.
# bench/crash-soak.sh runs the long versions.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires /usr/bin/python3 -c 'import nbd'
requires qemu-img --version
/usr/bin/python3 "$srcdir/crash_harness.py" --trials "${CRASH_TRIALS:-12}" \
    --workdir "$tmpdir"
# A large sparse export (1 TiB, the default region: 4096 of them), small
# writes all over it, kills during the re-arm storm after a persist.
/usr/bin/python3 "$srcdir/crash_harness.py" --large \
    --trials "${CRASH_LARGE_TRIALS:-2}" --workdir "$tmpdir"
echo OK
