/* The dirty-tracking engine behind the filter: which bitmaps are tracked,
 * marking on the write path, and keeping the file in step.  Plain C over
 * qcow2.h and bitmap.h, no nbdkit, so tests drive it directly.
 *
 * Two persistence modes:
 *
 * TRACKER_QEMU ("qemu"): QEMU's semantics.  Tracked bitmaps are in_use on
 * disk while running; a flush writes the changed leaves and syncs; a clean
 * close clears in_use.  After a crash the bitmap is in_use: unknown.
 *
 * TRACKER_CRASH_SAFE ("crash-safe"): the on-disk bitmap is, at every
 * instant, a superset of every write forwarded, with in_use clear, so QEMU
 * tools can use it even after kill -9.  Before the first write into a
 * region (region_size bytes of disk) since it was last written exact is
 * forwarded, the region's bits are written all-ones and synced (group
 * commit: one fdatasync serves every concurrent first touch).  The periodic persist
 * replaces all-ones by the exact bits only in regions idle for a whole
 * interval (no first write into a granule since the persist before it,
 * nor since it began), so that a region in use is armed once and stays
 * armed; an explicit persist (control socket, quiesce, close) shrinks every
 * region not touched since it began.  After a crash the over-approximation
 * is at most the regions touched in the last two intervals.  By default
 * (region_default) an export gets at most TRACKER_AUTO_REGIONS regions:
 * the region doubles from region_size until it does.
 */
#ifndef DBM_TRACKER_H
#define DBM_TRACKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "epoch.h"
#include "qcow2.h"
#include "test-hooks.h"

enum tracker_mode { TRACKER_CRASH_SAFE, TRACKER_QEMU };

/* bitmap-region: a region is at least a page of disk, at most 1 PiB. */
#define TRACKER_MIN_REGION          UINT64_C (4096)
#define TRACKER_MAX_REGION          (UINT64_C (1) << 50)
/* bitmap-region not given: the region grows (a power of two, from
 * region_size) until the export has at most this many, so that arming
 * every region costs at most this many synced writes.
 */
#define TRACKER_AUTO_REGIONS        4096
enum tracker_in_use { IN_USE_DIRTY, IN_USE_REFUSE };

