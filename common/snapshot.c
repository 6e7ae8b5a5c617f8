/* Copy-before-write snapshots (see snapshot.h for the states). */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "snapshot.h"

#define SLOT_NONE     UINT32_C (0)
#define SLOT_COPYING  UINT32_C (1)
#define SLOT_ZERO     UINT32_C (2)
#define SLOT_FIRST    UINT32_C (3)
#define SLOT_MAX      (UINT32_MAX - SLOT_FIRST)

static inline uint64_t
granule_size (const struct snapshot *s)
{
  return UINT64_C (1) << s->granule_bits;
}

/* The store: an unlinked file in DIR, so that a crash leaves nothing. */
static int
open_store (const char *dir, struct dbm_err *err)
{
  CLEANUP_FREE char *tmpl = NULL;
  int fd;

  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
    return dbm_seterr (err, errno, "bitmap-snapshot-dir: %s: cannot create "
                       "the snapshot store: %m", dir);
  /* A file system without O_TMPFILE: create, then unlink at once. */
  if (asprintf (&tmpl, "%s/.dirtybitmap-snapshot-XXXXXX", dir) == -1)
    return dbm_seterr (err, ENOMEM, "out of memory");
  fd = mkostemp (tmpl, O_CLOEXEC);
  if (fd == -1)
    return dbm_seterr (err, errno, "bitmap-snapshot-dir: %s: cannot create "
                       "the snapshot store: %m", dir);
  unlink (tmpl);
  return fd;
}

int
snapshot_new (const char *name, uint64_t size, unsigned granule_bits,
              const char *dir, uint64_t max_bytes, struct bitmap *readable,
              struct snapshot **snapp, struct dbm_err *err)
{
  struct snapshot *s = calloc (1, sizeof *s);
  uint64_t nleaves;

