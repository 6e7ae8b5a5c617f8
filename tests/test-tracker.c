/* Proves the tracker's two persistence modes keep their promises:
 * crash-safe: at every instant the file holds, with in_use clear, a
 * superset of every completed mark (checked by reading the file while
 * markers and persists run concurrently) and the extra area is bounded by
 * the regions touched since the last persist; qemu: in_use while running,
 * exact bits after persist, in_use cleared by a clean close.
 */
#include <config.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "tracker.h"
#include "test-unit.h"

static char dir[] = "/tmp/test-tracker.XXXXXX";
static char path[256];

#define SIZE (UINT64_C (1) << 30)
#define NRANGES 30000
static uint64_t roff[NRANGES], rlen[NRANGES];
static _Atomic int ndone;
static _Atomic int nclaim;
static struct tracker *tr;
static atomic_bool stop;

static struct tracker *
open_tracker_sized (enum tracker_mode mode, uint64_t size)
{
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b", .granularity_bits = 16, .mode = mode,
    .in_use_policy = IN_USE_DIRTY, .region_size = 4 << 20,
  };
  struct dbm_err err;
  struct tracker *t;

  if (tracker_open (&cfg, &t, &err) == -1 ||
      tracker_set_size (t, size, &err) == -1) {
    fprintf (stderr, "tracker: %s\n", err.msg);
    exit (1);
  }
  return t;
}

static struct tracker *
open_tracker (enum tracker_mode mode)
{
  return open_tracker_sized (mode, SIZE);
}

