/* dirtybitmap: inspect and edit qcow2 persistent-bitmap files.
 *
 * The second client of common/: everything the filter relies on can be
 * checked from here without nbdkit.  Exit codes: 0 success, 1 failure (or
 * an invalid file for 'check'), 2 usage error.
 */
#include <config.h>

#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "cleanup.h"
#include "bitmap-name.h"
#include "control-client.h"
#include "json-string.h"
#include "serve.h"
#include "parse-size.h"
#include "qcow2.h"
#include "qemu-lock.h"
#include "tracker.h"
#include "map-svg.h"

#define EXIT_USAGE 2

static const char *prog = "dirtybitmap";

static void
usage_all (FILE *fp)
{
  fprintf (fp,
"Usage: %s COMMAND [OPTIONS] ARGS\n"
"\n"
"Inspect and edit qcow2 files holding persistent dirty bitmaps.\n"
"\n"
"Commands:\n"
"  info FILE [--json]               size, cluster size, each bitmap\n"
"  map FILE NAME [--json | --svg OUT] [--force]\n"
"                                   the dirty extents of bitmap NAME;\n"
"                                   --svg: as an SVG picture (- for stdout)\n"
"  check FILE [--repair]            validate (exit 0 valid, 1 invalid)\n"
"  create FILE --size SIZE [--name NAME] [--granularity SIZE]\n"
"         [--cluster-size SIZE] [--disabled] [--format qemu|draft-2015]\n"
"  add FILE NAME [--granularity SIZE] [--disabled] [--size SIZE]\n"
"  remove FILE NAME\n"
"  clear FILE NAME\n"
"  enable FILE NAME\n"
"  disable FILE NAME\n"
"  convert --to qemu|draft-2015 IN OUT [--bitmap NAME]\n"
"  recover FILE                     after a crash, without nbdkit\n"
"\n"
"Talking to a running filter (nbdkit ... bitmap-control=SOCKET):\n"
"  status SOCKET                    one JSON line: file, bitmaps, dirty bytes\n"
"  checkpoint SOCKET NAME [--granularity SIZE] [--snapshot[=full|dirty]]\n"
"                                   new bitmap NAME from now on; the\n"
"                                   enabled ones disabled and saved;\n"
"                                   --snapshot: a point-in-time export\n"
"                                   snapshot:NAME of the cut\n"
"  release SOCKET NAME              end snapshot NAME, free its store\n"
"  serve SOCKET NAME --from URI (--socket PATH | --port PORT [--bind ADDR])\n"
"         [--qemu-nbd PROG]\n"
"                                   one NBD endpoint for backup agents:\n"
"                                   snapshot NAME's data, base:allocation\n"
"                                   and qemu:dirty-bitmap:FROZEN (qemu-nbd)\n"
"  persist SOCKET                   make the bitmaps durable now\n"
"  remove SOCKET NAME               remove a disabled bitmap\n"
"\n"
"Sizes accept K, M, G, T suffixes (powers of 1024).\n"
"'%s COMMAND --help' describes one command; '%s --version' prints the\n"
"version.\n", prog, prog, prog);
}

struct cmd {
  const char *name;
  int (*fn) (int argc, char **argv);
};

static void
print_err (const struct dbm_err *err)
{
  fprintf (stderr, "%s: %s\n", prog, err->msg);
}

static void
json_string (const char *s)
{
  json_put_string (stdout, s);
}

/* A name on a terminal: never raw control characters. */
static void
print_name (const char *s)
{
  CLEANUP_FREE char *p = dbm_printable_name (s);

  fputs (p ? p : "?", stdout);
}

/* Dirty bytes of a bitmap, clipped to the disk. */
static uint64_t
dirty_bytes (const struct qcow2_bitmap *b, uint64_t vsize)
{
  uint64_t bit = 0, total = 0;
  const struct bitmap *bm = b->bits;

  for (;;) {
    uint64_t s = bitmap_find (bm, bit, true), e, lo, hi;
    if (s >= bm->nbits)
      break;
    e = bitmap_find (bm, s, false);
    lo = s << bm->granularity_bits;
    hi = e << bm->granularity_bits;
    if (hi > vsize || e >= bm->nbits)
      hi = vsize;
    total += hi - lo;
    bit = e;
  }
  return total;
}

/* Options are parsed by one small getopt_long loop per command. */
enum { OPT_JSON = 256, OPT_REPAIR, OPT_SIZE, OPT_NAME, OPT_GRAN, OPT_CLUSTER,
       OPT_DISABLED, OPT_HELP, OPT_FORCE, OPT_FORMAT, OPT_TO, OPT_BITMAP,
       OPT_SNAPSHOT, OPT_FROM, OPT_SOCKET, OPT_PORT, OPT_BIND, OPT_QEMU_NBD,
       OPT_SVG };

static const struct option long_opts[] = {
  { "json", no_argument, NULL, OPT_JSON },
  { "repair", no_argument, NULL, OPT_REPAIR },
  { "size", required_argument, NULL, OPT_SIZE },
  { "name", required_argument, NULL, OPT_NAME },
  { "granularity", required_argument, NULL, OPT_GRAN },
  { "cluster-size", required_argument, NULL, OPT_CLUSTER },
  { "disabled", no_argument, NULL, OPT_DISABLED },
  { "help", no_argument, NULL, OPT_HELP },
  { "force", no_argument, NULL, OPT_FORCE },
  { "format", required_argument, NULL, OPT_FORMAT },
  { "to", required_argument, NULL, OPT_TO },
  { "bitmap", required_argument, NULL, OPT_BITMAP },
  { "snapshot", optional_argument, NULL, OPT_SNAPSHOT },
  { "from", required_argument, NULL, OPT_FROM },
  { "socket", required_argument, NULL, OPT_SOCKET },
  { "port", required_argument, NULL, OPT_PORT },
  { "bind", required_argument, NULL, OPT_BIND },
  { "qemu-nbd", required_argument, NULL, OPT_QEMU_NBD },
  { "svg", required_argument, NULL, OPT_SVG },
  { NULL, 0, NULL, 0 },
};

struct opts {
  bool json, repair, disabled, help, force;
  const char *size, *name, *gran, *cluster, *format, *to, *bitmap;
  const char *snapshot;         /* "full" or "dirty", NULL: none */
  const char *from, *socket, *port, *bind, *qemu_nbd;
  const char *svg;              /* map --svg OUT: "-" for stdout */
  const char *allowed;          /* which options this command takes */
};

