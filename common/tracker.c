/* The tracker: opening the file, bringing it into use, marking, persist,
 * flush and quiesce (tracker.h has the two persistence modes).
 *
 * States of the tracker, and what moves it:
 *
 *   OPENED     tracker_open: the file (if any) validated and locked, the
 *              in_use policy and a new bitmap applied in memory only;
 *              tr->set is the empty set, nothing on disk has changed
 *   ACTIVE     the first writer (tracker_set_size -> tracker_activate,
 *              or a creation) wrote those changes (in_use in qemu mode,
 *              the running state) and published the tracked set;
 *              tr->active is set once, under the caller's serialisation
 *              (the filter's size_lock), and never cleared
 *   QUIESCED   qemu mode at the quit signal: bitmaps saved and in_use
 *              cleared on disk (in_use_cleared, under quiesce_lock); a
 *              mark that still arrives sets in_use again first
 *   CLOSED     tracker_close: the final save, in_use cleared, running
 *              state cleared; the tracker freed
 *
 * Model changes (tracker-model.c) need ACTIVE and hold, in order,
 * quiesce_lock, persist_lock, arm_lock, sync_lock; markers hold none on
 * the fast path and enter an epoch (epoch.h) while they read the set.
 */
#include <config.h>

#include <assert.h>
#include <dirent.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic-file.h"
#include "cleanup.h"
#include "bitmap-name.h"
#include "qemu-lock.h"
#include "tracker.h"
#include "regions.h"
#include "restart-report.h"
#include "tracker-internal.h"

static void
nolog (const char *fmt, ...)
{
}


size_t
tracker_ntracked (struct tracker *tr)
{
  struct epoch_slot *e = epoch_enter ();
  size_t n = atomic_load (&tr->set)->nt;

  epoch_leave (e);
  return n;
}

/* Called where no model change can run (the filter's cleanup). */
char *
tracker_tracked_names (struct tracker *tr)
{
  const struct track_set *s = atomic_load (&tr->set);
  char *buf = NULL;
  size_t len = 0, i;
  FILE *f;

  if (tr->img == NULL || s->nt == 0)
    return strdup ("(none)");
  f = open_memstream (&buf, &len);
  if (f == NULL)
    return NULL;
  for (i = 0; i < s->nt; ++i)
    fprintf (f, "%s'%s'", i ? ", " : "", tr->img->bitmaps[s->t[i].st->idx].name);
  if (fclose (f) != 0) {
    free (buf);
    return NULL;
  }
  return buf;
}

char **
tracker_tracked_list (struct tracker *tr)
{
  const struct track_set *s = atomic_load (&tr->set);
  char **v = calloc (s->nt + 1, sizeof *v);
  size_t i;

  for (i = 0; v && tr->img && i < s->nt; ++i)
    if ((v[i] = strdup (tr->img->bitmaps[s->t[i].st->idx].name)) == NULL) {
      tracker_free_list (v);
      return NULL;
    }
  return v;
}

void
tracker_free_list (char **v)
{
  size_t i;

  for (i = 0; v && v[i]; ++i)
    free (v[i]);
  free (v);
}

/* Give back a set (or its states) that was never published, and drop
 * the ownership of bitmaps taken since OWNED_BEFORE (the model frees
 * them, or still uses them).
 */
static void
abandon_tracked (struct tracker *tr, struct track_set *s,
                 struct tracked_state **states, size_t n, size_t owned_before)
{
  size_t k;

  for (k = 0; k < n; ++k) {
    atomic_store (&states[k]->retired, true);
    tracker_retire_state (tr, states[k]);
  }
  if (s)
    tracker_retire_set (tr, s);
  tr->nowned = owned_before;     /* appended since, nothing forgotten */
}

/* The same for a whole built set whose commit failed. */
static void
abandon_set (struct tracker *tr, struct track_set *s, size_t owned_before)
{
  size_t k;

  for (k = 0; k < s->nt; ++k) {
    atomic_store (&s->t[k].st->retired, true);
    tracker_retire_state (tr, s->t[k].st);
  }
  tracker_retire_set (tr, s);
  tr->nowned = owned_before;
}

