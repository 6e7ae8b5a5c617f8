#!/usr/bin/env bash
# One bitmap file records one export (bitmap-export=NAME, default the
# plugin's default export): any other export name is served read-only, so
# that its writes are never recorded as writes to the tracked disk, and
# listing exports never resizes the file.  The snapshot export reads the
# tracked export beneath.
source "$srcdir/functions.sh"
requires nbdsh --version
requires qemu-img --version

# file dir=: two exports of different sizes, no default export.
mkdir d
truncate -s 1M d/a
truncate -s 2M d/b
f=$PWD/a.qcow2
ctl=$PWD/ctl
serve_fg log s.sock file dir=$PWD/d bitmap-file=$f bitmap-export=a \
    bitmap-control=$ctl
uri="nbd+unix:///?socket=$PWD/s.sock"
# nbdkit 1.32's file plugin cannot open an export of dir= without a
# client (it crashes): the filter's probe survives that, says so in a note,
# and the first connection learns the size.
grep -q "the size of the export could not be learnt at start" log ||
    { cat log; fail "no note about the size"; }
grep -q "error" log && { cat log; fail "an error at start"; }
# Listing opens every export: the file keeps the tracked export's size.
nbdinfo --list --json "$uri" > list.json
json_check 'sorted(e["export-name"] for e in j["exports"]) == ["a", "b"]' < list.json
nbdsh -u "nbd+unix:///a?socket=$PWD/s.sock" -c 'h.pwrite(b"A" * 4096, 65536)'
"$DIRTYBITMAP" status $ctl | json_check 'j["export_size"] == 1048576'
/usr/bin/python3 - "$PWD/s.sock" <<'PY'
import errno, sys, nbd
h = nbd.NBD()
h.set_export_name("b")
h.connect_unix(sys.argv[1])
assert h.is_read_only(), "export b is writable"
try:
    h.pwrite(b"B" * 4096, 0)
    sys.exit("a write to export b succeeded")
except nbd.Error as e:
    assert e.errnum in (errno.EPERM, errno.EROFS), e
assert h.pread(4096, 0) == bytes(4096)
h.shutdown()
PY
grep -q "export 'b' is served read-only: this file records writes to export 'a' only (bitmap-export)" log ||
    { cat log; fail "no note for the other export"; }
grep -q "error.*export 'b'" log && { cat log; fail "the note is labelled error"; }
# A snapshot of the tracked export reads export a, at a's size.
"$DIRTYBITMAP" checkpoint $ctl bk --snapshot > /dev/null
nbdsh -u "nbd+unix:///a?socket=$PWD/s.sock" -c 'h.pwrite(b"N" * 4096, 65536)'
[ "$(nbdinfo --size "nbd+unix:///snapshot:bk?socket=$PWD/s.sock")" = 1048576 ] ||
    fail "snapshot size is not export a's"
nbdsh -u "nbd+unix:///snapshot:bk?socket=$PWD/s.sock" \
    -c 'assert h.pread(4096, 65536) == b"A" * 4096'
"$DIRTYBITMAP" release $ctl bk > /dev/null
stop_server $SERVER_PID
[ "$(qemu-img info --output=json $f | json_get 'j["virtual-size"]')" = 1048576 ] ||
    fail "the file was resized by another export"
qemu_check $f
echo "65536 65536" > want
map_qemu $f dirtybitmap > got
expect_map want got "export a, bitmap before the checkpoint"
map_qemu $f bk > got
expect_map want got "export a, bitmap after the checkpoint"
[ -s d/b ] && cmp -s d/b <(head -c 2M /dev/zero) || fail "export b was written"

# The default export: a client asking for "" is tracked, another name is
# not, and with ondemand the default's canonical name ("default") is the
# one tracked.
g=$PWD/o.qcow2
mkdir od
serve_fg log2 s2.sock ondemand dir=$PWD/od size=1M bitmap-file=$g
nbdsh -u "nbd+unix:///?socket=$PWD/s2.sock" -c 'h.pwrite(b"x" * 512, 0)'
nbdsh -u "nbd+unix:///default?socket=$PWD/s2.sock" -c 'h.pwrite(b"y" * 512, 131072)'
nbdsh -u "nbd+unix:///other?socket=$PWD/s2.sock" -c 'assert h.is_read_only()'
stop_server $SERVER_PID
printf '0 65536\n131072 65536\n' > want
map_qemu $g dirtybitmap > got
expect_map want got "ondemand default export"
grep -q "export 'other' is served read-only" log2 || { cat log2; fail "ondemand note"; }

# A repeated note is rate-limited: 20 clients, at most 5 lines.
serve_fg log3 s3.sock memory 1M bitmap-file=$PWD/m.qcow2
for i in $(seq 20); do
    nbdsh -u "nbd+unix:///x?socket=$PWD/s3.sock" -c 'assert h.is_read_only()'
done
stop_server $SERVER_PID
n=$(grep -c "export 'x' is served read-only" log3)
[ "$n" -ge 1 ] && [ "$n" -le 5 ] || { cat log3; fail "$n notes for 20 clients"; }
echo OK
