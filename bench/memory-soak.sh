#!/usr/bin/env bash
# Memory over many checkpoints: N checkpoints (default 10000), each
# followed by the removal of the bitmap the previous one froze, under 4
# marking threads (crash-safe mode, 16 GiB), every frozen bitmap checked
# exact before its removal; prints RSS after 100 and at the end.
#   bench/memory-soak.sh [N]        (run from the build tree)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
make -C "$top" -s tests/test-tracker-soak
"$top/tests/test-tracker-soak" "${1:-10000}"