/* Every tracked bitmap is marked at its own granularity; the others are
 * carried along untouched.  Builds the set to publish once the file is
 * committed (all the allocation comes first, so that running out of
 * memory changes nothing on disk).  On failure everything built is given
 * back, and the bitmaps this call took ownership of are owned no more.
 */
static struct track_set *
build_tracked (struct tracker *tr, struct dbm_err *err)
{
  struct qcow2_image *img = tr->img;
  CLEANUP_FREE struct tracked_state **states =
    calloc (img->nb_bitmaps + 1, sizeof (struct tracked_state *));
  size_t owned_before = tr->nowned, n = 0;
  struct track_set *s = NULL;
  uint32_t i;

  if (states == NULL) {
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  if (tracker_own_bitmaps (tr, img, err) == -1)
    goto fail;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    if (!tracker_is_tracked (tr, &img->bitmaps[i]))
      continue;
    states[n] = tracker_new_state (tr, img, i, err);
    if (states[n] == NULL)
      goto fail;
    n++;
  }
  s = tracker_new_set (tr, states, n, err);
  if (s != NULL)
    return s;
 fail:
  abandon_tracked (tr, NULL, states, n, owned_before);
  return NULL;
}

/* Bitmaps whose contents are unknown (in_use on disk: a crash in qemu
 * mode, or QEMU itself died; or autoclear bit 0 clear) are never trusted:
 * refuse, or mark them entirely dirty and clear in_use.  ONLY limits this
 * to one bitmap (NULL: all).  *CHANGED (if set) says whether any was.
 */
static int
settle_in_use (struct qcow2_image *img, const char *only, bool refuse,
               struct restart_report *rep, bool *changed,
               struct dbm_err *err)
{
  uint32_t i;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];

    if (!(b->flags & BME_FLAG_IN_USE) && !img->ext_inconsistent)
      continue;
    if (only && strcmp (only, b->name) != 0)
      continue;
    CLEANUP_FREE char *name = dbm_printable_name (b->name);

    if (refuse)
      return dbm_seterr (err, EINVAL, "%s: bitmap '%s' is in use or "
                         "inconsistent (the previous writer did not shut "
                         "down cleanly) and bitmap-in-use=refuse is set",
                         img->path, name ? name : "?");
    if (bitmap_set_bits (b->bits, 0, UINT64_MAX) == -1)
      return dbm_seterr (err, ENOMEM, "out of memory");
    b->inconsistent = false;
    b->flags &= ~BME_FLAG_IN_USE;
    restart_report_add (rep, "bitmap '%s' was in use (unclean shutdown): "
                        "marked entirely dirty", name ? name : "?");
    if (changed)
      *changed = true;
  }
  return 0;
}

/* The draft container's other bitmaps belong to other drives. */
static const char *
only_tracked_name (const struct tracker *tr)
{
  return tr->img->layout == QCOW2_LAYOUT_DRAFT2015 ? tr->cfg.bitmap_name
    : NULL;
}

int
tracker_recover_offline (const char *path,
                         void (*log) (const char *fmt, ...),
                         struct dbm_err *err)
{
  struct qcow2_image *img;
  struct restart_report rep;
  bool changed = false;
  int r;

  if (qcow2_open (path, QCOW2_OPEN_RW | QCOW2_OPEN_LOAD_IN_USE, &img, err)
      == -1)
    return -1;
  if (qemu_lock_write (img->fd, path, err) == -1) {
    qcow2_close (img);
    return -1;
  }
  restart_report_begin (&rep, path, log);
  restart_report_unclean (&rep, img, NULL);
  if (img->dbm_state & DBM_STATE_RUNNING)
    changed = true;
  img->dbm_state &= ~DBM_STATE_RUNNING;
  r = settle_in_use (img, NULL, false, &rep, &changed, err);
  restart_report_end (&rep);
  if (r == -1) {
    qcow2_close (img);
    return -1;
  }
  if (!changed) {
    log ("%s: nothing to recover", path);
    qcow2_close (img);
    return 0;
  }
  r = qcow2_commit (img, path, 0, qemu_lock_new_file, err);
  qcow2_close (img);
  return r == 0 ? 0 : -1;
}

