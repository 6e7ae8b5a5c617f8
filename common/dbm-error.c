#include <config.h>

#include <stdarg.h>
#include <stdio.h>

#include "dbm-error.h"

/* Formatting into the caller's buffer keeps errors allocation-free, so an
 * out-of-memory condition can still be reported.
 */
int
dbm_seterr (struct dbm_err *err, int errnum, const char *fmt, ...)
{
  if (err != NULL) {
    va_list ap;

    err->errnum = errnum;
    va_start (ap, fmt);
    vsnprintf (err->msg, sizeof err->msg, fmt, ap);
    va_end (ap);
  }
  return -1;
}
