#!/usr/bin/env bash
# Proves each dirtybitmap subcommand does what its --help says, that QEMU
# reads every file it writes (qemu-img check exit 0, info shows the
# bitmaps with the right granularity and flags), and that usage errors exit
# 2 with a one-line message naming the option.
source "$srcdir/functions.sh"
requires qemu-img --version
D=$DIRTYBITMAP

$D --help | grep -q "Commands:" || fail "--help"
for c in info map check create add remove clear enable disable convert \
         recover status checkpoint persist; do
    $D $c --help | grep -q "^Usage: dirtybitmap $c" || fail "$c --help"
done
# The main --help lists every option of every command: each command's
# entry there (continuation lines included) names the same options as the
# usage line of 'dirtybitmap COMMAND --help', and the command takes each.
$D --help > help.txt
grep -q -- "--version" help.txt || fail "--help does not mention --version"
for c in $(awk '/^  [a-z]/ { print $1 }' help.txt | sort -u); do
    $D $c --help > chelp.txt || fail "$c --help: exit $?"
    main=$(awk -v c="$c" '/^  [a-z]/ { on = ($1 == c) } /^$/ { on = 0 } on' help.txt |
           { grep -Eo -- '--[a-z][a-z0-9-]*' || true; } | sort -u | tr '\n' ' ')
    own=$(awk '/^Usage: / { on = 1 } on && /^$/ { exit } on' chelp.txt |
          { grep -Eo -- '--[a-z][a-z0-9-]*' || true; } | sort -u | tr '\n' ' ')
    [ "$main" = "$own" ] ||
        fail "$c: 'dirtybitmap --help' lists '$main', '$c --help' '$own'"
    for opt in $own; do
        $D $c $opt --help > /dev/null 2>&1 ||
            $D $c "$opt=x" --help > /dev/null 2>&1 ||
            fail "$c does not take $opt, which its --help lists"
    done
done
$D remove --help | grep -q "SOCKET" || fail "remove --help: no SOCKET form"

# Control-socket commands without a server: exit 1, the cause named;
# a name that cannot travel as one word: usage error (2).
set +e
$D status $PWD/nosuch.ctl 2> err; rc=$?
set -e
[ $rc = 1 ] || fail "status without a server: exit $rc"
grep -q "nosuch.ctl: connect: No such file or directory (is nbdkit running with bitmap-control=" err ||
    fail "status without a server: $(cat err)"
set +e
$D checkpoint $PWD/nosuch.ctl "two words" 2> err; rc=$?
set -e
[ $rc = 2 ] || fail "checkpoint 'two words': exit $rc"
grep -q "checkpoint: the bitmap name has a blank or control character at offset 3 (names are one word)" err ||
    fail "checkpoint blank name: $(cat err)"
# One rule for the names we create: blanks, control characters and
# bytes that are not UTF-8 are refused by create and add too.
for bad in "a b" $'esc\x1b[0m' $'\xc3\x28'; do
    rm -f n.qcow2
    set +e
    $D create n.qcow2 --size 1M --name "$bad" 2> err; rc=$?
    set -e
    [ $rc = 2 ] && [ ! -e n.qcow2 ] || fail "create --name '$bad': exit $rc"
    grep -q -- "--name: the bitmap name" err || fail "create: $(cat err)"
done
$D create n.qcow2 --size 1M --name "ünïcødé"
set +e
$D add n.qcow2 "x y" 2> err; rc=$?
set -e
[ $rc = 2 ] || fail "add 'x y': exit $rc"
grep -q "add: the bitmap name has a blank" err || fail "add: $(cat err)"
# A name another tool wrote with any bytes: JSON stays valid, terminals
# see no raw control characters.
qemu-img bitmap --add n.qcow2 $'odd\x1b\xffname'
$D info n.qcow2 --json > n.json
"$PYTHON" -c 'import json,sys; b=[x["name"] for x in json.load(open(sys.argv[1]))["bitmaps"]]; assert "odd\x1b\ufffdname" in b, b' n.json ||
    fail "info --json with an odd name: $(cat n.json)"
$D info n.qcow2 > n.txt
grep -q 'odd\\x1b\\xffname' n.txt || fail "info text: $(cat -v n.txt)"
! grep -q $'\x1b' n.txt || fail "a raw ESC reached the terminal"

