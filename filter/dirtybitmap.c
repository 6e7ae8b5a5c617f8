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
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <syslog.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "control.h"
#include "parse-size.h"
#include "tracker.h"

/* -D dirtybitmap.verbose=1 */
NBDKIT_DLL_PUBLIC int dirtybitmap_debug_verbose = 0;
/* The tracker's write-path view, at a fixed address (tracker.h). */
static _Atomic (const struct track_set *) fast;

static char *bitmap_file;
static const char *bitmap_name = "dirtybitmap";
static bool bitmap_name_default = true;
static unsigned granularity_bits = 16;
static bool granularity_default = true;
static enum tracker_mode mode = TRACKER_CRASH_SAFE;
static enum qcow2_layout layout = QCOW2_LAYOUT_QEMU;
static enum tracker_in_use in_use_policy = IN_USE_DIRTY;
static uint64_t region_size = UINT64_C (64) << 20;
static bool region_default = true;      /* bitmap-region not given */
static unsigned persist_interval = 30;
static char *control_path;

static struct tracker *tracker;

struct conn {
  bool untracked;               /* served read-only: see prepare */
};
static pthread_mutex_t size_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_t persist_thread;
static bool persist_thread_running;

/* nbdkit has no info level (nbdkit_debug needs -v) and nbdkit_error
 * labels every line "error", so notes are written like nbdkit writes its
 * messages: to stderr, or to syslog once nbdkit is in the background (it
 * then points stderr at /dev/null, unless -v).
 */
static void
log_note (const char *fmt, ...)
{
  static const char prefix[] = "nbdkit: dirtybitmap: ";
  va_list ap;
  char msg[1024];
  struct stat st;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (fstat (STDERR_FILENO, &st) == 0 && S_ISCHR (st.st_mode) &&
      st.st_rdev == makedev (1, 3))
    syslog (LOG_NOTICE, "%s%s", prefix, msg);
  else
    fprintf (stderr, "%s%s\n", prefix, msg);
}

static void restore_quit_handlers (void);

static void
dirtybitmap_unload (void)
{
  /* Never write here: unload also runs for --help and --dump-plugin. */
  restore_quit_handlers ();
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
      nbdkit_error ("bitmap-name: must be 1..%d bytes, got %zu",
                    BME_MAX_NAME_SIZE, len);
      return -1;
    }
    bitmap_name = value;
    bitmap_name_default = false;
    return 0;
  }
  if (strcmp (key, "bitmap-granularity") == 0) {
    if (dbm_parse_pow2 ("bitmap-granularity", value, BME_MIN_GRANULARITY,
                        BME_MAX_GRANULARITY, &granularity_bits, &err) == -1) {
      nbdkit_error ("%s", err.msg);
      return -1;
    }
    granularity_default = false;
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
    if (dbm_parse_pow2 ("bitmap-region", value, TRACKER_MIN_REGION,
                        TRACKER_MAX_REGION,
                        &bits, &err) == -1) {
      nbdkit_error ("%s", err.msg);
      return -1;
    }
    region_size = UINT64_C (1) << bits;
    region_default = false;
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
  "bitmap-region=<SIZE>      crash-safe: region pre-marked on first write\n" \
  "                          (64M, larger for exports over 256G).\n" \
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
    .granularity_bits = granularity_bits,
    .granularity_default = granularity_default, .mode = mode,
    .in_use_policy = in_use_policy, .region_size = region_size,
    .region_default = region_default,
    .no_fast_path = dirtybitmap_debug_verbose, .fast_slot = &fast,
    .log = log_note,
  };
  struct dbm_err err;

  /* Check everything now, while errors reach the terminal, but create and
   * write nothing: nbdkit may still fail to start (a port in use), and
   * then no cleanup runs.  The socket is created in after_fork, the file
   * is written when the first writer connects.
   */
  if (control_path && control_check (control_path) == -1)
    return -1;
  if (tracker_open (&cfg, &tracker, &err) == -1) {
    nbdkit_error ("%s", err.msg);
    return -1;
  }
  if (dirtybitmap_debug_verbose)
    nbdkit_debug ("dirtybitmap: %s opened, %zu bitmap(s) tracked, mode %s",
                  bitmap_file, tracker_ntracked (tracker),
                  mode == TRACKER_QEMU ? "qemu" : "crash-safe");
  return 0;
}

