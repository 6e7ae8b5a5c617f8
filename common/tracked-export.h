/* Which export a bitmap file records.
 *
 * One file describes one disk, so one export name: bitmap-export=NAME,
 * by default "" (the plugin's default export).  A client asking for ""
 * reaches .open under the default export's own name, which nbdkit asks
 * each layer for first (the filter's .default_export): the first such
 * name seen is then tracked as "".  Any other export is served read-only
 * by the filter: a write to it would otherwise be recorded as a write at
 * the same offset of the tracked disk.
 *
 * Thread-safe: nbdkit calls default_export and open concurrently.
 */
#ifndef DBM_TRACKED_EXPORT_H
#define DBM_TRACKED_EXPORT_H

#include <pthread.h>
#include <stdbool.h>

struct tracked_export {
  pthread_mutex_t lock;
  char *name;                   /* bitmap-export, NULL for "" */
  char *canonical;              /* the default export's own name, or NULL */
};

#define TRACKED_EXPORT_INIT { .lock = PTHREAD_MUTEX_INITIALIZER }

/* Set the tracked name (a copy).  -1 with errno if out of memory. */
extern int tracked_export_set (struct tracked_export *te, const char *name);

/* The plugin named its default export CANONICAL.  Remembered (the first
 * one only: nbdkit caches it per connection, and a plugin whose default
 * changes would move the tracked disk) while the tracked name is "".
 * -1 with errno if out of memory.
 */
extern int tracked_export_saw_default (struct tracked_export *te,
                                       const char *canonical);

/* Is EXPORTNAME (as nbdkit hands it to .open) the tracked export? */
extern bool tracked_export_is (struct tracked_export *te,
                               const char *exportname);

/* The tracked name ("" for the default). */
extern const char *tracked_export_name (const struct tracked_export *te);

extern void tracked_export_fini (struct tracked_export *te);

#endif /* DBM_TRACKED_EXPORT_H */
