#!/usr/bin/env bash
# Proves what rewrites do to the user's file: 'create' and 'convert' never
# overwrite anything (a file we cannot read, a dangling link), a new file
# gets 0666 less the umask, a rewrite (by the CLI or by a checkpoint of
# the filter) keeps mode, owner and group, a file with several hard links
# is refused with a clear error and left intact, and no descriptor of the
# bitmap file leaks into a plugin's child processes.
source "$srcdir/functions.sh"
requires "$NBDKIT" --version
requires qemu-img --version
requires nbdsh -c 'exit(0)'
D=$DIRTYBITMAP

# create / convert: never overwrite.
echo precious > secret.qcow2
chmod 0200 secret.qcow2                # not readable, even by fopen("r")
sum=$(md5sum < secret.qcow2)
set +e; $D create secret.qcow2 --size 1G 2> err; rc=$?; set -e
[ $rc -eq 1 ] || fail "create over an existing file: exit $rc"
grep -q "secret.qcow2: file exists, not overwriting" err || { cat err; fail "create: message"; }
[ "$(md5sum < secret.qcow2)" = "$sum" ] || fail "create overwrote a mode-0200 file"
ln -s $PWD/nowhere dangling.qcow2
$D create dangling.qcow2 --size 1G 2> err && fail "create through a dangling link"
[ -L dangling.qcow2 ] && [ ! -e nowhere ] || fail "create replaced or followed a dangling link"
$D create src.qcow2 --size 1G
set +e; $D convert src.qcow2 secret.qcow2 --to draft-2015 2> err; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "file exists, not overwriting" err || { cat err; fail "convert overwrote"; }
[ "$(md5sum < secret.qcow2)" = "$sum" ] || fail "convert overwrote a mode-0200 file"
# Two creates racing for one name: exactly one wins, the other is refused.
for i in $(seq 20); do
    rm -f race.qcow2
    ( set +e; $D create race.qcow2 --size 1G --name a 2>/dev/null; echo $? > ra ) &
    ( set +e; $D create race.qcow2 --size 1G --name b 2>/dev/null; echo $? > rb ) &
    wait
    [ "$(cat ra)$(cat rb)" = 01 ] || [ "$(cat ra)$(cat rb)" = 10 ] ||
        fail "racing creates: exit codes $(cat ra) $(cat rb)"
    qemu_check race.qcow2
done

# A new file honours the umask.
( umask 077; $D create u077.qcow2 --size 1G )
[ "$(stat -c %a u077.qcow2)" = 600 ] || fail "umask 077: mode $(stat -c %a u077.qcow2)"
( umask 022; $D create u022.qcow2 --size 1G )
[ "$(stat -c %a u022.qcow2)" = 644 ] || fail "umask 022: mode $(stat -c %a u022.qcow2)"
# One the filter creates is 0600: nbdkit sets its umask to 0022 before it
# loads filters, so the user's umask is unknown there (documented).
( umask 027; "$NBDKIT" -U - --filter="$FILTER" memory 1G \
      bitmap-file=$PWD/f027.qcow2 --run 'nbdsh -u "$uri" -c pass' )
[ "$(stat -c %a f027.qcow2)" = 600 ] || fail "filter-created file: mode $(stat -c %a f027.qcow2)"

# A rewrite keeps mode, owner and group (root can give a file away).
$D create own.qcow2 --size 1G
chmod 0604 own.qcow2
if [ "$(id -u)" = 0 ] && chown nobody:nogroup own.qcow2 2>/dev/null; then
    want_owner="nobody:nogroup"
else
    [ "${CI:-}" = true ] && fail "CI runs as root: chown must work"
    want_owner="$(stat -c %U:%G own.qcow2)"
fi
ino=$(stat -c %i own.qcow2)
$D add own.qcow2 second                # a CLI rewrite
[ "$(stat -c %i own.qcow2)" != "$ino" ] || fail "add did not rewrite (test assumption)"
[ "$(stat -c %a own.qcow2)" = 604 ] || fail "CLI rewrite changed the mode to $(stat -c %a own.qcow2)"
[ "$(stat -c %U:%G own.qcow2)" = "$want_owner" ] || fail "CLI rewrite changed the owner to $(stat -c %U:%G own.qcow2)"
# A checkpoint rewrite by the filter.
start_nbdkit pid sock memory 1G bitmap-file=$PWD/own.qcow2 bitmap-control=$PWD/ctl
nbdsh -u "nbd+unix:///?socket=$PWD/sock" -c 'h.pwrite(b"x" * 512, 0)'
$D checkpoint ctl c1 > /dev/null
[ "$(stat -c %a own.qcow2)" = 604 ] || fail "checkpoint changed the mode to $(stat -c %a own.qcow2)"
[ "$(stat -c %U:%G own.qcow2)" = "$want_owner" ] || fail "checkpoint changed the owner to $(stat -c %U:%G own.qcow2)"
kill_nbdkit "$(cat pid)"
qemu_check own.qcow2

# Hard links: a rewrite would split them, so it is refused, files intact.
$D create hl.qcow2 --size 1G
ln hl.qcow2 hl-link.qcow2
sum=$(md5sum < hl.qcow2)
set +e; $D add hl.qcow2 second 2> err; rc=$?; set -e
[ $rc -eq 1 ] && grep -q "hl.qcow2: the file has 2 hard links" err || { cat err; fail "CLI rewrite of a hard-linked file"; }
[ "$(stat -c %h hl.qcow2)" = 2 ] && [ "$(md5sum < hl-link.qcow2)" = "$sum" ] || fail "hard links split or changed"
# The filter: a canonical file is updated in place (links kept); a file
# that needs a rewrite is refused at start.
"$NBDKIT" -U - --filter="$FILTER" memory 1G bitmap-file=$PWD/hl.qcow2 \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0)"' 2>/dev/null ||
    true
qemu-img bitmap --add hl.qcow2 extra           # QEMU's rewrite in place
set +e
"$NBDKIT" -U - --filter="$FILTER" memory 1G bitmap-file=$PWD/hl.qcow2 \
    --run true 2> err; rc=$?
set -e
[ $rc -ne 0 ] && grep -q "hard links and must be rewritten" err || { cat err; fail "filter: hard-linked file needing a rewrite"; }
[ "$(stat -c %h hl.qcow2)" = 2 ] || fail "the filter split hard links"

# No descriptor the filter opens (bitmap file, control socket, its pipe)
# leaks into the plugin's child processes: the eval plugin runs a shell
# per request, which lists its descriptors; with the filter it has exactly
# the descriptors it has without it.
fd_list () {  # fd_list OUT OPTION [KEY=VALUE...]: the pread script's open fds
    local out=$1 opt=$2; shift 2
    "$NBDKIT" -U - $opt eval "$@" \
        get_size='echo 1048576' \
        pread='ls /proc/$$/fd > '"$PWD/$out"'; dd if=/dev/zero count=$3 iflag=count_bytes status=none' \
        pwrite='cat > /dev/null' \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0); h.pread(512, 0)"'
}
fd_list fds.plain -f
fd_list fds.filter --filter="$FILTER" bitmap-file=$PWD/leak.qcow2 \
    bitmap-control=$PWD/leak.ctl
[ -s fds.plain ] && [ -s fds.filter ] || fail "the pread script did not run"
[ "$(wc -l < fds.filter)" = "$(wc -l < fds.plain)" ] ||
    fail "descriptors leaked into the plugin's child: $(tr '\n' ' ' < fds.filter) vs $(tr '\n' ' ' < fds.plain)"
echo OK
