/* One rule for the bitmap names we create, wherever they come from
 * (bitmap-name=, checkpoint on the control socket, the CLI), and safe
 * ways to show any name (files written by others may hold any bytes).
 */
#ifndef DBM_BITMAP_NAME_H
#define DBM_BITMAP_NAME_H

#include <stdbool.h>
#include <stddef.h>

#include "dbm-error.h"

/* Length of the valid UTF-8 sequence at S (up to END), or 0. */
extern size_t dbm_utf8_len (const unsigned char *s, const unsigned char *end);

/* A name we may create: 1 to 1023 bytes of valid UTF-8 without control
 * characters or blanks (it travels as one word of a control line).
 * KEY names the parameter or command in the message.
 */
extern int dbm_check_name (const char *key, const char *name,
                           struct dbm_err *err);

/* NAME for a terminal or a log line: control characters, blanks other
 * than the space, and bytes that are not UTF-8 as \xNN (malloc'd; NULL
 * if out of memory).
 */
extern char *dbm_printable_name (const char *name);

#endif /* DBM_BITMAP_NAME_H */
