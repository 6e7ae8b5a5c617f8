/* Replacing a file atomically (see atomic-file.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "cleanup.h"

/* The process umask, read without changing it (umask(2) would race with
 * other threads creating files).  0022 if /proc is not mounted.
 */
static mode_t
current_umask (void)
{
  FILE *f = fopen ("/proc/self/status", "re");
  char line[256];
  unsigned m;
  mode_t r = 022;

  if (f == NULL)
    return r;
  while (fgets (line, sizeof line, f))
    if (sscanf (line, "Umask: %o", &m) == 1) {
      r = m & 0777;
      break;
    }
  fclose (f);
  return r;
}

static void
release (struct atomic_file *af)
{
  free (af->path);
  free (af->tmp);
  af->path = af->tmp = NULL;
  af->fd = -1;
}

int
atomic_file_begin (const char *user_path, unsigned flags,
                   struct atomic_file *af, struct dbm_err *err)
{
  struct stat st;
  bool exists;
  mode_t mode;

  af->path = af->tmp = NULL;
  af->fd = -1;
  af->flags = flags;
  /* rename() replaces a symlink itself: write to the link's target. */
  if (lstat (user_path, &st) == 0 && S_ISLNK (st.st_mode)) {
    af->path = realpath (user_path, NULL);
    if (af->path == NULL)
      return dbm_seterr (err, errno, "%s: symbolic link to a missing file",
                         user_path);
  }
  else
    af->path = strdup (user_path);
  if (af->path == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");

  exists = stat (af->path, &st) == 0;
  if (!exists && errno != ENOENT) {
    dbm_seterr (err, errno, "%s: %m", af->path);
    goto fail;
  }
  if (exists && (flags & ATOMIC_FILE_NOREPLACE)) {
    dbm_seterr (err, EEXIST, "%s: file exists, not overwriting", af->path);
    goto fail;
  }
  if (exists && st.st_nlink > 1) {
    dbm_seterr (err, EMLINK, "%s: the file has %ju hard links; rewriting it "
                "(a new file renamed over it) would split them: keep one "
                "link, or use a symbolic link", af->path,
                (uintmax_t) st.st_nlink);
    goto fail;
  }
  if (exists)
    mode = st.st_mode & 07777;
  else if (flags & ATOMIC_FILE_PRIVATE)
    mode = 0600;
  else
    mode = 0666 & ~current_umask ();

  if (asprintf (&af->tmp, "%s" ATOMIC_FILE_SUFFIX "XXXXXX", af->path) == -1) {
    af->tmp = NULL;
    dbm_seterr (err, ENOMEM, "out of memory");
    goto fail;
  }
  af->fd = mkostemp (af->tmp, O_CLOEXEC);
  if (af->fd == -1) {
    dbm_seterr (err, errno, "%s: create temporary file: %m", af->tmp);
    goto fail;
  }
  /* Owner first: chown may clear set-id bits that the mode then restores. */
  if (exists && (st.st_uid != geteuid () || st.st_gid != getegid ()) &&
      fchown (af->fd, st.st_uid, st.st_gid) == -1) {
    dbm_seterr (err, errno, "%s: cannot give the rewritten file the owner "
                "%ju:%ju of the original: %m", af->path,
                (uintmax_t) st.st_uid, (uintmax_t) st.st_gid);
    atomic_file_abort (af);
    return -1;
  }
  if (fchmod (af->fd, mode) == -1) {
    dbm_seterr (err, errno, "%s: chmod %o: %m", af->tmp, (unsigned) mode);
    atomic_file_abort (af);
    return -1;
  }
  return 0;

 fail:
  release (af);
  return -1;
}

void
atomic_file_abort (struct atomic_file *af)
{
  if (af->fd >= 0)
    close (af->fd);
  if (af->tmp)
    unlink (af->tmp);
  release (af);
}

int
atomic_file_sync_dir (const char *path, struct dbm_err *err)
{
  CLEANUP_FREE char *copy = strdup (path);
  const char *dir;
  int dfd;

  if (copy == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  dir = dirname (copy);
  dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd == -1)
    return dbm_seterr (err, errno, "%s: open directory to sync it: %m", dir);
  if (fsync (dfd) == -1) {
    dbm_seterr (err, errno, "%s: fsync directory: %m", dir);
    close (dfd);
    return -1;
  }
  close (dfd);
  return 0;
}

/* Rename without replacing: renameat2 where the filesystem has it, else
 * link + unlink (also atomic: link fails if the name exists).
 */
static int
rename_noreplace (const char *from, const char *to)
{
  if (renameat2 (AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
  if (link (from, to) == -1)
    return -1;
  unlink (from);
  return 0;
}

int
atomic_file_commit (struct atomic_file *af, struct dbm_err *err)
{
  int r;

  if (fsync (af->fd) == -1) {
    dbm_seterr (err, errno, "%s: fsync: %m", af->tmp);
    atomic_file_abort (af);
    return -1;
  }
  r = (af->flags & ATOMIC_FILE_NOREPLACE) ? rename_noreplace (af->tmp, af->path)
    : rename (af->tmp, af->path);
  if (r == -1) {
    if (errno == EEXIST)
      dbm_seterr (err, errno, "%s: file exists, not overwriting", af->path);
    else
      dbm_seterr (err, errno, "rename %s to %s: %m", af->tmp, af->path);
    atomic_file_abort (af);
    return -1;
  }
  /* The commit point is behind us: from here on, only report. */
  free (af->tmp);
  af->tmp = NULL;
  if (atomic_file_sync_dir (af->path, err) == -1)
    return ATOMIC_FILE_COMMITTED_NOT_DURABLE;
  return 0;
}