$D create a.qcow2 --size 10G --granularity 4K --name first
qemu_check a.qcow2
qemu-img info --output=json a.qcow2 > info.json
json_check '[(b["name"], b["granularity"], b["flags"])
             for b in j["format-specific"]["data"]["bitmaps"]]
            == [("first", 4096, ["auto"])]' < info.json ||
    fail "bitmap first (granularity 4096, auto) not seen by qemu"
[ "$(stat -c %s a.qcow2)" -gt 0 ] || fail "empty file"

# Refuses to overwrite, and leaves the file as it was.
sum=$(md5sum < a.qcow2)
$D create a.qcow2 --size 1G && fail "create overwrote a file"
[ "$(md5sum < a.qcow2)" = "$sum" ] || fail "failed create modified the file"

# add / disable / enable / remove, each checked by qemu.
$D add a.qcow2 second --granularity 1M --disabled
qemu_check a.qcow2
qemu-img info --output=json a.qcow2 | /usr/bin/python3 -c '
import json, sys
bm = {b["name"]: b for b in json.load(sys.stdin)["format-specific"]["data"]["bitmaps"]}
assert bm["second"]["granularity"] == 1048576, bm
assert bm["second"]["flags"] == [], bm
assert bm["first"]["flags"] == ["auto"], bm
'
$D enable a.qcow2 second
qemu_check a.qcow2
qemu-img info --output=json a.qcow2 |
    json_check '{b["name"]: b["flags"] for b in j["format-specific"]["data"]["bitmaps"]}
                == {"first": ["auto"], "second": ["auto"]}' ||
    fail "enable: qemu does not see second enabled (auto)"
$D info a.qcow2 | grep -q "second: granularity 1048576, flags auto" || fail "enable"
$D disable a.qcow2 first
$D info a.qcow2 | grep -q "first: granularity 4096, flags -" || fail "disable"
$D add a.qcow2 first && fail "duplicate name accepted"
$D remove a.qcow2 second
qemu_check a.qcow2
$D info a.qcow2 | grep -q "bitmaps: 1" || fail "remove"
$D remove a.qcow2 nosuch 2> err && fail "remove of a missing bitmap"
grep -q "no bitmap named 'nosuch'" err || fail "missing-bitmap message"

# Dirty bits from QEMU (merged from a scratch image), then clear.
qemu-img create -q -f qcow2 s.qcow2 10G
qemu-img bitmap --add s.qcow2 s
qemu-io -f qcow2 -c 'write 0 64k' -c 'write 1M 130k' -c 'write 768M 4k' s.qcow2 >/dev/null
qemu-img bitmap --enable a.qcow2 first
qemu-img bitmap --merge s -b s.qcow2 -F qcow2 a.qcow2 first
qemu_check a.qcow2
printf '0 65536\n1048576 196608\n805306368 65536\n' > want
map_ours a.qcow2 first > got
expect_map want got "map after qemu merge"
$D map a.qcow2 first --json | /usr/bin/python3 -c '
import json, sys
ext = json.load(sys.stdin)
assert ext[0] == {"offset": 0, "length": 65536, "dirty": True, "zero": False}, ext[0]
assert sum(e["length"] for e in ext) == 10 << 30
assert all((a["dirty"], a["zero"]) != (b["dirty"], b["zero"]) for a, b in zip(ext, ext[1:]))  # merged
assert all(a["offset"] + a["length"] == b["offset"] for a, b in zip(ext, ext[1:]))
'
$D info a.qcow2 --json | /usr/bin/python3 -c '
import json, sys
i = json.load(sys.stdin)
b = i["bitmaps"][0]
assert b["dirty_bytes"] == 65536 + 196608 + 65536, b
assert i["virtual_size"] == 10 << 30 and i["cluster_size"] == 65536
'
$D clear a.qcow2 first
qemu_check a.qcow2
[ -z "$(map_ours a.qcow2 first)" ] || fail "clear left dirty bits"

# Edits through a symlink update the target and keep the link.
ln -s a.qcow2 link.qcow2
$D add link.qcow2 vialink
[ -L link.qcow2 ] || fail "edit replaced the symlink"
$D info a.qcow2 | grep -q "vialink" || fail "edit through symlink lost"

