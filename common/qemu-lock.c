#include <config.h>

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "qemu-lock.h"

#define PERM_BASE 100
#define SHARED_BASE 200
#define PERM_CONSISTENT_READ 0
#define PERM_WRITE 1
#define PERM_RESIZE 3

static int
ofd (int fd, int cmd, short type, off_t byte, struct flock *out)
{
  struct flock fl;

  memset (&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (fcntl (fd, cmd, &fl) == -1)
    return -1;
  if (out)
    *out = fl;
  return 0;
}

int
qemu_lock_write (int fd, const char *path, struct dbm_err *err)
{
  static const int held[] = { PERM_BASE + PERM_CONSISTENT_READ,
    PERM_BASE + PERM_WRITE, PERM_BASE + PERM_RESIZE,
    SHARED_BASE + PERM_WRITE, SHARED_BASE + PERM_RESIZE };
  /* What a writer must find unlocked: nobody forbids what we hold (200+i)
   * and nobody holds what we refuse to share (100+i).
   */
  static const int probe[] = { SHARED_BASE + PERM_CONSISTENT_READ,
    SHARED_BASE + PERM_WRITE, SHARED_BASE + PERM_RESIZE,
    PERM_BASE + PERM_WRITE, PERM_BASE + PERM_RESIZE };
  size_t i;

  for (i = 0; i < sizeof held / sizeof held[0]; ++i)
    if (ofd (fd, F_OFD_SETLK, F_RDLCK, held[i], NULL) == -1) {
      if (errno == EAGAIN || errno == EACCES)
        return dbm_seterr (err, EBUSY, "%s: file is locked by another "
                           "process (qemu, qemu-img or another nbdkit); "
                           "is another process using it?", path);
      return dbm_seterr (err, errno, "%s: lock byte %d: %m", path, held[i]);
    }
  for (i = 0; i < sizeof probe / sizeof probe[0]; ++i) {
    struct flock fl;
    if (ofd (fd, F_OFD_GETLK, F_WRLCK, probe[i], &fl) == -1)
      return dbm_seterr (err, errno, "%s: probe lock byte %d: %m", path,
                         probe[i]);
    if (fl.l_type != F_UNLCK)
      return dbm_seterr (err, EBUSY, "%s: file is locked by another process "
                         "(byte %d held: qemu, qemu-img or another nbdkit); "
                         "is another process using it?", path, probe[i]);
  }
  return 0;
}

bool
qemu_lock_writer_present (int fd)
{
  struct flock fl;

  return ofd (fd, F_OFD_GETLK, F_WRLCK, PERM_BASE + PERM_WRITE, &fl) == 0 &&
    fl.l_type != F_UNLCK;
}

int
qemu_lock_new_file (int fd, struct dbm_err *err)
{
  return qemu_lock_write (fd, "new bitmap file", err);
}
