#!/usr/bin/env bash
# Proves the README's first steps work when followed literally.  The
# command blocks between "<!-- test-readme: begin NAME -->" and
# "<!-- test-readme: end NAME -->" in README.md are read from it now and
# run, one command at a time, as a newcomer would: in a fresh copy of the
# sources (the files git tracks, as they are in the work tree), with a
# clean environment (PATH=/usr/bin:/usr/sbin:/bin:/sbin, no make or test
# variables):
#   quickstart    ./quickstart.sh demo: install (nothing is missing, or
#                 the test skips), build from scratch, run the demo;
#   first-export  create disk.img, serve it through the filter, write, stop
#                 (twice: it must work again in the same directory);
#   reading       read the bitmap with qemu-nbd -B + nbdinfo --map and with
#                 dirtybitmap map, merge it into a qcow2 with qemu-img.
# Only what must differ in a sandbox is substituted:
#   - /tmp/ becomes this test's private directory (sockets, pid file);
#   - --filter=dirtybitmap and the dirtybitmap command become the names
#     the README gives before 'make install' (checked to be in it);
#   - ./quickstart.sh check is not run: it is the test suite running this.
# Then: the bitmap, read by each README command, holds exactly the 64K
# granules of disk.img that are not zero (the disk was new, so those
# are what the README's client wrote); the merged bitmap in disk.qcow2
# too; qemu-img check passes; after each block no process started by it
# is left.
source "$srcdir/functions.sh"
requires git --version
requires qemu-img --version
requires command -v nbdinfo
top=$(cd "$srcdir/.." && pwd)
readme=$top/README.md
[ -f "$readme" ] || fail "$readme: no such file"
requires git -C "$top" rev-parse --is-inside-work-tree

# quickstart.sh installs what is missing with apt-get: here everything
# must be installed already.
all_installed () {
    local p
    for p in $(sed -n '/^PACKAGES="/,/"$/p' "$top/quickstart.sh" |
               sed 's/^PACKAGES="//; s/"$//'); do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
            return 1
    done
}
requires all_installed

# The names the README gives before 'make install'.
pre_filter='--filter=$PWD/.libs/nbdkit-dirtybitmap-filter.so'
grep -qF -- "$pre_filter" "$readme" || fail "README no longer says $pre_filter"
grep -qF -- '`./dirtybitmap`' "$readme" || fail "README no longer says ./dirtybitmap"

