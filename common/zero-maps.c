/* Zero-aware maps: which granules were last changed by a zero or trim
 * request (tracker.h has the promise).
 *
 * The protocol.  A data write W, once zero tracking is live:
 *   1. adds 1 to "started" of each stripe of the disk it covers,
 *   2. clears the zero bits of every granule it touches, in every set it
 *      marks, before their dirty bits (mark_set),
 *   3. is forwarded, and then adds 1 to "finished" of the same stripes.
 * A zero or trim request Z:
 *   1. marks its range dirty, in the set S it loaded, and reads the sums
 *      of "finished", then of "started", over its stripes: equal means no
 *      data write was in flight there (ok),
 *   2. is forwarded; if that succeeded, under zero_lock:
 *   3. if no data write started on its stripes since, sets the zero bits
 *      of the granules it covers whole, in the states of S not closing,
 *   4. reads "started" again: if a data write began meanwhile, clears
 *      them again (that write, unlocked, may have cleared before 3).
 * So a bit is set only for a Z that no data write overlapped in time:
 * every data write to the granule either returned before Z began or
 * clears the bit afterwards.  Each counter only grows, so equal sums mean
 * every counter is unchanged, and finished <= started holds per stripe
 * when "finished" is read first.
 *
 * At a cut (checkpoint, growth), under zero_lock, the states being
 * replaced are closed before the new set is published: a Z that sets
 * bits there did so before the cut, so its dirty bits were set before the
 * cut's save read them.  A W whose dirty bit the save found cleared the
 * zero bits before it; one it did not find belongs to the next interval.
 * So the frozen zero maps are captured (under zero_lock, after the save)
 * without waiting for writes in flight.
 *
 * States of the machinery: OFF (zero_counting false), COUNTING (data
 * writes count; zero requests wait in tracker_zero_enable for the epoch
 * barrier), LIVE.  OFF -> COUNTING -> LIVE once, under zero_enable_lock,
 * never back.
 */
#include <config.h>

#include <assert.h>
#include <stdlib.h>

#include "cleanup.h"
#include "tracker-internal.h"

/* The stripes [offset, offset+count) covers: *FIRST and *N of them. */
static void
stripes_of (uint64_t offset, uint64_t count, uint64_t *first, uint64_t *n)
{
  uint64_t a = offset >> TRACKER_ZERO_STRIPE_SHIFT;
  uint64_t b = (offset + (count ? count - 1 : 0)) >> TRACKER_ZERO_STRIPE_SHIFT;

  if (offset + count < offset)          /* wraps: every stripe */
    b = a + TRACKER_ZERO_STRIPES;
  *first = a;
  *n = b - a + 1 < TRACKER_ZERO_STRIPES ? b - a + 1 : TRACKER_ZERO_STRIPES;
}

static struct zero_stripe *
stripe (struct tracker *tr, uint64_t k)
{
  return &tr->zero_stripes[k % TRACKER_ZERO_STRIPES];
}

/* The sum of one counter (FINISHED, or started) over the stripes of
 * [offset, offset+count).
 */
static uint64_t
sum (struct tracker *tr, uint64_t offset, uint64_t count, bool finished)
{
  uint64_t a, n, k, r = 0;

  stripes_of (offset, count, &a, &n);
  for (k = 0; k < n; ++k)
    r += atomic_load (finished ? &stripe (tr, a + k)->finished
                      : &stripe (tr, a + k)->started);
  return r;
}

void
tracker_zero_enable (struct tracker *tr)
{
  /* The draft layout has no checkpoints, so no zero map is ever saved:
   * nothing to count for (zero requests then set no bits).
   */
  if (atomic_load (&tr->zero_live) ||
      tr->cfg.layout != QCOW2_LAYOUT_QEMU)
    return;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->zero_enable_lock);
  if (atomic_load (&tr->zero_live))
    return;
  /* Every data write counts itself from now on: the write path's fast
   * view moves to fast_zero (tracker_enter_counted_noop).
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);

    atomic_store (&tr->zero_counting, true);
    tracker_publish (tr, atomic_load (&tr->set));
  }
  /* A data write that read zero_counting false is inside the epoch until
   * it returns: once it has left, every write in flight is counted.
   */
  epoch_barrier ();
  atomic_store (&tr->zero_live, true);
}

struct epoch_slot *
tracker_enter_counted_noop (struct tracker *tr, uint64_t offset,
                            uint64_t count, struct zero_stripe **counted)
{
  struct epoch_slot *e = epoch_try_enter ();
  uint64_t k = offset >> TRACKER_ZERO_STRIPE_SHIFT;
  const struct track_set *s;
  struct zero_stripe *z = stripe (tr, k);

  if (e == NULL)
    return NULL;
  s = atomic_load (&tr->fast_zero);
  if (s == NULL || count == 0 ||
      ((offset + count - 1) >> TRACKER_ZERO_STRIPE_SHIFT) != k) {
    epoch_leave (e);
    return NULL;
  }
  /* Counted first, then the checks (the order of tracker_mark_data):
   * a zero request that set a bit after these loads sees the count.
   */
  atomic_fetch_add (&z->started, 1);
  if (tracked_is_noop_zero (&s->t[0], offset, count) &&
      atomic_load (&tr->fast_zero) == s) {
    *counted = z;
    return e;
  }
  atomic_fetch_add (&z->finished, 1);
  epoch_leave (e);
  return NULL;
}