static const char *
opt_name (int c)
{
  const struct option *o;
  for (o = long_opts; o->name; ++o)
    if (o->val == c)
      return o->name;
  return "?";
}

static int
parse_opts (const char *cmd, int argc, char **argv, struct opts *o)
{
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "", long_opts, NULL)) != -1) {
    if (c == '?' || c == ':') {
      fprintf (stderr, "%s %s: unknown or incomplete option '%s'\n", prog,
               cmd, argv[optind - 1]);
      return -1;
    }
    if (c != OPT_HELP && !strstr (o->allowed, opt_name (c))) {
      fprintf (stderr, "%s %s: option --%s does not apply\n", prog, cmd,
               opt_name (c));
      return -1;
    }
    switch (c) {
    case OPT_JSON: o->json = true; break;
    case OPT_REPAIR: o->repair = true; break;
    case OPT_DISABLED: o->disabled = true; break;
    case OPT_HELP: o->help = true; break;
    case OPT_FORCE: o->force = true; break;
    case OPT_FORMAT: o->format = optarg; break;
    case OPT_TO: o->to = optarg; break;
    case OPT_BITMAP: o->bitmap = optarg; break;
    case OPT_SIZE: o->size = optarg; break;
    case OPT_NAME: o->name = optarg; break;
    case OPT_GRAN: o->gran = optarg; break;
    case OPT_CLUSTER: o->cluster = optarg; break;
    case OPT_SNAPSHOT: o->snapshot = optarg ? optarg : "full"; break;
    case OPT_FROM: o->from = optarg; break;
    case OPT_SOCKET: o->socket = optarg; break;
    case OPT_PORT: o->port = optarg; break;
    case OPT_BIND: o->bind = optarg; break;
    case OPT_QEMU_NBD: o->qemu_nbd = optarg; break;
    case OPT_SVG: o->svg = optarg; break;
    }
  }
  return 0;
}

static int
need_args (const char *cmd, int argc, int want, const char *usage)
{
  if (argc - optind != want) {
    fprintf (stderr, "%s %s: expected %s\n", prog, cmd, usage);
    return -1;
  }
  return 0;
}

#define PARSE(cmd, allowed_, nargs, usage, helptext)                    \
  struct opts o = { .allowed = (allowed_) };                            \
  if (parse_opts (cmd, argc, argv, &o) == -1) return EXIT_USAGE;        \
  if (o.help) { printf ("Usage: %s %s %s\n\n%s", prog, cmd, usage, helptext); \
    return 0; }                                                         \
  if (need_args (cmd, argc, nargs, usage) == -1) return EXIT_USAGE;

/* Flag names as qemu-img prints them, plus the draft's self and
 * read-only; "-" for none.
 */
static void
flags_text (const struct qcow2_image *img, const struct qcow2_bitmap *b,
            bool json, char *buf, size_t len)
{
  static const char *const qemu_names[] = { "in-use", "auto" };
  static const char *const draft_names[] = { "in-use", "self", "auto",
                                             "read-only" };
  const char *const *names = img->layout == QCOW2_LAYOUT_DRAFT2015
    ? draft_names : qemu_names;
  size_t n = img->layout == QCOW2_LAYOUT_DRAFT2015 ? 4 : 2, i, used = 0;

  buf[0] = '\0';
  for (i = 0; i < n; ++i) {
    if (!(b->flags & (1U << i)))
      continue;
    used += snprintf (buf + used, len - used, json ? "%s\"%s\"" : "%s%s",
                      used ? (json ? ", " : ",") : "", names[i]);
  }
  if (used == 0 && !json)
    snprintf (buf, len, "-");
}

/* Where people would rather look than read: the dirty density across
 * the disk, as STRIP_WIDTH characters from ' ' (clean) through ".:-=+*#%"
 * to '@' (all dirty); a slice with any dirty bit is never blank.
 */
#define STRIP_WIDTH 64
static void
print_strip (const struct bitmap *bm)
{
  static const char ramp[] = " .:-=+*#%@";
  char line[STRIP_WIDTH + 1];
  uint64_t k;

  if (bm == NULL || bm->nbits == 0)
    return;
  for (k = 0; k < STRIP_WIDTH; ++k) {
    uint64_t a = k * bm->nbits / STRIP_WIDTH;
    uint64_t e = (k + 1) * bm->nbits / STRIP_WIDTH;
    uint64_t n = e > a ? bitmap_count_range (bm, a, e) : 0;
    size_t level = e > a ? (size_t) ((n * 9 + (e - a) - 1) / (e - a)) : 0;

    line[k] = ramp[level > 9 ? 9 : level];
  }
  line[STRIP_WIDTH] = '\0';
  printf ("    [%s]\n", line);
}

/* crash-safe files: the most of B's dirty bytes that are whole regions
 * written all-ones by a writer that is running or crashed (their exact
 * bits are unknown on disk); 0 for a file no writer has open.
 */
static uint64_t
premarked_max (const struct qcow2_image *img, const struct qcow2_bitmap *b)
{
  uint64_t rbits, n;

  if (!(img->dbm_state & DBM_STATE_RUNNING) || img->dbm_region_size == 0 ||
      b->bits == NULL || !qcow2_bitmap_enabled (img, b))
    return 0;
  rbits = img->dbm_region_size >> b->granularity_bits;
  n = bitmap_full_block_bits (b->bits, rbits < 64 ? 64 : rbits);
  n <<= b->granularity_bits;
  return n < b->size ? n : b->size;
}

