/* Rate limits for messages that a fault can repeat on every request (a
 * failing store, memory running out, a client writing to an export that
 * is not tracked): the first few in a window are logged, the rest
 * counted, and the next message logged says how many were dropped.
 * One struct log_limit per message site.
 */
#ifndef DBM_LOG_LIMIT_H
#define DBM_LOG_LIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define LOG_LIMIT_BURST   5     /* messages per window */
#define LOG_LIMIT_WINDOW  60    /* seconds */

struct log_limit {
  pthread_mutex_t lock;
  int64_t window_start;         /* seconds, of the clock passed in */
  unsigned in_window;           /* logged in this window */
  uint64_t dropped;             /* not logged since the last one logged */
};

#define LOG_LIMIT_INIT { .lock = PTHREAD_MUTEX_INITIALIZER, \
                         .window_start = INT64_MIN }

/* May a message be logged at time NOW (seconds, monotonic)?  If so,
 * *DROPPED is how many were suppressed before it (say so in the line).
 */
extern bool log_limit_allow (struct log_limit *ll, int64_t now,
                             uint64_t *dropped);

/* log_limit_allow at CLOCK_MONOTONIC's time. */
extern bool log_limit_allow_now (struct log_limit *ll, uint64_t *dropped);

#endif /* DBM_LOG_LIMIT_H */