/* A writer killed inside a rewrite (qcow2_commit) leaves its temporary
 * file PATH.tmpXXXXXX behind.  We hold the write lock on PATH, and every
 * rewriter takes it first, so any such file is dead: remove it.
 */
static void
remove_stale_temporaries (const char *path, void (*log) (const char *fmt, ...))
{
  /* The file may not exist yet (a creation killed before its rename). */
  CLEANUP_FREE char *real = realpath (path, NULL);
  CLEANUP_FREE char *dcopy = NULL, *bcopy = NULL;
  const char *dir, *base;
  size_t blen;
  DIR *d;
  struct dirent *e;

  if ((dcopy = strdup (real ? real : path)) == NULL ||
      (bcopy = strdup (real ? real : path)) == NULL)
    return;
  dir = dirname (dcopy);
  base = basename (bcopy);
  blen = strlen (base);
  d = opendir (dir);
  if (d == NULL)
    return;
  while ((e = readdir (d)) != NULL) {
    CLEANUP_FREE char *full = NULL;
    if (strlen (e->d_name) != blen + ATOMIC_FILE_SUFFIX_LEN ||
        strncmp (e->d_name, base, blen) != 0 ||
        strncmp (e->d_name + blen, ATOMIC_FILE_SUFFIX,
                 strlen (ATOMIC_FILE_SUFFIX)) != 0)
      continue;
    if (asprintf (&full, "%s/%s", dir, e->d_name) == -1)
      break;
    if (unlink (full) == 0)
      log ("%s: removed %s, left by a writer killed while rewriting the "
           "file", path, full);
  }
  closedir (d);
}

/* bitmap-region not given: double the region until the export has at
 * most TRACKER_AUTO_REGIONS of them, so that arming all of them (a random
 * workload over a large export does, in its first second) costs a bounded
 * number of synced writes.  Chosen from the size the file has when this
 * run first writes it, and kept for the run (a growth keeps it).
 */
static void
choose_region_size (struct tracker *tr)
{
  uint64_t size = tracker_size (tr), r = tr->cfg.region_size;

  if (!tr->cfg.region_default || tr->cfg.mode != TRACKER_CRASH_SAFE)
    return;
  /* A draft container activated before its bitmap for this drive is
   * added: the export's size, or decide at the commit that adds it.
   */
  if (size == 0)
    size = tr->export_size;
  if (size == 0)
    return;
  while (r < TRACKER_MAX_REGION && (size - 1) / r + 1 > TRACKER_AUTO_REGIONS)
    r <<= 1;
  if (r != tr->cfg.region_size)
    tr->cfg.log ("%s: bitmap-region %" PRIu64 " (the default, doubled "
                 "until the %" PRIu64 "-byte export has at most %d regions)",
                 tr->cfg.path, r, size, TRACKER_AUTO_REGIONS);
  tr->cfg.region_size = r;
  tr->cfg.region_default = false;
}

/* Rewrite the file in the canonical layout, with in_use set on the tracked
 * bitmaps in qemu mode, then start tracking.  Returns as qcow2_commit: 1
 * means tracking started on a committed file whose directory entry is not
 * yet durable (ERR says why).
 */
int
tracker_commit_and_track (struct tracker *tr, const uint32_t *old_flags,
                          struct dbm_err *err)
{
  struct qcow2_image *img = tr->img;
  uint64_t region_size;
  size_t owned_before = tr->nowned;
  struct track_set *s;
  uint32_t i;
  int r = 0;

