/* Proves that every rollback of a model change survives running out of
 * memory: for checkpoint, growth, removal, rewrite and creation, the N-th
 * allocation inside the operation fails, for every N until the operation
 * needs no more; after each failure the tracker still marks, persists
 * and closes cleanly, the file is valid, and every range marked before
 * or after is in the file's union of bitmaps (nothing recorded is lost).
 * A zero request before the operation gives the checkpoint a zero map to
 * save (its allocations fail in turn too): the file's zero maps call
 * nothing zero but that request's granule.
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tracker.h"
#include "test-unit.h"

void *__real_malloc (size_t);
void *__real_calloc (size_t, size_t);
void *__real_realloc (void *, size_t);

static long countdown;          /* 0: no failure planned */
static bool failed;

static bool
fail_now (void)
{
  if (countdown > 0 && --countdown == 0) {
    failed = true;
    errno = ENOMEM;
    return true;
  }
  return false;
}

void *
__wrap_malloc (size_t n)
{
  return fail_now () ? NULL : __real_malloc (n);
}

void *
__wrap_calloc (size_t a, size_t b)
{
  return fail_now () ? NULL : __real_calloc (a, b);
}

void *
__wrap_realloc (void *p, size_t n)
{
  return fail_now () ? NULL : __real_realloc (p, n);
}

static char dir[] = "/tmp/test-tracker-enomem.XXXXXX";
static char path[256];

#define SIZE (UINT64_C (1) << 30)
#define G 16

enum op { CHECKPOINT, GROW, REMOVE, REWRITE, CREATE };
static const char *op_names[] = {
  "checkpoint", "growth", "removal", "rewrite", "creation"
};

static struct tracker *
open_tracker (struct dbm_err *err)
{
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b0",
    .granularity_bits = G, .mode = TRACKER_CRASH_SAFE,
    .in_use_policy = IN_USE_DIRTY, .region_size = 4 << 20,
  };
  struct tracker *tr;

  return tracker_open (&cfg, &tr, err) == 0 ? tr : NULL;
}

/* Union of the file's bitmaps has granule G set? */
static bool
file_covers (uint64_t off)
{
  struct qcow2_image *img;
  struct dbm_err err;
  bool r = false;
  uint32_t i;

  if (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    return false;
  }
  for (i = 0; i < img->nb_bitmaps; ++i)
    r |= bitmap_test (img->bitmaps[i].bits, off >> G);
  qcow2_close (img);
  return r;
}

/* A zero request of [off, off+len), whole. */
static void
zero (struct tracker *tr, uint64_t off, uint64_t len)
{
  struct tracker_zero_op op;
  struct epoch_slot *e;

  tracker_zero_enable (tr);
  e = epoch_enter ();
  CHECK (tracker_mark_zero (tr, off, len, &op) == 0);
  tracker_zero_done (tr, off, len, &op);
  epoch_leave (e);
}

/* Bits the file's zero maps set other than granule ZG; sets *SAVED if
 * one has ZG.
 */
static uint64_t
stray_zero_bits (uint64_t zg, bool *saved)
{
  struct qcow2_image *img;
  struct dbm_err err;
  uint64_t n = 0;
  uint32_t i;

  *saved = false;
  if (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &img, &err) == -1)
    return 1;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct bitmap *bm = img->bitmaps[i].bits;

    if (!qcow2_is_zero_map (img, i))
      continue;
    *saved |= bitmap_test (bm, zg);
    n += bitmap_count (bm) - bitmap_test (bm, zg);
  }
  qcow2_close (img);
  return n;
}

/* One run of OP with the N-th allocation failing; true if the operation
 * no longer met a failure (N is past its last allocation).
 */
static bool
run (enum op op, long n)
{
  struct dbm_err err;
  struct tracker *tr;
  uint64_t before = 3 * (UINT64_C (1) << 20), after = 700 << 20;
  uint64_t zoff = 5 << 20;
  bool saved;
  int r = 0;

  unlink (path);
  tr = open_tracker (&err);
  if (tr == NULL) {
    fprintf (stderr, "%s\n", err.msg);
    exit (1);
  }
  if (op != CREATE) {
    CHECK (tracker_set_size (tr, SIZE, &err) == 0);
    CHECK (tracker_mark (tr, before, 512) == 0);
    zero (tr, zoff, UINT64_C (1) << G);
    if (op == REMOVE) {
      CHECK (tracker_checkpoint (tr, "b1", G, &err) == 0);
      CHECK (tracker_mark (tr, before + (1 << 20), 512) == 0);
    }
  }
  failed = false;
  countdown = n;
  switch (op) {
  case CHECKPOINT: r = tracker_checkpoint (tr, "b1", G, &err); break;
  case GROW:       r = tracker_set_size (tr, 2 * SIZE, &err); break;
  case REMOVE:     r = tracker_remove (tr, "b0", &err); break;
  case REWRITE:    r = tracker_rewrite (tr, &err); break;
  case CREATE:     r = tracker_set_size (tr, SIZE, &err); break;
  }
  countdown = 0;
  if (!failed)
    CHECK (r == 0);
  if (op == CREATE && r == -1) {
    /* The creation failed cleanly: a later writer creates the file. */
    CHECK (tracker_set_size (tr, SIZE, &err) == 0);
  }
  /* The tracker goes on: marks, persists and closes; nothing recorded is
   * lost (for a removal that succeeded, b0's bits went with it: only the
   * mark recorded after the checkpoint must stay).
   */
  CHECK (tracker_mark (tr, after, 512) == 0);
  CHECK (tracker_persist (tr, &err) == 0);
  CHECK (tracker_close (tr, &err) == 0);
  if (op != CREATE && !(op == REMOVE && r == 0))
    CHECK (file_covers (before));
  if (op == REMOVE)
    CHECK (file_covers (before + (1 << 20)));
  CHECK (file_covers (after));
  CHECK (stray_zero_bits (zoff >> G, &saved) == 0);
  if (op == CHECKPOINT && !failed)
    CHECK (saved);
  if (test_failures) {
    fprintf (stderr, "%s with allocation %ld failing: r=%d (%s)\n",
             op_names[op], n, r, r ? err.msg : "ok");
    exit (1);
  }
  return !failed;
}

int
main (void)
{
  enum op op;

  if (mkdtemp (dir) == NULL)
    return 1;
  snprintf (path, sizeof path, "%s/bm.qcow2", dir);
  for (op = CHECKPOINT; op <= CREATE; ++op) {
    long n;

    for (n = 1; !run (op, n); ++n)
      ;
    printf ("%s: %ld allocation failures survived\n", op_names[op], n - 1);
  }
  unlink (path);
  rmdir (dir);
  TEST_DONE ();
}
