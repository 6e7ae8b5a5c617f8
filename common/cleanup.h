/* Scoped cleanup, in the style of nbdkit's common/utils/cleanup.h (which
 * is not installed, so out-of-tree code carries its own).
 */
#ifndef DBM_CLEANUP_H
#define DBM_CLEANUP_H

#include <pthread.h>
#include <stdlib.h>

static inline void
dbm_cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (dbm_cleanup_free)))

static inline void
dbm_cleanup_unlock (pthread_mutex_t **ptr)
{
  pthread_mutex_unlock (*ptr);
}

#define DBM_UNIQUE_(a, b) a##b
#define DBM_UNIQUE(a, b) DBM_UNIQUE_ (a, b)

/* Lock MUTEX until the end of the enclosing scope, on every return path. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  __attribute__ ((cleanup (dbm_cleanup_unlock)))                        \
  pthread_mutex_t *DBM_UNIQUE (_lock, __LINE__) = (mutex);              \
  pthread_mutex_lock (DBM_UNIQUE (_lock, __LINE__))

#endif /* DBM_CLEANUP_H */
