/* Reading and validating a qcow2 bitmap file.  The file is untrusted:
 * every offset and size is checked against the file size and the spec's
 * limits before it is used, and each violation has its own message naming
 * the field, its offset and its value.
 */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "qcow2.h"
#include "qcow2-internal.h"

#define BAD(...) dbm_seterr (err, EINVAL, __VA_ARGS__)

ssize_t
qcow2_pread_full (int fd, void *buf, size_t len, uint64_t off)
{
  size_t done = 0;

  while (done < len) {
    ssize_t r = pread (fd, (char *) buf + done, len - done, off + done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      break;
    done += r;
  }
  memset ((char *) buf + done, 0, len - done);
  return done;
}

/* Read LEN bytes of a structure that must lie wholly inside the file. */
static int
read_struct (struct qcow2_image *img, uint64_t off, void *buf, uint64_t len,
             const char *what, struct dbm_err *err)
{
  if (off > img->file_size || len > img->file_size - off) {
    BAD ("%s: %s at offset 0x%" PRIx64 " (%" PRIu64 " bytes) "
         "runs past the end of the file (%" PRIu64 " bytes)",
         img->path, what, off, len, img->file_size);
    return -1;
  }
  if (qcow2_pread_full (img->fd, buf, len, off) == -1)
    return dbm_seterr (err, errno, "%s: read %s at offset 0x%" PRIx64 ": %m",
                       img->path, what, off);
  return 0;
}

uint64_t
qcow2_required_table_size (uint64_t size, unsigned granularity_bits,
                           unsigned cluster_bits)
{
  uint64_t s = size & ~UINT64_C (511);
  uint64_t gran = UINT64_C (1) << granularity_bits;
  uint64_t nbits = s / gran + (s % gran != 0);
  uint64_t bits_per_cluster = UINT64_C (8) << cluster_bits;

  return nbits / bits_per_cluster + (nbits % bits_per_cluster != 0);
}

int
qcow2_check_bitmap_params (uint64_t size, const char *name,
                           unsigned granularity_bits, unsigned cluster_bits,
                           struct dbm_err *err)
{
  size_t len = strlen (name);
  uint64_t tsize;

  if (len == 0)
    return BAD ("bitmap name: must not be empty");
  if (len > BME_MAX_NAME_SIZE)
    return BAD ("bitmap name: %zu bytes, the limit is %d", len,
                BME_MAX_NAME_SIZE);
  if (granularity_bits < BME_MIN_GRANULARITY_BITS ||
      granularity_bits > BME_MAX_GRANULARITY_BITS)
    return BAD ("bitmap granularity: 2^%u bytes is outside 512 bytes .. 2 GiB",
                granularity_bits);
  tsize = qcow2_required_table_size (size, granularity_bits, cluster_bits);
  if (tsize == 0)
    return BAD ("bitmap '%s': a disk of size 0 cannot carry a bitmap", name);
  if (tsize > BME_MAX_TABLE_SIZE ||
      (tsize << cluster_bits) > BME_MAX_PHYS_SIZE)
    return BAD ("bitmap '%s': granularity %" PRIu64 " is too fine for a "
                "%" PRIu64 "-byte disk (more than 512 MiB of bitmap); "
                "use a larger granularity", name,
                UINT64_C (1) << granularity_bits, size);
  return 0;
}

/* Count one reference to each of N clusters starting at OFF. */
static int
add_ref (struct qcow2_image *img, uint8_t *refs, uint64_t off, uint64_t n,
         const char *what, struct dbm_err *err)
{
  uint64_t i, first = off >> img->cluster_bits;

  if (off & (img->cluster_size - 1))
    return BAD ("%s: %s offset 0x%" PRIx64 " is not cluster-aligned",
                img->path, what, off);
  if (off >= img->file_size || n > (img->file_size - off + img->cluster_size - 1)
      >> img->cluster_bits)
    return BAD ("%s: %s at offset 0x%" PRIx64 " lies beyond the end of the "
                "file (%" PRIu64 " bytes)", img->path, what, off,
                img->file_size);
  for (i = 0; i < n; ++i)
    if (refs[first + i] < 255)
      refs[first + i]++;
  return 0;
}

static int
parse_header (struct qcow2_image *img, const unsigned char *h,
              struct dbm_err *err)
{
  uint32_t version;
  uint64_t known;

  if (get_be32 (h) != QCOW2_MAGIC)
    return BAD ("%s: not a qcow2 file (magic 0x%08" PRIx32 " at offset 0)",
                img->path, get_be32 (h));
  version = get_be32 (h + 4);
  if (version != 3)
    return BAD ("%s: qcow2 version %" PRIu32 " at offset 4: bitmaps need "
                "version 3", img->path, version);
  if (get_be64 (h + 8) != 0 || get_be32 (h + 16) != 0)
    return BAD ("%s: backing_file_offset (offset 8) is 0x%" PRIx64 ": a bitmap "
                "file must not have a backing file", img->path,
                get_be64 (h + 8));
  img->cluster_bits = get_be32 (h + 20);
  if (img->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      img->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return BAD ("%s: cluster_bits (offset 20) is %" PRIu32 ", outside 9..21",
                img->path, img->cluster_bits);
  img->cluster_size = UINT64_C (1) << img->cluster_bits;
  img->size = get_be64 (h + 24);
  if (get_be32 (h + 32) != 0)
    return BAD ("%s: crypt_method (offset 32) is %" PRIu32 ": encrypted "
                "images are not bitmap files", img->path, get_be32 (h + 32));
  img->l1_size = get_be32 (h + 36);
  img->l1_table_offset = get_be64 (h + 40);
  img->refcount_table_offset = get_be64 (h + 48);
  img->refcount_table_clusters = get_be32 (h + 56);
  if (get_be32 (h + 60) != 0)
    return BAD ("%s: nb_snapshots (offset 60) is %" PRIu32 ": a bitmap file "
                "must not have internal snapshots", img->path,
                get_be32 (h + 60));
  img->incompatible_features = get_be64 (h + 72);
  img->compatible_features = get_be64 (h + 80);
  img->autoclear_features = get_be64 (h + 88);
  img->refcount_order = get_be32 (h + 96);
  img->header_length = get_be32 (h + 100);

  if (img->incompatible_features & QCOW2_INCOMPAT_DIRTY)
    return BAD ("%s: incompatible_features (offset 72) has the dirty bit: "
                "refcounts are not up to date; run 'qemu-img check -r all'",
                img->path);
  if (img->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
    return BAD ("%s: incompatible_features (offset 72) has the corrupt bit "
                "set", img->path);
  if (img->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
    return BAD ("%s: incompatible_features (offset 72): an external data "
                "file is not supported in a bitmap file", img->path);
  known = QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2;
  if (img->incompatible_features & ~known)
    return BAD ("%s: incompatible_features (offset 72) is 0x%" PRIx64
                ": unknown feature bits", img->path,
                img->incompatible_features);
  if (img->refcount_order > 6)
    return BAD ("%s: refcount_order (offset 96) is %" PRIu32 ", outside 0..6",
                img->path, img->refcount_order);
  if (img->header_length < QCOW2_MIN_HEADER_LENGTH || img->header_length > img->cluster_size ||
      img->header_length % 8)
    return BAD ("%s: header_length (offset 100) is %" PRIu32 ": must be a "
                "multiple of 8 in 104..%" PRIu64, img->path,
                img->header_length, img->cluster_size);
  if (img->refcount_table_offset == 0 ||
      img->refcount_table_offset & (img->cluster_size - 1))
    return BAD ("%s: refcount_table_offset (offset 48) is 0x%" PRIx64 ": "
                "must be non-zero and cluster-aligned", img->path,
                img->refcount_table_offset);
  if (img->refcount_table_clusters == 0)
    return BAD ("%s: refcount_table_clusters (offset 56) is 0: the image has "
                "no reference count table", img->path);
  return 0;
}

const char *
qcow2_layout_name (enum qcow2_layout layout)
{
  return layout == QCOW2_LAYOUT_DRAFT2015 ? "draft-2015" : "qemu";
}

/* The draft's 16-byte extension: nb_dirty_bitmaps u32,
 * dirty_bitmap_directory_size u32, dirty_bitmap_directory_offset u64.
 */
static int
parse_draft_ext (struct qcow2_image *img, const unsigned char *d,
                 uint64_t off, struct dbm_err *err)
{
  img->layout = QCOW2_LAYOUT_DRAFT2015;
  img->has_bitmaps_ext = true;
  img->nb_bitmaps = get_be32 (d);
  img->bitmap_directory_size = get_be32 (d + 4);
  img->bitmap_directory_offset = get_be64 (d + 8);
  if (img->nb_bitmaps == 0)
    return BAD ("%s: nb_dirty_bitmaps (offset 0x%" PRIx64 ") is 0: the "
                "extension must be omitted when there are no bitmaps",
                img->path, off + 8);
  if (img->nb_bitmaps > BME_MAX_BITMAPS)
    return BAD ("%s: nb_dirty_bitmaps (offset 0x%" PRIx64 ") is %" PRIu32
                ", the maximum is 65535", img->path, off + 8, img->nb_bitmaps);
  if (img->bitmap_directory_size == 0 ||
      img->bitmap_directory_size > UINT64_C (1024) * img->nb_bitmaps)
    return BAD ("%s: dirty_bitmap_directory_size (offset 0x%" PRIx64 ") is %"
                PRIu64 ": must be 1..1024 * nb_dirty_bitmaps (%" PRIu64 ")",
                img->path, off + 12, img->bitmap_directory_size,
                UINT64_C (1024) * img->nb_bitmaps);
  if (img->bitmap_directory_offset == 0 ||
      img->bitmap_directory_offset & (img->cluster_size - 1))
    return BAD ("%s: dirty_bitmap_directory_offset (offset 0x%" PRIx64 ") is "
                "0x%" PRIx64 ": must be non-zero and cluster-aligned",
                img->path, off + 16, img->bitmap_directory_offset);
  return 0;
}

static int
parse_bitmaps_ext (struct qcow2_image *img, const unsigned char *d,
                   uint32_t len, uint64_t off, struct dbm_err *err)
{
  if (img->has_bitmaps_ext)
    return BAD ("%s: second bitmaps extension at offset 0x%" PRIx64,
                img->path, off);
  if (len == BME_DRAFT_EXT_LENGTH)
    return parse_draft_ext (img, d, off, err);
  if (len != BME_EXT_LENGTH)
    return BAD ("%s: bitmaps extension at offset 0x%" PRIx64 " has length "
                "%" PRIu32 ", must be 24", img->path, off, len);
  img->has_bitmaps_ext = true;
  img->nb_bitmaps = get_be32 (d);
  img->bitmap_directory_size = get_be64 (d + 8);
  img->bitmap_directory_offset = get_be64 (d + 16);
  if (img->nb_bitmaps == 0)
    return BAD ("%s: nb_bitmaps (offset 0x%" PRIx64 ") is 0: the extension "
                "must be omitted when there are no bitmaps", img->path, off + 8);
  if (img->nb_bitmaps > BME_MAX_BITMAPS)
    return BAD ("%s: nb_bitmaps (offset 0x%" PRIx64 ") is %" PRIu32
                ", the maximum is 65535", img->path, off + 8, img->nb_bitmaps);
  if (get_be32 (d + 4) != 0)
    return BAD ("%s: bitmaps extension reserved field (offset 0x%" PRIx64
                ") is 0x%" PRIx32 ", must be 0", img->path, off + 12,
                get_be32 (d + 4));
  if (img->bitmap_directory_size == 0)
    return BAD ("%s: bitmap_directory_size (offset 0x%" PRIx64 ") is 0",
                img->path, off + 16);
  if (img->bitmap_directory_size > BME_MAX_DIRECTORY_SIZE)
    return BAD ("%s: bitmap_directory_size (offset 0x%" PRIx64 ") is %" PRIu64
                ", exceeds the maximum 67107840", img->path, off + 16,
                img->bitmap_directory_size);
  if (img->bitmap_directory_offset == 0 ||
      img->bitmap_directory_offset & (img->cluster_size - 1))
    return BAD ("%s: bitmap_directory_offset (offset 0x%" PRIx64 ") is 0x%"
                PRIx64 ": must be non-zero and cluster-aligned", img->path,
                off + 24, img->bitmap_directory_offset);
  return 0;
}

/* Walk the header extensions, from header_length to the end of cluster 0. */
static int
parse_extensions (struct qcow2_image *img, const unsigned char *c0,
                  struct dbm_err *err)
{
  uint64_t off = img->header_length;
  bool seen_features = false;

  for (;;) {
    uint32_t magic, len;

    if (off + 8 > img->cluster_size)
      return BAD ("%s: header extensions run past the end of cluster 0 "
                  "(no end marker before offset 0x%" PRIx64 ")",
                  img->path, off);
    magic = get_be32 (c0 + off);
    len = get_be32 (c0 + off + 4);
    if (magic == QCOW2_EXT_END) {
      img->ext_end_offset = off;
      return 0;
    }
    if (len > img->cluster_size - off - 8)
      return BAD ("%s: header extension 0x%08" PRIx32 " at offset 0x%" PRIx64
                  " has length %" PRIu32 ", past the end of cluster 0",
                  img->path, magic, off, len);
    if (magic == QCOW2_EXT_BITMAPS) {
      if (parse_bitmaps_ext (img, c0 + off + 8, len, off, err) == -1)
        return -1;
    }
    else if (magic == QCOW2_EXT_FEATURE_TABLE) {
      if (seen_features)
        return BAD ("%s: second feature-name table at offset 0x%" PRIx64,
                    img->path, off);
      seen_features = true;
    }
    else if (magic == QCOW2_EXT_DIRTYBITMAP) {
      if (len != DBM_EXT_LENGTH || get_be32 (c0 + off + 8) != 1)
        return BAD ("%s: dirtybitmap extension at offset 0x%" PRIx64
                    " has length %" PRIu32 " or an unknown version",
                    img->path, off, len);
      img->dbm_state = get_be32 (c0 + off + 12);
      img->dbm_region_size = get_be64 (c0 + off + 16);
      img->dbm_ext_offset = off + 8;
    }
    else if (magic == 0xe2792acaU)
      return BAD ("%s: backing-format extension at offset 0x%" PRIx64
                  ": a bitmap file must not have a backing file",
                  img->path, off);
    off += 8 + ((uint64_t) len + 7) / 8 * 8;
  }
}

/* Walk L1 and the L2 tables it points at, counting references.  A bitmap
 * file normally has an all-zero L1; guest data is counted, not rejected,
 * so files dirtied by qemu-io can still be read.
 */
static int
walk_l1 (struct qcow2_image *img, uint8_t *refs, struct dbm_err *err)
{
  uint64_t need, l1_bytes, i, j;
  uint64_t per_l1 = img->cluster_size / 8 * img->cluster_size;
  CLEANUP_FREE unsigned char *l1 = NULL;
  CLEANUP_FREE unsigned char *l2 = NULL;

  need = qcow2_virtual_size (img) / per_l1 +
    (qcow2_virtual_size (img) % per_l1 != 0);
  if (img->l1_size < need)
    return BAD ("%s: l1_size (offset 36) is %" PRIu32 ", the virtual size "
                "%" PRIu64 " needs at least %" PRIu64 " (L1 table is too "
                "small)", img->path, img->l1_size, img->size, need);
  l1_bytes = (uint64_t) img->l1_size * 8;
  if (l1_bytes > QCOW2_MAX_L1_BYTES)
    return BAD ("%s: l1_size (offset 36) is %" PRIu32 ", above the 32 MiB "
                "L1 limit", img->path, img->l1_size);
  if (img->l1_size == 0) {
    if (img->l1_table_offset != 0 &&
        img->l1_table_offset & (img->cluster_size - 1))
      return BAD ("%s: l1_table_offset (offset 40) 0x%" PRIx64 " is not "
                  "cluster-aligned", img->path, img->l1_table_offset);
    return 0;
  }
  if (add_ref (img, refs, img->l1_table_offset,
               (l1_bytes + img->cluster_size - 1) >> img->cluster_bits,
               "L1 table (l1_table_offset, offset 40)", err) == -1)
    return -1;
  l1 = malloc (l1_bytes);
  l2 = malloc (img->cluster_size);
  if (l1 == NULL || l2 == NULL)
    return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
  if (read_struct (img, img->l1_table_offset, l1, l1_bytes, "L1 table",
                   err) == -1)
    return -1;
  for (i = 0; i < img->l1_size; ++i) {
    uint64_t e = get_be64 (l1 + i * 8);
    uint64_t l2_off = e & QCOW2_OFFSET_MASK;

    if (e & ~(QCOW2_OFFSET_MASK | (UINT64_C (1) << 63)))
      return BAD ("%s: L1 entry %" PRIu64 " (offset 0x%" PRIx64 ") is 0x%"
                  PRIx64 ": reserved bits set", img->path, i,
                  img->l1_table_offset + i * 8, e);
    if (l2_off == 0)
      continue;
    if (img->incompatible_features & QCOW2_INCOMPAT_EXTL2)
      return BAD ("%s: extended L2 entries are not supported", img->path);
    if (add_ref (img, refs, l2_off, 1, "L2 table", err) == -1)
      return -1;
    img->l2_tables++;
    if (qcow2_pread_full (img->fd, l2, img->cluster_size, l2_off) == -1)
      return dbm_seterr (err, errno, "%s: read L2 table at 0x%" PRIx64 ": %m",
                         img->path, l2_off);
    for (j = 0; j < img->cluster_size / 8; ++j) {
      uint64_t e2 = get_be64 (l2 + j * 8);
      uint64_t d = e2 & QCOW2_OFFSET_MASK;

      if (e2 & (UINT64_C (1) << 62))
        return BAD ("%s: L2 entry at 0x%" PRIx64 " is compressed: compressed "
                    "clusters are not supported in a bitmap file", img->path,
                    l2_off + j * 8);
      if (d == 0)
        continue;
      if (add_ref (img, refs, d, 1, "data cluster", err) == -1)
        return -1;
      img->data_clusters++;
    }
  }
  return 0;
}

static int
parse_directory (struct qcow2_image *img, uint8_t *refs, struct dbm_err *err)
{
  CLEANUP_FREE unsigned char *dir = NULL;
  uint64_t pos = 0, dsize = img->bitmap_directory_size;
  uint32_t i, j;

  if (add_ref (img, refs, img->bitmap_directory_offset,
               (dsize + img->cluster_size - 1) >> img->cluster_bits,
               "bitmap directory", err) == -1)
    return -1;
  /* Bounds before allocation: the sizes come from the file. */
  if (dsize > img->file_size - img->bitmap_directory_offset)
    return BAD ("%s: bitmap directory at offset 0x%" PRIx64 " (%" PRIu64
                " bytes) runs past the end of the file (%" PRIu64 " bytes)",
                img->path, img->bitmap_directory_offset, dsize,
                img->file_size);
  dir = calloc (1, dsize);
  img->bitmaps = calloc (img->nb_bitmaps, sizeof *img->bitmaps);
  if (dir == NULL || img->bitmaps == NULL)
    return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
  if (read_struct (img, img->bitmap_directory_offset, dir, dsize,
                   "bitmap directory", err) == -1)
    return -1;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    const unsigned char *e = dir + pos;
    uint64_t eoff = img->bitmap_directory_offset + pos;
    uint32_t extra;
    uint64_t esize, k, fixed;
    uint8_t type;

    if (img->layout == QCOW2_LAYOUT_QEMU && dsize - pos < BME_ENTRY_FIXED)
      return BAD ("%s: bitmap directory (bitmap_directory_size %" PRIu64
                  ") ends after %" PRIu32 " of nb_bitmaps %" PRIu32
                  " entries", img->path, dsize, i, img->nb_bitmaps);
    b->dir_entry_offset = eoff;
    if (img->layout == QCOW2_LAYOUT_DRAFT2015) {
      uint64_t nb_virtual_bits;
      uint32_t g;

      if (dsize - pos < DRAFT_ENTRY_FIXED)
        return BAD ("%s: bitmap directory (dirty_bitmap_directory_size %"
                    PRIu64 ") ends after %" PRIu32 " of nb_dirty_bitmaps %"
                    PRIu32 " entries", img->path, dsize, i, img->nb_bitmaps);
      b->bitmap_table_offset = get_be64 (e);
      nb_virtual_bits = get_be64 (e + 8);
      b->bitmap_table_size = get_be32 (e + 16);
      g = get_be32 (e + 20);
      b->flags = get_be32 (e + 24);
      b->name_size = get_be16 (e + 28);
      fixed = DRAFT_ENTRY_FIXED;
      type = BME_TYPE_DIRTY_TRACKING;
      extra = 0;
      if (g > DRAFT_MAX_GRANULARITY_BITS)
        return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%"
                    PRIx64 "): granularity_bits is %" PRIu32 ", outside "
                    "0..22 (512 bytes .. 2 GiB per bit)", img->path, i,
                    eoff + 20, g);
      b->granularity_bits = g + 9;
      if (nb_virtual_bits == 0 || nb_virtual_bits > (UINT64_C (1) << 53))
        return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%"
                    PRIx64 "): nb_virtual_bits is %" PRIu64 ", must be "
                    "1..2^53", img->path, i, eoff + 8, nb_virtual_bits);
      b->size = nb_virtual_bits * 512;
    }
    else {
      b->bitmap_table_offset = get_be64 (e);
      b->bitmap_table_size = get_be32 (e + 8);
      b->flags = get_be32 (e + 12);
      type = e[16];
      b->granularity_bits = e[17];
      b->name_size = get_be16 (e + 18);
      extra = get_be32 (e + 20);
      fixed = BME_ENTRY_FIXED;
      b->size = qcow2_virtual_size (img);
    }
    if (extra != 0)
      return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%" PRIx64
                  "): extra_data_size is %" PRIu32 ", extra data is not "
                  "supported", img->path, i, eoff + 20, extra);
    esize = ((uint64_t) fixed + b->name_size + 7) / 8 * 8;
    if (esize > dsize - pos)
      return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%" PRIx64
                  ", name_size %" PRIu16 ") runs past the end of the "
                  "directory (broken bitmap directory)", img->path, i, eoff,
                  b->name_size);
    if (b->name_size == 0)
      return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%" PRIx64
                  "): name_size is 0, names must not be empty", img->path, i,
                  eoff + 18);
    if (b->name_size > BME_MAX_NAME_SIZE)
      return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%" PRIx64
                  "): name_size is %" PRIu16 ", the maximum is 1023",
                  img->path, i, eoff + 18, b->name_size);
    b->name = strndup ((const char *) e + fixed, b->name_size);
    if (b->name == NULL)
      return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
    if (strlen (b->name) != b->name_size)
      return BAD ("%s: bitmap directory entry %" PRIu32 " (offset 0x%" PRIx64
                  "): the name contains a NUL byte", img->path, i, eoff + fixed);
    for (k = fixed + b->name_size; k < esize; ++k)
      if (e[k] != 0)
        return BAD ("%s: bitmap '%s': padding byte at offset 0x%" PRIx64
                    " is 0x%02x, must be 0", img->path, b->name, eoff + k,
                    e[k]);
    if (type != BME_TYPE_DIRTY_TRACKING)
      return BAD ("%s: bitmap '%s': type (offset 0x%" PRIx64 ") is %u, must "
                  "be 1 (dirty tracking)", img->path, b->name, eoff + 16, type);
    if (img->layout == QCOW2_LAYOUT_DRAFT2015) {
      if (b->flags & ~(DRAFT_FLAG_IN_USE | DRAFT_FLAG_SELF | DRAFT_FLAG_AUTO |
                       DRAFT_FLAG_READ_ONLY))
        return BAD ("%s: bitmap '%s': flags (offset 0x%" PRIx64 ") is 0x%"
                    PRIx32 ": reserved bits set", img->path, b->name,
                    eoff + 24, b->flags);
      if ((b->flags & DRAFT_FLAG_AUTO) && !(b->flags & DRAFT_FLAG_SELF))
        return BAD ("%s: bitmap '%s': flags (offset 0x%" PRIx64 ") is 0x%"
                    PRIx32 ": auto is set without self", img->path, b->name,
                    eoff + 24, b->flags);
    }
    else if (b->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO))
      return BAD ("%s: bitmap '%s': flags (offset 0x%" PRIx64 ") is 0x%"
                  PRIx32 ": reserved bits set", img->path, b->name, eoff + 12,
                  b->flags);
    if (b->granularity_bits < BME_MIN_GRANULARITY_BITS ||
        b->granularity_bits > BME_MAX_GRANULARITY_BITS)
      return BAD ("%s: bitmap '%s': granularity_bits (offset 0x%" PRIx64
                  ") is %u, outside 9..31", img->path, b->name, eoff + 17,
                  b->granularity_bits);
    if (b->bitmap_table_offset == 0 ||
        b->bitmap_table_offset & (img->cluster_size - 1))
      return BAD ("%s: bitmap '%s': bitmap_table_offset (offset 0x%" PRIx64
                  ") is 0x%" PRIx64 ": must be non-zero and cluster-aligned",
                  img->path, b->name, eoff, b->bitmap_table_offset);
    if (b->bitmap_table_size == 0 ||
        b->bitmap_table_size > BME_MAX_TABLE_SIZE ||
        ((uint64_t) b->bitmap_table_size << img->cluster_bits) >
        BME_MAX_PHYS_SIZE)
      return BAD ("%s: bitmap '%s': bitmap_table_size (offset 0x%" PRIx64
                  ") is %" PRIu32 ": must be 1..%" PRIu64, img->path, b->name,
                  eoff + (img->layout == QCOW2_LAYOUT_DRAFT2015 ? 16 : 8),
                  b->bitmap_table_size,
                  BME_MAX_PHYS_SIZE >> img->cluster_bits);
    for (j = 0; j < i; ++j)
      if (strcmp (img->bitmaps[j].name, b->name) == 0)
        return BAD ("%s: bitmap name '%s' (directory entry %" PRIu32
                    ", offset 0x%" PRIx64 ") is used twice", img->path,
                    b->name, i, eoff);
    /* Even an in_use bitmap (whose table size QEMU does not check) must fit
     * QEMU's limits at its own size: it is held in memory and rewritten
     * with the exact table.
     */
    {
      uint64_t need = qcow2_required_table_size (b->size, b->granularity_bits,
                                                 img->cluster_bits);
      if (need == 0 || need > BME_MAX_TABLE_SIZE ||
          (need << img->cluster_bits) > BME_MAX_PHYS_SIZE)
        return BAD ("%s: bitmap '%s': granularity %" PRIu64 " does not fit "
                    "a disk of %" PRIu64 " bytes (the bitmap would need %"
                    PRIu64 " table entries)", img->path, b->name,
                    UINT64_C (1) << b->granularity_bits, b->size, need);
    }
    b->inconsistent = (b->flags & BME_FLAG_IN_USE) || img->ext_inconsistent;
    if (!(b->flags & BME_FLAG_IN_USE)) {
      uint64_t want = qcow2_required_table_size (b->size, b->granularity_bits,
                                                 img->cluster_bits);
      if (b->bitmap_table_size != want)
        return BAD ("%s: bitmap '%s': bitmap_table_size (offset 0x%" PRIx64
                    ") is %" PRIu32 ", the virtual size %" PRIu64 " at "
                    "granularity %" PRIu64 " needs exactly %" PRIu64,
                    img->path, b->name, eoff + 8, b->bitmap_table_size,
                    img->size, UINT64_C (1) << b->granularity_bits, want);
    }
    pos += esize;
  }
  if (pos != dsize)
    return BAD ("%s: bitmap_directory_size is %" PRIu64 " but the %" PRIu32
                " entries take %" PRIu64 " bytes (more bitmaps found than "
                "nb_bitmaps says)", img->path, dsize, img->nb_bitmaps, pos);
  return 0;
}

