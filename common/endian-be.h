/* qcow2 metadata is big-endian, read from untrusted byte buffers, so use
 * byte-wise loads that never assume alignment.
 */
#ifndef DBM_ENDIAN_BE_H
#define DBM_ENDIAN_BE_H

#include <stdint.h>

static inline uint16_t
get_be16 (const unsigned char *p)
{
  return (uint16_t) (p[0] << 8 | p[1]);
}

static inline uint32_t
get_be32 (const unsigned char *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
    (uint32_t) p[2] << 8 | p[3];
}

static inline uint64_t
get_be64 (const unsigned char *p)
{
  return (uint64_t) get_be32 (p) << 32 | get_be32 (p + 4);
}

static inline void
put_be16 (unsigned char *p, uint16_t v)
{
  p[0] = v >> 8; p[1] = v;
}

static inline void
put_be32 (unsigned char *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static inline void
put_be64 (unsigned char *p, uint64_t v)
{
  put_be32 (p, v >> 32);
  put_be32 (p + 4, v);
}

#endif /* DBM_ENDIAN_BE_H */
