/* nbdkit dirtybitmap filter: record every write in qcow2 persistent
 * bitmaps.  A thin adapter: parsing keys, the lifecycle hooks and the data
 * callbacks; the tracking and the file live in common/tracker.c.
 */
#include <config.h>

#include <assert.h>
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
#include <libgen.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "bitmap-name.h"
#include "cleanup.h"
#include "control.h"
#include "log-limit.h"
#include "parse-size.h"
#include "snapshots.h"
#include "tracked-export.h"
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
static char *snapshot_dir;              /* bitmap-snapshot-dir */
static struct tracked_export texport = TRACKED_EXPORT_INIT;
static uint64_t snapshot_max;           /* bitmap-snapshot-max, 0: none */
static unsigned snapshot_granule_bits = 16;

static struct tracker *tracker;
static struct snapshots snaps;          /* initialised with tracker */

/* Connections that may write (counted in prepare, for status). */
static _Atomic unsigned writers;
/* The quit signal came: nbdkit waits for its clients to leave (status
 * says so, so that dirtybitmap serve lets its qemu-nbd go).
 */
static _Atomic bool quitting;

struct conn {
  bool untracked;               /* served read-only: see prepare */
  bool other_export;            /* not bitmap-export: see open */
  bool writer;                  /* counted in writers */
  struct snapshot *snap;        /* a snapshot's export: see open */
};
static pthread_mutex_t size_lock = PTHREAD_MUTEX_INITIALIZER;
/* The export's size, learnt before any client connects (see after_fork);
 * 0 if the plugin could not say.  Under size_lock.
 */
static int64_t start_size;


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

/* A message a fault may repeat on every request: at most LOG_LIMIT_BURST
 * a minute from each call site (LL), the next one saying how many were
 * dropped in between.  OUT is nbdkit_error or log_note.
 */
static void
limited_log (struct log_limit *ll, void (*out) (const char *fmt, ...),
             const char *fmt, va_list ap)
{
  char msg[1024];
  uint64_t dropped;

  if (!log_limit_allow_now (ll, &dropped))
    return;
  vsnprintf (msg, sizeof msg, fmt, ap);
  if (dropped)
    out ("%s (%" PRIu64 " more like it not logged)", msg, dropped);
  else
    out ("%s", msg);
}

static void
__attribute__ ((format (printf, 2, 3)))
limited_error (struct log_limit *ll, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  limited_log (ll, nbdkit_error, fmt, ap);
  va_end (ap);
}

static void
__attribute__ ((format (printf, 2, 3)))
limited_note (struct log_limit *ll, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  limited_log (ll, log_note, fmt, ap);
  va_end (ap);
}

static void restore_quit_handlers (void);

