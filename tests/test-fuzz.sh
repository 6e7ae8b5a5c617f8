#!/usr/bin/env bash
# Proves the file parser survives a short libFuzzer run (both layouts,
# seeded with valid and malformed files) under ASan and UBSan: no crash,
# leak, hang or out-of-bounds access.  'make fuzz' runs the long version.
source "$srcdir/functions.sh"
requires clang --version
top_srcdir=$(cd "$srcdir/.." && pwd)
"$top_srcdir/tests/fuzz/build.sh" "$tmpdir/fuzz-qcow2" || fail "fuzzer build"
mkdir corpus
cp "$top_srcdir"/tests/fuzz/corpus/* corpus/
"$tmpdir/fuzz-qcow2" -max_total_time="${FUZZ_SECONDS:-30}" -max_len=16384 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 corpus > fuzz.log 2>&1 ||
    { tail -40 fuzz.log; fail "the fuzzer found a problem"; }
grep -E "stat::number_of_executed_units" fuzz.log
echo OK
