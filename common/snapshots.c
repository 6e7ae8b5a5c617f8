/* The live snapshots and their freeze (see snapshots.h). */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "epoch.h"
#include "json-string.h"
#include "snapshots.h"

void
snapshots_init (struct snapshots *ss, struct tracker *tr)
{
  ss->tr = tr;
  pthread_mutex_init (&ss->lock, NULL);
  pthread_cond_init (&ss->thawed, NULL);
  atomic_init (&ss->live, NULL);
}

static void
drop_owner_ref (void *p)
{
  snapshot_unref (p, false);
}

/* A copy of A (which may be NULL) with S added, or without S, and the
 * snapshot being added when FREEZING.
 */
static struct snapshot_array *
array_with (const struct snapshot_array *a, struct snapshot *add,
            struct snapshot *without, bool freezing)
{
  size_t n = a ? a->n : 0, i, k = 0;
  struct snapshot_array *b =
    malloc (sizeof *b + (n + 1) * sizeof (struct snapshot *));

  if (b == NULL)
    return NULL;
  for (i = 0; i < n; ++i)
    if (a->s[i] != without)
      b->s[k++] = a->s[i];
  if (add && !freezing)
    b->s[k++] = add;
  b->n = k;
  b->freezing = freezing;
  b->adding = freezing ? add : NULL;
  return b;
}

/* Publish B (NULL when empty) and retire what it replaces. */
static void
publish (struct snapshots *ss, struct snapshot_array *b)
{
  struct snapshot_array *old;

  if (b && b->n == 0 && !b->freezing) {
    free (b);
    b = NULL;
  }
  old = atomic_exchange (&ss->live, b);
  if (old && epoch_retire (ss, old, free) == -1) {
    /* kept: a few bytes leaked rather than freed under a reader */
  }
  epoch_reclaim ();
}

int
snapshots_freeze (struct snapshots *ss, struct snapshot *s,
                  struct dbm_err *err)
{
  struct snapshot_array *a = atomic_load (&ss->live);
  struct snapshot_array *frozen = array_with (a, s, NULL, true);

  assert (a == NULL || !a->freezing);
  if (frozen == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  tracker_hold_slow_path (ss->tr, true);        /* step 1 */
  publish (ss, frozen);
  epoch_barrier ();                             /* step 2 */
  return 0;
}

void
snapshots_thaw (struct snapshots *ss, bool keep)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&ss->lock);
  struct snapshot_array *a = atomic_load (&ss->live), *b;

  assert (a && a->freezing && a->adding);
  /* Step 4.  Published arrays are immutable, so a new one is needed;
   * the freeze must end, so a failed allocation is retried.
   */
  if (keep)
    snapshot_seal (a->adding);
  while ((b = array_with (a, keep ? a->adding : NULL, NULL, false)) == NULL)
    sched_yield ();
  publish (ss, b);
  if (!keep)
    tracker_hold_slow_path (ss->tr, false);
  pthread_cond_broadcast (&ss->thawed);
}

int
snapshots_release (struct snapshots *ss, const char *name,
                   struct dbm_err *err)
{
  struct snapshot_array *a = atomic_load (&ss->live), *b;
  struct snapshot *s = NULL;
  size_t i;

