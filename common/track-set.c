/* Publication, ownership and reclamation of what markers read: track
 * sets, tracked states and bitmap storage.
 *
 * A tracked bitmap (its storage and its tracked_state) moves through:
 *
 *   NEW       built by a model change, not reachable by markers
 *   ACTIVE    in the published tr->set: markers set its bits
 *   RETIRED   no longer tracked (a checkpoint disabled it, growth
 *             replaced its storage, a failed change abandoned it):
 *             st->retired is set, markers that still hold an old set
 *             may read it but never arm it; its storage stays in the
 *             model if the bitmap is kept (disabled)
 *   RECLAIMED freed through epoch.h once no marker can hold a pointer
 *
 * Transitions: NEW -> ACTIVE and ACTIVE -> RETIRED happen in a model
 * change (tracker-model.c) holding all four tracker locks, by storing
 * tr->set (seq_cst); RETIRED -> RECLAIMED by epoch_reclaim.  Storage of
 * a disabled bitmap is retired when the bitmap is removed.  Sets are
 * immutable once published.
 */
#include <config.h>

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tracker-internal.h"

struct track_set tracker_empty_set;

/* qemu mode's armed array for the write path (struct tracked). */
_Atomic uint64_t tracker_always_armed = 1;

/* Append P to a growing array of pointers. */
static int
keep (void ***arr, size_t *n, void *p)
{
  void **a = realloc (*arr, (*n + 1) * sizeof *a);

  if (a == NULL)
    return -1;
  a[(*n)++] = p;
  *arr = a;
  return 0;
}

/* Take P off a list made by keep (it is being retired). */
static void
forget (void ***arr, size_t *n, void *p)
{
  size_t i;

  for (i = 0; i < *n; ++i)
    if ((*arr)[i] == p) {
      (*arr)[i] = (*arr)[--*n];
      return;
    }
}

static void
free_state (void *p)
{
  struct tracked_state *st = p;

  free ((void *) st->touched);
  free (st->prev_touched);
  free ((void *) st->armed);
  free ((void *) st->ones);
  bitmap_delete (st->zero);
  free (st);
}

static void
delete_bitmap (void *p)
{
  bitmap_delete (p);
}

/* Retiring: off the tracker's lists, freed once no marker reads it.  If
 * it cannot be queued it stays on the list (freed by tracker_free).
 */
void
tracker_retire_set (struct tracker *tr, struct track_set *s)
{
  assert (s != atomic_load (&tr->set));
  if (s != &tracker_empty_set && epoch_retire (tr, s, free) == 0)
    forget ((void ***) &tr->sets, &tr->nsets, s);
}

void
tracker_retire_state (struct tracker *tr, struct tracked_state *st)
{
  assert (atomic_load (&st->retired));
  if (epoch_retire (tr, st, free_state) == 0)
    forget ((void ***) &tr->states, &tr->nstates, st);
}

void
tracker_retire_bitmap (struct tracker *tr, struct bitmap *bm)
{
  if (bm && epoch_retire (tr, bm, delete_bitmap) == 0)
    forget ((void ***) &tr->owned, &tr->nowned, bm);
}

int
tracker_own_bitmaps (struct tracker *tr, struct qcow2_image *img,
                     struct dbm_err *err)
{
  uint32_t i;
  size_t j;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct bitmap *bm = img->bitmaps[i].bits;
    for (j = 0; j < tr->nowned && tr->owned[j] != bm; ++j)
      ;
    if (bm && j == tr->nowned &&
        keep ((void ***) &tr->owned, &tr->nowned, bm) == -1)
      return dbm_seterr (err, ENOMEM, "out of memory");
  }
  return 0;
}

void
tracker_drop_model (struct qcow2_image *img)
{
  uint32_t i;

  if (img == NULL)
    return;
  for (i = 0; i < img->nb_bitmaps; ++i)
    img->bitmaps[i].bits = NULL;
  qcow2_close (img);
}

