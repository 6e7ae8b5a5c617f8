#!/usr/bin/env bash
# Proves the FILTER ORDER section of nbdkit-dirtybitmap-filter(1): each
# example nbdkit command of the section is taken from the man page and
# run (file plugin, disk.img in a private directory), a client writes
# known ranges, nbdkit stops (--run), and the bitmap is read back through
# qemu-nbd -B + nbdinfo --json --map and our CLI.  The expected extents
# are computed here from the requests and the geometry the test set up
# (offset=1M, partition 1 at 2M, blocksize 4K), and checked against what
# changed in disk.img itself:
#   - innermost, offsets are the plugin's and the bitmap has the plugin's
#     size: cow above records nothing (and leaves the file alone), offset
#     and partition above shift the records to where the data lands, a
#     blocksize read-modify-write is recorded as the block it writes and a
#     trim blocksize drops is not recorded; every changed granule of
#     disk.img is in the bitmap (the rule of thumb);
#   - above those filters, offsets and size are the client's;
#   - -D dirtybitmap.verbose=1 prints its "mark" lines only with -v.
# Every example line of the section must be one of the cases below, and
# every case must be in the section.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires "$PYTHON" -c 'import nbd'
requires qemu-nbd --version
requires nbdinfo --version
requires qemu-img --version
for f in cow offset partition blocksize; do
    requires "$NBDKIT" --filter=$f null --version
done
pod=$srcdir/../filter/nbdkit-dirtybitmap-filter.pod
[ -f "$pod" ] || fail "$pod: no such file"

M=$((1 << 20)) G=65536 SIZE=$((16 << 20))

cat > h.py <<'EOF'
# Helpers: extents are "OFFSET LENGTH" lines, merged, in offset order.
import sys

def merged(granules, g):
    out = []
    for i in sorted(granules):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    for a, b in out:
        print(a * g, (b - a) * g)

def read_extents(path):
    with open(path) as f:
        return [tuple(map(int, l.split())) for l in f if l.strip()]

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "granules":          # G OFF:LEN...: the granules the ranges touch
    g = int(args[0])
    s = set()
    for r in args[1:]:
        o, n = map(int, r.split(":"))
        s.update(range(o // g, (o + n - 1) // g + 1))
    merged(s, g)
elif cmd == "changed":         # G A B: the granules where files A, B differ
    g = int(args[0])
    s = set()
    with open(args[1], "rb") as a, open(args[2], "rb") as b:
        i = 0
        while True:
            x, y = a.read(g), b.read(g)
            if not x and not y:
                break
            if x != y:
                s.add(i)
            i += 1
    merged(s, g)
elif cmd == "shift":           # N < extents: every extent moved by N
    n = int(args[0])
    for l in sys.stdin:
        if l.strip():
            o, ln = map(int, l.split())
            print(o + n, ln)
elif cmd == "subset":          # A B: is every byte of A's extents in B's?
    def covered(o, n, ext):
        return any(bo <= o and o + n <= bo + bn for bo, bn in ext)
    b = read_extents(args[1])
    bad = [e for e in read_extents(args[0]) if not covered(e[0], e[1], b)]
    if bad:
        sys.exit("not covered: %s" % bad)
elif cmd == "dirty-json":      # nbdinfo --json --map on stdin: dirty extents
    import json
    s = []
    for e in json.load(sys.stdin):
        if e["type"] & 1:
            if s and s[-1][0] + s[-1][1] == e["offset"]:
                s[-1][1] += e["length"]
            else:
                s.append([e["offset"], e["length"]])
    for o, n in s:
        print(o, n)
elif cmd == "fill":            # FILE SIZE: a disk full of 0xAA
    with open(args[0], "wb") as f:
        f.write(b"\xaa" * int(args[1]))
elif cmd == "mbr":             # FILE START_LBA SECTORS: partition 1 (0x83)
    import struct
    with open(args[0], "r+b") as f:
        f.seek(446)
        f.write(struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x83, b"\0" * 3,
                            int(args[1]), int(args[2])))
        f.write(b"\0" * 48 + b"\x55\xaa")
elif cmd == "client":          # URI w|z|t:OFF:LEN...: write, zero, trim
    import nbd
    h = nbd.NBD()
    h.connect_uri(args[0])
    for op in args[1:]:
        k, o, n = op.split(":")
        o, n = int(o), int(n)
        if k == "w":
            h.pwrite(b"\x55" * n, o)
            assert h.pread(n, o) == b"\x55" * n, op
        elif k == "z":
            h.zero(n, o)
            assert h.pread(n, o) == bytes(n), op
        elif k == "t":
            h.trim(n, o)
        else:
            sys.exit("bad op " + op)
    if h.can_flush():
        h.flush()
    h.shutdown()
EOF
py () { "$PYTHON" "$tmpdir/h.py" "$@"; }

# The example lines of the FILTER ORDER section, continuation lines
# joined: one command per line.
awk '/^=head1 / { on = ($0 == "=head1 FILTER ORDER"); next }
     on && /^ +nbdkit / { cmd = $0; cont = /\\$/; if (!cont) print cmd; next }
     on && cont { cmd = cmd " " $0; cont = /\\$/; if (!cont) print cmd }' "$pod" |
    sed 's/\\//g; s/  */ /g; s/^ //' > examples
[ -s examples ] || fail "$pod: no example in FILTER ORDER"

# example ORDER: the example whose filters are ORDER (e.g. "cow
# dirtybitmap"), as a word per line.
tested=()
example () {
    local line order
    tested+=("$1")
    while read -r line; do
        order=$(printf '%s\n' $line | sed -n 's/^--filter=//p' | xargs)
        if [ "$order" = "$1" ]; then printf '%s\n' $line; return 0; fi
    done < examples
    fail "FILTER ORDER has no example with --filter= order '$1'"
}

# serve ORDER OPS...: run that example, substitutions only for the
# sandbox (our build of the filter, -U -, the bitmap file in this
# directory), the client doing OPS through --run; nbdkit's stderr goes
# to nbdkit.err.  Extra nbdkit options may come in $NBDKIT_OPTS.
serve () {
    local order=$1 w args=(); shift
    example "$order" > cmd.words
    while read -r w; do
        case $w in
            nbdkit) ;;
            --filter=dirtybitmap) args+=("--filter=$FILTER") ;;
            bitmap-file=*) args+=("bitmap-file=$tmpdir/bm.qcow2") ;;
            *) args+=("$w") ;;
        esac
    done < cmd.words
    "$NBDKIT" -U - $NBDKIT_OPTS "${args[@]}" \
        --run "$PYTHON $tmpdir/h.py client \"\$uri\" $*" 2> nbdkit.err ||
        { cat nbdkit.err >&2; fail "$order: nbdkit or the client failed"; }
}

