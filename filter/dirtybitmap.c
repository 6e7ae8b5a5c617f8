/* nbdkit dirtybitmap filter: record every write in qcow2 persistent
 * bitmaps.  A thin adapter: parsing keys, the lifecycle hooks and the data
 * callbacks; the tracking and the file live in common/tracker.c.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "parse-size.h"
#include "tracker.h"

/* -D dirtybitmap.verbose=1 */
NBDKIT_DLL_PUBLIC int dirtybitmap_debug_verbose = 0;
static bool verbose;    /* the same, copied in get_ready: one load less */

static char *bitmap_file;
static const char *bitmap_name = "dirtybitmap";
static bool bitmap_name_default = true;
static unsigned granularity_bits = 16;
static enum tracker_mode mode = TRACKER_CRASH_SAFE;
static enum qcow2_layout layout = QCOW2_LAYOUT_QEMU;
static enum tracker_in_use in_use_policy = IN_USE_DIRTY;
static uint64_t region_size = UINT64_C (64) << 20;
static unsigned persist_interval = 30;
static char *control_path;

static struct tracker *tracker;
static pthread_mutex_t size_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_t persist_thread;
static bool persist_thread_running;

static void
log_note (const char *fmt, ...)
{
  va_list ap;
  char msg[1024];

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  /* nbdkit has no info level; notes must reach the user without -v. */
  nbdkit_error ("dirtybitmap: note: %s", msg);
}

static void
dirtybitmap_unload (void)
{
  /* Never write here: unload also runs for --help and --dump-plugin. */
  control_stop (false);
  tracker_free (tracker);
  tracker = NULL;
  free (bitmap_file);
  free (control_path);
}

