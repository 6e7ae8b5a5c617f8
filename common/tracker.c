#include <config.h>

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
#include "qemu-lock.h"
#include "tracker.h"
#include "tracker-internal.h"

static void
nolog (const char *fmt, ...)
{
}

static struct track_set empty_set;

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
  if (tr->nowned)
    tracker_drop_model (tr->img);
  else
    qcow2_close (tr->img);
  for (i = 0; i < tr->nowned; ++i)
    bitmap_delete (tr->owned[i]);
  free (tr->owned);
  for (i = 0; i < tr->nstates; ++i) {
    free ((void *) tr->states[i]->touched);
    free ((void *) tr->states[i]->armed);
    free (tr->states[i]);
  }
  free (tr->states);
  for (i = 0; i < tr->nsets; ++i)
    free (tr->sets[i]);
  free (tr->sets);
  free (tr->open_flags);
  pthread_mutex_destroy (&tr->persist_lock);
  pthread_mutex_destroy (&tr->arm_lock);
  pthread_mutex_destroy (&tr->sync_lock);
  pthread_mutex_destroy (&tr->quiesce_lock);
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
  if (st->touched == NULL || st->armed == NULL) {
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
    t->region_shift = st->region_shift;
    t->armed = tr->cfg.mode == TRACKER_CRASH_SAFE ? st->armed : NULL;
  }
  s->nt = n;
  return s;
}

size_t
tracker_ntracked (struct tracker *tr)
{
  return atomic_load (&tr->set)->nt;
}

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

/* Every tracked bitmap is marked at its own granularity; the others are
 * carried along untouched.  Publishes a new set (the model was just
 * committed, nobody marks yet).
 */
static int
setup_tracked (struct tracker *tr, struct dbm_err *err)
{
  struct qcow2_image *img = tr->img;
  CLEANUP_FREE struct tracked_state **states =
    calloc (img->nb_bitmaps + 1, sizeof (struct tracked_state *));
  struct track_set *s;
  size_t n = 0;
  uint32_t i;

  if (states == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  if (tracker_own_bitmaps (tr, img, err) == -1)
    return -1;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    if (!tracker_is_tracked (tr, &img->bitmaps[i]))
      continue;
    states[n] = tracker_new_state (tr, img, i, err);
    if (states[n++] == NULL)
      return -1;
  }
  s = tracker_new_set (tr, states, n, err);
  if (s == NULL)
    return -1;
  atomic_store (&tr->set, s);
  return 0;
}

/* Bitmaps whose contents are unknown (in_use on disk: a crash in qemu
 * mode, or QEMU itself died; or autoclear bit 0 clear) are never trusted:
 * refuse, or mark them entirely dirty and clear in_use.  ONLY limits this
 * to one bitmap (NULL: all).  *CHANGED (if set) says whether any was.
 */
static int
settle_in_use (struct qcow2_image *img, const char *only, bool refuse,
               void (*log) (const char *fmt, ...), bool *changed,
               struct dbm_err *err)
{
  uint32_t i;

  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];

    if (!(b->flags & BME_FLAG_IN_USE) && !img->ext_inconsistent)
      continue;
    if (only && strcmp (only, b->name) != 0)
      continue;
    if (refuse)
      return dbm_seterr (err, EINVAL, "%s: bitmap '%s' is in use or "
                         "inconsistent (the previous writer did not shut "
                         "down cleanly) and bitmap-in-use=refuse is set",
                         img->path, b->name);
    if (bitmap_set_bits (b->bits, 0, UINT64_MAX) == -1)
      return dbm_seterr (err, ENOMEM, "out of memory");
    b->inconsistent = false;
    b->flags &= ~BME_FLAG_IN_USE;
    log ("%s: bitmap '%s' was in use (unclean shutdown): marked entirely "
         "dirty", img->path, b->name);
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

/* After a crash in crash-safe mode nothing needs recovering: say so, and
 * how much of the dirty area may be precautionary (whole regions all-ones,
 * an upper bound of what pre-marking added).  NAME limits the report to one
 * bitmap (the draft layout's tracked one), NULL for all.
 */
