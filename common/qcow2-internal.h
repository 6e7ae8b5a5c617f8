/* Helpers shared by the qcow2 source files, not part of the API. */
#ifndef DBM_QCOW2_INTERNAL_H
#define DBM_QCOW2_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

/* pread until LEN bytes or EOF; bytes past EOF read as zero. */
extern ssize_t qcow2_pread_full (int fd, void *buf, size_t len, uint64_t off);

/* pwrite all of BUF. */
extern int qcow2_pwrite_full (int fd, const void *buf, size_t len,
                              uint64_t off);

#endif