static void
dirtybitmap_unload (void)
{
  /* Never write here: unload also runs for --help and --dump-plugin. */
  restore_quit_handlers ();
  control_stop (false);
  if (tracker)
    snapshots_fini (&snaps);
  tracker_free (tracker);
  tracker = NULL;
  free (bitmap_file);
  free (control_path);
  free (snapshot_dir);
  tracked_export_fini (&texport);
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
    if (dbm_check_name ("bitmap-name", value, &err) == -1) {
      nbdkit_error ("%s", err.msg);
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
  if (strcmp (key, "bitmap-export") == 0) {
    if (tracked_export_set (&texport, value) == -1) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "bitmap-snapshot-dir") == 0) {
    if (*value == '\0') {
      nbdkit_error ("bitmap-snapshot-dir: must not be empty");
      return -1;
    }
    free (snapshot_dir);
    snapshot_dir = nbdkit_realpath (value);
    return snapshot_dir ? 0 : -1;
  }
  if (strcmp (key, "bitmap-snapshot-max") == 0) {
    r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    snapshot_max = r;
    return 0;
  }
  if (strcmp (key, "bitmap-snapshot-granularity") == 0) {
    if (dbm_parse_pow2 ("bitmap-snapshot-granularity", value, 4096,
                        UINT64_C (64) << 20, &snapshot_granule_bits,
                        &err) == -1) {
      nbdkit_error ("%s", err.msg);
      return -1;
    }
    return 0;
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
  if (snapshot_dir == NULL) {
    CLEANUP_FREE char *copy = strdup (bitmap_file);

    if (copy == NULL || (snapshot_dir = strdup (dirname (copy))) == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
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
  "bitmap-export=<NAME>      The export recorded (default: the plugin's\n" \
  "                          default); others are served read-only.\n" \
  "bitmap-control=<SOCKET>   Unix socket for status/checkpoint/persist/remove.\n" \
  "bitmap-snapshot-dir=<DIR> Where snapshot stores go (the bitmap file's).\n" \
  "bitmap-snapshot-max=<SIZE> Cap on each snapshot's store (none).\n" \
  "bitmap-snapshot-granularity=<SIZE> Snapshot copy unit (default 64K)."

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
  snapshots_init (&snaps, tracker);
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
      atomic_store (&quitting, true);
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

/* The status line: the tracker's, with the live snapshots added. */
static char *
status_line (struct dbm_err *err)
{
  CLEANUP_FREE char *t = tracker_status_json (tracker, err);
  char *buf = NULL;
  size_t len = 0, tlen;
  FILE *f;

  if (t == NULL)
    return NULL;
  tlen = strlen (t);
  assert (tlen >= 2 && t[tlen - 1] == '}');
  f = open_memstream (&buf, &len);
  if (f == NULL) {
    dbm_seterr (err, errno, "open_memstream: %m");
    return NULL;
  }
  fwrite (t, 1, tlen - 1, f);
  fprintf (f, ",\"writers\":%u,\"quitting\":%s,\"snapshots\":",
           atomic_load (&writers), atomic_load (&quitting) ? "true" : "false");
  snapshots_json (&snaps, f);
  fputc ('}', f);
  if (fclose (f) != 0) {
    free (buf);
    dbm_seterr (err, ENOMEM, "out of memory");
    return NULL;
  }
  return buf;
}

enum snap_variant { SNAP_NONE, SNAP_FULL, SNAP_DIRTY };

/* A snapshot made for a checkpoint that did not happen: forget it, and
 * if it was to be the first, the file's note that snapshots are live.
 */
static int
drop_new_snapshot (struct snapshot *s, bool first)
{
  struct dbm_err ignored;

  snapshot_unref (s, false);
  if (first)
    tracker_note_snapshots (tracker, false, &ignored);
  return -1;
}

/* checkpoint NAME [GRANULARITY] [--snapshot[=full|dirty]]: the
 * checkpoint, then (if asked) the snapshot frozen just after its cut.
 * The store is made first, so that the checkpoint is not taken when the
 * snapshot cannot be.
 */
static int
checkpoint_command (const char *name, unsigned g, enum snap_variant v,
                    struct dbm_err *err)
{
  struct snapshot *s = NULL;
  struct bitmap *readable = NULL;
  uint64_t size = tracker_export_size (tracker);
  bool taken, keep, first = snapshots_count (&snaps) == 0;
  int r;

  /* No client yet: the file is made from the size learnt at start. */
  if (tracker_size (tracker) == 0 && start_size > 0) {
    if (tracker_set_size (tracker, start_size, err) == -1)
      return -1;
    size = tracker_export_size (tracker);
  }
  if (v == SNAP_NONE)
    return tracker_checkpoint (tracker, name, g, err);
  if (size == 0)
    return dbm_seterr (err, EAGAIN, "%s: no client has connected yet, so "
                       "there is nothing to snapshot", bitmap_file);
  if (v == SNAP_DIRTY &&
      (readable = bitmap_new (size, snapshot_granule_bits)) == NULL)
    return dbm_seterr (err, ENOMEM, "out of memory");
  if (snapshot_new (name, size, snapshot_granule_bits, snapshot_dir,
                    snapshot_max, readable, &s, err) == -1)
    return -1;
  /* What the checkpoint disables: the bitmaps tracked now (size_lock). */
  s->frozen = tracker_tracked_list (tracker);
  if (s->frozen == NULL) {
    snapshot_unref (s, false);
    return dbm_seterr (err, ENOMEM, "out of memory");
  }
  if (first && tracker_note_snapshots (tracker, true, err) == -1) {
    snapshot_unref (s, false);
    return -1;
  }
  /* Writers pause from here to the thaw: the cut, the save of the old
   * bitmaps and the snapshot meet at one instant (snapshots.h).
   */
  if (snapshots_freeze (&snaps, s, err) == -1)
    return drop_new_snapshot (s, first);
  r = tracker_checkpoint_frozen (tracker, name, g, readable, &taken, err);
  keep = taken && !(r == -1 && err->errnum == ENOMEM);
  snapshots_thaw (&snaps, keep);
  if (!keep)
    return drop_new_snapshot (s, first);
  log_note ("%s: snapshot '%s' (%s, %" PRIu64 " bytes) is served as export "
            "'%s%s'", bitmap_file, name, v == SNAP_DIRTY ? "dirty" : "full",
            size, SNAPSHOT_EXPORT_PREFIX, name);
  return r;
}

static int
release_command (const char *name, struct dbm_err *err)
{
  if (snapshots_release (&snaps, name, err) == -1)
    return -1;
  log_note ("%s: snapshot '%s' released", bitmap_file, name);
  if (snapshots_count (&snaps) == 0)
    return tracker_note_snapshots (tracker, false, err);
  return 0;
}

#define USAGE "usage: status | checkpoint NAME [GRANULARITY] " \
  "[--snapshot[=full|dirty]] | persist | remove NAME | release NAME"

/* One control command (see the man page, CONTROL SOCKET).  size_lock
 * orders it with the first connection creating the file and with growth.
 */
static char *
control_command (const char *line)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
  CLEANUP_FREE char *copy = strdup (line);
  char *save = NULL, *cmd, *words[4] = { NULL }, *out = NULL;
  const char *name = NULL, *gran = NULL;
  struct dbm_err err = { .errnum = 0 };
  enum snap_variant v = SNAP_NONE;
  unsigned g = granularity_bits;
  size_t n = 0, i;
  bool bad = false;
  char why[256] = "";
  int r = -1;

  if (copy == NULL)
    return NULL;
  cmd = strtok_r (copy, " \t", &save);
  while (n < 4 && (words[n] = strtok_r (NULL, " \t", &save)) != NULL)
    n++;
  bad = n == 4;
  if (cmd && strcmp (cmd, "checkpoint") == 0) {
    for (i = 0; i < n; ++i) {
      enum snap_variant w = strcmp (words[i], "--snapshot") == 0 ||
        strcmp (words[i], "--snapshot=full") == 0 ? SNAP_FULL
        : strcmp (words[i], "--snapshot=dirty") == 0 ? SNAP_DIRTY : SNAP_NONE;

      if (w != SNAP_NONE && v != SNAP_NONE)
        snprintf (why, sizeof why, "checkpoint: --snapshot given twice");
      else if (w != SNAP_NONE)
        v = w;
      else if (strncmp (words[i], "--", 2) == 0)
        snprintf (why, sizeof why, "checkpoint: unknown option '%.100s' "
                  "(--snapshot, --snapshot=full or --snapshot=dirty)",
                  words[i]);
      else if (name == NULL)
        name = words[i];
      else if (gran == NULL)
        gran = words[i];
      else
        snprintf (why, sizeof why, "checkpoint: unexpected '%.100s' after "
                  "NAME and GRANULARITY", words[i]);
    }
    if (name == NULL && why[0] == '\0')
      snprintf (why, sizeof why, "checkpoint: NAME is missing");
    bad |= why[0] != '\0';
  }
  if (cmd == NULL)
    dbm_seterr (&err, EINVAL, "empty command (status, checkpoint, persist, "
                "remove, release)");
  else if (strcmp (cmd, "status") == 0 && n == 0) {
    out = status_line (&err);
    if (out)
      return out;
  }
  else if (strcmp (cmd, "persist") == 0 && n == 0)
    r = tracker_save (tracker, &err);
  else if (strcmp (cmd, "checkpoint") == 0 && !bad && name) {
    if (dbm_check_name ("checkpoint", name, &err) == -1)
      ;
    else if (gran == NULL ||
             dbm_parse_pow2 ("granularity", gran, BME_MIN_GRANULARITY,
                             BME_MAX_GRANULARITY, &g, &err) == 0)
      r = checkpoint_command (name, g, v, &err);
  }
  else if (strcmp (cmd, "remove") == 0 && n == 1)
    r = tracker_remove (tracker, words[0], &err);
  else if (strcmp (cmd, "release") == 0 && n == 1)
    r = release_command (words[0], &err);
  else if (why[0])
    dbm_seterr (&err, EINVAL, "%s; " USAGE, why);
  else
    dbm_seterr (&err, EINVAL, USAGE);
  if (r == 0)
    return strdup ("ok");
  if (err.errnum || err.msg[0])
    nbdkit_error ("dirtybitmap: control: %s: %s", line, err.msg);
  if (asprintf (&out, "error: %s", err.msg) == -1)
    return NULL;
  return out;
}

/* The tracked export's size through a plugin context of our own, or -1.
 * Runs in a child process (learn_size): some plugins cannot be opened
 * without a client (nbdkit 1.32's file plugin with dir= calls
 * nbdkit_export_name in its open, gets NULL and crashes).
 */
static int64_t
size_from_context (nbdkit_backend *backend)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, 1,
                                                tracked_export_name (&texport),
                                                1);
  int64_t size = -1;

  if (next == NULL)
    return -1;
  if (next->prepare (next) == 0) {
    size = next->get_size (next);
    next->finalize (next);
  }
  nbdkit_next_context_close (next);
  return size;
}

/* Learn the size of the tracked export (bitmap-export) now, so that a
 * checkpoint works before the first client: the file is then created
 * from this size.  Nothing is written here (a read-only server still
 * leaves the file alone unless a checkpoint is asked for).  The plugin is
 * opened in a forked child (nbdkit is still single-threaded here: our
 * threads start after this), its stderr silenced, so that a plugin that
 * needs a client to open, fails or crashes costs only a note: the first
 * connection then learns the size, as it always does.
 */
static void
learn_size (nbdkit_backend *backend)
{
  int fds[2], status, devnull;
  int64_t size = -1;
  ssize_t n = 0, r;
  pid_t pid;

  if (pipe2 (fds, O_CLOEXEC) == -1)
    return;
  fflush (NULL);
  pid = fork ();
  if (pid == 0) {
    close (fds[0]);
    devnull = open ("/dev/null", O_WRONLY);
    if (devnull >= 0)
      dup2 (devnull, STDERR_FILENO);
    size = size_from_context (backend);
    r = write (fds[1], &size, sizeof size);
    _exit (r == sizeof size ? 0 : 1);
  }
  close (fds[1]);
  if (pid > 0) {
    /* 8 bytes, one write into a pipe: all of them or none (EOF). */
    do
      n = read (fds[0], &size, sizeof size);
    while (n == -1 && errno == EINTR);
    while (waitpid (pid, &status, 0) == -1 && errno == EINTR)
      ;
  }
  close (fds[0]);
  if (n != (ssize_t) sizeof size || size < 0) {
    log_note ("%s: the size of the export could not be learnt at start "
              "(the plugin may need a client to open it): the file and "
              "checkpoints wait for the first connection", bitmap_file);
    return;
  }
  if (size == 0)
    return;                     /* an empty export needs no file */
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&size_lock);
  start_size = size;
}

