/* The crash-safe region protocol (bitmap-mode=crash-safe).
 *
 * Each tracked bitmap is cut into regions (bitmap-region bytes of disk,
 * a whole number of 64-bit words of bits; by default enlarged so that
 * the export has at most TRACKER_AUTO_REGIONS of them).  A region of a
 * tracked state is, on disk and in memory:
 *
 *   EXACT     its bits on disk are the exact bits (armed bit 0)
 *   ARMING    a first writer holds arm_lock and writes it all-ones
 *   ARMED     all-ones on disk and synced (armed bit 1); writes into it
 *             need no file I/O
 *   back to EXACT at a persist: the periodic one disarms regions that
 *             are IDLE, an explicit one (tracker_persist: control
 *             socket, quiesce, close) every region not touched since
 *             its cut; then writes them exact
 *
 * "Touched" is the slow path's mark (a first write into a granule, or
 * into a region not armed); the steady path of a write already recorded
 * touches nothing.  A region is IDLE at a periodic persist's cut when it
 * was touched neither in the interval that ended at that cut (what the
 * cut takes out of touched, kept as prev_touched) nor since the cut:
 * so a region in use is armed once and stays armed, and the file's
 * over-approximation is at most the regions touched in the last two
 * intervals.  (A region only ever rewritten, never touched, is disarmed
 * after one idle interval and re-armed by its next write: one synced
 * write per two intervals.)
 *
 * Transitions and what guards them:
 *   EXACT -> ARMING -> ARMED   regions_arm, under arm_lock; the ones bit
 *                              ("may be all-ones on disk, not armed") is
 *                              set before the all-ones write, the armed
 *                              bit only after the group-committed sync
 *                              (sync_lock) covering it, and ones cleared
 *                              with it; so under arm_lock armed and ones
 *                              are disjoint (asserted)
 *   ARMED -> EXACT             regions_persist, under persist_lock and
 *                              arm_lock; the writer's order "set bits,
 *                              set touched, load armed" and the persist's
 *                              "clear touched, clear armed, re-load
 *                              touched" are all seq_cst (a Dekker pair):
 *                              a racing first write either keeps the
 *                              region armed or finds it disarmed and
 *                              arms it again.  The idle test only leaves
 *                              more regions armed, never fewer.  A
 *                              disarmed region's ones bit is set before
 *                              its exact write and cleared once it
 *                              succeeds; the persist bumps arm_gen
 *                              before such writes, so that an arming
 *                              whose all-ones write came before the
 *                              exact one arms again instead of setting
 *                              the armed bit over exact bits
 *   touched -> prev_touched    at every persist's cut, under persist_lock
 *                              (an exchange per word, seq_cst, before
 *                              arm_lock is taken)
 *   ARMED -> EXACT (all)       a rewrite that carries the bitmap over
 *                              (tracker_remove, tracker_rewrite), under
 *                              all four locks, before its commit; it
 *                              bumps arm_gen, so an arming whose write
 *                              went to the old file arms again instead
 *                              of setting the armed bit
 *   ARMED, ARMING -> EXACT     a checkpoint updating the file in place
 *     (settled)                (qcow2_update), under all four locks,
 *                              after its cut: regions_settle disarms the
 *                              states it disables (arm_gen bumped) and
 *                              writes every region with ones set exact;
 *                              the states retire when it commits, or on
 *                              failure stay tracked, disarmed
 *   any -> retired             the state's bitmap stopped being tracked
 *                              (st->retired): never armed again
 *
 * Invariant: at every instant the file, with in_use clear, covers every
 * write forwarded: a write is forwarded only once its region is ARMED,
 * or its bits were exported by the last EXACT write.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "regions.h"

/* Write region R of T on disk as all-ones (bits beyond the disk stay 0),
 * or as its exact bits.  Caller holds arm_lock.
 */
static int
write_region (struct tracker *tr, struct tracked_state *t, uint64_t r,
              bool ones, struct dbm_err *err)
{
  uint64_t first = r << t->region_shift;
  uint64_t nbits = t->bits->nbits;
  uint64_t last = first + (UINT64_C (1) << t->region_shift);
  uint64_t off = first / 8, len;
  CLEANUP_FREE unsigned char *buf = NULL;

  if (first >= nbits)
    return 0;
  if (last > nbits)
    last = nbits;
  len = (last - first + 7) / 8;
  buf = malloc (len);
  if (buf == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  if (ones) {
    memset (buf, 0xff, len);
    if ((last - first) % 8)
      buf[len - 1] = (1U << ((last - first) % 8)) - 1;
  }
  else
    bitmap_export (t->bits, off, buf, len);
  return qcow2_write_data (tr->img, t->idx, off, buf, len, err);
}

/* Group commit: one fdatasync covers every write sequenced before it. */
static int
sync_upto (struct tracker *tr, uint64_t seq, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  uint64_t target;

  if (tr->synced_seq >= seq)
    return 0;
  target = atomic_load (&tr->write_seq);
  if (qcow2_sync (tr->img, err) == -1)
    return -1;
  tr->synced_seq = target;
  return 0;
}

/* Slow path of a first write into region R: make it all-ones on disk.
 * A retired bitmap is final on disk: the caller's write lands in the set
 * that replaced it (the caller re-marks there), so it is left alone.
 */
int
regions_arm (struct tracker *tr, struct tracked_state *t, uint64_t r)
{
  struct dbm_err err;
  uint64_t seq, gen;

  for (;;) {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
      if (region_test (t->armed, r) || atomic_load (&t->retired))
        return 0;
      gen = tr->arm_gen;
      region_set (t->ones, r);
      if (write_region (tr, t, r, true, &err) == -1) {
        tr->cfg.log ("%s", err.msg);
        errno = err.errnum ? err.errnum : EIO;
        return -1;
      }
      seq = atomic_fetch_add (&tr->write_seq, 1) + 1;
    }
    DBM_TEST_HOOK (DBM_HOOK_ARM_WRITTEN);
    if (sync_upto (tr, seq, &err) == -1) {
      tr->cfg.log ("%s", err.msg);
      errno = err.errnum ? err.errnum : EIO;
      return -1;
    }
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
      /* A rewrite (removal, tracker_rewrite) between our write and here
       * wrote this region exact in a new file and disarmed everything:
       * our all-ones went to the old file, so arm it again.
       */
      if (tr->arm_gen == gen) {
        /* No region was written exact since our write (every exact
         * write bumps arm_gen), so ours is still on disk, and synced: the
         * ones bit we set is still set, unless a concurrent arming of
         * the same region completed first.
         */
        assert (region_test (t->armed, r) || region_test (t->ones, r));
        region_set (t->armed, r);
        atomic_fetch_and (&t->ones[r >> 6], ~(UINT64_C (1) << (r & 63)));
        return 0;
      }
    }
  }
}

