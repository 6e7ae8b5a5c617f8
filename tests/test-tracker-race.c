/* Proves two orderings of the tracker that ordinary stress rarely hits,
 * by pausing threads at the test-only hooks (common/test-hooks.h):
 *
 * 1. A write whose range a cut (checkpoint) moved to a new set is never
 *    forwarded on the strength of bits another marker set in the old set
 *    after the old bitmap was saved: when the fast-path check (inline, or
 *    inside tracker_mark) says "nothing to do", the range is recorded, and
 *    in crash-safe mode armed, in the current set.
 * 2. A bit flipped while a crash-safe persist scans keeps the tracker
 *    dirty, so the next periodic persist shrinks its all-ones region: with
 *    no more writes, two persists leave the file equal to memory.
 * 3. A first write whose all-ones went to the file a rewrite (removal,
 *    'persist' after damage) then replaced arms its region again: a
 *    later write into that region is on disk before it is forwarded.
 * 4. qemu mode, a checkpoint made in place: a bit set by a marker that
 *    has not yet flagged its leaf changed (and that another write, found
 *    "nothing to do", relied on) is in the disabled bitmap on disk.
 * 5. crash-safe, a checkpoint made in place that fails: a write that saw
 *    its region armed before the checkpoint disarmed it, and whose bit
 *    came after the old bitmap's regions were written exact, is on disk
 *    once the old set is back in force.
 * 6. crash-safe, two first writes arming one region: one completes, a
 *    persist then disarms the region and writes it exact while the other
 *    is still between its all-ones write and its sync; that one must arm
 *    the region again, not set the armed bit over the exact bits: a later
 *    first write into the region is on disk before it is forwarded.
 *    (Both the explicit and the periodic persist.)
 * 7. A marker that loaded the set before a checkpoint and marks the old
 *    bitmap after it was saved: the disabled bitmap the tracker keeps
 *    (status, later rewrites) holds what the file holds, not that late
 *    bit; the write is recorded in the new bitmap.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tracker.h"
#include "test-unit.h"

static char dir[] = "/tmp/test-tracker-race.XXXXXX";
static char path[256];

#define SIZE (UINT64_C (1) << 30)
#define G 65536
#define REGION (4 << 20)

/* Which thread stops where: each role waits at one hook. */
enum role { NONE, WRITER, MARKER, PERSISTER };
static _Thread_local enum role role;
static sem_t at_hook[4], go[4];
static enum dbm_hook stop_at[4];
static _Atomic bool armed_hook[4];

void
dbm_test_hook (enum dbm_hook point)
{
  if (role == NONE || point != stop_at[role] ||
      !atomic_exchange (&armed_hook[role], false))
    return;
  sem_post (&at_hook[role]);
  sem_wait (&go[role]);
}

static void
plan (enum role r, enum dbm_hook point)
{
  stop_at[r] = point;
  atomic_store (&armed_hook[r], true);
}

static struct tracker *
open_tracker (enum tracker_mode mode)
{
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b",
    .granularity_bits = 16, .mode = mode, .in_use_policy = IN_USE_DIRTY,
    .region_size = REGION,
  };
  struct dbm_err err;
  struct tracker *t;

  unlink (path);
  if (tracker_open (&cfg, &t, &err) == -1 ||
      tracker_set_size (t, SIZE, &err) == -1) {
    fprintf (stderr, "tracker: %s\n", err.msg);
    exit (1);
  }
  return t;
}

static struct tracker *tr;
static uint64_t target;         /* the write both threads care about */
static bool use_inline;
static _Atomic bool writer_noop;

static void *
writer (void *arg)
{
  /* A thread's first tracker call registers its epoch slot; the inline
   * check of an unregistered thread always says "take the general path".
   */
  epoch_leave (epoch_enter ());
  role = WRITER;
  if (use_inline)
    atomic_store (&writer_noop, tracker_mark_is_noop (tr, target, 512));
  else {
    /* tracker_mark returns 0 from its own check, or marks: either way
     * the range must be recorded in the current set when it returns.
     */
    CHECK (tracker_mark (tr, target, 512) == 0);
    atomic_store (&writer_noop, true);
  }
  return NULL;
}

static void *
marker (void *arg)
{
  role = MARKER;
  CHECK (tracker_mark (tr, target, 512) == 0);
  return NULL;
}

/* Is TARGET recorded (bit set and, crash-safe, region armed) in the
 * current set's newest bitmap?
 */
static bool
recorded_in_current (void)
{
  const struct track_set *s = atomic_load (&tr->set);
  const struct tracked *t = &s->t[s->nt - 1];
  return tracked_is_noop (t, target, 512);
}

