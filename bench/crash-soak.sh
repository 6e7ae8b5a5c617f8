#!/usr/bin/env bash
# The long run of the crash harness (tests/crash_harness.py): kill -9 at
# random moments, crash-safe mode, file plugin, 3 concurrent writers.
#   bench/crash-soak.sh [TRIALS]     (default 500; each trial kills twice,
#                                     plus kills during first start/restart)
set -euo pipefail
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
TRIALS=${1:-500}
w=$(mktemp -d /var/tmp/dbm-soak.XXXXXX); trap 'rm -rf "$w"' EXIT
# A private copy of the binaries, so a rebuild cannot change them mid-run.
cp "$top/.libs/nbdkit-dirtybitmap-filter.so" "$top/dirtybitmap" "$w/"
export FILTER=$w/nbdkit-dirtybitmap-filter.so DIRTYBITMAP=$w/dirtybitmap
export NBDKIT=${NBDKIT:-$(command -v nbdkit)}
mkdir "$w/run"
/usr/bin/python3 "$top/tests/crash_harness.py" --trials "$TRIALS" --workdir "$w/run"
