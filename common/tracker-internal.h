/* Inside the tracker.  Files and the direction of their calls (down
 * only):
 *
 *   status-json.c    the status line                       reads all
 *   tracker-model.c  creation, growth, checkpoints, removal, rewrites,
 *                    the final save: replacing the model under writers
 *   zero-maps.c      zero-aware maps: the zero-request protocol
 *   tracker.c        open, activation, marking, persist, flush, quiesce
 *   regions.c        the crash-safe region protocol
 *   track-set.c      sets, states, storage: publication and retirement
 *   epoch.c          reclamation without a shared write on the write path
 */
#ifndef DBM_TRACKER_INTERNAL_H
#define DBM_TRACKER_INTERNAL_H

#include "tracker.h"

/* Is bitmap B of the current model one this tracker marks? */
extern bool tracker_is_tracked (const struct tracker *tr,
                                const struct qcow2_bitmap *b);

/* Take ownership of every bitmap object IMG refers to. */
extern int tracker_own_bitmaps (struct tracker *tr, struct qcow2_image *img,
                                struct dbm_err *err);

/* Close a model whose bitmap objects the tracker owns. */
extern void tracker_drop_model (struct qcow2_image *img);

/* Tracking state for bitmap IDX of IMG, and an immutable set over states;
 * both owned by the tracker.
 */
extern struct tracked_state *tracker_new_state (struct tracker *tr,
                                                struct qcow2_image *img,
                                                int idx, struct dbm_err *err);
extern struct track_set *tracker_new_set (struct tracker *tr,
                                          struct tracked_state **states,
                                          size_t n, struct dbm_err *err);

/* Flag every present leaf of every bitmap of IMG changed: after a failed
 * rewrite took the flags, so that the next persist writes them again.
 */
extern void tracker_reflag_model (struct qcow2_image *img);

/* Unreachable now for markers that enter from here on: off the tracker's
 * lists, freed once every marker inside has left (epoch.h).  A state is
 * retired only once its bitmap is (st->retired set).
 */
extern void tracker_retire_set (struct tracker *tr, struct track_set *s);
extern void tracker_retire_state (struct tracker *tr,
                                  struct tracked_state *st);
extern void tracker_retire_bitmap (struct tracker *tr, struct bitmap *bm);

/* Publish S as the set markers use, then refresh the write path's views
 * (tracker.h: fast, fast_zero).  Callers hold quiesce_lock, or are the activation,
 * before any writer or model change.
 */
static inline void
tracker_publish (struct tracker *tr, struct track_set *s)
{
  bool fast = s->nt == 1 && !tr->cfg.no_fast_path &&
    !atomic_load (&tr->in_use_cleared) && atomic_load (&tr->slow_holds) == 0;
  bool counting = atomic_load (&tr->zero_counting);

  atomic_store (&tr->set, s);
  atomic_store (tr->fast_slot, fast && !counting ? s : NULL);
  atomic_store (&tr->fast_zero, fast && counting ? s : NULL);
}

/* qemu mode: in_use is (true) or is no longer (false) clear on disk;
 * the write path's view follows.  Caller holds quiesce_lock.
 */
static inline void
tracker_set_in_use_cleared (struct tracker *tr, bool cleared)
{
  atomic_store (&tr->in_use_cleared, cleared);
  tracker_publish (tr, atomic_load (&tr->set));
}

/* tracker_mark_inside on set S (loaded by the caller, inside the epoch);
 * CLEAR_ZERO: a data write that clears zero bits (zero-maps.c).
 */
extern int tracker_mark_set_inside (struct tracker *tr,
                                    const struct track_set *s,
                                    uint64_t offset, uint64_t count,
                                    bool clear_zero);

/* Zero maps around a cut (zero-maps.c).  tracker_zero_close: the states
 * of S are being replaced (CLOSING true, before the cut is published) or
 * stay after all (false, on rollback).  tracker_zero_capture: copies of
 * the zero maps of S's states, each a subset of the bits the model now
 * holds for that bitmap, NULL for an empty one (or out of memory: no
 * zero map is only conservative); an array of S->nt, malloc'd, or NULL.
 */
extern void tracker_zero_close (struct tracker *tr, const struct track_set *s,
                                bool closing);
extern struct bitmap **tracker_zero_capture (struct tracker *tr,
                                             const struct track_set *s);

extern _Atomic uint64_t tracker_always_armed;

/* The published set no marker can be on before the first one: empty. */
extern struct track_set tracker_empty_set;

/* Write what tracker_open deferred, once (see tracker_set_size). */
extern int tracker_activate (struct tracker *tr, struct dbm_err *err);

/* Rewrite (or update in place) the file with in_use set on the tracked
 * bitmaps in qemu mode, then publish the set of tracked bitmaps.  As
 * qcow2_commit: 1 means tracking, but the directory sync failed.
 */
extern int tracker_commit_and_track (struct tracker *tr,
                                     const uint32_t *old_flags,
                                     struct dbm_err *err);

/* Write the in_use flag of every tracked bitmap (set or clear) and sync. */
extern int tracker_write_in_use (struct tracker *tr, bool in_use,
                                 struct dbm_err *err);

/* The export grew to WANT bytes (a multiple of 512). */
extern int tracker_grow (struct tracker *tr, uint64_t want,
                         struct dbm_err *err);

#endif /* DBM_TRACKER_INTERNAL_H */
