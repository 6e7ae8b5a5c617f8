# Shared helpers for the shell tests (nbdkit's functions.sh is not
# installed, so we carry our own small equivalents).
#
# Environment from Makefile.am: FILTER, DIRTYBITMAP, NBDKIT, PYTHON,
# BUILT_NBDKIT_VERSION, srcdir.

set -e
# nbdsh runs "python3 -m nbd" from PATH: make it Debian's python3.
export PATH=/usr/bin:/usr/sbin:$PATH
export PYTHONDONTWRITEBYTECODE=1

_cleanup_hooks=()
cleanup_fn () { _cleanup_hooks+=("$*"); }
_run_cleanup () {
    local rc=$? i
    for (( i=${#_cleanup_hooks[@]}-1; i>=0; i-- )); do
        eval "${_cleanup_hooks[$i]}" || true
    done
    exit $rc
}
trap _run_cleanup EXIT INT TERM

fail () { echo "FAIL: $*" >&2; exit 1; }

# A missing tool skips (77) on a developer machine, but fails in CI, where
# quickstart.sh has installed everything.
requires () {
    if ! "$@" >/dev/null 2>&1; then
        if [ "${CI:-}" = "true" ]; then
            echo "required tool missing in CI: $*" >&2; exit 1
        fi
        echo "$0: test skipped because prerequisite is missing: $*"; exit 77
    fi
}

# A private scratch directory, removed at exit.
tmpdir=$(mktemp -d /tmp/dbm-test.XXXXXX)
cleanup_fn "rm -rf '$tmpdir'"
cd "$tmpdir"

nbdkit_filter () { "$NBDKIT" --filter="$FILTER" "$@"; }

# start_nbdkit PIDFILE SOCKET ARGS...: a background server, killed at exit.
# A stale PIDFILE (an earlier server's) is removed first, so only the new
# server's own PID, once fully written (newline-terminated), is registered
# for cleanup; it is also left in $NBDKIT_PID.
start_nbdkit () {
    local pidfile=$1 sock=$2 i pid=; shift 2
    rm -f "$pidfile"
    [ ! -e "$pidfile" ] || fail "start_nbdkit: cannot remove stale $pidfile"
    "$NBDKIT" -P "$pidfile" -U "$sock" --filter="$FILTER" "$@" ||
        fail "nbdkit did not start: $*"
    for (( i=0; i<300; i++ )); do
        if [ -S "$sock" ] && [ -s "$pidfile" ] &&
           read -r pid 2>/dev/null < "$pidfile" &&
           [[ $pid =~ ^[1-9][0-9]*$ ]]; then
            break
        fi
        pid=
        sleep 0.1
    done
    [ -n "$pid" ] || fail "nbdkit did not start (no pidfile $pidfile or socket $sock): $*"
    cleanup_fn "kill_nbdkit $pid"
    kill -0 "$pid" 2>/dev/null || fail "nbdkit $pid (from $pidfile) is not running"
    # The control socket is created once nbdkit serves (after_fork, after
    # the pidfile): wait for it too.
    local a ctl=
    for a in "$@"; do
        case $a in bitmap-control=*) ctl=${a#bitmap-control=} ;; esac
    done
    # It answers once the server is ready (a socket left by a killed run
    # may be there before this one replaces it).
    if [ -n "$ctl" ]; then
        for (( i=0; i<300; i++ )); do
            [ -S "$ctl" ] && "$DIRTYBITMAP" status "$ctl" >/dev/null 2>&1 && break
            sleep 0.1
        done
        "$DIRTYBITMAP" status "$ctl" >/dev/null 2>&1 ||
            fail "nbdkit $pid does not answer on its control socket $ctl"
    fi
    NBDKIT_PID=$pid
}

# serve_fg LOG SOCK ARGS...: nbdkit --filter=dirtybitmap ARGS in the
# foreground (-f) as this shell's child, stderr to LOG, sets SERVER_PID;
# returns once SOCK (and the bitmap-control socket) serve.  A daemon's exit
# is only seen once something reaps it, so a child is quicker to stop:
# stop_server PID sends SIGTERM and returns nbdkit's exit status.
serve_fg () {
    local log=$1 sock=$2 a ctl= i; shift 2
    for a in "$@"; do
        case $a in bitmap-control=*) ctl=${a#bitmap-control=} ;; esac
    done
    rm -f "$sock" ${ctl:+"$ctl"}
    "$NBDKIT" -f -U "$sock" --filter="$FILTER" "$@" 2> "$log" &
    SERVER_PID=$!
    cleanup_fn "stop_server $SERVER_PID"
    for (( i=0; i<600; i++ )); do
        if ! kill -0 $SERVER_PID 2>/dev/null ||
           [ "$(awk '{ print $3 }' /proc/$SERVER_PID/stat 2>/dev/null)" = Z ]; then
            cat "$log" >&2; fail "nbdkit did not start: $*"
        fi
        [ -S "$sock" ] && { [ -z "$ctl" ] || [ -S "$ctl" ]; } && return 0
        sleep 0.05
    done
    fail "nbdkit did not serve within 30 s: $*"
}
stop_server () {
    kill "$1" 2>/dev/null || return 0
    wait "$1" 2>/dev/null
}

# kill_nbdkit PID: SIGTERM, then wait for the clean shutdown to finish.
kill_nbdkit () {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for (( i=0; i<600; i++ )); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "kill_nbdkit: $pid did not exit, sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
}

# Dirty extents "OFFSET LENGTH" of bitmap NAME in FILE, read by our CLI.
# If the map cannot be read (no such bitmap), a line saying so goes to
# stdout too, so that no comparison of the output can pass.
map_ours () {
    local out
    if ! out=$("$DIRTYBITMAP" map "$1" "$2"); then
        echo "map_ours: cannot read bitmap $2 of $1"
        return 1
    fi
    # Dirty runs split by zero ranges (a 4th column) are merged again.
    printf '%s\n' "$out" | awk '
        $3 == "dirty" { if (n && o + n == $1) n += $2
                        else { if (n) print o, n; o = $1; n = $2 } }
        END { if (n) print o, n }'
}

# The same, read independently by QEMU: qemu-nbd -B + nbdinfo --map.
map_qemu () {
    local file=$1 name=$2 sock="$tmpdir/qnbd.$$.$RANDOM.sock" pid i
    # locking=off: also readable while the filter holds the QEMU locks.
    qemu-nbd -r -B "$name" -k "$sock" -t --image-opts \
        "driver=qcow2,file.driver=file,file.filename=$file,file.locking=off" &
    pid=$!
    for (( i=0; i<100; i++ )); do [ -S "$sock" ] && break; sleep 0.1; done
    nbdinfo --map="qemu:dirty-bitmap:$name" "nbd+unix:///?socket=$sock" |
        awk '$3 == 1 { print $1, $2 }'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# expect_map EXPECTED ACTUAL WHAT: compare two extent lists.
expect_map () {
    if ! diff -u "$1" "$2" >&2; then fail "$3: dirty map differs from the oracle"; fi
}

# json_get PYEXPR: evaluate the Python expression PYEXPR (may span lines)
# on the JSON document read from stdin (bound to j) and print the result
# (strings bare, the rest as JSON).
json_get () {
    "$PYTHON" -c '
import json, sys
v = eval("(%s\n)" % sys.argv[1], {"j": json.load(sys.stdin)})
print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

# json_check PYEXPR: true iff PYEXPR holds for the JSON on stdin (as j);
# on false, prints the expression and the document.
json_check () {
    "$PYTHON" -c '
import json, sys
j = json.load(sys.stdin)
if not eval("(%s\n)" % sys.argv[1], {"j": j}):
    sys.exit("json_check: false: %s\nfor: %s" % (sys.argv[1], json.dumps(j)[:4000]))' "$1"
}

qemu_check () {
    qemu-img check "$1" >/dev/null || fail "qemu-img check $1 exit $?"
}

# covers EXTENTS_FILE OFFSET LENGTH: is [OFFSET, OFFSET+LENGTH) inside one
# of the "OFFSET LENGTH" extents?
covers () {
    awk -v o="$2" -v n="$3" '$1 <= o && o + n <= $1 + $2 { found = 1 }
        END { exit !found }' "$1"
}
