/* Writing a bitmap file in the canonical layout, and updating it in place.
 *
 * The canonical layout preallocates every bitmap data cluster: each table
 * entry points at its own cluster, refcount 1, but a clean cluster is never
 * written and stays a hole in a sparse file.  So while the filter runs,
 * refcounts, tables and the directory never move: only data bytes and the
 * 4-byte flags field are rewritten in place, and the file passes
 * 'qemu-img check' at every instant, even after kill -9.
 *
 *   cluster 0        header, bitmaps extension, end marker
 *   next             L1 table (all zero)
 *   next             bitmap directory
 *   per bitmap       bitmap table, then its data clusters, contiguous
 *   last             refcount table, refcount blocks
 */
#include <config.h>

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "cleanup.h"
#include "endian-be.h"
#include "qcow2.h"
#include "qcow2-internal.h"

_Static_assert (QCOW2_COMMIT_NOREPLACE == ATOMIC_FILE_NOREPLACE &&
                QCOW2_COMMIT_PRIVATE == ATOMIC_FILE_PRIVATE,
                "qcow2_commit passes its flags to atomic_file_begin");

int
qcow2_pwrite_full (int fd, const void *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t r = pwrite (fd, buf, len, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    buf = (const char *) buf + r;
    len -= r;
    off += r;
  }
  return 0;
}

/* Bitmap data goes to the file in whole pages (leaves are smaller), so a
 * persist never writes part of a page: no read-modify-write of a page
 * that is not in the page cache.  Page-aligned because data clusters are.
 */
#define WRITE_UNIT 4096
#define LEAVES_PER_PAGE (WRITE_UNIT / BITMAP_LEAF_BYTES)

static uint64_t
npages (const struct bitmap *bm)
{
  return (bitmap_data_bytes (bm) + WRITE_UNIT - 1) / WRITE_UNIT;
}

/* Take (clear) the changed flags of PAGE's leaves; true if any was set
 * (CHANGED_ONLY) or, otherwise, if any leaf is present.  A word of
 * changed flags covers several pages, so clean stretches cost one load.
 */
static bool
take_page (struct bitmap *bm, uint64_t page, bool changed_only)
{
  uint64_t leaf = page * LEAVES_PER_PAGE, k;
  bool any = false;

  if (atomic_load (&bm->changed[leaf >> 6]) == 0 && changed_only)
    return false;
  for (k = 0; k < LEAVES_PER_PAGE && leaf + k < bm->nleaves; ++k) {
    any |= bitmap_take_changed (bm, leaf + k);
    if (!changed_only)
      any |= bitmap_leaf_present (bm, leaf + k);
  }
  return any;
}

/* Flag PAGE's present leaves changed again after a failed write. */
static void
flag_page (struct bitmap *bm, uint64_t page)
{
  uint64_t leaf = page * LEAVES_PER_PAGE, k;

  for (k = 0; k < LEAVES_PER_PAGE && leaf + k < bm->nleaves; ++k)
    if (bitmap_leaf_present (bm, leaf + k))
      bitmap_set_changed (bm, leaf + k);
}

/* PAGE's bytes of bitmap data into BUF (absent leaves as zeros). */
static size_t
export_page (const struct bitmap *bm, uint64_t page, unsigned char *buf)
{
  uint64_t off = page * WRITE_UNIT, nbytes = bitmap_data_bytes (bm);
  size_t len = nbytes - off < WRITE_UNIT ? nbytes - off : WRITE_UNIT;

  bitmap_export (bm, off, buf, len);
  return len;
}

uint64_t
qcow2_entry_size (const struct qcow2_image *img, const struct qcow2_bitmap *b)
{
  uint64_t fixed = img->layout == QCOW2_LAYOUT_DRAFT2015 ? DRAFT_ENTRY_FIXED
    : BME_ENTRY_FIXED;
  return (fixed + b->name_size + 7) / 8 * 8;
}

/* Refcount table clusters *RT and blocks *NBLOCKS for a file of N
 * clusters followed by them: they need refcounts too, so iterate to a
 * fixed point.
 */
