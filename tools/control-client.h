/* The CLI's side of the filter's control socket (bitmap-control=PATH). */
#ifndef DBM_CONTROL_CLIENT_H
#define DBM_CONTROL_CLIENT_H

#include <stdbool.h>

#include "dbm-error.h"

/* True if PATH is a Unix socket (then the CLI talks to a running filter). */
extern bool control_is_socket (const char *path);

/* Send one command line to the socket at PATH and read one reply line
 * into *REPLY (malloc'd, without the newline).  -1 with ERR set if the
 * socket cannot be reached or hangs up; a reply "error: ..." is not a
 * failure here.
 */
extern int control_request (const char *path, const char *line,
                            char **reply, struct dbm_err *err);

#endif /* DBM_CONTROL_CLIENT_H */
