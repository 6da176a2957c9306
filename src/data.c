/* data: labelled image datasets (IDX, CIFAR-10 binary, PNG folders), normalisation,
 * deterministic permutations and shards.
 *
 * Every loader trusts nothing it reads: headers are checked against hard limits before
 * anything is allocated, file lengths must match what the header (or record size)
 * promises exactly, and every error names the file and what was expected.
 *
 * PNG folders: 8-bit gray and 8-bit RGB are read as they are. Gray of 1, 2 or 4 bits is
 * expanded to 8 bits (0..255), and palette images are expanded to RGB; both are lossless.
 * A tRNS chunk (palette transparency or a colour key) is ignored: the colour values are
 * what the network sees. Images with an alpha channel (gray+alpha, RGBA) and 16-bit
 * images are rejected rather than silently converted, because dropping alpha or bits
 * changes what the image shows. No gamma or colour-profile correction is applied. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/data.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <png.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "qevo/rng.h"

/* Largest dataset accepted: 2^31 pixel bytes. Headers are checked against it before
 * anything is allocated, so a hostile 16-byte file cannot ask for terabytes. */
#define DATA_MAX_BYTES ((uint64_t)1 << 31)

#define FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FASHION_MNIST_ENV "QEVO_FASHION_MNIST_DIR"

#define IDX_UBYTE 0x08
#define IDX_MAX_DIMS 3

#define CIFAR_PIXELS (3 * 32 * 32)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CIFAR_BATCHES 5

/* ---- small helpers ---------------------------------------------------------------- */

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* "dir/name", without doubling a slash the user already wrote. */
static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    int slash = n > 0 && dir[n - 1] == '/';
    size_t len = n + !slash + strlen(name) + 1;
    char *p = qv_malloc(len);
    snprintf(p, len, "%s%s%s", dir, slash ? "" : "/", name);
    return p;
}

/* A growable list of owned strings. */
typedef struct {
    char **s;
    int n, cap;
} str_list;

static void str_list_add(str_list *l, char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->s = qv_realloc(l->s, (size_t)l->cap * sizeof *l->s);
    }
    l->s[l->n++] = s;
}