/* Read each bitmap table, check its entries, count its references. */
static int
parse_tables (struct qcow2_image *img, uint8_t *refs, struct dbm_err *err)
{
  uint32_t i, j;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    uint64_t tbytes = (uint64_t) b->bitmap_table_size * 8;
    CLEANUP_FREE unsigned char *raw = NULL;

    /* Bounds before allocation: the size comes from the file. */
    if (tbytes == 0 || b->bitmap_table_offset >= img->file_size ||
        tbytes > img->file_size - b->bitmap_table_offset)
      return BAD ("%s: bitmap '%s': bitmap table at offset 0x%" PRIx64
                  " (%" PRIu64 " bytes) runs past the end of the file (%"
                  PRIu64 " bytes)", img->path, b->name,
                  b->bitmap_table_offset, tbytes, img->file_size);
    raw = calloc (1, tbytes);
    b->table = malloc (tbytes);
    if (raw == NULL || b->table == NULL)
      return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
    if (add_ref (img, refs, b->bitmap_table_offset,
                 (tbytes + img->cluster_size - 1) >> img->cluster_bits,
                 "bitmap table", err) == -1 ||
        read_struct (img, b->bitmap_table_offset, raw, tbytes, "bitmap table",
                     err) == -1)
      return -1;
    for (j = 0; j < b->bitmap_table_size; ++j) {
      uint64_t e = get_be64 (raw + (uint64_t) j * 8);
      uint64_t eoff = b->bitmap_table_offset + (uint64_t) j * 8;

      b->table[j] = e;
      if (e & (img->layout == QCOW2_LAYOUT_DRAFT2015 ? DRAFT_TABLE_RESERVED
               : BME_TABLE_RESERVED))
        return BAD ("%s: bitmap '%s': table entry %" PRIu32 " (offset 0x%"
                    PRIx64 ") is 0x%" PRIx64 ": reserved bits set", img->path,
                    b->name, j, eoff, e);
      if ((e & QCOW2_OFFSET_MASK) == 0)
        continue;
      if (e & BME_TABLE_ALL_ONES)
        return BAD ("%s: bitmap '%s': table entry %" PRIu32 " (offset 0x%"
                    PRIx64 ") is 0x%" PRIx64 ": bit 0 must be 0 when an "
                    "offset is present", img->path, b->name, j, eoff, e);
      if (add_ref (img, refs, e & QCOW2_OFFSET_MASK, 1, "bitmap data cluster",
                   err) == -1)
        return -1;
    }
  }
  return 0;
}

