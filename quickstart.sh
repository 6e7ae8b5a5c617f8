#!/usr/bin/env bash
# Quick start for nbdkit-dirtybitmap.
#   ./quickstart.sh demo    install, build, write through the filter, show the bitmap
#                           in both layouts (tools/examples/demo.sh)
#   ./quickstart.sh check   install, build, run the whole test suite
#   ./quickstart.sh build   install and build only
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES="build-essential autoconf automake libtool pkg-config nbdkit
  nbdkit-plugin-dev libnbd-bin libnbd-dev python3-libnbd qemu-utils fio
  valgrind perl clang libclang-rt-14-dev cppcheck clang-tidy lcov
  libjson-c-dev python3-tqdm qemu-system-common"

install_deps () {
    local missing=() p
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build () {
    install_deps
    if [ ! -f configure ] || [ configure.ac -nt configure ] ||
           [ Makefile.am -nt Makefile.in ]; then
        autoreconf -fi
    fi
    [ -f Makefile ] && [ config.status -nt configure ] || ./configure --quiet
    make -j"$(nproc)"
}

summary () {
    # automake's test-suite.log counts; print the plain closing line.
    local log=test-suite.log pass fail skip xfail xpass err
    pass=$(sed -n 's/^# PASS: *//p' $log); fail=$(sed -n 's/^# FAIL: *//p' $log)
    skip=$(sed -n 's/^# SKIP: *//p' $log); err=$(sed -n 's/^# ERROR: *//p' $log)
    xfail=$(sed -n 's/^# XFAIL: *//p' $log); xpass=$(sed -n 's/^# XPASS: *//p' $log)
    echo "$((pass + xfail)) passed, $((fail + err + xpass)) failed, $skip skipped"
}

case "${1:-}" in
demo)
    build
    bash tools/examples/demo.sh "$PWD/.libs/nbdkit-dirtybitmap-filter.so" \
        "$PWD/dirtybitmap"
    ;;
check)
    build
    rc=0
    rm -f test-suite.log
    make check || rc=$?
    if [ -f test-suite.log ]; then
        summary
    else
        echo "0 passed, 1 failed"     # the build or the harness itself failed
    fi
    exit $rc
    ;;
build)
    build
    ;;
*)
    echo "usage: $0 demo|check|build" >&2
    exit 2
    ;;
esac
