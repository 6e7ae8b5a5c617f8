/* Replacing the file's model while clients keep writing: checkpoints,
 * growth of the export, removal of disabled bitmaps; and the status line.
 *
 * Each change builds a new model (qcow2_clone: new metadata, and either
 * the same bit storage or new storage filled from the old), commits it,
 * then adopts it.  Checkpoints and removals update the file where it is
 * (qcow2_update: new structures past the end, one header write switches
 * to them), so their cost does not grow with the bitmaps kept; growth,
 * repairs and compaction write a new file (temporary file + rename).
 * Either way the file passes qemu-img check at every instant, and a
 * failure leaves the old state in force.  All four tracker locks are
 * held throughout, so no persist, arming write or in_use change touches
 * either file meanwhile.  Markers keep
 * setting bits in memory; the published track_set tells them where, and
 * mark_slow's re-check covers a marker that raced with the replacement.
 */
#include <config.h>

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "qemu-lock.h"
#include "regions.h"
#include "tracker-internal.h"

/* Every bitmap object of the current set still points into tr->img; after
 * a change the model is IMG2: make each state's index point there.
 */
static void
adopt (struct tracker *tr, struct qcow2_image *img2)
{
  struct track_set *s = atomic_load (&tr->set);
  struct qcow2_image *old = tr->img;
  size_t i;
  uint32_t j;

  for (i = 0; i < s->nt; ++i)
    for (j = 0; j < img2->nb_bitmaps; ++j)
      if (img2->bitmaps[j].bits == s->t[i].st->bits)
        s->t[i].st->idx = j;
  tr->img = img2;
  tracker_drop_model (old);
  tr->last_persist = time (NULL);
}

/* A change committed (the new file is in force) but its directory sync
 * failed: say so; qcow2_sync retries it before any later sync succeeds.
 */
static int
not_durable (struct tracker *tr, int r, const char *what, const char *name,
             struct dbm_err *err)
{
  char cause[sizeof err->msg];

  if (r == 0)
    return 0;
  snprintf (cause, sizeof cause, "%s", err->msg);
  return dbm_seterr (err, EIO, "%s: %s%s%s%s done, but not yet durable (%s); "
                     "the next persist or flush retries", tr->cfg.path, what,
                     name ? " of '" : "", name ? name : "", name ? "'" : "",
                     cause);
}

/* crash-safe mode, before a rewrite that carries tracked bitmaps over
 * (removal, rewrite): the new file holds their exact bits, not the
 * all-ones of armed regions.  So disarm every region first: the next
 * first write into one arms it again, in the new file, once arm_lock is
 * released.  A marker that saw a region armed before this set its bits
 * earlier (seq_cst), so the new file's export includes them.  Caller
 * holds arm_lock.
 */
static void
disarm_all (struct tracker *tr, const struct track_set *s)
{
  size_t k;
  uint64_t w;

  tr->arm_gen++;
  for (k = 0; k < s->nt; ++k)
    for (w = 0; w < (s->t[k].st->nregions + 63) / 64; ++w)
      atomic_store (&s->t[k].st->armed[w], 0);
}

/* Can the next change update the file where it is (qcow2_update: cost
 * independent of the bitmaps kept), or must it write a new file?  The
 * latter for a file not in our layout, and to compact one that is mostly
 * free clusters (qcow2_update never reuses them).
 */
static bool
can_update (struct tracker *tr)
{
  struct dbm_err ignored;

  /* A file damaged or replaced behind our back is written again from
   * memory instead (the identity check says why at the next flush).
   */
  return tr->img->fd >= 0 && qcow2_is_canonical (tr->img) &&
    !qcow2_wants_compaction (tr->img) &&
    qcow2_check_identity (tr->img, tr->cfg.path, &ignored) == 0;
}

/* Commit the checkpoint's model IMG2, after the cut.  Updated in place,
 * the bitmaps it disables keep their clusters, so first their bits on
 * disk are made exact: crash-safe, the regions that may be all-ones
 * (disarmed first: regions_settle); qemu mode, every present leaf (in_use
 * is still set on disk, so any order is safe there; the changed flags
 * are not enough, a marker sets a bit before it flags its leaf).
 * Returns as qcow2_commit.
 */
static int
store_checkpoint (struct tracker *tr, const struct track_set *before,
                  struct qcow2_image *img2, struct dbm_err *err)
{
  bool crash_safe = tr->cfg.mode == TRACKER_CRASH_SAFE;
  size_t i;
  int r;

