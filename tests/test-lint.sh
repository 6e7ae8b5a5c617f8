#!/usr/bin/env bash
# Proves the sources stay clean under cppcheck and clang-tidy ('make lint';
# every suppression is documented in .clang-tidy and .cppcheck-suppressions).
source "$srcdir/functions.sh"
requires cppcheck --version
requires clang-tidy --version
make -s -C "$BUILDDIR" lint > lint.log 2>&1 || { tail -30 lint.log; fail "make lint"; }
echo OK
