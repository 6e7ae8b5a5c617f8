/* Changing a bitmap file without rewriting what stays: checkpoints and
 * removals.
 *
 * A checkpoint adds one bitmap and changes flags; a removal drops one.
 * Writing a whole new file for that costs as much as every bitmap the
 * file keeps, so the cost would grow with history.  Instead the new
 * structures go past the end of the file, and one write of the header
 * switches to them:
 *
 *   1. extend the file; past the old end write the new bitmaps' tables
 *      and data, a new bitmap directory, and a new refcount table and
 *      blocks (in which the old directory and refcount structures, and
 *      removed bitmaps, are free); sync
 *   2. the commit point: rewrite the header and its extensions (at most
 *      176 bytes of the first sector, one pwrite) to point at them; sync
 *
 * Until 2 the old header describes the old file, intact: nothing it
 * references was written (bitmap data the caller writes in place is its
 * own business).  From 2 the new header describes the new one.  qemu-img
 * check passes at every instant: clusters past what the refcounts cover
 * are unreferenced with refcount 0, which is not an error.  Freed
 * clusters are never reused nor punched: new data clusters read as zeros
 * without being written, and a reader that read an older header (the
 * CLI, qemu-nbd without locking) still finds everything it describes.
 * Once the file holds more free clusters than used ones the caller
 * compacts it with a full rewrite (qcow2_commit: a new inode).
 */
#include <config.h>

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "qcow2.h"
#include "qcow2-internal.h"

/* A set of clusters, one bit each. */
struct cluster_set {
  uint64_t n;
  uint64_t *w;
};

static int
cs_init (struct cluster_set *cs, uint64_t n, struct dbm_err *err)
{
  cs->n = n;
  cs->w = calloc (n / 64 + 1, sizeof *cs->w);
  if (cs->w == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  return 0;
}

/* Add the COUNT clusters from byte offset OFF (clipped to the set). */
static void
cs_add (struct cluster_set *cs, unsigned cluster_bits, uint64_t off,
        uint64_t count)
{
  uint64_t c;

  for (c = off >> cluster_bits; count > 0 && c < cs->n; ++c, --count)
    cs->w[c / 64] |= UINT64_C (1) << (c % 64);
}

static bool
cs_has (const struct cluster_set *cs, uint64_t c)
{
  return c < cs->n && (cs->w[c / 64] >> (c % 64)) & 1;
}

/* Every cluster IMG's model references, except refcount blocks (which
 * the model does not record): header, L1, directory, bitmap tables and
 * data, refcount table.
 */
static void
add_model (struct cluster_set *cs, const struct qcow2_image *img)
{
  uint64_t C = img->cluster_size, i, j;

  cs_add (cs, img->cluster_bits, 0, 1);
  if (img->l1_size)
    cs_add (cs, img->cluster_bits, img->l1_table_offset,
            qcow2_div_up ((uint64_t) img->l1_size * 8, C));
  if (img->nb_bitmaps)
    cs_add (cs, img->cluster_bits, img->bitmap_directory_offset,
            qcow2_div_up (img->bitmap_directory_size, C));
  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &img->bitmaps[i];

    cs_add (cs, img->cluster_bits, b->bitmap_table_offset,
            qcow2_div_up ((uint64_t) b->bitmap_table_size * 8, C));
    for (j = 0; b->table && j < b->bitmap_table_size; ++j)
      cs_add (cs, img->cluster_bits, b->table[j] & QCOW2_OFFSET_MASK, 1);
  }
  cs_add (cs, img->cluster_bits, img->refcount_table_offset,
          img->refcount_table_clusters);
}

/* Refcount 1 for every cluster of NOW: NBLOCKS blocks from cluster
 * BLOCKS, then the table (its clusters are in NOW already).
 */
