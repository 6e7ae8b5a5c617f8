/* The control socket (bitmap-control=PATH): a Unix socket speaking one
 * command per line, one reply per line.  This file knows sockets and
 * lines; what a command does is the caller's HANDLER.
 */
#ifndef DBM_CONTROL_H
#define DBM_CONTROL_H

#include <stdbool.h>

/* Returns the reply (malloc'd, no newline), or NULL for "out of memory". */
typedef char *(*control_handler) (const char *line);

/* At start (get_ready): refuse PATH if it exists and is not a stale
 * socket, creating nothing, so that a start failing later leaves no
 * socket behind.  0, or -1 after nbdkit_error.
 */
extern int control_check (const char *path);

/* Once serving (after_fork): check again, remove a stale socket, bind and
 * listen (mode 0600).  0, or -1 after nbdkit_error.
 */
extern int control_open (const char *path);

/* After fork: serve it from a thread. */
extern int control_start (control_handler handler);

/* Stop the thread (if any) and close the socket; REMOVE unlinks it too
 * (not in a process that never served it: nbdkit's parent before fork).
 * Idempotent.
 */
extern void control_stop (bool remove);

#endif /* DBM_CONTROL_H */