  assert (atomic_load (&tr->set) != before);    /* after the cut */
  if (!can_update (tr))
    return qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                         qemu_lock_new_file, err);
  for (i = 0; i < before->nt; ++i) {
    struct tracked_state *t = before->t[i].st;

    r = crash_safe ? regions_settle (tr, t, err)
      : qcow2_write_present (tr->img, t->idx, err);
    if (r == -1)
      return -1;
  }
  DBM_TEST_HOOK (DBM_HOOK_SETTLED);
  return qcow2_update (img2, tr->img, err);
}

static void
retire (const struct track_set *s)
{
  size_t i;

  for (i = 0; i < s->nt; ++i)
    atomic_store (&s->t[i].st->retired, true);
}

/* A failed commit took the old model's changed flags (for the new file):
 * give them back, and forget the new model.
 */
static void
undo (struct tracker *tr, struct qcow2_image *img2)
{
  tracker_reflag_model (tr->img);
  tracker_drop_model (img2);
}

/* After a checkpoint, give each bitmap of S (just disabled) the bits the
 * file holds, read back, in place of the storage writers marked: a
 * marker that loaded the old set before the cut may still set a bit there
 * after the save (it marks the new set too), and status, a later rewrite
 * and the snapshot's frozen map must say what the file says.  The old
 * storage is retired (epoch.h), so such a marker writes into memory no
 * one reads.  Returns true if every bitmap of S was replaced; one that
 * could not be read back (out of memory) keeps its storage, a superset.
 */
static bool
refresh_frozen (struct tracker *tr, const struct track_set *s)
{
  bool all = true;
  size_t i;
  uint64_t j;

  for (i = 0; i < s->nt; ++i) {
    int idx = s->t[i].st->idx;
    struct bitmap *old = tr->img->bitmaps[idx].bits;
    struct dbm_err e;
    struct bitmap *bm = qcow2_read_bitmap (tr->img, idx, &e);

    if (bm == NULL) {
      all = false;
      continue;
    }
    /* What was read is on disk: not "changed". */
    for (j = 0; j < bm->nleaves; ++j)
      bitmap_take_changed (bm, j);
    atomic_store (&bm->any_changed, false);
    tr->img->bitmaps[idx].bits = bm;
    if (tracker_own_bitmaps (tr, tr->img, &e) == -1) {
      tr->img->bitmaps[idx].bits = old;
      bitmap_delete (bm);
      all = false;
      continue;
    }
    tracker_retire_bitmap (tr, old);
  }
  return all;
}

/* Mark every dirty range the bitmaps of S have in the file (as saved:
 * not the bits writers on the transitional set may still extend) in
 * FROZEN.  EXACT: refresh_frozen replaced them all, so the model's bits
 * are the file's and need not be read again.
 */
static int
mark_frozen (struct tracker *tr, const struct track_set *s, bool exact,
             struct bitmap *frozen, struct dbm_err *err)
{
  size_t i;

  for (i = 0; i < s->nt; ++i) {
    int idx = s->t[i].st->idx;
    struct bitmap *bm = exact ? tr->img->bitmaps[idx].bits
      : qcow2_read_bitmap (tr->img, idx, err);
    unsigned g;
    uint64_t a, b;

    if (bm == NULL)
      return -1;
    g = bm->granularity_bits;
    a = bitmap_find (bm, 0, true);
    while (a < bm->nbits) {
      b = bitmap_find (bm, a, false);
      if (bitmap_mark (frozen, a << g, (b - a) << g) == -1) {
        if (!exact)
          bitmap_delete (bm);
        return dbm_seterr (err, ENOMEM, "out of memory");
      }
      a = b < bm->nbits ? bitmap_find (bm, b, true) : b;
    }
    if (!exact)
      bitmap_delete (bm);
  }
  return 0;
}

/* Drop bitmap J from IMG2, a clone of the model: its storage is the
 * tracker's, kept in GONE (retired once IMG2 is in force).
 */
static void
drop_from_clone (struct qcow2_image *img2, uint32_t j, struct bitmap **gone,
                 size_t *ngone)
{
  gone[(*ngone)++] = img2->bitmaps[j].bits;
  img2->bitmaps[j].bits = NULL;
  qcow2_remove_bitmap (img2, j);
}

/* Does bitmap J (a zero map's name) have the bitmap it names? */
static bool
has_base (const struct qcow2_image *img, uint32_t j)
{
  const char *name = img->bitmaps[j].name;
  CLEANUP_FREE char *base =
    strndup (name, strlen (name) - strlen (QCOW2_ZERO_SUFFIX));

  return base == NULL || qcow2_find_bitmap (img, base) >= 0;
}

