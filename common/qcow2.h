/* The qcow2 persistent-bitmaps file: in-memory model and operations.
 *
 * Field names follow the qcow2 specification (docs/interop/qcow2.txt in
 * QEMU) so a reader who knows the spec can grep for them.
 */
#ifndef DBM_QCOW2_H
#define DBM_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "bitmap.h"
#include "dbm-error.h"

#define QCOW2_MAGIC                 0x514649fbU
#define QCOW2_VERSION               3
#define QCOW2_HEADER_LENGTH         112   /* what we write */
#define QCOW2_MIN_HEADER_LENGTH     104   /* v3's fixed fields */
#define QCOW2_EXT_END               0x00000000U
#define QCOW2_EXT_BITMAPS           0x23852875U
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857U
/* Our own extension (QEMU ignores and keeps unknown ones): u32 version 1,
 * u32 flags (bit 0: a writer had the file open and has not closed it
 * cleanly), u64 region_size (crash-safe pre-marking unit, 0 if unused).
 * Only informative: it says a crash happened, never what to trust.
 */
#define QCOW2_EXT_DIRTYBITMAP       0x64626d31U      /* "dbm1" */
#define DBM_EXT_LENGTH              16
#define DBM_STATE_RUNNING           UINT32_C (1)
/* Point-in-time snapshots were live (they do not survive a restart). */
#define DBM_STATE_SNAPSHOTS         UINT32_C (2)
#define QCOW2_AUTOCLEAR_BITMAPS     UINT64_C (1)
/* Ours: the zero maps (qcow2-zero.c) are valid.  QEMU clears autoclear
 * bits it does not know whenever it opens the image read-write, so a
 * file QEMU may have changed since never has its zero maps trusted.
 */
#define QCOW2_AUTOCLEAR_DBM_ZERO    (UINT64_C (1) << 63)
#define QCOW2_INCOMPAT_DIRTY        UINT64_C (1)
#define QCOW2_INCOMPAT_CORRUPT      UINT64_C (2)
#define QCOW2_INCOMPAT_DATA_FILE    UINT64_C (4)
#define QCOW2_INCOMPAT_COMPRESSION  UINT64_C (8)
#define QCOW2_INCOMPAT_EXTL2        UINT64_C (16)
#define QCOW2_OFFSET_MASK           UINT64_C (0x00fffffffffffe00)
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_DEFAULT_CLUSTER_BITS  16
#define QCOW2_MAX_L1_BYTES          (UINT64_C (32) << 20)

/* The bitmaps extension of the layout QEMU ships. */
#define BME_EXT_LENGTH              24
#define BME_DRAFT_EXT_LENGTH        16
#define BME_MAX_BITMAPS             65535
#define BME_MAX_DIRECTORY_SIZE      (UINT64_C (1024) * 65535)
#define BME_ENTRY_FIXED             24
#define BME_MAX_NAME_SIZE           1023
#define BME_MAX_TABLE_SIZE          UINT32_C (0x8000000)
#define BME_MAX_PHYS_SIZE           UINT64_C (0x20000000)
#define BME_MIN_GRANULARITY_BITS    9
#define BME_MAX_GRANULARITY_BITS    31
#define BME_MIN_GRANULARITY         (UINT64_C (1) << BME_MIN_GRANULARITY_BITS)
#define BME_MAX_GRANULARITY         (UINT64_C (1) << BME_MAX_GRANULARITY_BITS)
#define BME_FLAG_IN_USE             UINT32_C (1)
#define BME_FLAG_AUTO               UINT32_C (2)
#define BME_TYPE_DIRTY_TRACKING     1
#define BME_TABLE_ALL_ONES          UINT64_C (1)
#define BME_TABLE_RESERVED          UINT64_C (0xff000000000001fe)

/* The 2015 draft layout (qcow2-dirty-bitmaps-draft-2015.txt): a 16-byte
 * extension, 30-byte fixed entries with nb_virtual_bits, granularity in
 * 512-byte sectors, and flags in_use, self, auto (only with self),
 * read_only.  Bitmaps may cover drives of any size: the container itself
 * has virtual size 0.
 */
#define DRAFT_ENTRY_FIXED           30
#define DRAFT_FLAG_IN_USE           UINT32_C (1)
#define DRAFT_FLAG_SELF             UINT32_C (2)
#define DRAFT_FLAG_AUTO             UINT32_C (4)
#define DRAFT_FLAG_READ_ONLY        UINT32_C (8)
#define DRAFT_MAX_GRANULARITY_BITS  22          /* 2^22 sectors = 2 GiB */
#define DRAFT_TABLE_RESERVED        UINT64_C (0xff000000000001ff)