static void str_list_free(str_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Splits "a,b,c" into owned strings; an empty item is an error (a typo like "a,,b"). */
static int split_commas(const char *spec, str_list *out, qv_err *err)
{
    memset(out, 0, sizeof *out);
    const char *p = spec;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0) {
            str_list_free(out);
            return qv_fail(err, "%s: empty file name in comma-separated list", spec);
        }
        char *item = qv_malloc(len + 1);
        memcpy(item, p, len);
        item[len] = 0;
        str_list_add(out, item);
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/* ---- IDX -------------------------------------------------------------------------- */

typedef struct {
    int ndim;
    uint32_t dims[IDX_MAX_DIMS];
    size_t count;        /* product of dims: bytes of data after the header */
    size_t header_bytes; /* 4 + 4 * ndim */
    char shape[96];      /* "10000x28x28 images", for messages */
} idx_header;

/* True if zlib recorded an error (corrupt or cut-off gzip stream, I/O error). */
static int gz_has_error(gzFile f)
{
    int code;
    gzerror(f, &code);
    return code != Z_OK && code != Z_STREAM_END;
}

/* Reports zlib's error for `path`; a short read with a gzip error is a broken
 * compressed stream, not a short IDX body, and the message says so. */
static int gz_fail(gzFile f, const char *path, qv_err *err)
{
    int code;
    const char *msg = gzerror(f, &code);
    /* zlib prefixes its message with the path; ours already starts with it. */
    size_t plen = strlen(path);
    if (strncmp(msg, path, plen) == 0 && strncmp(msg + plen, ": ", 2) == 0)
        msg += plen + 2;
    if (code == Z_ERRNO)
        return qv_fail(err, "%s: read error: %s", path, strerror(errno));
    if (code == Z_BUF_ERROR)
        return qv_fail(err, "%s: gzip stream is cut off (%s)", path, msg);
    return qv_fail(err, "%s: corrupt gzip data (%s)", path, msg);
}

/* Reads up to `want` bytes. The buffer grows as data actually arrives instead of being
 * sized from the header up front, so a header that lies about a short file costs
 * nothing. Sets *got (< want only at end of file); a zlib error fails. */
static int gz_read_upto(gzFile f, const char *path, size_t want, uint8_t **buf, size_t *got,
                        qv_err *err)
{
    size_t cap = want < ((size_t)1 << 20) ? want : ((size_t)1 << 20);
    uint8_t *b = qv_malloc(cap);
    size_t n = 0;
    while (n < want) {
        if (n == cap) {
            cap = cap > want / 2 ? want : 2 * cap;
            b = qv_realloc(b, cap);
        }
        size_t chunk = cap - n;
        if (chunk > ((size_t)1 << 30)) /* gzread takes an unsigned and returns an int */
            chunk = (size_t)1 << 30;
        int r = gzread(f, b + n, (unsigned)chunk);
        if (r <= 0) {
            if (r < 0 || gz_has_error(f)) {
                free(b);
                return gz_fail(f, path, err);
            }
            break;
        }
        n += (size_t)r;
    }
    *buf = b;
    *got = n;
    return 0;
}

/* Counts what is left in the file, up to a cap: the exact number matters only for the
 * message, and a gzip bomb of trailing zeros should not keep us busy. */
static size_t gz_count_rest(gzFile f, size_t cap, int *more)
{
    unsigned char tmp[1 << 14];
    size_t total = 0;
    *more = 0;
    for (;;) {
        int r = gzread(f, tmp, sizeof tmp);
        if (r <= 0)
            return total;
        total += (size_t)r;
        if (total > cap) {
            *more = 1;
            return total;
        }
    }
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads the n dimension bytes that follow the 4 magic bytes; a short read is a
 * truncated header (or a gzip error). */
static int idx_read_dims(gzFile f, const char *path, uint8_t *buf, unsigned n, qv_err *err)
{
    int r = gzread(f, buf, n);
    if (r < 0 || gz_has_error(f))
        return gz_fail(f, path, err);
    if ((unsigned)r < n)
        return qv_fail(err, "%s: truncated IDX header: file has %d bytes, the header needs %u",
                       path, 4 + r, 4 + n);
    return 0;
}

/* Parses and checks the header: magic 00 00 08 ndim, dims > 0, product within limits. */
static int idx_read_header(gzFile f, const char *path, int want_ndim, const char *what,
                           idx_header *h, qv_err *err)
{
    uint8_t magic[4];
    int r = gzread(f, magic, sizeof magic);
    if (r < 0 || gz_has_error(f))
        return gz_fail(f, path, err);
    if (r == 0)
        return qv_fail(err, "%s: empty file (expected an IDX file of %s)", path, what);
    if (r < 4)
        return qv_fail(err, "%s: truncated IDX header: file has %d bytes", path, r);
    if (magic[0] != 0 || magic[1] != 0)
        return qv_fail(err,
                       "%s: not an IDX file: magic bytes %02x %02x %02x %02x, expected "
                       "00 00 08 %02x",
                       path, magic[0], magic[1], magic[2], magic[3], want_ndim);
    if (magic[2] != IDX_UBYTE)
        return qv_fail(err, "%s: IDX element type 0x%02x; expected 0x08 (unsigned byte)", path,
                       magic[2]);
    if (magic[3] != want_ndim)
        return qv_fail(err, "%s: IDX file has %d dimensions; expected %d (%s)", path, magic[3],
                       want_ndim, what);

    uint8_t raw[4 * IDX_MAX_DIMS];
    if (idx_read_dims(f, path, raw, 4u * (unsigned)want_ndim, err) != 0)
        return -1;
    h->ndim = want_ndim;
    h->header_bytes = 4 + 4 * (size_t)want_ndim;
    for (int i = 0; i < want_ndim; i++) {
        h->dims[i] = be32(raw + 4 * i);
        if (h->dims[i] == 0)
            return qv_fail(err, "%s: IDX dimension %d is 0; expected %s", path, i, what);
    }
    if (want_ndim == 3)
        snprintf(h->shape, sizeof h->shape, "%ux%ux%u images", h->dims[0], h->dims[1],
                 h->dims[2]);
    else
        snprintf(h->shape, sizeof h->shape, "%u labels", h->dims[0]);
    /* The product is checked factor by factor so that it cannot wrap. */
    uint64_t count = 1;
    for (int i = 0; i < want_ndim; i++) {
        if (h->dims[i] > INT_MAX || count > DATA_MAX_BYTES / h->dims[i])
            return qv_fail(err,
                           "%s: IDX header declares %s, more than the 2^31 values qevo "
                           "reads",
                           path, h->shape);
        count *= h->dims[i];
    }
    h->count = (size_t)count;
    return 0;
}

/* Reads the body, which must be exactly as long as the header says. */
static int idx_read_body(gzFile f, const char *path, const idx_header *h, uint8_t **out,
                         qv_err *err)
{
    const char *unit = gzdirect(f) ? "" : " (after decompression)";
    uint8_t *buf = NULL;
    size_t got = 0;
    if (gz_read_upto(f, path, h->count, &buf, &got, err) != 0)
        return -1;
    if (got < h->count) {
        free(buf);
        return qv_fail(err,
                       "%s: truncated: header says %s (%zu bytes after the %zu-byte header), "
                       "file has %zu after the header%s",
                       path, h->shape, h->count, h->header_bytes, got, unit);
    }
    int more;
    size_t extra = gz_count_rest(f, (size_t)1 << 20, &more);
    if (gz_has_error(f)) { /* e.g. a bad CRC in the gzip trailer */
        free(buf);
        return gz_fail(f, path, err);
    }
    if (extra > 0) {
        free(buf);
        return qv_fail(err,
                       "%s: trailing data: header says %s (%zu bytes after the %zu-byte "
                       "header), file has %s%zu after the header%s",
                       path, h->shape, h->count, h->header_bytes, more ? "more than " : "",
                       h->count + (more ? (size_t)1 << 20 : extra), unit);
    }
    *out = buf;
    return 0;
}

/* Loads one IDX file of unsigned bytes with `ndim` dimensions (through zlib, so .gz and
 * raw files alike). Returns the header and a malloc'd body. */
static int idx_load(const char *path, int ndim, const char *what, idx_header *h,
                    uint8_t **body, qv_err *err)
{
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return qv_fail(err, "%s: cannot open: %s", path,
                       errno ? strerror(errno) : "out of memory");
    gzbuffer(f, 1 << 17);
    int rc = idx_read_header(f, path, ndim, what, h, err);
    if (rc == 0)
        rc = idx_read_body(f, path, h, body, err);
    gzclose(f);
    return rc;
}

/* IDX images (n, h, w) -> (n, 1, h, w) with labels (n). */
static int load_idx_pair(const char *images, const char *labels, data_set *ds, qv_err *err)
{
    idx_header hi, hl;
    uint8_t *lab = NULL;
    if (idx_load(images, 3, "n x h x w images", &hi, &ds->pixels, err) != 0)
        return -1;
    if (idx_load(labels, 1, "n labels", &hl, &lab, err) != 0)
        return -1;
    if (hl.dims[0] != hi.dims[0]) {
        free(lab);
        return qv_fail(err, "%s: %u labels, but %s has %u images", labels, hl.dims[0], images,
                       hi.dims[0]);
    }
    ds->n = (int)hi.dims[0];
    ds->c = 1;
    ds->h = (int)hi.dims[1];
    ds->w = (int)hi.dims[2];
    ds->labels = qv_malloc((size_t)ds->n * sizeof *ds->labels);
    for (int i = 0; i < ds->n; i++)
        ds->labels[i] = lab[i];
    free(lab);
    return 0;
}

static const char *const accepted_specs =
    "expected fashion-mnist:train|test, cifar10:DIR:train|test, FILE.bin[,FILE.bin...], "
    "a PNG folder, PATH-images-idx3-ubyte[.gz] or IMAGES,LABELS";

/* An images path whose labels file is found by replacing "images-idx3" with
 * "labels-idx1" in the file name (the MNIST naming convention). */
static int load_idx_named(const char *images, data_set *ds, qv_err *err)
{
    struct stat st;
    if (stat(images, &st) != 0)
        return qv_fail(err, "%s: cannot open: %s (%s)", images, strerror(errno),
                       accepted_specs);
    const char *slash = strrchr(images, '/');
    const char *base = slash ? slash + 1 : images;
    const char *at = strstr(base, "images-idx3");
    if (!at)
        return qv_fail(err,
                       "%s: cannot tell where the labels are: the name does not contain "
                       "\"images-idx3\" (to be replaced by \"labels-idx1\"); name both "
                       "files as IMAGES,LABELS",
                       images);
    char *labels = qv_strdup(images);
    /* Same length, so the replacement is in place. */
    _Static_assert(sizeof "images-idx3" == sizeof "labels-idx1", "in-place replacement");
    memcpy(labels + (at - images), "labels-idx1", strlen("labels-idx1"));
    int rc = load_idx_pair(images, labels, ds, err);
    free(labels);
    return rc;
}

/* fashion-mnist:train | fashion-mnist:test from Debian's package (or $QEVO_FASHION_MNIST_DIR).
 * The .gz files are what the package ships; raw files of the same name work too. */
static int load_fashion_mnist(const char *spec, data_set *ds, qv_err *err)
{
    const char *split = spec + strlen("fashion-mnist:");
    const char *prefix = strcmp(split, "train") == 0  ? "train"
                         : strcmp(split, "test") == 0 ? "t10k"
                                                      : NULL;
    if (!prefix)
        return qv_fail(err, "%s: unknown split \"%s\"; expected fashion-mnist:train or "
                            "fashion-mnist:test",
                       spec, split);
    const char *dir = getenv(FASHION_MNIST_ENV);
    if (!dir || !*dir)
        dir = FASHION_MNIST_DIR;
    if (!is_dir(dir))
        return qv_fail(err,
                       "%s: folder %s not found; install Fashion-MNIST with "
                       "`apt-get install dataset-fashion-mnist` (or set %s to a folder "
                       "holding its IDX files)",
                       spec, dir, FASHION_MNIST_ENV);
    char name[64];
    char *paths[2];
    const char *kinds[2] = {"images-idx3", "labels-idx1"};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s-%s-ubyte", prefix, kinds[i]);
        char *raw = path_join(dir, name);
        size_t len = strlen(raw) + 4;
        paths[i] = qv_malloc(len);
        snprintf(paths[i], len, "%s.gz", raw);
        if (!is_file(paths[i]) && is_file(raw)) {
            free(paths[i]);
            paths[i] = raw;
        } else {
            free(raw);
        }
    }
    int rc = load_idx_pair(paths[0], paths[1], ds, err);
    free(paths[0]);
    free(paths[1]);
    if (rc != 0)
        qv_wrap(err, "%s", spec);
    return rc;
}

/* ---- CIFAR-10 binary -------------------------------------------------------------- */

/* Records of 1 label byte + 3x32x32 pixels (channel-major, as the official batches).
 * Sizes are checked for all files before anything is allocated. */
static int load_cifar_files(char *const *paths, int nfiles, data_set *ds, qv_err *err)
{
    uint64_t records = 0;
    for (int i = 0; i < nfiles; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0)
            return qv_fail(err, "%s: cannot open: %s", paths[i], strerror(errno));
        if (!S_ISREG(st.st_mode))
            return qv_fail(err, "%s: not a regular file (expected a CIFAR-10 .bin batch)",
                           paths[i]);
        uint64_t size = (uint64_t)st.st_size;
        if (size == 0 || size % CIFAR_RECORD != 0)
            return qv_fail(err,
                           "%s: size %llu bytes is not a positive multiple of %d (a CIFAR-10 "
                           "record is 1 label byte + 3x32x32 pixels)",
                           paths[i], (unsigned long long)size, CIFAR_RECORD);
        records += size / CIFAR_RECORD;
        if (records * CIFAR_PIXELS > DATA_MAX_BYTES)
            return qv_fail(err, "%s: too many CIFAR-10 records; qevo reads at most 2^31 values",
                           paths[i]);
    }
    ds->n = (int)records;
    ds->c = 3;
    ds->h = 32;
    ds->w = 32;
    ds->pixels = qv_malloc((size_t)records * CIFAR_PIXELS);
    ds->labels = qv_malloc((size_t)records * sizeof *ds->labels);
    size_t k = 0;
    for (int i = 0; i < nfiles; i++) {
        unsigned char *buf;
        size_t len;
        if (qv_read_file(paths[i], &buf, &len, err) != 0)
            return -1;
        /* The size was checked above; a file that changes under us is caught here. */
        if (len % CIFAR_RECORD != 0 || k + len / CIFAR_RECORD > records) {
            free(buf);
            return qv_fail(err, "%s: file changed while being read", paths[i]);
        }
        for (size_t r = 0; r < len / CIFAR_RECORD; r++, k++) {
            const unsigned char *rec = buf + r * CIFAR_RECORD;
            unsigned label = rec[0];
            if (label > 9) {
                free(buf);
                return qv_fail(err, "%s: record %zu has label %u; CIFAR-10 labels are 0..9",
                               paths[i], r, label);
            }
            ds->labels[k] = (int32_t)label;
            memcpy(ds->pixels + k * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
        }
        free(buf);
    }
    if (k != records)
        return qv_fail(err, "%s: file changed while being read", paths[nfiles - 1]);
    return 0;
}

/* cifar10:DIR:train (data_batch_1..5.bin) | cifar10:DIR:test (test_batch.bin). DIR may
 * itself contain ':', so the split is what follows the last one. */
static int load_cifar_split(const char *spec, data_set *ds, qv_err *err)
{
    const char *rest = spec + strlen("cifar10:");
    const char *colon = strrchr(rest, ':');
    if (!colon || colon == rest)
        return qv_fail(err, "%s: expected cifar10:DIR:train or cifar10:DIR:test", spec);
    const char *split = colon + 1;
    int train = strcmp(split, "train") == 0;
    if (!train && strcmp(split, "test") != 0)
        return qv_fail(err, "%s: unknown split \"%s\"; expected cifar10:DIR:train or "
                            "cifar10:DIR:test",
                       spec, split);
    size_t dlen = (size_t)(colon - rest);
    char *dir = qv_malloc(dlen + 1);
    memcpy(dir, rest, dlen);
    dir[dlen] = 0;
    int rc;
    if (!is_dir(dir)) {
        rc = qv_fail(err, "%s: folder %s not found (expected the CIFAR-10 binary batches, "
                          "cifar-10-batches-bin)",
                     spec, dir);
    } else {
        str_list files = {0};
        if (train) {
            for (int b = 1; b <= CIFAR_BATCHES; b++) {
                char name[32];
                snprintf(name, sizeof name, "data_batch_%d.bin", b);
                str_list_add(&files, path_join(dir, name));
            }
        } else {
            str_list_add(&files, path_join(dir, "test_batch.bin"));
        }
        rc = load_cifar_files(files.s, files.n, ds, err);
        str_list_free(&files);
    }
    free(dir);
    return rc;
}

/* "a,b,...": CIFAR-10 batches if the first ends in .bin, otherwise IMAGES,LABELS. */
static int load_list(const char *spec, data_set *ds, qv_err *err)
{
    str_list parts;
    if (split_commas(spec, &parts, err) != 0)
        return -1;
    int rc;
    if (ends_with(parts.s[0], ".bin"))
        rc = load_cifar_files(parts.s, parts.n, ds, err);
    else if (parts.n == 2)
        rc = load_idx_pair(parts.s[0], parts.s[1], ds, err);
    else
        rc = qv_fail(err, "%s: a list of %d files; %s", spec, parts.n, accepted_specs);
    str_list_free(&parts);
    return rc;
}

/* ---- PNG folders ------------------------------------------------------------------ */

/* Largest single image accepted; beyond this a PNG header is more likely hostile than a
 * calibration image. */
#define PNG_MAX_BYTES ((uint64_t)1 << 28)

/* State of one decode. It lives in the caller's frame, not in decode_png's, so nothing
 * decode_png changes after setjmp is a local of the function that called setjmp: no
 * `volatile` needed and nothing can be clobbered by the longjmp. */
typedef struct {
    FILE *f;
    char msg[256];
    png_uint_32 w, h;
    int channels;
    uint8_t *pixels; /* (h, w, channels), malloc'd; the caller frees it */
    uint8_t **rows;  /* row pointers into pixels; the caller frees them */
} png_job;

static _Noreturn void on_png_error(png_structp png, png_const_charp msg)
{
    png_job *job = png_get_error_ptr(png);
    snprintf(job->msg, sizeof job->msg, "broken or truncated PNG (libpng: %s)", msg);
    png_longjmp(png, 1);
}

/* Warnings (e.g. an incorrect sRGB profile) do not change the pixels we read. */
static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* Rejects a PNG we do not read: our message, libpng's unwinding. */
static _Noreturn void png_reject(png_structp png, png_job *job, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static _Noreturn void png_reject(png_structp png, png_job *job, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->msg, sizeof job->msg, fmt, ap);
    va_end(ap);
    png_longjmp(png, 1);
}

static const char *color_name(int color)
{
    switch (color) {
    case PNG_COLOR_TYPE_GRAY: return "gray";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
    case PNG_COLOR_TYPE_RGB: return "RGB";
    case PNG_COLOR_TYPE_RGB_ALPHA: return "RGBA";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
    default: return "unknown";
    }
}

/* Decodes job->f (positioned after the 8-byte signature) into job->pixels. Returns 0, or
 * -1 with job->msg set; job->pixels/rows may be set either way. */
static int decode_png(png_job *job)
{
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, job, on_png_error, on_png_warning);
    if (!png) {
        snprintf(job->msg, sizeof job->msg, "libpng could not start");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        snprintf(job->msg, sizeof job->msg, "libpng could not start");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_init_io(png, job->f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if (depth == 16)
        png_reject(png, job, "16-bit %s PNG; expected 8-bit gray or RGB", color_name(color));
    if (color & PNG_COLOR_MASK_ALPHA)
        png_reject(png, job, "%s PNG has an alpha channel; expected 8-bit gray or RGB",
                   color_name(color));
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
        png_set_strip_alpha(png); /* palette tRNS would otherwise turn into alpha */
    } else if (color == PNG_COLOR_TYPE_GRAY && depth < 8) {
        png_set_expand_gray_1_2_4_to_8(png);
    }
    (void)png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || (channels != 1 && channels != 3))
        png_reject(png, job, "unsupported %d-bit %s PNG; expected 8-bit gray or RGB", depth,
                   color_name(color));
    if ((uint64_t)w * h * (uint64_t)channels > PNG_MAX_BYTES)
        png_reject(png, job, "PNG of %lux%lu pixels is too large (at most 2^28 bytes)",
                   (unsigned long)w, (unsigned long)h);
    size_t rowbytes = png_get_rowbytes(png, info);
    QV_ASSERT(rowbytes == (size_t)w * (size_t)channels);
    job->pixels = qv_malloc(rowbytes * h);
    job->rows = qv_malloc(h * sizeof *job->rows);
    for (png_uint_32 y = 0; y < h; y++)
        job->rows[y] = job->pixels + y * rowbytes;
    png_read_image(png, job->rows);
    png_read_end(png, NULL); /* a file cut off before IEND is truncated, not fine */
    job->w = w;
    job->h = h;
    job->channels = channels;
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

/* Reads a PNG file into job (pixels (h, w, c)). Returns 0, or -1 naming the file. */
static int read_png(const char *path, png_job *job, qv_err *err)
{
    memset(job, 0, sizeof *job);
    job->f = fopen(path, "rb");
    if (!job->f)
        return qv_fail(err, "%s: cannot open: %s", path, strerror(errno));
    png_byte sig[8];
    if (fread(sig, 1, sizeof sig, job->f) != sizeof sig || png_sig_cmp(sig, 0, sizeof sig)) {
        fclose(job->f);
        return qv_fail(err, "%s: not a PNG file (no PNG signature)", path);
    }
    int rc = decode_png(job);
    fclose(job->f);
    job->f = NULL;
    free(job->rows);
    job->rows = NULL;
    if (rc != 0) {
        free(job->pixels);
        job->pixels = NULL;
        return qv_fail(err, "%s: %s", path, job->msg);
    }
    return 0;
}

enum entry_kind { ENTRY_DIRS, ENTRY_PNGS };

/* Sorted (strcmp) names in dir: subfolders, or regular files ending in ".png". Hidden
 * entries (".git", ".DS_Store") are skipped; anything else is ignored (a README beside
 * the class folders is not a class). */
static int list_entries(const char *dir, enum entry_kind kind, str_list *out, qv_err *err)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return qv_fail(err, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *e;
    for (;;) {
        errno = 0; /* readdir returns NULL both at the end and on error */
        if ((e = readdir(d)) == NULL)
            break;
        if (e->d_name[0] == '.')
            continue;
        char *path = path_join(dir, e->d_name);
        struct stat st;
        int keep = stat(path, &st) == 0 &&
                   (kind == ENTRY_DIRS ? S_ISDIR(st.st_mode)
                                       : S_ISREG(st.st_mode) && ends_with(e->d_name, ".png"));
        free(path);
        if (keep)
            str_list_add(out, qv_strdup(e->d_name));
    }
    int e_read = errno;
    closedir(d);
    if (e_read != 0) {
        str_list_free(out);
        return qv_fail(err, "%s: cannot read folder: %s", dir, strerror(e_read));
    }
    if (out->n > 1)
        qsort(out->s, (size_t)out->n, sizeof *out->s, cmp_str);
    return 0;
}

/* All image paths of a PNG folder with their labels (class folder index). */
static int collect_pngs(const char *root, str_list *paths, int32_t **labels, qv_err *err)
{
    str_list classes;
    memset(paths, 0, sizeof *paths);
    *labels = NULL;
    if (list_entries(root, ENTRY_DIRS, &classes, err) != 0)
        return -1;
    if (classes.n == 0) {
        str_list_free(&classes);
        return qv_fail(err,
                       "%s: no class subfolders (a PNG dataset is one subfolder per class "
                       "holding .png files)",
                       root);
    }
    int cap = 0, rc = 0;
    for (int k = 0; k < classes.n && rc == 0; k++) {
        char *cdir = path_join(root, classes.s[k]);
        str_list files;
        rc = list_entries(cdir, ENTRY_PNGS, &files, err);
        if (rc == 0 && files.n == 0)
            rc = qv_fail(err, "%s: class folder has no .png files", cdir);
        if (rc == 0 && files.n > INT_MAX - paths->n)
            rc = qv_fail(err, "%s: too many images", cdir);
        for (int i = 0; rc == 0 && i < files.n; i++) {
            if (paths->n == cap) {
                cap = cap ? 2 * cap : 64;
                *labels = qv_realloc(*labels, (size_t)cap * sizeof **labels);
            }
            (*labels)[paths->n] = k;
            str_list_add(paths, path_join(cdir, files.s[i]));
        }
        str_list_free(&files);
        free(cdir);
    }
    str_list_free(&classes);
    if (rc != 0) {
        str_list_free(paths);
        free(*labels);
        *labels = NULL;
    }
    return rc;
}

/* Interleaved (h, w, c) -> channel-major (c, h, w). */
static void hwc_to_chw(const uint8_t *src, int c, size_t plane, uint8_t *dst)
{
    for (int ch = 0; ch < c; ch++)
        for (size_t p = 0; p < plane; p++)
            dst[(size_t)ch * plane + p] = src[p * (size_t)c + (size_t)ch];
}

/* A folder of class subfolders of PNGs, all of the size and channel count of the first. */
static int load_png_folder(const char *root, data_set *ds, qv_err *err)
{
    str_list paths;
    if (collect_pngs(root, &paths, &ds->labels, err) != 0)
        return -1;
    int rc = 0;
    size_t image = 0;
    for (int i = 0; i < paths.n && rc == 0; i++) {
        png_job job;
        if (read_png(paths.s[i], &job, err) != 0) {
            rc = -1;
            break;
        }
        if (i == 0) {
            if ((uint64_t)paths.n * job.w * job.h * (uint64_t)job.channels > DATA_MAX_BYTES) {
                rc = qv_fail(err, "%s: %d images of %lux%lu pixels are too many; qevo reads at "
                                  "most 2^31 values",
                             root, paths.n, (unsigned long)job.w, (unsigned long)job.h);
            } else {
                ds->c = job.channels;
                ds->h = (int)job.h;
                ds->w = (int)job.w;
                image = (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
                ds->pixels = qv_malloc((size_t)paths.n * image);
            }
        } else if ((int)job.w != ds->w || (int)job.h != ds->h || job.channels != ds->c) {
            rc = qv_fail(err, "%s: %lux%lu %s image; expected %dx%d %s like %s", paths.s[i],
                         (unsigned long)job.w, (unsigned long)job.h,
                         job.channels == 1 ? "gray" : "RGB", ds->w, ds->h,
                         ds->c == 1 ? "gray" : "RGB", paths.s[0]);
        }
        if (rc == 0)
            hwc_to_chw(job.pixels, ds->c, (size_t)ds->h * (size_t)ds->w,
                       ds->pixels + (size_t)i * image);
        free(job.pixels);
    }
    if (rc == 0)
        ds->n = paths.n;
    str_list_free(&paths);
    return rc;
}

/* ---- public ----------------------------------------------------------------------- */

int data_load(const char *spec, data_set **out, qv_err *err)
{
    *out = NULL;
    if (!spec || !*spec)
        return qv_fail(err, "empty dataset name; %s", accepted_specs);
    data_set *ds = qv_calloc(1, sizeof *ds);
    int rc;
    if (starts_with(spec, "fashion-mnist:"))
        rc = load_fashion_mnist(spec, ds, err);
    else if (starts_with(spec, "cifar10:"))
        rc = load_cifar_split(spec, ds, err);
    else if (is_dir(spec) || ends_with(spec, "/"))
        rc = load_png_folder(spec, ds, err);
    else if (strchr(spec, ','))
        rc = load_list(spec, ds, err);
    else if (ends_with(spec, ".bin")) {
        char *one = qv_strdup(spec);
        rc = load_cifar_files(&one, 1, ds, err);
        free(one);
    } else
        rc = load_idx_named(spec, ds, err);
    if (rc != 0) {
        data_free(ds);
        return -1;
    }
    int32_t max = 0;
    for (int i = 0; i < ds->n; i++)
        if (ds->labels[i] > max)
            max = ds->labels[i];
    ds->classes = max + 1;
    ds->name = qv_strdup(spec);
    *out = ds;
    return 0;
}

void data_free(data_set *ds)
{
    if (!ds)
        return;
    free(ds->pixels);
    free(ds->labels);
    free(ds->name);
    free(ds);
}

void data_normalize(const data_set *ds, const int *idx, int count, const float *mean,
                    const float *std, float *out)
{
    QV_ASSERT(count >= 0 && ds->c > 0);
    size_t plane = (size_t)ds->h * (size_t)ds->w;
    size_t image = plane * (size_t)ds->c;
    for (int ch = 0; ch < ds->c; ch++) {
        /* A table of the 256 possible results, each computed by the contract's exact
         * float32 expression, so a lookup is bit-identical to computing it per pixel. */
        float lut[256];
        for (int v = 0; v < 256; v++)
            lut[v] = ((float)v / 255.0f - mean[ch]) / std[ch];
        for (int i = 0; i < count; i++) {
            QV_ASSERT(idx[i] >= 0 && idx[i] < ds->n);
            const uint8_t *src = ds->pixels + (size_t)idx[i] * image + (size_t)ch * plane;
            float *dst = out + (size_t)i * image + (size_t)ch * plane;
            for (size_t p = 0; p < plane; p++)
                dst[p] = lut[src[p]];
        }
    }
}

int *data_permutation(int n, uint64_t seed)
{
    QV_ASSERT(n >= 0);
    int *p = qv_malloc((size_t)n * sizeof *p);
    for (int i = 0; i < n; i++)
        p[i] = i;
    rng r = rng_stream(seed, 0, 0, RNG_SHARD);
    rng_shuffle(&r, p, n);
    return p;
}

void data_shard_range(int n, int rank, int nranks, int *first, int *count)
{
    QV_ASSERT(n >= 0 && nranks > 0 && rank >= 0 && rank < nranks);
    int base = n / nranks, extra = n % nranks;
    /* The first `extra` shards take one more item each. */
    *count = base + (rank < extra);
    *first = rank * base + (rank < extra ? rank : extra);
}
