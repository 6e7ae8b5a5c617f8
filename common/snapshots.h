/* The live snapshots of a tracked export, as the write path sees them,
 * and the freeze that makes a new one point-in-time.
 *
 * The published array (LIVE) is immutable; a change publishes a new one
 * and retires the old through epoch.h.  Writers load it inside the epoch
 * they entered before marking, and stay inside until their write has
 * reached the plugin (the filter's fast path too: tracker.h,
 * tracker_slot_enter_noop).
 *
 * The freeze of a new snapshot S (snapshots_add), after its checkpoint's
 * cut, with the caller's serialisation of changes:
 *   1. the tracker's fast path is held off (every write loads LIVE);
 *   2. LIVE is published with S and FREEZING set;
 *   3. epoch_barrier: every writer inside has left.  One that saw the old
 *      array forwarded without copying for S: its data is in the export
 *      before the freeze ends, so S holds it.  One that saw FREEZING left
 *      without forwarding, waits for the thaw and starts over (marking
 *      again, so its bits are in the new set);
 *   4. LIVE is published with FREEZING clear, waiters are woken: from
 *      now every write copies for S first.
 * So a write is in S (it reached the export before step 4), or it was
 * marked after the cut (it started over after step 3, or entered after
 * step 2): every write the new bitmap lacks is in the snapshot.
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

/* Make S live (the freeze above).  The caller serialises changes. */
extern int snapshots_add (struct snapshots *ss, struct snapshot *s,
                          struct dbm_err *err);

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