static void
test_stale_set (enum tracker_mode mode, bool inl)
{
  pthread_t w, m;
  struct dbm_err err;

  tr = open_tracker (mode);
  use_inline = inl;
  target = 7 * (uint64_t) REGION + 3 * G;
  /* The region is armed in the old set (a neighbour granule written). */
  CHECK (tracker_mark (tr, target + G, 512) == 0);

  /* The marker loads the old set and stops before marking. */
  plan (MARKER, DBM_HOOK_MARK_LOADED);
  pthread_create (&m, NULL, marker, NULL);
  sem_wait (&at_hook[MARKER]);
  /* The writer loads the old set and stops before checking its bits. */
  plan (WRITER, inl ? DBM_HOOK_NOOP_LOADED : DBM_HOOK_MARK_LOADED);
  pthread_create (&w, NULL, writer, NULL);
  sem_wait (&at_hook[WRITER]);
  /* The cut: the old bitmap is saved without TARGET. */
  CHECK (tracker_checkpoint (tr, "cut", 16, &err) == 0);
  /* The marker sets TARGET's bit in the old set, then stops before it
   * re-reads the set (where it would mark the new one).
   */
  plan (MARKER, DBM_HOOK_MARK_MARKED);
  sem_post (&go[MARKER]);
  sem_wait (&at_hook[MARKER]);
  /* Now the writer checks: it must not see "nothing to do" unless the
   * range is recorded in the current set.
   */
  sem_post (&go[WRITER]);
  pthread_join (w, NULL);
  if (atomic_load (&writer_noop) && !recorded_in_current ()) {
    fprintf (stderr, "%s mode, %s check: a write moved past the cut was "
             "found 'nothing to do' on bits set after the old bitmap was "
             "saved\n", mode == TRACKER_QEMU ? "qemu" : "crash-safe",
             inl ? "inline" : "tracker_mark's");
    CHECK (!"stale set used by the fast path");
  }
  if (inl && !atomic_load (&writer_noop))
    CHECK (tracker_mark (tr, target, 512) == 0);   /* the general path */
  CHECK (recorded_in_current ());
  sem_post (&go[MARKER]);
  pthread_join (m, NULL);
  CHECK (tracker_close (tr, &err) == 0);
}

static void *
persister (void *arg)
{
  struct dbm_err err;

  role = PERSISTER;
  CHECK (tracker_persist (tr, &err) == 0);
  return NULL;
}

