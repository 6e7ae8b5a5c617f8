#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "test-hooks.h"

int
bitmap_init (struct bitmap *bm, uint64_t size, unsigned granularity_bits)
{
  memset (bm, 0, sizeof *bm);
  if (granularity_bits > 63) {
    errno = EINVAL;
    return -1;
  }
  bm->size = size;
  bm->granularity_bits = granularity_bits;
  bm->nbits = (size >> granularity_bits) +
    ((size & ((UINT64_C (1) << granularity_bits) - 1)) != 0);
  bm->nleaves = (bm->nbits + BITMAP_LEAF_BITS - 1) / BITMAP_LEAF_BITS;
  /* calloc of 0 may return NULL; always allocate at least one slot. */
  bm->leaves = calloc (bm->nleaves ? bm->nleaves : 1, sizeof *bm->leaves);
  bm->changed = calloc ((bm->nleaves + 63) / 64 + 1, sizeof *bm->changed);
  if (bm->leaves == NULL || bm->changed == NULL) {
    bitmap_free (bm);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void
bitmap_free (struct bitmap *bm)
{
  uint64_t i;

  if (bm->leaves) {
    for (i = 0; i < bm->nleaves; ++i)
      free ((void *) atomic_load (&bm->leaves[i]));
  }
  free ((void *) bm->leaves);
  free ((void *) bm->changed);
  bm->leaves = NULL;
  bm->changed = NULL;
}

/* Return the leaf, allocating it if needed.  Allocation races are settled
 * by compare-and-swap: the loser frees its copy and uses the winner's.
 */
static _Atomic uint64_t *
get_leaf (struct bitmap *bm, uint64_t leaf)
{
  _Atomic uint64_t *p = atomic_load (&bm->leaves[leaf]);
  _Atomic uint64_t *expected = NULL;

  if (p)
    return p;
  p = calloc (BITMAP_LEAF_WORDS, sizeof (_Atomic uint64_t));
  if (p == NULL)
    return NULL;
  if (!atomic_compare_exchange_strong (&bm->leaves[leaf], &expected, p)) {
    free ((void *) p);
    p = expected;
  }
  return p;
}

void
bitmap_set_changed (struct bitmap *bm, uint64_t leaf)
{
  uint64_t m = UINT64_C (1) << (leaf & 63);

  if ((atomic_load (&bm->changed[leaf >> 6]) & m) == 0)
    atomic_fetch_or (&bm->changed[leaf >> 6], m);
  if (!atomic_load (&bm->any_changed))
    atomic_store (&bm->any_changed, true);
}

bool
bitmap_take_changed (struct bitmap *bm, uint64_t leaf)
{
  uint64_t m = UINT64_C (1) << (leaf & 63);

  if ((atomic_load (&bm->changed[leaf >> 6]) & m) == 0)
    return false;
  return (atomic_fetch_and (&bm->changed[leaf >> 6], ~m) & m) != 0;
}

/* The hot path: a word whose bits are already set costs one load. */
static int
set_word (struct bitmap *bm, uint64_t leaf, _Atomic uint64_t *w,
          uint64_t mask)
{
  if ((atomic_load (w) & mask) == mask)
    return 0;
  if ((atomic_fetch_or (w, mask) & mask) == mask)
    return 0;
  DBM_TEST_HOOK (DBM_HOOK_BIT_SET);
  bitmap_set_changed (bm, leaf);
  return 1;
}

/* The bits FIRST..END (inclusive) that lie in FIRST's word, as a mask. */
static uint64_t
word_mask (uint64_t first, uint64_t end)
{
  unsigned lo = first & 63;
  unsigned hi = (end >> 6) == (first >> 6) ? (end & 63) : 63;

  return (hi == 63 ? ~UINT64_C (0) : (UINT64_C (1) << (hi + 1)) - 1)
    & ~((UINT64_C (1) << lo) - 1);
}

int
bitmap_set_bits (struct bitmap *bm, uint64_t first, uint64_t last)
{
  int flipped = 0;

  if (bm->nbits == 0 || first >= bm->nbits)
    return 0;
  if (last >= bm->nbits)
    last = bm->nbits - 1;

  while (first <= last) {
    uint64_t leaf = first / BITMAP_LEAF_BITS;
    uint64_t leaf_last = (leaf + 1) * BITMAP_LEAF_BITS - 1;
    uint64_t end = last < leaf_last ? last : leaf_last;
    _Atomic uint64_t *words = get_leaf (bm, leaf);

    if (words == NULL) {
      errno = ENOMEM;
      return -1;
    }
    while (first <= end) {
      uint64_t wi = (first % BITMAP_LEAF_BITS) >> 6;
      uint64_t mask = word_mask (first, end);

      flipped |= set_word (bm, leaf, &words[wi], mask);
      first = (first | 63) + 1;
    }
    if (end == UINT64_MAX)
      break;
  }
  return flipped;
}

void
bitmap_clear_bits (struct bitmap *bm, uint64_t first, uint64_t last)
{
  if (bm->nbits == 0 || first >= bm->nbits)
    return;
  if (last >= bm->nbits)
    last = bm->nbits - 1;
  while (first <= last) {
    uint64_t leaf = first / BITMAP_LEAF_BITS;
    uint64_t leaf_last = (leaf + 1) * BITMAP_LEAF_BITS - 1;
    uint64_t end = last < leaf_last ? last : leaf_last;
    _Atomic uint64_t *words = atomic_load (&bm->leaves[leaf]);

    /* An absent leaf has no bit to clear. */
    while (words && first <= end) {
      uint64_t wi = (first % BITMAP_LEAF_BITS) >> 6;
      uint64_t mask = word_mask (first, end);

      if (atomic_load (&words[wi]) & mask)
        atomic_fetch_and (&words[wi], ~mask);
      first = (first | 63) + 1;
    }
    first = end + 1;            /* end <= nbits - 1: no overflow */
  }
}

int
bitmap_mark (struct bitmap *bm, uint64_t offset, uint64_t count)
{
  uint64_t last;

  if (count == 0)
    return 0;
  last = offset + count - 1;
  if (bitmap_all_set_fast (bm, offset >> bm->granularity_bits,
                           last >> bm->granularity_bits))
    return 0;
  if (last < offset)            /* wrapped: clip to the end */
    last = UINT64_MAX;
  return bitmap_set_bits (bm, offset >> bm->granularity_bits,
                          last >> bm->granularity_bits);
}

bool
bitmap_test (const struct bitmap *bm, uint64_t bit)
{
  _Atomic uint64_t *words;

  if (bit >= bm->nbits)
    return false;
  words = atomic_load (&bm->leaves[bit / BITMAP_LEAF_BITS]);
  if (words == NULL)
    return false;
  return (atomic_load (&words[(bit % BITMAP_LEAF_BITS) >> 6]) >> (bit & 63)) & 1;
}

uint64_t
bitmap_find (const struct bitmap *bm, uint64_t start, bool value)
{
  while (start < bm->nbits) {
    uint64_t leaf = start / BITMAP_LEAF_BITS;
    _Atomic uint64_t *words = atomic_load (&bm->leaves[leaf]);
    uint64_t leaf_end = (leaf + 1) * BITMAP_LEAF_BITS;

    if (words == NULL) {
      if (!value)
        return start;
      start = leaf_end;
      continue;
    }
    while (start < leaf_end && start < bm->nbits) {
      uint64_t w = atomic_load (&words[(start % BITMAP_LEAF_BITS) >> 6]);

      if (!value)
        w = ~w;
      w &= ~((UINT64_C (1) << (start & 63)) - 1);
      if (w) {
        uint64_t bit = (start & ~UINT64_C (63)) + __builtin_ctzll (w);
        return bit < bm->nbits ? bit : bm->nbits;
      }
      start = (start | 63) + 1;
    }
  }
  return bm->nbits;
}

uint64_t
bitmap_count (const struct bitmap *bm)
{
  uint64_t n = 0, leaf;
  size_t i;

  for (leaf = 0; leaf < bm->nleaves; ++leaf) {
    _Atomic uint64_t *words = atomic_load (&bm->leaves[leaf]);
    if (words == NULL)
      continue;
    for (i = 0; i < BITMAP_LEAF_WORDS; ++i)
      n += __builtin_popcountll (atomic_load (&words[i]));
  }
  return n;
}

uint64_t
bitmap_count_range (const struct bitmap *bm, uint64_t first, uint64_t end)
{
  uint64_t n = 0, w;

  if (end > bm->nbits)
    end = bm->nbits;
  for (w = first >> 6; first < end && w <= (end - 1) >> 6; ++w) {
    uint64_t leaf = w / BITMAP_LEAF_WORDS, v, lo, hi;
    _Atomic uint64_t *words = atomic_load (&bm->leaves[leaf]);

    if (words == NULL) {
      w = (leaf + 1) * BITMAP_LEAF_WORDS - 1;   /* skip the absent leaf */
      continue;
    }
    v = atomic_load (&words[w % BITMAP_LEAF_WORDS]);
    lo = w * 64 < first ? first - w * 64 : 0;
    hi = (w + 1) * 64 > end ? end - w * 64 : 64;
    v &= (~UINT64_C (0) << lo) & (hi == 64 ? ~UINT64_C (0)
                                  : (UINT64_C (1) << hi) - 1);
    n += __builtin_popcountll (v);
  }
  return n;
}

uint64_t
bitmap_full_block_bits (const struct bitmap *bm, uint64_t block_bits)
{
  uint64_t a, e, n = 0;

  for (a = 0; block_bits && a < bm->nbits; a = e) {
    e = bm->nbits - a < block_bits ? bm->nbits : a + block_bits;
    if (bitmap_count_range (bm, a, e) == e - a)
      n += e - a;
  }
  return n;
}

int
bitmap_import (struct bitmap *bm, uint64_t byte_offset,
               const unsigned char *buf, size_t len)
{
  size_t i = 0;

  /* Byte at a time up to a word boundary, then whole words: loading a
   * large bitmap must not cost a loop per bit.
   */
  while (i < len) {
    uint64_t b = byte_offset + i, bit = b * 8, w = 0, mask;
    size_t n = 8 - (b & 7), k;
    uint64_t leaf;
    _Atomic uint64_t *words;

    if (n > len - i)
      n = len - i;
    for (k = 0; k < n; ++k)
      w |= (uint64_t) buf[i + k] << (((b & 7) + k) * 8);
    i += n;
    if (w == 0)
      continue;
    bit &= ~UINT64_C (63);
    if (bit >= bm->nbits)
      return 0;
    if (bm->nbits - bit < 64)
      w &= (UINT64_C (1) << (bm->nbits - bit)) - 1;
    leaf = bit / BITMAP_LEAF_BITS;
    words = get_leaf (bm, leaf);
    if (words == NULL) {
      errno = ENOMEM;
      return -1;
    }
    mask = w;
    set_word (bm, leaf, &words[(bit % BITMAP_LEAF_BITS) >> 6], mask);
  }
  return 0;
}

void
bitmap_export (const struct bitmap *bm, uint64_t byte_offset,
               unsigned char *buf, size_t len)
{
  size_t i = 0;

  while (i < len) {
    uint64_t b = byte_offset + i;
    uint64_t leaf = b / BITMAP_LEAF_BYTES;
    size_t in_leaf = b % BITMAP_LEAF_BYTES;
    size_t n = BITMAP_LEAF_BYTES - in_leaf;
    _Atomic uint64_t *words;
    size_t k;

    if (n > len - i)
      n = len - i;
    words = leaf < bm->nleaves ? atomic_load (&bm->leaves[leaf]) : NULL;
    if (words == NULL)
      memset (buf + i, 0, n);
    else {
      /* A word at a time where aligned (persists export whole pages):
       * one load per 8 bytes, little-endian like the file.
       */
      for (k = 0; k < n; ) {
        size_t byte = in_leaf + k;
        uint64_t w = atomic_load (&words[byte >> 3]);
        if ((byte & 7) == 0 && n - k >= 8) {
          unsigned j;
          for (j = 0; j < 8; ++j)
            buf[i + k + j] = (unsigned char) (w >> (j * 8));
          k += 8;
        }
        else {
          buf[i + k] = (unsigned char) (w >> ((byte & 7) * 8));
          k++;
        }
      }
    }
    i += n;
  }
}

int
bitmap_copy (struct bitmap *dst, const struct bitmap *src)
{
  unsigned char buf[BITMAP_LEAF_BYTES];
  uint64_t leaf, nbytes = bitmap_data_bytes (src);

  for (leaf = 0; leaf < src->nleaves; ++leaf) {
    uint64_t off = leaf * BITMAP_LEAF_BYTES;
    size_t len = nbytes - off < BITMAP_LEAF_BYTES ? nbytes - off
      : BITMAP_LEAF_BYTES;
    if (!bitmap_leaf_present (src, leaf))
      continue;
    bitmap_export (src, off, buf, len);
    if (bitmap_import (dst, off, buf, len) == -1)
      return -1;
  }
  return 0;
}

void
bitmap_and (struct bitmap *dst, const struct bitmap *src)
{
  uint64_t leaf, w;

  for (leaf = 0; leaf < dst->nleaves; ++leaf) {
    _Atomic uint64_t *d = atomic_load (&dst->leaves[leaf]);
    _Atomic uint64_t *s = leaf < src->nleaves
      ? atomic_load (&src->leaves[leaf]) : NULL;

    for (w = 0; d && w < BITMAP_LEAF_WORDS; ++w)
      atomic_store (&d[w], s ? atomic_load (&d[w]) & atomic_load (&s[w]) : 0);
  }
}

void
bitmap_clear (struct bitmap *bm)
{
  uint64_t i;

  for (i = 0; i < bm->nleaves; ++i) {
    free ((void *) atomic_load (&bm->leaves[i]));
    atomic_store (&bm->leaves[i], NULL);
  }
  memset ((void *) bm->changed, 0,
          ((bm->nleaves + 63) / 64 + 1) * sizeof *bm->changed);
}

uint64_t
bitmap_memory (const struct bitmap *bm)
{
  uint64_t n = bm->nleaves * sizeof *bm->leaves, i;

  for (i = 0; i < bm->nleaves; ++i)
    if (atomic_load (&bm->leaves[i]))
      n += BITMAP_LEAF_BYTES;
  return n;
}

struct bitmap *
bitmap_new (uint64_t size, unsigned granularity_bits)
{
  struct bitmap *bm = calloc (1, sizeof *bm);

  if (bm == NULL)
    return NULL;
  if (bitmap_init (bm, size, granularity_bits) == -1) {
    int e = errno;
    free (bm);
    errno = e;
    return NULL;
  }
  return bm;
}

void
bitmap_delete (struct bitmap *bm)
{
  if (bm == NULL)
    return;
  bitmap_free (bm);
  free (bm);
}

void
bitmap_flag_range (struct bitmap *bm, uint64_t first, uint64_t last)
{
  uint64_t leaf;

  if (bm->nbits == 0 || first >= bm->nbits)
    return;
  if (last >= bm->nbits)
    last = bm->nbits - 1;
  for (leaf = first / BITMAP_LEAF_BITS; leaf <= last / BITMAP_LEAF_BITS;
       ++leaf)
    if (bitmap_leaf_present (bm, leaf))
      bitmap_set_changed (bm, leaf);
}
