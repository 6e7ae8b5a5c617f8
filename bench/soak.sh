#!/usr/bin/env bash
# Soak: one disk and one bitmap file (crash-safe mode, file plugin) for
# SECONDS (default 1800): 4 connections of random writes with periodic
# flushes, a checkpoint every 0.05-0.4 s over the control socket, nbdkit
# killed with SIGKILL (80%) or stopped cleanly (20%) every
# 0.5-5 s and restarted; after every round the bitmap must cover every
# granule holding data and every acknowledged write (in the union of all
# bitmaps), no temporary file is left behind, and qemu-img check
# must be clean.  Prints rounds, kills and violations.
#   bench/soak.sh [SECONDS]
set -euo pipefail
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
w=$(mktemp -d /var/tmp/dbm-soak.XXXXXX); trap 'rm -rf "$w"' EXIT
cp "$top/.libs/nbdkit-dirtybitmap-filter.so" "$top/dirtybitmap" "$w/"
export FILTER=$w/nbdkit-dirtybitmap-filter.so DIRTYBITMAP=$w/dirtybitmap
export NBDKIT=${NBDKIT:-$(command -v nbdkit)}
mkdir "$w/run"
/usr/bin/python3 "$top/tests/crash_harness.py" --soak-seconds "${1:-1800}" \
    --workdir "$w/run"