static int
cmd_info (int argc, char **argv)
{
  PARSE ("info", "json", 1, "FILE [--json]",
         "Show the virtual size, cluster size and layout of FILE and, for "
         "each bitmap,\nits granularity, flags (in-use, auto) and dirty "
         "bytes.\n");
  struct qcow2_image *img;
  struct dbm_err err;
  const char *writer;
  uint64_t vsize;
  uint32_t i, nzero = 0;
  bool first = true;

  if (qcow2_open (argv[optind], 0, &img, &err) == -1) {
    print_err (&err);
    return 1;
  }
  vsize = qcow2_virtual_size (img);
  for (i = 0; i < img->nb_bitmaps; ++i)
    nzero += qcow2_is_zero_map (img, i);
  /* A writer is live if it holds QEMU's write lock; one that left the
   * running flag set without holding it crashed.
   */
  writer = qemu_lock_writer_present (img->fd) ? "live"
    : (img->dbm_state & DBM_STATE_RUNNING) ? "crashed" : "none";
  if (o.json) {
    printf ("{\"file\": ");
    json_string (img->path);
    printf (", \"layout\": \"%s\", \"virtual_size\": %" PRIu64
            ", \"cluster_size\": %" PRIu64 ", \"writer\": \"%s\", "
            "\"bitmaps\": [", qcow2_layout_name (img->layout), vsize,
            img->cluster_size, writer);
  }
  else {
    printf ("file: %s\nlayout: %s\nvirtual size: %" PRIu64 "\n"
            "cluster size: %" PRIu64 "\nbitmaps: %" PRIu32 "\n",
            img->path, qcow2_layout_name (img->layout), vsize,
            img->cluster_size, img->nb_bitmaps - nzero);
    if (img->layout == QCOW2_LAYOUT_DRAFT2015)
      printf ("note: the 2015 draft layout; QEMU cannot open this file "
              "(use 'dirtybitmap convert --to qemu')\n");
    if (img->ext_inconsistent)
      printf ("warning: autoclear bit 0 is clear: every bitmap is "
              "inconsistent\n");
  }
  for (i = 0; i < img->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &img->bitmaps[i];
    uint64_t gran = UINT64_C (1) << b->granularity_bits;
    uint64_t d = b->inconsistent ? 0 : dirty_bytes (b, b->size);
    double pct = b->size ? 100.0 * d / b->size : 0;
    int z = qcow2_zero_map_of (img, i);
    uint64_t zd = z >= 0 ? dirty_bytes (&img->bitmaps[z], b->size) : 0;
    char flags[80];

    /* A zero map is shown as part of its bitmap. */
    if (qcow2_is_zero_map (img, i))
      continue;
    flags_text (img, b, o.json, flags, sizeof flags);
    if (o.json) {
      printf ("%s{\"name\": ", first ? "" : ", ");
      first = false;
      json_string (b->name);
      printf (", \"size\": %" PRIu64 ", \"granularity\": %" PRIu64
              ", \"flags\": [%s], \"consistent\": %s", b->size, gran, flags,
              b->inconsistent ? "false" : "true");
      if (b->inconsistent)
        printf (", \"dirty_bytes\": null, \"dirty_percent\": null, "
                "\"zero_bytes\": null}");
      else
        printf (", \"dirty_bytes\": %" PRIu64 ", \"dirty_percent\": %.2f"
                ", \"premarked_bytes_max\": %" PRIu64 ", \"zero_bytes\": %"
                PRIu64 "}", d, pct, premarked_max (img, b), zd);
    }
    else {
      fputs ("  ", stdout);
      print_name (b->name);
      fputs (": ", stdout);
      if (img->layout == QCOW2_LAYOUT_DRAFT2015)
        printf ("size %" PRIu64 ", ", b->size);
      if (b->inconsistent)
        printf ("granularity %" PRIu64 ", flags %s, contents unknown "
                "(inconsistent)\n", gran, flags);
      else {
        printf ("granularity %" PRIu64 ", flags %s, dirty %" PRIu64
                " bytes (%.2f%%)", gran, flags, d, pct);
        if (z >= 0)
          printf (", of which zero %" PRIu64 " bytes", zd);
        putchar ('\n');
        print_strip (b->bits);
      }
    }
  }
  if (o.json)
    printf ("]}\n");
  qcow2_close (img);
  return 0;
}

static int
open_bitmap (const char *path, const char *name, unsigned flags,
             struct qcow2_image **imgp, int *idx)
{
  struct dbm_err err;
  bool rw = flags & QCOW2_OPEN_RW;

  if (qcow2_open (path, flags, imgp, &err) == -1) {
    print_err (&err);
    return -1;
  }
  if (rw && qemu_lock_write ((*imgp)->fd, path, &err) == -1) {
    print_err (&err);
    qcow2_close (*imgp);
    return -1;
  }
  *idx = qcow2_find_bitmap (*imgp, name);
  if (*idx < 0) {
    fprintf (stderr, "%s: %s: no bitmap named '%s'\n", prog, path, name);
    qcow2_close (*imgp);
    return -1;
  }
  return 0;
}

/* Where map --svg writes.  "-" is standard output, and a device or pipe
 * is written as it is; any other OUT is written to a temporary beside it
 * and renamed over it once complete, so that a failure leaves no partial
 * picture (and an older OUT as it was).
 */
struct svg_out {
  const char *path;
  FILE *f;
  bool atomic;
  struct atomic_file af;
};

/* One line naming OUT, for every way of failing to write it. */
static void
svg_error (const char *path, const char *what, int errnum)
{
  fprintf (stderr, "%s: --svg %s: %s%s%s\n", prog, path, what ? what : "",
           what ? ": " : "", strerror (errnum));
}

/* Open OUT for the picture of a bitmap in the file open at BITMAP_FD. */
static int
svg_open (const char *path, int bitmap_fd, struct svg_out *out)
{
  struct stat st, bst;
  struct dbm_err err;
  int fd;

  memset (out, 0, sizeof *out);
  out->path = path;
  if (strcmp (path, "-") == 0) {
    out->f = stdout;
    return 0;
  }
  if (stat (path, &st) == 0) {
    /* A slip of the fingers must not replace the bitmaps with a picture. */
    if (fstat (bitmap_fd, &bst) == 0 && st.st_dev == bst.st_dev &&
        st.st_ino == bst.st_ino) {
      fprintf (stderr, "%s: --svg %s: is the bitmap file itself, not "
               "overwriting\n", prog, path);
      return -1;
    }
    if (S_ISDIR (st.st_mode)) {
      svg_error (path, NULL, EISDIR);
      return -1;
    }
    if (!S_ISREG (st.st_mode)) {
      out->f = fopen (path, "we");
      if (out->f == NULL) {
        svg_error (path, "open", errno);
        return -1;
      }
      return 0;
    }
  }
  if (atomic_file_begin (path, 0, &out->af, &err) == -1) {
    svg_error (path, "cannot create", err.errnum);
    return -1;
  }
  fd = fcntl (out->af.fd, F_DUPFD_CLOEXEC, 0);
  out->f = fd == -1 ? NULL : fdopen (fd, "w");
  if (out->f == NULL) {
    svg_error (path, "cannot create", errno);
    if (fd >= 0)
      close (fd);
    atomic_file_abort (&out->af);
    return -1;
  }
  out->atomic = true;
  return 0;
}

