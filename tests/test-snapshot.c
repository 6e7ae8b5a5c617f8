/* Unit tests of the copy-before-write store (common/snapshot.c) and of
 * the freeze of the live set (common/snapshots.c), over an export held
 * in memory.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "epoch.h"
#include "snapshots.h"
#include "tracker.h"
#include "test-unit.h"

#define G 16                    /* 64K granules */
#define GS (UINT64_C (1) << G)
#define SIZE (GS * 64 + 1000)   /* a partial last granule */

static unsigned char *disk;     /* the live export */
/* Its requests are atomic, as a plugin's would be (and TSan-clean). */
static pthread_rwlock_t disk_lock = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic unsigned reads;  /* calls of read_disk */
static int fail_reads;          /* read_disk fails with EIO */
/* Called inside a read (once), as if a write landed during it. */
static void (*during_read) (void);
static char dir[] = "/tmp/test-snapshot.XXXXXX";

static int
read_disk (void *ctx, void *buf, uint32_t count, uint64_t offset, int *err)
{
  void (*hook) (void) = during_read;

  reads++;
  if (fail_reads) {
    *err = EIO;
    return -1;
  }
  if (hook) {
    during_read = NULL;
    hook ();
  }
  pthread_rwlock_rdlock (&disk_lock);
  memcpy (buf, disk + offset, count);
  pthread_rwlock_unlock (&disk_lock);
  return 0;
}

/* A write as the filter does it: copy first, then change the export. */
static void
write_disk (struct snapshot *s, uint64_t off, uint64_t len, int c)
{
  snapshot_before_write (s, off, len, read_disk, NULL);
  pthread_rwlock_wrlock (&disk_lock);
  memset (disk + off, c, len);
  pthread_rwlock_unlock (&disk_lock);
}

static struct snapshot *
new_snap (uint64_t max, struct bitmap *readable)
{
  struct snapshot *s;
  struct dbm_err err;

  if (snapshot_new ("s", SIZE, G, dir, max, readable, &s, &err) == -1) {
    fprintf (stderr, "snapshot_new: %s\n", err.msg);
    exit (1);
  }
  return s;
}

static void
fill (void)
{
  uint64_t i;

  for (i = 0; i < SIZE; ++i)
    disk[i] = (i * 7 + i / 4096) & 0xff;
  memset (disk + 10 * GS, 0, GS);               /* an all-zero granule */
}

/* The snapshot reads back as ORIG over all of it. */
static void
check_all (struct snapshot *s, const unsigned char *orig)
{
  unsigned char *buf = malloc (SIZE);
  char msg[256];
  int err = 0;

  CHECK (snapshot_read (s, buf, SIZE, 0, read_disk, NULL, &err, msg,
                        sizeof msg) == 0);
  CHECK (memcmp (buf, orig, SIZE) == 0);
  /* Unaligned pieces too. */
  CHECK (snapshot_read (s, buf, 5000, GS - 100, read_disk, NULL, &err, msg,
                        sizeof msg) == 0);
  CHECK (memcmp (buf, orig + GS - 100, 5000) == 0);
  free (buf);
}

static void
test_basic (void)
{
  unsigned char *orig = malloc (SIZE);
  struct snapshot *s;
  struct snapshot_info i;
  unsigned n;

  fill ();
  memcpy (orig, disk, SIZE);
  s = new_snap (0, NULL);
  write_disk (s, 100, 10, 'a');                 /* granule 0 */
  write_disk (s, GS - 10, 20, 'b');             /* granules 0 and 1 */
  write_disk (s, 10 * GS + 5, 100, 'c');        /* the zero granule */
  write_disk (s, SIZE - 10, 10, 'd');           /* the partial one */
  n = reads;
  write_disk (s, 200, 10, 'e');                 /* preserved: no read */
  CHECK_EQ (reads, n);
  check_all (s, orig);
  snapshot_get_info (s, &i);
  CHECK_EQ (i.state, SNAPSHOT_ACTIVE);
  CHECK_EQ (i.preserved_bytes, 4 * GS);
  CHECK_EQ (i.store_bytes, 3 * GS);             /* the zero one stores none */
  /* Writes beyond the size at the cut (after growth) copy nothing. */
  n = reads;
  snapshot_before_write (s, SIZE, 4096, read_disk, NULL);
  CHECK_EQ (reads, n);
  snapshot_unref (s, false);
  free (orig);
}

