/* Noticing a bitmap file changed behind our back.
 *
 * While nbdkit runs, the file is ours: only this process writes it, in
 * place or by an atomic rewrite.  Someone may still unlink it, rename
 * another file over it, truncate it or overwrite its header.  Our writes
 * would then go to an inode nobody will read, or into garbage, and a
 * flush would report durability that does not exist.  So persists and
 * flushes first check that the descriptor is still the file at the path,
 * with the size and the fixed header we wrote.  The header's first 104
 * bytes change only at a commit or a qcow2_update, which note them again
 * (other in-place updates touch only flags, the state word and bitmap
 * data).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2.h"

void
qcow2_note_identity (struct qcow2_image *img)
{
  struct stat st;

  img->identity_known = false;
  if (img->fd < 0 || fstat (img->fd, &st) == -1 ||
      pread (img->fd, img->id_header, sizeof img->id_header, 0) !=
      (ssize_t) sizeof img->id_header)
    return;
  img->id_dev = st.st_dev;
  img->id_ino = st.st_ino;
  img->identity_known = true;
}

int
qcow2_check_identity (struct qcow2_image *img, const char *path,
                      struct dbm_err *err)
{
  unsigned char h[QCOW2_MIN_HEADER_LENGTH];
  struct stat fst, pst;
  ssize_t r;

  if (!img->identity_known || img->fd < 0)
    return 0;
  if (fstat (img->fd, &fst) == -1)
    return dbm_seterr (err, errno, "%s: fstat: %m", path);
  if (stat (path, &pst) == -1) {
    if (errno != ENOENT)
      return dbm_seterr (err, EIO, "%s: cannot check the bitmap file: %m",
                         path);
    return dbm_seterr (err, EIO, "%s: the bitmap file was %s while nbdkit "
                       "was using it", path, fst.st_nlink == 0
                       ? "deleted" : "renamed away");
  }
  if (pst.st_dev != img->id_dev || pst.st_ino != img->id_ino)
    return dbm_seterr (err, EIO, "%s: the bitmap file was replaced by "
                       "another file while nbdkit was using it", path);
  if ((uint64_t) fst.st_size != img->file_size)
    return dbm_seterr (err, EIO, "%s: the bitmap file was truncated or "
                       "extended to %jd bytes (nbdkit wrote %" PRIu64 ")",
                       path, (intmax_t) fst.st_size, img->file_size);
  r = pread (img->fd, h, sizeof h, 0);
  if (r == -1)
    return dbm_seterr (err, errno, "%s: read header: %m", path);
  if (r != (ssize_t) sizeof h || memcmp (h, img->id_header, sizeof h) != 0)
    return dbm_seterr (err, EIO, "%s: the bitmap file's header was "
                       "overwritten while nbdkit was using it", path);
  return 0;
}