static void
report_unclean (struct qcow2_image *img, const char *name,
                void (*log) (const char *fmt, ...))
{
  uint32_t i;

  if (!(img->dbm_state & DBM_STATE_RUNNING))
    return;
  for (i = 0; i < img->nb_bitmaps; ++i) {
    struct qcow2_bitmap *b = &img->bitmaps[i];
    const struct bitmap *bm = b->bits;
    uint64_t region_bits = img->dbm_region_size >> b->granularity_bits;
    uint64_t dirty = bitmap_count (bm), full = 0, r, bit;

    if (b->inconsistent || (b->flags & BME_FLAG_IN_USE) ||
        (name && strcmp (name, b->name) != 0))
      continue;
    if (img->dbm_region_size == 0) {
      log ("%s: the previous run did not shut down cleanly; bitmap '%s': "
           "%" PRIu64 " bytes dirty", img->path, b->name,
           dirty << b->granularity_bits);
      continue;
    }
    if (region_bits < 64)
      region_bits = 64;
    for (r = 0; r * region_bits < bm->nbits; ++r) {
      uint64_t end = (r + 1) * region_bits < bm->nbits
        ? (r + 1) * region_bits : bm->nbits;
      bit = bitmap_find (bm, r * region_bits, false);
      if (bit >= end)
        full += end - r * region_bits;
    }
    log ("%s: the previous run did not shut down cleanly; bitmap '%s' "
         "covers every write it forwarded: %" PRIu64 " bytes dirty, of "
         "which at most %" PRIu64 " in regions pre-marked as a precaution",
         img->path, b->name, dirty << b->granularity_bits,
         full << b->granularity_bits);
  }
}

int
tracker_recover_offline (const char *path,
                         void (*log) (const char *fmt, ...),
                         struct dbm_err *err)
{
  struct qcow2_image *img;
  bool changed = false;
  int r;