static int
dirtybitmap_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  struct dbm_err err;
  int64_t r;

  if (strcmp (key, "bitmap-file") == 0) {
    if (*value == '\0') {
      nbdkit_error ("bitmap-file: must not be empty");
      return -1;
    }
    free (bitmap_file);
    bitmap_file = nbdkit_absolute_path (value);
    return bitmap_file ? 0 : -1;
  }
  if (strcmp (key, "bitmap-name") == 0) {
    size_t len = strlen (value);
    if (len == 0 || len > BME_MAX_NAME_SIZE) {
      nbdkit_error ("bitmap-name: must be 1..1023 bytes, got %zu", len);
      return -1;
    }
    bitmap_name = value;
    bitmap_name_default = false;
    return 0;
  }
  if (strcmp (key, "bitmap-granularity") == 0) {
    if (dbm_parse_pow2 ("bitmap-granularity", value, 512,
                        UINT64_C (1) << 31, &granularity_bits, &err) == -1) {
      nbdkit_error ("%s", err.msg);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "bitmap-mode") == 0) {
    if (strcmp (value, "crash-safe") == 0)
      mode = TRACKER_CRASH_SAFE;
    else if (strcmp (value, "qemu") == 0)
      mode = TRACKER_QEMU;
    else {
      nbdkit_error ("bitmap-mode: '%s' is not crash-safe or qemu", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "bitmap-format") == 0) {
    if (strcmp (value, "qemu") == 0)
      layout = QCOW2_LAYOUT_QEMU;
    else if (strcmp (value, "draft-2015") == 0)
      layout = QCOW2_LAYOUT_DRAFT2015;
    else {
      nbdkit_error ("bitmap-format: '%s' is not qemu or draft-2015", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "bitmap-in-use") == 0) {
    if (strcmp (value, "dirty") == 0)
      in_use_policy = IN_USE_DIRTY;
    else if (strcmp (value, "refuse") == 0)
      in_use_policy = IN_USE_REFUSE;
    else {
      nbdkit_error ("bitmap-in-use: '%s' is not dirty or refuse", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "bitmap-region") == 0) {
    unsigned bits;
    if (dbm_parse_pow2 ("bitmap-region", value, 4096, UINT64_C (1) << 50,
                        &bits, &err) == -1) {
      nbdkit_error ("%s", err.msg);
      return -1;
    }
    region_size = UINT64_C (1) << bits;
    return 0;
  }
  if (strcmp (key, "bitmap-control") == 0) {
    if (*value == '\0') {
      nbdkit_error ("bitmap-control: must not be empty");
      return -1;
    }
    free (control_path);
    control_path = nbdkit_absolute_path (value);
    return control_path ? 0 : -1;
  }
  if (strcmp (key, "bitmap-persist-interval") == 0) {
    r = nbdkit_parse_size (value);
    if (r < 1 || r > 86400) {
      nbdkit_error ("bitmap-persist-interval: '%s' is not a number of "
                    "seconds in 1..86400", value);
      return -1;
    }
    persist_interval = r;
    return 0;
  }
  return next (nxdata, key, value);
}

static int
dirtybitmap_config_complete (nbdkit_next_config_complete *next,
                             nbdkit_backend *nxdata)
{
  if (bitmap_file == NULL) {
    nbdkit_error ("the bitmap-file parameter is required "
                  "(bitmap-file=PATH.qcow2)");
    return -1;
  }
  return next (nxdata);
}

#define dirtybitmap_config_help \
  "bitmap-file=<PATH>        (required) qcow2 file holding the bitmaps.\n" \
  "bitmap-name=<NAME>        Bitmap to create if absent (default dirtybitmap).\n" \
  "bitmap-granularity=<SIZE> Granularity of a created bitmap (default 64K).\n" \
  "bitmap-mode=crash-safe|qemu  Persistence mode (default crash-safe).\n" \
  "bitmap-format=qemu|draft-2015 File layout (default qemu).\n" \
  "bitmap-in-use=dirty|refuse   A bitmap found in use (default dirty).\n" \
  "bitmap-region=<SIZE>      crash-safe: region pre-marked on first write (64M).\n" \
  "bitmap-persist-interval=<SECS> crash-safe: exact persist period (30).\n" \
  "bitmap-control=<SOCKET>   Unix socket for status/checkpoint/persist/remove."

/* Open and validate in get_ready, while errors still reach the terminal
 * and before any client can connect.
 */
static int
dirtybitmap_get_ready (int thread_model)
{
  struct tracker_config cfg = {
    .path = bitmap_file, .layout = layout, .bitmap_name = bitmap_name,
    .bitmap_name_default = bitmap_name_default,
    .granularity_bits = granularity_bits, .mode = mode,
    .in_use_policy = in_use_policy, .region_size = region_size,
    .log = log_note,
  };
  struct dbm_err err;

  verbose = dirtybitmap_debug_verbose;
  /* The socket first: a start that fails must leave the file untouched. */
  if (control_path && control_open (control_path) == -1)
    return -1;
  if (tracker_open (&cfg, &tracker, &err) == -1) {
    nbdkit_error ("%s", err.msg);
    control_stop (true);
    return -1;
  }
  if (dirtybitmap_debug_verbose)
    nbdkit_debug ("dirtybitmap: %s opened, %zu bitmap(s) tracked, mode %s",
                  bitmap_file, tracker_ntracked (tracker),
                  mode == TRACKER_QEMU ? "qemu" : "crash-safe");
  return 0;
}

/* The persist thread.  crash-safe mode: the file is always a durable
 * superset; a periodic persist shrinks all-ones regions back to exact bits,
 * which bounds the over-approximation after a crash.  Both modes: when
 * nbdkit is told to quit it waits for idle clients to leave before
 * .cleanup runs, and may be SIGKILLed meanwhile (systemd); so save at once
 * (in qemu mode also clearing in_use) when the signal arrives.
 */
static int quit_pipe[2] = { -1, -1 };
static struct sigaction old_actions[NSIG];

static void
on_quit_signal (int sig, siginfo_t *info, void *ctx)
{
  int saved = errno;
  const struct sigaction *old = &old_actions[sig];

  /* nbdkit's own handler first: it sets quit and wakes its threads. */
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction)
      old->sa_sigaction (sig, info, ctx);
  }
  else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN)
    old->sa_handler (sig);
  if (quit_pipe[1] >= 0 && write (quit_pipe[1], "q", 1) == -1) {
    /* nothing to do: the pipe is full, so a wake-up is pending anyway */
  }
  errno = saved;
}

/* nbdkit installs its quit handlers after after_fork; chain onto them at
 * the first connection.
 */
static void
chain_quit_handlers (void)
{
  static const int sigs[] = { SIGINT, SIGQUIT, SIGTERM, SIGHUP };
  static bool done;
  struct sigaction sa;
  size_t i;

  if (done || quit_pipe[1] < 0)
    return;
  done = true;
  memset (&sa, 0, sizeof sa);
  sa.sa_sigaction = on_quit_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset (&sa.sa_mask);
  for (i = 0; i < sizeof sigs / sizeof sigs[0]; ++i)
    sigaction (sigs[i], &sa, &old_actions[sigs[i]]);
}

