#!/usr/bin/env bash
# dirtybitmap serve: one standard NBD endpoint (qemu-nbd) with the data of
# a snapshot, base:allocation and qemu:dirty-bitmap:<frozen bitmap>, read
# by stock clients while the export keeps taking writes:
#   - nbdinfo --map=qemu:dirty-bitmap:B equals the frozen bitmap's map
#     (dirtybitmap map) and covers every write before the cut;
#   - qemu-img map with x-dirty-bitmap says the same;
#   - a libnbd copier that reads only the dirty extents gets the bytes
#     of the cut, though the export was rewritten after it;
#   - release stops the endpoint (serve exits 0, the socket goes);
#   - no such snapshot, a bad --from, missing options: clear errors.
source "$srcdir/functions.sh"
requires qemu-nbd --version
requires nbdinfo --version
requires qemu-img --version
requires "$PYTHON" -c "import nbd"
D=$DIRTYBITMAP

truncate -s 64M disk.img
start_nbdkit pid sock file disk.img bitmap-file=$PWD/b.qcow2 \
    bitmap-control=$PWD/ctl
uri="nbd+unix:///?socket=$PWD/sock"

# Writes before the cut (the oracle: what the snapshot and the frozen
# bitmap must hold), the cut with a snapshot, then writes after it.
"$PYTHON" - "$uri" <<'PY'
import json, random, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
rnd = random.Random(7)
before = {}
for i in range(60):
    off = rnd.randrange(0, (64 << 20) // 4096) * 4096
    n = rnd.choice([4096, 65536, 200000])
    n = min(n, (64 << 20) - off)
    data = bytes([i + 1]) * n
    h.pwrite(data, off)
    before[off] = n
json.dump(sorted(before.items()), open("before.json", "w"))
PY
$D checkpoint ctl bk-1 --snapshot || fail "checkpoint with snapshot"
cp disk.img cut.img          # the plugin's file at the cut (nothing wrote since)
"$PYTHON" - "$uri" <<'PY'
import json, sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for off, n in json.load(open("before.json")):  # after the cut, over all
    h.pwrite(b"\xee" * n, off)
PY

$D serve ctl bk-1 --from "$uri" --socket $PWD/q.sock > serve.out 2> serve.err &
spid=$!
cleanup_fn "kill $spid 2>/dev/null"
for i in $(seq 300); do [ -s serve.out ] && break; sleep 0.1; done
[ -s serve.out ] || { cat serve.err; fail "serve did not come up"; }
"$PYTHON" - serve.out <<'PY' || fail "serve's line: $(cat serve.out)"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["contexts"] == ["base:allocation", "qemu:dirty-bitmap:dirtybitmap"], j
assert j["uri"].endswith("q.sock"), j
PY
q="nbd+unix:///?socket=$PWD/q.sock"

# The bitmap through qemu-nbd equals ours and covers every write before.
nbdinfo --map=qemu:dirty-bitmap:dirtybitmap "$q" |
    awk '$3 == 1 { print $1, $2 }' > map.nbd
$D map b.qcow2 dirtybitmap | awk '$3 == "dirty" { print $1, $2 }' > map.ours
cmp map.nbd map.ours || fail "qemu-nbd's map differs from dirtybitmap map"
[ -s map.ours ] || fail "empty map"
"$PYTHON" - <<'PY' || fail "a write before the cut missing from the map"
import json
ext = [tuple(map(int, l.split())) for l in open("map.ours")]
for off, n in json.load(open("before.json")):
    for b in range(off // 65536, (off + n - 1) // 65536 + 1):
        assert any(a <= b * 65536 < a + l for a, l in ext), (off, n)
PY
qemu-img map --output=json --image-opts \
    "driver=nbd,server.type=unix,server.path=$PWD/q.sock,x-dirty-bitmap=qemu:dirty-bitmap:dirtybitmap" \
    > qmap.json
"$PYTHON" - qmap.json <<'PY' || fail "qemu-img map (x-dirty-bitmap) differs"
import json, sys
# x-dirty-bitmap reports dirty ranges as "data": false.
got = [(e["start"], e["length"]) for e in json.load(open(sys.argv[1]))
       if not e["data"]]
want = [tuple(map(int, l.split())) for l in open("map.ours")]
assert got == want, (got[:5], want[:5])
PY

# A copier for QEMU-style agents: dirty extents only, from one endpoint.
"$PYTHON" - "$q" <<'PY' || fail "copier read other bytes than the cut's"
import sys, nbd
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:dirtybitmap")
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.can_meta_context("qemu:dirty-bitmap:dirtybitmap")
size = h.get_size()
dirty = []
end = [0]
def cb(meta, off, ents, err):
    if meta != "qemu:dirty-bitmap:dirtybitmap":
        return 0
    for i in range(0, len(ents), 2):
        if ents[i + 1] & 1:
            dirty.append((off, ents[i]))
        off += ents[i]
    end[0] = off
    return 0
while end[0] < size:
    h.block_status(min(size - end[0], 1 << 30), end[0], cb)
cut = open("cut.img", "rb")
copied = 0
for off, n in dirty:
    data = h.pread(n, off)
    cut.seek(off)
    assert data == cut.read(n), off
    copied += n
print("copied %d dirty bytes, all as at the cut" % copied)
PY

# Release: the endpoint stops.
$D release ctl bk-1 || fail "release"
for i in $(seq 100); do kill -0 $spid 2>/dev/null || break; sleep 0.1; done
kill -0 $spid 2>/dev/null && fail "serve still running after release"
wait $spid || fail "serve exit status $? after release"
grep -q "released" serve.err || fail "serve said: $(cat serve.err)"
[ ! -e q.sock ] || fail "qemu-nbd's socket left behind"

# Errors.
$D serve ctl nosuch --from "$uri" --socket $PWD/q2.sock 2> err &&
    fail "served a missing snapshot"
grep -q "no live snapshot named nosuch" err || fail "missing: $(cat err)"
$D checkpoint ctl bk-2 --snapshot
$D serve ctl bk-2 --from "http://x" --socket $PWD/q2.sock 2> err &&
    fail "accepted a bad --from"
grep -q -- "--from http://x: expected" err || fail "bad from: $(cat err)"
rc=0; $D serve ctl bk-2 --socket $PWD/q2.sock 2> err || rc=$?
[ $rc -eq 2 ] || fail "missing --from: exit $rc, not a usage error"
grep -q "needs --from" err || fail "usage: $(cat err)"
# nbdkit told to quit waits for its clients: serve lets qemu-nbd go, so
# that nbdkit can finish.
$D serve ctl bk-2 --from "$uri" --socket $PWD/q3.sock > serve3.out 2> serve3.err &
spid=$!
cleanup_fn "kill $spid 2>/dev/null"
for i in $(seq 300); do [ -s serve3.out ] && break; sleep 0.1; done
[ -s serve3.out ] || { cat serve3.err; fail "serve did not come up"; }
kill "$(cat pid)"
for i in $(seq 300); do kill -0 "$(cat pid)" 2>/dev/null || break; sleep 0.1; done
kill -0 "$(cat pid)" 2>/dev/null && fail "nbdkit still waiting for serve's qemu-nbd"
rc=0; wait $spid || rc=$?
[ $rc = 1 ] || fail "serve exit $rc when nbdkit quit"
grep -q "nbdkit is shutting down" serve3.err || fail "serve: $(cat serve3.err)"
echo OK