  if (s == NULL) {
    bitmap_delete (readable);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  s->fd = -1;
  s->readable = readable;
  s->size = size;
  s->granule_bits = granule_bits;
  s->ngranules = (size + granule_size (s) - 1) >> granule_bits;
  nleaves = (s->ngranules + SNAPSHOT_LEAF_SLOTS - 1) / SNAPSHOT_LEAF_SLOTS;
  s->nblocks = (nleaves + SNAPSHOT_BLOCK_LEAVES - 1) / SNAPSHOT_BLOCK_LEAVES;
  s->blocks = calloc (s->nblocks ? s->nblocks : 1, sizeof *s->blocks);
  s->name = strdup (name);
  s->dir = strdup (dir);
  s->map_bytes = s->nblocks * sizeof *s->blocks;
  s->refs = 1;
  if (s->blocks == NULL || s->name == NULL || s->dir == NULL) {
    snapshot_unref (s, false);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  s->fd = open_store (dir, err);
  if (s->fd == -1) {
    snapshot_unref (s, false);
    return -1;
  }
  pthread_mutex_init (&s->lock, NULL);
  pthread_cond_init (&s->cond, NULL);
  s->inited = true;
  s->max_bytes = max_bytes;
  s->state = SNAPSHOT_ACTIVE;
  *snapp = s;
  return 0;
}

/* The slot of granule G (lock held). */
static uint32_t
slot_get (const struct snapshot *s, uint64_t g)
{
  uint64_t leaf = g / SNAPSHOT_LEAF_SLOTS;
  uint32_t **block = s->blocks[leaf / SNAPSHOT_BLOCK_LEAVES];
  uint32_t *l;

  if (block == NULL)
    return SLOT_NONE;
  l = block[leaf % SNAPSHOT_BLOCK_LEAVES];
  return l ? l[g % SNAPSHOT_LEAF_SLOTS] : SLOT_NONE;
}

/* Set the slot of granule G (lock held); -1 if a leaf cannot be had. */
static int
slot_set (struct snapshot *s, uint64_t g, uint32_t v)
{
  uint64_t leaf = g / SNAPSHOT_LEAF_SLOTS;
  uint32_t ***block = &s->blocks[leaf / SNAPSHOT_BLOCK_LEAVES];
  uint32_t **l;

  if (*block == NULL) {
    *block = calloc (SNAPSHOT_BLOCK_LEAVES, sizeof **block);
    if (*block == NULL)
      return -1;
    s->map_bytes += SNAPSHOT_BLOCK_LEAVES * sizeof **block;
  }
  l = &(*block)[leaf % SNAPSHOT_BLOCK_LEAVES];
  if (*l == NULL) {
    *l = calloc (SNAPSHOT_LEAF_SLOTS, sizeof **l);
    if (*l == NULL)
      return -1;
    s->map_bytes += SNAPSHOT_LEAF_SLOTS * sizeof **l;
  }
  (*l)[g % SNAPSHOT_LEAF_SLOTS] = v;
  return 0;
}

static bool
is_preserved (uint32_t v)
{
  return v >= SLOT_ZERO;
}

/* May a reader read granule G, and must a writer preserve it? */
static bool
wanted (const struct snapshot *s, uint64_t g)
{
  return s->readable == NULL || bitmap_test (s->readable, g);
}

/* True if this call broke it. */
static bool
break_locked (struct snapshot *s, const char *why)
{
  if (s->state != SNAPSHOT_ACTIVE)
    return false;
  s->state = SNAPSHOT_BROKEN;
  snprintf (s->why, sizeof s->why, "%s", why);
  pthread_cond_broadcast (&s->cond);
  return true;
}

static bool
all_zero (const unsigned char *p, size_t len)
{
  return len == 0 || (p[0] == 0 && memcmp (p, p + 1, len - 1) == 0);
}

/* Wait on cond (lock held), counted so that wake-ups are only sent to
 * someone.
 */
static void
wait_cond (struct snapshot *s)
{
  s->waiting++;
  pthread_cond_wait (&s->cond, &s->lock);
  s->waiting--;
}

static void
wake (struct snapshot *s)
{
  if (s->waiting)
    pthread_cond_broadcast (&s->cond);
}

static void
leave_op (struct snapshot *s)
{
  assert (s->ops > 0);
  if (--s->ops == 0)
    wake (s);
}

void
snapshot_seal (struct snapshot *s)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

  s->nwanted = s->readable ? bitmap_count (s->readable) : s->ngranules;
  if (s->preserved >= s->nwanted)
    atomic_store (&s->complete, true);
}

/* Preserve granule G, which this writer set COPYING (lock held; dropped
 * for the I/O).  On failure the snapshot is broken and G is NONE again.
 */
static bool
copy_granule (struct snapshot *s, uint64_t g, unsigned char *buf,
              snapshot_read_fn read, void *ctx)
{
  bool broke = false;
  uint64_t off = g << s->granule_bits, gs = granule_size (s);
  uint32_t len = s->size - off < gs ? s->size - off : gs;
  uint64_t slot = 0;
  uint32_t v = SLOT_ZERO;
  char why[sizeof s->why] = "";
  int e = 0;

  pthread_mutex_unlock (&s->lock);
  if (read (ctx, buf, len, off, &e) == -1)
    snprintf (why, sizeof why, "reading the contents at offset %" PRIu64
              " to preserve them failed: %s", off, strerror (e ? e : EIO));
  pthread_mutex_lock (&s->lock);
  if (why[0] == '\0' && !all_zero (buf, len)) {
    if (s->next_slot >= SLOT_MAX)
      snprintf (why, sizeof why, "the store holds its maximum number of "
                "granules");
    else if (s->max_bytes && (s->next_slot + 1) * gs > s->max_bytes)
      snprintf (why, sizeof why, "bitmap-snapshot-max (%" PRIu64 " bytes) "
                "reached", s->max_bytes);
    else {
      slot = s->next_slot++;
      v = SLOT_FIRST + slot;
      pthread_mutex_unlock (&s->lock);
      memset (buf + len, 0, gs - len);
      if (pwrite (s->fd, buf, gs, slot * gs) != (ssize_t) gs)
        snprintf (why, sizeof why, "writing to the store in %s failed: %s",
                  s->dir, errno ? strerror (errno) : "short write");
      pthread_mutex_lock (&s->lock);
    }
  }
  if (why[0] || s->state == SNAPSHOT_RELEASED) {
    broke = why[0] && break_locked (s, why);
    v = SLOT_NONE;
  }
  if (slot_set (s, g, v) == -1) {       /* the leaf exists: COPYING set */
    assert (false);
    abort ();
  }
  if (is_preserved (v) && ++s->preserved >= s->nwanted && s->nwanted)
    atomic_store (&s->complete, true);
  wake (s);
  return broke;
}

static bool
before_write_locked (struct snapshot *s, uint64_t offset, uint64_t count,
                     snapshot_read_fn read, void *ctx)
{
  CLEANUP_FREE unsigned char *buf = NULL;
  uint64_t g, first, last, end;
  bool broke = false;

  if (count == 0 || offset >= s->size || s->state != SNAPSHOT_ACTIVE)
    return false;
  end = s->size - offset < count ? s->size : offset + count;
  first = offset >> s->granule_bits;
  last = (end - 1) >> s->granule_bits;
  s->ops++;
  for (g = first; g <= last && s->state == SNAPSHOT_ACTIVE; ++g) {
    uint32_t v;

    if (!wanted (s, g))
      continue;
    while ((v = slot_get (s, g)) == SLOT_COPYING &&
           s->state == SNAPSHOT_ACTIVE)
      wait_cond (s);
    if (v != SLOT_NONE || s->state != SNAPSHOT_ACTIVE)
      continue;
    if (buf == NULL && (buf = malloc (granule_size (s))) == NULL) {
      broke = break_locked (s, "out of memory for a copy");
      break;
    }
    if (slot_set (s, g, SLOT_COPYING) == -1) {
      broke = break_locked (s, "out of memory for the map of preserved "
                            "granules");
      break;
    }
    broke = copy_granule (s, g, buf, read, ctx);
  }
  leave_op (s);
  return broke;
}

bool
snapshot_before_write (struct snapshot *s, uint64_t offset, uint64_t count,
                       snapshot_read_fn read, void *ctx)
{
  /* Preserved granules never change back while it is active, and a
   * complete snapshot has nothing left to copy.
   */
  if (atomic_load (&s->complete))
    return false;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  return before_write_locked (s, offset, count, read, ctx);
}

static int
read_fail (int e, int *err, char *msg, size_t len, const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));
static int
read_fail (int e, int *err, char *msg, size_t len, const char *fmt, ...)
{
  va_list ap;

  *err = e;
  va_start (ap, fmt);
  vsnprintf (msg, len, fmt, ap);
  va_end (ap);
  return -1;
}