struct tracker_config {
  const char *path;
  enum qcow2_layout layout;     /* the layout the user asked for */
  const char *bitmap_name;
  /* bitmap_name is the default, not the user's choice: in QEMU's layout it
   * is then added only to a file with no enabled bitmap, so that a restart
   * after checkpoints goes on recording into the latest checkpoint's.
   */
  bool bitmap_name_default;
  unsigned granularity_bits;    /* for a bitmap we create */
  /* granularity_bits is the default, not the user's choice: a bitmap we
   * create for an export too large for it gets the finest granularity
   * that fits instead (with a note); a chosen one is refused then.
   */
  bool granularity_default;
  enum tracker_mode mode;
  enum tracker_in_use in_use_policy;
  uint64_t region_size;         /* crash-safe: bytes of disk per region */
  /* region_size is the default, not the user's choice: the export's size
   * may enlarge it (TRACKER_AUTO_REGIONS), once, when the file is first
   * written in this run (tracker_commit_and_track).
   */
  bool region_default;
  /* Every write takes tracker_mark, none the inline no-op check (the
   * filter's debug logging of each marked range).
   */
  bool no_fast_path;
  /* Where the write path's view of the set (struct tracker: fast) is
   * published; NULL for inside the tracker.  A caller's static variable
   * lets the inline check load it at a fixed address.
   */
  _Atomic (const struct track_set *) *fast_slot;
  /* Where notable events go (the filter passes nbdkit's logger). */
  void (*log) (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
};

/* One tracked bitmap, shared by every set that tracks it. */
struct tracked_state {
  struct bitmap *bits;
  int idx;                      /* in img->bitmaps; changed under all locks */
  unsigned region_shift;        /* log2 of bitmap bits per region */
  uint64_t nregions;
  _Atomic uint64_t *touched;    /* regions written since the persist cut */
  /* Regions touched in the interval that ended at the last persist cut
   * (what that cut took out of touched); persist_lock.
   */
  uint64_t *prev_touched;
  _Atomic uint64_t *armed;      /* regions all-ones on disk and synced */
  /* Regions that may be all-ones on disk: set before an arming's write,
   * cleared once the region is written exact (so it covers ARMING, and
   * regions an exact write failed to shrink).
   */
  _Atomic uint64_t *ones;
  /* No longer tracked (a checkpoint disabled it, or growth replaced it):
   * its bits on disk are final, so a late marker must not arm it.
   */
  _Atomic bool retired;
  /* Zero-aware maps (zero-maps.c): granules whose last change in this
   * bitmap's interval was a zero or trim request, in memory only, same
   * granularity.  Closing: a cut is replacing this state, so no zero
   * request sets bits here any more (zero_lock).
   */
  struct bitmap *zero;
  bool closing;
};

/* Zero-aware maps: data writes in flight, counted per stripe of the disk
 * (zero-maps.c).  A line each, so that writers to different stripes share
 * none.
 */
#define TRACKER_ZERO_STRIPES        64
#define TRACKER_ZERO_STRIPE_SHIFT   20
struct zero_stripe {
  _Atomic uint64_t started;     /* data writes begun (before marking) */
  _Atomic uint64_t finished;    /* data writes forwarded and returned */
  char pad[48];
};

/* What the write path reads for one bitmap, copied into the set. */
struct tracked {
  unsigned granularity_bits;
  unsigned region_shift;
  uint64_t nbits;
  _Atomic (_Atomic uint64_t *) *leaves;
  _Atomic (_Atomic uint64_t *) *zero_leaves;    /* the state's zero map */
  /* crash-safe: the state's armed regions.  qemu mode has nothing to
   * check: region_shift is 63 (every bit is in region 0) and armed points
   * at a word whose bit 0 is set (tracker_always_armed), so that the
   * write path needs no test of the mode.
   */
  _Atomic uint64_t *armed;
  struct tracked_state *st;
};

/* The bitmaps a write must be recorded in.  Immutable once published;
 * replaced as a whole (checkpoint, growth), and freed through epoch.h
 * once no writer can still be reading it.  A writer that
 * finds the set replaced after marking marks again in the new one: so
 * every write lands in the bitmaps before a cut, after it, or both.
 */
struct track_set {
  size_t nt;
  struct tracked t[];
};

struct tracker {
  struct tracker_config cfg;
  struct qcow2_image *img;      /* NULL until the file exists */
  /* Nothing is written to an existing file until the first writer comes
   * (tracker_set_size): a start that fails later, a read-only server and
   * read-only clients leave the file as it was.  Set once, under the
   * caller's serialisation of tracker_set_size and the model changes.
   */
  _Atomic bool active;
  uint32_t *open_flags;         /* bitmap flags as the file had them */
  bool identity_logged;         /* "file changed behind our back" said */
  _Atomic (struct track_set *) set;
  /* The write path's view of it: SET when it tracks exactly one bitmap
   * and in_use needs no re-assertion (in_use_cleared false), else (and
   * always with cfg.no_fast_path) NULL.
   * Refreshed (tracker_refresh_fast) after every change of either, before
   * anything that change protects is written: so a fast-path writer that
   * reads FAST twice and sees the same set both times read its bits
   * before any cut that followed.
   */
  _Atomic (const struct track_set *) fast;
  _Atomic (const struct track_set *) *fast_slot;   /* &fast, or cfg's */
  /* The same view once zero maps count data writes (zero_counting): then
   * FAST is NULL, and the steady state is tracker_enter_counted_noop's,
   * which counts the write before its checks.
   */
  _Atomic (const struct track_set *) fast_zero;
  /* tracker_hold_slow_path holds (under quiesce_lock): while > 0 the
   * fast view stays NULL.
   */
  _Atomic unsigned slow_holds;
  uint64_t export_size;         /* under the caller's size serialisation */
  /* Lock order: quiesce_lock, persist_lock, arm_lock, sync_lock. */
  pthread_mutex_t persist_lock; /* one persist at a time */
  pthread_mutex_t arm_lock;     /* region state changes on disk */
  pthread_mutex_t sync_lock;    /* group commit of arming writes */
  _Atomic uint64_t write_seq;
  uint64_t synced_seq;
  uint64_t arm_gen;             /* +1 before regions are written exact (arm_lock) */
  /* crash-safe: the last persist left regions armed (touched since its
   * cut), so the next one has work even if no bit flips meanwhile.
   */
  _Atomic bool shrink_pending;
  /* qemu mode, after tracker_quiesce: in_use is clear on disk, so a write
   * that flips a bit must set it again before it is forwarded.
   */
  _Atomic bool in_use_cleared;
  pthread_mutex_t quiesce_lock;