static int kinds[8];
static void
count_kind (void *opaque, uint64_t off, uint64_t len, int kind)
{
  kinds[kind] += len / GS;
}

static void
test_map (void)
{
  struct snapshot *s;

  fill ();
  s = new_snap (0, NULL);
  write_disk (s, 0, 1, 'x');
  write_disk (s, 10 * GS, 1, 'x');
  memset (kinds, 0, sizeof kinds);
  snapshot_map (s, 0, 64 * GS, count_kind, NULL);
  CHECK_EQ (kinds[0], 1);       /* data */
  CHECK_EQ (kinds[1], 1);       /* zero */
  CHECK_EQ (kinds[2], 62);      /* not preserved */
  CHECK (!snapshot_untouched (s, 0, 2 * GS));
  CHECK (snapshot_untouched (s, GS, 9 * GS));
  snapshot_unref (s, false);
}

/* The reader's re-check: a write lands while a reader reads a granule
 * from the export; the reader must return the preserved copy.
 */
static struct snapshot *race_snap;
static void
land_write (void)
{
  write_disk (race_snap, 3 * GS, GS, 'w');
}

static void
test_read_race (void)
{
  unsigned char *orig = malloc (SIZE), *buf = malloc (4 * GS);
  char msg[256];
  int err;

  fill ();
  memcpy (orig, disk, SIZE);
  race_snap = new_snap (0, NULL);
  during_read = land_write;
  CHECK (snapshot_read (race_snap, buf, 4 * GS, 2 * GS, read_disk, NULL,
                        &err, msg, sizeof msg) == 0);
  CHECK (memcmp (buf, orig + 2 * GS, 4 * GS) == 0);
  CHECK (disk[3 * GS] == 'w');
  snapshot_unref (race_snap, false);
  free (orig);
  free (buf);
}

static void
test_dirty (void)
{
  struct bitmap *readable = bitmap_new (SIZE, G);
  unsigned char *orig = malloc (SIZE), buf[100];
  struct snapshot *s;
  char msg[256];
  int err = 0;
  unsigned n;

  fill ();
  memcpy (orig, disk, SIZE);
  bitmap_mark (readable, 5 * GS + 3, 1);        /* granule 5 */
  s = new_snap (0, readable);
  n = reads;
  write_disk (s, 0, 10, 'a');                   /* not wanted: no copy */
  CHECK_EQ (reads, n);
  write_disk (s, 5 * GS, 10, 'b');
  CHECK (snapshot_read (s, buf, 100, 5 * GS, read_disk, NULL, &err, msg,
                        sizeof msg) == 0);
  CHECK (memcmp (buf, orig + 5 * GS, 100) == 0);
  CHECK (snapshot_read (s, buf, 100, 0, read_disk, NULL, &err, msg,
                        sizeof msg) == -1);
  CHECK_EQ (err, EPERM);
  CHECK (strstr (msg, "dirty") != NULL);
  snapshot_unref (s, false);
  free (orig);
}

static void
test_faults (void)
{
  struct snapshot *s;
  struct snapshot_info i;
  unsigned char buf[100];
  char msg[256];
  int err = 0;
  unsigned n;

  /* The cap: one granule of store, then broken; writes go on. */
  fill ();
  s = new_snap (GS, NULL);
  write_disk (s, 0, 1, 'a');
  write_disk (s, GS, 1, 'a');
  snapshot_get_info (s, &i);
  CHECK_EQ (i.state, SNAPSHOT_BROKEN);
  CHECK (strstr (i.why, "bitmap-snapshot-max") != NULL);
  CHECK (snapshot_read (s, buf, 100, 0, read_disk, NULL, &err, msg,
                        sizeof msg) == -1);
  CHECK_EQ (err, EIO);
  CHECK (strstr (msg, "broken") != NULL);
  n = reads;
  write_disk (s, 2 * GS, 1, 'a');               /* broken: no more copies */
  CHECK_EQ (reads, n);
  snapshot_unref (s, false);

  /* The export cannot be read for a copy. */
  s = new_snap (0, NULL);
  fail_reads = 1;
  write_disk (s, 0, 1, 'a');
  fail_reads = 0;
  snapshot_get_info (s, &i);
  CHECK_EQ (i.state, SNAPSHOT_BROKEN);
  CHECK (strstr (i.why, "offset 0") != NULL);
  snapshot_unref (s, false);

  /* The store fails (a descriptor that cannot be written: ENOSPC-like). */
  s = new_snap (0, NULL);
  close (s->fd);
  s->fd = open ("/dev/null", O_RDONLY);
  write_disk (s, 0, 1, 'a');
  snapshot_get_info (s, &i);
  CHECK_EQ (i.state, SNAPSHOT_BROKEN);
  CHECK (strstr (i.why, "store") != NULL);
  snapshot_unref (s, false);
}

