/* dirtybitmap serve (see serve.c). */
#ifndef DBM_SERVE_H
#define DBM_SERVE_H

struct serve_opts {
  const char *control;          /* the filter's control socket */
  const char *name;             /* the snapshot (checkpoint) name */
  const char *from;             /* where nbdkit serves: an NBD URI */
  const char *socket;           /* serve on this Unix socket, or */
  const char *port;             /* on this TCP port (at bind) */
  const char *bind;
  const char *qemu_nbd;         /* the program */
};

/* Serve until the snapshot ends; the exit status. */
extern int serve_snapshot (const struct serve_opts *o);

#endif /* DBM_SERVE_H */