# Dirty extents of bitmap NAME in FILE as QEMU reads them: qemu-nbd -B
# (--fork returns once it serves; without -t it exits when nbdinfo
# leaves), nbdinfo --json --map, parsed in Python.  Any failure fails.
map_qemu_json () {
    local file=$1 name=$2 sock=$tmpdir/q.sock pidf=$tmpdir/q.pid pid i
    rm -f "$sock" "$pidf"
    qemu-nbd --fork --pid-file="$pidf" -r -B "$name" -k "$sock" -f qcow2 \
        "$file" || fail "qemu-nbd cannot serve $file"
    read -r pid < "$pidf" || fail "qemu-nbd wrote no pid file"
    cleanup_fn "kill $pid 2>/dev/null"
    nbdinfo --json --map="qemu:dirty-bitmap:$name" \
        "nbd+unix:///?socket=$sock" > map.json ||
        fail "nbdinfo cannot read bitmap $name of $file"
    py dirty-json < map.json
    for (( i=0; i<600; i++ )); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
}

vsize () { qemu-img info --output=json "$1" | json_get "j['virtual-size']"; }

# check WHAT WANT: the bitmap bm.qcow2, read by QEMU and by our CLI, is
# WANT; the file passes qemu-img check.
check () {
    map_qemu_json "$tmpdir/bm.qcow2" dirtybitmap > got.qemu
    expect_map "$2" got.qemu "$1 (qemu-nbd -B)"
    map_ours bm.qcow2 dirtybitmap > got.ours
    expect_map "$2" got.ours "$1 (dirtybitmap map)"
    qemu_check bm.qcow2
}

# A new disk.img full of 0xAA, and its copy before.img; no bitmap file.
fresh () {
    rm -f bm.qcow2 disk.img
    py fill disk.img $SIZE
    cp disk.img before.img
}

# ---- cow above: writes stay in cow's overlay; nothing is recorded, and
# the filter (opened read-only by cow) neither creates nor changes the
# file.
fresh
# (cow serves no zero requests here: it takes can_zero from the read-only
# layers below it.)
ops="w:0:65536 w:$((2 * M)):100000 w:$((3 * M + 1000)):70000"
serve "cow dirtybitmap" $ops
[ ! -e bm.qcow2 ] || fail "cow above: the bitmap file was created"
cmp disk.img before.img || fail "cow above: disk.img changed"
"$DIRTYBITMAP" create bm.qcow2 --size $SIZE > /dev/null
cp bm.qcow2 bm.before
serve "cow dirtybitmap" $ops
cmp bm.qcow2 bm.before || fail "cow above: an existing bitmap file changed"
: > want
check "cow above" want
echo "ok: cow above: nothing recorded"