/* Finish OUT: OK says the picture was written whole so far.  The
 * temporary is renamed into place only if every byte reached it.
 */
static int
svg_close (struct svg_out *out, bool ok)
{
  struct dbm_err err;
  int errnum = errno;           /* a failed write's, when !OK */

  if (ok && fflush (out->f) == EOF) {
    ok = false;
    errnum = errno;
  }
  if (out->f != stdout && fclose (out->f) == EOF && ok) {
    ok = false;
    errnum = errno;
  }
  if (!ok) {
    if (errnum == 0)
      errnum = EIO;
    svg_error (out->path, "write", errnum);
    if (out->atomic)
      atomic_file_abort (&out->af);
    return -1;
  }
  if (!out->atomic)
    return 0;
  /* COMMITTED_NOT_DURABLE: the picture is complete and in place; only
   * its directory entry may not survive a power cut, which is not worth
   * failing a picture for.
   */
  if (atomic_file_commit (&out->af, &err) == -1) {
    svg_error (out->path, "cannot put in place", err.errnum);
    return -1;
  }
  close (out->af.fd);
  free (out->af.path);
  return 0;
}

static int
cmd_map (int argc, char **argv)
{
  PARSE ("map", "json force svg", 2,
         "FILE NAME [--json | --svg OUT] [--force]",
         "Print the extents of bitmap NAME covering the whole virtual size, "
         "in order,\nadjacent runs merged: OFFSET LENGTH dirty|clean "
         "[zero], or with --json an\narray of {\"offset\": N, \"length\": N, "
         "\"dirty\": true|false, \"zero\": true|false}.\nZero: dirty, and "
         "the last change to all of it was a zero or trim request\n(known "
         "only for a bitmap a checkpoint froze; false otherwise).\nWith "
         "--svg, draw them instead as an SVG picture in OUT (- for standard\n"
         "output): a bar for the disk, dirty and zero ranges coloured (at "
         "least a pixel\nwide), an axis of offsets, a legend.  "
         "OUT is replaced only once it is complete.\nAn in-use bitmap is "
         "refused unless --force: then its last persisted contents\nare "
         "shown (they may miss recent writes).\n");
  struct qcow2_image *img;
  const struct qcow2_bitmap *b;
  const struct bitmap *zb = NULL;
  struct svg_out out = { 0 };
  struct map_svg svg = { 0 };
  uint64_t vsize, off = 0;
  int idx, z, r = 0;
  bool first = true;

  if (o.json && o.svg) {
    fprintf (stderr, "%s map: --json and --svg: choose one\n", prog);
    return EXIT_USAGE;
  }
  if (open_bitmap (argv[optind], argv[optind + 1],
                   o.force ? QCOW2_OPEN_LOAD_IN_USE : 0, &img, &idx) == -1)
    return 1;
  b = &img->bitmaps[idx];
  if (b->inconsistent) {
    fprintf (stderr, "%s: %s: bitmap '%s' is inconsistent (in use or left "
             "by a crash): its contents are unknown\n", prog, argv[optind],
             b->name);
    qcow2_close (img);
    return 1;
  }
  vsize = b->size;
  if ((z = qcow2_zero_map_of (img, idx)) >= 0)
    zb = img->bitmaps[z].bits;
  if (o.svg) {
    if (svg_open (o.svg, img->fd, &out) == -1) {
      qcow2_close (img);
      return 1;
    }
    map_svg_begin (&svg, out.f, argv[optind], b->name, vsize,
                   UINT64_C (1) << b->granularity_bits);
  }
  else if (o.json)
    printf ("[");
  while (off < vsize) {
    uint64_t bit = off >> b->granularity_bits;
    bool dirty = bitmap_test (b->bits, bit);
    /* Zero only where dirty, whatever the file says. */
    bool zero = dirty && zb && bitmap_test (zb, bit);
    uint64_t next = bitmap_find (b->bits, bit, !dirty), end;

    if (dirty && zb) {
      uint64_t znext = bitmap_find (zb, bit, !zero);
      if (znext < next)
        next = znext;
    }
    end = next >= b->bits->nbits ? vsize : next << b->granularity_bits;
    if (end > vsize)
      end = vsize;
    if (o.svg)
      map_svg_extent (&svg, off, end - off, zero ? MAP_SVG_ZERO
                      : dirty ? MAP_SVG_DIRTY : MAP_SVG_CLEAN);
    else if (o.json)
      printf ("%s\n{\"offset\": %" PRIu64 ", \"length\": %" PRIu64
              ", \"dirty\": %s, \"zero\": %s}", first ? "" : ",", off,
              end - off, dirty ? "true" : "false", zero ? "true" : "false");
    else
      printf ("%20" PRIu64 " %20" PRIu64 "  %s%s\n", off, end - off,
              dirty ? "dirty" : "clean", zero ? " zero" : "");
    first = false;
    off = end;
  }
  if (o.svg)
    r = svg_close (&out, map_svg_end (&svg) == 0) == 0 ? 0 : 1;
  else if (o.json)
    printf ("\n]\n");
  qcow2_close (img);
  return r;
}

/* Report each problem the validator found; returns how many. */
static int
report_problems (const struct qcow2_image *img)
{
  int n = 0;

  if (img->leaked_clusters) {
    printf ("%s: %" PRIu64 " leaked cluster(s) (refcount higher than the "
            "references), first at offset 0x%" PRIx64 "\n", img->path,
            img->leaked_clusters, img->first_leak);
    n++;
  }
  if (img->autoclear_without_ext) {
    printf ("%s: autoclear_features bit 0 (bitmaps) is set but there is no "
            "bitmaps extension\n", img->path);
    n++;
  }
  if (img->ext_inconsistent) {
    printf ("%s: autoclear_features bit 0 (bitmaps) is clear while the "
            "bitmaps extension is present: every bitmap is inconsistent\n",
            img->path);
    n++;
  }
  if (img->data_clusters)
    printf ("%s: note: %" PRIu64 " cluster(s) of guest data (not a "
            "bitmap-only file)\n", img->path, img->data_clusters);
  return n;
}

