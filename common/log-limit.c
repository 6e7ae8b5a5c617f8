/* Rate-limited messages (see log-limit.h). */
#include <config.h>

#include <time.h>

#include "cleanup.h"
#include "log-limit.h"

bool
log_limit_allow (struct log_limit *ll, int64_t now, uint64_t *dropped)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&ll->lock);

  if (ll->window_start == INT64_MIN ||
      now - ll->window_start >= LOG_LIMIT_WINDOW || now < ll->window_start) {
    ll->window_start = now;
    ll->in_window = 0;
  }
  if (ll->in_window >= LOG_LIMIT_BURST) {
    ll->dropped++;
    return false;
  }
  ll->in_window++;
  *dropped = ll->dropped;
  ll->dropped = 0;
  return true;
}

bool
log_limit_allow_now (struct log_limit *ll, uint64_t *dropped)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return log_limit_allow (ll, ts.tv_sec, dropped);
}
