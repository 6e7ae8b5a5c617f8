/* A sparse in-memory dirty bitmap, safe for concurrent marking.
 *
 * Bits are grouped in leaves of BITMAP_LEAF_BYTES, allocated on the first
 * dirty bit, so memory follows what was dirtied, not the disk size.
 * Marking uses only atomic word operations: a load, then fetch_or only
 * when a bit actually flips.  Every leaf whose bits flipped is flagged
 * "changed" so a persist writes only those leaves.
 *
 * Bit order matches qcow2 bitmap data: bit n is bit (n & 63) of
 * little-endian 64-bit word n >> 6 (i.e. LSB first within each byte).
 */
#ifndef DBM_BITMAP_H
#define DBM_BITMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 512 B: a scattered dirty bit costs 512 B of heap, not a page, so a
 * 256 TiB export with 1 GiB of scattered writes stays well under 64 MiB.
 * The file is still written in whole pages (qcow2-write.c).
 */
#define BITMAP_LEAF_BYTES UINT64_C (512)
#define BITMAP_LEAF_BITS (BITMAP_LEAF_BYTES * 8)
#define BITMAP_LEAF_WORDS (BITMAP_LEAF_BYTES / 8)

struct bitmap {
  uint64_t size;                /* bytes of disk covered */
  unsigned granularity_bits;    /* bytes per bit = 1 << granularity_bits */
  uint64_t nbits;               /* ceil (size / granularity) */
  uint64_t nleaves;
  _Atomic (_Atomic uint64_t *) *leaves;
  _Atomic uint64_t *changed;    /* one bit per leaf */
  _Atomic bool any_changed;
};

extern int bitmap_init (struct bitmap *bm, uint64_t size,
                        unsigned granularity_bits);
extern void bitmap_free (struct bitmap *bm);

/* The same on the heap (NULL with errno set); bitmap_delete accepts NULL. */
extern struct bitmap *bitmap_new (uint64_t size, unsigned granularity_bits);
extern void bitmap_delete (struct bitmap *bm);

/* Mark the disk byte range [offset, offset+count) dirty (clipped to the
 * disk).  Returns 1 if any bit flipped, 0 if all were already set, -1 with
 * errno = ENOMEM if a leaf could not be allocated (nothing forwarded must
 * then rely on the mark).
 */
extern int bitmap_mark (struct bitmap *bm, uint64_t offset, uint64_t count);

/* The write path's common case, inline: bits FIRST..LAST lie in one word
 * and are all set already.  Costs a handful of loads and no atomic RMW;
 * returns false when the general path is needed.
 */
static inline bool
bitmap_all_set_fast (const struct bitmap *bm, uint64_t first, uint64_t last)
{
  _Atomic uint64_t *words;
  uint64_t mask;

  if ((first >> 6) != (last >> 6) || last >= bm->nbits)
    return false;
  words = atomic_load_explicit (&bm->leaves[first / BITMAP_LEAF_BITS],
                                memory_order_seq_cst);
  if (words == NULL)
    return false;
  mask = (~UINT64_C (0) >> (63 - (last & 63))) & (~UINT64_C (0) << (first & 63));
  return (atomic_load (&words[(first % BITMAP_LEAF_BITS) >> 6]) & mask) == mask;
}

/* The same for clear bits: FIRST..LAST lie in one word and none is set
 * (or their leaf is absent), so clearing them would change nothing.
 */
static inline bool
bitmap_all_clear_fast (const struct bitmap *bm, uint64_t first, uint64_t last)
{
  _Atomic uint64_t *words;
  uint64_t mask;

  if ((first >> 6) != (last >> 6) || last >= bm->nbits)
    return false;
  words = atomic_load (&bm->leaves[first / BITMAP_LEAF_BITS]);
  if (words == NULL)
    return true;
  mask = (~UINT64_C (0) >> (63 - (last & 63))) & (~UINT64_C (0) << (first & 63));
  return (atomic_load (&words[(first % BITMAP_LEAF_BITS) >> 6]) & mask) == 0;
}

/* Set bits [first, last] (inclusive bit numbers). Same return as mark. */
extern int bitmap_set_bits (struct bitmap *bm, uint64_t first, uint64_t last);

/* Clear bits [first, last] (inclusive), safe against concurrent marking
 * (atomic and of each word; leaves are never freed).  Changed flags are
 * not touched: for maps kept only in memory (the zero maps).
 */
extern void bitmap_clear_bits (struct bitmap *bm, uint64_t first,
                               uint64_t last);

extern bool bitmap_test (const struct bitmap *bm, uint64_t bit);

/* First bit >= start whose value is VALUE, or nbits if none. */
extern uint64_t bitmap_find (const struct bitmap *bm, uint64_t start,
                             bool value);

/* Number of set bits. */
extern uint64_t bitmap_count (const struct bitmap *bm);

/* Bits lying in blocks of BLOCK_BITS bits (the last one may be shorter)
 * that are entirely set: what whole all-ones regions account for.
 */
extern uint64_t bitmap_full_block_bits (const struct bitmap *bm,
                                        uint64_t block_bits);

/* Number of set bits in [FIRST, END) (clipped to nbits). */
extern uint64_t bitmap_count_range (const struct bitmap *bm, uint64_t first,
                                    uint64_t end);

/* OR LEN bytes of qcow2-order bitmap data into the bitmap at bitmap byte
 * BYTE_OFFSET.  Bits at or beyond nbits are ignored.
 */
extern int bitmap_import (struct bitmap *bm, uint64_t byte_offset,
                          const unsigned char *buf, size_t len);

/* Copy LEN bytes of bitmap data starting at BYTE_OFFSET into BUF in qcow2
 * order.  Absent leaves read as zero.
 */
extern void bitmap_export (const struct bitmap *bm, uint64_t byte_offset,
                           unsigned char *buf, size_t len);

/* Bytes of bitmap data (ceil (nbits / 8)). */
static inline uint64_t
bitmap_data_bytes (const struct bitmap *bm)
{
  return (bm->nbits + 7) / 8;
}

static inline bool
bitmap_leaf_present (const struct bitmap *bm, uint64_t leaf)
{
  return atomic_load (&bm->leaves[leaf]) != NULL;
}

/* Atomically read and clear the "changed" flag of LEAF. */
extern bool bitmap_take_changed (struct bitmap *bm, uint64_t leaf);

/* Flag LEAF as changed (again: after a failed persist). */
extern void bitmap_set_changed (struct bitmap *bm, uint64_t leaf);

/* Flag every present leaf holding bits FIRST..LAST as changed, whether or
 * not they flipped now: a marker that raced with a model replacement
 * re-marks this way, since its bits may have flipped in the old copy.
 */
extern void bitmap_flag_range (struct bitmap *bm, uint64_t first,
                               uint64_t last);

/* OR every bit of SRC into DST; the sizes may differ (bits beyond DST's
 * end are dropped).  -1 with ENOMEM.
 */
extern int bitmap_copy (struct bitmap *dst, const struct bitmap *src);

/* Clear every bit of DST that is clear in SRC (same granularity; DST not
 * marked concurrently).
 */
extern void bitmap_and (struct bitmap *dst, const struct bitmap *src);

/* Drop every bit (not safe against concurrent marking). */
extern void bitmap_clear (struct bitmap *bm);

/* Bytes of heap held by the bitmap. */
extern uint64_t bitmap_memory (const struct bitmap *bm);

#endif /* DBM_BITMAP_H */