/* Every completed range must be dirty in the file as it is now. */
static void
check_superset (int upto, bool want_consistent)
{
  struct qcow2_image *img;
  struct dbm_err err;
  int i;

  if (qcow2_open (path, 0, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    CHECK (!"file unreadable while running");
    return;
  }
  CHECK_EQ (img->leaked_clusters, 0);
  if (want_consistent)
    CHECK (!img->bitmaps[0].inconsistent);
  for (i = 0; i < upto; ++i) {
    uint64_t g;
    for (g = roff[i] >> 16; g <= (roff[i] + rlen[i] - 1) >> 16; ++g)
      if (!bitmap_test (img->bitmaps[0].bits, g)) {
        fprintf (stderr, "range %d (%" PRIu64 "+%" PRIu64 ") granule %" PRIu64
                 " not on disk\n", i, roff[i], rlen[i], g);
        CHECK (!"completed write missing from the file");
        qcow2_close (img);
        return;
      }
  }
  qcow2_close (img);
}

static void *
marker (void *arg)
{
  for (;;) {
    int i = atomic_fetch_add (&nclaim, 1);
    if (i >= NRANGES)
      break;
    CHECK (tracker_mark (tr, roff[i], rlen[i]) == 0);
    /* Publish in order of completion is not needed: wait for our turn so
     * ndone counts a prefix of completed marks.
     */
    while (atomic_load (&ndone) != i)
      sched_yield ();           /* 2 cores, 3 markers: let the turn come */
    atomic_store (&ndone, i + 1);
  }
  return NULL;
}

static void *
persister (void *arg)
{
  struct dbm_err err;
  while (!atomic_load (&stop)) {
    CHECK (tracker_persist (tr, &err) == 0);
    usleep (2000);
  }
  return NULL;
}

static void
test_crash_safe_concurrent (void)
{
  pthread_t m[3], p;
  unsigned seed = 42;
  struct dbm_err err;
  int i, k;

  for (i = 0; i < NRANGES; ++i) {
    roff[i] = (uint64_t) rand_r (&seed) * 4099 % SIZE;
    rlen[i] = 1 + rand_r (&seed) % 300000;
    if (roff[i] + rlen[i] > SIZE)
      rlen[i] = SIZE - roff[i];
  }
  tr = open_tracker (TRACKER_CRASH_SAFE);
  pthread_create (&p, NULL, persister, NULL);
  for (k = 0; k < 3; ++k)
    pthread_create (&m[k], NULL, marker, NULL);
  /* Read the file mid-flight, as a crash would leave it. */
  for (k = 0; k < 20; ++k) {
    usleep (3000);
    check_superset (atomic_load (&ndone), true);
  }
  for (k = 0; k < 3; ++k)
    pthread_join (m[k], NULL);
  atomic_store (&stop, true);
  pthread_join (p, NULL);
  check_superset (NRANGES, true);
  CHECK (tracker_close (tr, &err) == 0);
  check_superset (NRANGES, true);
}

static void
test_bound (void)
{
  struct qcow2_image *img;
  struct dbm_err err;
  uint64_t g;

  unlink (path);
  tr = open_tracker (TRACKER_CRASH_SAFE);
  CHECK (tracker_mark (tr, 0, 1) == 0);               /* region 0 */
  CHECK (tracker_persist (tr, &err) == 0);            /* exact: granule 0 */
  CHECK (tracker_mark (tr, 100 << 20, 1) == 0);       /* region 25 */
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  if (img) {
    /* region 0 exact, region 25 (4 MiB = 64 granules) all ones. */
    CHECK_EQ (bitmap_count (img->bitmaps[0].bits), 1 + 64);
    CHECK (bitmap_test (img->bitmaps[0].bits, 0));
    for (g = 1600; g < 1664; ++g)
      CHECK (bitmap_test (img->bitmaps[0].bits, g));
    qcow2_close (img);
  }
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  if (img) {
    CHECK_EQ (bitmap_count (img->bitmaps[0].bits), 2);   /* exact */
    qcow2_close (img);
  }
}

static void
test_qemu_mode (void)
{
  struct qcow2_image *img;
  struct dbm_err err;

  unlink (path);
  tr = open_tracker (TRACKER_QEMU);
  CHECK (tracker_mark (tr, 65536 * 3, 10) == 0);
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  if (img) {
    CHECK (img->bitmaps[0].inconsistent);             /* in_use */
    qcow2_close (img);
  }
  CHECK (tracker_dirty (tr));
  CHECK (tracker_persist (tr, &err) == 0);
  CHECK (!tracker_dirty (tr));
  CHECK (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &img, &err) == 0);
  if (img) {
    CHECK (bitmap_test (img->bitmaps[0].bits, 3));
    CHECK_EQ (bitmap_count (img->bitmaps[0].bits), 1);
    qcow2_close (img);
  }
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  if (img) {
    CHECK (!img->bitmaps[0].inconsistent);
    CHECK_EQ (img->bitmaps[0].flags, BME_FLAG_AUTO);
    qcow2_close (img);
  }
  /* Reopen after a simulated crash (in_use left set): policy dirty. */
  tr = open_tracker (TRACKER_QEMU);
  tracker_free (tr);
  tr = open_tracker (TRACKER_CRASH_SAFE);
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  if (img) {
    CHECK_EQ (bitmap_count (img->bitmaps[0].bits), img->bitmaps[0].bits->nbits);
    qcow2_close (img);
  }
  CHECK (tracker_close (tr, &err) == 0);
}

/* In use as QEMU sees it: flags of bitmap 0 in the file now. */
static bool
file_in_use (void)
{
  struct qcow2_image *img;
  struct dbm_err err;
  bool r;

  if (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    CHECK (!"file unreadable");
    return false;
  }
  r = (img->bitmaps[0].flags & BME_FLAG_IN_USE) != 0;
  qcow2_close (img);
  return r;
}

/* qemu mode at the quit signal: tracker_quiesce saves and clears in_use;
 * a write that still reaches the tracker (one already past nbdkit's quit
 * check) sets in_use again, durably, before it returns; one that flips no
 * bit needs nothing.
 */
static void
test_quiesce (void)
{
  struct dbm_err err;

  unlink (path);
  tr = open_tracker (TRACKER_QEMU);
  CHECK (tracker_mark (tr, 0, 512) == 0);
  CHECK (file_in_use ());
  CHECK (tracker_quiesce (tr, &err) == 0);
  CHECK (!file_in_use ());
  CHECK (tracker_mark (tr, 65536 * 9, 512) == 0);
  CHECK (file_in_use ());
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (!file_in_use ());
}