/* A lock the caller must hold (asserted, debug builds only). */
static inline bool
held (pthread_mutex_t *m)
{
  return pthread_mutex_trylock (m) == EBUSY;
}

/* crash-safe mode: the persist cut.  Take "touched" out (kept as
 * prev_touched); then each armed region nobody touched since, and if
 * IDLE_ONLY nobody touched in the interval the cut ended either, is
 * disarmed and written exact.  The disarm-then-recheck of touched pairs
 * with the writer's set-touched-then-check-armed (both seq_cst), so a
 * concurrent first write either keeps the region armed or takes the slow
 * path after us.
 */
int
regions_persist (struct tracker *tr, bool idle_only, bool *wrote,
                 struct dbm_err *err)
{
  const struct track_set *s = atomic_load (&tr->set);
  bool pending = false;
  size_t i;
  uint64_t w, k;

  assert (held (&tr->persist_lock));
  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;
    /* Leaves are written as regions; the changed flags are not needed,
     * but any_changed must be cleared before the scan, not after it: a bit
     * flipped during the scan (in a region that then stays armed) sets it
     * again, so that tracker_dirty asks for the next persist.
     */
    atomic_store (&t->bits->any_changed, false);
    for (w = 0; w < (t->nregions + 63) / 64; ++w)
      t->prev_touched[w] = atomic_exchange (&t->touched[w], 0);
  }

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;

    for (w = 0; w < (t->nregions + 63) / 64; ++w) {
      uint64_t cand = atomic_load (&t->armed[w]) & ~atomic_load (&t->touched[w]);
      uint64_t keep, gone;

      assert ((atomic_load (&t->armed[w]) & atomic_load (&t->ones[w])) == 0);
      if (idle_only)
        cand &= ~t->prev_touched[w];
      if (cand == 0)
        continue;
      atomic_fetch_and (&t->armed[w], ~cand);
      keep = cand & atomic_load (&t->touched[w]);
      if (keep)
        atomic_fetch_or (&t->armed[w], keep);
      gone = cand & ~keep;
      /* All-ones on disk until the exact write below succeeds.  An
       * arming of one of these regions still in flight (a writer that
       * found it disarmed before a concurrent arming completed) must not
       * set its armed bit over our exact write: arm_gen sends it round
       * again.
       */
      atomic_fetch_or (&t->ones[w], gone);
      if (gone)
        tr->arm_gen++;
      for (k = 0; k < 64; ++k) {
        if (!((gone >> k) & 1))
          continue;
        assert (!idle_only || !((t->prev_touched[w] >> k) & 1));
        if (write_region (tr, t, w * 64 + k, false, err) == -1)
          /* These regions stay disarmed: on disk they are all-ones or
           * exact, both covering every write forwarded so far, and the
           * next write into one re-marks it (and syncs) before it is
           * forwarded.  Re-arming them here would let a write skip that.
           * Their ones bits stay set: a checkpoint settles them.
           */
          return -1;
        atomic_fetch_and (&t->ones[w], ~(UINT64_C (1) << k));
        *wrote = true;
      }
    }
    DBM_TEST_HOOK (DBM_HOOK_PERSIST_SCANNED);
    /* Regions still armed (touched since the cut, or lately) shrink at a
     * later persist even if no bit flips meanwhile: say it is needed.
     */
    for (w = 0; !pending && w < (t->nregions + 63) / 64; ++w)
      pending = atomic_load (&t->armed[w]) != 0;
  }
  atomic_store (&tr->shrink_pending, pending);
  if (*wrote && qcow2_sync (tr->img, err) == -1)
    return -1;
  return 0;
}

/* Disarm first, then export: a writer that found a region armed set
 * its bits before the disarm, so before the export; one that finds it
 * disarmed takes regions_arm, which waits for arm_lock (held by the
 * checkpoint) and then, if the checkpoint failed and the state is still
 * tracked, arms it again.  arm_gen makes an arming whose all-ones write
 * came before the export arm again too, instead of setting the bit over
 * an exact region.
 */
int
regions_settle (struct tracker *tr, struct tracked_state *t,
                struct dbm_err *err)
{
  uint64_t w, k;

  tr->arm_gen++;
  for (w = 0; w < (t->nregions + 63) / 64; ++w) {
    uint64_t todo = atomic_exchange (&t->armed[w], 0);

    todo |= atomic_load (&t->ones[w]);
    for (k = 0; todo && k < 64; ++k) {
      if (!((todo >> k) & 1))
        continue;
      if (write_region (tr, t, w * 64 + k, false, err) == -1)
        return -1;
      atomic_fetch_and (&t->ones[w], ~(UINT64_C (1) << k));
    }
  }
  return 0;
}
