/* The zero maps' protocol (common/zero-maps.c), with the tracker's
 * test-only pause points compiled in:
 *
 * 1. Whole granules a zero or trim request covers are zero in the frozen
 *    map, partial ones are not, a later data write clears; the map is in
 *    the file as its bitmap's companion, a subset of its dirty bits, and
 *    status and removal treat the two as one.
 * 2. A data write in flight when a zero request begins, or one that
 *    begins while it runs, leaves no zero bit.
 * 3. A data write that begins after the zero request's check but before
 *    it sets its bits (so its clear came first): the check after setting
 *    takes them back.
 * 4. A zero request marked before a checkpoint that completes after it:
 *    no bit in the frozen map (its state was closed by the cut), none in
 *    the new one (it marked the old set only).  And one that runs whole
 *    while a checkpoint is between its cut and its save: none in the
 *    frozen map, whose last change there was data.
 * 5. Restart: the enabled bitmap's zero map starts empty; the frozen
 *    ones stay in the file; a file whose autoclear bit QEMU cleared has
 *    none, and its stale companions are dropped at the next save.
 * 6. Once a zero request was seen, a data write the inline fast path
 *    lets through counts itself too: one that runs while a zero request
 *    does keeps it from setting bits; and a write into a granule with a
 *    zero bit is not let through (it has a bit to clear).
 * 7. The draft layout (no checkpoints) never counts.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "tracker.h"
#include "test-unit.h"

static char dir[] = "/tmp/test-zero-maps.XXXXXX";
static char path[256];

#define SIZE (UINT64_C (1) << 30)
#define G UINT64_C (65536)

static struct tracker *tr;

/* One paused thread at a time, at the hook it chose (once). */
static sem_t at_hook, go;
static _Atomic bool hook_armed;
static _Thread_local int wait_at = -1;

void
dbm_test_hook (enum dbm_hook point)
{
  if ((int) point != wait_at || !atomic_exchange (&hook_armed, false))
    return;
  sem_post (&at_hook);
  sem_wait (&go);
}

static void
nolog (const char *fmt, ...)
{
}

static enum tracker_mode mode = TRACKER_CRASH_SAFE;

static struct tracker *
open_tracker (bool fresh)
{
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b",
    .granularity_bits = 16, .mode = mode,
    .in_use_policy = IN_USE_DIRTY, .region_size = 4 << 20, .log = nolog,
  };
  struct dbm_err err;
  struct tracker *t;

  if (fresh)
    unlink (path);
  if (tracker_open (&cfg, &t, &err) == -1 ||
      tracker_set_size (t, SIZE, &err) == -1) {
    fprintf (stderr, "tracker: %s\n", err.msg);
    exit (1);
  }
  return t;
}

/* A data write, whole: marked, forwarded (nothing), returned. */
static void
data (uint64_t off, uint64_t len)
{
  struct epoch_slot *e = epoch_enter ();
  bool counted;

  CHECK (tracker_mark_data (tr, off, len, &counted) == 0);
  if (counted)
    tracker_data_done (tr, off, len);
  epoch_leave (e);
}

/* A zero request, whole. */
static void
zero (uint64_t off, uint64_t len)
{
  struct tracker_zero_op op;
  struct epoch_slot *e;

  tracker_zero_enable (tr);
  e = epoch_enter ();
  CHECK (tracker_mark_zero (tr, off, len, &op) == 0);
  tracker_zero_done (tr, off, len, &op);
  epoch_leave (e);
}

