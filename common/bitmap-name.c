/* Bitmap names (see bitmap-name.h). */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap-name.h"
#include "qcow2.h"

size_t
dbm_utf8_len (const unsigned char *s, const unsigned char *end)
{
  uint32_t c;
  size_t n, i;

  if (s >= end)
    return 0;
  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    n = 2, c = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    n = 3, c = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    n = 4, c = s[0] & 0x07;
  else
    return 0;
  if ((size_t) (end - s) < n)
    return 0;
  for (i = 1; i < n; ++i) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = (c << 6) | (s[i] & 0x3f);
  }
  /* Overlong forms, surrogates, beyond U+10FFFF. */
  if ((n == 3 && c < 0x800) || (n == 4 && c < 0x10000) ||
      (c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff)
    return 0;
  return n;
}

/* A control character (C0, DEL, C1) or a blank, at S (N bytes). */
static bool
is_control_or_blank (const unsigned char *s, size_t n)
{
  if (n == 1)
    return s[0] < 0x21 || s[0] == 0x7f;
  /* C1 controls U+0080..U+009F, and U+00A0 (no-break space). */
  return n == 2 && s[0] == 0xc2 && s[1] <= 0xa0;
}

int
dbm_check_name (const char *key, const char *name, struct dbm_err *err)
{
  const unsigned char *s = (const unsigned char *) name;
  const unsigned char *end = s + strlen (name);
  size_t len = end - s, n;

  if (len == 0 || len > BME_MAX_NAME_SIZE)
    return dbm_seterr (err, EINVAL, "%s: a bitmap name must be 1 to %d "
                       "bytes, got %zu", key, BME_MAX_NAME_SIZE, len);
  for (; s < end; s += n) {
    n = dbm_utf8_len (s, end);
    if (n == 0)
      return dbm_seterr (err, EINVAL, "%s: the bitmap name is not valid "
                         "UTF-8 (byte 0x%02x at offset %zu)", key, *s,
                         (size_t) (s - (const unsigned char *) name));
    if (is_control_or_blank (s, n))
      return dbm_seterr (err, EINVAL, "%s: the bitmap name has a blank or "
                         "control character at offset %zu (names are one "
                         "word)", key,
                         (size_t) (s - (const unsigned char *) name));
  }
  return 0;
}

char *
dbm_printable_name (const char *name)
{
  const unsigned char *s = (const unsigned char *) name;
  const unsigned char *end = s + strlen (name);
  char *out = malloc (4 * (end - s) + 1), *p = out;
  size_t n;

  if (out == NULL)
    return NULL;
  for (; s < end; s += n) {
    n = dbm_utf8_len (s, end);
    if (n == 0 || (is_control_or_blank (s, n) && *s != ' ')) {
      p += sprintf (p, "\\x%02x", *s);
      n = 1;
    }
    else {
      memcpy (p, s, n);
      p += n;
    }
  }
  *p = '\0';
  return out;
}