void
tracker_counted_leave (struct epoch_slot *e, struct zero_stripe *counted)
{
  atomic_fetch_add (&counted->finished, 1);
  epoch_leave (e);
}

int
tracker_mark_data (struct tracker *tr, uint64_t offset, uint64_t count,
                   bool *counted)
{
  uint64_t a, n, k;

  *counted = count != 0 && atomic_load (&tr->zero_counting);
  if (*counted) {
    stripes_of (offset, count, &a, &n);
    for (k = 0; k < n; ++k)
      atomic_fetch_add (&stripe (tr, a + k)->started, 1);
  }
  if (tracker_mark_set_inside (tr, atomic_load (&tr->set), offset, count,
                               *counted) == -1) {
    if (*counted)
      tracker_data_done (tr, offset, count);
    *counted = false;
    return -1;
  }
  return 0;
}

void
tracker_data_done (struct tracker *tr, uint64_t offset, uint64_t count)
{
  uint64_t a, n, k;

  stripes_of (offset, count, &a, &n);
  for (k = 0; k < n; ++k)
    atomic_fetch_add (&stripe (tr, a + k)->finished, 1);
}

int
tracker_mark_zero (struct tracker *tr, uint64_t offset, uint64_t count,
                   struct tracker_zero_op *op)
{
  uint64_t f;

  op->s = atomic_load (&tr->set);
  op->ok = false;
  if (tracker_mark_set_inside (tr, op->s, offset, count, false) == -1)
    return -1;
  if (count == 0 || !atomic_load (&tr->zero_live))
    return 0;
  f = sum (tr, offset, count, true);
  op->started = sum (tr, offset, count, false);
  op->ok = f == op->started;
  return 0;
}

/* The granules of B's bitmap [offset, offset+count) covers whole: the
 * last one may end beyond the disk, and counts if the range reaches the
 * disk's end.  False if none.
 */
static bool
whole_granules (const struct bitmap *b, uint64_t offset, uint64_t count,
                uint64_t *first, uint64_t *last)
{
  unsigned g = b->granularity_bits;
  uint64_t end = offset + count;

  if (end < offset || end >= b->size)
    end = b->nbits << g;
  *first = (offset + (UINT64_C (1) << g) - 1) >> g;
  if ((end >> g) == 0)
    return false;
  *last = (end >> g) - 1;
  return *first <= *last;
}

/* Set (SET true) or clear the zero bits OP's range covers whole. */
static void
apply (const struct tracker_zero_op *op, uint64_t offset, uint64_t count,
       bool set)
{
  size_t i;

  for (i = 0; i < op->s->nt; ++i) {
    struct tracked_state *st = op->s->t[i].st;
    uint64_t first, last;

    if (st->closing || !whole_granules (st->zero, offset, count,
                                        &first, &last))
      continue;
    if (!set)
      bitmap_clear_bits (st->zero, first, last);
    else if (bitmap_set_bits (st->zero, first, last) == -1)
      /* Out of memory: the bits set so far are as true as the rest. */
      continue;
  }
}

void
tracker_zero_done (struct tracker *tr, uint64_t offset, uint64_t count,
                   const struct tracker_zero_op *op)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->zero_lock);

  if (!op->ok || sum (tr, offset, count, false) != op->started)
    return;
  DBM_TEST_HOOK (DBM_HOOK_ZERO_CHECKED);
  apply (op, offset, count, true);
  if (sum (tr, offset, count, false) != op->started)
    apply (op, offset, count, false);
}

void
tracker_zero_close (struct tracker *tr, const struct track_set *s,
                    bool closing)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->zero_lock);
  size_t i;

  for (i = 0; i < s->nt; ++i)
    s->t[i].st->closing = closing;
}

struct bitmap **
tracker_zero_capture (struct tracker *tr, const struct track_set *s)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->zero_lock);
  struct bitmap **v = calloc (s->nt + 1, sizeof (struct bitmap *));
  size_t i;

  for (i = 0; v && i < s->nt; ++i) {
    struct tracked_state *st = s->t[i].st;
    const struct bitmap *bits = tr->img->bitmaps[st->idx].bits;

    assert (st->closing);
    if (bitmap_find (st->zero, 0, true) >= st->zero->nbits)
      continue;
    v[i] = bitmap_new (st->zero->size, st->zero->granularity_bits);
    if (v[i] == NULL || bitmap_copy (v[i], st->zero) == -1) {
      bitmap_delete (v[i]);
      v[i] = NULL;
      continue;
    }
    bitmap_and (v[i], bits);
  }
  return v;
}
