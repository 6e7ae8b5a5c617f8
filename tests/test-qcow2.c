/* Proves the writer's files read back identically, have the field values
 * and offsets of the spec, exact table sizes and exact refcounts, and that
 * in-place flag and data updates keep the file valid, as do updates
 * that add and remove bitmaps without a rewrite.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "endian-be.h"
#include "qcow2.h"
#include "test-unit.h"

static char path[] = "/tmp/test-qcow2.XXXXXX";

static void
test_table_sizes (void)
{
  struct dbm_err err;

  CHECK_EQ (qcow2_required_table_size (UINT64_C (10) << 30, 16, 16), 1);
  CHECK_EQ (qcow2_required_table_size (UINT64_C (10) << 30, 9, 16), 40);
  CHECK_EQ (qcow2_required_table_size (1000, 16, 16), 1);  /* 512 seen */
  CHECK_EQ (qcow2_required_table_size (0, 16, 16), 0);
  CHECK (qcow2_check_bitmap_params (UINT64_C (256) << 40, "a", 16, 16, &err) == 0);
  CHECK (qcow2_check_bitmap_params (UINT64_C (300) << 40, "a", 16, 16, &err) == -1);
  CHECK (strstr (err.msg, "larger granularity") != NULL);
  CHECK (qcow2_check_bitmap_params (1 << 20, "", 16, 16, &err) == -1);
  CHECK (qcow2_check_bitmap_params (1 << 20, "a", 8, 16, &err) == -1);
  CHECK (qcow2_check_bitmap_params (1 << 20, "a", 32, 16, &err) == -1);
}

static void
test_round_trip (void)
{
  struct dbm_err err;
  struct qcow2_image *img, *back;
  unsigned char h[512], ones[2] = { 0xff, 0x01 };
  int fd;

  img = qcow2_new (UINT64_C (10) << 30, 16, QCOW2_LAYOUT_QEMU, &err);
  CHECK (img != NULL);
  CHECK (qcow2_add_bitmap (img, "b0", 16, BME_FLAG_AUTO, 0, &err) == 0);
  CHECK (qcow2_add_bitmap (img, "fine", 9, 0, 0, &err) == 0);
  CHECK (qcow2_add_bitmap (img, "b0", 16, 0, 0, &err) == -1);     /* duplicate */
  bitmap_mark (img->bitmaps[0].bits, 0, 65536);
  bitmap_mark (img->bitmaps[0].bits, UINT64_C (5) << 30, 4096);
  bitmap_mark (img->bitmaps[1].bits, 1 << 20, 1000);
  CHECK (qcow2_commit (img, path, 0, NULL, &err) == 0);

  /* Golden fields (qcow2-bitmaps.md 1.2, 1.3). */
  fd = open (path, O_RDONLY);
  CHECK (pread (fd, h, sizeof h, 0) == sizeof h);
  close (fd);
  CHECK_EQ (get_be32 (h), QCOW2_MAGIC);
  CHECK_EQ (get_be32 (h + 4), 3);
  CHECK_EQ (get_be32 (h + 20), 16);
  CHECK_EQ (get_be64 (h + 24), UINT64_C (10) << 30);
  CHECK_EQ (get_be32 (h + 36), 20);             /* l1_size for 10 GiB */
  CHECK_EQ (get_be64 (h + 88), 1);              /* autoclear bit 0 */
  CHECK_EQ (get_be32 (h + 96), 4);
  CHECK_EQ (get_be32 (h + 100), 112);
  CHECK_EQ (get_be32 (h + 112), QCOW2_EXT_BITMAPS);
  CHECK_EQ (get_be32 (h + 116), 24);
  CHECK_EQ (get_be32 (h + 120), 2);             /* nb_bitmaps */
  CHECK_EQ (get_be32 (h + 124), 0);             /* reserved */
  CHECK_EQ (get_be64 (h + 128), 64);            /* 2 entries x 32 */
  CHECK_EQ (get_be32 (h + 144), QCOW2_EXT_DIRTYBITMAP);  /* ours, ignored by QEMU */
  CHECK_EQ (get_be32 (h + 148), 16);
  CHECK_EQ (get_be32 (h + 152), 1);             /* version */
  CHECK_EQ (get_be64 (h + 168), 0);             /* end marker */

  CHECK (qcow2_open (path, QCOW2_OPEN_RW, &back, &err) == 0);
  if (back == NULL) {
    fprintf (stderr, "%s\n", err.msg);
    return;
  }
  CHECK_EQ (back->nb_bitmaps, 2);
  CHECK_EQ (back->leaked_clusters, 0);
  CHECK_EQ (back->bitmaps[1].bitmap_table_size, 40);
  CHECK_EQ (back->bitmaps[0].flags, BME_FLAG_AUTO);
  CHECK_EQ (bitmap_count (back->bitmaps[0].bits), 2);
  CHECK (bitmap_test (back->bitmaps[0].bits, (UINT64_C (5) << 30) >> 16));
  CHECK_EQ (bitmap_count (back->bitmaps[1].bits), 2);  /* 1M..1M+1000 */

  /* In place: flags and data. */
  CHECK (qcow2_write_flags (back, 0, BME_FLAG_AUTO | BME_FLAG_IN_USE, &err) == 0);
  CHECK (qcow2_write_data (back, 1, 100, ones, 2, &err) == 0);
  CHECK (qcow2_sync (back, &err) == 0);
  qcow2_close (back);
  CHECK (qcow2_open (path, 0, &back, &err) == 0);
  if (back) {
    CHECK (back->bitmaps[0].inconsistent);
    CHECK (!back->bitmaps[1].inconsistent);
    CHECK_EQ (bitmap_count (back->bitmaps[1].bits), 11);
    CHECK_EQ (back->leaked_clusters, 0);
    qcow2_close (back);
  }
  CHECK (qcow2_open (path, QCOW2_OPEN_LOAD_IN_USE, &back, &err) == 0);
  if (back) {
    CHECK (!back->bitmaps[0].inconsistent);
    CHECK_EQ (bitmap_count (back->bitmaps[0].bits), 2);
    qcow2_close (back);
  }
  qcow2_close (img);
}

