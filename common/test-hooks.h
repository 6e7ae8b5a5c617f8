/* Test-only pause points inside the tracker, to force an interleaving of
 * threads that is otherwise too narrow to hit.  Built only into the test
 * programs that define DBM_TEST_HOOKS; in the filter and the CLI a hook
 * is nothing at all (no load, no call).
 */
#ifndef DBM_TEST_HOOKS_H
#define DBM_TEST_HOOKS_H

enum dbm_hook {
  DBM_HOOK_NOOP_LOADED,         /* tracker_mark_is_noop: set loaded */
  DBM_HOOK_MARK_LOADED,         /* tracker_mark: set loaded */
  DBM_HOOK_MARK_MARKED,         /* mark_slow: marked, set not yet re-read */
  DBM_HOOK_PERSIST_SCANNED,     /* persist_regions: a bitmap's regions
                                   scanned, arm_lock held */
  DBM_HOOK_ARM_WRITTEN,         /* regions_arm: all-ones written, no lock
                                   held, not yet synced */
  DBM_HOOK_BIT_SET,             /* set_word: a bit flipped, its leaf not
                                   yet flagged changed */
  DBM_HOOK_SETTLED,             /* store_checkpoint: old bitmaps made
                                   exact in place, not yet committed */
  DBM_HOOK_ZERO_CHECKED,        /* tracker_zero_done: no data write
                                   seen, zero bits not yet set */
};

#ifdef DBM_TEST_HOOKS
extern void dbm_test_hook (enum dbm_hook point);
#define DBM_TEST_HOOK(point) dbm_test_hook (point)
#else
#define DBM_TEST_HOOK(point) ((void) 0)
#endif

#endif /* DBM_TEST_HOOKS_H */