static void *
persist_loop (void *arg)
{
  struct dbm_err err;
  struct pollfd pfd = { .fd = quit_pipe[0], .events = POLLIN };
  int timeout = mode == TRACKER_CRASH_SAFE ? (int) persist_interval * 1000 : -1;
  char c;

  for (;;) {
    int r = poll (&pfd, 1, timeout);

    if (r == -1 && errno != EINTR)
      break;
    if (r > 0) {
      if (read (quit_pipe[0], &c, 1) == 1 && c == 's')
        break;                  /* .cleanup stops us */
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
      if (tracker_quiesce (tracker, &err) == -1)
        nbdkit_error ("%s", err.msg);
      else if (dirtybitmap_debug_verbose)
        nbdkit_debug ("dirtybitmap: quit signal: bitmaps saved");
      continue;
    }
    if (r == 0) {
      /* size_lock: the first connection may be creating the file. */
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
      if (tracker_dirty (tracker) && tracker_persist (tracker, &err) == -1)
        nbdkit_error ("%s", err.msg);
    }
  }
  return NULL;
}

/* One control command (see the man page, CONTROL SOCKET).  size_lock
 * orders it with the first connection creating the file and with growth.
 */
static char *
control_command (const char *line)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
  CLEANUP_FREE char *copy = strdup (line);
  char *save = NULL, *cmd, *arg1, *arg2, *extra, *out = NULL;
  struct dbm_err err = { .errnum = 0 };
  unsigned g = granularity_bits;
  int r = -1;

  if (copy == NULL)
    return NULL;
  cmd = strtok_r (copy, " \t", &save);
  arg1 = strtok_r (NULL, " \t", &save);
  arg2 = strtok_r (NULL, " \t", &save);
  extra = strtok_r (NULL, " \t", &save);
  if (cmd == NULL)
    dbm_seterr (&err, EINVAL, "empty command (status, checkpoint, persist, "
                "remove)");
  else if (strcmp (cmd, "status") == 0 && !arg1) {
    out = tracker_status_json (tracker, &err);
    if (out)
      return out;
  }
  else if (strcmp (cmd, "persist") == 0 && !arg1)
    r = tracker_persist (tracker, &err);
  else if (strcmp (cmd, "checkpoint") == 0 && arg1 && !extra) {
    if (strlen (arg1) > BME_MAX_NAME_SIZE)
      dbm_seterr (&err, EINVAL, "checkpoint: NAME must be 1..1023 bytes");
    else if (arg2 == NULL ||
             dbm_parse_pow2 ("granularity", arg2, 512, UINT64_C (1) << 31,
                             &g, &err) == 0)
      r = tracker_checkpoint (tracker, arg1, g, &err);
  }
  else if (strcmp (cmd, "remove") == 0 && arg1 && !arg2)
    r = tracker_remove (tracker, arg1, &err);
  else
    dbm_seterr (&err, EINVAL, "usage: status | checkpoint NAME "
                "[GRANULARITY] | persist | remove NAME");
  if (r == 0)
    return strdup ("ok");
  if (err.errnum || err.msg[0])
    nbdkit_error ("dirtybitmap: control: %s: %s", line, err.msg);
  if (asprintf (&out, "error: %s", err.msg) == -1)
    return NULL;
  return out;
}

static int
dirtybitmap_after_fork (nbdkit_backend *backend)
{
  int r;

  if (pipe2 (quit_pipe, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbdkit_error ("dirtybitmap: pipe: %m");
    return -1;
  }
  r = pthread_create (&persist_thread, NULL, persist_loop, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("dirtybitmap: create persist thread: %m");
    return -1;
  }
  persist_thread_running = true;
  return control_start (control_command);
}

static void
dirtybitmap_cleanup (nbdkit_backend *backend)
{
  struct dbm_err err;

  control_stop (true);
  if (persist_thread_running) {
    while (write (quit_pipe[1], "s", 1) == -1 && errno == EINTR)
      ;
    pthread_join (persist_thread, NULL);
    persist_thread_running = false;
  }
  if (tracker && tracker_close (tracker, &err) == -1)
    nbdkit_error ("%s", err.msg);
  tracker = NULL;
}

/* Each connection must see the size the file was made for.  A missing
 * file is created here, at the first connection, sized from its export,
 * before that client is served: a failure (say, a full disk) is then an
 * error for that client, not an exit of the server (which, from
 * after_fork, would leave an already-started --run command hanging).
 */
static int
dirtybitmap_prepare (nbdkit_next *next, void *handle, int readonly)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
  struct dbm_err err;
  int64_t size = next->get_size (next);

  chain_quit_handlers ();
  if (size == -1)
    return -1;
  if (tracker_set_size (tracker, size, &err) == -1) {
    nbdkit_error ("%s", err.msg);
    return -1;
  }
  return 0;
}

