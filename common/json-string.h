/* JSON strings for the status lines: one encoder for every name. */
#ifndef DBM_JSON_STRING_H
#define DBM_JSON_STRING_H

#include <stdio.h>

/* S as a JSON string: quote, backslash and control characters escaped,
 * bytes that are not UTF-8 as U+FFFD: always valid JSON.
 */
extern void json_put_string (FILE *f, const char *s);

/* PREFIX followed by S, as one JSON string. */
extern void json_put_prefixed (FILE *f, const char *prefix, const char *s);

#endif /* DBM_JSON_STRING_H */