/* Is bitmap J of the model one of S's? */
static bool
in_set (const struct track_set *s, uint32_t j)
{
  size_t i;

  for (i = 0; i < s->nt; ++i)
    if ((uint32_t) s->t[i].st->idx == j)
      return true;
  return false;
}

/* After a checkpoint: store the zero maps of the bitmaps it froze in the
 * file, each as its companion (qcow2.h: QCOW2_ZERO_SUFFIX), in a change
 * of its own, and set our autoclear bit.  A file that had lost that bit
 * (QEMU opened it read-write since) may hold companions from before:
 * stale, so they go first.  Nothing to store costs nothing.  A failure
 * only loses the maps (conservative: no range is then called zero): the
 * checkpoint stands, and the failure is logged.  Caller holds all four
 * locks; the states of BEFORE are closed.
 */
static void
save_zero_maps (struct tracker *tr, const struct track_set *before)
{
  CLEANUP_FREE struct bitmap **z = tracker_zero_capture (tr, before);
  CLEANUP_FREE struct bitmap **gone = NULL;
  struct qcow2_image *img2;
  struct dbm_err e;
  size_t i, n = 0, ngone = 0, owned_before = tr->nowned;
  uint32_t j;
  int r, k;

  for (i = 0; z && i < before->nt; ++i)
    n += z[i] != NULL;
  if (n == 0)
    return;
  img2 = qcow2_clone (tr->img, &e);
  gone = calloc (tr->img->nb_bitmaps + 1, sizeof (struct bitmap *));
  if (img2 == NULL || gone == NULL) {
    tracker_drop_model (img2);
    dbm_seterr (&e, ENOMEM, "out of memory");
    goto fail;
  }
  if (!(img2->autoclear_features & QCOW2_AUTOCLEAR_DBM_ZERO))
    for (j = img2->nb_bitmaps; j-- > 0;)
      if (qcow2_zero_map_shaped (img2->bitmaps[j].name) &&
          has_base (img2, j) &&
          !(img2->bitmaps[j].flags & BME_FLAG_AUTO) &&
          !in_set (before, j)) {
        tr->cfg.log ("%s: zero map '%s' dropped: another program opened "
                     "the file read-write since it was saved, so it may "
                     "be stale", tr->cfg.path, img2->bitmaps[j].name);
        drop_from_clone (img2, j, gone, &ngone);
      }
  img2->autoclear_features |= QCOW2_AUTOCLEAR_DBM_ZERO;
  for (i = 0; i < before->nt; ++i) {
    const struct qcow2_bitmap *b = &tr->img->bitmaps[before->t[i].st->idx];
    CLEANUP_FREE char *name = z[i] ? qcow2_zero_map_name (b->name) : NULL;

    if (name == NULL) {
      /* Too long a name, or out of memory: this map is not kept. */
      bitmap_delete (z[i]);
      z[i] = NULL;
      continue;
    }
    if ((k = qcow2_find_bitmap (img2, name)) >= 0)
      drop_from_clone (img2, k, gone, &ngone);
    if (qcow2_add_bitmap (img2, name, b->granularity_bits, 0, 0, &e) == -1) {
      tracker_drop_model (img2);
      goto fail;
    }
    bitmap_delete (img2->bitmaps[img2->nb_bitmaps - 1].bits);
    img2->bitmaps[img2->nb_bitmaps - 1].bits = z[i];
    z[i] = NULL;
    if (tracker_own_bitmaps (tr, img2, &e) == -1) {
      /* Only this map is not owned yet: free it with the model. */
      bitmap_delete (img2->bitmaps[img2->nb_bitmaps - 1].bits);
      tracker_drop_model (img2);
      goto fail;
    }
  }
  r = can_update (tr) ? qcow2_update (img2, tr->img, &e)
    : qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                    qemu_lock_new_file, &e);
  if (r == -1) {
    undo (tr, img2);
    goto fail;
  }
  adopt (tr, img2);
  for (i = 0; i < ngone; ++i)
    tracker_retire_bitmap (tr, gone[i]);
  if (r == 1)
    tr->cfg.log ("%s: zero maps saved, but not yet durable (%s); the next "
                 "persist or flush retries", tr->cfg.path, e.msg);
  return;

 fail:
  /* The maps made for the file are the tracker's since they were owned:
   * forget them (the model that held them is gone).
   */
  for (i = owned_before; i < tr->nowned; ++i)
    bitmap_delete (tr->owned[i]);
  tr->nowned = owned_before;
  for (i = 0; z && i < before->nt; ++i)
    bitmap_delete (z[i]);
  tr->cfg.log ("%s: the checkpoint's zero maps could not be saved (%s): "
               "no range of the frozen bitmaps is reported zero",
               tr->cfg.path, e.msg);
}

