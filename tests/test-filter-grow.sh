#!/usr/bin/env bash
# Export growth: a connection that sees a larger export than the file
# grows the file and every bitmap, the new area dirty, while another
# connection keeps writing (each of its writes stays covered).  Also
# between runs, in both modes and both layouts.  Shrinking is refused and
# leaves the file as it was.
source "$srcdir/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" -c "import nbd"
D=$DIRTYBITMAP
M=$((1 << 20))

for mode in crash-safe qemu; do
    rm -f disk.img b.qcow2 ctl
    truncate -s 64M disk.img
    start_nbdkit pid.$mode sock.$mode file disk.img bitmap-file=$PWD/b.qcow2 \
        bitmap-control=$PWD/ctl bitmap-mode=$mode
    uri="nbd+unix:///?socket=$PWD/sock.$mode"
    # Writer on an old connection (64M) throughout; a new connection after
    # the file grew to 96M triggers the growth; then a checkpoint and a
    # second growth to 128M, which must grow the disabled bitmap too.
    "$PYTHON" - "$uri" <<'EOF' > writes.$mode || fail "$mode: workload"
import nbd, os, random, sys, threading, time, subprocess
uri = sys.argv[1]
old = nbd.NBD(); old.connect_uri(uri)
stop = False
log = []
def writer():
    rng = random.Random(7)
    while not stop:
        off = rng.randrange(0, (64 << 20) - 4096)
        old.pwrite(b"w" * 4096, off)
        log.append((off, 4096))
t = threading.Thread(target=writer); t.start()
time.sleep(0.3)
os.truncate("disk.img", 96 << 20)
new = nbd.NBD(); new.connect_uri(uri)
assert new.get_size() == 96 << 20
new.pwrite(b"n" * 512, (96 << 20) - 512)
log.append(((96 << 20) - 512, 512))
time.sleep(0.3)
subprocess.check_call([os.environ["DIRTYBITMAP"], "checkpoint", "ctl", "c1"])
os.truncate("disk.img", 128 << 20)
third = nbd.NBD(); third.connect_uri(uri)
time.sleep(0.3)
stop = True; t.join()
for h in (old, new, third):
    h.shutdown()
for off, n in log:
    print(off, n)
EOF
    kill_nbdkit "$(cat pid.$mode)"
    qemu_check b.qcow2
    # The top-level virtual-size (QEMU 8+ also lists the file child's).
    vs=$(qemu-img info --output=json b.qcow2 | json_get 'j["virtual-size"]')
    [ "$vs" = 134217728 ] || fail "$mode: virtual size $vs, not grown to 128M"
    # Before the checkpoint: dirtybitmap; after: c1.  Every write is in
    # their union; each bitmap has the grown areas dirty.
    map_ours b.qcow2 dirtybitmap > m1
    map_ours b.qcow2 c1 > m2
    "$PYTHON" - writes.$mode m1 m2 <<'EOF' || fail "$mode: a write was lost across growth"
import sys
def ext(p):
    return [tuple(map(int, l.split())) for l in open(p)]
maps = [ext(sys.argv[2]), ext(sys.argv[3])]
def inside(m, o, n):
    return any(a <= o and o + n <= a + l for a, l in m)
w = set(ext(sys.argv[1]))
lost = [x for x in w if not any(inside(m, *x) for m in maps)]
print("%d writes, %d lost" % (len(w), len(lost)), lost[:5])
sys.exit(1 if lost else 0)
EOF
    covers <(map_ours b.qcow2 dirtybitmap) $((64 * M)) $((32 * M)) ||
        fail "$mode: first grown area not dirty in dirtybitmap"
    covers <(map_ours b.qcow2 dirtybitmap) $((96 * M)) $((32 * M)) ||
        fail "$mode: disabled bitmap not grown with the area dirty"
    covers <(map_qemu b.qcow2 c1) $((96 * M)) $((32 * M)) ||
        fail "$mode: second grown area not dirty in c1 (qemu-nbd)"
    ! covers <(map_ours b.qcow2 c1) $((64 * M)) $((32 * M)) ||
        fail "$mode: c1 should not have the first grown area all dirty"
done

# Between runs, and in the draft layout.
rm -f disk.img b.qcow2
truncate -s 8M disk.img
"$NBDKIT" -U - --filter="$FILTER" file disk.img bitmap-file=$PWD/d.qcow2 \
    bitmap-format=draft-2015 --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\", 0)"'
truncate -s 16M disk.img
"$NBDKIT" -U - --filter="$FILTER" file disk.img bitmap-file=$PWD/d.qcow2 \
    bitmap-format=draft-2015 --run 'nbdsh -u "$uri" -c "pass"'
$D info d.qcow2 | grep -q "dirtybitmap: .*size 16777216" ||
    { $D info d.qcow2; fail "draft bitmap not grown"; }
[ "$(map_ours d.qcow2 dirtybitmap)" = "$(printf '0 65536\n8388608 8388608')" ] ||
    fail "draft: grown map $(map_ours d.qcow2 dirtybitmap)"

# Shrinking: refused per connection, the file untouched.
truncate -s 4M disk.img
sum=$(md5sum < d.qcow2)
"$NBDKIT" -U - --filter="$FILTER" file disk.img bitmap-file=$PWD/d.qcow2 \
    bitmap-format=draft-2015 --run 'nbdsh -u "$uri" -c "pass"' > out 2>&1 &&
    fail "shrink accepted"
grep -q "export size 4194304 (rounded up to 4194304) is smaller than the size 16777216 of bitmap 'dirtybitmap' in the file: shrinking is not supported" out ||
    { cat out; fail "shrink message"; }
[ "$(md5sum < d.qcow2)" = "$sum" ] || fail "refused shrink modified the file"

# Growth beyond what a bitmap of its granularity can hold (512 bytes: at
# most 2 TiB): refused per connection with the reason, file untouched,
# and nothing kept from the failed attempt (it is retried every time).
rm -f g.img g.qcow2
truncate -s 1M g.img
$D create g.qcow2 --size 1M --granularity 512
truncate -s 4T g.img
for i in 1 2 3; do
    "$NBDKIT" -U - --filter="$FILTER" file g.img bitmap-file=$PWD/g.qcow2 \
        --run 'nbdsh -u "$uri" -c "pass"' > out 2>&1 && fail "impossible growth accepted"
done
grep -q "granularity 512 is too fine for a 4398046511104-byte disk" out ||
    { cat out; fail "impossible growth: message"; }
# (The first client still brought the file into use: canonical layout,
# running state; the bitmap itself is unchanged.)
qemu_check g.qcow2
[ "$(qemu-img info --output=json g.qcow2 | json_get 'j["virtual-size"]')" = 1048576 ] ||
    fail "a refused growth changed the virtual size"
[ -z "$(map_ours g.qcow2 dirtybitmap)" ] || fail "a refused growth marked bits"
echo OK
