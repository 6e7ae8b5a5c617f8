#!/usr/bin/env bash
# Helpers shared by the backup-agent tests (test-backup-example.sh,
# test-backup-agent-*.sh): sourced after functions.sh, not a test itself.
#
#   start_writer URI SEED    writers running until stop_writer
#   stop_writer              stop them; fails if they saw an error
#   writes                   requests the writers have done so far
#   check_point N SOCK       restore point N of $BK equals the live snapshot
#                            it was copied from (kept with --keep-snapshot)
#   check_copied N OUT       OUT (the agent's reply for point N) copied
#                            exactly the dirty extents, as QEMU reads them
#                            from $BFILE, of the bitmaps that point read
#   jget FILE EXPR...        each Python EXPR on the JSON in FILE (as j),
#                            one line each (one process: they are slow)
#   bitmaps, snapshots, write_some, expect_error, keep: see below
if [ -z "${tmpdir:-}" ]; then
    echo "$0: a library for the backup-agent tests, sourced by them"
    exit 0
fi

# What every backup-agent test needs.
requires qemu-img --version
requires qemu-nbd --version
requires nbdcopy --version
requires nbdinfo --version
requires "$PYTHON" -c "import nbd"

AGENT="$PYTHON $srcdir/../tools/examples/backup-agent.py"
BK=${BK:-bk}
BFILE=${BFILE:-b.qcow2}

# writer.py URI STOPFILE COUNTFILE SEED: writes, zeroes and trims at random
# (at most 64K each) on 2 connections, ~10 ms apart, until STOPFILE
# exists (at most 150 s); COUNTFILE holds the requests done so far.
cat > "$tmpdir/writer.py" <<'EOF'
import nbd, os, random, sys, threading, time
uri, stop, countfile, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
done = [0, 0]
errors = []
def work(i):
    rng = random.Random(seed * 10 + i)
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        size, trim = h.get_size(), h.can_trim()
        end = time.time() + 150
        while not os.path.exists(stop) and time.time() < end:
            off = rng.randrange(0, size)
            n = min(rng.randint(1, 65536), size - off)
            kind = rng.choice(["pwrite", "pwrite", "zero", "trim"])
            if kind == "pwrite":
                h.pwrite(bytes([rng.randrange(1, 256)]) * n, off)
            elif kind == "zero" or not trim:
                h.zero(n, off)
            else:
                h.trim(n, off)
            done[i] += 1
            time.sleep(0.01)
        h.shutdown()
    except Exception as e:
        errors.append("writer %d: %s" % (i, e))
threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    with open(countfile + ".tmp", "w") as f:
        f.write("%d\n" % sum(done))
    os.rename(countfile + ".tmp", countfile)
    time.sleep(0.02)
with open(countfile, "w") as f:
    f.write("%d\n" % sum(done))
if errors:
    sys.exit("\n".join(errors))
EOF

# verify-dirty.py SOCKET EXPORT RESTORED PREVIOUS EXTENTS: RESTORED equals
# the dirty snapshot EXPORT on each extent ("OFFSET LENGTH" lines: what
# its frozen bitmap marks), equals PREVIOUS (the previous restore point,
# which is the snapshot's content there) elsewhere, and the snapshot
# refuses a read outside the extents with EPERM.
cat > "$tmpdir/verify-dirty.py" <<'EOF'
import errno, nbd, sys
sock, export, restored, previous, extents = sys.argv[1:6]
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(sock)
h.set_export_name(export)
h.opt_go()
size = h.get_size()
ext = [tuple(map(int, l.split())) for l in open(extents) if l.strip()]
r, p = open(restored, "rb"), open(previous, "rb")
def same_as_previous(a, b):
    r.seek(a)
    p.seek(a)
    while a < b:
        n = min(4 << 20, b - a)
        if r.read(n) != p.read(n):
            sys.exit("differs from the previous restore point in %d+%d" % (a, n))
        a += n
pos, probe = 0, None
for off, length in ext:
    if pos < off and probe is None:
        probe = pos
    same_as_previous(pos, off)
    o = off
    r.seek(o)
    while o < off + length:
        n = min(4 << 20, off + length - o)
        if h.pread(n, o) != r.read(n):
            sys.exit("differs from %s in %d+%d" % (export, o, n))
        o += n
    pos = off + length
if pos < size and probe is None:
    probe = pos
same_as_previous(pos, size)
if probe is not None:
    try:
        h.pread(512, probe)
        sys.exit("%s served offset %d, outside its frozen bitmap" % (export, probe))
    except nbd.Error as e:
        if e.errnum != errno.EPERM:
            sys.exit("%s at %d: %s, not EPERM" % (export, probe, e))
h.shutdown()
EOF

jget () {
    "$PYTHON" -c '
import json, sys
j = json.load(open(sys.argv[1]))
for e in sys.argv[2:]:
    v = eval(e, {"j": j})
    print(v if isinstance(v, str) else json.dumps(v))' "$@"
}