static int
dirtybitmap_after_fork (nbdkit_backend *backend)
{
  int r;

  learn_size (backend);
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
  if (snapshots_count (&snaps))
    log_note ("%s: %zu snapshot(s) end with the server (snapshots do not "
              "survive a restart)", bitmap_file, snapshots_count (&snaps));
  snapshots_fini (&snaps);
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

  /* Read-only and sized at its cut; the export beneath is asked its
   * size all the same (nbdkit checks our reads of it against that).
   */
  if (c->snap || c->other_export)
    return next->get_size (next) == -1 ? -1 : 0;
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
    return 0;
  }
  c->writer = true;
  atomic_fetch_add (&writers, 1);
  return 0;
}

/* Per connection: whether it is served read-only because its writes
 * could not be tracked (see prepare) or it is another export than the
 * tracked one (tracked-export.h), or is a snapshot's export
 * ("snapshot:NAME"): then the tracked export is read beneath.
 */
static void *
dirtybitmap_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                  int readonly, const char *exportname, int is_tls)
{
  static struct log_limit other_ll = LOG_LIMIT_INIT;
  size_t plen = strlen (SNAPSHOT_EXPORT_PREFIX);
  struct snapshot *snap = NULL;
  bool other = false;
  struct conn *c;

  if (strncmp (exportname, SNAPSHOT_EXPORT_PREFIX, plen) == 0) {
    snap = snapshots_open (&snaps, exportname + plen);
    if (snap == NULL) {
      nbdkit_error ("dirtybitmap: export '%s': no live snapshot '%s' "
                    "(see status on the control socket)", exportname,
                    exportname + plen);
      return NULL;
    }
    readonly = 1;
    exportname = tracked_export_name (&texport);
  }
  else if (!readonly && !tracked_export_is (&texport, exportname)) {
    CLEANUP_FREE char *shown = dbm_printable_name (exportname);
    CLEANUP_FREE char *tracked =
      dbm_printable_name (tracked_export_name (&texport));

    limited_note (&other_ll, "%s: export '%s' is served read-only: this "
                  "file records writes to export '%s' only (bitmap-export)",
                  bitmap_file, shown ? shown : "?", tracked ? tracked : "?");
    readonly = 1;
    other = true;
  }
  c = calloc (1, sizeof *c);
  if (c == NULL || next (nxdata, readonly, exportname) == -1) {
    if (c == NULL)
      nbdkit_error ("dirtybitmap: calloc: %m");
    if (snap)
      snapshot_unref (snap, true);
    free (c);
    return NULL;
  }
  c->snap = snap;
  c->other_export = other;
  return c;
}