/* Always advertise flush: a flush is how a client makes the bitmap durable. */
static int
dirtybitmap_can_flush (nbdkit_next *next, void *handle)
{
  if (next->can_flush (next) == -1)
    return -1;
  return 1;
}

/* In crash-safe mode the file is always a durable superset, so only qemu
 * mode writes on flush.
 */
static int
save (int *err)
{
  struct dbm_err e;

  if (mode != TRACKER_QEMU)
    return 0;
  if (tracker_persist (tracker, &e) == -1) {
    nbdkit_error ("%s", e.msg);
    *err = EIO;
    return -1;
  }
  return 0;
}

static int
dirtybitmap_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  int r = next->can_flush (next);

  if (r == -1) {
    *err = EIO;
    return -1;
  }
  if (r == 1 && next->flush (next, 0, err) == -1)
    return -1;
  return save (err);
}

static inline int
mark (uint64_t offset, uint32_t count, int *err)
{
  if (dirtybitmap_debug_verbose)
    nbdkit_debug ("dirtybitmap: mark %" PRIu64 "+%" PRIu32, offset, count);
  if (tracker_mark (tracker, offset, count) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("dirtybitmap: cannot record write at %" PRIu64 "+%" PRIu32
                  ": %m", offset, count);
    return -1;
  }
  return 0;
}

/* The steady state: the range is already recorded (and, crash-safe, its
 * region durable), no FUA, no debug: hand the request over as a tail
 * call, so the filter costs a few loads.
 */
static inline __attribute__ ((always_inline)) bool
steady (uint64_t offset, uint32_t count, uint32_t flags)
{
  return !(flags & NBDKIT_FLAG_FUA) && !verbose &&
    tracker_mark_is_noop (tracker, offset, count);
}

static int __attribute__ ((noinline))
record_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (mark (offset, count, err) == -1 ||
      next->pwrite (next, buf, count, offset, flags, err) == -1)
    return -1;
  return (flags & NBDKIT_FLAG_FUA) ? save (err) : 0;
}

static int
dirtybitmap_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (steady (offset, count, flags))
    return next->pwrite (next, buf, count, offset, flags, err);
  return record_pwrite (next, handle, buf, count, offset, flags, err);
}

static int __attribute__ ((noinline))
record_zero (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (mark (offset, count, err) == -1 ||
      next->zero (next, count, offset, flags, err) == -1)
    return -1;
  return (flags & NBDKIT_FLAG_FUA) ? save (err) : 0;
}

static int
dirtybitmap_zero (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  if (steady (offset, count, flags))
    return next->zero (next, count, offset, flags, err);
  return record_zero (next, handle, count, offset, flags, err);
}

static int __attribute__ ((noinline))
record_trim (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  if (mark (offset, count, err) == -1 ||
      next->trim (next, count, offset, flags, err) == -1)
    return -1;
  return (flags & NBDKIT_FLAG_FUA) ? save (err) : 0;
}

static int
dirtybitmap_trim (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  if (steady (offset, count, flags))
    return next->trim (next, count, offset, flags, err);
  return record_trim (next, handle, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name              = "dirtybitmap",
  .longname          = "nbdkit dirty bitmap filter",
  .unload            = dirtybitmap_unload,
  .config            = dirtybitmap_config,
  .config_complete   = dirtybitmap_config_complete,
  .config_help       = dirtybitmap_config_help,
  .get_ready         = dirtybitmap_get_ready,
  .after_fork        = dirtybitmap_after_fork,
  .cleanup           = dirtybitmap_cleanup,
  .prepare           = dirtybitmap_prepare,
  .can_flush         = dirtybitmap_can_flush,
  .flush             = dirtybitmap_flush,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
};

NBDKIT_REGISTER_FILTER (filter)