  choose_region_size (tr);      /* before the states are built from it */
  region_size = tr->cfg.mode == TRACKER_CRASH_SAFE ? tr->cfg.region_size : 0;
  s = build_tracked (tr, err);
  if (s == NULL)
    return -1;
  /* The first write of this run, whether the file exists or not. */
  remove_stale_temporaries (tr->cfg.path, tr->cfg.log);
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    if (tr->cfg.mode == TRACKER_QEMU && tracker_is_tracked (tr, b))
      b->flags |= BME_FLAG_IN_USE;
  }
  img->dbm_state = DBM_STATE_RUNNING;
  /* A file already in the canonical layout (one this filter wrote) is
   * updated in place: same inode, no free space needed, fast at any size.
   * OLD_FLAGS is NULL when the model was just created or gained a bitmap:
   * always a rewrite.  The region size lives in the rewritten header only.
   */
  if (old_flags && qcow2_is_canonical (img) &&
      img->dbm_region_size == region_size) {
    if (qcow2_update_in_place (img, old_flags, err) == -1) {
      /* Leaves written may not be durable: write them again next time. */
      tracker_reflag_model (img);
      abandon_set (tr, s, owned_before);
      return -1;
    }
  }
  else {
    img->dbm_region_size = region_size;
    /* A model not yet on disk is a creation: never over a file that
     * appeared since the start (another writer).
     */
    r = qcow2_commit (img, tr->cfg.path, QCOW2_COMMIT_PRIVATE |
                      (img->fd < 0 ? QCOW2_COMMIT_NOREPLACE : 0),
                      qemu_lock_new_file, err);
    if (r == -1) {
      tracker_reflag_model (img);
      abandon_set (tr, s, owned_before);
      return -1;
    }
  }
  /* Committed: nobody marks yet (no writer has been served). */
  tracker_publish (tr, s);
  atomic_store (&tr->active, true);
  return r;
}

static bool
any_enabled (const struct qcow2_image *img)
{
  uint32_t i;

  for (i = 0; i < img->nb_bitmaps; ++i)
    if (qcow2_bitmap_enabled (img, &img->bitmaps[i]))
      return true;
  return false;
}


int
tracker_open (const struct tracker_config *cfg, struct tracker **trp,
              struct dbm_err *err)
{
  struct tracker *tr;
  struct stat st;
  struct restart_report rep;
  int r;
  uint32_t *old_flags;
  uint32_t i;

