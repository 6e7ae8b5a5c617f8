#!/usr/bin/env bash
# Proves each constraint of the format (every check QEMU makes, plus the
# 2015 review's) has its own clear error from 'dirtybitmap check', exit 1
# and never a crash; --repair fixes the safely fixable cases.  (Also run
# under ASan/UBSan by 'make check-sanitize'.)
source "$srcdir/functions.sh"
D=$DIRTYBITMAP

$D create base.qcow2 --size 1G --name alpha
$D add base.qcow2 bravo --granularity 1M
$D check base.qcow2 >/dev/null || fail "base file invalid"
mkdir cases
/usr/bin/python3 "$srcdir/malformed.py" base.qcow2 cases > cases.tsv
n=0
while IFS=$'\t' read -r file expect; do
    n=$((n+1))
    set +e
    $D check "$file" > out 2>&1; rc=$?
    set -e
    [ $rc -eq 1 ] || { cat out; fail "$file: exit $rc, want 1"; }
    grep -qF -- "$expect" out || { cat out; fail "$file: message lacks '$expect'"; }
    [ "$(grep -c . out)" -ge 1 ] || fail "$file: no message"
    # info and map must fail cleanly too (or succeed, never crash).
    set +e
    $D info "$file" >/dev/null 2>&1; rc=$?
    $D map "$file" alpha >/dev/null 2>&1; rc2=$?
    set -e
    [ $rc -le 1 ] && [ $rc2 -le 1 ] || fail "$file: info/map crashed ($rc/$rc2)"
done < cases.tsv
echo "$n malformed cases checked"
[ $n -ge 50 ] || fail "too few cases"

# Repairs: leaks, and autoclear bit 0 set without the extension.
cp cases/leak.qcow2 leak.qcow2
$D check --repair leak.qcow2 > out || { cat out; fail "repair of leaks"; }
grep -q "repaired" out || fail "repair did not say what it did"
$D check leak.qcow2 >/dev/null
$D map leak.qcow2 alpha >/dev/null
if qemu-img --version >/dev/null 2>&1; then qemu_check leak.qcow2; fi
$D create noext.qcow2 --size 1G --name only
$D remove noext.qcow2 only
printf '\0\0\0\0\0\0\0\1' | dd of=noext.qcow2 bs=1 seek=88 conv=notrunc status=none
set +e; $D check noext.qcow2 > out; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "set but there is no bitmaps extension" out || fail "autoclear-no-ext"
$D check --repair noext.qcow2 | grep -q "cleared autoclear_features bit 0" || fail "repair bit"
$D check noext.qcow2 >/dev/null
if qemu-img --version >/dev/null 2>&1; then qemu_check noext.qcow2; fi
# Not safely repairable: refused, file unchanged.
cp cases/autoclear-clear.qcow2 ac.qcow2
sum=$(md5sum < ac.qcow2)
set +e; $D check --repair ac.qcow2 > out; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "not repaired" out || fail "autoclear-clear repair"
[ "$(md5sum < ac.qcow2)" = "$sum" ] || fail "refused repair modified the file"
echo OK
