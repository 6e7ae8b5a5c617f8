/* The crash-safe region protocol: see regions.c for the states. */
#ifndef DBM_REGIONS_H
#define DBM_REGIONS_H

#include "tracker-internal.h"

static inline bool
region_test (_Atomic uint64_t *a, uint64_t r)
{
  return (atomic_load (&a[r >> 6]) >> (r & 63)) & 1;
}

static inline void
region_set (_Atomic uint64_t *a, uint64_t r)
{
  uint64_t m = UINT64_C (1) << (r & 63);
  if ((atomic_load (&a[r >> 6]) & m) == 0)
    atomic_fetch_or (&a[r >> 6], m);
}

/* A first write into region R of T: make it all-ones on disk and synced
 * before the write is forwarded.  0, or -1 with errno set.
 */
extern int regions_arm (struct tracker *tr, struct tracked_state *t,
                        uint64_t r);

/* The persist cut: regions not touched since (and, if IDLE_ONLY, not in
 * the interval before it either) are written exact.  Caller holds
 * persist_lock.
 */
extern int regions_persist (struct tracker *tr, bool idle_only, bool *wrote,
                            struct dbm_err *err);

/* A checkpoint updating the file in place, after its cut: disarm T (a
 * state the checkpoint disables) and write every region that may be
 * all-ones on disk exact.  Caller holds arm_lock.
 */
extern int regions_settle (struct tracker *tr, struct tracked_state *t,
                           struct dbm_err *err);

#endif /* DBM_REGIONS_H */