  *trp = NULL;
  tr = calloc (1, sizeof *tr);
  if (tr == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  tr->cfg = *cfg;
  atomic_init (&tr->set, &tracker_empty_set);
  atomic_init (&tr->fast, NULL);
  tr->fast_slot = cfg->fast_slot ? cfg->fast_slot : &tr->fast;
  atomic_store (tr->fast_slot, NULL);
  if (tr->cfg.log == NULL)
    tr->cfg.log = nolog;
  pthread_mutex_init (&tr->persist_lock, NULL);
  pthread_mutex_init (&tr->arm_lock, NULL);
  pthread_mutex_init (&tr->sync_lock, NULL);
  pthread_mutex_init (&tr->quiesce_lock, NULL);
  pthread_mutex_init (&tr->zero_enable_lock, NULL);
  pthread_mutex_init (&tr->zero_lock, NULL);

  if (stat (cfg->path, &st) == -1) {
    if (errno != ENOENT) {
      dbm_seterr (err, errno, "%s: %m", cfg->path);
      goto fail;
    }
    /* Creating over a dangling symlink would replace the link itself. */
    if (lstat (cfg->path, &st) == 0) {
      dbm_seterr (err, ENOENT, "%s: symbolic link to a missing file",
                  cfg->path);
      goto fail;
    }
    /* Created at the first connection: check now that it can be. */
    {
      CLEANUP_FREE char *dir = strdup (cfg->path);
      if (dir == NULL) {
        dbm_seterr (err, ENOMEM, "out of memory");
        goto fail;
      }
      if (access (dirname (dir), W_OK | X_OK) == -1) {
        dbm_seterr (err, errno, "%s: cannot create the file: %m", cfg->path);
        goto fail;
      }
    }
    *trp = tr;                  /* created in tracker_set_size */
    return 0;
  }

  if (S_ISDIR (st.st_mode)) {
    dbm_seterr (err, EISDIR, "%s: is a directory, not a bitmap file",
                cfg->path);
    goto fail;
  }
  /* In-use bitmaps' last contents are loaded too, so that bitmaps this
   * filter does not track are rewritten as they were.
   */
  if (qcow2_open (cfg->path, QCOW2_OPEN_RW | QCOW2_OPEN_LOAD_IN_USE,
                  &tr->img, err) == -1)
    goto fail;
  if (tr->img->layout != cfg->layout) {
    dbm_seterr (err, EINVAL, "%s: the file has the %s layout but "
                "bitmap-format=%s (set bitmap-format=%s)", cfg->path,
                qcow2_layout_name (tr->img->layout),
                qcow2_layout_name (cfg->layout),
                qcow2_layout_name (tr->img->layout));
    goto fail;
  }
  /* An enabled bitmap named as another's zero map would be trusted as
   * one once a checkpoint froze it (qcow2.h): refused, never tracked.
   */
  for (i = 0; i < tr->img->nb_bitmaps; ++i)
    if (tr->img->layout == QCOW2_LAYOUT_QEMU &&
        (tr->img->bitmaps[i].flags & BME_FLAG_AUTO) &&
        qcow2_zero_map_shaped (tr->img->bitmaps[i].name)) {
      CLEANUP_FREE char *name = dbm_printable_name (tr->img->bitmaps[i].name);

      dbm_seterr (err, EINVAL, "%s: bitmap '%s' is enabled, but its name "
                  "ends in '" QCOW2_ZERO_SUFFIX "', which is kept for zero "
                  "maps: rename or remove it", cfg->path, name ? name : "?");
      goto fail;
    }
  if (qemu_lock_write (tr->img->fd, tr->cfg.path, err) == -1)
    goto fail;
  qcow2_note_identity (tr->img);
  if (tr->img->ext_inconsistent && tr->cfg.in_use_policy == IN_USE_REFUSE) {
    dbm_seterr (err, EINVAL, "%s: autoclear bit 0 is clear: every bitmap is "
                "inconsistent", tr->cfg.path);
    goto fail;
  }
  old_flags = tr->open_flags =
    calloc (tr->img->nb_bitmaps + 1, sizeof *old_flags);
  if (old_flags == NULL) {
    dbm_seterr (err, ENOMEM, "out of memory");
    goto fail;
  }
  for (i = 0; i < tr->img->nb_bitmaps; ++i)
    old_flags[i] = tr->img->bitmaps[i].flags;
  restart_report_begin (&rep, tr->cfg.path, tr->cfg.log);
  restart_report_unclean (&rep, tr->img, only_tracked_name (tr));
  if ((tr->img->dbm_state & (DBM_STATE_RUNNING | DBM_STATE_SNAPSHOTS)) ==
      (DBM_STATE_RUNNING | DBM_STATE_SNAPSHOTS))
    restart_report_add (&rep, "point-in-time snapshots were live when the "
                        "previous run stopped uncleanly: they are lost "
                        "(snapshots do not survive a restart; the bitmaps "
                        "are not affected)");
  r = settle_in_use (tr->img, only_tracked_name (tr),
                     tr->cfg.in_use_policy == IN_USE_REFUSE, &rep, NULL, err);
  restart_report_end (&rep);
  if (r == -1)
    goto fail;
  /* A draft bitmap is sized from the export: added in tracker_set_size. */
  if (tr->img->layout == QCOW2_LAYOUT_QEMU &&
      qcow2_find_bitmap (tr->img, cfg->bitmap_name) < 0 &&
      !(cfg->bitmap_name_default && any_enabled (tr->img)) &&
      qcow2_add_bitmap (tr->img, cfg->bitmap_name, cfg->granularity_bits,
                        BME_FLAG_AUTO, 0, err) == -1)
    goto fail;
  /* Validated, locked and settled in memory; written by the first writer
   * (activate).  A file not in the canonical layout must be rewritten
   * then; check now that it can be (a rewrite of a hard-linked file is
   * refused), so that the error comes at start.
   */
  for (i = 0; i < tr->img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &tr->img->bitmaps[i];
    if (qcow2_bitmap_read_only (tr->img, b) && tracker_is_tracked (tr, b)) {
      dbm_seterr (err, EPERM, "%s: bitmap '%s' is read_only", cfg->path,
                  b->name);
      goto fail;
    }
  }
  if (!qcow2_is_canonical (tr->img) && st.st_nlink > 1) {
    dbm_seterr (err, EMLINK, "%s: the file has %ju hard links and must be "
                "rewritten (a new file renamed over it), which would split "
                "them: keep one link, or use a symbolic link", cfg->path,
                (uintmax_t) st.st_nlink);
    goto fail;
  }
  *trp = tr;
  return 0;

 fail:
  tracker_free (tr);
  return -1;
}

uint64_t
tracker_size (const struct tracker *tr)
{
  int i;

  if (tr->img == NULL)
    return 0;
  if (tr->img->layout == QCOW2_LAYOUT_QEMU)
    return qcow2_virtual_size (tr->img);
  i = qcow2_find_bitmap (tr->img, tr->cfg.bitmap_name);
  return i < 0 ? 0 : tr->img->bitmaps[i].size;
}

/* The first writer brings an existing file into use: the changes
 * tracker_open prepared in memory are written, and stale temporaries of a
 * killed rewrite removed.  Later calls only retry a directory sync that
 * failed, so that no writer is served while the file's name may not be
 * durable.
 */
int
tracker_activate (struct tracker *tr, struct dbm_err *err)
{
  int r;

  assert (tr->img != NULL);
  if (!atomic_load (&tr->active)) {
    /* The model was read at start: the file must still be that one. */
    if (qcow2_check_identity (tr->img, tr->cfg.path, err) == -1)
      return -1;
    r = tracker_commit_and_track (tr, tr->open_flags, err);
    if (r != 0)
      return -1;
  }
  if (qcow2_sync_pending (tr->img))
    return qcow2_sync (tr->img, err);
  return 0;
}

/* Write the in_use flag of every tracked bitmap (set or clear) and sync. */
int
tracker_write_in_use (struct tracker *tr, bool in_use, struct dbm_err *err)
{
  struct track_set *s = atomic_load (&tr->set);
  size_t i;

  for (i = 0; i < s->nt; ++i) {
    int idx = s->t[i].st->idx;
    struct qcow2_bitmap *b = &tr->img->bitmaps[idx];
    uint32_t f = in_use ? b->flags | BME_FLAG_IN_USE
      : b->flags & ~BME_FLAG_IN_USE;
    if (qcow2_write_flags (tr->img, idx, f, err) == -1)
      return -1;
  }
  return qcow2_sync (tr->img, err);
}

/* After tracker_quiesce, a bit that flips makes the on-disk bitmap stale
 * again: say so on disk (in_use, synced) before the write goes on.
 */
static int
reassert_in_use (struct tracker *tr)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);
  struct dbm_err err;

  if (!atomic_load (&tr->in_use_cleared))
    return 0;
  if (tracker_write_in_use (tr, true, &err) == -1) {
    tr->cfg.log ("%s", err.msg);
    errno = err.errnum ? err.errnum : EIO;
    return -1;
  }
  tracker_set_in_use_cleared (tr, false);
  return 0;
}

