/* dirtybitmap map --svg: a bitmap's map as an SVG picture (see map-svg.h).
 *
 * One horizontal bar stands for the whole disk, in the clean colour; each
 * dirty range is a rectangle over it, placed and sized in proportion
 * (at least MAP_SVG_MIN_WIDTH pixels wide).  Below the bar an axis with
 * offsets in powers of 1024, above it a heading naming the file and the
 * bitmap, and under it a legend with each kind's bytes.  Names come from
 * files anyone may have written: nothing of them reaches the XML raw.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bitmap-name.h"
#include "cleanup.h"
#include "map-svg.h"

/* The picture's geometry, in pixels. */
#define SVG_WIDTH 1000
#define SVG_HEIGHT 160
#define BAR_X 40                /* the bar: where offset 0 is drawn */
#define BAR_W 920               /* ... and its drawn width */
#define BAR_Y 56
#define BAR_H 36
#define TICK_H 6
#define LABEL_Y (BAR_Y + BAR_H + TICK_H + 14)
#define LEGEND_Y 136
#define LEGEND_STEP 320         /* between the legend's entries */
#define END_GAP 50              /* no tick label this close to the end's */

/* One row per kind: its class in the SVG, its colour and its legend
 * word.  Row 0 is the background.
 */
static const struct {
  const char *name;
  const char *fill;
} kinds[MAP_SVG_NKINDS] = {
  [MAP_SVG_CLEAN] = { "clean", "#dde5ed" },
  [MAP_SVG_DIRTY] = { "dirty", "#e8590c" },
  [MAP_SVG_ZERO] = { "zero", "#2f9e44" },
};

static const char units[] = "KMGTPE";

/* V exactly, in the largest power of 1024 that divides it: axis labels
 * must not round (two ticks would read the same).
 */
static void
fmt_exact (uint64_t v, char *buf, size_t len)
{
  unsigned u = 0;

  while (u < sizeof units - 1 && v != 0 && (v & 1023) == 0) {
    v >>= 10;
    u++;
  }
  snprintf (buf, len, "%" PRIu64 "%.*s", v, u ? 1 : 0,
            u ? &units[u - 1] : "");
}

/* V for a reader: the largest unit not above it, one decimal when not
 * exact (the exact bytes are given beside it where they matter).
 */
static void
fmt_human (uint64_t v, char *buf, size_t len)
{
  unsigned u = 0;
  double d = (double) v;

  while (u < sizeof units - 1 && d >= 1024) {
    d /= 1024;
    u++;
  }
  if (u == 0)
    snprintf (buf, len, "%" PRIu64, v);
  else if ((v & ((UINT64_C (1) << (10 * u)) - 1)) == 0)
    snprintf (buf, len, "%" PRIu64 "%c", v >> (10 * u), units[u - 1]);
  else {
    /* 1023.96K would print as 1024.0K. */
    if (d >= 1023.95 && u < sizeof units - 1) {
      d /= 1024;
      u++;
    }
    snprintf (buf, len, "%.1f%c", d, units[u - 1]);
  }
}

/* S as XML text or an attribute value.  dbm_printable_name turns control
 * characters and bytes that are not UTF-8 into \xNN; what is left is
 * UTF-8 that XML 1.0 allows, but for the markup characters (entities
 * here) and U+FFFE and U+FFFF (not XML characters: \xNN too).
 */
static void
xml_put (FILE *f, const char *s)
{
  CLEANUP_FREE char *p = dbm_printable_name (s);
  const unsigned char *c, *end;
  size_t n;

  if (p == NULL) {
    fputc ('?', f);
    return;
  }
  c = (const unsigned char *) p;
  end = c + strlen (p);
  for (; c < end; c += n) {
    n = dbm_utf8_len (c, end);
    if (n == 0 || (n == 3 && c[0] == 0xef && c[1] == 0xbf && c[2] >= 0xbe)) {
      size_t i, k = n ? n : 1;
      for (i = 0; i < k; ++i)
        fprintf (f, "\\x%02x", c[i]);
      n = k;
      continue;
    }
    switch (*c) {
    case '&': fputs ("&amp;", f); break;
    case '<': fputs ("&lt;", f); break;
    case '>': fputs ("&gt;", f); break;
    case '"': fputs ("&quot;", f); break;
    case '\'': fputs ("&apos;", f); break;
    default: fwrite (c, 1, n, f);
    }
  }
}