/* Entry J of a refcount block, for every refcount_order QEMU creates
 * (0..6).  The spec stores entries of 8 bits and more as big-endian
 * integers; narrower ones are packed into bytes starting at the least
 * significant bit ("bit 0 means the least significant bit"), so entry 0
 * of a 1-bit block is bit 0 (mask 0x01) of byte 0.
 */
static uint64_t
refcount_entry (const unsigned char *blk, uint64_t j, uint32_t refcount_order)
{
  unsigned rbits = 1U << refcount_order, k;
  uint64_t rc = 0;

  if (rbits < 8) {
    unsigned per_byte = 8 / rbits;
    return (blk[j / per_byte] >> (rbits * (j % per_byte))) &
      ((1U << rbits) - 1);
  }
  for (k = 0; k < rbits / 8; ++k)
    rc = rc << 8 | blk[j * (rbits / 8) + k];
  return rc;
}

/* Where entry J of the refcount block at BLOCK lies, for error messages:
 * the byte offset, plus the bit mask inside that byte when refcount_bits
 * is narrower than a byte (several clusters share the byte).
 */
static void
refcount_entry_where (char *buf, size_t len, uint64_t block, uint64_t j,
                      uint32_t refcount_order)
{
  unsigned rbits = 1U << refcount_order;

  if (rbits < 8) {
    unsigned per_byte = 8 / rbits;
    snprintf (buf, len, "refcount block entry %" PRIu64 " at offset 0x%"
              PRIx64 " mask 0x%02x, refcount_bits %u", j,
              block + j / per_byte,
              ((1U << rbits) - 1) << (rbits * (j % per_byte)), rbits);
  }
  else
    snprintf (buf, len, "refcount block entry %" PRIu64 " at offset 0x%"
              PRIx64 ", refcount_bits %u", j, block + j * (rbits / 8), rbits);
}