/* Granule N of the zero map the file holds for bitmap NAME (closed). */
static bool
file_zero (const char *name, uint64_t n)
{
  struct qcow2_image *img;
  struct dbm_err err;
  int i, z;
  bool r = false;

  if (qcow2_open (path, 0, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    exit (1);
  }
  i = qcow2_find_bitmap (img, name);
  if (i >= 0 && (z = qcow2_zero_map_of (img, i)) >= 0)
    r = bitmap_test (img->bitmaps[z].bits, n);
  qcow2_close (img);
  return r;
}

/* The same of the tracker's model while it runs. */
static bool
model_zero (const char *name, uint64_t n)
{
  int i = qcow2_find_bitmap (tr->img, name), z;

  return i >= 0 && (z = qcow2_zero_map_of (tr->img, i)) >= 0 &&
    bitmap_test (tr->img->bitmaps[z].bits, n);
}

static void
checkpoint (const char *name)
{
  struct dbm_err err;

  if (tracker_checkpoint (tr, name, 16, &err) == -1) {
    fprintf (stderr, "checkpoint %s: %s\n", name, err.msg);
    CHECK (!"checkpoint");
  }
}

static void
test_basic (void)
{
  struct dbm_err err;
  char *st;

  tr = open_tracker (true);
  data (0, 4 * G);
  zero (1 * G, 2 * G);                  /* 1, 2 */
  zero (8 * G + 512, 3 * G);            /* 9, 10 whole; 8, 11 partial */
  zero (16 * G, 2 * G);
  data (17 * G + 100, 1);               /* 17 data again */
  zero (SIZE - G / 2, G / 2);           /* half the last granule, to the end */
  checkpoint ("c1");
  CHECK (model_zero ("b", 1) && model_zero ("b", 2));
  CHECK (!model_zero ("b", 0) && !model_zero ("b", 3));
  CHECK (!model_zero ("b", 8) && model_zero ("b", 9) &&
         model_zero ("b", 10) && !model_zero ("b", 11));
  CHECK (model_zero ("b", 16) && !model_zero ("b", 17));
  CHECK (!model_zero ("b", SIZE / G - 1));
  /* The companion is no bitmap of its own to status. */
  st = tracker_status_json (tr, &err);
  CHECK (st && strstr (st, "[zero]") == NULL);
  CHECK (st && strstr (st, "\"zero_bytes\":327680") != NULL);
  free (st);
  /* The new bitmap's map starts empty, and data clears it again. */
  zero (20 * G, G);
  data (20 * G, 512);
  zero (21 * G, G);
  checkpoint ("c2");
  CHECK (!model_zero ("c1", 20) && model_zero ("c1", 21));
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (file_zero ("b", 1) && file_zero ("b", 16) && !file_zero ("b", 17));
  CHECK (file_zero ("c1", 21) && !file_zero ("c1", 20));

  /* Removal takes the companion along. */
  tr = open_tracker (false);
  CHECK (tracker_remove (tr, "b", &err) == 0);
  CHECK (qcow2_find_bitmap (tr->img, "b [zero]") < 0);
  CHECK (qcow2_find_bitmap (tr->img, "c1 [zero]") >= 0);
  CHECK (tracker_close (tr, &err) == 0);
}

static void
test_in_flight (void)
{
  struct tracker_zero_op op;
  struct epoch_slot *e;
  struct dbm_err err;
  bool counted;

  tr = open_tracker (true);
  zero (0, G);                          /* live */
  /* A data write begun, not returned, when the zero request begins. */
  e = epoch_enter ();
  CHECK (tracker_mark_data (tr, 5 * G, 512, &counted) == 0 && counted);
  CHECK (tracker_mark_zero (tr, 5 * G, G, &op) == 0);
  tracker_zero_done (tr, 5 * G, G, &op);
  tracker_data_done (tr, 5 * G, 512);
  /* One that begins and returns while the zero request runs. */
  CHECK (tracker_mark_zero (tr, 6 * G, G, &op) == 0);
  data (6 * G, 512);
  tracker_zero_done (tr, 6 * G, G, &op);
  /* One on another stripe does not matter. */
  CHECK (tracker_mark_zero (tr, 7 * G, G, &op) == 0);
  data (7 * G + (UINT64_C (1) << TRACKER_ZERO_STRIPE_SHIFT), 512);
  tracker_zero_done (tr, 7 * G, G, &op);
  epoch_leave (e);
  checkpoint ("c1");
  CHECK (model_zero ("b", 0));
  CHECK (!model_zero ("b", 5));
  CHECK (!model_zero ("b", 6));
  CHECK (model_zero ("b", 7));
  CHECK (tracker_close (tr, &err) == 0);
}

/* The filter's steady path once zero maps count: check, forward, leave. */
static bool
fast_data (uint64_t off, uint64_t len)
{
  struct zero_stripe *counted = NULL;
  struct epoch_slot *e;

  /* Not the view of writes that do not count themselves. */
  CHECK (tracker_slot_enter_noop (tr->fast_slot, off, len) == NULL);
  e = tracker_enter_counted_noop (tr, off, len, &counted);
  if (e == NULL)
    return false;
  CHECK (counted != NULL);
  tracker_counted_leave (e, counted);
  return true;
}

static void
test_fast_path (void)
{
  struct tracker_zero_op op;
  struct epoch_slot *e;
  struct dbm_err err;

  tr = open_tracker (true);
  data (0, 16 * G);                     /* dirty, region armed */
  zero (0, G);                          /* live; granule 0 zero */
  CHECK (!fast_data (0, 512));          /* a zero bit to clear */
  CHECK (fast_data (G, 512));           /* nothing to do: let through */
  /* A zero request of granule 2; the fast path lets a write of it
   * through while it runs: no zero bit.
   */
  e = epoch_enter ();
  CHECK (tracker_mark_zero (tr, 2 * G, G, &op) == 0);
  CHECK (fast_data (2 * G, 512));
  tracker_zero_done (tr, 2 * G, G, &op);
  epoch_leave (e);
  /* A write of granule 0 took the general path and cleared it. */
  data (0, 512);
  zero (3 * G, G);
  checkpoint ("c1");
  CHECK (!model_zero ("b", 0));
  CHECK (!model_zero ("b", 2));
  CHECK (model_zero ("b", 3));
  CHECK (tracker_close (tr, &err) == 0);
}

static void *
zeroer (void *arg)
{
  wait_at = DBM_HOOK_ZERO_CHECKED;
  zero (3 * G, G);
  return NULL;
}

static void
test_recheck (void)
{
  struct dbm_err err;
  pthread_t z;

  tr = open_tracker (true);
  zero (0, G);
  atomic_store (&hook_armed, true);
  pthread_create (&z, NULL, zeroer, NULL);
  sem_wait (&at_hook);
  /* Checked, not yet set: a data write begins, clears nothing, returns. */
  data (3 * G, 512);
  sem_post (&go);
  pthread_join (z, NULL);
  checkpoint ("c1");
  if (model_zero ("b", 3)) {
    fprintf (stderr, "a zero bit survived a data write that began before "
             "it was set\n");
    CHECK (!"zero bit over data");
  }
  CHECK (tracker_close (tr, &err) == 0);
}

static void
test_across_cut (void)
{
  struct tracker_zero_op op;
  struct epoch_slot *e;
  struct dbm_err err;

  tr = open_tracker (true);
  zero (0, G);
  e = epoch_enter ();
  CHECK (tracker_mark_zero (tr, 4 * G, G, &op) == 0);
  /* The checkpoint completes while the request is forwarded. */
  checkpoint ("c1");
  tracker_zero_done (tr, 4 * G, G, &op);
  epoch_leave (e);
  checkpoint ("c2");
  CHECK (model_zero ("b", 0));
  CHECK (!model_zero ("b", 4));
  CHECK (!model_zero ("c1", 4));
  CHECK (tracker_close (tr, &err) == 0);
}

static void *
checkpointer (void *arg)
{
  wait_at = DBM_HOOK_SETTLED;
  checkpoint ("c1");
  return NULL;
}

/* qemu mode (a marker on the transitional set arms nothing, so it does
 * not wait for the paused checkpoint): data, then a checkpoint that
 * stops after saving the old bitmap; a zero request of the same granule
 * runs whole meanwhile, on the set with both bitmaps.  It belongs to the
 * new interval: the old bitmap's last change there was data.
 */
static void
test_during_cut (void)
{
  struct dbm_err err;
  pthread_t c;

  mode = TRACKER_QEMU;
  tr = open_tracker (true);
  zero (0, G);
  data (6 * G, 512);
  atomic_store (&hook_armed, true);
  pthread_create (&c, NULL, checkpointer, NULL);
  sem_wait (&at_hook);
  zero (6 * G, G);
  sem_post (&go);
  pthread_join (c, NULL);
  CHECK (model_zero ("b", 0));
  if (model_zero ("b", 6)) {
    fprintf (stderr, "a zero request after the cut set a zero bit in the "
             "bitmap the cut froze\n");
    CHECK (!"zero bit from the next interval");
  }
  CHECK (tracker_close (tr, &err) == 0);
  mode = TRACKER_CRASH_SAFE;
}

/* Clear our autoclear bit, as QEMU's read-write open does. */
static void
clear_our_bit (void)
{
  struct qcow2_image *img;
  struct dbm_err err;

  CHECK (qcow2_open (path, QCOW2_OPEN_RW, &img, &err) == 0);
  CHECK (img->autoclear_features & QCOW2_AUTOCLEAR_DBM_ZERO);
  CHECK (qcow2_write_autoclear (img, QCOW2_AUTOCLEAR_BITMAPS, &err) == 0);
  qcow2_close (img);
}

static void
test_restart (void)
{
  struct dbm_err err;

  tr = open_tracker (true);
  zero (0, 2 * G);
  checkpoint ("c1");
  zero (2 * G, G);                      /* c1's: lost at the restart */
  CHECK (tracker_close (tr, &err) == 0);
  tr = open_tracker (false);
  CHECK (model_zero ("b", 0));
  zero (3 * G, G);                      /* after the restart: kept */
  checkpoint ("c2");
  CHECK (!model_zero ("c1", 2) && model_zero ("c1", 3));
  CHECK (tracker_close (tr, &err) == 0);

  clear_our_bit ();
  CHECK (!file_zero ("b", 0));
  tr = open_tracker (false);
  CHECK (qcow2_find_bitmap (tr->img, "b [zero]") >= 0);  /* an ordinary one */
  zero (5 * G, G);
  checkpoint ("c3");
  /* The stale companions went, the new one counts. */
  CHECK (qcow2_find_bitmap (tr->img, "b [zero]") < 0);
  CHECK (qcow2_find_bitmap (tr->img, "c1 [zero]") < 0);
  CHECK (model_zero ("c2", 5));
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (file_zero ("c2", 5) && !file_zero ("b", 0));
}

/* The draft layout has no checkpoints, so zero maps never count. */
static void
test_draft (void)
{
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_DRAFT2015, .bitmap_name = "d",
    .granularity_bits = 16, .mode = TRACKER_CRASH_SAFE,
    .in_use_policy = IN_USE_DIRTY, .region_size = 4 << 20, .log = nolog,
  };
  struct dbm_err err;

  unlink (path);
  CHECK (tracker_open (&cfg, &tr, &err) == 0);
  CHECK (tracker_set_size (tr, SIZE, &err) == 0);
  zero (0, G);
  CHECK (!atomic_load (&tr->zero_counting));
  CHECK (atomic_load (tr->fast_slot) != NULL);
  CHECK (tracker_close (tr, &err) == 0);
}

int
main (void)
{
  sem_init (&at_hook, 0, 0);
  sem_init (&go, 0, 0);
  if (mkdtemp (dir) == NULL)
    return 1;
  snprintf (path, sizeof path, "%s/bm.qcow2", dir);
  test_basic ();
  test_in_flight ();
  test_fast_path ();
  test_recheck ();
  test_across_cut ();
  test_during_cut ();
  test_restart ();
  test_draft ();
  unlink (path);
  rmdir (dir);
  TEST_DONE ();
}
