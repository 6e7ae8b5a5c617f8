/* The control socket: a thread multiplexing a few clients with poll(2).
 * A client that misbehaves (never finishes a line, sends too much, goes
 * away mid-reply) loses its own connection and nothing else.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "control.h"

#define MAX_CLIENTS 16
#define MAX_LINE 4096
#define IDLE_SECONDS 60         /* a silent client is dropped after this */

struct client {
  int fd;
  size_t len;
  time_t last;
  char buf[MAX_LINE];
};

static char *sock_path;
static int listen_fd = -1;
static int stop_pipe[2] = { -1, -1 };
static pthread_t thread;
static bool running;
static control_handler handler;
static struct client clients[MAX_CLIENTS];

/* PATH must be free, or a socket nobody answers on (left by a run that
 * was killed); REMOVE_STALE unlinks such a socket.
 */
static int
check_path (const char *path, struct sockaddr_un *addr, bool remove_stale)
{
  struct stat st;
  int fd, r;

  if (strlen (path) >= sizeof addr->sun_path) {
    nbdkit_error ("bitmap-control: %s: path longer than %zu bytes", path,
                  sizeof addr->sun_path - 1);
    return -1;
  }
  memcpy (addr->sun_path, path, strlen (path) + 1);
  if (lstat (path, &st) == -1)
    return 0;
  if (!S_ISSOCK (st.st_mode)) {
    nbdkit_error ("bitmap-control: %s exists and is not a socket", path);
    return -1;
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("bitmap-control: socket: %m");
    return -1;
  }
  r = connect (fd, (struct sockaddr *) addr, sizeof *addr);
  close (fd);
  if (r == 0) {
    nbdkit_error ("bitmap-control: %s: another process is serving this "
                  "socket", path);
    return -1;
  }
  if (remove_stale && unlink (path) == -1) {
    nbdkit_error ("bitmap-control: %s: remove stale socket: %m", path);
    return -1;
  }
  return 0;
}

int
control_check (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };

  return check_path (path, &addr, false);
}

int
control_open (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  mode_t old_mask;
  int fd, r;

  if (check_path (path, &addr, true) == -1)
    return -1;
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    nbdkit_error ("bitmap-control: socket: %m");
    return -1;
  }
  /* Created 0600 from the start: no window where others may connect. */
  old_mask = umask (0177);
  r = bind (fd, (struct sockaddr *) &addr, sizeof addr);
  umask (old_mask);
  if (r == -1 || listen (fd, MAX_CLIENTS) == -1) {
    nbdkit_error ("bitmap-control: %s: %m", path);
    close (fd);
    return -1;
  }
  sock_path = strdup (path);
  if (sock_path == NULL) {
    nbdkit_error ("bitmap-control: strdup: %m");
    close (fd);
    unlink (path);
    return -1;
  }
  listen_fd = fd;
  return 0;
}

/* Replies are short; a client that does not read them within the send
 * timeout is dropped.
 */
static bool
reply (struct client *c, const char *msg)
{
  size_t len = strlen (msg), off = 0;

  while (off <= len) {
    const char *p = off < len ? msg + off : "\n";
    size_t n = off < len ? len - off : 1;
    ssize_t r = send (c->fd, p, n, MSG_NOSIGNAL);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
        if (poll (&pfd, 1, 5000) == 1)
          continue;
      }
      return false;
    }
    off += r;
  }
  return true;
}

static void
drop (struct client *c)
{
  close (c->fd);
  c->fd = -1;
  c->len = 0;
}

/* Read what is there; run each complete line. */
static void
serve (struct client *c)
{
  ssize_t r = recv (c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
  char *nl;

  if (r == 0 || (r == -1 && errno != EINTR && errno != EAGAIN)) {
    drop (c);
    return;
  }
  if (r < 0)
    return;
  c->len += r;
  c->last = time (NULL);
  while ((nl = memchr (c->buf, '\n', c->len)) != NULL) {
    char *out;
    bool ok;
    bool nul = memchr (c->buf, '\0', nl - c->buf) != NULL;

    *nl = '\0';
    if (nl > c->buf && nl[-1] == '\r')
      nl[-1] = '\0';
    out = nul ? strdup ("error: the line contains a NUL byte")
      : handler (c->buf);
    ok = reply (c, out ? out : "error: out of memory");
    free (out);
    if (!ok) {
      drop (c);
      return;
    }
    c->len -= nl + 1 - c->buf;
    memmove (c->buf, nl + 1, c->len);
  }
  if (c->len == sizeof c->buf) {
    reply (c, "error: line longer than 4095 bytes");
    drop (c);
  }
}

static void
accept_client (void)
{
  int fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  size_t i;

  if (fd == -1)
    return;
  for (i = 0; i < MAX_CLIENTS; ++i)
    if (clients[i].fd == -1) {
      clients[i].fd = fd;
      clients[i].len = 0;
      clients[i].last = time (NULL);
      return;
    }
  /* Full: say so rather than leave the client hanging. */
  if (send (fd, "error: too many control clients\n", 32, MSG_NOSIGNAL) == -1) {
    /* it is going anyway */
  }
  close (fd);
}

static void *
control_loop (void *arg)
{
  for (;;) {
    struct pollfd pfds[MAX_CLIENTS + 2];
    size_t map[MAX_CLIENTS + 2], n = 2, i;
    time_t now;

    pfds[0] = (struct pollfd) { .fd = stop_pipe[0], .events = POLLIN };
    pfds[1] = (struct pollfd) { .fd = listen_fd, .events = POLLIN };
    for (i = 0; i < MAX_CLIENTS; ++i)
      if (clients[i].fd >= 0) {
        pfds[n] = (struct pollfd) { .fd = clients[i].fd, .events = POLLIN };
        map[n++] = i;
      }
    if (poll (pfds, n, 1000) == -1 && errno != EINTR)
      break;
    if (pfds[0].revents)
      break;
    for (i = 2; i < n; ++i)
      if (pfds[i].revents)
        serve (&clients[map[i]]);
    if (pfds[1].revents & POLLIN)
      accept_client ();
    now = time (NULL);
    for (i = 0; i < MAX_CLIENTS; ++i)
      if (clients[i].fd >= 0 && now - clients[i].last > IDLE_SECONDS)
        drop (&clients[i]);
  }
  return NULL;
}

int
control_start (control_handler h)
{
  size_t i;
  int r;

  if (listen_fd == -1)
    return 0;
  handler = h;
  for (i = 0; i < MAX_CLIENTS; ++i)
    clients[i].fd = -1;
  if (pipe2 (stop_pipe, O_CLOEXEC) == -1) {
    nbdkit_error ("bitmap-control: pipe: %m");
    return -1;
  }
  r = pthread_create (&thread, NULL, control_loop, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("bitmap-control: create thread: %m");
    return -1;
  }
  running = true;
  return 0;
}

void
control_stop (bool remove)
{
  size_t i;

  if (running) {
    while (write (stop_pipe[1], "s", 1) == -1 && errno == EINTR)
      ;
    pthread_join (thread, NULL);
    running = false;
    for (i = 0; i < MAX_CLIENTS; ++i)
      if (clients[i].fd >= 0)
        drop (&clients[i]);
  }
  if (listen_fd >= 0) {
    close (listen_fd);
    listen_fd = -1;
    if (remove)
      unlink (sock_path);
  }
  free (sock_path);
  sock_path = NULL;
}