/* The persist thread.  crash-safe mode: the file is always a durable
 * superset; a periodic persist shrinks all-ones regions back to exact
 * bits, which bounds the over-approximation after a crash.
 *
 * At quit: nbdkit waits for idle clients to leave before .cleanup runs,
 * and may be SIGKILLed meanwhile (systemd's stop timeout).  In qemu mode
 * the bitmap would then stay in_use and the next backup be a full one;
 * so at the quit signal the thread saves and clears in_use at once
 * (tracker_quiesce; in crash-safe mode it only persists).  That is all the
 * signal is needed for.  nbdkit has no quit callback and its public
 * nbdkit_nanosleep reports the quit as an error line, so we chain onto its
 * handlers: set_up_signals runs before after_fork in every serving mode
 * (1.32 and 1.45 server/main.c start_serving), so after_fork installs
 * ours over them.  Ours calls nbdkit's first, then wakes the thread.
 *
 * Unloading: nbdkit dlcloses filters at exit, while a repeated quit signal
 * may still arrive.  So the filter's code is pinned in memory (dlopen with
 * RTLD_NODELETE: a handler never jumps into unmapped code), .unload puts
 * nbdkit's handlers back, and the handler ignores a closed pipe.
 */
static int quit_pipe[2] = { -1, -1 };
static volatile sig_atomic_t quit_wfd = -1;     /* what the handler uses */
static const int quit_sigs[] = { SIGINT, SIGQUIT, SIGTERM, SIGHUP };
static struct sigaction old_actions[NSIG];
static bool handlers_installed;

static void
on_quit_signal (int sig, siginfo_t *info, void *ctx)
{
  int saved = errno, fd = quit_wfd;
  const struct sigaction *old = &old_actions[sig];

  /* nbdkit's own handler first: it sets quit and wakes its threads. */
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction)
      old->sa_sigaction (sig, info, ctx);
  }
  else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN)
    old->sa_handler (sig);
  if (fd >= 0 && write (fd, "q", 1) == -1) {
    /* nothing to do: the pipe is full, so a wake-up is pending anyway */
  }
  errno = saved;
}