/* Where offset OFF is drawn. */
static double
x_of (const struct map_svg *m, uint64_t off)
{
  return BAR_X + (double) off * m->scale;
}

/* One tick of the axis at offset OFF, labelled LABEL (NULL: none). */
static void
put_tick (const struct map_svg *m, uint64_t off, const char *label)
{
  double x = x_of (m, off);

  fprintf (m->f, "<line x1=\"%.3f\" y1=\"%d\" x2=\"%.3f\" y2=\"%d\" "
           "stroke=\"#444\"/>\n", x, BAR_Y + BAR_H, x, BAR_Y + BAR_H + TICK_H);
  if (label)
    fprintf (m->f, "<text x=\"%.3f\" y=\"%d\" text-anchor=\"middle\">%s"
             "</text>\n", x, LABEL_Y, label);
}

/* The axis: ticks at a power-of-two step giving 4 to 8 intervals (disk
 * sizes are mostly powers of two, so the end usually falls on one), and
 * the end labelled with the size.
 */
static void
put_axis (const struct map_svg *m)
{
  uint64_t step = 1, target = m->size / 8, t;
  char label[32];

  while (step < target)
    step <<= 1;
  fputs ("<g id=\"axis\" font-size=\"11\">\n", m->f);
  for (t = 0; t < m->size; t += step) {
    bool room = (double) (m->size - t) * m->scale >= END_GAP;

    fmt_exact (t, label, sizeof label);
    put_tick (m, t, room ? label : NULL);
    if (m->size - t <= step)
      break;
  }
  fmt_human (m->size, label, sizeof label);
  put_tick (m, m->size, label);
  fputs ("</g>\n", m->f);
}

void
map_svg_begin (struct map_svg *m, FILE *f, const char *file,
               const char *bitmap, uint64_t size, uint64_t granularity)
{
  char hsize[32], hgran[32];

  memset (m, 0, sizeof *m);
  m->f = f;
  m->size = size;
  m->scale = size ? (double) BAR_W / (double) size : 0;
  fmt_human (size, hsize, sizeof hsize);
  fmt_human (granularity, hgran, sizeof hgran);

  fprintf (f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
           "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
           "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n",
           SVG_WIDTH, SVG_HEIGHT, SVG_WIDTH, SVG_HEIGHT);
  fputs ("<title>", f);
  xml_put (f, file);
  fputs (": bitmap ", f);
  xml_put (f, bitmap);
  fputs ("</title>\n", f);
  fprintf (f, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n",
           SVG_WIDTH, SVG_HEIGHT);
  fprintf (f, "<text id=\"heading\" x=\"%d\" y=\"22\" font-size=\"15\" "
           "font-weight=\"bold\">", BAR_X);
  xml_put (f, file);
  fputs (": bitmap ", f);
  xml_put (f, bitmap);
  fputs ("</text>\n", f);
  fprintf (f, "<text id=\"details\" x=\"%d\" y=\"42\" font-size=\"12\">"
           "size %s (%" PRIu64 " bytes), granularity %s</text>\n",
           BAR_X, hsize, size, hgran);
  fprintf (f, "<rect id=\"bar\" class=\"%s\" fill=\"%s\" x=\"%d\" y=\"%d\" "
           "width=\"%d\" height=\"%d\"/>\n", kinds[0].name, kinds[0].fill,
           BAR_X, BAR_Y, BAR_W, BAR_H);
  fputs ("<g id=\"extents\">\n", f);
}

