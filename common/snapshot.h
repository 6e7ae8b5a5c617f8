/* A point-in-time snapshot of an export, kept by copy-before-write: the
 * old contents of a granule are saved in the snapshot's store before the
 * first write after the cut reaches it.  Plain C, no nbdkit: the export is
 * read through a callback, so tests drive it directly.
 *
 * The snapshot's states and what guards them (lock is the snapshot's):
 *
 *   ACTIVE     copies on write; readers get the contents at the cut
 *   BROKEN     a copy failed (store full, I/O error, cap reached): writes
 *              go on uncopied, every read fails with EIO; WHY says why
 *   RELEASED   ended by snapshot_release: writes ignore it, reads fail
 *              with EIO, the store is empty (its space freed)
 *
 *   ACTIVE -> BROKEN     a writer's copy that failed (snapshot_before_write),
 *                        under lock
 *   ACTIVE, BROKEN -> RELEASED   snapshot_release, under lock; the store
 *                        is emptied and closed once no operation is inside
 *                        (ops)
 *
 * Each granule of the export at the cut is, in the slot map:
 *
 *   SLOT_NONE      not preserved: its contents at the cut are the
 *                  export's now (nothing wrote it since the cut)
 *   SLOT_COPYING   a writer is copying it: others wait on cond
 *   SLOT_ZERO      preserved, and was all zeroes (nothing stored)
 *   >= SLOT_FIRST  preserved in store slot (value - SLOT_FIRST)
 *
 *   NONE -> COPYING -> ZERO or stored   the first writer, under lock for
 *                        each transition; it forwards its write only once
 *                        the granule is preserved
 *   COPYING -> NONE      the copy failed: the snapshot is BROKEN first
 *
 * A reader that finds a granule NONE reads the export without the lock,
 * then looks again: still NONE or COPYING means no write reached it
 * meanwhile (writers forward only after preservation); preserved means
 * one may have, and it reads the preserved copy instead.
 */
#ifndef DBM_SNAPSHOT_H
#define DBM_SNAPSHOT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bitmap.h"
#include "dbm-error.h"

/* The export a snapshot is served as: this prefix and its name. */
#define SNAPSHOT_EXPORT_PREFIX "snapshot:"

enum snapshot_state { SNAPSHOT_ACTIVE, SNAPSHOT_BROKEN, SNAPSHOT_RELEASED };

/* Read COUNT bytes of the live export at OFFSET; 0, or -1 with *ERR set. */
typedef int (*snapshot_read_fn) (void *ctx, void *buf, uint32_t count,
                                 uint64_t offset, int *err);

/* The slot map: a directory of blocks of leaves, each allocated at its
 * first preserved granule, so that its memory follows what was preserved.
 */
#define SNAPSHOT_LEAF_SLOTS 512         /* granules per leaf (2 KiB) */
#define SNAPSHOT_BLOCK_LEAVES 512       /* leaves per block (4 KiB) */

struct snapshot {
  char *name;                   /* the checkpoint's bitmap name */
  uint64_t size;                /* the export's size at the cut */
  unsigned granule_bits;
  uint64_t ngranules;
  /* --snapshot=dirty: the granules a reader may read (any bit of the
   * frozen bitmaps in them), at granule size; NULL for a full snapshot.
   * Immutable once the snapshot is published.
   */
  struct bitmap *readable;
  uint64_t max_bytes;           /* bitmap-snapshot-max, 0 for none */
  int fd;                       /* the store: unlinked; -1 once released */
  bool inited;                  /* lock and cond initialised */
  char *dir;                    /* where the store is */
  /* The bitmaps its checkpoint disabled (NULL-terminated; set by the
   * creator before it is published, freed with it): what changed up to
   * the cut.
   */
  char **frozen;

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* a copy finished; ops reached 0 */
  enum snapshot_state state;
  char why[256];                /* BROKEN: the cause */
  uint32_t ***blocks;           /* slot map: blocks of leaves */
  uint64_t nblocks;
  uint64_t next_slot;           /* store slots used */
  uint64_t preserved;           /* granules preserved (zero or stored) */
  uint64_t ops;                 /* reads and copies inside, not locked */
  unsigned waiting;             /* threads in pthread_cond_wait */
  uint64_t nwanted;             /* granules to preserve (snapshot_seal) */
  /* Every wanted granule is preserved: writers need not even lock.  Set
   * under lock, once; read without.
   */
  _Atomic bool complete;
  unsigned readers;             /* connections open on it */
  unsigned refs;                /* the owner's, and each reader's */
  uint64_t map_bytes;           /* heap of the slot map */
};

/* Create a snapshot of an export of SIZE bytes, its store an unlinked
 * file in DIR.  READABLE (taken over; NULL for a full snapshot) limits
 * what may be read and preserved.
 */
extern int snapshot_new (const char *name, uint64_t size,
                         unsigned granule_bits, const char *dir,
                         uint64_t max_bytes, struct bitmap *readable,
                         struct snapshot **snapp, struct dbm_err *err);

/* Before a write, zero or trim of [offset, offset+count) is forwarded:
 * preserve every granule of it not yet preserved, reading its old
 * contents through READ.  Never fails: a copy that cannot be made breaks
 * the snapshot (the write must go on); true if this call broke it.
 */
extern bool snapshot_before_write (struct snapshot *s, uint64_t offset,
                                   uint64_t count, snapshot_read_fn read,
                                   void *ctx);

/* Read the snapshot's contents.  0, or -1 with *ERR: EIO (broken or
 * released; ERRMSG says why), EPERM (outside a dirty snapshot's
 * granules), or what READ or the store failed with.
 */
extern int snapshot_read (struct snapshot *s, void *buf, uint32_t count,
                          uint64_t offset, snapshot_read_fn read, void *ctx,
                          int *err, char *errmsg, size_t errlen);

/* What the snapshot holds over [offset, offset+count): calls EMIT for
 * maximal runs of equal kind, kind 0 preserved data, 1 preserved zeroes,
 * 2 not preserved (the export's own extents are true there, as long as
 * the caller looks again afterwards), 3 not readable (dirty snapshot).
 */
extern void snapshot_map (struct snapshot *s, uint64_t offset, uint64_t count,
                          void (*emit) (void *opaque, uint64_t offset,
                                        uint64_t length, int kind),
                          void *opaque);

/* Is every granule of [offset, offset+count) still not preserved? */
extern bool snapshot_untouched (struct snapshot *s, uint64_t offset,
                                uint64_t count);

/* S is about to go live (its readable set final): count what it must
 * preserve, so that it knows when it is complete.
 */
extern void snapshot_seal (struct snapshot *s);

/* End S: it copies nothing more and every read fails; the store is
 * closed (its space freed) once no read or copy is inside.
 */
extern void snapshot_release (struct snapshot *s);

/* Figures for status, under the lock. */
struct snapshot_info {
  enum snapshot_state state;
  uint64_t preserved_bytes;     /* of the export, preserved */
  uint64_t store_bytes;         /* written to the store */
  uint64_t map_bytes;
  unsigned readers;
  char why[256];
};
extern void snapshot_get_info (struct snapshot *s, struct snapshot_info *i);

extern const char *snapshot_state_name (enum snapshot_state st);

/* References: snapshot_new returns one; a reader connection takes one
 * (snapshot_ref with READER true counts it in readers).  The last
 * snapshot_unref frees S.
 */
extern void snapshot_ref (struct snapshot *s, bool reader);
extern void snapshot_unref (struct snapshot *s, bool reader);

#endif /* DBM_SNAPSHOT_H */