  /* Every set, state and bitmap storage alive (published, or in the
   * model).  One that stops being reachable is taken off its list and
   * retired (epoch.h): freed once no writer can still hold a pointer to
   * it.  tracker_free frees the rest.
   */
  struct track_set **sets;
  size_t nsets;
  struct tracked_state **states;
  size_t nstates;
  struct bitmap **owned;
  size_t nowned;

  /* Zero-aware maps (zero-maps.c).  Set once, by the first zero or trim
   * request, under zero_enable_lock: zero_counting (from then on data
   * writes are counted and clear zero bits), an epoch barrier (no
   * uncounted data write is left), then zero_live (zero requests may
   * set bits).
   * zero_lock: a zero request's setting of bits, a cut's closing of
   * states and the capture of frozen zero maps.  Neither is held while
   * waiting for anything else.
   */
  _Atomic bool zero_counting;   /* set first: data writes count */
  _Atomic bool zero_live;       /* then, once none uncounted is left */
  pthread_mutex_t zero_enable_lock;
  pthread_mutex_t zero_lock;
  struct zero_stripe zero_stripes[TRACKER_ZERO_STRIPES];

  uint64_t generation;          /* +1 at each checkpoint or growth */
  int64_t last_persist;         /* time() of the last durable save, or 0 */
};

/* Number of bitmaps tracked now, and their names ("'a', 'b'", malloc'd). */
extern size_t tracker_ntracked (struct tracker *tr);
extern char *tracker_tracked_names (struct tracker *tr);

/* The same as a NULL-terminated array of strings (malloc'd; NULL if out
 * of memory), freed by tracker_free_list.  Caller serialises model
 * changes.
 */
extern char **tracker_tracked_list (struct tracker *tr);
extern void tracker_free_list (char **v);

/* Open (and validate) the file if it exists, take QEMU-compatible locks,
 * apply the in_use policy, add the named bitmap if absent, and rewrite the
 * file in the canonical layout (atomically).  If the file does not exist,
 * nothing is created until tracker_set_size.
 *
 * Which bitmaps are tracked: in QEMU's layout every enabled (auto) one, as
 * QEMU does; in the draft-2015 layout only the one named bitmap_name (the
 * container holds bitmaps for other drives, left as they are).
 */
extern int tracker_open (const struct tracker_config *cfg,
                         struct tracker **trp, struct dbm_err *err);

/* A writer is about to be served an export of SIZE bytes: create the
 * file if needed, or bring an existing one into use (the first change
 * tracker_open deferred: canonical rewrite, in_use in qemu mode, the
 * running state).  A larger export than the file (the disk grew) grows
 * the file and the bitmaps, the new area marked dirty, while other
 * connections keep writing; a smaller one is refused.  An export of size
 * 0 needs nothing (nothing can be written to it).
 */
extern int tracker_set_size (struct tracker *tr, uint64_t size,
                             struct dbm_err *err);

/* Virtual size of the file, 0 if not created yet. */
extern uint64_t tracker_size (const struct tracker *tr);

/* The write path: record [offset, offset+count) before it is forwarded.
 * Returns 0, or -1 with errno set (the request must then fail).
 */
extern int tracker_mark (struct tracker *tr, uint64_t offset, uint64_t count);

/* tracker_mark for a caller already inside the epoch (epoch_enter), which
 * stays inside until its write is forwarded (see tracker_slot_enter_noop).
 */
extern int tracker_mark_inside (struct tracker *tr, uint64_t offset,
                                uint64_t count);

/* Zero-aware maps.  A granule's zero bit says that the last change to
 * all of it was a zero or trim request; a data write clears it.  It is
 * never set unless that is certain: a zero request sets bits only if no
 * data write to its stripes was in flight while it ran, and only in the
 * bitmaps it marked, if no cut began meanwhile.  The enabled bitmaps'
 * maps live in memory only (a restart starts them empty); a checkpoint
 * saves the frozen ones in the file (qcow2-zero.c).
 *
 * tracker_zero_enable: called before a zero or trim request enters the
 * epoch, holding nothing: the first call makes every later data write
 * count itself (and waits for the writes in flight).
 */
extern void tracker_zero_enable (struct tracker *tr);

/* The steady state once zero maps count data writes: the write counts
 * itself in its stripe, then checks that it needs nothing (as
 * tracker_slot_enter_noop) and that its granules have no zero bit to
 * clear.  Returns the epoch slot to pass, with *COUNTED, to
 * tracker_counted_leave once the write returned; NULL: take the general
 * path (tracker_mark_data), nothing to leave.
 */
extern struct epoch_slot *tracker_enter_counted_noop (
  struct tracker *tr, uint64_t offset, uint64_t count,
  struct zero_stripe **counted);
extern void tracker_counted_leave (struct epoch_slot *e,
                                   struct zero_stripe *counted);

/* What a zero request carries from marking to its completion. */
struct tracker_zero_op {
  const struct track_set *s;    /* the set it marked */
  uint64_t started;             /* data writes begun on its stripes */
  bool ok;                      /* none was in flight when it began */
};

/* Inside the epoch, for the whole request.  A data write: mark (clearing
 * zero bits), *COUNTED says whether tracker_data_done must follow once
 * the write returns.  A zero or trim: mark, and after it succeeded
 * tracker_zero_done sets the zero bits of whole granules if still
 * certain.
 */
extern int tracker_mark_data (struct tracker *tr, uint64_t offset,
                              uint64_t count, bool *counted);
extern void tracker_data_done (struct tracker *tr, uint64_t offset,
                               uint64_t count);
extern int tracker_mark_zero (struct tracker *tr, uint64_t offset,
                              uint64_t count, struct tracker_zero_op *op);
extern void tracker_zero_done (struct tracker *tr, uint64_t offset,
                               uint64_t count,
                               const struct tracker_zero_op *op);

/* Keep the write path's fast view empty (HOLD true) while something
 * must see every write (live snapshots), or let it be used again.
 * Counted: each hold needs its release.
 */
extern void tracker_hold_slow_path (struct tracker *tr, bool hold);

/* True if a write of [offset, offset+count) needs nothing in bitmap T:
 * every bit already set, in one word, and in crash-safe mode its region
 * armed (so the bits are on disk).  Loads only, in the order mark_set
 * stores.  (count == 0 needs no test: nothing is to be marked either way.)
 */
static inline __attribute__ ((always_inline)) bool
tracked_check (const struct tracked *t, uint64_t offset, uint64_t count,
               bool zero)
{
  uint64_t first = offset >> t->granularity_bits;
  uint64_t last = (offset + count - 1) >> t->granularity_bits;
  uint64_t leaf = first / BITMAP_LEAF_BITS, wi = (first % BITMAP_LEAF_BITS) >> 6;
  _Atomic uint64_t *words;
  uint64_t w, r;

  if (((first ^ last) >> 6) != 0 || last >= t->nbits)
    return false;
  words = atomic_load (&t->leaves[leaf]);
  if (words == NULL)
    return false;
  /* Bits FIRST..LAST of the word all set: the complement shifted so that
   * bit FIRST is bit 0, then shifted up so that only LAST - FIRST + 1
   * bits remain (LAST - FIRST < 64, so both shifts are 0..63).
   */
  w = ~atomic_load (&words[wi]);
  if (((w >> (first & 63)) << (63 - (last - first))) != 0)
    return false;
  /* ZERO: no zero bit of the range set either, from the same word of the
   * zero map (zero-maps.c: a data write must clear them).
   */
  if (zero && (words = atomic_load (&t->zero_leaves[leaf])) != NULL &&
      ((atomic_load (&words[wi]) >> (first & 63)) << (63 - (last - first)))
      != 0)
    return false;
  /* A word never straddles regions (a region is whole words). */
  r = first >> t->region_shift;
  return (atomic_load (&t->armed[r >> 6]) >> (r & 63)) & 1;
}

static inline __attribute__ ((always_inline)) bool
tracked_is_noop (const struct tracked *t, uint64_t offset, uint64_t count)
{
  return tracked_check (t, offset, count, false);
}

/* tracked_is_noop, and no zero bit of bitmap T set in the range either. */
static inline __attribute__ ((always_inline)) bool
tracked_is_noop_zero (const struct tracked *t, uint64_t offset,
                      uint64_t count)
{
  return tracked_check (t, offset, count, true);
}

/* The steady state of the common case, inline so that the caller can
 * tail-call the plugin: one tracked bitmap and nothing to do in it.
 * False means "call tracker_mark" (which also handles several bitmaps),
 * nothing worse.  In qemu mode after a quiesce a write must see in_use
 * set on disk, so that state always takes tracker_mark.
 */
static inline __attribute__ ((always_inline)) bool
tracker_slot_is_noop (_Atomic (const struct track_set *) *fast,
                      uint64_t offset, uint64_t count)
{
  struct epoch_slot *e = epoch_try_enter ();
  const struct track_set *s;
  bool r;

  if (e == NULL)
    return false;
  s = atomic_load (fast);
  DBM_TEST_HOOK (DBM_HOOK_NOOP_LOADED);
  /* The set is loaded again after the bits: if a cut replaced it since,
   * the bits seen may have been set by a marker after the old bitmap was
   * saved, so the general path must mark the new set (as mark_slow).
   */
  r = s != NULL && tracked_is_noop (&s->t[0], offset, count) &&
    atomic_load (fast) == s;
  epoch_leave (e);
  return r;
}

/* The same, staying inside the epoch when it is a no-op: the caller
 * forwards the write and then calls epoch_leave on what this returns
 * (NULL: take tracker_mark's path, nothing to leave).  So a write the
 * fast path lets through is inside until it has reached the plugin, and
 * epoch_barrier waits for it (the snapshots' freeze).
 */
static inline __attribute__ ((always_inline)) struct epoch_slot *
tracker_slot_enter_noop (_Atomic (const struct track_set *) *fast,
                         uint64_t offset, uint64_t count)
{
  struct epoch_slot *e = epoch_try_enter ();
  const struct track_set *s;

  if (e == NULL)
    return NULL;
  s = atomic_load (fast);
  DBM_TEST_HOOK (DBM_HOOK_NOOP_LOADED);
  if (s != NULL && tracked_is_noop (&s->t[0], offset, count) &&
      atomic_load (fast) == s)
    return e;
  epoch_leave (e);
  return NULL;
}

static inline __attribute__ ((always_inline)) bool
tracker_mark_is_noop (struct tracker *tr, uint64_t offset, uint64_t count)
{
  return tracker_slot_is_noop (tr->fast_slot, offset, count);
}

/* Make the file reflect every bit set before the call began, durably.
 * In crash-safe mode this also shrinks all-ones regions not touched since
 * it began to exact bits.
 */
extern int tracker_persist (struct tracker *tr, struct dbm_err *err);

/* The same, every bitmap-persist-interval: in crash-safe mode it shrinks
 * only regions idle for a whole interval (not touched since the previous
 * persist cut nor since this one), so that regions in use stay armed and
 * pay no synced write again.  qemu mode: tracker_persist.
 */
extern int tracker_persist_periodic (struct tracker *tr, struct dbm_err *err);

/* True if a persist would write anything. */
extern bool tracker_dirty (struct tracker *tr);

/* A client's flush: the bitmap half of "data and bitmap are durable".
 * qemu mode persists; crash-safe mode has nothing to write.  Both first
 * check that the file is still the one written (not unlinked, replaced,
 * truncated or overwritten): if not, -1 with EIO saying what happened,
 * and the bits stay in memory (tracker_rewrite puts them back on disk).
 */
extern int tracker_flush (struct tracker *tr, struct dbm_err *err);

/* Write the whole model again as a new file at the configured path, e.g.
 * after tracker_flush found the file damaged or gone.
 */
extern int tracker_rewrite (struct tracker *tr, struct dbm_err *err);

/* An explicit save ('persist' on the control socket, and the final one):
 * tracker_persist, after writing the file again if it was damaged or
 * lost behind our back.
 */
extern int tracker_save (struct tracker *tr, struct dbm_err *err);

/* The server is quitting but may wait for idle clients: persist now and,
 * in qemu mode, clear in_use, so that a later SIGKILL leaves a clean file.
 * nbdkit answers requests arriving after the quit with ESHUTDOWN, but one
 * that was already past that check may still reach tracker_mark: it sets
 * in_use again before it is forwarded.
 */
extern int tracker_quiesce (struct tracker *tr, struct dbm_err *err);

/* Final persist; in qemu mode clear in_use.  Frees TR. */
extern int tracker_close (struct tracker *tr, struct dbm_err *err);

/* Offline recovery after an unclean shutdown, without nbdkit: in-use
 * bitmaps are marked entirely dirty and in_use cleared; a crash-safe
 * file is reported (it needs nothing) and its running flag cleared.
 * Each action is logged.
 */
extern int tracker_recover_offline (const char *path,
                                    void (*log) (const char *fmt, ...),
                                    struct dbm_err *err);

/* A checkpoint: an atomic cut without pausing writes.  From the cut on,
 * writes are recorded in a new enabled bitmap NAME (granularity
 * 1 << GRANULARITY_BITS); every bitmap enabled before it is disabled and
 * saved exact, consistent and durable before this returns.  QEMU's layout
 * only.
 */
extern int tracker_checkpoint (struct tracker *tr, const char *name,
                               unsigned granularity_bits,
                               struct dbm_err *err);

/* The same; and if FROZEN is not NULL, every range the disabled bitmaps
 * mark dirty in the file, as saved (read back), is marked in it (at its
 * own granularity): exactly what a reader of the saved bitmaps will ask
 * for.  If that fails the checkpoint still stands: -1 with ERR saying so,
 * errnum ENOMEM, and *TAKEN true.  *TAKEN also tells a checkpoint in
 * force whose sync failed (-1, EIO) from one not taken.
 */
extern int tracker_checkpoint_frozen (struct tracker *tr, const char *name,
                                      unsigned granularity_bits,
                                      struct bitmap *frozen, bool *taken,
                                      struct dbm_err *err);

/* Record in the file that point-in-time snapshots are live (LIVE true),
 * or no longer, so that the start after a crash can say they were lost.
 */
extern int tracker_note_snapshots (struct tracker *tr, bool live,
                                   struct dbm_err *err);

/* The export size the last writer saw (tracker_set_size), 0 before. */
extern uint64_t tracker_export_size (const struct tracker *tr);

/* Remove a disabled bitmap from the file (atomically). */
extern int tracker_remove (struct tracker *tr, const char *name,
                           struct dbm_err *err);

/* One line of JSON describing the file and its bitmaps (malloc'd). */
extern char *tracker_status_json (struct tracker *tr, struct dbm_err *err);

/* Free without touching the file (startup failures, crash simulation). */
extern void tracker_free (struct tracker *tr);

#endif /* DBM_TRACKER_H */
