/* LD_PRELOAD shim: fail the N-th write-side call on the bitmap file.
 *
 * Environment:
 *   FAULT_PREFIX  path prefix of the files to watch (the bitmap file; its
 *                 temporary files PATH.tmpXXXXXX match too)
 *   FAULT_N       which call fails (1-based); 0 = count only
 *   FAULT_ERRNO   ENOSPC (default) or EIO
 *   FAULT_STICKY  1: every call from the N-th on fails (a full disk)
 *   FAULT_COUNT   file to which the number of calls seen is written at exit
 *   FAULT_DIR     the bitmap file's directory: its descriptors are watched
 *                 too (the directory fsync of an atomic rewrite)
 *
 * Watched calls: write, pwrite, pwrite64, fsync, fdatasync, ftruncate,
 * ftruncate64, fchmod, fchown on descriptors opened (open, openat,
 * mkstemp, mkostemp, ...) on a matching path or on FAULT_DIR; and the
 * path calls open/openat of an existing matching file for writing,
 * mkstemp/mkostemp of a matching template, rename, renameat2 and link
 * to or from a matching path.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAXFD 4096
static atomic_bool watched[MAXFD];
static atomic_long calls;
static long fail_at;
static int fail_errno = ENOSPC;
static bool sticky;
static const char *prefix;
static const char *dir;

static void __attribute__ ((constructor))
init (void)
{
  const char *s;

  prefix = getenv ("FAULT_PREFIX");
  dir = getenv ("FAULT_DIR");
  if ((s = getenv ("FAULT_N")) != NULL)
    fail_at = atol (s);
  if ((s = getenv ("FAULT_ERRNO")) != NULL && strcmp (s, "EIO") == 0)
    fail_errno = EIO;
  sticky = (s = getenv ("FAULT_STICKY")) != NULL && strcmp (s, "1") == 0;
}

static void __attribute__ ((destructor))
fini (void)
{
  const char *f = getenv ("FAULT_COUNT");
  FILE *fp;

  if (f && (fp = fopen (f, "a")) != NULL) {
    fprintf (fp, "%ld\n", atomic_load (&calls));
    fclose (fp);
  }
}

static bool
matches (const char *path)
{
  return prefix && path && strncmp (path, prefix, strlen (prefix)) == 0;
}

static void
track (int fd, const char *path)
{
  if (fd >= 0 && fd < MAXFD)
    atomic_store (&watched[fd], matches (path) ||
                  (dir && path && strcmp (path, dir) == 0));
}

/* One more watched call: true if it must fail (errno set). */
static bool
count_and_fail (void)
{
  long n = atomic_fetch_add (&calls, 1) + 1;

  if (fail_at > 0 && (n == fail_at || (sticky && n > fail_at))) {
    errno = fail_errno;
    return true;
  }
  return false;
}

static bool
inject (int fd)
{
  if (fd < 0 || fd >= MAXFD || !atomic_load (&watched[fd]))
    return false;
  return count_and_fail ();
}

/* A path call on a matching name (the bitmap file or its temporaries). */
static bool
inject_path (const char *a, const char *b)
{
  if (!matches (a) && !matches (b))
    return false;
  return count_and_fail ();
}

/* Opening the bitmap file itself for writing (not creating it). */
static bool
inject_open (const char *path, int flags)
{
  return (flags & O_ACCMODE) != O_RDONLY && !(flags & O_CREAT) &&
    inject_path (path, NULL);
}

#define REAL(ret, name, args) \
  static ret (*real_##name) args; \
  if (!real_##name) real_##name = dlsym (RTLD_NEXT, #name)

int
open (const char *path, int flags, ...)
{
  REAL (int, open, (const char *, int, ...));
  mode_t mode = 0;
  int fd;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap; va_start (ap, flags); mode = va_arg (ap, int); va_end (ap);
  }
  if (inject_open (path, flags)) return -1;
  fd = real_open (path, flags, mode);
  track (fd, path);
  return fd;
}

int
open64 (const char *path, int flags, ...)
{
  REAL (int, open64, (const char *, int, ...));
  mode_t mode = 0;
  int fd;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap; va_start (ap, flags); mode = va_arg (ap, int); va_end (ap);
  }
  if (inject_open (path, flags)) return -1;
  fd = real_open64 (path, flags, mode);
  track (fd, path);
  return fd;
}