enum qcow2_layout { QCOW2_LAYOUT_QEMU, QCOW2_LAYOUT_DRAFT2015 };

extern const char *qcow2_layout_name (enum qcow2_layout layout);

struct qcow2_bitmap {
  char *name;                   /* NUL-terminated copy of the name */
  uint16_t name_size;
  /* Bytes of disk per bit, log2, in both layouts (draft: sectors + 9). */
  uint8_t granularity_bits;
  uint32_t flags;               /* as on disk: BME_FLAG_* or DRAFT_FLAG_* */
  /* Bytes of disk the bitmap covers: the virtual size (QEMU's layout) or
   * nb_virtual_bits * 512 (draft).
   */
  uint64_t size;
  uint64_t bitmap_table_offset;
  uint32_t bitmap_table_size;
  uint64_t *table;              /* bitmap_table_size entries, host order */
  uint64_t dir_entry_offset;    /* file offset of the directory entry */
  /* Contents.  For an inconsistent bitmap (in_use on disk, or autoclear bit
   * 0 clear) the data is unknown; bits is still allocated but not loaded.
   */
  bool inconsistent;
  /* On the heap, so that it stays put while the model's array of bitmaps
   * is reallocated or the model is replaced under concurrent markers.
   * NULL only in a model whose bitmaps were handed over elsewhere.
   */
  struct bitmap *bits;
};

struct qcow2_image {
  char *path;
  int fd;                       /* -1 for an image built in memory */
  enum qcow2_layout layout;

  uint32_t cluster_bits;
  uint64_t cluster_size;
  uint64_t size;                /* the header's size field */
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t refcount_order;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t header_length;
  uint64_t file_size;

  bool has_bitmaps_ext;
  uint64_t bitmap_directory_offset;
  uint64_t bitmap_directory_size;
  uint32_t nb_bitmaps;
  struct qcow2_bitmap *bitmaps;

  /* Findings of the consistency check that do not stop a read. */
  uint64_t data_clusters;       /* guest data referenced through L1/L2 */
  uint64_t leaked_clusters;     /* refcount > 0, never referenced */
  uint64_t first_leak;          /* offset of the first leaked cluster */
  uint64_t shared_clusters;     /* referenced more than once */
  uint64_t l2_tables;           /* L2 tables the L1 points at */
  uint64_t ext_end_offset;      /* offset of the end-of-extensions marker */
  bool autoclear_without_ext;   /* bit 0 set, no bitmaps extension */
  uint32_t dbm_state;           /* DBM_STATE_* from our extension */
  uint64_t dbm_region_size;
  uint64_t dbm_ext_offset;      /* its data's offset in cluster 0, or 0 */
  bool ext_inconsistent;        /* extension present, bit 0 clear */

  /* The file as last opened or committed (qcow2-watch.c): so that a file
   * unlinked, replaced, truncated or overwritten behind our back is
   * noticed at the next persist or flush instead of silently written.
   */
  bool identity_known;
  uint64_t id_dev, id_ino;
  unsigned char id_header[QCOW2_MIN_HEADER_LENGTH];
  /* A commit renamed the new file into place but its directory sync
   * failed: qcow2_sync retries it before it may succeed.
   */
  _Atomic bool dir_sync_pending;
  /* A qcow2_update switched the header but the sync after it failed:
   * qcow2_sync writes the header again (the kernel may have dropped the
   * page) and syncs before it may succeed.  Both flags are set under the
   * caller's exclusion of every other sync (tracker: all four locks) and
   * taken by exchange, so two concurrent syncs never both retry.
   */
  _Atomic bool header_sync_pending;
};

/* Must qcow2_sync run before a flush may say the file is durable? */
static inline bool
qcow2_sync_pending (const struct qcow2_image *img)
{
  return atomic_load (&img->dir_sync_pending) ||
    atomic_load (&img->header_sync_pending);
}

/* The autoclear_features a file we write carries: bit 0 iff it has
 * bitmaps, and our zero maps' bit if the model still has it.
 */
static inline uint64_t
qcow2_autoclear_for (const struct qcow2_image *img)
{
  if (img->nb_bitmaps == 0)
    return 0;
  return QCOW2_AUTOCLEAR_BITMAPS |
    (img->layout == QCOW2_LAYOUT_QEMU ?
     img->autoclear_features & QCOW2_AUTOCLEAR_DBM_ZERO : 0);
}

/* Zero maps (qcow2-zero.c).  The zero map of bitmap NAME is a disabled
 * bitmap named NAME followed by QCOW2_ZERO_SUFFIX (with a blank, which a
 * user's new names may not hold; an enabled bitmap so named is refused),
 * of the same granularity: a bit set
 * says the last change to all of that granule before NAME was frozen
 * was a zero or trim request.  Bits are a subset of NAME's.
 */