static void
dirtybitmap_close (void *handle)
{
  struct conn *c = handle;

  if (c->snap)
    snapshot_unref (c->snap, true);
  if (c->writer)
    atomic_fetch_sub (&writers, 1);
  free (c);
}

/* The default export's own name (tracked-export.h). */
static const char *
dirtybitmap_default_export (nbdkit_next_default_export *next,
                            nbdkit_backend *nxdata, int readonly, int is_tls)
{
  const char *name = next (nxdata, readonly);

  if (name && tracked_export_saw_default (&texport, name) == -1) {
    nbdkit_error ("dirtybitmap: strdup: %m");
    return NULL;
  }
  return name;
}

/* The snapshots are exports of this server too. */
struct add_ctx {
  struct nbdkit_exports *exports;
  int r;
};

static void
add_snapshot_export (void *opaque, struct snapshot *s)
{
  struct add_ctx *a = opaque;
  CLEANUP_FREE char *name = NULL, *desc = NULL;

  if (asprintf (&name, "%s%s", SNAPSHOT_EXPORT_PREFIX, s->name) == -1 ||
      asprintf (&desc, "point-in-time snapshot at checkpoint %s", s->name)
      == -1 ||
      nbdkit_add_export (a->exports, name, desc) == -1)
    a->r = -1;
}