/* Compare every cluster's refcount with the references counted. */
static int
check_refcounts (struct qcow2_image *img, uint8_t *refs, uint64_t nclusters,
                 struct dbm_err *err)
{
  uint64_t rt_bytes = (uint64_t) img->refcount_table_clusters
    << img->cluster_bits;
  uint64_t per_block = (img->cluster_size * 8) >> img->refcount_order;
  CLEANUP_FREE unsigned char *rt = NULL;
  CLEANUP_FREE unsigned char *blk = NULL;
  CLEANUP_FREE uint64_t *blocks = NULL;
  uint64_t nentries = rt_bytes / 8, i, j;

  if (rt_bytes > img->file_size)
    return BAD ("%s: refcount_table_clusters (offset 56) is %" PRIu32
                ": the table would run past the end of the file",
                img->path, img->refcount_table_clusters);
  if (add_ref (img, refs, img->refcount_table_offset,
               img->refcount_table_clusters, "refcount table", err) == -1)
    return -1;
  rt = malloc (rt_bytes);
  blk = malloc (img->cluster_size);
  blocks = calloc (nentries, sizeof *blocks);
  if (rt == NULL || blk == NULL || blocks == NULL)
    return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
  if (read_struct (img, img->refcount_table_offset, rt, rt_bytes,
                   "refcount table", err) == -1)
    return -1;
  for (i = 0; i < nentries; ++i) {
    uint64_t e = get_be64 (rt + i * 8);
    if (e == 0)
      continue;
    if (e & ~QCOW2_OFFSET_MASK || e & (img->cluster_size - 1))
      return BAD ("%s: refcount table entry %" PRIu64 " (offset 0x%" PRIx64
                  ") is 0x%" PRIx64 ": not a cluster-aligned offset",
                  img->path, i, img->refcount_table_offset + i * 8, e);
    if (add_ref (img, refs, e, 1, "refcount block", err) == -1)
      return -1;
    blocks[i] = e;
  }

