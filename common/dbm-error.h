/* Errors as values: common/ never prints or exits.  A failing function
 * fills a struct dbm_err with one line naming the file, field, offset and
 * value, and returns -1 (or NULL).  The filter turns it into nbdkit_error,
 * the CLI prints it.
 */
#ifndef DBM_ERROR_H
#define DBM_ERROR_H

#include <errno.h>

#define DBM_ERR_MAX 1024

struct dbm_err {
  int errnum;                   /* errno-style cause; EINVAL for bad data */
  char msg[DBM_ERR_MAX];
};

/* Set *err (if err is not NULL) and return -1. */
extern int dbm_seterr (struct dbm_err *err, int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

#endif /* DBM_ERROR_H */