int
tracker_checkpoint (struct tracker *tr, const char *name,
                    unsigned granularity_bits, struct dbm_err *err)
{
  bool taken;

  return tracker_checkpoint_frozen (tr, name, granularity_bits, NULL, &taken,
                                    err);
}

int
tracker_checkpoint_frozen (struct tracker *tr, const char *name,
                           unsigned granularity_bits, struct bitmap *frozen,
                           bool *taken, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  struct track_set *before, *both, *after;
  CLEANUP_FREE struct tracked_state **states = NULL;
  struct tracked_state *nst;
  struct qcow2_image *img2;
  uint32_t in_use = tr->cfg.mode == TRACKER_QEMU ? BME_FLAG_IN_USE : 0;
  size_t i;
  int idx, r;
  bool exact;

  *taken = false;
  if (tr->img == NULL)
    return dbm_seterr (err, EAGAIN, "%s: no client has connected yet, so "
                       "the file does not exist (it is created at the first "
                       "connection)", tr->cfg.path);
  if (tr->img->layout != QCOW2_LAYOUT_QEMU)
    return dbm_seterr (err, ENOTSUP, "%s: checkpoints need QEMU's layout "
                       "(bitmap-format=qemu)", tr->cfg.path);
  if (tracker_activate (tr, err) == -1)
    return -1;
  assert (atomic_load (&tr->active));
  before = atomic_load (&tr->set);
  if (qcow2_find_bitmap (tr->img, name) >= 0)
    return dbm_seterr (err, EEXIST, "%s: bitmap '%s' already exists",
                       tr->cfg.path, name);
  img2 = qcow2_clone (tr->img, err);
  if (img2 == NULL)
    return -1;
  if (qcow2_add_bitmap (img2, name, granularity_bits,
                        BME_FLAG_AUTO | in_use, 0, err) == -1) {
    tracker_drop_model (img2);
    return -1;
  }
  if (tracker_own_bitmaps (tr, img2, err) == -1) {
    /* Only the new bitmap is not owned yet: it is the one that failed. */
    bitmap_delete (img2->bitmaps[img2->nb_bitmaps - 1].bits);
    tracker_drop_model (img2);
    return -1;
  }
  idx = img2->nb_bitmaps - 1;
  states = calloc (before->nt + 1, sizeof (struct tracked_state *));
  nst = tracker_new_state (tr, img2, idx, err);
  if (states == NULL || nst == NULL) {
    tracker_drop_model (img2);
    return states ? -1 : dbm_seterr (err, ENOMEM, "out of memory");
  }
  for (i = 0; i < before->nt; ++i)
    states[i] = before->t[i].st;
  states[before->nt] = nst;
  both = tracker_new_set (tr, states, before->nt + 1, err);
  after = tracker_new_set (tr, &nst, 1, err);
  if (both == NULL || after == NULL) {
    /* Never published: retiring frees them at the next reclaim. */
    atomic_store (&nst->retired, true);
    if (both)
      tracker_retire_set (tr, both);
    if (after)
      tracker_retire_set (tr, after);
    tracker_retire_state (tr, nst);
    tracker_retire_bitmap (tr, img2->bitmaps[idx].bits);
    tracker_drop_model (img2);
    return -1;
  }
  for (i = 0; i < before->nt; ++i)
    img2->bitmaps[before->t[i].st->idx].flags &=
      ~(BME_FLAG_AUTO | BME_FLAG_IN_USE);

  /* The cut.  From here a write lands in the new bitmap (and perhaps the
   * old ones too, which the commit below may or may not include).  A
   * marker still on the old set re-checks after marking and comes here.
   * In crash-safe mode no write into a new region is forwarded before the
   * new file holds it: arming needs arm_lock, which we hold.
   */
  tracker_zero_close (tr, before, true);
  tracker_publish (tr, both);
  r = store_checkpoint (tr, before, img2, err);
  if (r == -1) {
    /* Markers on BOTH marked the old bitmaps too: nothing is lost. */
    atomic_store (&nst->retired, true);
    tracker_publish (tr, before);
    tracker_zero_close (tr, before, false);
    tracker_retire_set (tr, both);
    tracker_retire_set (tr, after);
    tracker_retire_state (tr, nst);
    tracker_retire_bitmap (tr, img2->bitmaps[idx].bits);
    undo (tr, img2);
    return -1;
  }
  /* The old bitmaps are final on disk: exact, disabled, in_use clear.
   * Their storage stays (the model's disabled bitmaps); their states and
   * the sets that led to them go once no marker reads them.
   */
  retire (before);
  tracker_publish (tr, after);
  adopt (tr, img2);
  tr->generation++;
  tracker_set_in_use_cleared (tr, false);
  tr->cfg.log ("%s: checkpoint: bitmap '%s' now records writes; %zu "
               "bitmap(s) disabled and saved", tr->cfg.path, name,
               before->nt);
  *taken = true;
  exact = refresh_frozen (tr, before);
  /* FROZEN: exactly the bits saved (read back from the file). */
  if (frozen && mark_frozen (tr, before, exact, frozen, err) == -1) {
    char cause[sizeof err->msg];

    snprintf (cause, sizeof cause, "%s", err->msg);
    r = dbm_seterr (err, ENOMEM, "%s: checkpoint '%s' taken, but its frozen "
                    "bitmaps could not be read back (%s)", tr->cfg.path,
                    name, cause);
  }
  save_zero_maps (tr, before);
  /* Last use of BEFORE: reclaim may free it. */
  for (i = 0; i < before->nt; ++i)
    tracker_retire_state (tr, before->t[i].st);
  tracker_retire_set (tr, both);
  tracker_retire_set (tr, before);
  epoch_reclaim ();
  if (r == -1)
    return -1;
  return not_durable (tr, r, "checkpoint", name, err);
}