/* Record the write in every bitmap of set S: set bits, and in crash-safe
 * mode touch and arm every region the range covers.  FORCE flags the
 * leaves changed even if no bit flips (see tracker_mark).  DATA: a data
 * write, which first clears the zero bits of every granule it touches
 * (zero-maps.c: before the dirty bits, so that a cut that saved this
 * write's dirty bit also sees its zero bits cleared).
 */
static int
mark_set (struct tracker *tr, const struct track_set *s, uint64_t offset,
          uint64_t count, bool force, bool data)
{
  size_t i;

  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;
    unsigned g = t->bits->granularity_bits;
    uint64_t first = offset >> g, last = (offset + count - 1) >> g, r, rl;

    if (data && !bitmap_all_clear_fast (t->zero, first, last))
      bitmap_clear_bits (t->zero, first, last);
    /* Invariant: the bits are set before the write is forwarded, and the
     * write path never clears them.
     */
    if (!bitmap_all_set_fast (t->bits, first, last) &&
        bitmap_set_bits (t->bits, first, last) == -1)
      return -1;
    if (force)
      bitmap_flag_range (t->bits, first, last);
    if (tr->cfg.mode != TRACKER_CRASH_SAFE) {
      /* Pairs with tracker_quiesce: bits first, then the flag. */
      if (atomic_load (&tr->in_use_cleared) && reassert_in_use (tr) == -1)
        return -1;
      continue;
    }
    if (last >= t->bits->nbits)
      last = t->bits->nbits ? t->bits->nbits - 1 : 0;
    /* Order matters (see persist_regions): fine bits, then touched, then
     * the armed check, all sequentially consistent.
     */
    rl = last >> t->region_shift;
    for (r = first >> t->region_shift; r <= rl; ++r) {
      region_set (t->touched, r);
      if (!region_test (t->armed, r) && regions_arm (tr, t, r) == -1)
        return -1;
    }
  }
  return 0;
}