# ---- dirtybitmap above cow: the client's writes, at the client's
# offsets, although disk.img never changes.
fresh
serve "dirtybitmap cow" $ops
cmp disk.img before.img || fail "above cow: disk.img changed"
py granules $G 0:65536 $((2 * M)):100000 $((3 * M + 1000)):70000 > want
[ "$(wc -l < want)" = 3 ] || fail "oracle: $(cat want)"
check "above cow" want
echo "ok: above cow: the client's writes"

# ---- offset innermost: plugin offsets (client offset + 1M), the
# bitmap has disk.img's size and holds every granule that changed in it.
# -D dirtybitmap.verbose=1 says nothing without -v, and with -v logs
# each request at the offset the filter sees (the plugin's).
ops="w:0:65536 w:$((2 * M)):100000 z:$((3 * M + 1000)):70000"
client="0:65536 $((2 * M)):100000 $((3 * M + 1000)):70000"
fresh
NBDKIT_OPTS="-D dirtybitmap.verbose=1" serve "offset dirtybitmap" $ops
! grep -q "dirtybitmap: mark" nbdkit.err ||
    fail "-D dirtybitmap.verbose=1 printed debug lines without -v"
py granules $G $client | py shift $M > want
check "offset innermost" want
py changed $G before.img disk.img > changed
expect_map want changed "offset innermost: the granules disk.img changed in"
[ "$(vsize bm.qcow2)" = $SIZE ] || fail "offset innermost: size $(vsize bm.qcow2)"
fresh
NBDKIT_OPTS="-v -D dirtybitmap.verbose=1" serve "offset dirtybitmap" $ops
grep -q "dirtybitmap: mark $M+65536\$" nbdkit.err ||
    { cat nbdkit.err; fail "-v -D dirtybitmap.verbose=1: no 'mark $M+65536'"; }
check "offset innermost (verbose)" want
echo "ok: offset innermost: plugin offsets"

# expect_above LABEL ORDER SHIFT SIZE SHOWN: dirtybitmap above a filter
# that moves offsets by SHIFT (SHOWN in messages): the bitmap records the
# client's offsets ($ops, $client) at the client's SIZE, and each extent
# plus SHIFT is a granule that changed in disk.img.
expect_above () {
    local label=$1 order=$2 shift=$3 size=$4 shown=$5
    serve "$order" $ops
    py granules $G $client > want
    check "$label" want
    [ "$(vsize bm.qcow2)" = "$size" ] || fail "$label: size $(vsize bm.qcow2)"
    py changed $G before.img disk.img > changed
    py shift $shift < want > want.shifted
    expect_map want.shifted changed "$label: the extents + $shown"
}

# ---- dirtybitmap above offset: client offsets, the client's size (4M);
# adding 1M to each extent gives the granules that changed in disk.img.
fresh
expect_above "above offset" "dirtybitmap offset" $M $((4 * M)) 1M
echo "ok: above offset: client offsets"

# ---- partition: partition 1 starts at 2M (LBA 4096), 8M long.
P=$((2 * M))
ops="w:0:65536 w:$((5 * M)):100000 z:$((7 * M + 1000)):70000"
client="0:65536 $((5 * M)):100000 $((7 * M + 1000)):70000"
parted_disk () { fresh; py mbr disk.img $((P / 512)) $((8 * M / 512)); cp disk.img before.img; }
parted_disk
serve "partition dirtybitmap" $ops
py granules $G $client | py shift $P > want
check "partition innermost" want
py changed $G before.img disk.img > changed
expect_map want changed "partition innermost: the granules disk.img changed in"
[ "$(vsize bm.qcow2)" = $SIZE ] || fail "partition innermost: size $(vsize bm.qcow2)"
echo "ok: partition innermost: disk offsets"
parted_disk
expect_above "above partition" "dirtybitmap partition" $P $((8 * M)) 2M
echo "ok: above partition: partition offsets"

# ---- blocksize minblock=4K, granularity 512: a 1-byte write at 5000 is
# a read-modify-write of the 4K block [4096, 8192); a 1000-byte trim at
# 12000 covers no whole 4K block and is dropped.
B=4096
ops="w:5000:1 t:12000:1000"
fresh
serve "blocksize dirtybitmap" $ops
py granules 512 $((5000 / B * B)):$B > want
check "blocksize innermost" want
py changed 512 before.img disk.img > changed
py subset changed want || fail "blocksize innermost: a changed granule is not recorded"
echo "ok: blocksize innermost: the block written, not the dropped trim"
fresh
serve "dirtybitmap blocksize" $ops
py granules 512 5000:1 12000:1000 > want
check "above blocksize" want
echo "ok: above blocksize: the client's requests"

# Every example of the section was run, and nothing else.
printf '%s\n' "${tested[@]}" | sort -u > tested
while read -r line; do
    printf '%s\n' $line | sed -n 's/^--filter=//p' | xargs
done < examples | sort -u > documented
diff -u documented tested >&2 ||
    fail "the FILTER ORDER examples and the cases tested differ"
echo "OK: $(wc -l < tested) filter orders"
