/* The live snapshots of a tracked export, as the write path sees them,
 * and the freeze that makes a new one point-in-time.
 *
 * The published array (LIVE) is immutable; a change publishes a new one
 * and retires the old through epoch.h.  Writers load it inside the epoch
 * they entered before marking, and stay inside until their write has
 * reached the plugin (the filter's fast path too: tracker.h,
 * tracker_slot_enter_noop).
 *
 * The freeze of a new snapshot S, around its checkpoint's cut, with the
 * caller's serialisation of changes:
 *   1. (snapshots_freeze) the tracker's fast path is held off (every
 *      write loads LIVE), and LIVE is published with S as ADDING and
 *      FREEZING set;
 *   2. epoch_barrier: every writer inside has left.  One that saw the old
 *      array forwarded without copying for S: its data is in the export
 *      now.  One that saw FREEZING left without marking anything that
 *      counts: it waits for the thaw and starts over.  No write is in
 *      flight and none starts;
 *   3. the caller takes the checkpoint: the cut, and the old bitmaps
 *      saved, with no writer between them;
 *   4. (snapshots_thaw) LIVE is published with S live (or, if the
 *      checkpoint failed, without it) and FREEZING clear; waiters are
 *      woken and start over: they mark the new bitmap and copy for S.
 * So the snapshot, the old bitmaps as saved and the new bitmap all meet
 * at one instant: every write before it is in the export when S is
 * frozen and in the old bitmaps; every write after it is copied for S
 * first and recorded in the new bitmap.  Writes pause from step 1 to
 * step 4 (the checkpoint's save).
 */
#ifndef DBM_SNAPSHOTS_H
#define DBM_SNAPSHOTS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "snapshot.h"
#include "tracker.h"

struct snapshot_array {
  bool freezing;
  struct snapshot *adding;      /* FREEZING: the one not yet live */
  size_t n;
  struct snapshot *s[];
};

struct snapshots {
  struct tracker *tr;
  pthread_mutex_t lock;         /* FREEZING's waiters */
  pthread_cond_t thawed;
  _Atomic (struct snapshot_array *) live;   /* NULL: no snapshot */
};

extern void snapshots_init (struct snapshots *ss, struct tracker *tr);

/* Free every snapshot and array: no writer or reader is left. */
extern void snapshots_fini (struct snapshots *ss);

/* Steps 1 and 2 above: from the return, no write is in flight or
 * starts until snapshots_thaw.  The caller serialises changes.
 */
extern int snapshots_freeze (struct snapshots *ss, struct snapshot *s,
                             struct dbm_err *err);

/* Step 4: S live if KEEP, else forgotten (the caller still owns it). */
extern void snapshots_thaw (struct snapshots *ss, bool keep);

/* End the snapshot named NAME: unpublished, its store freed.  -1 with
 * ENOENT if there is none.  The caller serialises changes.
 */
extern int snapshots_release (struct snapshots *ss, const char *name,
                              struct dbm_err *err);

/* Number of live snapshots (the caller serialises changes). */
extern size_t snapshots_count (struct snapshots *ss);

/* The live snapshot NAME, with a reader's reference, or NULL. */
extern struct snapshot *snapshots_open (struct snapshots *ss,
                                        const char *name);

/* Call FN for each live snapshot (export listing). */
extern void snapshots_each (struct snapshots *ss,
                            void (*fn) (void *opaque, struct snapshot *s),
                            void *opaque);

/* The snapshots as a JSON array, for the status line. */
extern void snapshots_json (struct snapshots *ss, FILE *f);

/* The write path, inside the epoch: copy what every live snapshot must
 * keep of [offset, offset+count).  False: a freeze is under way; the
 * caller must leave the epoch, call snapshots_wait_thaw, and start over
 * (mark again).
 */
extern bool snapshots_slow_before_write (struct snapshots *ss,
                                         const struct snapshot_array *a,
                                         uint64_t offset, uint64_t count,
                                         snapshot_read_fn read, void *ctx);

static inline bool
snapshots_before_write (struct snapshots *ss, uint64_t offset,
                        uint64_t count, snapshot_read_fn read, void *ctx)
{
  const struct snapshot_array *a = atomic_load (&ss->live);

  return a == NULL ||
    snapshots_slow_before_write (ss, a, offset, count, read, ctx);
}

extern void snapshots_wait_thaw (struct snapshots *ss);

#endif /* DBM_SNAPSHOTS_H */