/* Write the rectangle being built, if any. */
static void
flush_rect (struct map_svg *m)
{
  char h[32];

  if (!m->pending)
    return;
  m->pending = false;
  fmt_human (m->bytes, h, sizeof h);
  fprintf (m->f, "<rect class=\"%s\" fill=\"%s\" x=\"%.3f\" y=\"%d\" "
           "width=\"%.3f\" height=\"%d\" data-offset=\"%" PRIu64 "\" "
           "data-length=\"%" PRIu64 "\" data-extents=\"%" PRIu64 "\">"
           "<title>%s: ", kinds[m->kind].name, kinds[m->kind].fill, m->x0,
           BAR_Y, m->x1 - m->x0, BAR_H, m->off, m->end - m->off, m->count,
           kinds[m->kind].name);
  if (m->count == 1)
    fprintf (m->f, "%" PRIu64 " bytes (%s) at offset %" PRIu64,
             m->bytes, h, m->off);
  else
    fprintf (m->f, "%" PRIu64 " extents, %" PRIu64 " bytes (%s) from "
             "offset %" PRIu64 " to %" PRIu64, m->count, m->bytes, h,
             m->off, m->end);
  fputs ("</title></rect>\n", m->f);
}

void
map_svg_extent (struct map_svg *m, uint64_t offset, uint64_t length,
                enum map_svg_kind kind)
{
  double x0, x1;

  m->total[kind] += length;
  m->extents[kind]++;
  if (kind == MAP_SVG_CLEAN || length == 0)
    return;                     /* the background */
  x0 = x_of (m, offset);
  x1 = x_of (m, offset + length);
  if (x1 - x0 < MAP_SVG_MIN_WIDTH)
    x1 = x0 + MAP_SVG_MIN_WIDTH;
  if (x1 > BAR_X + BAR_W) {     /* a widened extent at the very end */
    x0 -= x1 - (BAR_X + BAR_W);
    x1 = BAR_X + BAR_W;
  }
  if (m->pending && m->kind == kind && x0 <= m->x1) {
    if (x1 > m->x1)
      m->x1 = x1;
    m->end = offset + length;
    m->bytes += length;
    m->count++;
    return;
  }
  flush_rect (m);
  m->pending = true;
  m->kind = kind;
  m->x0 = x0;
  m->x1 = x1;
  m->off = offset;
  m->end = offset + length;
  m->bytes = length;
  m->count = 1;
}

int
map_svg_end (struct map_svg *m)
{
  unsigned k;

  flush_rect (m);
  fputs ("</g>\n", m->f);
  /* The outline goes over the extents, so that it stays visible. */
  fprintf (m->f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
           "fill=\"none\" stroke=\"#444\"/>\n", BAR_X, BAR_Y, BAR_W, BAR_H);
  put_axis (m);
  fputs ("<g id=\"legend\" font-size=\"12\">\n", m->f);
  for (k = 0; k < MAP_SVG_NKINDS; ++k) {
    int x = BAR_X + (int) k * LEGEND_STEP;
    double pct = m->size ? 100.0 * (double) m->total[k] / (double) m->size
      : 0;
    char h[32];

    fmt_human (m->total[k], h, sizeof h);
    fprintf (m->f, "<rect class=\"legend-%s\" fill=\"%s\" stroke=\"#444\" "
             "x=\"%d\" y=\"%d\" width=\"12\" height=\"12\"/>\n",
             kinds[k].name, kinds[k].fill, x, LEGEND_Y);
    fprintf (m->f, "<text x=\"%d\" y=\"%d\">%s: %s (%.2f%%), %" PRIu64
             " extent%s</text>\n", x + 18, LEGEND_Y + 11, kinds[k].name, h,
             pct, m->extents[k], m->extents[k] == 1 ? "" : "s");
  }
  fputs ("</g>\n</svg>\n", m->f);
  return ferror (m->f) ? -1 : 0;
}