  if (qcow2_open (path, QCOW2_OPEN_RW | QCOW2_OPEN_LOAD_IN_USE, &img, err)
      == -1)
    return -1;
  if (qemu_lock_write (img->fd, path, err) == -1) {
    qcow2_close (img);
    return -1;
  }
  report_unclean (img, NULL, log);
  if (img->dbm_state & DBM_STATE_RUNNING)
    changed = true;
  img->dbm_state &= ~DBM_STATE_RUNNING;
  if (settle_in_use (img, NULL, false, log, &changed, err) == -1) {
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

/* Rewrite the file in the canonical layout, with in_use set on the tracked
 * bitmaps in qemu mode, then start tracking.  Returns as qcow2_commit: 1
 * means tracking started on a committed file whose directory entry is not
 * yet durable (ERR says why).
 */
static int
commit_and_track (struct tracker *tr, const uint32_t *old_flags,
                  struct dbm_err *err)
{
  int r = 0;

  struct qcow2_image *img = tr->img;
  uint64_t region_size = tr->cfg.mode == TRACKER_CRASH_SAFE
    ? tr->cfg.region_size : 0;
  uint32_t i;

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
      return -1;
    }
  }
  else {
    img->dbm_region_size = region_size;
    r = qcow2_commit (img, tr->cfg.path, QCOW2_COMMIT_PRIVATE,
                      qemu_lock_new_file, err);
    if (r == -1) {
      tracker_reflag_model (img);
      return -1;
    }
  }
  if (setup_tracked (tr, err) == -1)
    return -1;
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

/* A writer killed inside a rewrite (qcow2_commit) leaves its temporary
 * file PATH.tmpXXXXXX behind.  We hold the write lock on PATH, and every
 * rewriter takes it first, so any such file is dead: remove it.
 */
static void
remove_stale_temporaries (const char *path, void (*log) (const char *fmt, ...))
{
  CLEANUP_FREE char *real = realpath (path, NULL);
  CLEANUP_FREE char *dcopy = NULL, *bcopy = NULL;
  const char *dir, *base;
  size_t blen;
  DIR *d;
  struct dirent *e;

  if (real == NULL || (dcopy = strdup (real)) == NULL ||
      (bcopy = strdup (real)) == NULL)
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

int
tracker_open (const struct tracker_config *cfg, struct tracker **trp,
              struct dbm_err *err)
{
  struct tracker *tr;
  struct stat st;
  uint32_t *old_flags;
  uint32_t i;

  *trp = NULL;
  tr = calloc (1, sizeof *tr);
  if (tr == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  tr->cfg = *cfg;
  atomic_init (&tr->set, &empty_set);
  if (tr->cfg.log == NULL)
    tr->cfg.log = nolog;
  pthread_mutex_init (&tr->persist_lock, NULL);
  pthread_mutex_init (&tr->arm_lock, NULL);
  pthread_mutex_init (&tr->sync_lock, NULL);
  pthread_mutex_init (&tr->quiesce_lock, NULL);

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
  report_unclean (tr->img, only_tracked_name (tr), tr->cfg.log);
  if (settle_in_use (tr->img, only_tracked_name (tr),
                     tr->cfg.in_use_policy == IN_USE_REFUSE, tr->cfg.log,
                     NULL, err) == -1)
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

  if (!atomic_load (&tr->active)) {
    remove_stale_temporaries (tr->cfg.path, tr->cfg.log);
    r = commit_and_track (tr, tr->open_flags, err);
    if (r != 0)
      return -1;
  }
  if (tr->img->dir_sync_pending)
    return qcow2_sync (tr->img, err);
  return 0;
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
  if (granularity_for (tr, size, tr->img->cluster_bits, &g, err) == -1) {
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
    r = commit_and_track (tr, NULL, err);
  if (r == 1)
    return -1;          /* tracking, but not durable yet: retried next time */
  if (r == -1) {
    if (created) {
      qcow2_close (tr->img);
      tr->img = NULL;
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

static inline bool
region_test (_Atomic uint64_t *a, uint64_t r)
{
  return (atomic_load (&a[r >> 6]) >> (r & 63)) & 1;
}

static inline void
region_set (_Atomic uint64_t *a, uint64_t r)
{
  uint64_t m = UINT64_C (1) << (r & 63);
  if ((atomic_load (&a[r >> 6]) & m) == 0)
    atomic_fetch_or (&a[r >> 6], m);
}

/* Write region R of T on disk as all-ones (bits beyond the disk stay 0),
 * or as its exact bits.  Caller holds arm_lock.
 */
static int
write_region (struct tracker *tr, struct tracked_state *t, uint64_t r,
              bool ones, struct dbm_err *err)
{
  uint64_t first = r << t->region_shift;
  uint64_t nbits = t->bits->nbits;
  uint64_t last = first + (UINT64_C (1) << t->region_shift);
  uint64_t off = first / 8, len;
  CLEANUP_FREE unsigned char *buf = NULL;

  if (first >= nbits)
    return 0;
  if (last > nbits)
    last = nbits;
  len = (last - first + 7) / 8;
  buf = malloc (len);
  if (buf == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  if (ones) {
    memset (buf, 0xff, len);
    if ((last - first) % 8)
      buf[len - 1] = (1U << ((last - first) % 8)) - 1;
  }
  else
    bitmap_export (t->bits, off, buf, len);
  return qcow2_write_data (tr->img, t->idx, off, buf, len, err);
}

/* Group commit: one fdatasync covers every write sequenced before it. */
static int
sync_upto (struct tracker *tr, uint64_t seq, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->sync_lock);
  uint64_t target;

  if (tr->synced_seq >= seq)
    return 0;
  target = atomic_load (&tr->write_seq);
  if (qcow2_sync (tr->img, err) == -1)
    return -1;
  tr->synced_seq = target;
  return 0;
}

/* Slow path of a first write into region R: make it all-ones on disk.
 * A retired bitmap is final on disk: the caller's write lands in the set
 * that replaced it (the caller re-marks there), so it is left alone.
 */
static int
arm_region (struct tracker *tr, struct tracked_state *t, uint64_t r)
{
  struct dbm_err err;
  uint64_t seq;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
    if (region_test (t->armed, r) || atomic_load (&t->retired))
      return 0;
    if (write_region (tr, t, r, true, &err) == -1) {
      tr->cfg.log ("%s", err.msg);
      errno = err.errnum ? err.errnum : EIO;
      return -1;
    }
    seq = atomic_fetch_add (&tr->write_seq, 1) + 1;
  }
  if (sync_upto (tr, seq, &err) == -1) {
    tr->cfg.log ("%s", err.msg);
    errno = err.errnum ? err.errnum : EIO;
    return -1;
  }
  region_set (t->armed, r);
  return 0;
}

/* Write the in_use flag of every tracked bitmap (set or clear) and sync. */
static int
write_tracked_in_use (struct tracker *tr, bool in_use, struct dbm_err *err)
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
  if (write_tracked_in_use (tr, true, &err) == -1) {
    tr->cfg.log ("%s", err.msg);
    errno = err.errnum ? err.errnum : EIO;
    return -1;
  }
  atomic_store (&tr->in_use_cleared, false);
  return 0;
}

/* Record the write in every bitmap of set S: set bits, and in crash-safe
 * mode touch and arm every region the range covers.  FORCE flags the
 * leaves changed even if no bit flips (see tracker_mark).
 */
static int
mark_set (struct tracker *tr, const struct track_set *s, uint64_t offset,
          uint64_t count, bool force)
{
  size_t i;

  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;
    unsigned g = t->bits->granularity_bits;
    uint64_t first = offset >> g, last = (offset + count - 1) >> g, r, rl;

    /* Invariant: the bits are set before the write is forwarded, and the
     * write path never clears them.
     */
    if (bitmap_set_bits (t->bits, first, last) == -1)
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
      if (!region_test (t->armed, r) && arm_region (tr, t, r) == -1)
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
           uint64_t count)
{
  bool force = false;

  for (;;) {
    const struct track_set *now;

    if (mark_set (tr, s, offset, count, force) == -1)
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
tracker_mark (struct tracker *tr, uint64_t offset, uint64_t count)
{
  const struct track_set *s = atomic_load (&tr->set);

  DBM_TEST_HOOK (DBM_HOOK_MARK_LOADED);
  if (count == 0)
    return 0;
  if (mark_is_noop (tr, s, offset, count) && atomic_load (&tr->set) == s)
    return 0;
  return mark_slow (tr, s, offset, count);
}

bool
tracker_dirty (struct tracker *tr)
{
  const struct track_set *s = atomic_load (&tr->set);
  size_t i;

  for (i = 0; i < s->nt; ++i)
    if (atomic_load (&s->t[i].st->bits->any_changed))
      return true;
  return false;
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

/* crash-safe mode: the persist cut.  Clear "touched"; then each armed
 * region nobody touched since is disarmed and written exact.  The
 * disarm-then-recheck of touched pairs with the writer's
 * set-touched-then-check-armed (both seq_cst), so a concurrent first write
 * either keeps the region armed or takes the slow path after us.
 */
static int
persist_regions (struct tracker *tr, bool *wrote, struct dbm_err *err)
{
  const struct track_set *s = atomic_load (&tr->set);
  size_t i;
  uint64_t w, k;

  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;
    /* Leaves are written as regions; the changed flags are not needed,
     * but any_changed must be cleared before the scan, not after it: a bit
     * flipped during the scan (in a region that then stays armed) sets it
     * again, so that tracker_dirty asks for the next persist.
     */
    atomic_store (&t->bits->any_changed, false);
    for (w = 0; w < (t->nregions + 63) / 64; ++w)
      atomic_exchange (&t->touched[w], 0);
  }

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->arm_lock);
  for (i = 0; i < s->nt; ++i) {
    struct tracked_state *t = s->t[i].st;

    for (w = 0; w < (t->nregions + 63) / 64; ++w) {
      uint64_t cand = atomic_load (&t->armed[w]) & ~atomic_load (&t->touched[w]);
      uint64_t keep, gone;

      if (cand == 0)
        continue;
      atomic_fetch_and (&t->armed[w], ~cand);
      keep = cand & atomic_load (&t->touched[w]);
      if (keep)
        atomic_fetch_or (&t->armed[w], keep);
      gone = cand & ~keep;
      for (k = 0; k < 64; ++k) {
        if (!((gone >> k) & 1))
          continue;
        if (write_region (tr, t, w * 64 + k, false, err) == -1)
          /* These regions stay disarmed: on disk they are all-ones or
           * exact, both covering every write forwarded so far, and the
           * next write into one re-marks it (and syncs) before it is
           * forwarded.  Re-arming them here would let a write skip that.
           */
          return -1;
        *wrote = true;
      }
    }
    DBM_TEST_HOOK (DBM_HOOK_PERSIST_SCANNED);
  }
  if (*wrote && qcow2_sync (tr->img, err) == -1)
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

int
tracker_persist (struct tracker *tr, struct dbm_err *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&tr->persist_lock);
  bool wrote = false;

  if (tr->img == NULL || !atomic_load (&tr->active))
    return 0;
  if (check_file (tr, err) == -1)
    return -1;
  if (tr->cfg.mode == TRACKER_CRASH_SAFE) {
    if (persist_regions (tr, &wrote, err) == -1)
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
  tr->last_persist = time (NULL);
  return 0;
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
  /* Arming writes are synced already; a rewrite's directory may not be. */
  return tr->img->dir_sync_pending ? qcow2_sync (tr->img, err) : 0;
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
  atomic_store (&tr->in_use_cleared, true);
  /* On failure the flag stays up: writers then re-assert in_use, which is
   * harmless if it was never cleared and needed if it partly was.
   */
  if (tracker_persist (tr, err) == -1 ||
      write_tracked_in_use (tr, false, err) == -1)
    return -1;
  return 0;
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
    r = write_tracked_in_use (tr, false, err);
  if (r == 0 && tr->img) {
    r = qcow2_write_state (tr->img, tr->img->dbm_state & ~DBM_STATE_RUNNING,
                           err);
    if (r == 0)
      r = qcow2_sync (tr->img, err);
  }
  tracker_free (tr);
  return r;
}