# The commands of block NAME, one per line (continuations joined, lines
# that are only a comment dropped).
block () {
    awk -v b="<!-- test-readme: begin $1 -->" -v e="<!-- test-readme: end $1 -->" '
        $0 == b { on = 1; next }
        $0 == e { on = 0; next }
        on && /^```/ { next }
        on && /^[ \t]*(#|$)/ { next }
        on { line = line $0
             if (sub(/\\$/, "", line)) next
             print line; line = "" }' "$readme"
}

# Processes whose command line names this test's directory (everything
# the README's commands start has it: the filter's path, a socket).
sandbox_pids () {
    local p c
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" != $$ ] || continue
        { c=$(tr '\0' ' ' < "$p/cmdline"); } 2>/dev/null || continue
        [[ $c == *"$tmpdir"* ]] && echo "${p#/proc/}"
    done
    return 0
}
kill_sandbox () {
    local pid
    for pid in $(sandbox_pids); do kill_nbdkit "$pid"; done
}
cleanup_fn kill_sandbox

src=$tmpdir/src
mkdir "$src"
git -C "$top" ls-files -z | while IFS= read -r -d '' f; do
    [ -e "$top/$f" ] && printf '%s\0' "$f"
done | tar -C "$top" --null -T - -cf - | tar -C "$src" -xf -
[ -x "$src/quickstart.sh" ] || fail "the copy of the sources has no quickstart.sh"

# run_block NAME: run its commands in $src; the output of command N is
# out.NAME.N, and cmds.NAME lists "N<TAB>command as written".  Afterwards
# every process the block started must exit (at most 60 s: 'kill' only
# asks nbdkit to stop, and the README says to read once it has stopped).
run_block () {
    local name=$1 n=0 cmd run i
    : > "cmds.$name"
    while IFS= read -r cmd; do
        n=$((n + 1))
        printf '%s\t%s\n' $n "$cmd" >> "cmds.$name"
        if [[ $cmd == "./quickstart.sh check" ||
              $cmd == "./quickstart.sh check "* ]]; then
            echo "not run (it is this test suite): $cmd"
            continue
        fi
        run=${cmd//\/tmp\//$tmpdir/}
        run=${run//--filter=dirtybitmap /$pre_filter }
        [[ $run == "dirtybitmap "* ]] && run=./$run
        echo "+ $run"
        ( cd "$src" && env -i HOME="$HOME" PATH=/usr/bin:/usr/sbin:/bin:/sbin \
              LANG=C.UTF-8 bash -c "$run" ) > "out.$name.$n" 2>&1 < /dev/null ||
            { cat "out.$name.$n"; fail "README block $name, command $n failed: $cmd"; }
    done < <(block "$name")
    [ "$n" -gt 0 ] || fail "README.md has no block $name"
    for (( i=0; i<600; i++ )); do
        [ -z "$(sandbox_pids)" ] && return 0
        sleep 0.1
    done
    ps -o pid,args -p "$(sandbox_pids | xargs | tr ' ' ,)" >&2 || true
    fail "README block $name left processes running"
}

# out_of NAME TEXT: the output of the first command of block NAME whose
# text (as written) contains TEXT.
out_of () {
    local n
    n=$(awk -F '\t' -v t="$2" 'index($2, t) { print $1; exit }' "cmds.$1")
    [ -n "$n" ] || fail "README block $1 has no command with '$2'"
    echo "out.$1.$n"
}

run_block quickstart
[ -f "$src/.libs/nbdkit-dirtybitmap-filter.so" ] && [ -x "$src/dirtybitmap" ] ||
    fail "./quickstart.sh demo did not build the filter and the command"
grep -q "No errors were found on the image" "$(out_of quickstart 'quickstart.sh demo')" ||
    fail "./quickstart.sh demo did not show the bitmap file checked"

run_block first-export
[ -f "$src/disk.bitmaps.qcow2" ] || fail "first-export made no bitmap file"
# A newcomer runs it again (and the backup section serves the same
# socket path next): it must work a second time.
run_block first-export

# The oracle: the 64K granules of disk.img that are not zero.
"$PYTHON" - "$src/disk.img" > want <<'EOF'
import sys
g, s, i = 65536, [], 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(g)
        if not b:
            break
        if b.count(0) != len(b):
            if s and s[-1][0] + s[-1][1] == i * g:
                s[-1][1] += g
            else:
                s.append([i * g, g])
        i += 1
for o, n in s:
    print(o, n)
EOF
[ -s want ] || fail "the README's client wrote nothing to disk.img"

run_block reading
awk '$3 == 1 { print $1, $2 }' "$(out_of reading 'nbdinfo --map')" > got.nbdinfo
expect_map want got.nbdinfo "README: qemu-nbd -B + nbdinfo --map"
awk '$3 == "dirty" { print $1, $2 }' "$(out_of reading 'dirtybitmap map')" > got.map
expect_map want got.map "README: dirtybitmap map"
"$PYTHON" -c '
import json, sys
for e in json.load(open(sys.argv[1])):
    if e["dirty"]:
        print(e["offset"], e["length"])' "$(out_of reading '--json')" > got.json
expect_map want got.json "README: dirtybitmap map --json"
qemu_check "$src/disk.bitmaps.qcow2"
map_qemu "$src/disk.qcow2" target > got.merged
expect_map want got.merged "README: the bitmap merged into disk.qcow2"
[ -z "$(sandbox_pids)" ] || fail "processes left: $(sandbox_pids | xargs)"
echo "OK: $(wc -l < want) dirty extent(s), read 4 ways"
