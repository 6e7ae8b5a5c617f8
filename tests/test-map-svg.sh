#!/usr/bin/env bash
# Proves 'dirtybitmap map FILE NAME --svg OUT' draws the map that
# 'map --json' prints: the output parses as XML (xml.etree, one <svg>
# root in the SVG namespace), and its dirty rectangles are the dirty
# extents, in order, placed and sized in proportion to the drawn bar
# within a pixel, never narrower than a pixel (extents closer than that
# share one rectangle).  The axis labels (powers of 1024) sit at their
# offsets.  Names with markup characters, control characters, bytes that
# are not UTF-8 or U+FFFE still give well-formed XML that shows them
# escaped.  An OUT that cannot be written is a one-line error naming it,
# exit 1, and no file (nor temporary) is left behind.
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-io --version
D=$DIRTYBITMAP

# svg_check SVG JSON RECTS TITLE: parse SVG; compare it with the map in
# JSON (map --json); RECTS is the number of dirty rectangles expected and
# TITLE the text expected in the <title> (the names as shown).
svg_check () {
    "$PYTHON" - "$@" <<'PY'
import json, re, sys
import xml.etree.ElementTree as ET

svg, js, nrects, title = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
NS = "{http://www.w3.org/2000/svg}"
MIN_W = 1.0
EPS = 1e-6

root = ET.parse(svg).getroot()          # raises unless well-formed
assert root.tag == NS + "svg", root.tag
got_title = root.find(NS + "title").text
assert got_title == title, (got_title, title)
heading = root.find(".//%stext[@id='heading']" % NS).text
assert heading == title, (heading, title)

ext = json.load(open(js))
size = sum(e["length"] for e in ext)
bar = root.find(".//%srect[@id='bar']" % NS)
assert bar.get("class") == "clean", bar.attrib
X0, W = float(bar.get("x")), float(bar.get("width"))
assert W > 100, W

def x(off):
    return X0 + off * W / size

rects = [r for r in root.find(".//%sg[@id='extents']" % NS)
         if r.tag == NS + "rect"]
assert all(r.get("class") == "dirty" for r in rects), \
    [r.get("class") for r in rects]
assert len(rects) == nrects, (len(rects), nrects)
dirty = [e for e in ext if e["dirty"]]

# Each rectangle covers the next run of dirty extents, in order.
i = 0
prev_right = None
for r in rects:
    left = float(r.get("x"))
    width = float(r.get("width"))
    right = left + width
    n = int(r.get("data-extents"))
    run = dirty[i:i + n]
    assert len(run) == n and n >= 1, (i, n, len(dirty))
    i += n
    first, last = run[0], run[-1]
    end = last["offset"] + last["length"]
    assert int(r.get("data-offset")) == first["offset"], (r.attrib, first)
    assert int(r.get("data-length")) == end - first["offset"], (r.attrib, run)
    assert width >= MIN_W - EPS, ("narrower than a pixel", r.attrib)
    assert abs(left - x(first["offset"])) <= 1 + EPS, \
        ("left edge", left, x(first["offset"]), first)
    assert abs(right - x(end)) <= 1 + EPS, ("right edge", right, x(end), last)
    assert X0 - EPS <= left and right <= X0 + W + EPS, ("off the bar", r.attrib)
    if prev_right is not None:
        assert left > prev_right, ("not in order", left, prev_right)
    prev_right = right
    # Only extents less than a pixel apart share a rectangle.
    for a, b in zip(run, run[1:]):
        assert x(b["offset"]) - x(a["offset"] + a["length"]) < MIN_W, (a, b)
assert i == len(dirty), ("dirty extents not drawn", dirty[i:])
# And rectangles apart really are apart.
for a, b in zip(rects, rects[1:]):
    assert float(b.get("x")) > float(a.get("x")) + float(a.get("width"))

# The axis: labels in powers of 1024, in order, each at its offset when
# it is exact; the first 0, the last the size.
UNITS = "KMGTPE"
def value(s):
    m = re.fullmatch(r"(\d+(?:\.\d)?)([KMGTPE]?)", s)
    assert m, ("label", s)
    return float(m.group(1)) * 1024 ** (UNITS.index(m.group(2)) + 1
                                        if m.group(2) else 0), "." not in s
labels = [(float(t.get("x")), t.text)
          for t in root.find(".//%sg[@id='axis']" % NS) if t.tag == NS + "text"]
assert len(labels) >= 3, labels
assert labels[0][1] == "0", labels
assert [l[0] for l in labels] == sorted(l[0] for l in labels), labels
for lx, text in labels:
    v, exact = value(text)
    if exact:
        assert abs(lx - x(v)) <= 1 + EPS, ("label off its offset", text, lx)
assert abs(labels[-1][0] - (X0 + W)) <= EPS, labels[-1]
assert abs(value(labels[-1][1])[0] - size) <= size / 100, (labels[-1], size)

# The legend: one entry per kind, with its extent count.
legend = [t.text for t in root.find(".//%sg[@id='legend']" % NS)
          if t.tag == NS + "text"]
for kind, flag in (("clean", False), ("dirty", True)):
    n = sum(1 for e in ext if e["dirty"] == flag)
    want = "%s extent%s" % (n, "" if n == 1 else "s")
    assert any(t.startswith(kind + ": ") and t.endswith(", " + want)
               for t in legend), (kind, want, legend)
PY
}

