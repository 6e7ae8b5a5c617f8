/* Freeing what concurrent markers may still read, without a shared write
 * on the write path (epoch-based reclamation).
 *
 * A thread about to read published tracker objects (a track_set, the
 * states and bitmaps it points to) enters: it stores the current global
 * epoch in its own slot (a cache line of its own, so no line is shared
 * between writers), and leaves by storing 0.  An object unpublished (no
 * longer reachable from tr->set or the model) is retired, tagged with the
 * epoch at that moment, and the epoch advances.  It is freed once no slot
 * holds an epoch <= its tag: every thread that might have loaded a
 * pointer to it has left since.
 *
 * Why that is enough: the reader's slot store and its loads of the
 * published pointer are seq_cst, and so are the unpublishing store, the
 * epoch increment and the reclaimer's reads of the slots.  If the
 * reclaimer reads a reader's slot before the reader's store, the
 * reader's later load of the pointer comes after the unpublishing and
 * sees the new object; if after, the slot holds an epoch no newer than
 * the object's tag (the reader loaded the epoch before storing it), and
 * the object is kept.
 *
 * States of a slot: 0 (outside), E (inside, entered in epoch E).  Only
 * its thread writes it; a thread that exits gives its slot back for reuse
 * (a pthread key destructor).
 */
#ifndef DBM_EPOCH_H
#define DBM_EPOCH_H

#include <stdatomic.h>
#include <stdint.h>

struct epoch_slot {
  _Atomic uint64_t epoch;       /* 0: not inside */
  _Atomic int owned;            /* a live thread has it */
  struct epoch_slot *next;      /* all slots; never freed */
} __attribute__ ((aligned (64)));

/* Hidden: the write path reads it directly, not through the GOT. */
extern _Atomic uint64_t epoch_global __attribute__ ((visibility ("hidden")));
extern __thread struct epoch_slot *epoch_self
  __attribute__ ((tls_model ("initial-exec")));

/* The first entry of a thread: find or make its slot. */
extern struct epoch_slot *epoch_register (void);

static inline __attribute__ ((always_inline)) struct epoch_slot *
epoch_enter (void)
{
  struct epoch_slot *s = epoch_self;

  if (__builtin_expect (s == NULL, 0))
    s = epoch_register ();
  /* acquire: an epoch advanced by a retirement brings the unpublishing
   * store with it, so the pointer loads that follow see the new object.
   */
  atomic_store (&s->epoch,
                atomic_load_explicit (&epoch_global, memory_order_acquire));
  return s;
}

/* The write path's entry: no call, so that the caller needs no stack
 * frame.  NULL if this thread has no slot yet: the caller then takes its
 * general path, whose epoch_enter registers one.
 */
static inline __attribute__ ((always_inline)) struct epoch_slot *
epoch_try_enter (void)
{
  struct epoch_slot *s = epoch_self;

  if (__builtin_expect (s != NULL, 1))
    atomic_store (&s->epoch,
                  atomic_load_explicit (&epoch_global, memory_order_acquire));
  return s;
}

static inline __attribute__ ((always_inline)) void
epoch_leave (struct epoch_slot *s)
{
  atomic_store_explicit (&s->epoch, 0, memory_order_release);
}

/* P is unreachable for any thread that enters from now on: free it with
 * FN once every thread inside now has left.  OWNER groups objects for
 * epoch_drain.  Returns -1 (ENOMEM) if it could not be queued; the
 * caller then keeps P (a leak, never a use after free).
 */
extern int epoch_retire (void *owner, void *p, void (*fn) (void *));

/* Free every retired object no thread can still be reading.  Never
 * waits; cheap when there is nothing to free.
 */
extern void epoch_reclaim (void);

/* Free OWNER's retired objects now: the caller knows no thread reads
 * them any more (the tracker is being freed).
 */
extern void epoch_drain (void *owner);

/* Wait until every thread inside now has left: a thread that enters
 * later loads every pointer published before the call.  The caller must
 * hold nothing a thread inside may wait for.
 */
extern void epoch_barrier (void);

/* Objects retired and not yet freed (tests). */
extern uint64_t epoch_pending (void);

#endif /* DBM_EPOCH_H */
