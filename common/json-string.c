/* JSON strings (see json-string.h). */
#include <config.h>

#include <string.h>

#include "bitmap-name.h"
#include "json-string.h"

/* Quote, backslash and control characters escaped; bytes that are not
 * UTF-8 (a name QEMU or another tool wrote may be any bytes) become
 * U+FFFD, so that the output is always valid JSON.
 */
static void
put_chars (FILE *f, const char *str)
{
  const unsigned char *s = (const unsigned char *) str;
  const unsigned char *end = s + strlen (str);
  size_t n;

  for (; s < end; s += n) {
    n = dbm_utf8_len (s, end);
    if (n == 0) {
      fputs ("\\ufffd", f);
      n = 1;
    }
    else if (*s == '"' || *s == '\\')
      fprintf (f, "\\%c", *s);
    else if (*s < 0x20 || *s == 0x7f)
      fprintf (f, "\\u%04x", *s);
    else
      fwrite (s, 1, n, f);
  }
}

void
json_put_string (FILE *f, const char *s)
{
  json_put_prefixed (f, "", s);
}

void
json_put_prefixed (FILE *f, const char *prefix, const char *s)
{
  fputc ('"', f);
  put_chars (f, prefix);
  put_chars (f, s);
  fputc ('"', f);
}
