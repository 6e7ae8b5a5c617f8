#!/usr/bin/env bash
# Proves the dirtybitmap(1) man page, tools/dirtybitmap.pod, keeps up with
# the CLI it documents:
#   - podchecker passes (no errors, no warnings);
#   - every command that 'dirtybitmap --help' lists has an "=item B<CMD>"
#     in the COMMANDS section, and appears in the SYNOPSIS;
#   - every long option in the usage line of 'dirtybitmap CMD --help'
#     appears in the heading (=item paragraph) of that command in
#     COMMANDS, and so in the page;
#   - pod2man renders it (errors fatal), and groff, when installed,
#     formats the result without warnings.
source "$srcdir/functions.sh"
requires command -v podchecker
requires command -v pod2man
D=$DIRTYBITMAP
pod=$srcdir/../tools/dirtybitmap.pod
[ -f "$pod" ] || fail "$pod: no such file"

# 1. POD syntax.
set +e
podchecker "$pod" > podchecker.out 2>&1; rc=$?
set -e
[ $rc = 0 ] || { cat podchecker.out >&2; fail "podchecker $pod: exit $rc"; }
if grep -q "WARNING" podchecker.out; then
    cat podchecker.out >&2; fail "podchecker $pod: warnings"
fi

# The COMMANDS and SYNOPSIS sections (up to the next =head1).
section () {
    awk -v want="$1" '/^=head1 / { on = ($0 == "=head1 " want); next }
                      on' "$pod"
}
section COMMANDS > commands.pod
section SYNOPSIS > synopsis.pod
[ -s commands.pod ] || fail "$pod: no =head1 COMMANDS section"
[ -s synopsis.pod ] || fail "$pod: no =head1 SYNOPSIS section"

# 2. The commands, as 'dirtybitmap --help' lists them: lines indented by
# exactly two spaces (continuation lines are indented further).
$D --help > help.out
awk '/^  [a-z]/ { print $1 }' help.out | sort -u > commands.list
n=$(wc -l < commands.list)
[ "$n" -ge 10 ] || { cat help.out >&2; fail "only $n commands found in --help"; }

# The heading of each =item of COMMANDS: the paragraph that starts with
# "=item B<CMD>", joined into one line "CMD heading..." (remove has two).
awk '/^=item B<[a-z-]+>/ { cmd = $2; sub(/^B</, "", cmd); sub(/>.*/, "", cmd)
                           line = $0; on = 1; next }
     on && /^$/         { print cmd, line; on = 0; next }
     on                 { line = line " " $0 }
     END                { if (on) print cmd, line }' commands.pod > items.list

missing=0
while read -r c; do
    if ! grep -q "^$c " items.list; then
        echo "COMMANDS: no '=item B<$c>' for command '$c'" >&2
        missing=$((missing + 1))
    fi
    if ! grep -Eq "^ *dirtybitmap $c( |$)" synopsis.pod; then
        echo "SYNOPSIS: no 'dirtybitmap $c' line" >&2
        missing=$((missing + 1))
    fi
done < commands.list
[ $missing = 0 ] || fail "$missing command(s) missing from $pod"

# 3. The long options of each command's usage line (from "Usage:" to the
# first blank line), each in that command's =item heading.  An option is
# matched whole: --size is not satisfied by --cluster-size or --sizes.
options=0
while read -r c; do
    $D "$c" --help > usage.out || fail "dirtybitmap $c --help: exit $?"
    grep -q "^Usage: " usage.out || fail "dirtybitmap $c --help: no Usage line"
    awk '/^Usage: / { on = 1 } on && /^$/ { exit } on' usage.out |
        grep -Eo -- '--[a-z][a-z0-9-]*' | sort -u > opts.list || true
    grep "^$c " items.list > heading.txt || true
    while read -r o; do
        options=$((options + 1))
        if ! grep -Eq -- "(^|[^a-z0-9-])$o([^a-z0-9-]|\$)" heading.txt; then
            echo "COMMANDS: the =item of '$c' does not mention $o" \
                 "(from: $(head -1 usage.out))" >&2
            missing=$((missing + 1))
        fi
        if ! grep -Eq -- "(^|[^a-z0-9-])$o([^a-z0-9-]|\$)" "$pod"; then
            echo "$pod: option $o of '$c' is not mentioned" >&2
            missing=$((missing + 1))
        fi
    done < opts.list
done < commands.list
[ "$options" -ge 10 ] || fail "only $options options found in the usage lines"
[ $missing = 0 ] || fail "$missing option(s) missing from $pod"

# 4. It renders as a man page.
pod2man --errors=die --section=1 --center=nbdkit --release=test \
    --name=dirtybitmap "$pod" > dirtybitmap.1 2> pod2man.err ||
    { cat pod2man.err >&2; fail "pod2man $pod"; }
[ ! -s pod2man.err ] || { cat pod2man.err >&2; fail "pod2man: messages"; }
grep -q '^\.TH dirtybitmap 1 ' dirtybitmap.1 || fail "pod2man: no .TH line"
for s in NAME SYNOPSIS DESCRIPTION COMMANDS FILES "EXIT STATUS" EXAMPLES \
         "SEE ALSO" AUTHORS COPYRIGHT; do
    grep -q "^\.SH \"$s\"" dirtybitmap.1 || fail "dirtybitmap.1: no section $s"
done
if command -v groff > /dev/null; then
    groff -man -Tutf8 -ww -z dirtybitmap.1 > groff.err 2>&1 ||
        { cat groff.err >&2; fail "groff: exit $?"; }
    [ ! -s groff.err ] || { cat groff.err >&2; fail "groff: warnings"; }
fi

echo "OK: $(wc -l < commands.list) commands, $options options documented"