static int
write_refcounts (const struct qcow2_image *img, int fd,
                 const struct cluster_set *now, uint64_t blocks,
                 uint64_t nblocks, struct dbm_err *err)
{
  uint64_t C = img->cluster_size, per_block = C / 2, i, j;
  uint64_t rt_bytes = (uint64_t) img->refcount_table_clusters * C;
  CLEANUP_FREE unsigned char *rt = calloc (1, rt_bytes);
  CLEANUP_FREE unsigned char *blk = malloc (C);

  if (rt == NULL || blk == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  for (i = 0; i < nblocks; ++i) {
    uint64_t off = (blocks + i) << img->cluster_bits;

    memset (blk, 0, C);
    for (j = 0; j < per_block; ++j)
      if (cs_has (now, i * per_block + j))
        put_be16 (blk + j * 2, 1);
    put_be64 (rt + i * 8, off);
    if (qcow2_pwrite_full (fd, blk, C, off) == -1)
      return dbm_seterr (err, errno, "%s: write refcount block: %m",
                         img->path);
  }
  if (qcow2_pwrite_full (fd, rt, rt_bytes, img->refcount_table_offset) == -1)
    return dbm_seterr (err, errno, "%s: write refcount table: %m", img->path);
  return 0;
}

/* The bitmap of IMG0 that B continues (same storage, same table size),
 * whose table and data clusters stay where they are; or NULL: B is new.
 */
static const struct qcow2_bitmap *
kept (const struct qcow2_image *img0, const struct qcow2_bitmap *b)
{
  uint32_t j;

  for (j = 0; j < img0->nb_bitmaps; ++j) {
    const struct qcow2_bitmap *o = &img0->bitmaps[j];
    if (b->bits && o->bits == b->bits && strcmp (o->name, b->name) == 0 &&
        o->table && o->bitmap_table_size == qcow2_required_table_size
        (b->size, b->granularity_bits, img0->cluster_bits))
      return o;
  }
  return NULL;
}

/* Undo step 1 after a failure: the appended clusters go (or, if even
 * that fails, stay as unreferenced clusters the model now knows of).
 */
static void
shrink_back (struct qcow2_image *img0)
{
  struct stat st;

  if (ftruncate (img0->fd, img0->file_size) == -1 &&
      fstat (img0->fd, &st) == 0)
    img0->file_size = st.st_size;
}

int
qcow2_update (struct qcow2_image *img, struct qcow2_image *img0,
              struct dbm_err *err)
{
  uint64_t C = img->cluster_size, start, n, dsize = 0, rt, nblocks, total;
  uint64_t i;
  CLEANUP_FREE uint64_t *data_offset = NULL;
  struct cluster_set now = { 0 };
  int fd = img0->fd, r = -1;
  struct dbm_err ignored;

  assert (fd >= 0 && img->fd == -1 && qcow2_is_canonical (img0));
  assert (img->cluster_bits == img0->cluster_bits &&
          img->l1_size == img0->l1_size && img->size == img0->size);
  start = qcow2_div_up (img0->file_size, C);
  n = start;
  data_offset = calloc (img->nb_bitmaps + 1, sizeof *data_offset);
  if (data_offset == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    const struct qcow2_bitmap *o = kept (img0, b);

    free (b->table);
    b->table = NULL;
    if (o) {
      b->table = malloc ((uint64_t) o->bitmap_table_size * 8);
      if (b->table == NULL)
        return dbm_seterr (err, ENOMEM, "out of memory");
      memcpy (b->table, o->table, (uint64_t) o->bitmap_table_size * 8);
      b->bitmap_table_offset = o->bitmap_table_offset;
      b->bitmap_table_size = o->bitmap_table_size;
    }
    else {
      if (qcow2_check_bitmap_params (b->size, b->name, b->granularity_bits,
                                     img->cluster_bits, err) == -1)
        return -1;
      b->bitmap_table_size =
        qcow2_required_table_size (b->size, b->granularity_bits,
                                   img->cluster_bits);
      b->bitmap_table_offset = n * C;
      n += qcow2_div_up ((uint64_t) b->bitmap_table_size * 8, C);
      data_offset[i] = n * C;
      n += b->bitmap_table_size;
    }
    dsize += qcow2_entry_size (img, b);
  }
  img->has_bitmaps_ext = img->nb_bitmaps > 0;
  img->bitmap_directory_size = dsize;
  img->bitmap_directory_offset = dsize ? n * C : 0;
  n += qcow2_div_up (dsize, C);
  qcow2_refcount_fit (img, n, &rt, &nblocks);
  img->refcount_table_offset = n * C;
  img->refcount_table_clusters = rt;
  img->refcount_order = 4;
  total = n + rt + nblocks;

  if (cs_init (&now, total, err) == -1)
    goto out;

  /* 1: everything new, past the old end. */
  if (ftruncate (fd, total * C) == -1) {
    dbm_seterr (err, errno, "%s: extend file to %" PRIu64 " bytes: %m",
                img->path, total * C);
    goto out;
  }
  for (i = 0; i < img->nb_bitmaps; ++i)
    if (data_offset[i] &&
        qcow2_put_bitmap (img, fd, &img->bitmaps[i], data_offset[i],
                          err) == -1)
      goto undo;
  /* Now that every table is in the model. */
  add_model (&now, img);
  cs_add (&now, img->cluster_bits, (n + rt) * C, nblocks);
  if (qcow2_put_directory (img, fd, err) == -1 ||
      write_refcounts (img, fd, &now, n + rt, nblocks, err) == -1)
    goto undo;
  if (fdatasync (fd) == -1) {
    dbm_seterr (err, errno, "%s: fdatasync: %m", img->path);
    goto undo;
  }

  /* 2: the commit point. */
  if (qcow2_put_header (img, fd, err) == -1) {
    /* Nothing or part of it may be written: put the old header back.  If
     * even that fails, keep the new structures (the header may point at
     * them): the next identity check sees the header changed, and the
     * file is written again from memory.
     */
    if (qcow2_put_header (img0, fd, &ignored) == -1)
      goto out;
    goto undo;
  }
  r = 0;
  if (fdatasync (fd) == -1) {
    /* In force, not yet durable: the next qcow2_sync writes the header
     * again and syncs (header_sync_pending), and every flush runs it.
     */
    dbm_seterr (err, errno, "%s: fdatasync: %m", img->path);
    r = 1;
  }
  img->fd = fd;
  img0->fd = -1;
  img->file_size = total * C;
  img->dir_sync_pending = img0->dir_sync_pending;
  img->header_sync_pending = r == 1;
  img->leaked_clusters = img->shared_clusters = img->data_clusters = 0;
  img->l2_tables = 0;
  qcow2_note_identity (img);
  goto out;

 undo:
  shrink_back (img0);
 out:
  free (now.w);
  return r;
}

bool
qcow2_wants_compaction (const struct qcow2_image *img)
{
  uint64_t C = img->cluster_size, clusters = img->file_size / C, used, i;

  used = 1 + qcow2_div_up ((uint64_t) img->l1_size * 8, C) +
    qcow2_div_up (img->bitmap_directory_size, C) +
    img->refcount_table_clusters + qcow2_div_up (clusters, C / 2);
  for (i = 0; i < img->nb_bitmaps; ++i)
    used += qcow2_div_up ((uint64_t) img->bitmaps[i].bitmap_table_size * 8, C)
      + img->bitmaps[i].bitmap_table_size;
  return clusters > 2 * used;
}