  for (i = 0; i < nentries; ++i) {
    if (blocks[i] == 0) {
      /* No block: refcount 0 for the clusters it would cover. */
      for (j = 0; j < per_block && i * per_block + j < nclusters; ++j) {
        uint64_t c = i * per_block + j;
        if (refs[c])
          return BAD ("%s: cluster at offset 0x%" PRIx64 " is referenced but "
                      "has no refcount block (refcount 0)", img->path,
                      c << img->cluster_bits);
      }
      continue;
    }
    if (qcow2_pread_full (img->fd, blk, img->cluster_size, blocks[i]) == -1)
      return dbm_seterr (err, errno, "%s: read refcount block at 0x%" PRIx64
                         ": %m", img->path, blocks[i]);
    for (j = 0; j < per_block; ++j) {
      uint64_t c = i * per_block + j;
      uint64_t rc = refcount_entry (blk, j, img->refcount_order);

      if (c >= nclusters) {
        if (rc) {
          if (img->leaked_clusters++ == 0)
            img->first_leak = c << img->cluster_bits;
        }
        continue;
      }
      if (refs[c] > rc) {
        char where[128];

        refcount_entry_where (where, sizeof where, blocks[i], j,
                              img->refcount_order);
        if (rc == 0)
          return BAD ("%s: cluster at offset 0x%" PRIx64 " is referenced "
                      "but its refcount is 0 (%s)", img->path,
                      c << img->cluster_bits, where);
        return BAD ("%s: cluster at offset 0x%" PRIx64 " is referenced %u "
                    "times but its refcount is %" PRIu64 " (%s)", img->path,
                    c << img->cluster_bits, refs[c], rc, where);
      }
      if (rc > refs[c]) {
        if (img->leaked_clusters++ == 0)
          img->first_leak = c << img->cluster_bits;
      }
      if (refs[c] > 1)
        img->shared_clusters++;
    }
  }
  /* Clusters of the file beyond what the refcount table can describe. */
  for (i = nentries * per_block; i < nclusters; ++i)
    if (refs[i])
      return BAD ("%s: cluster at offset 0x%" PRIx64 " is referenced but "
                  "lies beyond the refcount table's reach", img->path,
                  i << img->cluster_bits);
  return 0;
}