/* The general path.  After marking, the set is loaded again (seq_cst,
 * after our bit stores): if a checkpoint or growth replaced it meanwhile,
 * the new set may have been built without our bits, so mark there too.
 * The replacer publishes before it reads the old bits, so either it saw
 * our bits or we see its set.
 */
static int __attribute__ ((noinline))
mark_slow (struct tracker *tr, const struct track_set *s, uint64_t offset,
           uint64_t count, bool data)
{
  bool force = false;

  for (;;) {
    const struct track_set *now;

    if (mark_set (tr, s, offset, count, force, data) == -1)
      return -1;
    DBM_TEST_HOOK (DBM_HOOK_MARK_MARKED);
    now = atomic_load (&tr->set);
    if (now == s)
      return 0;
    s = now;
    force = true;
  }
}

/* Every bitmap of S needs nothing for this write. */
static bool
mark_is_noop (const struct tracker *tr, const struct track_set *s,
              uint64_t offset, uint64_t count)
{
  size_t i;

  if (atomic_load (&tr->in_use_cleared))
    return false;
  for (i = 0; i < s->nt; ++i)
    if (!tracked_is_noop (&s->t[i], offset, count))
      return false;
  return true;
}

/* A write already recorded in every bitmap of the set needs nothing if
 * that set is still current after the check (loaded again, seq_cst, after
 * the bits): then its bits were set before any replacement reads them.
 * If the set changed, the bits seen may have been set by a marker after
 * the old bitmap was saved: take the general path.
 */
int
tracker_mark_set_inside (struct tracker *tr, const struct track_set *s,
                         uint64_t offset, uint64_t count, bool clear_zero)
{
  DBM_TEST_HOOK (DBM_HOOK_MARK_LOADED);
  /* Zero bits to clear are not seen by the no-op check. */
  if (count != 0 &&
      (clear_zero || !(mark_is_noop (tr, s, offset, count) &&
                       atomic_load (&tr->set) == s)))
    return mark_slow (tr, s, offset, count, clear_zero);
  return 0;
}

int
tracker_mark_inside (struct tracker *tr, uint64_t offset, uint64_t count)
{
  return tracker_mark_set_inside (tr, atomic_load (&tr->set), offset, count,
                                  atomic_load (&tr->zero_counting));
}

void
tracker_hold_slow_path (struct tracker *tr, bool hold)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);

  if (hold)
    atomic_fetch_add (&tr->slow_holds, 1);
  else {
    assert (atomic_load (&tr->slow_holds) > 0);
    atomic_fetch_sub (&tr->slow_holds, 1);
  }
  tracker_publish (tr, atomic_load (&tr->set));
}

int
tracker_note_snapshots (struct tracker *tr, bool live, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  uint32_t st;

  if (tr->img == NULL || tr->img->fd < 0 || tr->img->dbm_ext_offset == 0)
    return 0;
  st = live ? tr->img->dbm_state | DBM_STATE_SNAPSHOTS
    : tr->img->dbm_state & ~DBM_STATE_SNAPSHOTS;
  if (st == tr->img->dbm_state)
    return 0;
  if (qcow2_write_state (tr->img, st, err) == -1)
    return -1;
  return qcow2_sync (tr->img, err);
}

uint64_t
tracker_export_size (const struct tracker *tr)
{
  return tr->export_size;
}

int
tracker_mark (struct tracker *tr, uint64_t offset, uint64_t count)
{
  struct epoch_slot *e = epoch_enter ();
  int r = tracker_mark_inside (tr, offset, count);

  epoch_leave (e);
  return r;
}

bool
tracker_dirty (struct tracker *tr)
{
  struct epoch_slot *e = epoch_enter ();
  const struct track_set *s = atomic_load (&tr->set);
  bool r = atomic_load (&tr->shrink_pending);
  size_t i;

  for (i = 0; !r && i < s->nt; ++i)
    r = atomic_load (&s->t[i].st->bits->any_changed);
  epoch_leave (e);
  return r;
}

