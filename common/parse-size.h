#ifndef DBM_PARSE_SIZE_H
#define DBM_PARSE_SIZE_H

#include <stdint.h>

#include "dbm-error.h"

/* Parse "1048576", "64K", "1M", "2G", "256T", "1P" (binary units, an
 * optional trailing "B" or "iB").  WHAT names the option in errors.
 */
extern int dbm_parse_size (const char *what, const char *str, uint64_t *out,
                           struct dbm_err *err);

/* A size that must be a power of two: returns log2 in *bits. */
extern int dbm_parse_pow2 (const char *what, const char *str,
                           uint64_t min, uint64_t max, unsigned *bits,
                           struct dbm_err *err);

#endif
