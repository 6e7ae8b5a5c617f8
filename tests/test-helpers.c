/* Unit tests of small helpers: the rate limit on repeated messages and
 * the choice of the tracked export.
 */
#include <config.h>

#include <stdbool.h>
#include <string.h>

#include "log-limit.h"
#include "tracked-export.h"
#include "test-unit.h"

/* A burst is logged, the rest of the window counted, and the first line
 * of the next window carries the count; a clock going back restarts.
 */
static void
test_log_limit (void)
{
  struct log_limit ll = LOG_LIMIT_INIT;
  uint64_t dropped = 99;
  unsigned i, logged = 0;

  for (i = 0; i < 100; ++i)
    if (log_limit_allow (&ll, 1000, &dropped)) {
      CHECK_EQ (dropped, 0);
      logged++;
    }
  CHECK_EQ (logged, LOG_LIMIT_BURST);
  CHECK (!log_limit_allow (&ll, 1000 + LOG_LIMIT_WINDOW - 1, &dropped));
  CHECK (log_limit_allow (&ll, 1000 + LOG_LIMIT_WINDOW, &dropped));
  CHECK_EQ (dropped, 100 - LOG_LIMIT_BURST + 1);
  CHECK (log_limit_allow (&ll, 1000 + LOG_LIMIT_WINDOW, &dropped));
  CHECK_EQ (dropped, 0);
  for (i = 0; i < 10; ++i)
    log_limit_allow (&ll, 1000 + LOG_LIMIT_WINDOW, &dropped);
  CHECK (log_limit_allow (&ll, 5, &dropped));   /* the clock went back */
  CHECK_EQ (dropped, 10 - (LOG_LIMIT_BURST - 2));
}

/* The default export: its own name, once the plugin gave it, is tracked
 * as ""; the first one given stays; a named export never stands for
 * another.
 */
static void
test_tracked_export (void)
{
  struct tracked_export te = TRACKED_EXPORT_INIT;

  CHECK_EQ (strcmp (tracked_export_name (&te), ""), 0);
  CHECK (tracked_export_is (&te, ""));
  CHECK (!tracked_export_is (&te, "disk"));
  CHECK_EQ (tracked_export_saw_default (&te, "disk"), 0);
  CHECK (tracked_export_is (&te, "disk"));
  CHECK (tracked_export_is (&te, ""));
  CHECK_EQ (tracked_export_saw_default (&te, "other"), 0);
  CHECK (!tracked_export_is (&te, "other"));
  tracked_export_fini (&te);

  CHECK_EQ (tracked_export_set (&te, "b"), 0);
  CHECK_EQ (tracked_export_saw_default (&te, "a"), 0);
  CHECK (tracked_export_is (&te, "b"));
  CHECK (!tracked_export_is (&te, "a"));
  CHECK (!tracked_export_is (&te, ""));
  tracked_export_fini (&te);
}

int
main (void)
{
  test_log_limit ();
  test_tracked_export ();
  TEST_DONE ();
}