writer_pid=
start_writer () {
    rm -f "$tmpdir/stop" "$tmpdir/count"
    "$PYTHON" "$tmpdir/writer.py" "$1" "$tmpdir/stop" "$tmpdir/count" "$2" &
    writer_pid=$!
    cleanup_fn stop_writer
    local i
    for (( i=0; i<100; i++ )); do [ "$(writes)" -gt 0 ] && return 0; sleep 0.1; done
    fail "the writers did not start"
}
stop_writer () {
    [ -n "$writer_pid" ] || return 0
    local i rc=0
    touch "$tmpdir/stop"
    for (( i=0; i<100; i++ )); do kill -0 "$writer_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$writer_pid" 2>/dev/null || true
    wait "$writer_pid" || rc=$?
    writer_pid=
    return $rc
}
writes () { cat "$tmpdir/count" 2>/dev/null || echo 0; }

# check_point N SOCK: restore point N into restored.N and compare it with
# the snapshot it was read from, still live: a full snapshot read whole
# (nbdcopy --no-extents); a dirty one through verify-dirty.py, against
# restored.(N-1), which must be there (checked before).
check_point () {
    local n=$1 sock=$2 cp variant frozen
    { read -r cp; read -r variant; read -r frozen; } < <(jget "$BK/chain.json" \
        "j['points'][$n]['checkpoint']" "j['points'][$n].get('variant', 'full')" \
        "(j['points'][$n].get('bitmaps') or [''])[0]")
    $AGENT restore --dir "$BK" --out restored.$n --upto "$n" > /dev/null ||
        fail "restore --upto $n failed"
    if [ "$variant" = dirty ]; then
        map_qemu "$BFILE" "$frozen" > qmap.$n
        "$PYTHON" "$tmpdir/verify-dirty.py" "$sock" "snapshot:$cp" restored.$n \
            restored.$((n - 1)) qmap.$n ||
            fail "restore point $n differs from its dirty snapshot $cp"
    else
        rm -f snap.img
        nbdcopy --no-extents "nbd+unix:///snapshot:$cp?socket=$sock" snap.img ||
            fail "cannot read snapshot $cp"
        cmp restored.$n snap.img ||
            fail "restore point $n differs from its snapshot $cp"
        rm -f snap.img
    fi
}

# check_copied N OUT: point N (an incremental) copied exactly the union of
# the dirty extents of the bitmaps it read, as QEMU reads them.
check_copied () {
    local n=$1 out=$2 b bitmaps extents copied sum
    { read -r bitmaps; read -r extents; } < <(jget "$BK/chain.json" \
        "' '.join(j['points'][$n]['bitmaps'])" "j['points'][$n]['extents']")
    for b in $bitmaps; do
        map_qemu "$BFILE" "$b"
    done | sort -n | awk '
        { if (n && $1 <= e) { if ($1 + $2 > e) e = $1 + $2 }
          else { if (n) print s, e - s; s = $1; e = $1 + $2; n = 1 } }
        END { if (n) print s, e - s }' > union.$n
    [ -s union.$n ] || fail "point $n: its bitmaps have no dirty extent"
    { jget "$BK/$extents" "'\\n'.join('%d %d' % tuple(e) for e in j)"; } > copied.$n
    expect_map union.$n copied.$n "point $n: the extents copied vs its bitmaps (qemu)"
    sum=$(awk '{ s += $2 } END { print s + 0 }' union.$n)
    copied=$(jget "$out" "j['bytes_copied']")
    [ "$copied" = "$sum" ] ||
        fail "point $n copied $copied bytes; its bitmaps have $sum dirty (qemu)"
}

# With $ctl, $sock, $uri and $A (the agent with those and --dir $BK
# --keep-snapshot) set by the test:
bitmaps () { "$DIRTYBITMAP" status "$ctl" | json_get "[b['name'] for b in j['bitmaps']]"; }
snapshots () { "$DIRTYBITMAP" status "$ctl" | json_get "[s['name'] for s in j['snapshots']]"; }
# write_some: some writes, zeroes and trims (a new pattern each time).
seed=0
write_some () {
    seed=$((seed + 1))
    "$PYTHON" "$srcdir/oracle.py" run "$uri" /dev/null --seed $seed --ops 40 --max-len 100000
}
# expect_error RC STEP CMD...: CMD fails with exit RC and a JSON error for
# STEP, left in err.json.
expect_error () {
    local want=$1 step=$2 rc=0; shift 2
    "$@" > err.json 2> err.txt || rc=$?
    [ $rc = "$want" ] || fail "$*: exit $rc, not $want: $(cat err.json err.txt)"
    json_check "set(j) == {'error', 'step'} and j['step'] == '$step' and j['error']" < err.json ||
        fail "$*: not the JSON error for step $step"
}
# keep N: point N (just taken) equals its snapshot; then release it.
keep () {
    check_point "$1" "$sock"
    $AGENT release --control "$ctl" --dir "$BK" > /dev/null
    [ "$(snapshots)" = "[]" ] || fail "snapshots left: $(snapshots)"
}
