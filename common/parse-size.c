#include <config.h>

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "parse-size.h"

int
dbm_parse_size (const char *what, const char *str, uint64_t *out,
                struct dbm_err *err)
{
  const char *p = str;
  uint64_t v = 0;
  unsigned shift = 0;

  if (*p == '\0')
    return dbm_seterr (err, EINVAL, "%s: empty size", what);
  if (!isdigit ((unsigned char) *p))
    return dbm_seterr (err, EINVAL, "%s: '%s' is not a size (expected a "
                       "number with an optional K, M, G, T, P or E suffix)",
                       what, str);
  while (isdigit ((unsigned char) *p)) {
    unsigned d = *p++ - '0';
    if (v > (UINT64_MAX - d) / 10)
      return dbm_seterr (err, ERANGE, "%s: '%s' is too large", what, str);
    v = v * 10 + d;
  }
  switch (toupper ((unsigned char) *p)) {
  case '\0': break;
  case 'K': shift = 10; p++; break;
  case 'M': shift = 20; p++; break;
  case 'G': shift = 30; p++; break;
  case 'T': shift = 40; p++; break;
  case 'P': shift = 50; p++; break;
  case 'E': shift = 60; p++; break;
  case 'B': break;
  default:
    return dbm_seterr (err, EINVAL, "%s: '%s' has an unknown unit (expected "
                       "K, M, G, T, P or E)", what, str);
  }
  if (*p && strcasecmp (p, "b") != 0 && (shift == 0 || strcasecmp (p, "ib") != 0))
    return dbm_seterr (err, EINVAL, "%s: '%s' has an unknown unit (expected "
                       "K, M, G, T, P or E)", what, str);
  if (shift && v > (UINT64_MAX >> shift))
    return dbm_seterr (err, ERANGE, "%s: '%s' is too large", what, str);
  *out = v << shift;
  return 0;
}

int
dbm_parse_pow2 (const char *what, const char *str, uint64_t min,
                uint64_t max, unsigned *bits, struct dbm_err *err)
{
  uint64_t v = 0;

  if (dbm_parse_size (what, str, &v, err) == -1)
    return -1;
  if (v < min || v > max)
    return dbm_seterr (err, ERANGE, "%s: %" PRIu64 " is outside %" PRIu64
                       "..%" PRIu64, what, v, min, max);
  if (v & (v - 1))
    return dbm_seterr (err, EINVAL, "%s: %" PRIu64 " is not a power of two",
                       what, v);
  *bits = __builtin_ctzll (v);
  return 0;
}