#define QCOW2_ZERO_SUFFIX           " [zero]"

/* The zero map's name for bitmap NAME (malloc'd), or NULL if it would be
 * too long (then NAME has none) or out of memory.
 */
extern char *qcow2_zero_map_name (const char *name);

/* Index of the zero map of bitmap IDX, or -1.  Only while the file has
 * QCOW2_AUTOCLEAR_DBM_ZERO, and for a disabled IDX; the map must be
 * disabled, consistent and match IDX's granularity and size.
 */
extern int qcow2_zero_map_of (const struct qcow2_image *img, int idx);

/* Is bitmap IDX the zero map of another bitmap (qcow2_zero_map_of)? */
extern bool qcow2_is_zero_map (const struct qcow2_image *img, int idx);

/* Does NAME end with QCOW2_ZERO_SUFFIX (whatever the autoclear bit)? */
extern bool qcow2_zero_map_shaped (const char *name);

/* Remove the zero map of bitmap IDX from the model, if it has one (its
 * bitmap changes, or goes).  Returns the index IDX has afterwards.
 */
extern int qcow2_drop_zero_map (struct qcow2_image *img, int idx);

/* QEMU's view of the disk: the header size truncated to 512-byte sectors. */
static inline uint64_t
qcow2_virtual_size (const struct qcow2_image *img)
{
  return img->size & ~UINT64_C (511);
}

/* Bitmap IDX as the file holds it now (not the model's bits): a new
 * bitmap, or NULL with ERR.
 */
extern struct bitmap *qcow2_read_bitmap (struct qcow2_image *img, int idx,
                                         struct dbm_err *err);

/* The exact bitmap_table_size QEMU requires for a consistent bitmap. */
extern uint64_t qcow2_required_table_size (uint64_t size,
                                           unsigned granularity_bits,
                                           unsigned cluster_bits);

/* Check a prospective bitmap against QEMU's limits for an image of SIZE
 * bytes; names the key (name or granularity) on failure.
 */
extern int qcow2_check_bitmap_params (uint64_t size, const char *name,
                                      unsigned granularity_bits,
                                      unsigned cluster_bits,
                                      struct dbm_err *err);

/* Open and fully validate PATH.  With QCOW2_OPEN_RW the descriptor is
 * opened O_RDWR (locking is the caller's business).  Every bitmap that is
 * not inconsistent is loaded into memory; with QCOW2_OPEN_LOAD_IN_USE an
 * in_use bitmap whose table has the exact size is loaded too (its last
 * persisted contents, which may be stale: for diagnostics and tests).
 */
#define QCOW2_OPEN_RW           1
#define QCOW2_OPEN_LOAD_IN_USE  2
extern int qcow2_open (const char *path, unsigned flags,
                       struct qcow2_image **imgp, struct dbm_err *err);

/* An empty image model (not yet on disk) of SIZE bytes (rounded up to
 * 512) with cluster size 1 << CLUSTER_BITS.  A draft container has size 0.
 */
extern struct qcow2_image *qcow2_new (uint64_t size, unsigned cluster_bits,
                                      enum qcow2_layout layout,
                                      struct dbm_err *err);

extern void qcow2_close (struct qcow2_image *img);

/* A copy of the model, not yet on disk (fd -1, no tables), whose bitmaps
 * share IMG's bit storage: the caller decides which model owns it, and
 * sets the other's bits pointers to NULL before closing it.
 */
extern struct qcow2_image *qcow2_clone (const struct qcow2_image *img,
                                        struct dbm_err *err);

extern int qcow2_find_bitmap (const struct qcow2_image *img,
                              const char *name);

/* Add an empty bitmap to the model.  SIZE is the disk it covers: 0 means
 * the image's virtual size (required in QEMU's layout); in the draft layout
 * it is rounded up to 512.
 */
extern int qcow2_add_bitmap (struct qcow2_image *img, const char *name,
                             unsigned granularity_bits, uint32_t flags,
                             uint64_t size, struct dbm_err *err);

/* The flag meanings that differ between layouts. */
extern bool qcow2_bitmap_enabled (const struct qcow2_image *img,
                                  const struct qcow2_bitmap *b);
extern uint32_t qcow2_enabled_flags (const struct qcow2_image *img);
static inline bool
qcow2_bitmap_read_only (const struct qcow2_image *img,
                        const struct qcow2_bitmap *b)
{
  return img->layout == QCOW2_LAYOUT_DRAFT2015 &&
    (b->flags & DRAFT_FLAG_READ_ONLY);
}
extern void qcow2_remove_bitmap (struct qcow2_image *img, int i);

