/* dirtybitmap serve: one standard NBD endpoint for a backup agent.
 *
 * nbdkit advertises no metadata context but base:allocation, so agents
 * written for QEMU (libnbd reading qemu:dirty-bitmap:NAME and data from
 * one connection) cannot use it directly.  qemu-nbd can: it serves our
 * bitmap file (metadata only, so every read falls through to its backing
 * node) with the frozen bitmaps as qemu:dirty-bitmap contexts, and the
 * backing node is the filter's snapshot export over NBD.  This command
 * starts that qemu-nbd for the snapshot taken with checkpoint NAME,
 * watches the snapshot, and stops qemu-nbd when it is released (or
 * breaks, or nbdkit goes away, or we are told to stop).
 */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cleanup.h"
#include "control-client.h"
#include "json-string.h"
#include "serve.h"

static volatile sig_atomic_t stop_signal;

static void
on_signal (int sig)
{
  stop_signal = sig;
}

/* What serve needs of the status line. */
struct snap_view {
  bool found, active, quitting;
  char file[4096];
  char reason[512];
  char *frozen[64];
  size_t nfrozen;
};

static void
free_view (struct snap_view *v)
{
  size_t i;

  for (i = 0; i < v->nfrozen; ++i)
    free (v->frozen[i]);
  v->nfrozen = 0;
}

static const char *
get_string (json_object *o, const char *key)
{
  json_object *x;

  if (!json_object_object_get_ex (o, key, &x) ||
      !json_object_is_type (x, json_type_string))
    return NULL;
  return json_object_get_string (x);
}

/* Ask the filter for the state of snapshot NAME.  -1 with a message if
 * the control socket does not answer as it should.
 */
static int
look (const char *ctl, const char *name, struct snap_view *v, char *msg,
      size_t len)
{
  struct dbm_err err;
  CLEANUP_FREE char *reply = NULL;
  json_object *root, *snaps;
  const char *file;
  size_t i, k;

  memset (v, 0, sizeof *v);
  if (control_request (ctl, "status", &reply, &err) == -1) {
    snprintf (msg, len, "%s", err.msg);
    return -1;
  }
  root = json_tokener_parse (reply);
  if (root == NULL || !json_object_object_get_ex (root, "snapshots", &snaps) ||
      !json_object_is_type (snaps, json_type_array) ||
      (file = get_string (root, "file")) == NULL) {
    snprintf (msg, len, "%s: the status line is not what this version "
              "expects (no snapshots: is the filter older?)", ctl);
    json_object_put (root);
    return -1;
  }
  snprintf (v->file, sizeof v->file, "%s", file);
  {
    json_object *q;
    v->quitting = json_object_object_get_ex (root, "quitting", &q) &&
      json_object_get_boolean (q);
  }
  for (i = 0; i < json_object_array_length (snaps); ++i) {
    json_object *s = json_object_array_get_idx (snaps, i), *fr;
    const char *n = get_string (s, "name"), *st = get_string (s, "state");
    const char *why = get_string (s, "reason");

    if (n == NULL || strcmp (n, name) != 0)
      continue;
    v->found = true;
    v->active = st && strcmp (st, "active") == 0;
    snprintf (v->reason, sizeof v->reason, "%s", why ? why : "");
    if (json_object_object_get_ex (s, "frozen", &fr) &&
        json_object_is_type (fr, json_type_array))
      for (k = 0; k < json_object_array_length (fr) &&
             v->nfrozen < sizeof v->frozen / sizeof v->frozen[0]; ++k) {
        const char *b = json_object_get_string
          (json_object_array_get_idx (fr, k));
        if (b && (v->frozen[v->nfrozen] = strdup (b)) != NULL)
          v->nfrozen++;
      }
  }
  json_object_put (root);
  return 0;
}

/* S for a QEMU option value: commas doubled (malloc'd). */
static char *
opt_escape (const char *s)
{
  char *out = malloc (2 * strlen (s) + 1), *p = out;

  if (out == NULL)
    return NULL;
  for (; *s; ++s) {
    *p++ = *s;
    if (*s == ',')
      *p++ = ',';
  }
  *p = '\0';
  return out;
}