/* The export is larger than the file: grow every bitmap that must cover
 * it (in QEMU's layout all of them, since each covers the virtual size;
 * in the draft layout the tracked one) and mark the new area dirty: it
 * was never backed up.
 */
int
tracker_grow (struct tracker *tr, uint64_t want, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  struct track_set *before = atomic_load (&tr->set), *after;
  CLEANUP_FREE struct tracked_state **states = NULL;
  CLEANUP_FREE bool *grows = NULL;
  struct qcow2_image *img2;
  bool qemu = tr->img->layout == QCOW2_LAYOUT_QEMU;
  uint64_t have = tracker_size (tr);
  size_t i, owned_before;
  uint32_t j;
  int r;

  assert (atomic_load (&tr->active));
  img2 = qcow2_clone (tr->img, err);
  if (img2 == NULL)
    return -1;
  grows = calloc (img2->nb_bitmaps + 1, sizeof *grows);
  states = calloc (before->nt + 1, sizeof (struct tracked_state *));
  if (grows == NULL || states == NULL) {
    tracker_drop_model (img2);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  if (qemu)
    img2->size = want;
  for (i = 0; i < before->nt; ++i)
    grows[before->t[i].st->idx] = true;
  for (j = 0; j < img2->nb_bitmaps; ++j) {
    struct qcow2_bitmap *b = &img2->bitmaps[j];
    if (!qemu && !grows[j])
      continue;
    grows[j] = true;
    b->size = want;
    b->bits = bitmap_new (want, b->granularity_bits);
    if (b->bits == NULL || qcow2_check_bitmap_params (want, b->name,
                                                      b->granularity_bits,
                                                      img2->cluster_bits,
                                                      err) == -1) {

      uint32_t k;

      if (b->bits == NULL)
        dbm_seterr (err, ENOMEM, "out of memory");
      bitmap_delete (b->bits);
      b->bits = NULL;
      /* The storage made for the bitmaps before this one: nobody else
       * refers to it yet (growth is retried at every connection, so
       * nothing may be left behind).
       */
      for (k = 0; k < j; ++k)
        if (grows[k]) {
          bitmap_delete (img2->bitmaps[k].bits);
          img2->bitmaps[k].bits = NULL;
        }
      tracker_drop_model (img2);
      return -1;
    }
  }
  owned_before = tr->nowned;
  if (tracker_own_bitmaps (tr, img2, err) == -1) {
    /* Own none of the new storage (entries appended since), free it. */
    tr->nowned = owned_before;
    for (j = 0; j < img2->nb_bitmaps; ++j)
      if (grows[j]) {
        bitmap_delete (img2->bitmaps[j].bits);
        img2->bitmaps[j].bits = NULL;
      }
    tracker_drop_model (img2);
    return -1;
  }
  for (i = 0; i < before->nt; ++i)
    if ((states[i] = tracker_new_state (tr, img2, before->t[i].st->idx,
                                        err)) == NULL)
      goto abandon;
  after = tracker_new_set (tr, states, before->nt, err);
  if (after == NULL)
    goto abandon;

  /* Publish before copying: a marker still on the old set either set its
   * bits before the copy reads them, or re-checks and marks the new set.
   * The new states start with empty zero maps (only conservative).
   */
  tracker_zero_close (tr, before, true);
  tracker_publish (tr, after);
  for (j = 0; j < img2->nb_bitmaps; ++j) {
    if (!grows[j])
      continue;
    /* A zero map says nothing of the new area: it stays clear there. */
    if (bitmap_copy (img2->bitmaps[j].bits, tr->img->bitmaps[j].bits) == -1 ||
        (!qcow2_is_zero_map (img2, j) &&
         bitmap_mark (img2->bitmaps[j].bits, have, want - have) == -1)) {
      dbm_seterr (err, ENOMEM, "out of memory");
      goto rollback;
    }
  }
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                     qemu_lock_new_file, err);
  if (r == -1)
    goto rollback;
  retire (before);
  /* The storage that was grown is replaced: retire it with the model. */
  for (j = 0; j < img2->nb_bitmaps; ++j)
    if (grows[j])
      tracker_retire_bitmap (tr, tr->img->bitmaps[j].bits);
  adopt (tr, img2);
  tr->generation++;
  for (i = 0; i < before->nt; ++i)
    tracker_retire_state (tr, before->t[i].st);
  tracker_retire_set (tr, before);
  epoch_reclaim ();
  tr->cfg.log ("%s: the export grew from %" PRIu64 " to %" PRIu64 " bytes: "
               "bitmaps grown, the new area marked dirty", tr->cfg.path,
               have, want);
  return not_durable (tr, r, "growth", NULL, err);

 rollback:
  /* Same dance backwards: publish the old set, then copy back what was
   * marked in the new storage meanwhile (the part that fits).
   */
  retire (after);
  tracker_publish (tr, before);
  tracker_zero_close (tr, before, false);
  for (j = 0; j < img2->nb_bitmaps; ++j)
    if (grows[j] &&
        bitmap_copy (tr->img->bitmaps[j].bits, img2->bitmaps[j].bits) == -1)
      /* Out of memory twice over: say everything is dirty, as recovery
       * after a crash would.
       */
      bitmap_set_bits (tr->img->bitmaps[j].bits, 0, UINT64_MAX);
  for (i = 0; i < after->nt; ++i)
    tracker_retire_state (tr, after->t[i].st);
  tracker_retire_set (tr, after);
  for (j = 0; j < img2->nb_bitmaps; ++j)
    if (grows[j])
      tracker_retire_bitmap (tr, img2->bitmaps[j].bits);
  undo (tr, img2);
  return -1;

 abandon:
  /* Nothing was published: give back what was built. */
  for (i = 0; i < before->nt && states[i]; ++i) {
    atomic_store (&states[i]->retired, true);
    tracker_retire_state (tr, states[i]);
  }
  for (j = 0; j < img2->nb_bitmaps; ++j)
    if (grows[j])
      tracker_retire_bitmap (tr, img2->bitmaps[j].bits);
  tracker_drop_model (img2);
  return -1;
}