static int
dirtybitmap_list_exports (nbdkit_next_list_exports *next,
                          nbdkit_backend *nxdata, int readonly, int is_tls,
                          struct nbdkit_exports *exports)
{
  struct add_ctx a = { .exports = exports, .r = 0 };

  if (next (nxdata, readonly, exports) == -1)
    return -1;
  if (tracker)
    snapshots_each (&snaps, add_snapshot_export, &a);
  return a.r;
}

static int64_t
dirtybitmap_get_size (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  return c->snap ? (int64_t) c->snap->size : next->get_size (next);
}

static int
dirtybitmap_can_write (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  if (c->untracked || c->snap)
    return 0;
  return next->can_write (next);
}

/* A snapshot never changes: several connections see the same. */
static int
dirtybitmap_can_multi_conn (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  return c->snap ? 1 : next->can_multi_conn (next);
}

static int
dirtybitmap_can_cache (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  return c->snap ? NBDKIT_CACHE_NONE : next->can_cache (next);
}

static int
dirtybitmap_can_extents (nbdkit_next *next, void *handle)
{
  struct conn *c = handle;

  return c->snap ? 1 : next->can_extents (next);
}

/* The export beneath, for copies and for a snapshot's unpreserved
 * granules.
 */
static int
read_next (void *ctx, void *buf, uint32_t count, uint64_t offset, int *err)
{
  nbdkit_next *next = ctx;

  return next->pread (next, buf, count, offset, 0, err);
}