/* The data source: the filter's snapshot export, from --from URI
 * (nbd+unix:///?socket=PATH, or nbd://HOST[:PORT]).
 */
static int
backing_opts (const char *from, const char *export, char **out, char *msg,
              size_t len)
{
  const char *q;
  int r;

  if (strncmp (from, "nbd+unix://", 11) == 0 &&
      (q = strstr (from, "socket=")) != NULL) {
    CLEANUP_FREE char *path = strdup (q + 7), *esc = NULL;
    if (path == NULL)
      return -1;
    path[strcspn (path, "&")] = '\0';
    if ((esc = opt_escape (path)) == NULL)
      return -1;
    r = asprintf (out, "backing.file.server.type=unix,"
                  "backing.file.server.path=%s", esc);
  }
  else if (strncmp (from, "nbd://", 6) == 0) {
    CLEANUP_FREE char *host = strdup (from + 6);
    char *port;
    if (host == NULL)
      return -1;
    host[strcspn (host, "/?")] = '\0';
    port = strrchr (host, ':');
    if (port)
      *port++ = '\0';
    r = asprintf (out, "backing.file.server.type=inet,"
                  "backing.file.server.host=%s,"
                  "backing.file.server.port=%s", host,
                  port && *port ? port : "10809");
  }
  else {
    snprintf (msg, len, "--from %s: expected nbd+unix:///?socket=PATH or "
              "nbd://HOST[:PORT] (the address nbdkit serves)", from);
    return -1;
  }
  if (r == -1)
    return -1;
  {
    CLEANUP_FREE char *esc = opt_escape (export);
    char *full;
    if (esc == NULL ||
        asprintf (&full, "%s,backing.file.export=%s", *out, esc) == -1)
      return -1;
    free (*out);
    *out = full;
  }
  return 0;
}

/* Is the endpoint up?  qemu-nbd binds and listens together, so its
 * socket existing is enough (a probe connection would make it log a
 * failed negotiation).
 */
static bool
endpoint_up (const struct serve_opts *o)
{
  struct stat st;

  if (o->port)
    return true;                /* checked by the first client instead */
  return stat (o->socket, &st) == 0 && S_ISSOCK (st.st_mode);
}

static void
stop_child (pid_t pid)
{
  int i, status;

  kill (pid, SIGTERM);
  for (i = 0; i < 50; ++i) {
    if (waitpid (pid, &status, WNOHANG) == pid)
      return;
    usleep (100000);
  }
  kill (pid, SIGKILL);
  waitpid (pid, &status, 0);
}