/* Load the contents of each consistent bitmap. */
/* Read bitmap B's data as the file holds it into BM (empty, its size
 * and granularity), through BUF (a cluster).
 */
static int
read_bits (struct qcow2_image *img, const struct qcow2_bitmap *b,
           struct bitmap *bm, unsigned char *buf, struct dbm_err *err)
{
  uint64_t nbytes = bitmap_data_bytes (bm);
  uint32_t j;

  for (j = 0; j < b->bitmap_table_size; ++j) {
    uint64_t off = (uint64_t) j << img->cluster_bits;
    uint64_t e = b->table[j], len;

    if (off >= nbytes)
      break;
    len = nbytes - off < img->cluster_size ? nbytes - off : img->cluster_size;
    if (e == 0)
      continue;
    if (e == BME_TABLE_ALL_ONES)
      memset (buf, 0xff, len);
    else if (qcow2_pread_full (img->fd, buf, len, e & QCOW2_OFFSET_MASK)
             == -1)
      return dbm_seterr (err, errno, "%s: bitmap '%s': read data cluster "
                         "at 0x%" PRIx64 ": %m", img->path, b->name,
                         e & QCOW2_OFFSET_MASK);
    if (bitmap_import (bm, off, buf, len) == -1)
      return dbm_seterr (err, errno, "%s: bitmap '%s': %m", img->path,
                         b->name);
  }
  return 0;
}

