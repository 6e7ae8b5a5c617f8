/* JSON strings (see json-string.h). */
#include <config.h>

#include "json-string.h"

static void
put_chars (FILE *f, const char *s)
{
  for (; *s; ++s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf (f, "\\%c", c);
    else if (c < 0x20)
      fprintf (f, "\\u%04x", c);
    else
      fputc (c, f);
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
