/* Proves that memory stays bounded over many checkpoints while writers
 * run, and that every checkpoint stays exact: NCK checkpoints (argv[1],
 * default 300), each followed by the removal of the bitmap the previous
 * one froze, under 4 marking threads, in crash-safe mode.  Before each
 * removal, the frozen bitmap must hold every range marked wholly between
 * the two checkpoints around it, and no granule that no range marked
 * across that span explains.  At the end, RSS must be within 10% (plus
 * 2 MiB of allocator slack: the process is only a few MiB) of RSS after
 * the first 100 checkpoints (10% of them if fewer than 1000), and retired
 * objects still waiting for a grace period must be few.  Without
 * reclamation every removed bitmap's storage stays: RSS grows by about
 * 50 KiB per checkpoint here.
 */
#include <config.h>

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "epoch.h"
#include "tracker.h"
#include "test-unit.h"

static char dir[] = "/tmp/test-tracker-soak.XXXXXX";
static char path[256];

#define SIZE (UINT64_C (1) << 34)     /* 16 GiB */
#define G 16                          /* 64K granules */
#define NTHREADS 4
#define RING 8
#define MARKS_PER_EPOCH 24

struct mark { uint64_t off, len; int a, b; };
struct epoch_log {
  pthread_mutex_t lock;
  struct mark *m;
  size_t n, cap;
};

static struct tracker *tr;
static _Atomic int ck_started, ck_done;
static _Atomic bool stop;
static struct epoch_log logs[RING];
/* The epoch a thread's current mark began in, or INT_MAX between marks. */
static _Atomic int inflight[NTHREADS];

static void
log_mark (int k, const struct mark *m)
{
  struct epoch_log *l = &logs[k % RING];

  pthread_mutex_lock (&l->lock);
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 256;
    l->m = realloc (l->m, l->cap * sizeof *l->m);
    if (l->m == NULL)
      abort ();
  }
  l->m[l->n++] = *m;
  pthread_mutex_unlock (&l->lock);
}

static void *
marker (void *arg)
{
  int self = (uintptr_t) arg - 1;
  uint64_t x = (uintptr_t) arg * 0x9e3779b97f4a7c15ULL + 1;

  int epoch = -1, done = 0;

  while (!atomic_load (&stop)) {
    struct mark m;
    int k;

    /* A few marks per epoch (so that checking stays cheap), then wait
     * for the next checkpoint; some marks overlap a checkpoint.
     */
    if (atomic_load (&ck_done) != epoch) {
      epoch = atomic_load (&ck_done);
      done = 0;
    }
    if (done++ >= MARKS_PER_EPOCH) {
      usleep (50);
      continue;
    }

    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    m.off = (x % (SIZE >> 12)) << 12;
    m.len = 512 + (x >> 40) % (3 << 16);
    if (m.off + m.len > SIZE)
      m.len = SIZE - m.off;
    m.a = atomic_load (&ck_done);
    atomic_store (&inflight[self], m.a);
    if (atomic_load (&ck_done) != m.a) {       /* a checkpoint finished */
      atomic_store (&inflight[self], INT_MAX);
      continue;
    }
    CHECK (tracker_mark (tr, m.off, m.len) == 0);
    m.b = atomic_load (&ck_started);
    /* The mark lies in a bitmap of an epoch in [a, b]. */
    for (k = m.a; k <= m.b; ++k)
      log_mark (k, &m);
    atomic_store (&inflight[self], INT_MAX);
  }
  return NULL;
}

/* Bitmap NAME (frozen, epoch K) against the marks of epoch K. */
static void
verify (const char *name, int k)
{
  struct epoch_log *l = &logs[k % RING];
  struct qcow2_image *img = tr->img;
  int i = qcow2_find_bitmap (img, name);
  struct bitmap *bm;
  uint64_t g, last;
  size_t j;

  CHECK (i >= 0);
  if (i < 0)
    return;
  bm = img->bitmaps[i].bits;
  pthread_mutex_lock (&l->lock);
  /* Coverage: a mark wholly in epoch K is in it. */
  for (j = 0; j < l->n; ++j) {
    const struct mark *m = &l->m[j];
    if (m->a != k || m->b != k)
      continue;
    last = (m->off + m->len - 1) >> G;
    for (g = m->off >> G; g <= last; ++g)
      if (!bitmap_test (bm, g)) {
        fprintf (stderr, "%s: granule %" PRIu64 " of a mark in its epoch is "
                 "missing\n", name, g);
        CHECK (!"checkpoint lost a write");
        j = l->n;
        break;
      }
  }
  /* Exactness: every set granule is explained by a mark that may lie in
   * epoch K (sorting would be faster; the sets are small).
   */
  for (g = bitmap_find (bm, 0, true); g < bm->nbits;
       g = bitmap_find (bm, g + 1, true)) {
    bool ok = false;
    for (j = 0; !ok && j < l->n; ++j)
      ok = (l->m[j].off >> G) <= g &&
        g <= ((l->m[j].off + l->m[j].len - 1) >> G);
    if (!ok) {
      fprintf (stderr, "%s: granule %" PRIu64 " is dirty but no write "
               "explains it\n", name, g);
      CHECK (!"unexplained bit");
      break;
    }
  }
  l->n = 0;                     /* epoch K is done: reuse the slot */
  pthread_mutex_unlock (&l->lock);
}

