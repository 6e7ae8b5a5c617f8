/* dirtybitmap map --svg: a bitmap's map as an SVG picture (see map-svg.c).
 *
 * The caller walks the map in order and hands over each extent; the
 * picture is written as it goes, so a map of any length needs no memory
 * beyond the rectangle being built.
 */
#ifndef DBM_MAP_SVG_H
#define DBM_MAP_SVG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* What an extent is.  The first kind is the bar's background; every other
 * kind is drawn over it.  A later kind is one more value before
 * MAP_SVG_NKINDS and one more row in the table of map-svg.c; nothing else
 * changes.  Zero: dirty, and last changed by a zero or trim request.
 */
enum map_svg_kind {
  MAP_SVG_CLEAN,
  MAP_SVG_DIRTY,
  MAP_SVG_ZERO,
  MAP_SVG_NKINDS
};

/* Minimum width in pixels of a drawn extent: a dirty granule of a large
 * disk is still seen.  Extents of one kind whose rectangles would touch
 * or overlap at that width are drawn as one rectangle.
 */
#define MAP_SVG_MIN_WIDTH 1.0

struct map_svg {
  FILE *f;
  uint64_t size;                /* the bytes the bar stands for */
  double scale;                 /* pixels per byte */
  /* The rectangle being built. */
  bool pending;
  enum map_svg_kind kind;
  double x0, x1;
  uint64_t off, end, bytes, count;
  /* For the legend. */
  uint64_t total[MAP_SVG_NKINDS], extents[MAP_SVG_NKINDS];
};

/* Start the picture of bitmap BITMAP of FILE, covering SIZE bytes at
 * GRANULARITY (both names may hold any bytes: they are escaped).
 */
extern void map_svg_begin (struct map_svg *m, FILE *f, const char *file,
                           const char *bitmap, uint64_t size,
                           uint64_t granularity);

/* The next extent, in order from offset 0. */
extern void map_svg_extent (struct map_svg *m, uint64_t offset,
                            uint64_t length, enum map_svg_kind kind);

/* Finish the picture (legend, closing tag).  -1 if F had a write error. */
extern int map_svg_end (struct map_svg *m);

#endif /* DBM_MAP_SVG_H */