/* An existing file is not written until the first writer: open and close
 * without tracker_set_size leave every byte as it was, in both modes,
 * even for a file that needs a rewrite or an in_use policy.
 */
static void
test_deferred (void)
{
  enum tracker_mode modes[] = { TRACKER_QEMU, TRACKER_CRASH_SAFE };
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b",
    .granularity_bits = 16, .in_use_policy = IN_USE_DIRTY,
    .region_size = 4 << 20,
  };
  static char before[4 << 20], after[4 << 20];
  struct dbm_err err;
  size_t k;

  for (k = 0; k < 2; ++k) {
    FILE *f;
    size_t n1, n2;

    unlink (path);
    tr = open_tracker (TRACKER_QEMU);
    CHECK (tracker_mark (tr, 0, 512) == 0);
    tracker_free (tr);                  /* a crash: left in_use */
    f = fopen (path, "rb");
    n1 = fread (before, 1, sizeof before, f);
    fclose (f);
    cfg.mode = modes[k];
    CHECK (tracker_open (&cfg, &tr, &err) == 0);
    CHECK (tracker_persist (tr, &err) == 0);
    CHECK (tracker_flush (tr, &err) == 0);
    CHECK (tracker_close (tr, &err) == 0);
    f = fopen (path, "rb");
    n2 = fread (after, 1, sizeof after, f);
    fclose (f);
    CHECK (n1 > 65536 * 3 && n1 < sizeof before);
    CHECK (n1 == n2 && memcmp (before, after, n1) == 0);
  }
}

/* Checkpoints and a growth while 3 threads mark: each mark must be wholly
 * in one bitmap B_j with a <= j <= b (a: checkpoints finished before it
 * began, b: checkpoints begun before it ended), as the file shows after a
 * clean close; a removed disabled bitmap is gone and the file stays valid.
 */
#define NCK 40
static _Atomic int ck_started, ck_done;
static int ra[NRANGES], rb[NRANGES];

static void *
ck_marker (void *arg)
{
  for (;;) {
    int i = atomic_fetch_add (&nclaim, 1);
    if (i >= NRANGES)
      break;
    ra[i] = atomic_load (&ck_done);
    CHECK (tracker_mark (tr, roff[i], rlen[i]) == 0);
    rb[i] = atomic_load (&ck_started);
  }
  return NULL;
}

static void *
checkpointer (void *arg)
{
  struct dbm_err err;
  char name[16];
  int k;

  for (k = 1; k <= NCK; ++k) {
    snprintf (name, sizeof name, "c%d", k);
    atomic_fetch_add (&ck_started, 1);
    if (tracker_checkpoint (tr, name, 16, &err) == -1) {
      fprintf (stderr, "checkpoint: %s\n", err.msg);
      CHECK (!"checkpoint failed");
    }
    atomic_fetch_add (&ck_done, 1);
    if (k == NCK / 2)
      CHECK (tracker_set_size (tr, 2 * SIZE, &err) == 0);       /* grow */
    usleep (500);
  }
  return NULL;
}