static void
test_cluster_sizes (void)
{
  unsigned cb;
  struct dbm_err err;

  for (cb = 9; cb <= 21; cb += 3) {
    struct qcow2_image *img = qcow2_new (UINT64_C (3) << 30, cb, QCOW2_LAYOUT_QEMU, &err), *back;
    CHECK (img && qcow2_add_bitmap (img, "x", 12, BME_FLAG_AUTO, 0, &err) == 0);
    bitmap_mark (img->bitmaps[0].bits, 12345, 999999);
    CHECK (qcow2_commit (img, path, 0, NULL, &err) == 0);
    CHECK (qcow2_open (path, 0, &back, &err) == 0);
    if (back) {
      CHECK_EQ (back->leaked_clusters, 0);
      CHECK_EQ (bitmap_count (back->bitmaps[0].bits),
                bitmap_count (img->bitmaps[0].bits));
      qcow2_close (back);
    }
    else
      fprintf (stderr, "cluster_bits %u: %s\n", cb, err.msg);
    qcow2_close (img);
  }
}

/* The draft's container, field by field at the offsets of the 2015 text. */
static void
test_draft_golden (void)
{
  struct dbm_err err;
  struct qcow2_image *img, *back;
  unsigned char h[256], e[128], t[8], d[4];
  uint64_t dir, table;
  int fd;

  img = qcow2_new (0, 16, QCOW2_LAYOUT_DRAFT2015, &err);
  CHECK (img != NULL);
  CHECK (qcow2_add_bitmap (img, "drive-a", 16, 0, UINT64_C (10) << 30, &err) == 0);
  CHECK (qcow2_add_bitmap (img, "b", 20, DRAFT_FLAG_SELF | DRAFT_FLAG_AUTO,
                           1000, &err) == 0);
  CHECK (qcow2_add_bitmap (img, "x", 16, DRAFT_FLAG_AUTO, 0, &err) == -1);
  bitmap_mark (img->bitmaps[0].bits, 65536 * 9, 1);      /* bit 9 */
  CHECK (qcow2_commit (img, path, 0, NULL, &err) == 0);
  fd = open (path, O_RDONLY);
  CHECK (pread (fd, h, sizeof h, 0) == sizeof h);
  CHECK_EQ (get_be64 (h + 24), 0);              /* container size 0 */
  CHECK_EQ (get_be32 (h + 36), 0);              /* l1_size */
  CHECK_EQ (get_be64 (h + 40), 0);              /* l1_table_offset */
  CHECK_EQ (get_be64 (h + 88), 1);              /* autoclear bit 0 */
  CHECK_EQ (get_be32 (h + 112), 0x23852875);
  CHECK_EQ (get_be32 (h + 116), 16);            /* draft extension length */
  CHECK_EQ (get_be32 (h + 120), 2);             /* nb_dirty_bitmaps */
  CHECK_EQ (get_be32 (h + 124), 40 + 32);       /* directory size: 30+7, 30+1 */
  dir = get_be64 (h + 128);                     /* directory offset */
  CHECK_EQ (dir % 65536, 0);
  CHECK_EQ (get_be32 (h + 136), QCOW2_EXT_DIRTYBITMAP);
  CHECK_EQ (get_be64 (h + 160), 0);             /* end marker */
  CHECK (pread (fd, e, sizeof e, dir) == sizeof e);
  table = get_be64 (e);                         /* dirty_bitmap_table_offset */
  CHECK_EQ (get_be64 (e + 8), (UINT64_C (10) << 30) / 512);  /* nb_virtual_bits */
  CHECK_EQ (get_be32 (e + 16), 1);              /* table size */
  CHECK_EQ (get_be32 (e + 20), 7);              /* 64K = 2^7 sectors */
  CHECK_EQ (get_be32 (e + 24), 0);              /* flags */
  CHECK_EQ (get_be16 (e + 28), 7);
  CHECK (memcmp (e + 30, "drive-a", 7) == 0);
  CHECK_EQ (e[37] | e[38] | e[39], 0);          /* padding to 40 */
  CHECK_EQ (get_be64 (e + 40 + 8), 2);          /* 1000 bytes -> 2 sectors */
  CHECK_EQ (get_be32 (e + 40 + 20), 11);        /* 1M = 2^11 sectors */
  CHECK_EQ (get_be32 (e + 40 + 24), 6);         /* self | auto */
  CHECK (pread (fd, t, 8, table) == 8);
  CHECK_EQ (get_be64 (t) & ~QCOW2_OFFSET_MASK, 0);
  CHECK (pread (fd, d, 2, get_be64 (t)) == 2);
  CHECK_EQ (d[0], 0);
  CHECK_EQ (d[1], 0x02);                        /* bit 9, LSB first */
  close (fd);
  CHECK (qcow2_open (path, 0, &back, &err) == 0);
  if (back) {
    CHECK_EQ (back->layout, QCOW2_LAYOUT_DRAFT2015);
    CHECK_EQ (back->leaked_clusters, 0);
    CHECK_EQ (back->bitmaps[0].size, UINT64_C (10) << 30);
    CHECK_EQ (back->bitmaps[1].size, 1024);
    CHECK_EQ (back->bitmaps[1].granularity_bits, 20);
    CHECK (bitmap_test (back->bitmaps[0].bits, 9));
    CHECK_EQ (bitmap_count (back->bitmaps[0].bits), 1);
    CHECK (qcow2_bitmap_enabled (back, &back->bitmaps[1]));
    qcow2_close (back);
  }
  else
    fprintf (stderr, "%s\n", err.msg);
  qcow2_close (img);
}

