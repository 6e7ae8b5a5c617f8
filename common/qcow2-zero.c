/* Zero maps in the file: naming and recognition (qcow2.h). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

char *
qcow2_zero_map_name (const char *name)
{
  size_t n = strlen (name), k = strlen (QCOW2_ZERO_SUFFIX);
  char *r;

  if (n + k > BME_MAX_NAME_SIZE || (r = malloc (n + k + 1)) == NULL)
    return NULL;
  memcpy (r, name, n);
  memcpy (r + n, QCOW2_ZERO_SUFFIX, k + 1);
  return r;
}

bool
qcow2_zero_map_shaped (const char *name)
{
  size_t n = strlen (name), k = strlen (QCOW2_ZERO_SUFFIX);

  return n > k && strcmp (name + n - k, QCOW2_ZERO_SUFFIX) == 0;
}

int
qcow2_zero_map_of (const struct qcow2_image *img, int idx)
{
  const struct qcow2_bitmap *b = &img->bitmaps[idx], *z;
  char *name;
  int i;

  if (img->layout != QCOW2_LAYOUT_QEMU ||
      !(img->autoclear_features & QCOW2_AUTOCLEAR_DBM_ZERO) ||
      (b->flags & (BME_FLAG_AUTO | BME_FLAG_IN_USE)) ||
      qcow2_zero_map_shaped (b->name) ||
      (name = qcow2_zero_map_name (b->name)) == NULL)
    return -1;
  i = qcow2_find_bitmap (img, name);
  free (name);
  if (i < 0)
    return -1;
  z = &img->bitmaps[i];
  if (z->inconsistent || (z->flags & (BME_FLAG_AUTO | BME_FLAG_IN_USE)) ||
      z->granularity_bits != b->granularity_bits || z->size != b->size)
    return -1;
  return i;
}

bool
qcow2_is_zero_map (const struct qcow2_image *img, int idx)
{
  const char *name = img->bitmaps[idx].name;
  size_t n = strlen (name) - strlen (QCOW2_ZERO_SUFFIX);
  char *base;
  int b;

  if (!qcow2_zero_map_shaped (name) || (base = strndup (name, n)) == NULL)
    return false;
  b = qcow2_find_bitmap (img, base);
  free (base);
  return b >= 0 && qcow2_zero_map_of (img, b) == idx;
}

int
qcow2_drop_zero_map (struct qcow2_image *img, int idx)
{
  int z = qcow2_zero_map_of (img, idx);

  if (z < 0)
    return idx;
  qcow2_remove_bitmap (img, z);
  return z < idx ? idx - 1 : idx;
}