# Sizes with suffixes; rounding up to 512.
$D create b.qcow2 --size 1000 --granularity 512
$D info b.qcow2 | grep -q "virtual size: 1024" || fail "size not rounded up to 512"
qemu_check b.qcow2
$D create c.qcow2 --size 1T --cluster-size 4K
qemu_check c.qcow2

# Usage errors: exit 2, one line naming the option.
set +e
$D create d.qcow2 --size 10X 2> err; [ $? -eq 2 ] || fail "bad unit exit code"
grep -q -- "--size: '10X' has an unknown unit" err || fail "bad unit message"
$D create d.qcow2 --size 1G --granularity 3000 2> err; [ $? -eq 2 ] || fail "gran exit"
grep -q -- "--granularity: 3000 is not a power of two" err || fail "gran message"
$D create d.qcow2 --size 1G --granularity 256 2> err; [ $? -eq 2 ] || fail "gran range"
grep -q -- "--granularity: 256 is outside 512\.\." err || fail "gran range message: $(cat err)"
[ "$(wc -l < err)" = 1 ] || fail "gran range: not one line: $(cat err)"
$D create g.qcow2 --size 1M --granularity 256 2> err; [ $? -eq 2 ] || fail "1M at 256: exit"
[ "$(wc -l < err)" = 1 ] && grep -q -- "--granularity" err || fail "1M at 256: $(cat err)"
[ ! -e g.qcow2 ] || fail "create --granularity 256 left a file"
$D add a.qcow2 fine --granularity 256 2> err; [ $? -eq 2 ] || fail "add at 256: exit"
grep -q -- "--granularity: 256 is outside" err || fail "add at 256: $(cat err)"
$D create d.qcow2 2> err; [ $? -eq 2 ] || fail "missing --size exit"
$D info 2> err; [ $? -eq 2 ] || fail "missing FILE exit"
$D frobnicate 2> err; [ $? -eq 2 ] || fail "unknown command exit"
$D info a.qcow2 --bogus 2> err; [ $? -eq 2 ] || fail "unknown option exit"
$D create d.qcow2 --size 300T 2> err; [ $? -eq 1 ] || fail "300T at 64K accepted"
grep -q "larger granularity" err || fail "300T message"
set -e
[ ! -e d.qcow2 ] || fail "failed create left a file"
# check: its findings are its output (stdout), the valid file's report
# too; a file it cannot look at is an error like any command's (stderr,
# prefixed, one line).
$D check a.qcow2 > out 2> err || fail "check a.qcow2: exit $?"
[ "$(cat out)" = "a.qcow2: no errors found" ] && [ ! -s err ] ||
    fail "check of a valid file: stdout '$(cat out)', stderr '$(cat err)'"
set +e
$D check nosuch.qcow2 > out 2> err; rc=$?
set -e
[ $rc = 1 ] && [ ! -s out ] && [ "$(wc -l < err)" = 1 ] &&
    grep -qx "dirtybitmap: nosuch.qcow2: open: No such file or directory" err ||
    fail "check of a missing file: exit $rc, stdout '$(cat out)', stderr '$(cat err)'"
printf 'junk' > junk.qcow2
set +e
$D check junk.qcow2 > out 2> err; rc=$?
set -e
[ $rc = 1 ] && [ ! -s err ] && grep -q "^junk.qcow2: file is 4 bytes, too short" out ||
    fail "check of an invalid file: exit $rc, stdout '$(cat out)', stderr '$(cat err)'"
# info draws each bitmap's dirty density across the disk: 64 slices,
# ' ' clean to '@' all dirty; a slice with any dirty bit is never blank.
rm -f strip.qcow2
$D create strip.qcow2 --size 64M
qemu-io -f qcow2 strip.qcow2 -c 'write 0 32M' -c 'write 60M 64K' > /dev/null
want="    [$(printf '@%.0s' $(seq 32))$(printf ' %.0s' $(seq 28)).   ]"
$D info strip.qcow2 | grep -qxF -- "$want" || fail "density strip: $($D info strip.qcow2)"
echo OK