/* fdatasync fails when this count of calls reaches 1 (0: never). */
static int sync_fails_at;

int
fdatasync (int fd)
{
  if (sync_fails_at > 0 && --sync_fails_at == 0) {
    errno = EIO;
    return -1;
  }
  return syscall (SYS_fdatasync, fd);
}

/* A model and its clone share bit storage: forget it in the old one. */
static void
close_shared (struct qcow2_image *img)
{
  uint32_t i;

  for (i = 0; i < img->nb_bitmaps; ++i)
    img->bitmaps[i].bits = NULL;
  qcow2_close (img);
}

static void
check_reads_back (const char *what, uint32_t nb, uint64_t count0)
{
  struct qcow2_image *back;
  struct dbm_err err;

  if (qcow2_open (path, QCOW2_OPEN_RW, &back, &err) == -1) {
    fprintf (stderr, "%s: %s\n", what, err.msg);
    CHECK (!"file reads back");
    return;
  }
  CHECK_EQ (back->nb_bitmaps, nb);
  CHECK_EQ (back->leaked_clusters, 0);
  CHECK_EQ (back->shared_clusters, 0);
  CHECK (qcow2_is_canonical (back));
  CHECK_EQ (bitmap_count (back->bitmaps[0].bits), count0);
  qcow2_close (back);
}

/* qcow2_update: a checkpoint-like addition and a removal change the file
 * where it is (same inode, kept bitmaps' clusters untouched, a removed
 * one's left as they were for readers of the old header), the file reads
 * back exact and canonical, and a file left mostly free asks for
 * compaction.
 */
