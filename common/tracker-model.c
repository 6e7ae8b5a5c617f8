/* Replacing the file's model while clients keep writing: checkpoints,
 * growth of the export, removal of disabled bitmaps; and the status line.
 *
 * Each change builds a new model (qcow2_clone: new metadata, and either
 * the same bit storage or new storage filled from the old), commits it as
 * a new file (temporary file + rename: the file passes qemu-img check at
 * every instant, and a failure leaves the old file in force), then adopts
 * it.  All four tracker locks are held throughout, so no persist, arming
 * write or in_use change touches either file meanwhile.  Markers keep
 * setting bits in memory; the published track_set tells them where, and
 * mark_slow's re-check covers a marker that raced with the replacement.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "qemu-lock.h"
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
disarm_all (const struct track_set *s)
{
  size_t k;
  uint64_t w;

  for (k = 0; k < s->nt; ++k)
    for (w = 0; w < (s->t[k].st->nregions + 63) / 64; ++w)
      atomic_store (&s->t[k].st->armed[w], 0);
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

int
tracker_checkpoint (struct tracker *tr, const char *name,
                    unsigned granularity_bits, struct dbm_err *err)
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

  if (tr->img == NULL)
    return dbm_seterr (err, EAGAIN, "%s: no client has connected yet, so "
                       "the file does not exist (it is created at the first "
                       "connection)", tr->cfg.path);
  if (tr->img->layout != QCOW2_LAYOUT_QEMU)
    return dbm_seterr (err, ENOTSUP, "%s: checkpoints need QEMU's layout "
                       "(bitmap-format=qemu)", tr->cfg.path);
  if (tracker_activate (tr, err) == -1)
    return -1;
  before = atomic_load (&tr->set);
  if (qcow2_find_bitmap (tr->img, name) >= 0)
    return dbm_seterr (err, EEXIST, "%s: bitmap '%s' already exists",
                       tr->cfg.path, name);
  img2 = qcow2_clone (tr->img, err);
  if (img2 == NULL)
    return -1;
  if (qcow2_add_bitmap (img2, name, granularity_bits,
                        BME_FLAG_AUTO | in_use, 0, err) == -1 ||
      tracker_own_bitmaps (tr, img2, err) == -1) {
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
  atomic_store (&tr->set, both);
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                     qemu_lock_new_file, err);
  if (r == -1) {
    /* Markers on BOTH marked the old bitmaps too: nothing is lost. */
    atomic_store (&nst->retired, true);
    atomic_store (&tr->set, before);
    undo (tr, img2);
    return -1;
  }
  /* The old bitmaps are final on disk: exact, disabled, in_use clear. */
  retire (before);
  atomic_store (&tr->set, after);
  adopt (tr, img2);
  tr->generation++;
  atomic_store (&tr->in_use_cleared, false);
  tr->cfg.log ("%s: checkpoint: bitmap '%s' now records writes; %zu "
               "bitmap(s) disabled and saved", tr->cfg.path, name,
               before->nt);
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
  size_t i;
  uint32_t j;
  int r;

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
      struct dbm_err ignored;

      if (b->bits == NULL)
        dbm_seterr (err, ENOMEM, "out of memory");
      bitmap_delete (b->bits);
      b->bits = NULL;
      /* The storage made for the bitmaps before this one: let the
       * tracker free it (nobody else refers to it yet).
       */
      tracker_own_bitmaps (tr, img2, &ignored);
      tracker_drop_model (img2);
      return -1;
    }
  }
  if (tracker_own_bitmaps (tr, img2, err) == -1) {
    tracker_drop_model (img2);
    return -1;
  }
  for (i = 0; i < before->nt; ++i)
    if ((states[i] = tracker_new_state (tr, img2, before->t[i].st->idx,
                                        err)) == NULL) {
      tracker_drop_model (img2);
      return -1;
    }
  after = tracker_new_set (tr, states, before->nt, err);
  if (after == NULL) {
    tracker_drop_model (img2);
    return -1;
  }

  /* Publish before copying: a marker still on the old set either set its
   * bits before the copy reads them, or re-checks and marks the new set.
   */
  atomic_store (&tr->set, after);
  for (j = 0; j < img2->nb_bitmaps; ++j) {
    if (!grows[j])
      continue;
    if (bitmap_copy (img2->bitmaps[j].bits, tr->img->bitmaps[j].bits) == -1 ||
        bitmap_mark (img2->bitmaps[j].bits, have, want - have) == -1) {
      dbm_seterr (err, ENOMEM, "out of memory");
      goto rollback;
    }
  }
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                     qemu_lock_new_file, err);
  if (r == -1)
    goto rollback;
  retire (before);
  adopt (tr, img2);
  tr->generation++;
  tr->cfg.log ("%s: the export grew from %" PRIu64 " to %" PRIu64 " bytes: "
               "bitmaps grown, the new area marked dirty", tr->cfg.path,
               have, want);
  return not_durable (tr, r, "growth", NULL, err);

 rollback:
  /* Same dance backwards: publish the old set, then copy back what was
   * marked in the new storage meanwhile (the part that fits).
   */
  retire (after);
  atomic_store (&tr->set, before);
  for (j = 0; j < img2->nb_bitmaps; ++j)
    if (grows[j] &&
        bitmap_copy (tr->img->bitmaps[j].bits, img2->bitmaps[j].bits) == -1)
      /* Out of memory twice over: say everything is dirty, as recovery
       * after a crash would.
       */
      bitmap_set_bits (tr->img->bitmaps[j].bits, 0, UINT64_MAX);
  undo (tr, img2);
  return -1;
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
  size_t k;
  int i, r;

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
  img2->bitmaps[i].bits = NULL;         /* the tracker owns it */
  qcow2_remove_bitmap (img2, i);
  disarm_all (s);
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                     qemu_lock_new_file, err);
  if (r == -1) {
    undo (tr, img2);
    return -1;
  }
  adopt (tr, img2);
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
  disarm_all (s);
  r = qcow2_commit (img2, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                     qemu_lock_new_file, err);
  if (r == -1) {
    /* The old file, whatever became of it, keeps its all-ones regions on
     * disk; the next first writes re-arm regions, which is only
     * conservative.
     */
    undo (tr, img2);
    return -1;
  }
  adopt (tr, img2);
  tr->identity_logged = false;
  tr->cfg.log ("%s: the bitmap file was written again from memory",
               tr->cfg.path);
  return not_durable (tr, r, "rewrite", NULL, err);
}

