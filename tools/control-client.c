#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "control-client.h"

bool
control_is_socket (const char *path)
{
  struct stat st;

  return stat (path, &st) == 0 && S_ISSOCK (st.st_mode);
}

int
control_request (const char *path, const char *line, char **reply,
                 struct dbm_err *err)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  /* A checkpoint on a huge, very dirty export rewrites the file: allow
   * minutes, but never hang forever on a wedged server.
   */
  struct timeval tv = { .tv_sec = 600 };
  size_t len = 0, cap = 256;
  char *buf;
  int fd;

  *reply = NULL;
  if (strlen (path) >= sizeof addr.sun_path)
    return dbm_seterr (err, ENAMETOOLONG, "%s: socket path too long", path);
  memcpy (addr.sun_path, path, strlen (path) + 1);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return dbm_seterr (err, errno, "socket: %m");
  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect (fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    dbm_seterr (err, errno, "%s: connect: %m (is nbdkit running with "
                "bitmap-control=%s?)", path, path);
    close (fd);
    return -1;
  }
  if (send (fd, line, strlen (line), MSG_NOSIGNAL) == -1 ||
      send (fd, "\n", 1, MSG_NOSIGNAL) == -1) {
    dbm_seterr (err, errno, "%s: send: %m", path);
    close (fd);
    return -1;
  }
  buf = malloc (cap);
  while (buf) {
    ssize_t r;
    char *nl;

    if (len + 1 >= cap) {
      char *nb = realloc (buf, cap * 2);
      if (nb == NULL)
        break;
      buf = nb;
      cap *= 2;
    }
    r = recv (fd, buf + len, cap - len - 1, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      dbm_seterr (err, r == 0 ? EPIPE : errno, "%s: %s", path,
                  r == 0 ? "the server closed the connection without a reply"
                  : strerror (errno));
      free (buf);
      close (fd);
      return -1;
    }
    len += r;
    buf[len] = '\0';
    nl = strchr (buf, '\n');
    if (nl) {
      *nl = '\0';
      close (fd);
      *reply = buf;
      return 0;
    }
  }
  free (buf);
  close (fd);
  return dbm_seterr (err, ENOMEM, "out of memory");
}
