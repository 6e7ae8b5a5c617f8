/* Replacing a file atomically: write a temporary file beside it, sync it,
 * rename it over the original, sync the directory.
 *
 * The rename is the single commit point.  Before it, a failure leaves the
 * original untouched (the temporary is removed).  After it, the new file
 * is the file, whatever happens next: a failed directory sync is reported
 * (ATOMIC_FILE_COMMITTED_NOT_DURABLE) but never rolled back, and the
 * caller must adopt the new descriptor and retry the directory sync
 * (atomic_file_sync_dir) before it promises durability again.
 *
 * A replaced file keeps its mode, owner and group; a file with several
 * hard links is refused (a rename would split them); a new file gets
 * 0666 less the umask, as open(2) would give it (or 0600, see
 * ATOMIC_FILE_PRIVATE).  Every descriptor is O_CLOEXEC.
 */
#ifndef DBM_ATOMIC_FILE_H
#define DBM_ATOMIC_FILE_H

#include <stdbool.h>

#include "dbm-error.h"

/* Temporary files are PATH.tmpXXXXXX: ATOMIC_FILE_SUFFIX_LEN bytes added. */
#define ATOMIC_FILE_SUFFIX ".tmp"
#define ATOMIC_FILE_SUFFIX_LEN 10

#define ATOMIC_FILE_NOREPLACE 1      /* fail with EEXIST if PATH exists */
/* A new file gets 0600 instead of 0666 less the umask: for a process
 * whose umask says nothing about the user's wishes (nbdkit sets 0022
 * before it loads filters).
 */
#define ATOMIC_FILE_PRIVATE 2

#define ATOMIC_FILE_COMMITTED_NOT_DURABLE 1

struct atomic_file {
  char *path;                   /* the file replaced (symlinks resolved) */
  char *tmp;                    /* the temporary, until the commit */
  int fd;                       /* the temporary's descriptor */
  unsigned flags;
};

/* Create the temporary for PATH.  On success AF->fd is open for writing. */
extern int atomic_file_begin (const char *path, unsigned flags,
                              struct atomic_file *af, struct dbm_err *err);

/* fsync the temporary and rename it over PATH.  Returns -1 (nothing
 * changed, AF released), 0 (committed and durable) or
 * ATOMIC_FILE_COMMITTED_NOT_DURABLE (committed, ERR says why the directory
 * sync failed).  After 0 or 1 the caller owns AF->fd and AF->path; the
 * temporary's name is gone.
 */
extern int atomic_file_commit (struct atomic_file *af, struct dbm_err *err);

/* Give up before the commit: close and remove the temporary. */
extern void atomic_file_abort (struct atomic_file *af);

/* Make PATH's directory entry durable (fsync of its directory). */
extern int atomic_file_sync_dir (const char *path, struct dbm_err *err);

#endif /* DBM_ATOMIC_FILE_H */