static long
rss_kib (void)
{
  FILE *f = fopen ("/proc/self/status", "r");
  char line[256];
  long kb = -1;

  while (f && fgets (line, sizeof line, f))
    if (sscanf (line, "VmRSS: %ld", &kb) == 1)
      break;
  if (f)
    fclose (f);
  return kb;
}

int
main (int argc, char **argv)
{
  int nck = argc > 1 ? atoi (argv[1]) : 300, k, t;
  int early = nck >= 1000 ? 100 : (nck + 9) / 10;
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "ck-0",
    .granularity_bits = G, .mode = TRACKER_CRASH_SAFE,
    .in_use_policy = IN_USE_DIRTY, .region_size = 64 << 20,
  };
  pthread_t th[NTHREADS];
  struct dbm_err err;
  long rss_early = 0, rss_end;
  char name[32], prev[32];

  for (k = 0; k < RING; ++k)
    pthread_mutex_init (&logs[k].lock, NULL);
  for (t = 0; t < NTHREADS; ++t)
    atomic_init (&inflight[t], INT_MAX);
  if (mkdtemp (dir) == NULL)
    return 1;
  snprintf (path, sizeof path, "%s/bm.qcow2", dir);
  if (tracker_open (&cfg, &tr, &err) == -1 ||
      tracker_set_size (tr, SIZE, &err) == -1) {
    fprintf (stderr, "%s\n", err.msg);
    return 1;
  }
  for (t = 0; t < NTHREADS; ++t)
    pthread_create (&th[t], NULL, marker, (void *) (uintptr_t) (t + 1));
  for (k = 1; k <= nck; ++k) {
    usleep (500);               /* let the writers mark in this epoch */
    snprintf (name, sizeof name, "ck-%d", k);
    snprintf (prev, sizeof prev, "ck-%d", k - 1);
    atomic_store (&ck_started, k);
    if (tracker_checkpoint (tr, name, G, &err) == -1) {
      fprintf (stderr, "checkpoint %d: %s\n", k, err.msg);
      CHECK (!"checkpoint failed");
      break;
    }
    atomic_store (&ck_done, k);
    /* A mark that began in epoch k-1 may still be setting bits in the
     * frozen bitmap (its set is the old one): wait until none is.
     */
    for (t = 0; t < NTHREADS; ++t)
      while (atomic_load (&inflight[t]) <= k - 1)
        sched_yield ();
    verify (prev, k - 1);
    if (tracker_remove (tr, prev, &err) == -1) {
      fprintf (stderr, "remove %s: %s\n", prev, err.msg);
      CHECK (!"remove failed");
      break;
    }
    if (k == early)
      rss_early = rss_kib ();
  }
  atomic_store (&stop, true);
  for (t = 0; t < NTHREADS; ++t)
    pthread_join (th[t], NULL);
  epoch_reclaim ();
  rss_end = rss_kib ();
  printf ("%d checkpoints and removals under %d writers: RSS %ld KiB after "
          "%d, %ld KiB at the end (%.1f%%); %" PRIu64 " retired objects "
          "waiting\n", nck, NTHREADS, rss_early, early, rss_end,
          rss_early ? 100.0 * (rss_end - rss_early) / rss_early : 0.0,
          epoch_pending ());
#if !defined __SANITIZE_ADDRESS__ && !defined __SANITIZE_THREAD__
  /* (ASan quarantines freed memory, TSan shadows it: RSS says nothing.) */
  CHECK (rss_end <= rss_early + rss_early / 10 + 2048);
#endif
  CHECK (epoch_pending () < 64);
  CHECK (tracker_close (tr, &err) == 0);
  unlink (path);
  rmdir (dir);
  TEST_DONE ();
}