static void
test_release (void)
{
  struct snapshot *s;
  int fd;
  struct snapshot_info i;
  struct stat st;
  unsigned char buf[100];
  char msg[256];
  int err = 0;

  fill ();
  s = new_snap (0, NULL);
  snapshot_ref (s, true);                       /* a reader */
  write_disk (s, 0, 1, 'a');
  CHECK (fstat (s->fd, &st) == 0 && st.st_size > 0);
  fd = dup (s->fd);
  snapshot_release (s);
  CHECK (fstat (fd, &st) == 0 && st.st_size == 0);    /* space given back */
  CHECK (s->fd == -1);                                  /* and closed */
  close (fd);
  CHECK (snapshot_read (s, buf, 100, 0, read_disk, NULL, &err, msg,
                        sizeof msg) == -1);
  CHECK_EQ (err, EIO);
  CHECK (strstr (msg, "released") != NULL);
  snapshot_get_info (s, &i);
  CHECK_EQ (i.readers, 1);
  snapshot_unref (s, false);
  snapshot_unref (s, true);                     /* the last: freed */
}

static int
read_zero (void *ctx, void *buf, uint32_t count, uint64_t offset, int *err)
{
  memset (buf, 0, count);
  return 0;
}

/* Once every wanted granule is preserved, writers take no lock and read
 * nothing; a dirty snapshot wants only its readable granules.
 */
static void
test_complete (void)
{
  struct bitmap *readable = bitmap_new (SIZE, G);
  struct snapshot *s;
  uint64_t g;
  unsigned n;

  fill ();
  s = new_snap (0, NULL);
  snapshot_seal (s);
  CHECK (!atomic_load (&s->complete));
  for (g = 0; g < s->ngranules; ++g)
    write_disk (s, g * GS, 1, 'c');
  CHECK (atomic_load (&s->complete));
  n = reads;
  pthread_mutex_lock (&s->lock);                /* writers must not need it */
  write_disk (s, 0, SIZE, 'd');
  pthread_mutex_unlock (&s->lock);
  CHECK_EQ (reads, n);
  snapshot_unref (s, false);

  bitmap_mark (readable, 7 * GS, 2 * GS);       /* granules 7 and 8 */
  s = new_snap (0, readable);
  snapshot_seal (s);
  CHECK_EQ (s->nwanted, 2);
  write_disk (s, 7 * GS, 1, 'e');
  CHECK (!atomic_load (&s->complete));
  write_disk (s, 8 * GS, 1, 'e');
  CHECK (atomic_load (&s->complete));
  snapshot_unref (s, false);
}

/* The slot map's memory follows what was preserved. */
static void
test_memory (void)
{
  struct snapshot *s;
  struct snapshot_info i;
  struct dbm_err err;
  uint64_t big = UINT64_C (1) << 40, k;      /* 1 TiB, never touched */

  CHECK (snapshot_new ("big", big, G, dir, 0, NULL, &s, &err) == 0);
  snapshot_get_info (s, &i);
  CHECK (i.map_bytes < 8192);
  for (k = 0; k < 100; ++k)                     /* scattered granules */
    snapshot_before_write (s, k * (big / 100), 1, read_zero, NULL);
  snapshot_get_info (s, &i);
  CHECK (i.map_bytes <= 8192 + 100 * (2048 + 4096));
  snapshot_unref (s, false);
}

/* Writers wait for one copy of a granule; concurrent writers and
 * readers of many granules always read the original.
 */
static struct snapshot *cs;
static unsigned char *corig;
static atomic_bool cstop;

static void *
writer (void *arg)
{
  unsigned seed = (uintptr_t) arg;

  while (!cstop) {
    uint64_t off = rand_r (&seed) % (SIZE - 8192);
    write_disk (cs, off, 8192, 'z');
  }
  return NULL;
}

