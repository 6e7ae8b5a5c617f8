/* Taking part in QEMU's image locking (block/file-posix.c): one-byte OFD
 * read locks at 100+perm for permissions held and 200+perm for permissions
 * not shared.  Holding them makes qemu-img/qemu-io/qemu-nbd refuse to open
 * the file (except with -U), and lets us detect a QEMU user.
 */
#ifndef DBM_QEMU_LOCK_H
#define DBM_QEMU_LOCK_H

#include <stdbool.h>

#include "dbm-error.h"

/* Lock FD as an exclusive writer (like qemu-io read-write): bytes 100, 101,
 * 103, 201, 203.  Fails, naming PATH, if another process holds conflicting
 * locks.
 */
extern int qemu_lock_write (int fd, const char *path, struct dbm_err *err);

/* Does another process hold the write permission (a running nbdkit with
 * this filter, or QEMU writing)?  Takes no lock.
 */
extern bool qemu_lock_writer_present (int fd);

/* qemu_lock_write for a new file not yet at its path (the temporary file
 * of a rewrite), in the shape qcow2_commit's lock callback takes.
 */
extern int qemu_lock_new_file (int fd, struct dbm_err *err);

#endif