/* Removal and rewrite: a new file whose tracked bitmaps carry over, exact
 * (so every region is disarmed first), adopted on success.  On failure
 * the old file, whatever became of it, keeps its all-ones regions on
 * disk and the next first writes re-arm regions: only conservative.
 * Caller holds all four locks.  Returns as qcow2_commit.
 */
static int
replace_file (struct tracker *tr, const struct track_set *s,
              struct qcow2_image *img2, struct dbm_err *err)
{
  size_t k;
  uint64_t w;
  int r;

  disarm_all (tr, s);
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                    qemu_lock_new_file, err);
  if (r == -1) {
    undo (tr, img2);
    return -1;
  }
  /* The new file is exact everywhere (an arming still in flight marks
   * its region again when it writes it anew).
   */
  for (k = 0; k < s->nt; ++k)
    for (w = 0; w < (s->t[k].st->nregions + 63) / 64; ++w)
      atomic_store (&s->t[k].st->ones[w], 0);
  adopt (tr, img2);
  return r;
}

int
tracker_remove (struct tracker *tr, const char *name, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  struct track_set *s;
  struct qcow2_image *img2;
  struct bitmap *gone, *zgone;
  size_t k;
  int i, zi, r;

  if (tr->img == NULL || (i = qcow2_find_bitmap (tr->img, name)) < 0)
    return dbm_seterr (err, ENOENT, "%s: no bitmap named '%s'",
                       tr->cfg.path, name);
  if (tracker_activate (tr, err) == -1)
    return -1;
  s = atomic_load (&tr->set);
  for (k = 0; k < s->nt; ++k)
    if (s->t[k].st->idx == i)
      return dbm_seterr (err, EBUSY, "%s: bitmap '%s' is recording writes; "
                         "only a disabled bitmap (one a checkpoint ended) "
                         "can be removed", tr->cfg.path, name);
  if (qcow2_bitmap_read_only (tr->img, &tr->img->bitmaps[i]))
    return dbm_seterr (err, EPERM, "%s: bitmap '%s' is read_only",
                       tr->cfg.path, name);
  img2 = qcow2_clone (tr->img, err);
  if (img2 == NULL)
    return -1;
  /* Its zero map goes with it (the higher index first). */
  zi = qcow2_zero_map_of (tr->img, i);
  zgone = zi >= 0 ? tr->img->bitmaps[zi].bits : NULL;
  gone = tr->img->bitmaps[i].bits;
  img2->bitmaps[i].bits = NULL;         /* the tracker owns them */
  if (zi > i) {
    img2->bitmaps[zi].bits = NULL;
    qcow2_remove_bitmap (img2, zi);
  }
  qcow2_remove_bitmap (img2, i);
  if (zi >= 0 && zi < i) {
    img2->bitmaps[zi].bits = NULL;
    qcow2_remove_bitmap (img2, zi);
  }
  if (can_update (tr)) {
    /* The tracked bitmaps keep their clusters: armed regions stay so. */
    r = qcow2_update (img2, tr->img, err);
    if (r == -1) {
      undo (tr, img2);
      return -1;
    }
    adopt (tr, img2);
  }
  else if ((r = replace_file (tr, s, img2, err)) == -1)
    return -1;
  /* A marker that loaded a set from before the checkpoint that disabled
   * this bitmap may still read it: retired, not freed.
   */
  tracker_retire_bitmap (tr, gone);
  tracker_retire_bitmap (tr, zgone);
  epoch_reclaim ();
  tr->cfg.log ("%s: bitmap '%s' removed", tr->cfg.path, name);
  return not_durable (tr, r, "removal", name, err);
}

