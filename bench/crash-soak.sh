#!/usr/bin/env bash
# The long run of the crash harness (tests/crash_harness.py): kill -9 at
# random moments, crash-safe mode, file plugin, 3 concurrent writers.
#   bench/crash-soak.sh [TRIALS] [--large]
#       TRIALS default 500; each trial kills twice, plus kills during the
#       first start and the restart.  --large: a 1 TiB sparse export with
#       the default bitmap-region (4096 regions of 256M), small writes all
#       over it, kills 1-3 persist intervals in, inside the re-arm storm
#       that follows each persist (crash_harness.py's docstring).
set -euo pipefail
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
TRIALS=${1:-500}; shift $(( $# > 0 ? 1 : 0 ))
w=$(mktemp -d /var/tmp/dbm-soak.XXXXXX); trap 'rm -rf "$w"' EXIT
# A private copy of the binaries, so a rebuild cannot change them mid-run.
cp "$top/.libs/nbdkit-dirtybitmap-filter.so" "$top/dirtybitmap" "$w/"
export FILTER=$w/nbdkit-dirtybitmap-filter.so DIRTYBITMAP=$w/dirtybitmap
export NBDKIT=${NBDKIT:-$(command -v nbdkit)}
mkdir "$w/run"
/usr/bin/python3 "$top/tests/crash_harness.py" --trials "$TRIALS" --workdir "$w/run" "$@"