static int
dirtybitmap_pread (nbdkit_next *next, void *handle, void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct conn *c = handle;
  char msg[512];

  if (c->snap == NULL)
    return next->pread (next, buf, count, offset, flags, err);
  if (snapshot_read (c->snap, buf, count, offset, read_next, next, err, msg,
                     sizeof msg) == -1) {
    static struct log_limit ll = LOG_LIMIT_INIT;

    limited_error (&ll, "dirtybitmap: %s: %s", bitmap_file, msg);
    return -1;
  }
  return 0;
}

/* A snapshot's extents: what it preserved is data or zero; elsewhere the
 * export's own extents, if no write reached that part meanwhile (else
 * data, which is always true).
 */
struct run {
  uint64_t offset, length;
  int kind;
};
struct runs {
  struct run *v;
  size_t n, cap;
  bool failed;
};

static void
collect_run (void *opaque, uint64_t offset, uint64_t length, int kind)
{
  struct runs *rs = opaque;

  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? rs->cap * 2 : 16;
    struct run *v = realloc (rs->v, cap * sizeof *v);
    if (v == NULL) {
      rs->failed = true;
      return;
    }
    rs->v = v;
    rs->cap = cap;
  }
  rs->v[rs->n++] = (struct run) { offset, length, kind };
}

static int
live_extents (nbdkit_next *next, struct snapshot *s, const struct run *run,
              struct nbdkit_extents *out, int *err)
{
  struct nbdkit_extents *ex;
  size_t i;
  int r = 0;

  if (next->can_extents (next) != 1)
    return nbdkit_add_extent (out, run->offset, run->length, 0);
  ex = nbdkit_extents_new (run->offset, run->offset + run->length);
  if (ex == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, run->length, run->offset, 0, ex, err) == -1) {
    nbdkit_extents_free (ex);
    return -1;
  }
  if (!snapshot_untouched (s, run->offset, run->length))
    r = nbdkit_add_extent (out, run->offset, run->length, 0);
  else
    for (i = 0; r == 0 && i < nbdkit_extents_count (ex); ++i) {
      struct nbdkit_extent e = nbdkit_get_extent (ex, i);
      r = nbdkit_add_extent (out, e.offset, e.length, e.type);
    }
  nbdkit_extents_free (ex);
  return r;
}