void
tracker_free (struct tracker *tr)
{
  size_t i;

  if (tr == NULL)
    return;
  atomic_store (tr->fast_slot, NULL);
  /* No marker runs any more: what waits for a grace period can go. */
  epoch_drain (tr);
  if (tr->nowned)
    tracker_drop_model (tr->img);
  else
    qcow2_close (tr->img);
  for (i = 0; i < tr->nowned; ++i)
    bitmap_delete (tr->owned[i]);
  free (tr->owned);
  for (i = 0; i < tr->nstates; ++i)
    free_state (tr->states[i]);
  free (tr->states);
  for (i = 0; i < tr->nsets; ++i)
    free (tr->sets[i]);
  free (tr->sets);
  free (tr->open_flags);
  pthread_mutex_destroy (&tr->persist_lock);
  pthread_mutex_destroy (&tr->arm_lock);
  pthread_mutex_destroy (&tr->sync_lock);
  pthread_mutex_destroy (&tr->quiesce_lock);
  pthread_mutex_destroy (&tr->zero_enable_lock);
  pthread_mutex_destroy (&tr->zero_lock);
  free (tr);
}

bool
tracker_is_tracked (const struct tracker *tr, const struct qcow2_bitmap *b)
{
  if (tr->img->layout == QCOW2_LAYOUT_DRAFT2015)
    return strcmp (b->name, tr->cfg.bitmap_name) == 0;
  return (b->flags & BME_FLAG_AUTO) != 0;
}

struct tracked_state *
tracker_new_state (struct tracker *tr, struct qcow2_image *img, int idx,
                   struct dbm_err *err)
{
  struct qcow2_bitmap *b = &img->bitmaps[idx];
  struct tracked_state *st = calloc (1, sizeof *st);
  uint64_t region_bits, words;

  if (st == NULL || keep ((void ***) &tr->states, &tr->nstates, st) == -1) {
    free (st);
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  st->idx = idx;
  st->bits = b->bits;
  /* A region is a whole number of 64-bit words of the bitmap, so that
   * writing one region's bytes never touches a neighbour's.
   */
  region_bits = tr->cfg.region_size >> b->granularity_bits;
  st->region_shift = 6;
  while (st->region_shift < 40 &&
         (UINT64_C (1) << (st->region_shift + 1)) <= region_bits)
    st->region_shift++;
  st->nregions = (b->bits->nbits >> st->region_shift) + 1;
  words = (st->nregions + 63) / 64;
  st->touched = calloc (words, sizeof (_Atomic uint64_t));
  st->armed = calloc (words, sizeof (_Atomic uint64_t));
  st->ones = calloc (words, sizeof (_Atomic uint64_t));
  st->prev_touched = calloc (words, sizeof (uint64_t));
  st->zero = bitmap_new (b->bits->size, b->granularity_bits);
  if (st->touched == NULL || st->armed == NULL || st->ones == NULL ||
      st->prev_touched == NULL || st->zero == NULL) {
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  return st;
}

struct track_set *
tracker_new_set (struct tracker *tr, struct tracked_state **states, size_t n,
                 struct dbm_err *err)
{
  struct track_set *s = calloc (1, sizeof *s + (n + 1) * sizeof s->t[0]);
  size_t i;

  if (s == NULL || keep ((void ***) &tr->sets, &tr->nsets, s) == -1) {
    free (s);
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  for (i = 0; i < n; ++i) {
    struct tracked *t = &s->t[i];
    struct tracked_state *st = states[i];
    t->st = st;
    t->granularity_bits = st->bits->granularity_bits;
    t->nbits = st->bits->nbits;
    t->leaves = st->bits->leaves;
    t->zero_leaves = st->zero->leaves;
    if (tr->cfg.mode == TRACKER_CRASH_SAFE) {
      t->region_shift = st->region_shift;
      t->armed = st->armed;
    }
    else {
      t->region_shift = 63;
      t->armed = &tracker_always_armed;
    }
  }
  s->nt = n;
  return s;
}

void
tracker_reflag_model (struct qcow2_image *img)
{
  uint32_t i;
  uint64_t leaf;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct bitmap *bm = img->bitmaps[i].bits;
    for (leaf = 0; bm && leaf < bm->nleaves; ++leaf)
      if (bitmap_leaf_present (bm, leaf))
        bitmap_set_changed (bm, leaf);
  }
}