# map_svg FILE NAME RECTS TITLE: draw and check one bitmap.
map_svg () {
    rm -f out.svg out.json
    $D map "$1" "$2" --svg out.svg || fail "map --svg $1 $2: exit $?"
    $D map "$1" "$2" --json > out.json
    svg_check out.svg out.json "$3" "$4" ||
        { cat out.svg >&2; fail "map --svg $1 $2: picture differs from the map"; }
}

# 1. Known extents on a 1G disk (64K granules, 920 px: about 0.05 px
# each): one at the start and one at the very end (both widened to a
# pixel, the last kept on the bar), one large, one lone granule, and two
# 128K apart (0.1 px: one rectangle).
$D create a.qcow2 --size 1G --name first
qemu-io -f qcow2 a.qcow2 -c 'write 0 64k' -c 'write 100M 50M' \
    -c 'write 512M 4k' -c 'write 700M 64k' -c 'write 734199808 64k' \
    -c 'write 1073676288 64k' > /dev/null
$D map a.qcow2 first --json |
    json_check '[(e["offset"], e["length"]) for e in j if e["dirty"]] ==
                [(0, 65536), (104857600, 52428800), (536870912, 65536),
                 (734003200, 65536), (734199808, 65536), (1073676288, 65536)]' ||
    fail "the dirty extents are not the ones written"
map_svg a.qcow2 first 5 "a.qcow2: bitmap first"

# Standard output: the same picture.
$D map a.qcow2 first --svg - > stdout.svg
cmp -s out.svg stdout.svg || fail "--svg - differs from --svg FILE"

# An existing OUT is replaced, keeping its mode.
echo old > keep.svg
chmod 640 keep.svg
$D map a.qcow2 first --svg keep.svg
cmp -s out.svg keep.svg || fail "--svg over an existing file"
[ "$(stat -c %a keep.svg)" = 640 ] || fail "--svg changed the mode of OUT"

# 2. Many extents within a pixel: 100 granules of 512 bytes, 2K apart,
# are one rectangle (the picture stays small however busy the map).
$D create m.qcow2 --size 1G --granularity 512 --name fine
cmds=()
for (( k=0; k<100; k++ )); do cmds+=(-c "write $((k * 2048)) 512"); done
cmds+=(-c 'write 512M 1M')
qemu-io -f qcow2 m.qcow2 "${cmds[@]}" > /dev/null
map_svg m.qcow2 fine 2 "m.qcow2: bitmap fine"
"$PYTHON" -c '
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot().find(".//{http://www.w3.org/2000/svg}g[@id=\"extents\"]")[0]
assert r.get("data-extents") == "100", r.attrib' out.svg ||
    fail "100 extents within a pixel are not one rectangle"

# A clean bitmap: no rectangles, still a picture; a size that is no
# power of two (10G + 512: the end is labelled 10.0G, the ticks exact).
$D create e.qcow2 --size 10737418752 --name empty
map_svg e.qcow2 empty 0 "e.qcow2: bitmap empty"