/* The file's bitmap equals memory exactly (no all-ones region left). */
static bool
file_exact (void)
{
  struct qcow2_image *img;
  struct dbm_err err;
  const struct track_set *s = atomic_load (&tr->set);
  const struct bitmap *mem = s->t[0].st->bits;
  uint64_t i;
  bool ok = true;

  if (qcow2_open (path, 0, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    return false;
  }
  ok = bitmap_count (img->bitmaps[0].bits) == bitmap_count (mem);
  for (i = bitmap_find (mem, 0, true); ok && i < mem->nbits;
       i = bitmap_find (mem, i + 1, true))
    ok = bitmap_test (img->bitmaps[0].bits, i);
  qcow2_close (img);
  return ok;
}

static void
test_persist_shrinks (void)
{
  pthread_t p, m;
  struct dbm_err err;
  int k;

  tr = open_tracker (TRACKER_CRASH_SAFE);
  CHECK (tracker_mark (tr, 1 * (uint64_t) REGION, 512) == 0);
  /* The persister stops after scanning, arm_lock held; meanwhile a first
   * write into a fresh region flips its bit (and then waits to arm).
   */
  target = 9 * (uint64_t) REGION + 5 * G;
  plan (PERSISTER, DBM_HOOK_PERSIST_SCANNED);
  pthread_create (&p, NULL, persister, NULL);
  sem_wait (&at_hook[PERSISTER]);
  pthread_create (&m, NULL, marker, NULL);
  while (!bitmap_test (atomic_load (&tr->set)->t[0].st->bits, target >> 16))
    usleep (1000);
  sem_post (&go[PERSISTER]);
  pthread_join (p, NULL);
  pthread_join (m, NULL);
  /* No more writes: what the periodic persist does, twice. */
  for (k = 0; k < 2; ++k)
    if (tracker_dirty (tr))
      CHECK (tracker_persist (tr, &err) == 0);
  if (!file_exact ()) {
    fprintf (stderr, "a region armed during a persist stayed all-ones: "
             "tracker_dirty said there was nothing to do\n");
    CHECK (!"periodic persist stopped shrinking");
  }
  CHECK (tracker_close (tr, &err) == 0);
}

/* Does the file have granule G set in bitmap NAME? */
static bool
file_has_in (const char *name, uint64_t g)
{
  struct qcow2_image *img;
  struct dbm_err err;
  bool r;
  int i;

  if (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    return false;
  }
  i = qcow2_find_bitmap (img, name);
  r = i >= 0 && bitmap_test (img->bitmaps[i].bits, g);
  qcow2_close (img);
  return r;
}

static void
test_arm_across_rewrite (void)
{
  pthread_t m;
  struct dbm_err err;
  uint64_t later;

  tr = open_tracker (TRACKER_CRASH_SAFE);
  target = 11 * (uint64_t) REGION + 2 * G;
  later = target + 5 * G;                       /* same region */
  /* The marker writes the region all-ones and stops before its sync. */
  plan (MARKER, DBM_HOOK_ARM_WRITTEN);
  pthread_create (&m, NULL, marker, NULL);
  sem_wait (&at_hook[MARKER]);
  /* A rewrite replaces the file: the region is exact there. */
  CHECK (tracker_rewrite (tr, &err) == 0);
  sem_post (&go[MARKER]);
  pthread_join (m, NULL);
  /* A later first write of a granule in that region needs its region
   * armed in the new file: on disk before the write would be forwarded.
   */
  CHECK (tracker_mark (tr, later, 512) == 0);
  if (!file_has_in ("b", later / G)) {
    fprintf (stderr, "a region armed into the replaced file was taken as "
             "armed in the new one: a write is not on disk\n");
    CHECK (!"armed bit set across a rewrite");
  }
  CHECK (tracker_close (tr, &err) == 0);
}

static void
test_unflagged_leaf (void)
{
  pthread_t m, w;
  struct dbm_err err;

  tr = open_tracker (TRACKER_QEMU);
  target = 13 * (uint64_t) REGION + 4 * G;
  /* The leaf exists, its changed flags taken by a persist. */
  CHECK (tracker_mark (tr, target + G, 512) == 0);
  CHECK (tracker_persist (tr, &err) == 0);
  /* The marker flips TARGET's bit and stops before flagging the leaf. */
  plan (MARKER, DBM_HOOK_BIT_SET);
  pthread_create (&m, NULL, marker, NULL);
  sem_wait (&at_hook[MARKER]);
  /* Another write of that granule: nothing to do, it would go on. */
  use_inline = true;
  pthread_create (&w, NULL, writer, NULL);
  pthread_join (w, NULL);
  CHECK (atomic_load (&writer_noop));
  /* The cut: "b" is saved in place and disabled. */
  CHECK (tracker_checkpoint (tr, "cut", 16, &err) == 0);
  if (!file_has_in ("b", target / G)) {
    fprintf (stderr, "qemu mode: a checkpoint saved the disabled bitmap "
             "without a bit whose leaf was not yet flagged changed\n");
    CHECK (!"bit lost by an in-place checkpoint");
  }
  sem_post (&go[MARKER]);
  pthread_join (m, NULL);
  CHECK (tracker_close (tr, &err) == 0);
}

static void
test_arm_across_persist (bool periodic)
{
  pthread_t m;
  struct dbm_err err;
  uint64_t first, later;

  tr = open_tracker (TRACKER_CRASH_SAFE);
  target = 17 * (uint64_t) REGION + 2 * G;
  first = target + 3 * G;                       /* same region */
  later = target + 9 * G;
  /* The marker finds the region disarmed, writes it all-ones and stops
   * before its sync.
   */
  plan (MARKER, DBM_HOOK_ARM_WRITTEN);
  pthread_create (&m, NULL, marker, NULL);
  sem_wait (&at_hook[MARKER]);
  /* Another first write arms the same region and completes (its sync
   * covers the marker's write too).
   */
  CHECK (tracker_mark (tr, first, 512) == 0);
  /* Persists: the periodic one needs the region idle for an interval,
   * so it takes two; the region is disarmed and written exact.
   */
  if (periodic) {
    CHECK (tracker_persist_periodic (tr, &err) == 0);
    CHECK (tracker_persist_periodic (tr, &err) == 0);
  }
  else
    CHECK (tracker_persist (tr, &err) == 0);
  sem_post (&go[MARKER]);
  pthread_join (m, NULL);
  /* A first write of another granule of the region: if the marker took
   * its region as armed, this one goes on without the region on disk.
   */
  CHECK (tracker_mark (tr, later, 512) == 0);
  if (!file_has_in ("b", later / G)) {
    fprintf (stderr, "an arming overtaken by a persist's exact write set "
             "the armed bit: a write is not on disk (%s)\n",
             periodic ? "periodic" : "explicit");
    CHECK (!"armed bit set over an exact region");
  }
  CHECK (tracker_close (tr, &err) == 0);
}

/* The next extension of a file fails (a full disk, for qcow2_update). */
static _Atomic bool fail_extend;

int
ftruncate (int fd, off_t len)
{
  struct stat st;

  if (atomic_load (&fail_extend) && fstat (fd, &st) == 0 && len > st.st_size) {
    errno = ENOSPC;
    return -1;
  }
  return syscall (SYS_ftruncate, fd, len);
}

static void *
checkpointer (void *arg)
{
  struct dbm_err err;

  role = PERSISTER;
  CHECK (tracker_checkpoint (tr, "cut", 16, &err) == -1);
  return NULL;
}

static void
test_failed_settle (void)
{
  pthread_t w, c;
  struct dbm_err err;

  tr = open_tracker (TRACKER_CRASH_SAFE);
  target = 15 * (uint64_t) REGION + 6 * G;
  /* The region is armed (a neighbour written); TARGET's bit is not set. */
  CHECK (tracker_mark (tr, target + G, 512) == 0);
  /* A write of TARGET loads the set and stops. */
  use_inline = false;
  plan (WRITER, DBM_HOOK_MARK_LOADED);
  pthread_create (&w, NULL, writer, NULL);
  sem_wait (&at_hook[WRITER]);
  /* A checkpoint stops once the old bitmap is written exact in place;
   * its update will fail (no room to extend the file).
   */
  atomic_store (&fail_extend, true);
  plan (PERSISTER, DBM_HOOK_SETTLED);
  pthread_create (&c, NULL, checkpointer, NULL);
  sem_wait (&at_hook[PERSISTER]);
  /* Now the write marks the old set, after the export, and stops before
   * re-reading the set.  Had it found its region still armed it would
   * need no file I/O; disarmed, it waits for the checkpoint's arm_lock.
   */
  plan (WRITER, DBM_HOOK_MARK_MARKED);
  sem_post (&go[WRITER]);
  usleep (200000);
  /* The checkpoint fails: the old set, the very same, is in force again,
   * so the re-read finds nothing changed and the write would go on.
   */
  sem_post (&go[PERSISTER]);
  pthread_join (c, NULL);
  atomic_store (&fail_extend, false);
  sem_wait (&at_hook[WRITER]);
  sem_post (&go[WRITER]);
  pthread_join (w, NULL);
  if (!file_has_in ("b", target / G)) {
    fprintf (stderr, "crash-safe: after a failed in-place checkpoint a "
             "write went on without its bit on disk\n");
    CHECK (!"write forwarded over a settled region");
  }
  CHECK (tracker_close (tr, &err) == 0);
}

/* Does the tracker's model of bitmap NAME have bit G set? */
static bool
model_has (const char *name, uint64_t g)
{
  int i = qcow2_find_bitmap (tr->img, name);

  return i >= 0 && bitmap_test (tr->img->bitmaps[i].bits, g);
}

static void
test_late_marker (enum tracker_mode mode)
{
  pthread_t w;
  struct dbm_err err;

  tr = open_tracker (mode);
  target = 7 * (uint64_t) REGION + 3 * G;
  CHECK (tracker_mark (tr, target + G, 512) == 0);
  /* A write of TARGET loads the set and stops before marking. */
  use_inline = false;
  plan (WRITER, DBM_HOOK_MARK_LOADED);
  pthread_create (&w, NULL, writer, NULL);
  sem_wait (&at_hook[WRITER]);
  CHECK (tracker_checkpoint (tr, "cut", 16, &err) == 0);
  /* Now it marks the old set (late), re-reads, and marks the new one. */
  sem_post (&go[WRITER]);
  pthread_join (w, NULL);
  CHECK (!file_has_in ("b", target / G));
  CHECK (file_has_in ("b", target / G + 1));
  if (model_has ("b", target / G)) {
    fprintf (stderr, "%s: a late marker's bit is in the disabled bitmap "
             "in memory but not in the file\n",
             mode == TRACKER_QEMU ? "qemu" : "crash-safe");
    CHECK (!"disabled bitmap in memory differs from the file");
  }
  CHECK (model_has ("b", target / G + 1));
  CHECK (model_has ("cut", target / G));
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (file_has_in ("cut", target / G));
  CHECK (!file_has_in ("b", target / G));
}

int
main (void)
{
  int i;

  for (i = 0; i < 4; ++i) {
    sem_init (&at_hook[i], 0, 0);
    sem_init (&go[i], 0, 0);
  }
  if (mkdtemp (dir) == NULL)
    return 1;
  snprintf (path, sizeof path, "%s/bm.qcow2", dir);
  test_stale_set (TRACKER_CRASH_SAFE, true);
  test_stale_set (TRACKER_CRASH_SAFE, false);
  test_stale_set (TRACKER_QEMU, true);
  test_stale_set (TRACKER_QEMU, false);
  test_persist_shrinks ();
  test_arm_across_rewrite ();
  test_arm_across_persist (false);
  test_arm_across_persist (true);
  test_unflagged_leaf ();
  test_failed_settle ();
  test_late_marker (TRACKER_QEMU);
  test_late_marker (TRACKER_CRASH_SAFE);
  unlink (path);
  rmdir (dir);
  TEST_DONE ();
}