/* check's findings about a file are its output, on stdout: a file that
 * opens as invalid (bad data, EINVAL) is one of them.  Not being able to
 * look at the file at all (missing, no permission, an I/O error, out of
 * memory) is an error like any other command's: stderr, prefixed.
 */
static void
check_open_failed (const struct dbm_err *err)
{
  if (err->errnum == EINVAL)
    printf ("%s\n", err->msg);
  else
    print_err (err);
}

static int
cmd_check (int argc, char **argv)
{
  PARSE ("check", "repair", 1, "FILE [--repair]",
         "Validate FILE against every constraint QEMU checks and the draft "
         "review's\nconstraints.  Exit 0 if valid, 1 if invalid (one line "
         "per problem).\nWith --repair, fix what can be fixed safely "
         "(autoclear bit 0 set with no\nextension; leaked clusters) and say "
         "what was done.\n");
  struct qcow2_image *img;
  struct dbm_err err;
  const char *path = argv[optind];
  int n;

  if (qcow2_open (path, o.repair ? QCOW2_OPEN_RW : 0, &img, &err) == -1) {
    check_open_failed (&err);
    return 1;
  }
  n = report_problems (img);
  if (n == 0 || !o.repair) {
    if (n == 0)
      printf ("%s: no errors found\n", path);
    qcow2_close (img);
    return n ? 1 : 0;
  }
  if (qemu_lock_write (img->fd, path, &err) == -1) {
    print_err (&err);
    qcow2_close (img);
    return 1;
  }
  if (img->ext_inconsistent) {
    printf ("%s: not repaired: the bitmaps' contents are unknown; remove "
            "them with 'qemu-img check -r leaks' after deciding to drop "
            "them\n", path);
    qcow2_close (img);
    return 1;
  }
  if (img->autoclear_without_ext && !img->leaked_clusters) {
    if (qcow2_write_autoclear (img, img->autoclear_features &
                               ~QCOW2_AUTOCLEAR_BITMAPS, &err) == -1) {
      print_err (&err);
      qcow2_close (img);
      return 1;
    }
    printf ("%s: repaired: cleared autoclear_features bit 0\n", path);
  }
  else {
    bool had_leaks = img->leaked_clusters, had_bit = img->autoclear_without_ext;
    if (qcow2_commit (img, path, 0, qemu_lock_new_file, &err) != 0) {
      print_err (&err);
      qcow2_close (img);
      return 1;
    }
    if (had_leaks)
      printf ("%s: repaired: rewrote the file without the leaked "
              "clusters\n", path);
    if (had_bit)
      printf ("%s: repaired: cleared autoclear_features bit 0\n", path);
  }
  qcow2_close (img);
  /* Verify. */
  if (qcow2_open (path, 0, &img, &err) == -1) {
    check_open_failed (&err);
    return 1;
  }
  n = report_problems (img);
  qcow2_close (img);
  return n ? 1 : 0;
}

static int
parse_layout (const char *what, const char *s, enum qcow2_layout *layout)
{
  *layout = QCOW2_LAYOUT_QEMU;
  if (s == NULL || strcmp (s, "qemu") == 0)
    return 0;
  if (strcmp (s, "draft-2015") == 0) {
    *layout = QCOW2_LAYOUT_DRAFT2015;
    return 0;
  }
  fprintf (stderr, "%s: %s: '%s' is not qemu or draft-2015\n", prog, what, s);
  return -1;
}

static int
parse_gran (const char *s, unsigned *bits)
{
  struct dbm_err err;

  *bits = 16;
  if (s && dbm_parse_pow2 ("--granularity", s, BME_MIN_GRANULARITY, BME_MAX_GRANULARITY, bits,
                           &err) == -1) {
    print_err (&err);
    return -1;
  }
  return 0;
}

/* create and convert never overwrite: any name already there, even one
 * we cannot read or a dangling link, is refused here (a clear early
 * message); the commit itself refuses atomically too (no race).
 */
static int
refuse_existing (const char *path)
{
  struct stat st;

  if (lstat (path, &st) == -1)
    return 0;
  fprintf (stderr, "%s: %s: file exists, not overwriting\n", prog, path);
  return -1;
}