static int
dirtybitmap_extents (nbdkit_next *next, void *handle, uint32_t count,
                     uint64_t offset, uint32_t flags,
                     struct nbdkit_extents *extents, int *err)
{
  struct conn *c = handle;
  struct runs rs = { .n = 0 };
  size_t i;
  int r = 0;

  if (c->snap == NULL)
    return next->extents (next, count, offset, flags, extents, err);
  snapshot_map (c->snap, offset, count, collect_run, &rs);
  if (rs.failed) {
    static struct log_limit ll = LOG_LIMIT_INIT;

    limited_error (&ll, "dirtybitmap: %s: extents: out of memory",
                   bitmap_file);
    *err = ENOMEM;
    free (rs.v);
    return -1;
  }
  for (i = 0; r == 0 && i < rs.n; ++i) {
    const struct run *run = &rs.v[i];

    if (run->kind == 1)
      r = nbdkit_add_extent (extents, run->offset, run->length,
                             NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    else if (run->kind == 2)
      r = live_extents (next, c->snap, run, extents, err);
    else
      r = nbdkit_add_extent (extents, run->offset, run->length, 0);
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  free (rs.v);
  if (r == -1 && *err == 0)
    *err = errno ? errno : EIO;
  return r;
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
    static struct log_limit ll = LOG_LIMIT_INIT;

    limited_error (&ll, "%s", e.msg);
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
    static struct log_limit ll = LOG_LIMIT_INIT;

    limited_error (&ll, "%s", e.msg);
    *err = EIO;
    return -1;
  }
  return 0;
}

/* A write between its recording and its return: the epoch it is inside,
 * and what the zero maps need once it has returned (tracker.h).
 */
struct recorded {
  struct epoch_slot *e;
  bool zero;                    /* a zero or trim request */
  bool counted;                 /* a data write tracker_data_done ends */
  struct tracker_zero_op zop;
  uint64_t offset;
  uint32_t count;
};

/* Leave the epoch; a counted data write says first that it returned. */
static void
leave (struct recorded *w)
{
  if (w->counted)
    tracker_data_done (tracker, w->offset, w->count);
  w->counted = false;
  epoch_leave (w->e);
}

/* Enter the epoch, record the write, and copy what the live snapshots
 * must keep of the range; the caller forwards the write and then calls
 * finish (snapshots.h: a snapshot's freeze waits for writers inside).
 * -1 with *ERR set: the request must fail.
 */
static int
enter_and_mark (nbdkit_next *next, uint64_t offset, uint32_t count,
                bool zero, struct recorded *w, int *err)
{
  w->zero = zero;
  w->offset = offset;
  w->count = count;
  /* Outside the epoch: the first zero request waits for the data writes
   * in flight to be counted.
   */
  if (zero)
    tracker_zero_enable (tracker);
  for (;;) {
    int r;

    w->e = epoch_enter ();
    w->counted = false;
    if (dirtybitmap_debug_verbose)
      nbdkit_debug ("dirtybitmap: mark %" PRIu64 "+%" PRIu32, offset, count);
    r = zero ? tracker_mark_zero (tracker, offset, count, &w->zop)
      : tracker_mark_data (tracker, offset, count, &w->counted);
    if (r == -1) {
      *err = errno ? errno : EIO;
      leave (w);
      static struct log_limit ll = LOG_LIMIT_INIT;

      limited_error (&ll, "dirtybitmap: %s: cannot record write at %" PRIu64
                     "+%" PRIu32 " (refused): %s", bitmap_file, offset, count,
                     strerror (*err));
      return -1;
    }
    if (snapshots_before_write (&snaps, offset, count, read_next, next))
      return 0;
    /* A snapshot is freezing: start over once it is frozen. */
    leave (w);
    snapshots_wait_thaw (&snaps);
  }
}

/* After the write: a zero request that succeeded may set zero bits;
 * leave, and make a FUA write's bits durable too.
 */
static int
finish (struct recorded *w, int r, uint32_t flags, int *err)
{
  if (r == 0 && w->zero)
    tracker_zero_done (tracker, w->offset, w->count, &w->zop);
  leave (w);
  if (r == 0 && (flags & NBDKIT_FLAG_FUA))
    r = save (err);
  return r;
}

/* The steady state: the range is already recorded (and, crash-safe, its
 * region durable), no FUA, no live snapshot, no zero request seen yet
 * (and no debug logging, which keeps the tracker's fast pointer NULL):
 * the filter costs a few loads, and stays inside the epoch until the
 * plugin returns.  After a zero request the same takes a call
 * (tracker_enter_counted_noop): the write counts itself first.
 */
static inline __attribute__ ((always_inline)) struct epoch_slot *
steady (uint64_t offset, uint32_t count, uint32_t flags)
{
  if (flags & NBDKIT_FLAG_FUA)
    return NULL;
  return tracker_slot_enter_noop (&fast, offset, count);
}

static int __attribute__ ((noinline))
record_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct recorded w;

