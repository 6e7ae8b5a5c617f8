/* Helpers shared by the qcow2 source files, not part of the API. */
#ifndef DBM_QCOW2_INTERNAL_H
#define DBM_QCOW2_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

#include "qcow2.h"

/* pread until LEN bytes or EOF; bytes past EOF read as zero. */
extern ssize_t qcow2_pread_full (int fd, void *buf, size_t len, uint64_t off);

/* pwrite all of BUF. */
extern int qcow2_pwrite_full (int fd, const void *buf, size_t len,
                              uint64_t off);

static inline uint64_t
qcow2_div_up (uint64_t a, uint64_t b)
{
  return a / b + (a % b != 0);
}

/* Bytes of bitmap directory entry B takes (padded to 8). */
extern uint64_t qcow2_entry_size (const struct qcow2_image *img,
                                  const struct qcow2_bitmap *b);

/* Refcount table clusters and blocks for a file of N clusters followed
 * by them (qcow2-write.c).
 */
extern void qcow2_refcount_fit (const struct qcow2_image *img, uint64_t n,
                                uint64_t *rt, uint64_t *nblocks);

/* Pieces of a file the model describes, written to FD (qcow2-write.c):
 * the header and its extensions (one write of at most 176 bytes), the
 * directory at the model's offset (setting each dir_entry_offset), and
 * bitmap B's table (every entry allocated, data contiguous from
 * DATA_OFFSET) and its non-empty data.
 */
extern int qcow2_put_header (struct qcow2_image *img, int fd,
                             struct dbm_err *err);
extern int qcow2_put_directory (struct qcow2_image *img, int fd,
                                struct dbm_err *err);
extern int qcow2_put_bitmap (struct qcow2_image *img, int fd,
                             struct qcow2_bitmap *b, uint64_t data_offset,
                             struct dbm_err *err);

#endif
