/* The one-line report of a start after an unclean stop (see
 * restart-report.h).
 */
#include <config.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap-name.h"
#include "restart-report.h"

void
restart_report_begin (struct restart_report *r, const char *path,
                      void (*log) (const char *fmt, ...))
{
  memset (r, 0, sizeof *r);
  r->path = path;
  r->log = log;
  r->f = open_memstream (&r->text, &r->len);
}

void
restart_report_add (struct restart_report *r, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  if (r->f) {
    if (r->items)
      fputs ("; ", r->f);
    vfprintf (r->f, fmt, ap);
  }
  else {
    char msg[1024];

    vsnprintf (msg, sizeof msg, fmt, ap);
    r->log ("%s: the previous run did not shut down cleanly; %s", r->path,
            msg);
  }
  va_end (ap);
  r->items++;
}

void
restart_report_unclean (struct restart_report *r,
                        const struct qcow2_image *img, const char *only)
{
  uint32_t i;

  if (!(img->dbm_state & DBM_STATE_RUNNING))
    return;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &img->bitmaps[i];
    const struct bitmap *bm = b->bits;
    uint64_t region_bits = img->dbm_region_size >> b->granularity_bits;
    uint64_t dirty, full;
    char *name;

    if (b->inconsistent || (b->flags & BME_FLAG_IN_USE) ||
        (only && strcmp (only, b->name) != 0))
      continue;
    name = dbm_printable_name (b->name);
    dirty = bitmap_count (bm) << b->granularity_bits;
    if (img->dbm_region_size == 0)
      restart_report_add (r, "bitmap '%s' %" PRIu64 " bytes dirty",
                          name ? name : "?", dirty);
    else {
      if (region_bits < 64)
        region_bits = 64;
      full = bitmap_full_block_bits (bm, region_bits);
      restart_report_add (r, "bitmap '%s' covers every write it forwarded: %"
                          PRIu64 " bytes dirty, of which at most %" PRIu64
                          " in regions pre-marked as a precaution",
                          name ? name : "?", dirty,
                          full << b->granularity_bits);
    }
    free (name);
  }
}

void
restart_report_end (struct restart_report *r)
{
  if (r->f) {
    fclose (r->f);
    r->f = NULL;
    if (r->items && r->text)
      r->log ("%s: the previous run did not shut down cleanly; %s", r->path,
              r->text);
  }
  free (r->text);
  r->text = NULL;
}