/* 0 if S may be read now, else -1 saying why (lock held). */
static int
check_readable (struct snapshot *s, int *err, char *msg, size_t len)
{
  if (s->state == SNAPSHOT_BROKEN)
    return read_fail (EIO, err, msg, len, "snapshot '%s' is broken: %s",
                      s->name, s->why);
  if (s->state == SNAPSHOT_RELEASED)
    return read_fail (EIO, err, msg, len, "snapshot '%s' was released",
                      s->name);
  return 0;
}

/* Read part [off, off+n) of the export lying in granules FIRST..LAST, all
 * NONE when looked at (lock held, dropped for the read).  Sets *REDO to
 * the first granule preserved meanwhile (its bytes may be newer), or
 * LAST + 1.
 */
static int
read_live (struct snapshot *s, unsigned char *buf, uint64_t off, uint64_t n,
           uint64_t first, uint64_t last, snapshot_read_fn read, void *ctx,
           uint64_t *redo, int *err, char *msg, size_t len)
{
  uint64_t g;
  int r, e = 0;

  pthread_mutex_unlock (&s->lock);
  r = read (ctx, buf, n, off, &e);
  pthread_mutex_lock (&s->lock);
  if (r == -1)
    return read_fail (e ? e : EIO, err, msg, len, "snapshot '%s': "
                      "reading the export at offset %" PRIu64 ": %s",
                      s->name, off, strerror (e ? e : EIO));
  if (check_readable (s, err, msg, len) == -1)
    return -1;
  for (g = first; g <= last; ++g)
    if (is_preserved (slot_get (s, g)))
      break;
  *redo = g;
  return 0;
}

int
snapshot_read (struct snapshot *s, void *buf, uint32_t count,
               uint64_t offset, snapshot_read_fn read, void *ctx,
               int *err, char *msg, size_t len)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  unsigned char *p = buf;
  uint64_t pos = offset, end = offset + count, gs = granule_size (s);
  int r = 0;

  if (check_readable (s, err, msg, len) == -1)
    return -1;
  if (end > s->size)
    return read_fail (EINVAL, err, msg, len, "snapshot '%s': read "
                      "beyond its size %" PRIu64, s->name, s->size);
  s->ops++;
  while (pos < end && r == 0) {
    uint64_t g = pos >> s->granule_bits, h, gend, redo = 0;
    uint32_t v = slot_get (s, g);

    if ((r = check_readable (s, err, msg, len)) == -1)
      break;
    if (!wanted (s, g)) {
      r = read_fail (EPERM, err, msg, len, "snapshot '%s' holds only "
                     "what its frozen bitmap marks dirty; offset %" PRIu64
                     " is not", s->name, pos);
      break;
    }
    if (v == SLOT_COPYING) {
      wait_cond (s);
      continue;
    }
    gend = (g + 1) << s->granule_bits;
    if (gend > end)
      gend = end;
    if (v == SLOT_ZERO) {
      memset (p + (pos - offset), 0, gend - pos);
      pos = gend;
      continue;
    }
    if (v >= SLOT_FIRST) {
      uint64_t at = (uint64_t) (v - SLOT_FIRST) * gs + (pos & (gs - 1));
      ssize_t n;

      pthread_mutex_unlock (&s->lock);
      n = pread (s->fd, p + (pos - offset), gend - pos, at);
      pthread_mutex_lock (&s->lock);
      if (n != (ssize_t) (gend - pos))
        r = read_fail (n == -1 ? errno : EIO, err, msg, len,
                       "snapshot '%s': reading the store in %s: %s", s->name,
                       s->dir, n == -1 ? strerror (errno) : "short read");
      pos = gend;
      continue;
    }
    /* A run of readable granules none of which is preserved: one read. */
    for (h = g + 1; (h << s->granule_bits) < end &&
           slot_get (s, h) == SLOT_NONE && wanted (s, h); ++h)
      ;
    gend = h << s->granule_bits;
    if (gend > end)
      gend = end;
    r = read_live (s, p + (pos - offset), pos, gend - pos, g, h - 1, read,
                   ctx, &redo, err, msg, len);
    if (r == 0)
      pos = redo < h ? (redo << s->granule_bits > pos
                        ? redo << s->granule_bits : pos)
        : gend;
  }
  leave_op (s);
  return r;
}