static void
test_checkpoints (enum tracker_mode mode)
{
  pthread_t m[3], c;
  struct qcow2_image *img;
  struct dbm_err err;
  int i, k, bad = 0;

  unlink (path);
  atomic_store (&nclaim, 0);
  atomic_store (&ck_started, 0);
  atomic_store (&ck_done, 0);
  tr = open_tracker (mode);
  pthread_create (&c, NULL, checkpointer, NULL);
  for (k = 0; k < 3; ++k)
    pthread_create (&m[k], NULL, ck_marker, NULL);
  for (k = 0; k < 3; ++k)
    pthread_join (m[k], NULL);
  pthread_join (c, NULL);
  CHECK_EQ (tracker_size (tr), 2 * SIZE);
  CHECK (tracker_close (tr, &err) == 0);

  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  CHECK_EQ (img->nb_bitmaps, NCK + 1);
  CHECK_EQ (img->leaked_clusters, 0);
  for (i = 0; i < NRANGES; ++i) {
    uint64_t first = roff[i] >> 16, last = (roff[i] + rlen[i] - 1) >> 16, g;
    bool found = false;
    int j;
    for (j = ra[i]; j <= rb[i] && !found; ++j) {
      const struct bitmap *bm = img->bitmaps[j].bits;
      for (g = first; g <= last && bitmap_test (bm, g); ++g)
        ;
      found = g > last;
    }
    if (!found && bad++ < 5)
      fprintf (stderr, "mode %d: range %d in no bitmap %d..%d\n", mode, i,
               ra[i], rb[i]);
  }
  CHECK_EQ (bad, 0);
  /* The grown half is dirty in every bitmap that existed at the growth. */
  for (k = 0; k <= NCK / 2; ++k)
    CHECK (bitmap_find (img->bitmaps[k].bits, SIZE >> 16, false) ==
           img->bitmaps[k].bits->nbits);
  qcow2_close (img);

  /* Remove a disabled bitmap; the enabled one is refused. */
  tr = open_tracker_sized (mode, 2 * SIZE);
  CHECK (tracker_remove (tr, "c1", &err) == 0);
  CHECK (tracker_remove (tr, "c40", &err) == -1);
  CHECK (strstr (err.msg, "is recording writes") != NULL);
  CHECK (tracker_checkpoint (tr, "c2", 16, &err) == -1);
  CHECK (strstr (err.msg, "already exists") != NULL);
  CHECK (tracker_close (tr, &err) == 0);
  CHECK (qcow2_open (path, 0, &img, &err) == 0);
  CHECK_EQ (img->nb_bitmaps, NCK);
  CHECK (qcow2_find_bitmap (img, "c1") < 0);
  qcow2_close (img);
}

