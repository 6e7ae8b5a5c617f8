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
  if (pthread_mutex_unlock (*ptr) != 0)
    abort ();
}

/* A lock that fails (EINVAL, EDEADLK) is a bug: stop rather than run
 * unprotected.
 */
static inline pthread_mutex_t *
dbm_lock (pthread_mutex_t *m)
{
  if (pthread_mutex_lock (m) != 0)
    abort ();
  return m;
}

#define DBM_UNIQUE_(a, b) a##b
#define DBM_UNIQUE(a, b) DBM_UNIQUE_ (a, b)

/* Lock MUTEX until the end of the enclosing scope, on every return path.
 * __COUNTER__: two locks on one line get different names.
 */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  __attribute__ ((cleanup (dbm_cleanup_unlock)))                        \
  pthread_mutex_t *DBM_UNIQUE (_lock, __COUNTER__) = dbm_lock (mutex)

#endif /* DBM_CLEANUP_H */