  if (enter_and_mark (next, offset, count, false, &w, err) == -1)
    return -1;
  return finish (&w, next->pwrite (next, buf, count, offset, flags, err),
                 flags, err);
}

/* The steady state once zero maps count data writes: small, so that it
 * costs no more than the call (record_pwrite's frame is large).
 */
static int __attribute__ ((noinline))
counted_pwrite (nbdkit_next *next, void *handle, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct zero_stripe *counted;
  struct epoch_slot *e = NULL;

  if (!(flags & NBDKIT_FLAG_FUA))
    e = tracker_enter_counted_noop (tracker, offset, count, &counted);
  if (e) {
    int r = next->pwrite (next, buf, count, offset, flags, err);
    tracker_counted_leave (e, counted);
    return r;
  }
  return record_pwrite (next, handle, buf, count, offset, flags, err);
}

static int
dirtybitmap_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct epoch_slot *e = steady (offset, count, flags);

  if (e) {
    int r = next->pwrite (next, buf, count, offset, flags, err);
    epoch_leave (e);
    return r;
  }
  return counted_pwrite (next, handle, buf, count, offset, flags, err);
}

/* Zero and trim requests always take the general path: they may set
 * zero bits (tracker.h), which the steady state does not look at.  Both
 * count as "zero" for the maps: after a trim the plugin may read back
 * anything, but no backup needs to copy it.
 */
static int
dirtybitmap_zero (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  struct recorded w;

  if (enter_and_mark (next, offset, count, true, &w, err) == -1)
    return -1;
  return finish (&w, next->zero (next, count, offset, flags, err), flags,
                 err);
}

static int
dirtybitmap_trim (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  struct recorded w;

  if (enter_and_mark (next, offset, count, true, &w, err) == -1)
    return -1;
  return finish (&w, next->trim (next, count, offset, flags, err), flags,
                 err);
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
  .list_exports      = dirtybitmap_list_exports,
  .default_export    = dirtybitmap_default_export,
  .get_size          = dirtybitmap_get_size,
  .can_write         = dirtybitmap_can_write,
  .can_multi_conn    = dirtybitmap_can_multi_conn,
  .can_cache         = dirtybitmap_can_cache,
  .can_extents       = dirtybitmap_can_extents,
  .pread             = dirtybitmap_pread,
  .extents           = dirtybitmap_extents,
  .flush             = dirtybitmap_flush,
  .pwrite            = dirtybitmap_pwrite,
  .zero              = dirtybitmap_zero,
  .trim              = dirtybitmap_trim,
};

NBDKIT_REGISTER_FILTER (filter)