static int
cmd_create (int argc, char **argv)
{
  PARSE ("create", "size name granularity cluster-size disabled format", 1,
         "FILE --size SIZE [--name NAME] [--granularity SIZE] "
         "[--cluster-size SIZE] [--disabled] [--format qemu|draft-2015]",
         "Create FILE, a metadata-only qcow2 v3 file of virtual size SIZE "
         "(rounded up\nto 512), with one bitmap NAME (default 'dirtybitmap') "
         "of granularity SIZE\n(default 64K), enabled (auto) unless "
         "--disabled.  Refuses to overwrite a file.\nWith --format "
         "draft-2015: a zero-size container in the 2015 draft layout\n"
         "holding bitmap NAME for a drive of SIZE bytes (flags none).\n");
  enum qcow2_layout layout;
  struct qcow2_image *img;
  struct dbm_err err;
  uint64_t size;
  unsigned gran, cbits = QCOW2_DEFAULT_CLUSTER_BITS;
  const char *path = argv[optind];

  if (!o.size) {
    fprintf (stderr, "%s create: --size is required\n", prog);
    return EXIT_USAGE;
  }
  if (dbm_parse_size ("--size", o.size, &size, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (parse_gran (o.gran, &gran) == -1 ||
      parse_layout ("--format", o.format, &layout) == -1)
    return EXIT_USAGE;
  if (o.cluster && dbm_parse_pow2 ("--cluster-size", o.cluster, 512,
                                   2 << 20, &cbits, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (o.name && dbm_check_name ("--name", o.name, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (refuse_existing (path) == -1)
    return 1;
  img = qcow2_new (layout == QCOW2_LAYOUT_DRAFT2015 ? 0 : size, cbits, layout,
                   &err);
  if (img == NULL ||
      qcow2_add_bitmap (img, o.name ? o.name : "dirtybitmap", gran,
                        o.disabled || layout == QCOW2_LAYOUT_DRAFT2015
                        ? 0 : BME_FLAG_AUTO, size, &err) == -1 ||
      qcow2_commit (img, path, QCOW2_COMMIT_NOREPLACE, NULL, &err) != 0) {
    print_err (&err);
    qcow2_close (img);
    return 1;
  }
  qcow2_close (img);
  return 0;
}

/* The edit commands share one shape: open locked, change, rewrite. */
static int
edit (const char *path, const char *name, int (*change) (struct qcow2_image *,
                                                         int, void *),
      void *arg, bool must_exist, bool allow_inconsistent)
{
  struct qcow2_image *img;
  struct dbm_err err;
  int idx, r;

  /* In-use bitmaps keep their last contents through the rewrite. */
  if (qcow2_open (path, QCOW2_OPEN_RW | QCOW2_OPEN_LOAD_IN_USE, &img, &err)
      == -1) {
    print_err (&err);
    return 1;
  }
  if (qemu_lock_write (img->fd, path, &err) == -1) {
    print_err (&err);
    qcow2_close (img);
    return 1;
  }
  idx = qcow2_find_bitmap (img, name);
  if (must_exist && idx < 0) {
    fprintf (stderr, "%s: %s: no bitmap named '%s'\n", prog, path, name);
    qcow2_close (img);
    return 1;
  }
  if (must_exist && qcow2_bitmap_read_only (img, &img->bitmaps[idx])) {
    fprintf (stderr, "%s: %s: bitmap '%s' is read_only and is never "
             "modified\n", prog, path, name);
    qcow2_close (img);
    return 1;
  }
  if (must_exist && !allow_inconsistent &&
      (img->bitmaps[idx].inconsistent ||
       (img->bitmaps[idx].flags & BME_FLAG_IN_USE))) {
    fprintf (stderr, "%s: %s: bitmap '%s' is inconsistent and cannot be "
             "used; remove it\n", prog, path, name);
    qcow2_close (img);
    return 1;
  }
  /* Any change to a frozen bitmap (or its removal) makes its zero map
   * meaningless: it goes first.
   */
  if (must_exist)
    idx = qcow2_drop_zero_map (img, idx);
  r = change (img, idx, arg);
  if (r == 0 && qcow2_commit (img, path, 0, qemu_lock_new_file, &err) != 0) {
    print_err (&err);
    r = 1;
  }
  qcow2_close (img);
  return r;
}

struct add_arg { const char *name; unsigned gran; bool disabled;
                 uint64_t size; };

static int
do_add (struct qcow2_image *img, int idx, void *arg)
{
  struct add_arg *a = arg;
  struct dbm_err err;

  uint32_t flags = a->disabled || img->layout == QCOW2_LAYOUT_DRAFT2015
    ? 0 : BME_FLAG_AUTO;

  if (qcow2_add_bitmap (img, a->name, a->gran, flags, a->size, &err) == -1) {
    fprintf (stderr, "%s: %s: %s\n", prog, img->path, err.msg);
    return 1;
  }
  return 0;
}

static int
cmd_add (int argc, char **argv)
{
  PARSE ("add", "granularity disabled size", 2,
         "FILE NAME [--granularity SIZE] [--disabled] [--size SIZE]",
         "Add an empty bitmap NAME (enabled unless --disabled) of "
         "granularity SIZE\n(default 64K).  In a draft-2015 container, "
         "--size gives the size of the\ndrive it tracks (required).\n");
  struct add_arg a = { argv[optind + 1], 16, o.disabled, 0 };
  struct dbm_err err;

  if (parse_gran (o.gran, &a.gran) == -1)
    return EXIT_USAGE;
  if (dbm_check_name ("add", a.name, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (o.size && dbm_parse_size ("--size", o.size, &a.size, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  return edit (argv[optind], a.name, do_add, &a, false, false);
}

static int
do_remove (struct qcow2_image *img, int idx, void *arg)
{
  qcow2_remove_bitmap (img, idx);
  return 0;
}

static int
do_clear (struct qcow2_image *img, int idx, void *arg)
{
  bitmap_clear (img->bitmaps[idx].bits);
  return 0;
}

static int
do_flags (struct qcow2_image *img, int idx, void *arg)
{
  struct qcow2_bitmap *b = &img->bitmaps[idx];

  if (img->layout == QCOW2_LAYOUT_DRAFT2015 && !(b->flags & DRAFT_FLAG_SELF)) {
    fprintf (stderr, "%s: %s: bitmap '%s': the draft's auto flag needs the "
             "self flag (a bitmap of this image)\n", prog, img->path, b->name);
    return 1;
  }
  if (strcmp (arg, "enable") == 0 && img->layout == QCOW2_LAYOUT_QEMU &&
      qcow2_zero_map_shaped (b->name)) {
    fprintf (stderr, "%s: %s: bitmap '%s': a name ending in '"
             QCOW2_ZERO_SUFFIX "' is kept for zero maps, which are never "
             "enabled\n", prog, img->path, b->name);
    return 1;
  }
  if (strcmp (arg, "enable") == 0)
    b->flags |= qcow2_enabled_flags (img);
  else
    b->flags &= ~qcow2_enabled_flags (img);
  return 0;
}

#define SIMPLE_EDIT(fname, cmdname, fn, text)                           \
  static int fname (int argc, char **argv) {                            \
    PARSE (cmdname, "", 2, "FILE NAME", text);                          \
    return edit (argv[optind], argv[optind + 1], fn, (void *) (cmdname), true, \
                 strcmp (cmdname, "remove") == 0);                      \
  }

SIMPLE_EDIT (cmd_remove_file, "remove", do_remove,
             "Remove bitmap NAME (also allowed when it is inconsistent).\n"
             "Given a running filter's control SOCKET instead of FILE "
             "(remove SOCKET NAME),\nask the filter to remove NAME, a "
             "disabled bitmap.\n")
SIMPLE_EDIT (cmd_clear, "clear", do_clear, "Mark bitmap NAME all clean.\n")
SIMPLE_EDIT (cmd_enable, "enable", do_flags,
             "Set the auto flag: writers must record into bitmap NAME.\n")
SIMPLE_EDIT (cmd_disable, "disable", do_flags,
             "Clear the auto flag: bitmap NAME is kept but not updated.\n")

/* Flags across layouts: QEMU's auto is the draft's self+auto (so that
 * qemu -> draft -> qemu is lossless); in_use is bit 0 in both.
 */
static uint32_t
convert_flags (const struct qcow2_image *from, uint32_t f,
               enum qcow2_layout to)
{
  uint32_t in_use = f & BME_FLAG_IN_USE, r;

  if (from->layout == to)
    return f;
  if (to == QCOW2_LAYOUT_DRAFT2015)
    r = (f & BME_FLAG_AUTO) ? DRAFT_FLAG_SELF | DRAFT_FLAG_AUTO : 0;
  else
    r = (f & DRAFT_FLAG_AUTO) ? BME_FLAG_AUTO : 0;
  return r | in_use;
}

static int
cmd_convert (int argc, char **argv)
{
  PARSE ("convert", "to bitmap", 2, "--to qemu|draft-2015 IN OUT "
         "[--bitmap NAME]",
         "Write OUT, a new file in the given layout, with the bitmaps of "
         "IN.  From the\ndraft layout to QEMU's, every bitmap must cover "
         "one drive size (QEMU's file\nhas one virtual size): all of them "
         "if they share it, or only --bitmap NAME.\nRefuses to overwrite "
         "OUT.\n");
  struct qcow2_image *in, *out = NULL;
  struct dbm_err err;
  enum qcow2_layout to;
  uint64_t size = 0;
  uint32_t i;

  if (o.to == NULL) {
    fprintf (stderr, "%s convert: --to is required\n", prog);
    return EXIT_USAGE;
  }
  if (parse_layout ("--to", o.to, &to) == -1)
    return EXIT_USAGE;
  if (refuse_existing (argv[optind + 1]) == -1)
    return 1;
  if (qcow2_open (argv[optind], QCOW2_OPEN_LOAD_IN_USE, &in, &err) == -1) {
    print_err (&err);
    return 1;
  }
  for (i = 0; i < in->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &in->bitmaps[i];
    if (o.bitmap && strcmp (b->name, o.bitmap) != 0)
      continue;
    if (size && b->size != size && to == QCOW2_LAYOUT_QEMU) {
      fprintf (stderr, "%s: %s: bitmaps cover drives of different sizes "
               "(%" PRIu64 " and %" PRIu64 "); choose one with --bitmap "
               "NAME\n", prog, in->path, size, b->size);
      goto fail;
    }
    size = b->size;
  }
  if (o.bitmap && size == 0) {
    fprintf (stderr, "%s: %s: no bitmap named '%s'\n", prog, in->path,
             o.bitmap);
    goto fail;
  }
  if (size == 0)
    size = qcow2_virtual_size (in);
  out = qcow2_new (to == QCOW2_LAYOUT_DRAFT2015 ? 0 : size, in->cluster_bits,
                   to, &err);
  if (out == NULL)
    goto fail_err;
  for (i = 0; i < in->nb_bitmaps; ++i) {
    const struct qcow2_bitmap *b = &in->bitmaps[i];
    struct qcow2_bitmap *nb;
    if (o.bitmap && strcmp (b->name, o.bitmap) != 0)
      continue;
    /* Zero maps stay behind: OUT is a new file, without our autoclear bit
     * they would be taken for ordinary bitmaps.
     */
    if (qcow2_is_zero_map (in, i))
      continue;
    if (qcow2_add_bitmap (out, b->name, b->granularity_bits,
                          convert_flags (in, b->flags, to), b->size, &err)
        == -1)
      goto fail_err;
    nb = &out->bitmaps[out->nb_bitmaps - 1];
    if (bitmap_copy (nb->bits, b->bits) == -1) {
      dbm_seterr (&err, ENOMEM, "out of memory");
      goto fail_err;
    }
  }
  if (qcow2_commit (out, argv[optind + 1], QCOW2_COMMIT_NOREPLACE, NULL,
                    &err) != 0)
    goto fail_err;
  qcow2_close (out);
  qcow2_close (in);
  return 0;

 fail_err:
  print_err (&err);
 fail:
  qcow2_close (out);
  qcow2_close (in);
  return 1;
}

static void
say (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  putchar ('\n');
}

static int
cmd_recover (int argc, char **argv)
{
  PARSE ("recover", "", 1, "FILE",
         "Recover FILE after an unclean shutdown, as the filter does at "
         "start, without\nnbdkit: a bitmap left in use (qemu mode, or QEMU) "
         "is marked entirely dirty and\nin_use cleared; a crash-safe file "
         "needs nothing (it already covers every\nwrite) and is reported.  "
         "Says what was done.\n");
  struct dbm_err err;

  if (tracker_recover_offline (argv[optind], say, &err) == -1) {
    print_err (&err);
    return 1;
  }
  return 0;
}

/* Send LINE to a running filter's control socket.  The reply is printed
 * unless it is a bare "ok"; "error: ..." goes to stderr, exit 1.
 */
static int
ask (const char *sock, const char *line)
{
  struct dbm_err err;
  char *reply;
  int r = 0;

  if (control_request (sock, line, &reply, &err) == -1) {
    print_err (&err);
    return 1;
  }
  if (strncmp (reply, "error: ", 7) == 0) {
    fprintf (stderr, "%s: %s\n", prog, reply + 7);
    r = 1;
  }
  else if (strcmp (reply, "ok") != 0)
    puts (reply);
  free (reply);
  return r;
}

/* Names travel as one word of a line. */
static int
check_word (const char *cmd, const char *name)
{
  if (*name == '\0' || strpbrk (name, " \t\r\n")) {
    fprintf (stderr, "%s %s: NAME must be one word (no blanks) over the "
             "control socket\n", prog, cmd);
    return -1;
  }
  return 0;
}

static int
cmd_status (int argc, char **argv)
{
  PARSE ("status", "", 1, "SOCKET",
         "Ask the filter serving the control SOCKET (bitmap-control=) for "
         "one JSON line:\nfile, layout, mode, export_size, generation "
         "(checkpoints and growths so\nfar), last_persist (Unix time), and "
         "each bitmap's name, granularity,\nenabled, in_use, tracked and "
         "dirty_bytes; and each live snapshot (snapshots: name, export, variant, size,\n"
         "granularity, preserved_bytes, store_bytes, map_bytes, readers, "
         "state, reason).\n");
  return ask (argv[optind], "status");
}

static int
cmd_checkpoint (int argc, char **argv)
{
  PARSE ("checkpoint", "granularity snapshot", 2,
         "SOCKET NAME [--granularity SIZE] [--snapshot[=full|dirty]]",
         "Atomic cut, without pausing writes: from now on writes are "
         "recorded in a new\nenabled bitmap NAME (granularity SIZE, default "
         "the filter's bitmap-granularity);\nevery bitmap enabled before is "
         "disabled and saved, consistent and durable,\nbefore this "
         "returns.  Back up from a disabled bitmap with 'map FILE OLD'.\n"
         "\n--snapshot (or --snapshot=full) also freezes the export's "
         "contents at the cut:\nthe same nbdkit serves them read-only as "
         "export 'snapshot:NAME' until\n'release SOCKET NAME'.  "
         "--snapshot=dirty keeps only what the disabled bitmaps\nmark "
         "dirty (reads elsewhere fail with EPERM): all an incremental "
         "backup reads.\n");
  CLEANUP_FREE char *line = NULL;
  const char *name = argv[optind + 1];

  struct dbm_err err;

  if (dbm_check_name ("checkpoint", name, &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (o.gran && check_word ("checkpoint", o.gran) == -1)
    return EXIT_USAGE;
  if (o.snapshot && strcmp (o.snapshot, "full") != 0 &&
      strcmp (o.snapshot, "dirty") != 0) {
    fprintf (stderr, "%s checkpoint: --snapshot=%s: expected full or dirty\n",
             prog, o.snapshot);
    return EXIT_USAGE;
  }
  if (asprintf (&line, "checkpoint %s%s%s%s%s", name, o.gran ? " " : "",
                o.gran ? o.gran : "", o.snapshot ? " --snapshot=" : "",
                o.snapshot ? o.snapshot : "") == -1) {
    fprintf (stderr, "%s: out of memory\n", prog);
    return 1;
  }
  return ask (argv[optind], line);
}

static int
cmd_persist (int argc, char **argv)
{
  PARSE ("persist", "", 1, "SOCKET",
         "Make every bitmap of the filter serving SOCKET durable now.\n");
  return ask (argv[optind], "persist");
}

/* remove FILE NAME edits a file; remove SOCKET NAME asks a running filter
 * (the file is locked while it runs).
 */
static int
cmd_remove (int argc, char **argv)
{
  CLEANUP_FREE char *line = NULL;

  if (argc != 3 || !control_is_socket (argv[1]))
    return cmd_remove_file (argc, argv);
  if (check_word ("remove", argv[2]) == -1)
    return EXIT_USAGE;
  if (asprintf (&line, "remove %s", argv[2]) == -1) {
    fprintf (stderr, "%s: out of memory\n", prog);
    return 1;
  }
  return ask (argv[1], line);
}

static int
cmd_release (int argc, char **argv)
{
  PARSE ("release", "", 2, "SOCKET NAME",
         "End the snapshot taken with 'checkpoint SOCKET NAME --snapshot': "
         "export\nsnapshot:NAME goes, readers still connected get EIO, its "
         "store is freed.\n");
  CLEANUP_FREE char *line = NULL;

  struct dbm_err err;

  if (dbm_check_name ("release", argv[optind + 1], &err) == -1) {
    print_err (&err);
    return EXIT_USAGE;
  }
  if (asprintf (&line, "release %s", argv[optind + 1]) == -1) {
    fprintf (stderr, "%s: out of memory\n", prog);
    return 1;
  }
  return ask (argv[optind], line);
}

static int
cmd_serve (int argc, char **argv)
{
  PARSE ("serve", "from socket port bind qemu-nbd", 2,
         "SOCKET NAME --from URI (--socket PATH | --port PORT [--bind ADDR])"
         " [--qemu-nbd PROG]",
         "One standard NBD endpoint for a backup agent written for QEMU: "
         "starts qemu-nbd\nserving, on --socket PATH or --port PORT, the "
         "contents of snapshot NAME (taken\nwith 'checkpoint SOCKET NAME "
         "--snapshot'), its base:allocation, and\nqemu:dirty-bitmap:B for "
         "each bitmap B that checkpoint froze.  --from is where\nnbdkit "
         "serves (nbd+unix:///?socket=PATH or nbd://HOST[:PORT]).  Prints "
         "one JSON\nline (uri, pid, contexts) once it serves; stops qemu-nbd "
         "and exits when the\nsnapshot is released (0) or breaks, nbdkit "
         "goes away, or qemu-nbd dies (1),\nor at SIGINT/SIGTERM (0).\n");
  struct serve_opts s = {
    .control = argv[optind], .name = argv[optind + 1], .from = o.from,
    .socket = o.socket, .port = o.port, .bind = o.bind,
    .qemu_nbd = o.qemu_nbd ? o.qemu_nbd : "qemu-nbd",
  };

  if (o.from == NULL || (o.socket == NULL) == (o.port == NULL)) {
    fprintf (stderr, "%s serve: needs --from URI and one of --socket PATH "
             "or --port PORT\n", prog);
    return EXIT_USAGE;
  }
  return serve_snapshot (&s);
}

static const struct cmd cmds[] = {
  { "info", cmd_info }, { "map", cmd_map }, { "check", cmd_check },
  { "create", cmd_create }, { "add", cmd_add }, { "remove", cmd_remove },
  { "clear", cmd_clear }, { "enable", cmd_enable }, { "disable", cmd_disable },
  { "convert", cmd_convert }, { "recover", cmd_recover },
  { "status", cmd_status }, { "checkpoint", cmd_checkpoint },
  { "persist", cmd_persist }, { "release", cmd_release },
  { "serve", cmd_serve },
};

int
main (int argc, char **argv)
{
  size_t i;

  if (argc < 2) {
    usage_all (stderr);
    return EXIT_USAGE;
  }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0 ||
      strcmp (argv[1], "help") == 0) {
    usage_all (stdout);
    return 0;
  }
  if (strcmp (argv[1], "--version") == 0) {
    printf ("%s %s\n", prog, PACKAGE_VERSION);
    return 0;
  }
  for (i = 0; i < sizeof cmds / sizeof cmds[0]; ++i)
    if (strcmp (argv[1], cmds[i].name) == 0)
      return cmds[i].fn (argc - 1, argv + 1);
  fprintf (stderr, "%s: unknown command '%s' (try '%s --help')\n", prog,
           argv[1], prog);
  return EXIT_USAGE;
}
