#!/usr/bin/env bash
# Build the libFuzzer target OUT from the sources beside this script, with
# ASan and UBSan.  Needs the configured tree's config.h (BUILDDIR, default:
# the source tree).
set -euo pipefail
out=${1:?output path}
src=$(cd "$(dirname "$0")/../.." && pwd)
builddir=${BUILDDIR:-$src}
clang -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -g -O1 -DHAVE_CONFIG_H -I"$builddir" -I"$src/common" \
    "$src/tests/fuzz/fuzz-qcow2.c" "$src/common/bitmap.c" \
    "$src/common/dbm-error.c" "$src/common/qcow2-open.c" \
    "$src/common/qcow2-write.c" "$src/common/qcow2-watch.c" \
    "$src/common/atomic-file.c" -o "$out"
