/* Proves the sparse bitmap marks exactly the granules a range touches,
 * never a bit past the disk, finds runs correctly, round-trips the qcow2
 * bit order, and loses nothing under concurrent marking.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "bitmap.h"
#include "test-unit.h"

static void
test_basic (void)
{
  struct bitmap bm;
  unsigned char buf[16];

  CHECK (bitmap_init (&bm, 10 * 65536 + 1000, 16) == 0);
  CHECK_EQ (bm.nbits, 11);
  CHECK_EQ (bitmap_mark (&bm, 65535, 2), 1);      /* granules 0 and 1 */
  CHECK (bitmap_test (&bm, 0) && bitmap_test (&bm, 1) && !bitmap_test (&bm, 2));
  CHECK_EQ (bitmap_mark (&bm, 0, 1), 0);          /* already set */
  CHECK_EQ (bitmap_mark (&bm, 10 * 65536, 1 << 30), 1); /* clipped */
  CHECK (bitmap_test (&bm, 10));
  CHECK (!bitmap_test (&bm, 11));
  CHECK_EQ (bitmap_count (&bm), 3);
  CHECK_EQ (bitmap_find (&bm, 0, false), 2);
  CHECK_EQ (bitmap_find (&bm, 2, true), 10);
  CHECK_EQ (bitmap_find (&bm, 11, true), 11);     /* none: nbits */
  bitmap_export (&bm, 0, buf, 2);
  CHECK_EQ (buf[0], 0x03);                        /* LSB first */
  CHECK_EQ (buf[1], 0x04);                        /* bit 10 */
  CHECK_EQ (bitmap_mark (&bm, 0, 0), 0);
  bitmap_free (&bm);
}

static void
test_import_and_leaves (void)
{
  struct bitmap bm;
  unsigned char in[3] = { 0x80, 0x00, 0xff }, out[3];
  uint64_t big = UINT64_C (1) << 40;              /* 1 TiB at 512 B */

  CHECK (bitmap_init (&bm, big, 9) == 0);
  CHECK_EQ (bitmap_memory (&bm), bm.nleaves * sizeof (void *));
  CHECK (bitmap_import (&bm, 5000, in, 3) == 0);
  bitmap_export (&bm, 5000, out, 3);
  CHECK (memcmp (in, out, 3) == 0);
  CHECK_EQ (bitmap_count (&bm), 9);
  CHECK (bitmap_leaf_present (&bm, 5000 / BITMAP_LEAF_BYTES));
  CHECK (!bitmap_leaf_present (&bm, 0));
  CHECK (bitmap_take_changed (&bm, 5000 / BITMAP_LEAF_BYTES));
  CHECK (!bitmap_take_changed (&bm, 5000 / BITMAP_LEAF_BYTES));
  /* One leaf allocated for a mark in a 1 TiB bitmap. */
  CHECK_EQ (bitmap_memory (&bm), bm.nleaves * sizeof (void *) + BITMAP_LEAF_BYTES);
  bitmap_clear (&bm);
  CHECK_EQ (bitmap_count (&bm), 0);
  /* Whole-disk set stops exactly at nbits. */
  CHECK (bitmap_set_bits (&bm, 0, UINT64_MAX) == 1);
  CHECK_EQ (bitmap_count (&bm), bm.nbits);
  bitmap_free (&bm);
}

/* Against a plain byte-per-granule reference. */
#define NG 100000
static struct bitmap shared;

static void *
marker (void *arg)
{
  unsigned seed = (uintptr_t) arg;
  int i;

  for (i = 0; i < 20000; ++i) {
    uint64_t off = rand_r (&seed) % ((uint64_t) NG * 4096);
    uint64_t len = 1 + rand_r (&seed) % 20000;
    bitmap_mark (&shared, off, len);
  }
  return NULL;
}

static void
test_concurrent (void)
{
  pthread_t th[4];
  static unsigned char ref[NG];
  uint64_t i;
  unsigned t;

  CHECK (bitmap_init (&shared, (uint64_t) NG * 4096, 12) == 0);
  for (t = 0; t < 4; ++t)
    pthread_create (&th[t], NULL, marker, (void *) (uintptr_t) (t + 1));
  for (t = 0; t < 4; ++t)
    pthread_join (th[t], NULL);
  /* Replay serially into the reference. */
  for (t = 0; t < 4; ++t) {
    unsigned seed = t + 1;
    int k;
    for (k = 0; k < 20000; ++k) {
      uint64_t off = rand_r (&seed) % ((uint64_t) NG * 4096);
      uint64_t len = 1 + rand_r (&seed) % 20000;
      uint64_t g, last = (off + len - 1) >> 12;
      if (last >= NG)
        last = NG - 1;
      for (g = off >> 12; g <= last; ++g)
        ref[g] = 1;
    }
  }
  for (i = 0; i < NG; ++i)
    if (bitmap_test (&shared, i) != ref[i]) {
      CHECK (!"concurrent marking differs from the serial reference");
      break;
    }
  bitmap_free (&shared);
}

int
main (void)
{
  test_basic ();
  test_import_and_leaves ();
  test_concurrent ();
  TEST_DONE ();
}
