#!/usr/bin/env bash
# Quick start for nbdkit-dirtybitmap.
#   ./quickstart.sh demo    install, build, write through the filter, show the bitmap
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
    export PATH=/usr/bin:$PATH
    d=$(mktemp -d)
    echo "== nbdkit --filter=dirtybitmap memory 1G bitmap-file=$d/disk.bitmaps.qcow2"
    nbdkit -U - --filter="$PWD/.libs/nbdkit-dirtybitmap-filter.so" memory 1G \
        bitmap-file="$d/disk.bitmaps.qcow2" \
        --run 'nbdsh -u "$uri" -c "
h.pwrite(b\"hello\" * 1000, 0)
h.zero(1 << 20, 100 << 20)
h.trim(65536, 512 << 20)
h.flush()"'
    echo "== qemu-img info $d/disk.bitmaps.qcow2"
    qemu-img info "$d/disk.bitmaps.qcow2"
    echo "== qemu-img check"
    qemu-img check "$d/disk.bitmaps.qcow2"
    echo "== ./dirtybitmap info"
    ./dirtybitmap info "$d/disk.bitmaps.qcow2"
    echo "== ./dirtybitmap map (dirty extents)"
    ./dirtybitmap map "$d/disk.bitmaps.qcow2" dirtybitmap | grep dirty
    rm -rf "$d"
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