/* Keep this DSO mapped until the process exits (see above). */
static void
pin_filter_code (void)
{
  Dl_info info;

  if (dladdr ((void *) on_quit_signal, &info) == 0 || info.dli_fname == NULL ||
      dlopen (info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL)
    nbdkit_debug ("dirtybitmap: cannot pin the filter in memory: %s",
                  dlerror () ? dlerror () : "dladdr failed");
}

static void
chain_quit_handlers (void)
{
  struct sigaction sa;
  size_t i;

  pin_filter_code ();
  memset (&sa, 0, sizeof sa);
  sa.sa_sigaction = on_quit_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset (&sa.sa_mask);
  for (i = 0; i < sizeof quit_sigs / sizeof quit_sigs[0]; ++i)
    sigaction (quit_sigs[i], &sa, &old_actions[quit_sigs[i]]);
  handlers_installed = true;
}

static void
restore_quit_handlers (void)
{
  size_t i;

  quit_wfd = -1;
  if (!handlers_installed)
    return;
  for (i = 0; i < sizeof quit_sigs / sizeof quit_sigs[0]; ++i)
    sigaction (quit_sigs[i], &old_actions[quit_sigs[i]], NULL);
  handlers_installed = false;
}

static void *
persist_loop (void *arg)
{
  struct dbm_err err;
  struct pollfd pfd = { .fd = quit_pipe[0], .events = POLLIN };
  int timeout = mode == TRACKER_CRASH_SAFE ? (int) persist_interval * 1000 : -1;
  char c, last_error[sizeof err.msg] = "";

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
      if (tracker_dirty (tracker) &&
          tracker_persist_periodic (tracker, &err) == -1) {
        /* Once per distinct failure, not every interval. */
        if (strcmp (err.msg, last_error) != 0)
          nbdkit_error ("%s", err.msg);
        snprintf (last_error, sizeof last_error, "%s", err.msg);
      }
      else
        last_error[0] = '\0';
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
    r = tracker_save (tracker, &err);
  else if (strcmp (cmd, "checkpoint") == 0 && arg1 && !extra) {
    if (strlen (arg1) > BME_MAX_NAME_SIZE)
      dbm_seterr (&err, EINVAL, "checkpoint: NAME must be 1..%d bytes",
                  BME_MAX_NAME_SIZE);
    else if (arg2 == NULL ||
             dbm_parse_pow2 ("granularity", arg2, BME_MIN_GRANULARITY, BME_MAX_GRANULARITY,
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
  quit_wfd = quit_pipe[1];
  chain_quit_handlers ();
  if (control_path && control_open (control_path) == -1)
    return -1;
  return control_path ? control_start (control_command) : 0;
}

/* A failed final save must not look like a clean exit: nbdkit's main
 * returns 0 after .cleanup and .unload whatever they found, so an exit
 * handler (this DSO is pinned, so it runs at process exit, after all of
 * nbdkit's own teardown) turns that into status 1.  With --run nbdkit
 * reports the command's status instead, and the error line is the signal.
 */
static void
exit_failure (void)
{
  fflush (NULL);
  _exit (EXIT_FAILURE);
}

static void
dirtybitmap_cleanup (nbdkit_backend *backend)
{
  CLEANUP_FREE char *names = NULL;
  struct dbm_err err;

  control_stop (true);
  quit_wfd = -1;
  if (persist_thread_running) {
    while (write (quit_pipe[1], "s", 1) == -1 && errno == EINTR)
      ;
    pthread_join (persist_thread, NULL);
    persist_thread_running = false;
  }
  if (tracker == NULL)
    return;
  names = tracker_tracked_names (tracker);
  if (tracker_close (tracker, &err) == -1) {
    nbdkit_error ("%s", err.msg);
    nbdkit_error ("dirtybitmap: the final save of %s failed: bitmap %s %s; "
                  "nbdkit exits with status 1", bitmap_file,
                  names ? names : "(unknown)",
                  mode == TRACKER_QEMU
                  ? "is left in_use, so the next start marks it entirely "
                    "dirty (the next backup is a full one)"
                  : "still covers every write (crash-safe), but regions "
                    "pre-marked since the last persist stay all-ones");
    atexit (exit_failure);
  }
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
  struct conn *c = handle;
  struct dbm_err err;
  int64_t size;

  /* Nothing can be written through this connection (nbdkit -r, or a
   * plugin that cannot write): it needs no bitmap, and must not create or
   * change the file.
   */
  if (readonly || next->can_write (next) == 0)
    return 0;
  size = next->get_size (next);
  if (size == -1)
    return -1;
  if (tracker_set_size (tracker, size, &err) == -1) {
    nbdkit_error ("%s", err.msg);
    /* An export no qcow2 file can describe is still served, read-only
     * (writes fail with EROFS), rather than refused with nbdkit's
     * misleading "no export named" at the client.
     */
    if (err.errnum != EFBIG)
      return -1;
    c->untracked = true;
    nbdkit_error ("dirtybitmap: the export is served read-only: writes to "
                  "it could not be recorded");
  }
  return 0;
}

/* Per connection: only whether it is served read-only because its
 * writes could not be tracked (see prepare).
 */
static void *
dirtybitmap_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                  int readonly, const char *exportname, int is_tls)
{
  struct conn *c;

  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  c = calloc (1, sizeof *c);
  if (c == NULL)
    nbdkit_error ("dirtybitmap: calloc: %m");
  return c;
}

static void
dirtybitmap_close (void *handle)
{
  free (handle);
}

static int
dirtybitmap_can_write (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  if (c->untracked)
    return 0;
  return next->can_write (next);
}

/* A FUA write is durable in data and bitmap.  In crash-safe mode the
 * file is always a durable superset, so only qemu mode writes here.
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

/* can_flush is the plugin's (nbdkit's default for a filter): a flush
 * reply promises data and bitmap durable, and only a plugin that can
 * flush can make the data so.  Without it the bitmap is saved by the
 * periodic persist and at shutdown, and clients are told honestly that
 * flush is not available.
 */
static int
dirtybitmap_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct dbm_err e;

  if (next->flush (next, 0, err) == -1)
    return -1;
  if (tracker_flush (tracker, &e) == -1) {
    nbdkit_error ("%s", e.msg);
    *err = EIO;
    return -1;
  }
  return 0;
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
 * region durable), no FUA (and no debug logging, which keeps the
 * tracker's fast pointer NULL): hand the request over as a tail call, so
 * the filter costs a few loads.
 */
static inline __attribute__ ((always_inline)) bool
steady (uint64_t offset, uint32_t count, uint32_t flags)
{
  return !(flags & NBDKIT_FLAG_FUA) &&
    tracker_slot_is_noop (&fast, offset, count);
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
  .open              = dirtybitmap_open,
  .close             = dirtybitmap_close,
  .prepare           = dirtybitmap_prepare,
  .can_write         = dirtybitmap_can_write,
  .flush             = dirtybitmap_flush,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
};

NBDKIT_REGISTER_FILTER (filter)
