/* libFuzzer target: the bitmap-file parser and validator, both layouts.
 * The input is written to a memfd and opened by path like any file; a
 * file that opens is then walked (counts, extents) and closed.  Any crash,
 * leak, hang or out-of-bounds access is a bug: the file is untrusted.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"

static int fd = -1;
static char path[64];

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct qcow2_image *img;
  struct dbm_err err;
  uint32_t i;
  unsigned flags;

  if (fd == -1) {
    fd = memfd_create ("fuzz-qcow2", 0);
    if (fd == -1)
      abort ();
    snprintf (path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate (fd, 0) == -1 || pwrite (fd, data, size, 0) != (ssize_t) size)
    abort ();
  for (flags = 0; flags <= QCOW2_OPEN_LOAD_IN_USE; flags += QCOW2_OPEN_LOAD_IN_USE) {
    if (qcow2_open (path, flags, &img, &err) == -1)
      continue;
    for (i = 0; i < img->nb_bitmaps; ++i) {
      const struct bitmap *bm = img->bitmaps[i].bits;
      uint64_t bit = bitmap_find (bm, 0, true);
      (void) bitmap_count (bm);
      if (bit < bm->nbits)
        (void) bitmap_find (bm, bit, false);
    }
    qcow2_close (img);
  }
  return 0;
}