static void
test_concurrent (void)
{
  pthread_t t[4];
  unsigned char *buf = malloc (SIZE);
  char msg[256];
  int err, k, round;

  fill ();
  corig = malloc (SIZE);
  memcpy (corig, disk, SIZE);
  cs = new_snap (0, NULL);
  for (k = 0; k < 4; ++k)
    pthread_create (&t[k], NULL, writer, (void *) (uintptr_t) (k + 1));
  for (round = 0; round < 20; ++round) {
    CHECK (snapshot_read (cs, buf, SIZE, 0, read_disk, NULL, &err, msg,
                          sizeof msg) == 0);
    CHECK (memcmp (buf, corig, SIZE) == 0);
  }
  cstop = true;
  for (k = 0; k < 4; ++k)
    pthread_join (t[k], NULL);
  snapshot_unref (cs, false);
  free (corig);
  free (buf);
}

/* The freeze waits for a writer inside the epoch; a writer that enters
 * during it is told to wait (snapshots.h).
 */
static struct snapshots ss;
static atomic_bool added;

static void *
adder (void *arg)
{
  struct dbm_err err;

  CHECK (snapshots_freeze (&ss, arg, &err) == 0);
  snapshots_thaw (&ss, true);
  added = true;
  return NULL;
}

static void
test_freeze (void)
{
  char path[300];
  struct tracker_config cfg = {
    .path = path, .layout = QCOW2_LAYOUT_QEMU, .bitmap_name = "b",
    .granularity_bits = 16, .mode = TRACKER_CRASH_SAFE,
    .in_use_policy = IN_USE_DIRTY, .region_size = 4 << 20,
  };
  struct timespec ts = { 0, 50000000 };
  struct tracker *tr;
  struct dbm_err err;
  struct snapshot *s;
  struct epoch_slot *e;
  pthread_t t;

  snprintf (path, sizeof path, "%s/bm.qcow2", dir);
  CHECK (tracker_open (&cfg, &tr, &err) == 0);
  CHECK (tracker_set_size (tr, SIZE, &err) == 0);
  snapshots_init (&ss, tr);
  fill ();
  s = new_snap (0, NULL);
  e = epoch_enter ();                           /* a writer inside */
  pthread_create (&t, NULL, adder, s);
  nanosleep (&ts, NULL);
  CHECK (!added);                               /* the freeze waits */
  CHECK (atomic_load (&ss.live) != NULL && atomic_load (&ss.live)->freezing);
  /* This writer entered before the freeze: it saw, or not, the array;
   * one seeing FREEZING must start over after the thaw.
   */
  CHECK (!snapshots_before_write (&ss, 0, 1, read_disk, NULL));
  epoch_leave (e);
  snapshots_wait_thaw (&ss);
  pthread_join (t, NULL);
  CHECK (added);
  CHECK (snapshots_before_write (&ss, 0, 1, read_disk, NULL));
  CHECK (snapshots_count (&ss) == 1);
  CHECK_EQ (atomic_load (&tr->slow_holds), 1);
  /* A freeze whose checkpoint failed: writes held meanwhile, then the
   * snapshot is forgotten and the fast path hold given back.
   */
  {
    struct snapshot *s2 = new_snap (0, NULL);

    CHECK (snapshots_freeze (&ss, s2, &err) == 0);
    CHECK (!snapshots_before_write (&ss, 0, 1, read_disk, NULL));
    CHECK (snapshots_open (&ss, "s") != NULL);  /* the live one, still */
    snapshot_unref (s, true);
    snapshots_thaw (&ss, false);
    CHECK (snapshots_before_write (&ss, 0, 1, read_disk, NULL));
    CHECK_EQ (snapshots_count (&ss), 1);
    CHECK_EQ (atomic_load (&tr->slow_holds), 1);
    snapshot_unref (s2, false);
  }
  CHECK (snapshots_release (&ss, "s", &err) == 0);
  CHECK (snapshots_release (&ss, "s", &err) == -1 && err.errnum == ENOENT);
  CHECK (snapshots_count (&ss) == 0);
  CHECK_EQ (atomic_load (&tr->slow_holds), 0);
  snapshots_fini (&ss);
  tracker_free (tr);
  unlink (path);
}

int
main (void)
{
  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  disk = malloc (SIZE);
  test_basic ();
  test_map ();
  test_read_race ();
  test_dirty ();
  test_faults ();
  test_release ();
  test_complete ();
  test_memory ();
  test_concurrent ();
  test_freeze ();
  free (disk);
  rmdir (dir);
  TEST_DONE ();
}
