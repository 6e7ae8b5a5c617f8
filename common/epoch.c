/* Epoch-based reclamation (see epoch.h). */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "cleanup.h"
#include "epoch.h"

/* Starts at 1: a slot holding 0 is outside. */
_Atomic uint64_t epoch_global = 1;
__thread struct epoch_slot *epoch_self __attribute__ ((tls_model ("initial-exec")));

struct retired {
  void *owner, *p;
  void (*fn) (void *);
  uint64_t tag;
  struct retired *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* both lists */
static struct epoch_slot *_Atomic slots;
static struct retired *retired;
static uint64_t npending;
static pthread_key_t key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

/* A thread exits: its slot is free for the next new thread. */
static void
give_back (void *p)
{
  struct epoch_slot *s = p;

  atomic_store (&s->epoch, 0);
  atomic_store (&s->owned, 0);
}

static void
make_key (void)
{
  if (pthread_key_create (&key, give_back) != 0)
    abort ();
}

struct epoch_slot *
epoch_register (void)
{
  struct epoch_slot *s;

  pthread_once (&key_once, make_key);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    for (s = atomic_load (&slots); s; s = s->next)
      if (atomic_load (&s->owned) == 0)
        break;
    if (s == NULL) {
      /* Never freed: a slot outlives its thread, for the next one. */
      s = aligned_alloc (64, sizeof *s);
      if (s == NULL)
        abort ();               /* a few bytes, once per thread */
      atomic_init (&s->epoch, 0);
      s->next = atomic_load (&slots);
      atomic_store (&slots, s);
    }
    atomic_store (&s->owned, 1);
  }
  pthread_setspecific (key, s);
  epoch_self = s;
  return s;
}

int
epoch_retire (void *owner, void *p, void (*fn) (void *))
{
  struct retired *r = malloc (sizeof *r);

  if (p == NULL) {
    free (r);
    return 0;
  }
  if (r == NULL)
    return -1;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  r->owner = owner;
  r->p = p;
  r->fn = fn;
  r->tag = atomic_fetch_add (&epoch_global, 1);
  r->next = retired;
  retired = r;
  npending++;
  return 0;
}

/* The oldest epoch a thread is inside now, or UINT64_MAX. */
static uint64_t
oldest_inside (void)
{
  struct epoch_slot *s;
  uint64_t min = UINT64_MAX, e;

  for (s = atomic_load (&slots); s; s = s->next) {
    e = atomic_load (&s->epoch);
    if (e != 0 && e < min)
      min = e;
  }
  return min;
}

/* Free the entries PRED accepts (lock held). */
static void
sweep (void *owner, uint64_t below)
{
  struct retired **pp = &retired, *r;

  while ((r = *pp) != NULL) {
    if ((owner && r->owner == owner) || (!owner && r->tag < below)) {
      *pp = r->next;
      r->fn (r->p);
      free (r);
      npending--;
    }
    else
      pp = &r->next;
  }
}

void
epoch_reclaim (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (retired)
    sweep (NULL, oldest_inside ());
}

void
epoch_drain (void *owner)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  sweep (owner, 0);
}

void
epoch_barrier (void)
{
  uint64_t e = atomic_fetch_add (&epoch_global, 1);
  struct timespec ts = { .tv_sec = 0, .tv_nsec = 200000 };

  /* A slot holding E or less entered before the increment. */
  while (oldest_inside () <= e) {
    nanosleep (&ts, NULL);
    if (ts.tv_nsec < 10000000)
      ts.tv_nsec *= 2;
  }
}

uint64_t
epoch_pending (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  return npending;
}