int
serve_snapshot (const struct serve_opts *o)
{
  struct snap_view v;
  char msg[1024] = "", export[1100];
  CLEANUP_FREE char *backing = NULL, *image = NULL, *file = NULL;
  const char *argv[32 + 2 * 64];
  struct sigaction sa = { .sa_handler = on_signal };
  size_t n = 0, i;
  pid_t pid;
  int status, k, rc = 0;

  if (look (o->control, o->name, &v, msg, sizeof msg) == -1) {
    fprintf (stderr, "dirtybitmap serve: %s\n", msg);
    return 1;
  }
  if (!v.found || !v.active) {
    fprintf (stderr, "dirtybitmap serve: %s: %s%s%s\n", o->control,
             !v.found ? "no live snapshot named " : "snapshot is broken: ",
             !v.found ? o->name : v.reason,
             !v.found ? " (take one with checkpoint NAME --snapshot)" : "");
    free_view (&v);
    return 1;
  }
  if (v.nfrozen == 0) {
    fprintf (stderr, "dirtybitmap serve: snapshot '%s' froze no bitmap\n",
             o->name);
    return 1;
  }
  snprintf (export, sizeof export, "snapshot:%s", o->name);
  if (backing_opts (o->from, export, &backing, msg, sizeof msg) == -1 ||
      (file = opt_escape (v.file)) == NULL ||
      asprintf (&image, "driver=qcow2,file.driver=file,file.filename=%s,"
                "file.locking=off,backing.driver=raw,"
                "backing.file.driver=nbd,%s", file, backing) == -1) {
    fprintf (stderr, "dirtybitmap serve: %s\n",
             msg[0] ? msg : "out of memory");
    free_view (&v);
    return 2;
  }
  argv[n++] = o->qemu_nbd;
  argv[n++] = "-r";
  argv[n++] = "-t";
  argv[n++] = "-e";
  argv[n++] = "16";
  if (o->port) {
    argv[n++] = "-p";
    argv[n++] = o->port;
    argv[n++] = "-b";
    argv[n++] = o->bind ? o->bind : "localhost";
  }
  else {
    argv[n++] = "-k";
    argv[n++] = o->socket;
  }
  for (i = 0; i < v.nfrozen; ++i) {
    argv[n++] = "-B";
    argv[n++] = v.frozen[i];
  }
  argv[n++] = "--image-opts";
  argv[n++] = image;
  argv[n] = NULL;

  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  pid = fork ();
  if (pid == -1) {
    perror ("dirtybitmap serve: fork");
    free_view (&v);
    return 1;
  }
  if (pid == 0) {
    execvp (argv[0], (char **) argv);
    fprintf (stderr, "dirtybitmap serve: %s: %s\n", argv[0],
             strerror (errno));
    _exit (127);
  }
  /* Up within 30 s, or its error is on stderr already. */
  for (k = 0; k < 300 && !endpoint_up (o); ++k) {
    if (waitpid (pid, &status, WNOHANG) == pid) {
      fprintf (stderr, "dirtybitmap serve: %s exited before serving "
               "(status %d)\n", o->qemu_nbd,
               WIFEXITED (status) ? WEXITSTATUS (status) : 128);
      free_view (&v);
      return 1;
    }
    usleep (100000);
  }
  printf ("{\"uri\":\"%s%s%s%s\",\"pid\":%d,\"contexts\":[\"base:allocation\"",
          o->port ? "nbd://" : "nbd+unix:///?socket=",
          o->port ? (o->bind ? o->bind : "localhost") : o->socket,
          o->port ? ":" : "", o->port ? o->port : "", (int) pid);
  for (i = 0; i < v.nfrozen; ++i) {
    fputc (',', stdout);
    json_put_prefixed (stdout, "qemu:dirty-bitmap:", v.frozen[i]);
  }
  printf ("]}\n");
  fflush (stdout);
  free_view (&v);

  /* Supervise: the snapshot's end is the endpoint's. */
  for (;;) {
    struct snap_view now;

    for (k = 0; k < 10 && !stop_signal; ++k) {
      if (waitpid (pid, &status, WNOHANG) == pid) {
        fprintf (stderr, "dirtybitmap serve: %s exited (status %d)\n",
                 o->qemu_nbd,
                 WIFEXITED (status) ? WEXITSTATUS (status) : 128);
        return 1;
      }
      usleep (100000);
    }
    if (stop_signal) {
      stop_child (pid);
      return 0;
    }
    if (look (o->control, o->name, &now, msg, sizeof msg) == -1) {
      fprintf (stderr, "dirtybitmap serve: %s; stopping\n", msg);
      rc = 1;
      break;
    }
    free_view (&now);
    if (now.quitting) {
      fprintf (stderr, "dirtybitmap serve: nbdkit is shutting down; "
               "stopping\n");
      rc = 1;
      break;
    }
    if (!now.found) {
      fprintf (stderr, "dirtybitmap serve: snapshot '%s' released; "
               "stopping\n", o->name);
      break;
    }
    if (!now.active) {
      fprintf (stderr, "dirtybitmap serve: snapshot '%s' is broken (%s); "
               "stopping\n", o->name, now.reason);
      rc = 1;
      break;
    }
  }
  stop_child (pid);
  return rc;
}
