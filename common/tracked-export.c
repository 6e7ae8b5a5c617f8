/* The export a bitmap file records (see tracked-export.h). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "tracked-export.h"

int
tracked_export_set (struct tracked_export *te, const char *name)
{
  char *copy = strdup (name);

  if (copy == NULL)
    return -1;
  free (te->name);
  te->name = copy;
  return 0;
}

int
tracked_export_saw_default (struct tracked_export *te, const char *canonical)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&te->lock);

  if (te->canonical != NULL || tracked_export_name (te)[0] != '\0')
    return 0;
  te->canonical = strdup (canonical);
  return te->canonical ? 0 : -1;
}

bool
tracked_export_is (struct tracked_export *te, const char *exportname)
{
  const char *name = tracked_export_name (te);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&te->lock);

  if (strcmp (exportname, name) == 0)
    return true;
  return name[0] == '\0' && te->canonical != NULL &&
    strcmp (exportname, te->canonical) == 0;
}

const char *
tracked_export_name (const struct tracked_export *te)
{
  return te->name ? te->name : "";
}

void
tracked_export_fini (struct tracked_export *te)
{
  free (te->name);
  free (te->canonical);
  te->name = te->canonical = NULL;
}