static void
test_update (void)
{
  struct dbm_err err;
  struct qcow2_image *img, *cur, *next;
  struct stat st0, st1;
  uint64_t a_data, a_table;
  unsigned char byte;
  int fd, k;

  img = qcow2_new (UINT64_C (64) << 30, 16, QCOW2_LAYOUT_QEMU, &err);
  CHECK (img != NULL);
  CHECK (qcow2_add_bitmap (img, "a", 16, BME_FLAG_AUTO, 0, &err) == 0);
  bitmap_mark (img->bitmaps[0].bits, 0, UINT64_C (1) << 30);   /* 1 GiB */
  CHECK (qcow2_commit (img, path, 0, NULL, &err) == 0);
  qcow2_close (img);
  CHECK (qcow2_open (path, QCOW2_OPEN_RW, &cur, &err) == 0);
  if (cur == NULL)
    return;
  CHECK (qcow2_is_canonical (cur));
  CHECK (!qcow2_wants_compaction (cur));
  CHECK (stat (path, &st0) == 0);
  a_table = cur->bitmaps[0].bitmap_table_offset;
  a_data = cur->bitmaps[0].table[0];

  /* Add "b" and disable "a", as a checkpoint does. */
  next = qcow2_clone (cur, &err);
  CHECK (next != NULL);
  next->bitmaps[0].flags = 0;
  CHECK (qcow2_add_bitmap (next, "b", 16, BME_FLAG_AUTO, 0, &err) == 0);
  bitmap_mark (next->bitmaps[1].bits, UINT64_C (3) << 30, 65536);
  CHECK (qcow2_update (next, cur, &err) == 0);
  CHECK (cur->fd == -1 && next->fd >= 0);
  CHECK_EQ (next->bitmaps[0].bitmap_table_offset, a_table);
  CHECK_EQ (next->bitmaps[0].table[0], a_data);
  CHECK (next->bitmaps[1].bitmap_table_offset >= (uint64_t) st0.st_size);
  CHECK (stat (path, &st1) == 0);
  CHECK_EQ (st1.st_ino, st0.st_ino);
  CHECK (qcow2_check_identity (next, path, &err) == 0);
  close_shared (cur);
  cur = next;
  check_reads_back ("after adding", 2, 16384);

  /* Remove "a": its clusters stay as they were (free, unreferenced). */
  next = qcow2_clone (cur, &err);
  CHECK (next != NULL);
  bitmap_delete (cur->bitmaps[0].bits);
  cur->bitmaps[0].bits = next->bitmaps[0].bits = NULL;
  qcow2_remove_bitmap (next, 0);
  CHECK (qcow2_update (next, cur, &err) == 0);
  close_shared (cur);
  cur = next;
  check_reads_back ("after removing", 1, 1);
  fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  CHECK (pread (fd, &byte, 1, a_data) == 1 && byte == 0xff);
  close (fd);

  /* Each add and remove leaves a bitmap's clusters free: before long the
   * file is mostly free and a rewrite should compact it.
   */
  for (k = 0; k < 8 && !qcow2_wants_compaction (cur); ++k) {
    char name[16];

    snprintf (name, sizeof name, "t%d", k);
    next = qcow2_clone (cur, &err);
    CHECK (next != NULL && qcow2_add_bitmap (next, name, 16, 0, 0, &err) == 0);
    CHECK (qcow2_update (next, cur, &err) == 0);
    close_shared (cur);
    cur = next;
    next = qcow2_clone (cur, &err);
    CHECK (next != NULL);
    bitmap_delete (cur->bitmaps[1].bits);
    cur->bitmaps[1].bits = next->bitmaps[1].bits = NULL;
    qcow2_remove_bitmap (next, 1);
    CHECK (qcow2_update (next, cur, &err) == 0);
    close_shared (cur);
    cur = next;
  }
  CHECK (qcow2_wants_compaction (cur));
  check_reads_back ("after cycles", 1, 1);

  /* The sync after the header switch fails: in force, not durable, and
   * the next qcow2_sync writes the header again and syncs.
   */
  next = qcow2_clone (cur, &err);
  CHECK (next != NULL && qcow2_add_bitmap (next, "s", 16, 0, 0, &err) == 0);
  sync_fails_at = 2;            /* before the switch: 1, after it: 2 */
  CHECK (qcow2_update (next, cur, &err) == 1);
  CHECK (strstr (err.msg, "fdatasync") != NULL);
  CHECK (next->fd >= 0 && qcow2_sync_pending (next));
  close_shared (cur);
  cur = next;
  CHECK (qcow2_sync (cur, &err) == 0);
  CHECK (!qcow2_sync_pending (cur));
  check_reads_back ("after a failed sync", 2, 1);
  CHECK (qcow2_commit (cur, path, 0, NULL, &err) == 0);
  CHECK (!qcow2_wants_compaction (cur));
  check_reads_back ("compacted", 2, 1);
  qcow2_close (cur);
}

int
main (void)
{
  int fd = mkstemp (path);
  close (fd);
  test_table_sizes ();
  test_round_trip ();
  test_cluster_sizes ();
  test_draft_golden ();
  test_update ();
  unlink (path);
  TEST_DONE ();
}