struct bitmap *
qcow2_read_bitmap (struct qcow2_image *img, int idx, struct dbm_err *err)
{
  const struct qcow2_bitmap *b = &img->bitmaps[idx];
  CLEANUP_FREE unsigned char *buf = malloc (img->cluster_size);
  struct bitmap *bm = bitmap_new (b->size, b->granularity_bits);

  if (buf == NULL || bm == NULL) {
    bitmap_delete (bm);
    dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
    return NULL;
  }
  if (read_bits (img, b, bm, buf, err) == -1) {
    bitmap_delete (bm);
    return NULL;
  }
  return bm;
}

static int
load_data (struct qcow2_image *img, struct dbm_err *err)
{
  CLEANUP_FREE unsigned char *buf = malloc (img->cluster_size);
  uint32_t i, j;

  if (buf == NULL)
    return dbm_seterr (err, ENOMEM, "%s: out of memory", img->path);
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];

    if ((b->bits = bitmap_new (b->size, b->granularity_bits)) == NULL)
      return dbm_seterr (err, errno, "%s: bitmap '%s': %m", img->path,
                         b->name);
    if (b->inconsistent)
      continue;
    if (read_bits (img, b, b->bits, buf, err) == -1)
      return -1;
    /* What was loaded is on disk already: not "changed". */
    for (j = 0; j < b->bits->nleaves; ++j)
      bitmap_take_changed (b->bits, j);
    atomic_store (&b->bits->any_changed, false);
  }
  return 0;
}

int
qcow2_open (const char *path, unsigned flags, struct qcow2_image **imgp,
            struct dbm_err *err)
{
  struct qcow2_image *img;
  struct stat st;
  CLEANUP_FREE unsigned char *c0 = NULL;
  unsigned char hdr[QCOW2_MIN_HEADER_LENGTH];
  CLEANUP_FREE uint8_t *refs = NULL;
  uint64_t nclusters;

