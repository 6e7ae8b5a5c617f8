/* The status line of the control socket: one JSON object describing the
 * file and its bitmaps.  Reads the tracker, changes nothing.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cleanup.h"
#include "json-string.h"
#include "tracker-internal.h"

/* crash-safe: bytes the file shows dirty beyond the exact bits, because
 * their region is (or may be) written all-ones: what a reader of the
 * enabled bitmap in the file, or a restart after a crash, sees extra.
 */
static uint64_t
premarked_bytes (const struct tracked_state *st)
{
  const struct bitmap *bm = st->bits;
  uint64_t rbits = UINT64_C (1) << st->region_shift, r, n = 0;

  for (r = 0; r < st->nregions; ++r) {
    uint64_t first = r * rbits, end = first + rbits;

    /* ARMED, or ARMING or left all-ones by a failed exact write. */
    if (!(((atomic_load (&st->armed[r >> 6]) |
            atomic_load (&st->ones[r >> 6])) >> (r & 63)) & 1))
      continue;
    if (end > bm->nbits)
      end = bm->nbits;
    n += (end - first) - bitmap_count_range (bm, first, end);
  }
  return n << bm->granularity_bits;
}

/* Bytes of disk B's set bits stand for, clipped to its size. */
static uint64_t
bytes_set (const struct qcow2_bitmap *b)
{
  uint64_t n = bitmap_count (b->bits) << b->granularity_bits;

  return n < b->size ? n : b->size;
}

char *
tracker_status_json (struct tracker *tr, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  struct track_set *s = atomic_load (&tr->set);
  char *buf = NULL;
  size_t len = 0, k;
  FILE *f = open_memstream (&buf, &len);
  uint32_t i;
  bool first = true;

  if (f == NULL) {
    dbm_seterr (err, errno, "open_memstream: %m");
    return NULL;
  }
  fputs ("{\"file\":", f);
  json_put_string (f, tr->cfg.path);
  fprintf (f, ",\"layout\":\"%s\",\"mode\":\"%s\",\"export_size\":%" PRIu64
           ",\"generation\":%" PRIu64 ",\"last_persist\":%" PRId64
           ",\"bitmaps\":[",
           qcow2_layout_name (tr->img ? tr->img->layout : tr->cfg.layout),
           tr->cfg.mode == TRACKER_QEMU ? "qemu" : "crash-safe",
           tr->img && tr->export_size ? tr->export_size : tracker_size (tr),
           tr->generation, tr->last_persist);
  for (i = 0; tr->img && i < tr->img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &tr->img->bitmaps[i];
    bool tracked = false;
    uint64_t dirty = 0, premarked = 0, zero = 0;
    int z;

    /* A zero map is part of its bitmap's entry (zero_bytes). */
    if (qcow2_is_zero_map (tr->img, i))
      continue;
    if ((z = qcow2_zero_map_of (tr->img, i)) >= 0 && tr->img->bitmaps[z].bits)
      zero = bytes_set (&tr->img->bitmaps[z]);

    for (k = 0; k < s->nt; ++k)
      if (s->t[k].st->idx == (int) i) {
        tracked = true;
        if (tr->cfg.mode == TRACKER_CRASH_SAFE)
          premarked = premarked_bytes (s->t[k].st);
      }
    if (b->bits && !b->inconsistent)
      dirty = bytes_set (b);
    fputs (first ? "{\"name\":" : ",{\"name\":", f);
    first = false;
    json_put_string (f, b->name);
    fprintf (f, ",\"granularity\":%" PRIu64 ",\"enabled\":%s,\"in_use\":%s,"
             "\"tracked\":%s,\"dirty_bytes\":%" PRIu64 ","
             "\"premarked_bytes\":%" PRIu64 ",\"zero_bytes\":%" PRIu64 "}",
             UINT64_C (1) << b->granularity_bits,
             qcow2_bitmap_enabled (tr->img, b) ? "true" : "false",
             (b->flags & BME_FLAG_IN_USE) ? "true" : "false",
             tracked ? "true" : "false", dirty, premarked, zero);
  }
  fputs ("]}", f);
  if (fclose (f) != 0) {
    free (buf);
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  return buf;
}