void
snapshot_map (struct snapshot *s, uint64_t offset, uint64_t count,
              void (*emit) (void *opaque, uint64_t offset, uint64_t length,
                            int kind),
              void *opaque)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  uint64_t pos = offset, end = offset + count, start = offset;
  int kind = -1;

  if (end > s->size)
    end = s->size;
  while (pos < end) {
    uint64_t g = pos >> s->granule_bits, gend = (g + 1) << s->granule_bits;
    uint32_t v = slot_get (s, g);
    int k = !wanted (s, g) ? 3 : v == SLOT_ZERO ? 1 : v >= SLOT_FIRST ? 0 : 2;

    if (k != kind && kind != -1) {
      emit (opaque, start, pos - start, kind);
      start = pos;
    }
    kind = k;
    pos = gend < end ? gend : end;
  }
  if (kind != -1)
    emit (opaque, start, pos - start, kind);
}

bool
snapshot_untouched (struct snapshot *s, uint64_t offset, uint64_t count)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  uint64_t g, last;

  if (count == 0 || offset >= s->size)
    return true;
  if (count > s->size - offset)
    count = s->size - offset;
  last = (offset + count - 1) >> s->granule_bits;
  for (g = offset >> s->granule_bits; g <= last; ++g)
    if (is_preserved (slot_get (s, g)))
      return false;
  return true;
}

void
snapshot_release (struct snapshot *s)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

  if (s->state == SNAPSHOT_RELEASED)
    return;
  s->state = SNAPSHOT_RELEASED;
  pthread_cond_broadcast (&s->cond);
  while (s->ops > 0)
    wait_cond (s);
  /* Nothing reads or writes the store now, nor will (every path checks
   * the state first): give its space back at once.
   */
  if (s->fd >= 0) {
    if (ftruncate (s->fd, 0) == -1) {
      /* closing it below gives the space back all the same */
    }
    close (s->fd);
    s->fd = -1;
  }
}

void
snapshot_get_info (struct snapshot *s, struct snapshot_info *i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);
  uint64_t b = s->preserved << s->granule_bits;

  i->state = s->state;
  i->preserved_bytes = b < s->size ? b : s->size;
  i->store_bytes = s->state == SNAPSHOT_RELEASED ? 0
    : s->next_slot << s->granule_bits;
  i->map_bytes = s->map_bytes;
  i->readers = s->readers;
  snprintf (i->why, sizeof i->why, "%s", s->why);
}

const char *
snapshot_state_name (enum snapshot_state st)
{
  switch (st) {
  case SNAPSHOT_ACTIVE: return "active";
  case SNAPSHOT_BROKEN: return "broken";
  case SNAPSHOT_RELEASED: return "released";
  }
  return "unknown";
}

void
snapshot_ref (struct snapshot *s, bool reader)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&s->lock);

  s->refs++;
  if (reader)
    s->readers++;
}

static void
snapshot_free (struct snapshot *s)
{
  uint64_t b, l;

  for (b = 0; s->blocks && b < s->nblocks; ++b) {
    for (l = 0; s->blocks[b] && l < SNAPSHOT_BLOCK_LEAVES; ++l)
      free (s->blocks[b][l]);
    free (s->blocks[b]);
  }
  free (s->blocks);
  if (s->inited) {
    pthread_mutex_destroy (&s->lock);
    pthread_cond_destroy (&s->cond);
  }
  if (s->fd >= 0)
    close (s->fd);
  bitmap_delete (s->readable);
  for (b = 0; s->frozen && s->frozen[b]; ++b)
    free (s->frozen[b]);
  free (s->frozen);
  free (s->name);
  free (s->dir);
  free (s);
}

void
snapshot_unref (struct snapshot *s, bool reader)
{
  bool last;

  if (!s->inited) {             /* snapshot_new failed */
    snapshot_free (s);
    return;
  }
  pthread_mutex_lock (&s->lock);
  assert (s->refs > 0);
  last = --s->refs == 0;
  if (reader)
    s->readers--;
  pthread_mutex_unlock (&s->lock);
  if (last)
    snapshot_free (s);
}