  for (i = 0; a && i < a->n; ++i)
    if (strcmp (a->s[i]->name, name) == 0)
      s = a->s[i];
  if (s == NULL)
    return dbm_seterr (err, ENOENT, "no live snapshot '%s'", name);
  b = array_with (a, NULL, s, false);
  if (b == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  publish (ss, b);
  /* Writers still on the old array find it released and copy nothing. */
  snapshot_release (s);
  if (epoch_retire (ss, s, drop_owner_ref) == -1) {
    /* kept (a leak of the map, never a use after free) */
  }
  tracker_hold_slow_path (ss->tr, false);
  return 0;
}

size_t
snapshots_count (struct snapshots *ss)
{
  struct snapshot_array *a = atomic_load (&ss->live);

  return a ? a->n : 0;
}

struct snapshot *
snapshots_open (struct snapshots *ss, const char *name)
{
  struct epoch_slot *e = epoch_enter ();
  struct snapshot_array *a = atomic_load (&ss->live);
  struct snapshot *s = NULL;
  size_t i;

  for (i = 0; a && i < a->n; ++i)
    if (strcmp (a->s[i]->name, name) == 0) {
      s = a->s[i];
      snapshot_ref (s, true);
      break;
    }
  epoch_leave (e);
  return s;
}

void
snapshots_each (struct snapshots *ss,
                void (*fn) (void *opaque, struct snapshot *s), void *opaque)
{
  struct epoch_slot *e = epoch_enter ();
  struct snapshot_array *a = atomic_load (&ss->live);
  size_t i;

  for (i = 0; a && i < a->n; ++i)
    fn (opaque, a->s[i]);
  epoch_leave (e);
}

void
snapshots_json (struct snapshots *ss, FILE *f)
{
  struct epoch_slot *e = epoch_enter ();
  struct snapshot_array *a = atomic_load (&ss->live);
  size_t i, k;

  fputc ('[', f);
  for (i = 0; a && i < a->n; ++i) {
    struct snapshot *s = a->s[i];
    struct snapshot_info info;

    snapshot_get_info (s, &info);
    fputs (i ? ",{\"name\":" : "{\"name\":", f);
    json_put_string (f, s->name);
    fputs (",\"export\":", f);
    json_put_prefixed (f, SNAPSHOT_EXPORT_PREFIX, s->name);
    fputs (",\"frozen\":[", f);
    for (k = 0; s->frozen && s->frozen[k]; ++k) {
      fputs (k ? "," : "", f);
      json_put_string (f, s->frozen[k]);
    }
    fputc (']', f);
    fprintf (f, ",\"variant\":\"%s\",\"size\":%" PRIu64 ",\"granularity\":%"
             PRIu64 ",\"preserved_bytes\":%" PRIu64 ",\"store_bytes\":%"
             PRIu64 ",\"map_bytes\":%" PRIu64 ",\"readers\":%u,"
             "\"state\":\"%s\"",
             s->readable ? "dirty" : "full", s->size,
             UINT64_C (1) << s->granule_bits, info.preserved_bytes,
             info.store_bytes, info.map_bytes, info.readers,
             snapshot_state_name (info.state));
    if (info.state == SNAPSHOT_BROKEN) {
      fputs (",\"reason\":", f);
      json_put_string (f, info.why);
    }
    fputc ('}', f);
  }
  fputc (']', f);
  epoch_leave (e);
}

bool
snapshots_slow_before_write (struct snapshots *ss,
                             const struct snapshot_array *a,
                             uint64_t offset, uint64_t count,
                             snapshot_read_fn read, void *ctx)
{
  size_t i;

  if (a->freezing)
    return false;
  for (i = 0; i < a->n; ++i)
    if (snapshot_before_write (a->s[i], offset, count, read, ctx)) {
      struct snapshot_info info;

      snapshot_get_info (a->s[i], &info);
      ss->tr->cfg.log ("%s: snapshot '%s' is broken: %s; writes go on, its "
                       "readers get EIO (release it)", ss->tr->cfg.path,
                       a->s[i]->name, info.why);
    }
  return true;
}

void
snapshots_wait_thaw (struct snapshots *ss)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&ss->lock);
  struct snapshot_array *a;

  while ((a = atomic_load (&ss->live)) != NULL && a->freezing)
    pthread_cond_wait (&ss->thawed, &ss->lock);
}

void
snapshots_fini (struct snapshots *ss)
{
  struct snapshot_array *a = atomic_exchange (&ss->live, NULL);
  size_t i;

  for (i = 0; a && i < a->n; ++i) {
    snapshot_release (a->s[i]);
    snapshot_unref (a->s[i], false);
  }
  free (a);
  epoch_drain (ss);
}
