/* What a start after an unclean stop says about the file: one line,
 * however many bitmaps it holds (a line per bitmap buried the point).
 * Items are collected while the file is opened (bitmaps found in use,
 * what crash-safe pre-marking may have added, snapshots lost) and logged
 * together by restart_report_end.
 */
#ifndef DBM_RESTART_REPORT_H
#define DBM_RESTART_REPORT_H

#include <stdio.h>

#include "qcow2.h"

struct restart_report {
  const char *path;
  void (*log) (const char *fmt, ...);
  FILE *f;                      /* NULL if out of memory: log each item */
  char *text;
  size_t len;
  unsigned items;
};

extern void restart_report_begin (struct restart_report *r, const char *path,
                                  void (*log) (const char *fmt, ...));

/* One item ("bitmap 'x' ..."), in the order given. */
extern void restart_report_add (struct restart_report *r, const char *fmt,
                                ...)
  __attribute__ ((format (printf, 2, 3)));

/* After a crash in crash-safe mode: each bitmap (ONLY: just that one,
 * NULL: all) covers every write, and how much of its dirty area may be
 * precautionary (whole regions all-ones, an upper bound of what
 * pre-marking added).  Nothing if the previous run stopped cleanly.
 */
extern void restart_report_unclean (struct restart_report *r,
                                    const struct qcow2_image *img,
                                    const char *only);

/* Log the line (if there is anything to say) and free the report. */
extern void restart_report_end (struct restart_report *r);

#endif /* DBM_RESTART_REPORT_H */