int
tracker_rewrite (struct tracker *tr, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  struct track_set *s = atomic_load (&tr->set);
  struct qcow2_image *img2;
  int r;

  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  img2 = qcow2_clone (tr->img, err);
  if (img2 == NULL)
    return -1;
  r = replace_file (tr, s, img2, err);
  if (r == -1)
    return -1;
  tr->identity_logged = false;
  tr->cfg.log ("%s: the bitmap file was written again from memory",
               tr->cfg.path);
  return not_durable (tr, r, "rewrite", NULL, err);
}

/* The smallest cluster size whose L1 table can describe a disk of SIZE
 * bytes (QEMU's limit: 32 MiB of L1), or 0 if none can: QEMU's qcow2
 * cannot describe a disk larger than 2 EiB, even with 2 MiB clusters.
 */
static unsigned
cluster_bits_for (uint64_t size)
{
  unsigned c;

  for (c = QCOW2_DEFAULT_CLUSTER_BITS; c <= QCOW2_MAX_CLUSTER_BITS; ++c) {
    uint64_t per_l1 = (UINT64_C (1) << (c - 3)) << c;   /* C/8 L2 entries */
    uint64_t entries = size / per_l1 + (size % per_l1 != 0);
    if (entries <= QCOW2_MAX_L1_BYTES / 8)
      return c;
  }
  return 0;
}

/* The granularity of a bitmap we create for SIZE bytes: the configured
 * one, or if that is the default and too fine for the export, the finest
 * that fits (logged).  -1 with the reason if none does.
 */
static int
granularity_for (struct tracker *tr, uint64_t size, unsigned cluster_bits,
                 unsigned *gp, struct dbm_err *err)
{
  unsigned g = tr->cfg.granularity_bits;

  if (qcow2_check_bitmap_params (size, tr->cfg.bitmap_name, g, cluster_bits,
                                 err) == 0) {
    *gp = g;
    return 0;
  }
  if (!tr->cfg.granularity_default)
    return -1;
  while (++g <= BME_MAX_GRANULARITY_BITS)
    if (qcow2_check_bitmap_params (size, tr->cfg.bitmap_name, g,
                                   cluster_bits, err) == 0) {
      tr->cfg.log ("%s: bitmap '%s': the default granularity %" PRIu64
                   " is too fine for a %" PRIu64 "-byte export (a bitmap "
                   "holds at most 512 MiB); using %" PRIu64, tr->cfg.path,
                   tr->cfg.bitmap_name,
                   UINT64_C (1) << tr->cfg.granularity_bits, size,
                   UINT64_C (1) << g);
      *gp = g;
      return 0;
    }
  return -1;
}

