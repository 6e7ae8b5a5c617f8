#!/usr/bin/env bash
# Point-in-time snapshots under load (tests/snapshot_oracle.py): 4
# connections write, zero and trim continuously (each 4K block stamped
# with the write it came from) while a checkpoint with a snapshot is taken
# every 200 ms, alternating --snapshot and --snapshot=dirty.  Each snapshot
# is read while the writers go on (a full one entirely, a dirty one over
# its frozen bitmap's dirty extents, plus a read in each granule outside
# them, which must fail with EPERM), then released.  Afterwards: every block a snapshot showed
# is what the oracle allows at its cut (never a write sent after the
# checkpoint's reply), every write a snapshot does not reflect is in its
# new bitmap, every write is in the bitmaps, and no file is left behind.
# Both modes, memory and file (sparse) plugins.
# SNAPSHOT_ORACLE_SEED=N repeats a run's offsets and sizes.
source "$srcdir/functions.sh"
requires qemu-img --version
requires "$PYTHON" -c "import nbd"
O="$PYTHON $srcdir/snapshot_oracle.py"
seed=${SNAPSHOT_ORACLE_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "seed $seed (SNAPSHOT_ORACLE_SEED=$seed repeats it)"
size=$((64 << 20))


# A configuration that fails is reported, and the others still run.
failed=()
mkdir bm
for plugin in memory file; do
    for mode in crash-safe qemu; do
        cfg=$plugin.$mode
        rm -f bm/* ctl
        if [ $plugin = file ]; then
            rm -f disk.img; truncate -s $size disk.img
            args=(file "$PWD/disk.img")
        else
            args=(memory $size)
        fi
        serve_fg nbdkit.$cfg.log "$PWD/sock.$cfg" "${args[@]}" \
            bitmap-file=$PWD/bm/b.qcow2 bitmap-control=$PWD/ctl \
            bitmap-mode=$mode bitmap-persist-interval=1
        pid=$SERVER_PID
        # timeout: a hang guard only (the run takes a few seconds).
        # The oracle runs even when the run saw a failure (more detail).
        run_ok=true
        timeout 300 $O run --sock "$PWD/sock.$cfg" --ctl ctl \
            --bitmap "$PWD/bm/b.qcow2" --log log.$cfg --snapshots 8 \
            --interval 200 --seed $seed || run_ok=false
        [ -s log.$cfg ] || fail "$cfg: snapshot run (seed $seed) left no log"
        # Released snapshots leave no store behind while the server runs.
        [ "$(ls -A bm)" = b.qcow2 ] || fail "$cfg: files in the bitmap dir: $(ls -A bm)"
        st=0; stop_server $pid || st=$?
        [ $st = 0 ] || { cat nbdkit.$cfg.log; fail "$cfg: nbdkit exit status $st"; }
        [ "$(ls -A bm)" = b.qcow2 ] ||
            fail "$cfg: bitmap dir after shutdown: $(ls -A bm)"
        qemu_check bm/b.qcow2
        timeout 300 $O check log.$cfg "$PWD/bm/b.qcow2" --label "$cfg" ||
            failed+=("$cfg: snapshot oracle")
        $run_ok || failed+=("$cfg: snapshot run")
    done
done
[ ${#failed[@]} = 0 ] || fail "$(printf '%s; ' "${failed[@]}")(seed $seed)"
echo OK