void
qcow2_refcount_fit (const struct qcow2_image *img, uint64_t n,
                    uint64_t *rt, uint64_t *nblocks)
{
  uint64_t C = img->cluster_size, per_block = C * 8 / 16;

  *rt = 1;
  *nblocks = 1;
  for (;;) {
    uint64_t total = n + *rt + *nblocks;
    uint64_t want_blocks = qcow2_div_up (total, per_block);
    uint64_t want_rt = qcow2_div_up (want_blocks * 8, C);
    if (want_blocks <= *nblocks && want_rt <= *rt)
      return;
    *nblocks = want_blocks > *nblocks ? want_blocks : *nblocks;
    *rt = want_rt > *rt ? want_rt : *rt;
  }
}

/* Where write_image puts everything, computed from the model alone. */
struct plan {
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t bitmap_directory_offset, bitmap_directory_size;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint64_t total;               /* file size in clusters */
  uint64_t *table_offset;       /* per bitmap */
  uint32_t *table_size;
  uint64_t *data_offset;        /* first data cluster, then contiguous */
};

static void
plan_free (struct plan *p)
{
  free (p->table_offset);
  free (p->table_size);
  free (p->data_offset);
}

/* Assign offsets to every structure (pure: the model is not changed). */
static int
layout (const struct qcow2_image *img, struct plan *p, struct dbm_err *err)
{
  uint64_t C = img->cluster_size, n = 1, dsize = 0, i, rt, nblocks;

  memset (p, 0, sizeof *p);
  p->table_offset = calloc (img->nb_bitmaps + 1, sizeof *p->table_offset);
  p->table_size = calloc (img->nb_bitmaps + 1, sizeof *p->table_size);
  p->data_offset = calloc (img->nb_bitmaps + 1, sizeof *p->data_offset);
  if (!p->table_offset || !p->table_size || !p->data_offset) {
    plan_free (p);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  p->l1_size = qcow2_div_up (qcow2_virtual_size (img), C / 8 * C);
  p->l1_table_offset = p->l1_size ? n * C : 0;
  n += qcow2_div_up ((uint64_t) p->l1_size * 8, C);

  for (i = 0; i < img->nb_bitmaps; ++i)
    dsize += qcow2_entry_size (img, &img->bitmaps[i]);
  p->bitmap_directory_size = dsize;
  p->bitmap_directory_offset = dsize ? n * C : 0;
  n += qcow2_div_up (dsize, C);

  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &img->bitmaps[i];
    uint64_t tsize = qcow2_required_table_size (b->size, b->granularity_bits,
                                                img->cluster_bits);
    if (qcow2_check_bitmap_params (b->size, b->name, b->granularity_bits,
                                   img->cluster_bits, err) == -1) {
      plan_free (p);
      return -1;
    }
    p->table_size[i] = tsize;
    p->table_offset[i] = n * C;
    n += qcow2_div_up (tsize * 8, C);
    p->data_offset[i] = n * C;
    n += tsize;
  }

  qcow2_refcount_fit (img, n, &rt, &nblocks);
  p->refcount_table_offset = n * C;
  p->refcount_table_clusters = rt;
  p->total = n + rt + nblocks;
  return 0;
}

/* The model describes the file written with plan P from now on. */
static void
apply (struct qcow2_image *img, const struct plan *p)
{
  uint32_t i;

  img->l1_size = p->l1_size;
  img->l1_table_offset = p->l1_table_offset;
  img->has_bitmaps_ext = img->nb_bitmaps > 0;
  img->bitmap_directory_size = p->bitmap_directory_size;
  img->bitmap_directory_offset = p->bitmap_directory_offset;
  img->refcount_table_offset = p->refcount_table_offset;
  img->refcount_table_clusters = p->refcount_table_clusters;
  img->refcount_order = 4;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    img->bitmaps[i].bitmap_table_size = p->table_size[i];
    img->bitmaps[i].bitmap_table_offset = p->table_offset[i];
  }
}