/* Bitmap 0 of the file now, NULL on error (caller closes). */
static struct qcow2_image *
file_now (void)
{
  struct qcow2_image *img;
  struct dbm_err err;

  if (qcow2_open (path, 0, &img, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    CHECK (!"file unreadable");
    return NULL;
  }
  return img;
}

/* Is region R (4 MiB, 64 granules) of the file all-ones (pre-marked)? */
static bool
file_region_full (uint64_t r)
{
  struct qcow2_image *img = file_now ();
  bool full;

  if (img == NULL)
    return false;
  full = bitmap_find (img->bitmaps[0].bits, r * 64, false) >= (r + 1) * 64;
  qcow2_close (img);
  return full;
}

static uint64_t
file_count (void)
{
  struct qcow2_image *img = file_now ();
  uint64_t n;

  if (img == NULL)
    return 0;
  n = bitmap_count (img->bitmaps[0].bits);
  qcow2_close (img);
  return n;
}

static bool
region_armed (uint64_t r)
{
  const struct track_set *s = atomic_load (&tr->set);
  _Atomic uint64_t *a = s->t[0].st->armed;
  return (atomic_load (&a[r >> 6]) >> (r & 63)) & 1;
}

/* crash-safe, the periodic persist: a region touched in the interval that
 * its cut ends stays armed (no synced write when it is written again); it
 * shrinks only once idle for a whole interval; a region touched in every
 * interval is never disarmed; an explicit persist shrinks every region
 * not touched since it began.  Regions are 4 MiB = 64 granules.
 */
static void
test_idle_persist (void)
{
  struct dbm_err err;
  int i;

  unlink (path);
  tr = open_tracker (TRACKER_CRASH_SAFE);
  CHECK (tracker_mark (tr, 0, 1) == 0);                 /* region 0 */
  CHECK (tracker_mark (tr, 8 << 20, 1) == 0);           /* region 2 */
  CHECK (file_region_full (0) && file_region_full (2));
  /* Cut 1: both were touched in the interval it ends: they stay. */
  CHECK (tracker_persist_periodic (tr, &err) == 0);
  CHECK (region_armed (0) && region_armed (2));
  CHECK (file_region_full (0) && file_region_full (2));
  CHECK (tracker_dirty (tr));           /* they must shrink later */
  /* Region 2 stays in use (a first write into a granule in each
   * interval), region 0 goes idle.
   */
  for (i = 1; i <= 4; ++i) {
    CHECK (tracker_mark (tr, (8 << 20) + i * 65536, 1) == 0);
    CHECK (tracker_persist_periodic (tr, &err) == 0);
    /* Cut 2 found region 0 idle for the interval 1..2: exact. */
    CHECK (!region_armed (0));
    CHECK (!file_region_full (0));
    CHECK (region_armed (2));
    CHECK (file_region_full (2));
  }
  CHECK_EQ (file_count (), 1 + 64);
  /* A write into the idle, disarmed region arms it again (durably). */
  CHECK (tracker_mark (tr, 65536 * 5, 1) == 0);
  CHECK (region_armed (0) && file_region_full (0));
  /* An explicit persist shrinks everything not touched since its cut,
   * however recently: the file is exact.
   */
  CHECK (tracker_persist (tr, &err) == 0);
  CHECK (!region_armed (0) && !region_armed (2));
  CHECK_EQ (file_count (), 2 + 5);
  CHECK (!tracker_dirty (tr));
  CHECK (tracker_close (tr, &err) == 0);
  CHECK_EQ (file_count (), 2 + 5);
}

/* bitmap-region not given: an export over TRACKER_AUTO_REGIONS * 64M gets
 * regions doubled until it has at most that many, recorded in the file's
 * header (the crash report reads it from there); a chosen size, or a
 * small export, keeps its region.
 */
static void
test_auto_region (void)
{
  static const struct { uint64_t size; bool dflt; uint64_t want; } c[] = {
    { UINT64_C (2) << 40, true, UINT64_C (512) << 20 },
    { UINT64_C (2) << 40, false, UINT64_C (64) << 20 },
    { UINT64_C (256) << 30, true, UINT64_C (64) << 20 },
    { (UINT64_C (256) << 30) + 512, true, UINT64_C (128) << 20 },
    { UINT64_C (1) << 30, true, UINT64_C (64) << 20 },
  };
  size_t i;

  for (i = 0; i < sizeof c / sizeof c[0]; ++i) {
    struct tracker_config cfg = {
      .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b",
      .granularity_bits = 16, .mode = TRACKER_CRASH_SAFE,
      .in_use_policy = IN_USE_DIRTY, .region_size = UINT64_C (64) << 20,
      .region_default = c[i].dflt,
    };
    struct qcow2_image *img;
    struct dbm_err err;
    struct tracker *t;
    const struct track_set *s;

    unlink (path);
    if (tracker_open (&cfg, &t, &err) == -1 ||
        tracker_set_size (t, c[i].size, &err) == -1) {
      fprintf (stderr, "tracker: %s\n", err.msg);
      CHECK (!"tracker open");
      continue;
    }
    CHECK_EQ (t->cfg.region_size, c[i].want);
    s = atomic_load (&t->set);
    CHECK_EQ (UINT64_C (1) << (s->t[0].region_shift + 16), c[i].want);
    CHECK (s->t[0].st->nregions <= TRACKER_AUTO_REGIONS + 1 || !c[i].dflt);
    CHECK (tracker_mark (t, c[i].size - 512, 512) == 0);
    tracker_free (t);           /* a crash: the header says the region */
    CHECK (qcow2_open (path, 0, &img, &err) == 0);
    if (img) {
      CHECK_EQ (img->dbm_region_size, c[i].want);
      /* The last region is all-ones, nothing else is set. */
      uint64_t start = (c[i].size - 512) / c[i].want * c[i].want;
      CHECK_EQ (bitmap_count (img->bitmaps[0].bits),
                (c[i].size - start + 65535) >> 16);
      qcow2_close (img);
    }
  }
  unlink (path);
}

int
main (void)
{
  if (mkdtemp (dir) == NULL)
    return 1;
  snprintf (path, sizeof path, "%s/bitmaps.qcow2", dir);
  test_crash_safe_concurrent ();
  test_bound ();
  test_idle_persist ();
  test_auto_region ();
  test_qemu_mode ();
  test_quiesce ();
  test_deferred ();
  test_checkpoints (TRACKER_CRASH_SAFE);
  test_checkpoints (TRACKER_QEMU);
  unlink (path);
  rmdir (dir);
  TEST_DONE ();
}