# 3. Names: markup characters in the file and bitmap names; a control
# character, a byte that is not UTF-8 and U+FFFE (not an XML character)
# in names another tool wrote.  The picture parses and shows them as
# map and info do (\xNN).
f='we<&"'"'"'>.qcow2'
$D create "$f" --size 64M --name 'b<&"'"'"'>'
qemu-img bitmap --add "$f" $'odd\x1b\xffname'
qemu-img bitmap --add "$f" $'non\xef\xbf\xbechar'
qemu-io -f qcow2 "$f" -c 'write 1M 1M' > /dev/null
map_svg "$f" 'b<&"'"'"'>' 1 "$f: bitmap b<&\"'>"
map_svg "$f" $'odd\x1b\xffname' 1 "$f: bitmap odd\\x1b\\xffname"
map_svg "$f" $'non\xef\xbf\xbechar' 1 "$f: bitmap non\\xef\\xbf\\xbechar"

# 4. Failures: one line on stderr naming OUT, exit 1, nothing left.
set +e
$D map a.qcow2 first --svg "$PWD/nodir/x.svg" > out 2> err; rc=$?
set -e
[ $rc = 1 ] || fail "--svg into a missing directory: exit $rc"
[ "$(wc -l < err)" = 1 ] && grep -qF -- "--svg $PWD/nodir/x.svg: " err ||
    fail "--svg into a missing directory: $(cat err)"
[ ! -s out ] && [ ! -e nodir ] || fail "--svg into a missing directory left output"

mkdir adir
set +e
$D map a.qcow2 first --svg adir 2> err; rc=$?
set -e
[ $rc = 1 ] && [ "$(wc -l < err)" = 1 ] && grep -qF -- "--svg adir: " err ||
    fail "--svg onto a directory: exit $rc: $(cat err)"
[ -z "$(ls adir)" ] || fail "--svg onto a directory wrote into it"

if [ "$(id -u)" != 0 ]; then
    mkdir ro; chmod 555 ro
    set +e
    $D map a.qcow2 first --svg ro/x.svg 2> err; rc=$?
    set -e
    chmod 755 ro
    [ $rc = 1 ] && [ "$(wc -l < err)" = 1 ] && grep -qF -- "--svg ro/x.svg: " err ||
        fail "--svg into a read-only directory: exit $rc: $(cat err)"
    [ -z "$(ls ro)" ] || fail "--svg into a read-only directory left a file"
fi

# A write that fails midway (a full disk): no picture claimed.
if [ -w /dev/full ]; then
    set +e
    $D map a.qcow2 first --svg /dev/full 2> err; rc=$?
    set -e
    [ $rc = 1 ] && [ "$(wc -l < err)" = 1 ] &&
        grep -qF -- "--svg /dev/full: write: No space left on device" err ||
        fail "--svg /dev/full: exit $rc: $(cat err)"
fi

# No bitmap NAME: OUT is not touched.
sum=$(md5sum < keep.svg)
set +e
$D map a.qcow2 nosuch --svg keep.svg 2> err; rc=$?
set -e
[ $rc = 1 ] && [ "$(md5sum < keep.svg)" = "$sum" ] ||
    fail "a failed map --svg changed OUT (exit $rc)"

# OUT naming the bitmap file itself is refused; the file is intact.
sum=$(md5sum < a.qcow2)
ln -s a.qcow2 alias.qcow2
set +e
$D map a.qcow2 first --svg alias.qcow2 2> err; rc=$?
set -e
[ $rc = 1 ] && [ "$(md5sum < a.qcow2)" = "$sum" ] &&
    grep -qF -- "--svg alias.qcow2: is the bitmap file itself" err ||
    fail "--svg over the bitmap file: exit $rc: $(cat err)"
qemu_check a.qcow2

# --json and --svg together: usage error.
set +e
$D map a.qcow2 first --json --svg x.svg 2> err; rc=$?
set -e
[ $rc = 2 ] && [ ! -e x.svg ] && grep -q -- "--json and --svg" err ||
    fail "--json --svg: exit $rc: $(cat err)"

# No temporary left anywhere.
leftover=$(find . -name '*.tmp*')
[ -z "$leftover" ] || fail "temporaries left: $leftover"
echo OK