int
qcow2_put_header (struct qcow2_image *img, int fd, struct dbm_err *err)
{
  CLEANUP_FREE unsigned char *h = calloc (1, img->cluster_size);
  uint64_t off = QCOW2_HEADER_LENGTH;

  if (h == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  img->header_length = QCOW2_HEADER_LENGTH;
  img->incompatible_features = 0;
  img->compatible_features = 0;
  img->autoclear_features = qcow2_autoclear_for (img);
  put_be32 (h, QCOW2_MAGIC);
  put_be32 (h + 4, QCOW2_VERSION);
  put_be32 (h + 20, img->cluster_bits);
  put_be64 (h + 24, img->size);
  put_be32 (h + 36, img->l1_size);
  put_be64 (h + 40, img->l1_table_offset);
  put_be64 (h + 48, img->refcount_table_offset);
  put_be32 (h + 56, img->refcount_table_clusters);
  put_be64 (h + 88, img->autoclear_features);
  put_be32 (h + 96, img->refcount_order);
  put_be32 (h + 100, img->header_length);
  if (img->nb_bitmaps && img->layout == QCOW2_LAYOUT_DRAFT2015) {
    put_be32 (h + off, QCOW2_EXT_BITMAPS);
    put_be32 (h + off + 4, BME_DRAFT_EXT_LENGTH);
    put_be32 (h + off + 8, img->nb_bitmaps);
    put_be32 (h + off + 12, img->bitmap_directory_size);
    put_be64 (h + off + 16, img->bitmap_directory_offset);
    off += 8 + BME_DRAFT_EXT_LENGTH;
  }
  else if (img->nb_bitmaps) {
    put_be32 (h + off, QCOW2_EXT_BITMAPS);
    put_be32 (h + off + 4, BME_EXT_LENGTH);
    put_be32 (h + off + 8, img->nb_bitmaps);
    put_be64 (h + off + 16, img->bitmap_directory_size);
    put_be64 (h + off + 24, img->bitmap_directory_offset);
    off += 8 + BME_EXT_LENGTH;
  }
  put_be32 (h + off, QCOW2_EXT_DIRTYBITMAP);
  put_be32 (h + off + 4, DBM_EXT_LENGTH);
  put_be32 (h + off + 8, 1);
  put_be32 (h + off + 12, img->dbm_state);
  put_be64 (h + off + 16, img->dbm_region_size);
  img->dbm_ext_offset = off + 8;
  off += 8 + DBM_EXT_LENGTH;
  img->ext_end_offset = off;
  off += 8;                     /* end marker: already zero */
  if (qcow2_pwrite_full (fd, h, off, 0) == -1)
    return dbm_seterr (err, errno, "write header: %m");
  return 0;
}

int
qcow2_put_directory (struct qcow2_image *img, int fd, struct dbm_err *err)
{
  CLEANUP_FREE unsigned char *d = NULL;
  uint64_t pos = 0, i;

  if (img->nb_bitmaps == 0)
    return 0;
  assert (img->bitmap_directory_size > 0);      /* layout: entries exist */
  d = calloc (1, img->bitmap_directory_size);
  if (d == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    unsigned char *e = d + pos;

    b->dir_entry_offset = img->bitmap_directory_offset + pos;
    if (img->layout == QCOW2_LAYOUT_DRAFT2015) {
      put_be64 (e, b->bitmap_table_offset);
      put_be64 (e + 8, b->size / 512);                  /* nb_virtual_bits */
      put_be32 (e + 16, b->bitmap_table_size);
      put_be32 (e + 20, b->granularity_bits - 9);       /* in sectors */
      put_be32 (e + 24, b->flags);
      put_be16 (e + 28, b->name_size);
      memcpy (e + DRAFT_ENTRY_FIXED, b->name, b->name_size);
    }
    else {
      put_be64 (e, b->bitmap_table_offset);
      put_be32 (e + 8, b->bitmap_table_size);
      put_be32 (e + 12, b->flags);
      e[16] = BME_TYPE_DIRTY_TRACKING;
      e[17] = b->granularity_bits;
      put_be16 (e + 18, b->name_size);
      memcpy (e + BME_ENTRY_FIXED, b->name, b->name_size);
    }
    pos += qcow2_entry_size (img, b);
  }
  if (qcow2_pwrite_full (fd, d, pos, img->bitmap_directory_offset) == -1)
    return dbm_seterr (err, errno, "write bitmap directory: %m");
  return 0;
}

int
qcow2_put_bitmap (struct qcow2_image *img, int fd, struct qcow2_bitmap *b,
                  uint64_t data_offset, struct dbm_err *err)
{
  uint64_t tbytes = (uint64_t) b->bitmap_table_size * 8, j, page;
  CLEANUP_FREE unsigned char *t = malloc (tbytes);
  uint64_t *table = malloc (tbytes);
  unsigned char buf[WRITE_UNIT];

  if (t == NULL || table == NULL) {
    free (table);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  for (j = 0; j < b->bitmap_table_size; ++j) {
    table[j] = data_offset + (j << img->cluster_bits);
    put_be64 (t + j * 8, table[j]);
  }
  free (b->table);
  b->table = table;
  if (qcow2_pwrite_full (fd, t, tbytes, b->bitmap_table_offset) == -1)
    return dbm_seterr (err, errno, "write bitmap table of '%s': %m", b->name);
  if (b->inconsistent)
    return 0;
  /* Cleared before the scan, not after: a marker running concurrently
   * (a checkpoint or growth while clients write) sets it again.
   */
  atomic_store (&b->bits->any_changed, false);
  for (page = 0; page < npages (b->bits); ++page) {
    uint64_t boff = page * WRITE_UNIT;
    size_t len;

    if (!take_page (b->bits, page, false))
      continue;
    len = export_page (b->bits, page, buf);
    if (qcow2_pwrite_full (fd, buf, len, data_offset + boff) == -1)
      return dbm_seterr (err, errno, "write data of bitmap '%s': %m", b->name);
  }
  return 0;
}

static int
write_refcounts (struct qcow2_image *img, int fd, uint64_t total,
                 struct dbm_err *err)
{
  uint64_t C = img->cluster_size, per_block = C / 2;
  uint64_t rt_off = img->refcount_table_offset;
  uint64_t blk_off = rt_off + (uint64_t) img->refcount_table_clusters * C;
  uint64_t nblocks, i, j;
  CLEANUP_FREE unsigned char *rt = NULL;
  CLEANUP_FREE unsigned char *blk = NULL;

  /* layout: at least one refcount table cluster, clusters >= 512. */
  assert (img->refcount_table_clusters > 0 && per_block > 0);
  nblocks = qcow2_div_up (total, per_block);
  rt = calloc (img->refcount_table_clusters, C);
  blk = malloc (C);
  if (rt == NULL || blk == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  for (i = 0; i < nblocks; ++i) {
    put_be64 (rt + i * 8, blk_off + i * C);
    memset (blk, 0, C);
    for (j = 0; j < per_block && i * per_block + j < total; ++j)
      put_be16 (blk + j * 2, 1);
    if (qcow2_pwrite_full (fd, blk, C, blk_off + i * C) == -1)
      return dbm_seterr (err, errno, "write refcount block: %m");
  }
  if (qcow2_pwrite_full (fd, rt, (uint64_t) img->refcount_table_clusters * C,
                         rt_off) == -1)
    return dbm_seterr (err, errno, "write refcount table: %m");
  return 0;
}

/* Write the whole model to FD (an empty file). */
static int
write_image (struct qcow2_image *img, int fd, struct dbm_err *err)
{
  struct plan p;
  uint64_t total, i;
  int r = -1;

  if (layout (img, &p, err) == -1)
    return -1;
  total = p.total;
  apply (img, &p);
  if (ftruncate (fd, total << img->cluster_bits) == -1) {
    dbm_seterr (err, errno, "extend file to %" PRIu64 " bytes: %m",
                total << img->cluster_bits);
    goto out;
  }
  if (qcow2_put_header (img, fd, err) == -1 ||
      qcow2_put_directory (img, fd, err) == -1)
    goto out;
  for (i = 0; i < img->nb_bitmaps; ++i)
    if (qcow2_put_bitmap (img, fd, &img->bitmaps[i], p.data_offset[i], err) == -1)
      goto out;
  if (write_refcounts (img, fd, total, err) == -1)
    goto out;
  r = 0;
 out:
  plan_free (&p);
  if (r == -1)
    return -1;
  img->file_size = total << img->cluster_bits;
  img->leaked_clusters = img->shared_clusters = img->l2_tables = 0;
  img->autoclear_without_ext = false;
  img->ext_inconsistent = false;
  img->data_clusters = 0;
  return 0;
}

/* Is the opened file in the layout this filter keeps, so that changes
 * can be made where things are (in place, or by qcow2_update) instead of
 * by a rewrite?  That is: our header and extensions, 16-bit refcounts,
 * no guest data, nothing leaked or shared, and every bitmap fully
 * preallocated (each table entry its own data cluster, so a data write
 * never needs an allocation).  write_image produces such a file and
 * qcow2_update keeps it so; where the pieces lie does not matter.
 */
bool
qcow2_is_canonical (struct qcow2_image *img)
{
  uint64_t C = img->cluster_size, i, j, ext_len;

  if (img->fd < 0 || img->leaked_clusters || img->data_clusters ||
      img->shared_clusters || img->l2_tables ||
      img->autoclear_without_ext || img->ext_inconsistent ||
      img->header_length != QCOW2_HEADER_LENGTH ||
      img->incompatible_features || img->compatible_features ||
      img->refcount_order != 4 ||
      img->autoclear_features != qcow2_autoclear_for (img) ||
      img->l1_size != qcow2_div_up (qcow2_virtual_size (img), C / 8 * C) ||
      img->file_size % C)
    return false;
  ext_len = !img->nb_bitmaps ? 0 : 8 + (img->layout == QCOW2_LAYOUT_DRAFT2015
                                         ? BME_DRAFT_EXT_LENGTH : BME_EXT_LENGTH);
  /* Ours last: a header rewrite (qcow2_update) keeps nothing after it. */
  if (img->dbm_ext_offset != QCOW2_HEADER_LENGTH + ext_len + 8 ||
      img->ext_end_offset != img->dbm_ext_offset + DBM_EXT_LENGTH)
    return false;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &img->bitmaps[i];

    if (b->table == NULL || b->bitmap_table_size !=
        qcow2_required_table_size (b->size, b->granularity_bits,
                                   img->cluster_bits))
      return false;
    for (j = 0; j < b->bitmap_table_size; ++j)
      if (b->table[j] == 0 || (b->table[j] & ~QCOW2_OFFSET_MASK) ||
          (b->table[j] & (C - 1)))
        return false;
  }
  return true;
}

/* Write the pages of bitmap I that take_page selects (CHANGED_ONLY: the
 * flagged ones), not synced.
 */
static int
write_pages (struct qcow2_image *img, int i, bool changed_only, bool *wrote,
             struct dbm_err *err)
{
  struct qcow2_bitmap *b = &img->bitmaps[i];
  unsigned char buf[WRITE_UNIT];
  uint64_t page;

  if (changed_only && !atomic_load (&b->bits->any_changed))
    return 0;
  /* Cleared before the scan: a bit flipped during it sets it again. */
  atomic_store (&b->bits->any_changed, false);
  for (page = 0; page < npages (b->bits); ++page) {
    size_t len;

    if (!take_page (b->bits, page, changed_only))
      continue;
    len = export_page (b->bits, page, buf);
    if (qcow2_write_data (img, i, page * WRITE_UNIT, buf, len, err) == -1) {
      flag_page (b->bits, page);
      return -1;
    }
    if (wrote)
      *wrote = true;
  }
  return 0;
}

int
qcow2_write_changed (struct qcow2_image *img, int i, bool *wrote,
                     struct dbm_err *err)
{
  return write_pages (img, i, true, wrote, err);
}

int
qcow2_write_present (struct qcow2_image *img, int i, struct dbm_err *err)
{
  return write_pages (img, i, false, NULL, err);
}

int
qcow2_update_in_place (struct qcow2_image *img, const uint32_t *old_flags,
                       struct dbm_err *err)
{
  uint64_t i;

  /* Data first and durable, then flags and state: a cleared in_use must
   * never describe data that is not on disk.
   */
  for (i = 0; i < img->nb_bitmaps; ++i)
    if (qcow2_write_changed (img, i, NULL, err) == -1)
      return -1;
  if (qcow2_sync (img, err) == -1)
    return -1;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    uint32_t f = img->bitmaps[i].flags;
    if (f != old_flags[i] && qcow2_write_flags (img, i, f, err) == -1)
      return -1;
  }
  if (qcow2_write_state (img, img->dbm_state, err) == -1 ||
      qcow2_sync (img, err) == -1)
    return -1;
  return 0;
}

int
qcow2_commit (struct qcow2_image *img, const char *user_path, unsigned flags,
              int (*lock_fd_cb) (int fd, struct dbm_err *err),
              struct dbm_err *err)
{
  struct atomic_file af;
  int r;

  if (img->data_clusters)
    return dbm_seterr (err, EINVAL, "%s: the file holds %" PRIu64 " clusters "
                       "of guest data; refusing to rewrite it as a bitmap-only "
                       "file", user_path, img->data_clusters);
  if (atomic_file_begin (user_path, flags, &af, err) == -1)
    return -1;
  if ((lock_fd_cb && lock_fd_cb (af.fd, err) == -1) ||
      write_image (img, af.fd, err) == -1) {
    atomic_file_abort (&af);
    return -1;
  }
  r = atomic_file_commit (&af, err);
  if (r == -1)
    return -1;
  /* Committed: the new file is the file now, even if its directory entry
   * is not yet durable (then qcow2_sync retries that before any later
   * sync may succeed).
   */
  if (img->fd >= 0)
    close (img->fd);
  img->fd = af.fd;
  free (img->path);
  img->path = af.path;
  img->dir_sync_pending = r == ATOMIC_FILE_COMMITTED_NOT_DURABLE;
  img->header_sync_pending = false;
  qcow2_note_identity (img);
  return r;
}

int
qcow2_write_flags (struct qcow2_image *img, int i, uint32_t flags,
                   struct dbm_err *err)
{
  struct qcow2_bitmap *b = &img->bitmaps[i];
  unsigned char be[4];

  /* One aligned 4-byte write: atomic against a crash at any instant. */
  put_be32 (be, flags);
  if (qcow2_pwrite_full (img->fd, be, 4, b->dir_entry_offset +
                         (img->layout == QCOW2_LAYOUT_DRAFT2015 ? 24 : 12))
      == -1)
    return dbm_seterr (err, errno, "%s: write flags of bitmap '%s': %m",
                       img->path, b->name);
  b->flags = flags;
  return 0;
}

int
qcow2_write_data (struct qcow2_image *img, int i, uint64_t byte_offset,
                  const unsigned char *buf, size_t len, struct dbm_err *err)
{
  struct qcow2_bitmap *b = &img->bitmaps[i];

  while (len > 0) {
    uint64_t j = byte_offset >> img->cluster_bits;
    uint64_t in = byte_offset & (img->cluster_size - 1);
    size_t n = img->cluster_size - in;
    uint64_t host;

    if (n > len)
      n = len;
    if (j >= b->bitmap_table_size ||
        (host = b->table[j] & QCOW2_OFFSET_MASK) == 0)
      return dbm_seterr (err, EINVAL, "%s: bitmap '%s': data cluster %" PRIu64
                         " is not allocated", img->path, b->name, j);
    if (qcow2_pwrite_full (img->fd, buf, n, host + in) == -1)
      return dbm_seterr (err, errno, "%s: write data of bitmap '%s': %m",
                         img->path, b->name);
    buf += n;
    len -= n;
    byte_offset += n;
  }
  return 0;
}

int
qcow2_sync (struct qcow2_image *img, struct dbm_err *err)
{
  bool header = atomic_exchange (&img->header_sync_pending, false);

  if (header && qcow2_put_header (img, img->fd, err) == -1) {
    atomic_store (&img->header_sync_pending, true);
    return -1;
  }
  if (fdatasync (img->fd) == -1) {
    if (header)
      atomic_store (&img->header_sync_pending, true);
    return dbm_seterr (err, errno, "%s: fdatasync: %m", img->path);
  }
  /* A rewrite whose directory sync failed is not durable until it works. */
  if (atomic_exchange (&img->dir_sync_pending, false) &&
      atomic_file_sync_dir (img->path, err) == -1) {
    atomic_store (&img->dir_sync_pending, true);
    return -1;
  }
  return 0;
}

int
qcow2_write_state (struct qcow2_image *img, uint32_t state,
                   struct dbm_err *err)
{
  unsigned char be[4];

  if (img->dbm_ext_offset == 0)
    return dbm_seterr (err, EINVAL, "%s: no dirtybitmap extension",
                       img->path);
  put_be32 (be, state);
  if (qcow2_pwrite_full (img->fd, be, 4, img->dbm_ext_offset + 4) == -1)
    return dbm_seterr (err, errno, "%s: write state: %m", img->path);
  img->dbm_state = state;
  return 0;
}

int
qcow2_write_autoclear (struct qcow2_image *img, uint64_t value,
                       struct dbm_err *err)
{
  unsigned char be[8];

  put_be64 (be, value);
  if (qcow2_pwrite_full (img->fd, be, 8, 88) == -1 || fdatasync (img->fd) == -1)
    return dbm_seterr (err, errno, "%s: write autoclear_features: %m",
                       img->path);
  img->autoclear_features = value;
  img->autoclear_without_ext = false;
  qcow2_note_identity (img);
  return 0;
}