int
openat (int dirfd, const char *path, int flags, ...)
{
  REAL (int, openat, (int, const char *, int, ...));
  mode_t mode = 0;
  int fd;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap; va_start (ap, flags); mode = va_arg (ap, int); va_end (ap);
  }
  if (inject_open (path, flags)) return -1;
  fd = real_openat (dirfd, path, flags, mode);
  track (fd, path);
  return fd;
}

int
mkstemp (char *tmpl)
{
  REAL (int, mkstemp, (char *));
  int fd;
  if (inject_path (tmpl, NULL)) return -1;
  fd = real_mkstemp (tmpl);
  track (fd, tmpl);
  return fd;
}

int
mkostemp (char *tmpl, int flags)
{
  REAL (int, mkostemp, (char *, int));
  int fd;
  if (inject_path (tmpl, NULL)) return -1;
  fd = real_mkostemp (tmpl, flags);
  track (fd, tmpl);
  return fd;
}

int
mkostemp64 (char *tmpl, int flags)
{
  REAL (int, mkostemp64, (char *, int));
  int fd;
  if (inject_path (tmpl, NULL)) return -1;
  fd = real_mkostemp64 (tmpl, flags);
  track (fd, tmpl);
  return fd;
}

int
rename (const char *from, const char *to)
{
  REAL (int, rename, (const char *, const char *));
  if (inject_path (from, to)) return -1;
  return real_rename (from, to);
}

int
renameat2 (int fd1, const char *from, int fd2, const char *to, unsigned flags)
{
  REAL (int, renameat2, (int, const char *, int, const char *, unsigned));
  if (inject_path (from, to)) return -1;
  return real_renameat2 (fd1, from, fd2, to, flags);
}

int
link (const char *from, const char *to)
{
  REAL (int, link, (const char *, const char *));
  if (inject_path (from, to)) return -1;
  return real_link (from, to);
}

int
fchmod (int fd, mode_t mode)
{
  REAL (int, fchmod, (int, mode_t));
  if (inject (fd)) return -1;
  return real_fchmod (fd, mode);
}

int
fchown (int fd, uid_t uid, gid_t gid)
{
  REAL (int, fchown, (int, uid_t, gid_t));
  if (inject (fd)) return -1;
  return real_fchown (fd, uid, gid);
}

int
mkstemp64 (char *tmpl)
{
  REAL (int, mkstemp64, (char *));
  int fd = real_mkstemp64 (tmpl);
  track (fd, tmpl);
  return fd;
}

int
close (int fd)
{
  REAL (int, close, (int));
  if (fd >= 0 && fd < MAXFD)
    atomic_store (&watched[fd], false);
  return real_close (fd);
}

ssize_t
write (int fd, const void *buf, size_t n)
{
  REAL (ssize_t, write, (int, const void *, size_t));
  if (inject (fd)) return -1;
  return real_write (fd, buf, n);
}

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  REAL (ssize_t, pwrite, (int, const void *, size_t, off_t));
  if (inject (fd)) return -1;
  return real_pwrite (fd, buf, n, off);
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off_t off)
{
  REAL (ssize_t, pwrite64, (int, const void *, size_t, off_t));
  if (inject (fd)) return -1;
  return real_pwrite64 (fd, buf, n, off);
}

int
fsync (int fd)
{
  REAL (int, fsync, (int));
  if (inject (fd)) return -1;
  return real_fsync (fd);
}

int
fdatasync (int fd)
{
  REAL (int, fdatasync, (int));
  if (inject (fd)) return -1;
  return real_fdatasync (fd);
}

int
ftruncate (int fd, off_t len)
{
  REAL (int, ftruncate, (int, off_t));
  if (inject (fd)) return -1;
  return real_ftruncate (fd, len);
}

int
ftruncate64 (int fd, off_t len)
{
  REAL (int, ftruncate64, (int, off_t));
  if (inject (fd)) return -1;
  return real_ftruncate64 (fd, len);
}
