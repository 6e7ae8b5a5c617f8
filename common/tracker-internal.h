/* Shared between tracker.c (open, mark, persist) and tracker-model.c
 * (checkpoints, growth, removal: replacing the model under writers).
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

/* Write what tracker_open deferred, once (see tracker_set_size). */
extern int tracker_activate (struct tracker *tr, struct dbm_err *err);

/* The export grew to WANT bytes (a multiple of 512). */
extern int tracker_grow (struct tracker *tr, uint64_t want,
                         struct dbm_err *err);

#endif /* DBM_TRACKER_INTERNAL_H */