/* JSON string: quote, backslash and control bytes escaped; other bytes
 * as they are (a name is bytes, usually UTF-8).
 */
static void
put_json_string (FILE *f, const char *s)
{
  fputc ('"', f);
  for (; *s; ++s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf (f, "\\%c", c);
    else if (c < 0x20)
      fprintf (f, "\\u%04x", c);
    else
      fputc (c, f);
  }
  fputc ('"', f);
}

char *
tracker_status_json (struct tracker *tr, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  struct track_set *s = atomic_load (&tr->set);
  char *buf = NULL;
  size_t len = 0, k;
  FILE *f = open_memstream (&buf, &len);
  uint32_t i;

  if (f == NULL) {
    dbm_seterr (err, errno, "open_memstream: %m");
    return NULL;
  }
  fputs ("{\"file\":", f);
  put_json_string (f, tr->cfg.path);
  fprintf (f, ",\"layout\":\"%s\",\"mode\":\"%s\",\"export_size\":%" PRIu64
           ",\"generation\":%" PRIu64 ",\"last_persist\":%" PRId64
           ",\"bitmaps\":[",
           qcow2_layout_name (tr->img ? tr->img->layout : tr->cfg.layout),
           tr->cfg.mode == TRACKER_QEMU ? "qemu" : "crash-safe",
           tracker_size (tr), tr->generation, tr->last_persist);
  for (i = 0; tr->img && i < tr->img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &tr->img->bitmaps[i];
    bool tracked = false;
    uint64_t dirty = 0;

    for (k = 0; k < s->nt; ++k)
      tracked |= s->t[k].st->idx == (int) i;
    if (b->bits && !b->inconsistent) {
      dirty = bitmap_count (b->bits) << b->granularity_bits;
      if (dirty > b->size)
        dirty = b->size;
    }
    fputs (i ? ",{\"name\":" : "{\"name\":", f);
    put_json_string (f, b->name);
    fprintf (f, ",\"granularity\":%" PRIu64 ",\"enabled\":%s,\"in_use\":%s,"
             "\"tracked\":%s,\"dirty_bytes\":%" PRIu64 "}",
             UINT64_C (1) << b->granularity_bits,
             qcow2_bitmap_enabled (tr->img, b) ? "true" : "false",
             (b->flags & BME_FLAG_IN_USE) ? "true" : "false",
             tracked ? "true" : "false", dirty);
  }
  fputs ("]}", f);
  if (fclose (f) != 0) {
    free (buf);
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  return buf;
}