static void
reflag_all (struct tracker *tr)
{
  const struct track_set *s = atomic_load (&tr->set);
  size_t i;
  uint64_t leaf;

  for (i = 0; i < s->nt; ++i) {
    struct bitmap *bm = s->t[i].st->bits;
    for (leaf = 0; leaf < bm->nleaves; ++leaf)
      if (bitmap_leaf_present (bm, leaf))
        bitmap_set_changed (bm, leaf);
  }
}

/* qemu mode: write every leaf changed since the last persist. */
static int
persist_changed_leaves (struct tracker *tr, bool *wrote, struct dbm_err *err)
{
  const struct track_set *s = atomic_load (&tr->set);
  size_t i;

  for (i = 0; i < s->nt; ++i)
    if (qcow2_write_changed (tr->img, s->t[i].st->idx, wrote, err) == -1)
      return -1;
  return 0;
}

/* Is the file still ours (qcow2-watch.c)?  Said once in the log; every
 * persist and flush fails until tracker_rewrite puts the bits back.
 */
static int
check_file (struct tracker *tr, struct dbm_err *err)
{
  if (qcow2_check_identity (tr->img, tr->cfg.path, err) == 0)
    return 0;
  if (!tr->identity_logged) {
    tr->identity_logged = true;
    tr->cfg.log ("%s; the bitmaps are kept in memory: every flush fails "
                 "until they are written again ('persist' on the control "
                 "socket, or a clean shutdown, rewrites the file)", err->msg);
  }
  err->errnum = EIO;
  return -1;
}

/* IDLE_ONLY: the periodic persist (regions.c: only IDLE regions shrink). */
static int
persist (struct tracker *tr, bool idle_only, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  bool wrote = false;

  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  if (check_file (tr, err) == -1)
    return -1;
  if (tr->cfg.mode == TRACKER_CRASH_SAFE) {
    if (regions_persist (tr, idle_only, &wrote, err) == -1)
      return -1;
  }
  else if (persist_changed_leaves (tr, &wrote, err) == -1 ||
           (wrote && qcow2_sync (tr->img, err) == -1)) {
    /* Leaves written in this persist may not be durable (after a failed
     * fdatasync the kernel may even have dropped them): flag every leaf
     * again, so no later flush can succeed without rewriting them.
     */
    reflag_all (tr);
    return -1;
  }
  /* A change committed but not yet durable: no persist succeeds first. */
  if (qcow2_sync_pending (tr->img) && qcow2_sync (tr->img, err) == -1)
    return -1;
  tr->last_persist = time (NULL);
  epoch_reclaim ();             /* what model changes retired meanwhile */
  return 0;
}

int
tracker_persist (struct tracker *tr, struct dbm_err *err)
{
  return persist (tr, false, err);
}

int
tracker_persist_periodic (struct tracker *tr, struct dbm_err *err)
{
  return persist (tr, true, err);
}

int
tracker_flush (struct tracker *tr, struct dbm_err *err)
{
  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  if (tr->cfg.mode == TRACKER_QEMU)
    return tracker_persist (tr, err);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  if (check_file (tr, err) == -1)
    return -1;
  /* Arming writes are synced already; a change's header or directory
   * may not be.
   */
  return qcow2_sync_pending (tr->img) ? qcow2_sync (tr->img, err) : 0;
}

int
tracker_quiesce (struct tracker *tr, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->quiesce_lock);

  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  if (tr->cfg.mode != TRACKER_QEMU)
    return tracker_persist (tr, err);
  /* The flag goes up before the persist scans the bitmap: a writer either
   * flipped its bit early enough for the persist to see it, or sees the
   * flag and sets in_use again (after this function, under the lock).
   */
  tracker_set_in_use_cleared (tr, true);
  /* On failure the flag stays up: writers then re-assert in_use, which is
   * harmless if it was never cleared and needed if it partly was.
   */
  if (tracker_persist (tr, err) == -1 ||
      tracker_write_in_use (tr, false, err) == -1)
    return -1;
  return 0;
}