/* Write the model as a complete new file at PATH, atomically: a temporary
 * file in the same directory, fsync, rename, fsync of the directory.
 * Afterwards img->fd is the new file (O_RDWR) and every offset in the model
 * describes it.  If LOCK_FD_CB is set it is called on the temporary file's
 * descriptor before the rename, so the new inode is never unlocked.
 * Returns -1 (the old file is untouched), 0, or 1: committed, but the
 * directory sync failed (ERR says so; the model uses the new file anyway,
 * and the next qcow2_sync retries the directory).  See atomic-file.h for
 * mode, owner and hard links.
 */
#define QCOW2_COMMIT_NOREPLACE 1 /* ATOMIC_FILE_NOREPLACE: never overwrite */
#define QCOW2_COMMIT_PRIVATE 2   /* ATOMIC_FILE_PRIVATE: a new file is 0600 */
extern int qcow2_commit (struct qcow2_image *img, const char *path,
                         unsigned flags,
                         int (*lock_fd_cb) (int fd, struct dbm_err *err),
                         struct dbm_err *err);

/* Change the committed file of IMG0 (open, qcow2_is_canonical) into what
 * IMG describes, without rewriting what stays (qcow2-update.c).  IMG is a
 * qcow2_clone of IMG0 with bitmaps added, removed or re-flagged, none
 * resized; a bitmap with IMG0's storage keeps its table and data clusters
 * (its data is not written), a new one gets them past the end of the file
 * (its data written).  The header switch is the commit point.  Returns -1
 * (IMG0 in force, its file as before), 0, or 1: in force, but the sync
 * after the switch failed (ERR says so; every later qcow2_sync syncs it).
 * From 0 or 1 on, IMG holds the descriptor and IMG0 none.
 */
extern int qcow2_update (struct qcow2_image *img, struct qcow2_image *img0,
                         struct dbm_err *err);

/* Does IMG's file hold more free clusters than used ones (qcow2_update
 * never reuses them)?  Then the next change should be a full rewrite.
 */
extern bool qcow2_wants_compaction (const struct qcow2_image *img);

/* Record which file IMG->fd is (device, inode, fixed header), after an
 * open or a commit.
 */
extern void qcow2_note_identity (struct qcow2_image *img);

/* Is IMG->fd still the file at PATH, linked, of the size and header we
 * wrote?  -1 with a message saying what changed (EIO) if not.
 */
extern int qcow2_check_identity (struct qcow2_image *img, const char *path,
                                 struct dbm_err *err);

/* True if the open file is in the layout qcow2_commit writes and
 * qcow2_update keeps (every bitmap preallocated, nothing shared or
 * leaked, our header), so changes can be made in place instead of by a
 * rewrite.
 */
extern bool qcow2_is_canonical (struct qcow2_image *img);

/* Write every data leaf of bitmap I flagged changed since the last call
 * (not synced); *WROTE (if not NULL) is set if anything was written.  A
 * leaf that fails to write stays flagged.
 */
extern int qcow2_write_changed (struct qcow2_image *img, int i, bool *wrote,
                                struct dbm_err *err);

/* Write every present data leaf of bitmap I (not synced): a bitmap made
 * final in place, whose changed flags may lag its bits (a marker sets the
 * bit, then flags the leaf).
 */
extern int qcow2_write_present (struct qcow2_image *img, int i,
                                struct dbm_err *err);

/* Apply the model to a canonical file in place: changed data leaves
 * (synced), then flags that differ from OLD_FLAGS and the state (synced).
 */
extern int qcow2_update_in_place (struct qcow2_image *img,
                                  const uint32_t *old_flags,
                                  struct dbm_err *err);

/* In-place updates of a committed (canonical-layout) file. */
extern int qcow2_write_flags (struct qcow2_image *img, int i, uint32_t flags,
                              struct dbm_err *err);
extern int qcow2_write_data (struct qcow2_image *img, int i,
                             uint64_t byte_offset, const unsigned char *buf,
                             size_t len, struct dbm_err *err);
extern int qcow2_sync (struct qcow2_image *img, struct dbm_err *err);

/* Rewrite our state flags in place (canonical layout). */
extern int qcow2_write_state (struct qcow2_image *img, uint32_t state,
                              struct dbm_err *err);

/* Clear autoclear bit 0 in place (repair of "bit set, no extension"). */
extern int qcow2_write_autoclear (struct qcow2_image *img, uint64_t value,
                                  struct dbm_err *err);

#endif /* DBM_QCOW2_H */