  *imgp = NULL;
  img = calloc (1, sizeof *img);
  if (img == NULL || (img->path = strdup (path)) == NULL) {
    free (img);
    return dbm_seterr (err, ENOMEM, "%s: out of memory", path);
  }
  img->fd = open (path, ((flags & QCOW2_OPEN_RW) ? O_RDWR : O_RDONLY) |
                  O_CLOEXEC);
  if (img->fd == -1) {
    dbm_seterr (err, errno, "%s: open: %m", path);
    goto fail;
  }
  if (fstat (img->fd, &st) == -1) {
    dbm_seterr (err, errno, "%s: stat: %m", path);
    goto fail;
  }
  if (!S_ISREG (st.st_mode)) {
    dbm_seterr (err, EINVAL, "%s: not a regular file", path);
    goto fail;
  }
  img->file_size = st.st_size;
  if (img->file_size < QCOW2_MIN_HEADER_LENGTH) {
    BAD ("%s: file is %" PRIu64 " bytes, too short for a qcow2 header",
         path, img->file_size);
    goto fail;
  }
  /* The fixed header says how big cluster 0 is; allocate just that. */
  if (qcow2_pread_full (img->fd, hdr, sizeof hdr, 0) == -1) {
    dbm_seterr (err, errno, "%s: read header: %m", path);
    goto fail;
  }
  /* parse_header has checked cluster_bits (9..21); the second test only
   * states that for the static analyser, which cannot see it. */
  if (parse_header (img, hdr, err) == -1 || img->cluster_size == 0)
    goto fail;
  c0 = malloc (img->cluster_size);
  if (c0 == NULL) {
    dbm_seterr (err, ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  if (qcow2_pread_full (img->fd, c0, img->cluster_size, 0) == -1) {
    dbm_seterr (err, errno, "%s: read header: %m", path);
    goto fail;
  }
  if (parse_extensions (img, c0, err) == -1)
    goto fail;
  if (img->has_bitmaps_ext && !(img->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    img->ext_inconsistent = true;
  if (!img->has_bitmaps_ext && (img->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    img->autoclear_without_ext = true;

  nclusters = (img->file_size + img->cluster_size - 1) >> img->cluster_bits;
  refs = calloc (nclusters, 1);
  if (refs == NULL) {
    dbm_seterr (err, ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  if (add_ref (img, refs, 0, 1, "header", err) == -1 ||
      walk_l1 (img, refs, err) == -1)
    goto fail;
  /* With autoclear bit 0 clear QEMU ignores the extension, so its clusters
   * count as unreferenced (leaked), exactly as qemu-img check says.
   */
  if (img->has_bitmaps_ext && !img->ext_inconsistent) {
    if (parse_directory (img, refs, err) == -1 ||
        parse_tables (img, refs, err) == -1)
      goto fail;
  }
  else if (img->has_bitmaps_ext) {
    CLEANUP_FREE uint8_t *scratch = calloc (nclusters, 1);
    struct dbm_err ignored;
    uint32_t i;

    /* QEMU ignores the extension when bit 0 is clear; parse the directory
     * only to report names, into a scratch reference map, and drop it if
     * it does not parse.
     */
    if (scratch == NULL) {
      dbm_seterr (err, ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    if (parse_directory (img, scratch, &ignored) == -1 ||
        parse_tables (img, scratch, &ignored) == -1) {
      for (i = 0; img->bitmaps && i < img->nb_bitmaps; ++i) {
        free (img->bitmaps[i].name);
        free (img->bitmaps[i].table);
      }
      free (img->bitmaps);
      img->bitmaps = NULL;
      img->nb_bitmaps = 0;
    }
  }
  if (flags & QCOW2_OPEN_LOAD_IN_USE) {
    uint32_t i;
    for (i = 0; i < img->nb_bitmaps; ++i) {
      struct qcow2_bitmap *b = &img->bitmaps[i];
      if (b->inconsistent && !img->ext_inconsistent &&
          b->bitmap_table_size ==
          qcow2_required_table_size (b->size, b->granularity_bits,
                                     img->cluster_bits))
        b->inconsistent = false;
    }
  }
  if (check_refcounts (img, refs, nclusters, err) == -1 ||
      load_data (img, err) == -1)
    goto fail;
  *imgp = img;
  return 0;

 fail:
  qcow2_close (img);
  return -1;
}

struct qcow2_image *
qcow2_new (uint64_t size, unsigned cluster_bits, enum qcow2_layout layout,
           struct dbm_err *err)
{
  struct qcow2_image *img;

  if (cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    BAD ("cluster size 2^%u is outside 512 bytes .. 2 MiB", cluster_bits);
    return NULL;
  }
  if (size > (UINT64_C (1) << 62)) {
    BAD ("size %" PRIu64 " is too large", size);
    return NULL;
  }
  img = calloc (1, sizeof *img);
  if (img == NULL) {
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  img->fd = -1;
  img->layout = layout;
  img->cluster_bits = cluster_bits;
  img->cluster_size = UINT64_C (1) << cluster_bits;
  img->size = (size + 511) & ~UINT64_C (511);
  img->refcount_order = 4;
  img->header_length = QCOW2_HEADER_LENGTH;
  return img;
}

struct qcow2_image *
qcow2_clone (const struct qcow2_image *img, struct dbm_err *err)
{
  struct qcow2_image *c = calloc (1, sizeof *c);
  uint32_t i;

  if (c == NULL) {
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  *c = *img;
  c->fd = -1;
  c->bitmaps = NULL;
  c->nb_bitmaps = 0;
  c->path = img->path ? strdup (img->path) : NULL;
  c->bitmaps = calloc (img->nb_bitmaps + 1, sizeof *c->bitmaps);
  if (c->bitmaps == NULL || (img->path && c->path == NULL))
    goto nomem;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &c->bitmaps[i];
    *b = img->bitmaps[i];
    b->table = NULL;
    b->name = strdup (img->bitmaps[i].name);
    if (b->name == NULL) {
      b->bits = NULL;
      goto nomem;
    }
    c->nb_bitmaps++;
  }
  return c;

 nomem:
  for (i = 0; i < c->nb_bitmaps; ++i)
    c->bitmaps[i].bits = NULL;
  qcow2_close (c);
  dbm_seterr (err, ENOMEM, "out of memory");
  return NULL;
}

static void
free_bitmap (struct qcow2_bitmap *b)
{
  free (b->name);
  free (b->table);
  bitmap_delete (b->bits);
}

void
qcow2_close (struct qcow2_image *img)
{
  uint32_t i;

  if (img == NULL)
    return;
  if (img->fd >= 0)
    close (img->fd);
  for (i = 0; img->bitmaps && i < img->nb_bitmaps; ++i)
    free_bitmap (&img->bitmaps[i]);
  free (img->bitmaps);
  free (img->path);
  free (img);
}

int
qcow2_find_bitmap (const struct qcow2_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->nb_bitmaps; ++i)
    if (strcmp (img->bitmaps[i].name, name) == 0)
      return i;
  return -1;
}

int
qcow2_add_bitmap (struct qcow2_image *img, const char *name,
                  unsigned granularity_bits, uint32_t flags, uint64_t size,
                  struct dbm_err *err)
{
  struct qcow2_bitmap *nb, *b;

  if (img->layout == QCOW2_LAYOUT_QEMU) {
    if (size != 0 && ((size + 511) & ~UINT64_C (511)) != qcow2_virtual_size (img))
      return BAD ("bitmap '%s': size %" PRIu64 " differs from the virtual "
                  "size %" PRIu64 " (in QEMU's layout every bitmap covers "
                  "the whole image)", name, size, qcow2_virtual_size (img));
    size = qcow2_virtual_size (img);
    flags &= BME_FLAG_AUTO | BME_FLAG_IN_USE;
  }
  else {
    if (size == 0)
      return BAD ("bitmap '%s': a draft-2015 bitmap needs the size of the "
                  "drive it tracks", name);
    if (size > (UINT64_C (1) << 62))
      return BAD ("bitmap '%s': size %" PRIu64 " is too large", name, size);
    size = (size + 511) & ~UINT64_C (511);
    flags &= DRAFT_FLAG_IN_USE | DRAFT_FLAG_SELF | DRAFT_FLAG_AUTO |
      DRAFT_FLAG_READ_ONLY;
  }
  if (qcow2_check_bitmap_params (size, name, granularity_bits,
                                 img->cluster_bits, err) == -1)
    return -1;
  if (qcow2_find_bitmap (img, name) >= 0)
    return BAD ("bitmap '%s' already exists", name);
  if (img->nb_bitmaps >= BME_MAX_BITMAPS)
    return BAD ("too many bitmaps (the maximum is 65535)");
  nb = realloc (img->bitmaps, (img->nb_bitmaps + 1) * sizeof *nb);
  if (nb == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  img->bitmaps = nb;
  b = &nb[img->nb_bitmaps];
  memset (b, 0, sizeof *b);
  b->name = strdup (name);
  if (b->name == NULL ||
      (b->bits = bitmap_new (size, granularity_bits)) == NULL) {
    free (b->name);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  b->name_size = strlen (name);
  b->granularity_bits = granularity_bits;
  b->size = size;
  b->flags = flags;
  img->nb_bitmaps++;
  return 0;
}

bool
qcow2_bitmap_enabled (const struct qcow2_image *img,
                      const struct qcow2_bitmap *b)
{
  return (b->flags & qcow2_enabled_flags (img)) != 0;
}

uint32_t
qcow2_enabled_flags (const struct qcow2_image *img)
{
  return img->layout == QCOW2_LAYOUT_DRAFT2015 ? DRAFT_FLAG_AUTO
    : BME_FLAG_AUTO;
}

void
qcow2_remove_bitmap (struct qcow2_image *img, int i)
{
  free_bitmap (&img->bitmaps[i]);
  memmove (&img->bitmaps[i], &img->bitmaps[i + 1],
           (img->nb_bitmaps - i - 1) * sizeof img->bitmaps[0]);
  img->nb_bitmaps--;
}