int
tracker_set_size (struct tracker *tr, uint64_t size, struct dbm_err *err)
{
  uint64_t want = (size + 511) & ~UINT64_C (511);
  uint64_t have;
  bool created = false;
  unsigned g;
  int r;

  if (size == 0)
    return 0;
  if (size > tr->export_size)
    tr->export_size = size;
  if (tr->img && tracker_activate (tr, err) == -1)
    return -1;
  have = tracker_size (tr);
  if (have) {
    if (want < have)
      return dbm_seterr (err, EINVAL, "%s: export size %" PRIu64 " (rounded "
                         "up to %" PRIu64 ") is smaller than the size %" PRIu64
                         " of bitmap '%s' in the file: shrinking is not "
                         "supported", tr->cfg.path, size, want, have,
                         tr->cfg.bitmap_name);
    if (want > have)
      return tracker_grow (tr, want, err);
    return 0;
  }
  if (tr->img == NULL) {
    bool draft = tr->cfg.layout == QCOW2_LAYOUT_DRAFT2015;
    unsigned c = draft ? QCOW2_DEFAULT_CLUSTER_BITS : cluster_bits_for (want);

    if (c == 0)
      return dbm_seterr (err, EFBIG, "%s: the export (%" PRIu64 " bytes) is "
                         "larger than any qcow2 file can describe (2 EiB, "
                         "with 2 MiB clusters); it cannot be tracked in "
                         "QEMU's layout", tr->cfg.path, size);
    tr->img = qcow2_new (draft ? 0 : size, c, tr->cfg.layout, err);
    if (tr->img == NULL)
      return -1;
    created = true;
  }
  /* Bitmaps cover whole 512-byte sectors (the size rounded up). */
  if (granularity_for (tr, want, tr->img->cluster_bits, &g, err) == -1) {
    if (created) {
      qcow2_close (tr->img);
      tr->img = NULL;
    }
    return -1;
  }
  r = qcow2_add_bitmap (tr->img, tr->cfg.bitmap_name, g,
                        tr->img->layout == QCOW2_LAYOUT_QEMU ? BME_FLAG_AUTO : 0,
                        size, err);
  if (r == 0)
    r = tracker_commit_and_track (tr, NULL, err);
  if (r == 1)
    return -1;          /* tracking, but not durable yet: retried next time */
  if (r == -1) {
    if (created) {
      qcow2_close (tr->img);
      tr->img = NULL;
      if (err->errnum == EEXIST)
        dbm_seterr (err, EEXIST, "%s: the file appeared after nbdkit "
                    "started (another writer?): not overwriting it; "
                    "restart nbdkit to use it", tr->cfg.path);
    }
    else {
      int i = qcow2_find_bitmap (tr->img, tr->cfg.bitmap_name);
      if (i >= 0)
        qcow2_remove_bitmap (tr->img, i);
    }
    return -1;
  }
  if (created)
    tr->cfg.log ("created %s (%s layout): bitmap '%s' for %" PRIu64 " bytes",
                 tr->cfg.path, qcow2_layout_name (tr->img->layout),
                 tr->cfg.bitmap_name, want);
  return 0;
}

int
tracker_save (struct tracker *tr, struct dbm_err *err)
{
  struct dbm_err ignored;

  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  /* The file changed behind our back: the bits in memory are the truth. */
  if (qcow2_check_identity (tr->img, tr->cfg.path, &ignored) == -1 &&
      tracker_rewrite (tr, err) == -1)
    return -1;
  return tracker_persist (tr, err);
}

int
tracker_close (struct tracker *tr, struct dbm_err *err)
{
  int r = 0;

  if (tr->img == NULL || !atomic_load (&tr->active)) {
    tracker_free (tr);          /* never written: leave the file alone */
    return 0;
  }
  if (tracker_save (tr, err) == -1)
    r = -1;
  /* Only after the data is durable may in_use be cleared. */
  if (r == 0 && tr->img && tr->cfg.mode == TRACKER_QEMU)
    r = tracker_write_in_use (tr, false, err);
  if (r == 0 && tr->img) {
    r = qcow2_write_state (tr->img, tr->img->dbm_state &
                           ~(DBM_STATE_RUNNING | DBM_STATE_SNAPSHOTS), err);
    if (r == 0)
      r = qcow2_sync (tr->img, err);
  }
  tracker_free (tr);
  return r;
}
