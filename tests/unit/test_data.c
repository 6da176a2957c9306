/* Tests for data: the real Fashion-MNIST split, IDX (gzipped and raw), CIFAR-10 binary
 * and PNG folders, each against good and hostile files generated here into a temporary
 * folder; normalisation; permutations; shards. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <png.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "qevo/data.h"
#include "test.h"

static char tmp_root[] = "/tmp/qevo-test-data-XXXXXX";

/* A path inside the temporary folder. A small ring of buffers, so a test can hold a few
 * at once without freeing them. */
static const char *fx(const char *name)
{
    static char ring[16][512];
    static int next;
    char *p = ring[next++ % 16];
    snprintf(p, sizeof ring[0], "%s/%s", tmp_root, name);
    return p;
}

static void make_dir(const char *name)
{
    CHECKF(mkdir(fx(name), 0777) == 0, "mkdir %s", name);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECKF(f != NULL, "create %s", path);
    if (!f)
        return;
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static void write_gz(const char *path, const void *data, size_t len)
{
    gzFile f = gzopen(path, "wb");
    CHECKF(f != NULL, "create %s", path);
    if (!f)
        return;
    CHECK(gzwrite(f, data, (unsigned)len) == (int)len);
    gzclose(f);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 1);
    *len = fread(b, 1, *len, f);
    fclose(f);
    return b;
}

/* Decompresses a .gz file wholly into memory (for the raw-IDX test). */
static unsigned char *gunzip(const char *path, size_t *len)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *b = malloc(cap);
    int r;
    while ((r = gzread(f, b + n, (unsigned)(cap - n))) > 0) {
        n += (size_t)r;
        if (n == cap)
            b = realloc(b, cap *= 2);
    }
    gzclose(f);
    *len = n;
    return b;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path);
}

/* An IDX file in memory: magic 00 00 type ndim, big-endian dims, then body. */
typedef struct {
    unsigned char b[256];
    size_t len;
} idx_buf;

static void idx_make(idx_buf *x, int type, int ndim, const uint32_t *dims,
                     const unsigned char *body, size_t body_len)
{
    x->len = 0;
    x->b[x->len++] = 0;
    x->b[x->len++] = 0;
    x->b[x->len++] = (unsigned char)type;
    x->b[x->len++] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++)
        for (int s = 24; s >= 0; s -= 8)
            x->b[x->len++] = (unsigned char)(dims[i] >> s);
    if (body_len > sizeof x->b - x->len)
        abort(); /* a fixture bug, not a test result */
    memcpy(x->b + x->len, body, body_len);
    x->len += body_len;
}

static void write_idx(const char *path, int type, int ndim, const uint32_t *dims,
                      const unsigned char *body, size_t body_len)
{
    idx_buf x;
    idx_make(&x, type, ndim, dims, body, body_len);
    write_bytes(path, x.b, x.len);
}

/* Loading `spec` must fail with a message naming `file` and containing `what`. */
static void expect_fail(const char *spec, const char *file, const char *what)
{
    data_set *ds = (data_set *)1;
    qv_err err = {{0}};
    int rc = data_load(spec, &ds, &err);
    CHECKF(rc == -1 && ds == NULL, "%s: expected failure, got rc %d", spec, rc);
    CHECKF(strstr(err.msg, file) != NULL, "message does not name %s: %s", file, err.msg);
    CHECKF(strstr(err.msg, what) != NULL, "message lacks \"%s\": %s", what, err.msg);
    if (rc == 0)
        data_free(ds);
}

static data_set *expect_load(const char *spec)
{
    data_set *ds = NULL;
    qv_err err = {{0}};
    int rc = data_load(spec, &ds, &err);
    CHECKF(rc == 0 && ds != NULL, "%s: %s", spec, err.msg);
    return rc == 0 ? ds : NULL;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- Fashion-MNIST ------------------------------------------------------------------ */

#define FMNIST "/usr/share/datasets/fashion-mnist"

static long long image_sum(const data_set *ds, int i)
{
    size_t size = (size_t)ds->c * ds->h * ds->w;
    long long s = 0;
    for (size_t p = 0; p < size; p++)
        s += ds->pixels[(size_t)i * size + p];
    return s;
}

static void test_fashion_mnist(void)
{
    /* Reference numbers computed independently with python3's gzip module. */
    data_set *ds = expect_load("fashion-mnist:test");
    if (!ds)
        return;
    CHECK(ds->n == 10000 && ds->c == 1 && ds->h == 28 && ds->w == 28);
    CHECK(ds->classes == 10);
    CHECK(strcmp(ds->name, "fashion-mnist:test") == 0);
    const int32_t first[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7}; /* 9: ankle boot */
    CHECK(memcmp(ds->labels, first, sizeof first) == 0);
    CHECK(image_sum(ds, 0) == 33456);
    CHECK(image_sum(ds, 9999) == 24390);
    long long total = 0;
    int hist[10] = {0};
    for (int i = 0; i < ds->n; i++) {
        total += image_sum(ds, i);
        hist[ds->labels[i]]++;
    }
    CHECK(total == 573469082LL);
    int balanced = 1;
    for (int k = 0; k < 10; k++)
        balanced &= hist[k] == 1000;
    CHECK(balanced);
    CHECK(ds->pixels[14 * 28 + 14] == 110);
    CHECK(ds->pixels[14 * 28 + 12] == 98);

    /* Normalised with the training statistics; bit patterns from python3 (struct 'f'). */
    const float mean = 0.2860f, std = 0.3530f;
    float *x = malloc(784 * sizeof *x);
    int idx0 = 0;
    data_normalize(ds, &idx0, 1, &mean, &std, x);
    CHECK(float_bits(x[14 * 28 + 14]) == 0x3ed2da1au); /* pixel 110 */
    CHECK(float_bits(x[0]) == 0xbf4f6929u);             /* pixel 0 */
    free(x);

    /* The same split from raw (un-gzipped) IDX files, named explicitly and found through
     * $QEVO_FASHION_MNIST_DIR (the loader falls back to raw names without .gz). */
    size_t ilen = 0, llen = 0;
    unsigned char *img = gunzip(FMNIST "/t10k-images-idx3-ubyte.gz", &ilen);
    unsigned char *lab = gunzip(FMNIST "/t10k-labels-idx1-ubyte.gz", &llen);
    CHECK(img && lab && ilen == 7840016 && llen == 10008);
    make_dir("fm");
    write_bytes(fx("fm/t10k-images-idx3-ubyte"), img, ilen);
    write_bytes(fx("fm/t10k-labels-idx1-ubyte"), lab, llen);
    free(img);
    free(lab);
    char spec[1200];
    snprintf(spec, sizeof spec, "%s,%s", fx("fm/t10k-images-idx3-ubyte"),
             fx("fm/t10k-labels-idx1-ubyte"));
    data_set *raw = expect_load(spec);
    if (raw) {
        CHECK(raw->n == 10000 && raw->c == 1 && raw->h == 28 && raw->w == 28);
        CHECK(memcmp(raw->pixels, ds->pixels, 7840000) == 0);
        CHECK(memcmp(raw->labels, ds->labels, 10000 * sizeof *raw->labels) == 0);
        data_free(raw);
    }
    raw = expect_load(fx("fm/t10k-images-idx3-ubyte")); /* labels found by name */
    if (raw) {
        CHECK(memcmp(raw->labels, ds->labels, 10000 * sizeof *raw->labels) == 0);
        data_free(raw);
    }
    setenv("QEVO_FASHION_MNIST_DIR", fx("fm"), 1);
    raw = expect_load("fashion-mnist:test");
    if (raw) {
        CHECK(memcmp(raw->pixels, ds->pixels, 7840000) == 0);
        data_free(raw);
    }
    expect_fail("fashion-mnist:train", "train-images-idx3-ubyte", "cannot open");
    setenv("QEVO_FASHION_MNIST_DIR", fx("no-such-folder"), 1);
    expect_fail("fashion-mnist:test", "no-such-folder", "apt-get install dataset-fashion-mnist");
    unsetenv("QEVO_FASHION_MNIST_DIR");
    expect_fail("fashion-mnist:valid", "fashion-mnist:valid", "unknown split");
    data_free(ds);

    ds = expect_load("fashion-mnist:train");
    if (!ds)
        return;
    CHECK(ds->n == 60000 && ds->c == 1 && ds->h == 28 && ds->w == 28 && ds->classes == 10);
    const int32_t train_first[10] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
    CHECK(memcmp(ds->labels, train_first, sizeof train_first) == 0);
    CHECK(image_sum(ds, 0) == 76247);
    total = 0;
    for (int i = 0; i < ds->n; i++)
        total += image_sum(ds, i);
    CHECK(total == 3431114169LL);
    data_free(ds);
}

/* ---- small IDX fixtures ----------------------------------------------------------- */

static const uint32_t small_dims[3] = {3, 2, 4};
static unsigned char small_body[24];
static const unsigned char small_labels[3] = {2, 0, 5};
static const uint32_t small_n[1] = {3};

static void check_small(const data_set *ds, const char *spec)
{
    CHECK(ds->n == 3 && ds->c == 1 && ds->h == 2 && ds->w == 4);
    CHECK(memcmp(ds->pixels, small_body, sizeof small_body) == 0);
    CHECK(ds->labels[0] == 2 && ds->labels[1] == 0 && ds->labels[2] == 5);
    CHECK(ds->classes == 6);
    CHECK(strcmp(ds->name, spec) == 0);
}

static void test_idx_small(void)
{
    for (int i = 0; i < 24; i++)
        small_body[i] = (unsigned char)(i * 10 + 1);
    make_dir("idx");
    write_idx(fx("idx/small-images-idx3-ubyte"), 8, 3, small_dims, small_body, 24);
    write_idx(fx("idx/small-labels-idx1-ubyte"), 8, 1, small_n, small_labels, 3);
    const char *spec = fx("idx/small-images-idx3-ubyte");
    data_set *ds = expect_load(spec);
    if (ds) {
        check_small(ds, spec);
        data_free(ds);
    }

    idx_buf x;
    idx_make(&x, 8, 3, small_dims, small_body, 24);
    write_gz(fx("idx/gz-images-idx3-ubyte.gz"), x.b, x.len);
    idx_make(&x, 8, 1, small_n, small_labels, 3);
    write_gz(fx("idx/gz-labels-idx1-ubyte.gz"), x.b, x.len);
    spec = fx("idx/gz-images-idx3-ubyte.gz");
    ds = expect_load(spec);
    if (ds) {
        check_small(ds, spec);
        data_free(ds);
    }

    /* Explicit pair with arbitrary names, one gzipped and one raw. */
    char pair[1100];
    snprintf(pair, sizeof pair, "%s,%s", fx("idx/gz-images-idx3-ubyte.gz"),
             fx("idx/small-labels-idx1-ubyte"));
    ds = expect_load(pair);
    if (ds) {
        check_small(ds, pair);
        data_free(ds);
    }
}

static void test_idx_hostile(void)
{
    make_dir("bad");
    const unsigned char zeros[64] = {0};
    const char *lab = fx("bad/x-labels-idx1-ubyte");
    write_idx(lab, 8, 1, small_n, small_labels, 3);

    /* Each case rewrites the images file beside the good labels file. */
    const char *img = fx("bad/x-images-idx3-ubyte");
    idx_buf x;

    idx_make(&x, 8, 3, small_dims, small_body, 24);
    x.b[0] = 1, x.b[1] = 2;
    write_bytes(img, x.b, x.len);
    expect_fail(img, img, "magic");

    write_idx(img, 0x0D, 3, small_dims, small_body, 24); /* float elements */
    expect_fail(img, img, "expected 0x08");

    write_idx(img, 8, 2, small_dims, small_body, 8);
    expect_fail(img, img, "2 dimensions; expected 3");

    const uint32_t huge[3] = {65536, 65536, 65536};
    write_idx(img, 8, 3, huge, zeros, 64); /* must fail before allocating 2^48 bytes */
    expect_fail(img, img, "declares 65536x65536x65536 images, more than the 2^31 values");

    const uint32_t max[3] = {0xFFFFFFFFu, 1, 1};
    write_idx(img, 8, 3, max, zeros, 64);
    expect_fail(img, img, "declares 4294967295x1x1 images, more than the 2^31 values");

    /* The message names the whole shape, not the dimension where the product overflowed. */
    const uint32_t many[3] = {2147483647u, 28, 28};
    write_idx(img, 8, 3, many, zeros, 64);
    expect_fail(img, img, "declares 2147483647x28x28 images, more than the 2^31 values");

    const uint32_t zero_dim[3] = {3, 0, 4};
    write_idx(img, 8, 3, zero_dim, zeros, 0);
    expect_fail(img, img, "dimension 1 is 0");

    write_idx(img, 8, 3, small_dims, small_body, 10);
    expect_fail(img, img, "truncated: header says 3x2x4 images (24 bytes after the 16-byte "
                          "header), file has 10 after the header");

    unsigned char longer[29];
    memcpy(longer, small_body, 24);
    memset(longer + 24, 7, 5);
    write_idx(img, 8, 3, small_dims, longer, 29);
    expect_fail(img, img, "trailing data");
    expect_fail(img, img, "file has 29 after the header");

    idx_make(&x, 8, 3, small_dims, small_body, 24);
    write_bytes(img, x.b, 10); /* header cut off after the first dimension */
    expect_fail(img, img, "truncated IDX header");

    write_bytes(img, x.b, 0);
    expect_fail(img, img, "empty file");

    write_bytes(img, "not an idx file at all, just text\n", 34);
    expect_fail(img, img, "not an IDX file");

    /* Labels: count mismatch, wrong shape, missing. */
    write_idx(img, 8, 3, small_dims, small_body, 24);
    write_idx(lab, 8, 1, (const uint32_t[]){2}, small_labels, 2);
    expect_fail(img, lab, "2 labels, but");
    write_idx(lab, 8, 3, small_dims, small_body, 24);
    expect_fail(img, lab, "3 dimensions; expected 1");
    write_idx(lab, 8, 1, small_n, small_labels, 2);
    expect_fail(img, lab, "truncated: header says 3 labels");
    remove(lab);
    expect_fail(img, lab, "cannot open");

    /* gzip-level damage: a stream cut in half, a corrupted CRC, and a valid stream whose
     * IDX body is short. */
    const char *gz = fx("bad/z-images-idx3-ubyte.gz");
    write_idx(fx("bad/z-labels-idx1-ubyte"), 8, 1, small_n, small_labels, 3);
    unsigned char big[200];
    uint32_t big_dims[3] = {2, 10, 9}; /* 180 bytes, compresses to a non-trivial stream */
    for (int i = 0; i < 180; i++)
        big[i] = (unsigned char)(i * 37 + (i >> 3));
    idx_make(&x, 8, 3, big_dims, big, 180);
    write_gz(gz, x.b, x.len);
    size_t zlen = 0;
    unsigned char *z = read_all(gz, &zlen);
    CHECK(z != NULL && zlen > 40);
    if (z) {
        write_bytes(gz, z, zlen / 2);
        expect_fail(gz, gz, "gzip");
        z[zlen - 6] ^= 0x55; /* CRC32 in the gzip trailer */
        write_bytes(gz, z, zlen);
        expect_fail(gz, gz, "corrupt gzip");
        free(z);
    }
    idx_make(&x, 8, 3, big_dims, big, 100);
    write_gz(gz, x.b, x.len);
    expect_fail(gz, gz, "file has 100 after the header (after decompression)");

    const char *odd = fx("bad/odd-name.idx");
    write_idx(odd, 8, 3, small_dims, small_body, 24);
    expect_fail(odd, odd, "images-idx3");
    expect_fail(fx("bad/missing-images-idx3-ubyte"), "missing-images-idx3-ubyte",
                "cannot open");

    /* The error buffer is optional. */
    data_set *ds = (data_set *)1;
    CHECK(data_load(odd, &ds, NULL) == -1 && ds == NULL);
}

/* ---- CIFAR-10 --------------------------------------------------------------------- */

#define CIFAR_REC 3073

static unsigned char cifar_pixel(int rec, int p)
{
    return (unsigned char)(rec * 31 + p * 7 + (p >> 10));
}

static void write_cifar(const char *path, const int *labels, int n, int first_rec)
{
    unsigned char *b = malloc((size_t)n * CIFAR_REC);
    for (int r = 0; r < n; r++) {
        b[r * CIFAR_REC] = (unsigned char)labels[r];
        for (int p = 0; p < 3072; p++)
            b[r * CIFAR_REC + 1 + p] = cifar_pixel(first_rec + r, p);
    }
    write_bytes(path, b, (size_t)n * CIFAR_REC);
    free(b);
}

static int cifar_pixels_ok(const data_set *ds, int first_rec)
{
    for (int r = 0; r < ds->n; r++)
        for (int p = 0; p < 3072; p++)
            if (ds->pixels[(size_t)r * 3072 + p] != cifar_pixel(first_rec + r, p))
                return 0;
    return 1;
}

static void test_cifar(void)
{
    make_dir("cifar");
    const char *two = fx("cifar/two.bin");
    write_cifar(two, (const int[]){3, 9}, 2, 0);
    data_set *ds = expect_load(two);
    if (ds) {
        CHECK(ds->n == 2 && ds->c == 3 && ds->h == 32 && ds->w == 32);
        CHECK(ds->labels[0] == 3 && ds->labels[1] == 9 && ds->classes == 10);
        CHECK(cifar_pixels_ok(ds, 0));
        /* Channel-major: green (channel 1) of pixel (y=2, x=5) of record 1. */
        CHECK(ds->pixels[3072 + 1024 + 2 * 32 + 5] == cifar_pixel(1, 1024 + 69));
        CHECK(strcmp(ds->name, two) == 0);
        data_free(ds);
    }

    write_cifar(fx("cifar/test_batch.bin"), (const int[]){4}, 1, 7);
    for (int b = 1; b <= 5; b++) {
        char name[64];
        snprintf(name, sizeof name, "cifar/data_batch_%d.bin", b);
        write_cifar(fx(name), (const int[]){b - 1}, 1, b - 1);
    }
    char spec[1100];
    snprintf(spec, sizeof spec, "cifar10:%s:test", fx("cifar"));
    ds = expect_load(spec);
    if (ds) {
        CHECK(ds->n == 1 && ds->labels[0] == 4 && ds->classes == 5 && cifar_pixels_ok(ds, 7));
        data_free(ds);
    }
    snprintf(spec, sizeof spec, "cifar10:%s/:train", fx("cifar"));
    ds = expect_load(spec);
    if (ds) {
        int in_order = ds->n == 5;
        for (int i = 0; in_order && i < 5; i++)
            in_order = ds->labels[i] == i;
        CHECK(in_order && ds->classes == 5 && cifar_pixels_ok(ds, 0));
        data_free(ds);
    }
    snprintf(spec, sizeof spec, "%s,%s", two, fx("cifar/data_batch_3.bin"));
    ds = expect_load(spec);
    if (ds) {
        CHECK(ds->n == 3 && ds->labels[0] == 3 && ds->labels[1] == 9 && ds->labels[2] == 2);
        CHECK(ds->pixels[2 * 3072 + 100] == cifar_pixel(2, 100));
        data_free(ds);
    }

    const char *bad = fx("cifar/bad.bin");
    unsigned char junk[3000] = {0};
    write_bytes(bad, junk, sizeof junk);
    expect_fail(bad, bad, "not a positive multiple of 3073");
    snprintf(spec, sizeof spec, "%s,%s", two, bad); /* a bad file anywhere in the list */
    expect_fail(spec, bad, "3073");
    write_bytes(bad, junk, 0);
    expect_fail(bad, bad, "size 0 bytes");
    write_cifar(bad, (const int[]){2, 10}, 2, 0);
    expect_fail(bad, bad, "record 1 has label 10");
    snprintf(spec, sizeof spec, "%s,,%s", two, two);
    expect_fail(spec, spec, "empty file name");

    snprintf(spec, sizeof spec, "cifar10:%s:valid", fx("cifar"));
    expect_fail(spec, spec, "unknown split");
    expect_fail("cifar10:/no/such/dir:train", "/no/such/dir", "not found");
    remove(fx("cifar/data_batch_5.bin"));
    snprintf(spec, sizeof spec, "cifar10:%s:train", fx("cifar"));
    expect_fail(spec, "data_batch_5.bin", "cannot open");
}

/* ---- PNG folders ------------------------------------------------------------------ */

/* Writes pixels (h, w, channels of `format`) with libpng's simplified API. */
static void write_png(const char *path, int w, int h, png_uint_32 format, const void *pixels,
                      const void *colormap, int colormap_entries)
{
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = (png_uint_32)w;
    im.height = (png_uint_32)h;
    im.format = format;
    im.colormap_entries = (png_uint_32)colormap_entries;
    CHECKF(png_image_write_to_file(&im, path, 0, pixels, 0, colormap) != 0, "write %s: %s",
           path, im.message);
}

/* 1-bit gray, Adam7-interlaced: a layout the simplified API cannot write. Pixel (y, x) is
 * white when (x + y) is odd. */
static void write_png_1bit_interlaced(const char *path, int w, int h)
{
    FILE *f = fopen(path, "wb");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    CHECK(f && png && info);
    if (!f || !png || !info || setjmp(png_jmpbuf(png))) {
        CHECKF(0, "writing %s failed", path);
        abort();
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 1, PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_ADAM7, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    static png_byte bits[64][8];
    png_bytep rows[64];
    for (int y = 0; y < h; y++) {
        memset(bits[y], 0, sizeof bits[y]);
        for (int x = 0; x < w; x++)
            if ((x + y) & 1)
                bits[y][x >> 3] |= (png_byte)(0x80 >> (x & 7));
        rows[y] = bits[y];
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static unsigned char gray_pixel(int img, int y, int x)
{
    return (unsigned char)(img * 50 + y * 5 + x);
}

/* A 5x4 gray image (w=5, h=4) of index img. */
static void write_gray(const char *path, int img)
{
    unsigned char px[4][5];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 5; x++)
            px[y][x] = gray_pixel(img, y, x);
    write_png(path, 5, 4, PNG_FORMAT_GRAY, px, NULL, 0);
}

static void test_png_good(void)
{
    /* Classes sort by strcmp, so "Zebra" (label 0) comes before "ant" (label 1); files
     * are written out of order and must come back sorted. */
    make_dir("p1");
    make_dir("p1/Zebra");
    make_dir("p1/ant");
    write_gray(fx("p1/Zebra/b.png"), 1);
    write_gray(fx("p1/Zebra/a.png"), 0);
    write_gray(fx("p1/ant/c.png"), 2);
    write_bytes(fx("p1/README.txt"), "not a class\n", 12);
    write_bytes(fx("p1/Zebra/notes.txt"), "not an image\n", 13);
    write_bytes(fx("p1/Zebra/.hidden.png"), "hidden\n", 7);
    const char *spec = fx("p1");
    data_set *ds = expect_load(spec);
    if (ds) {
        CHECK(ds->n == 3 && ds->c == 1 && ds->h == 4 && ds->w == 5 && ds->classes == 2);
        CHECK(ds->labels[0] == 0 && ds->labels[1] == 0 && ds->labels[2] == 1);
        int ok = 1;
        for (int i = 0; i < 3; i++)
            for (int y = 0; y < 4; y++)
                for (int x = 0; x < 5; x++)
                    ok &= ds->pixels[i * 20 + y * 5 + x] == gray_pixel(i, y, x);
        CHECK(ok);
        CHECK(strcmp(ds->name, spec) == 0);
        data_free(ds);
    }

    /* RGB, 3x2: stored interleaved in the file, channel-major in memory. */
    make_dir("p2");
    make_dir("p2/x");
    make_dir("p2/y");
    for (int img = 0; img < 2; img++) {
        unsigned char px[2][3][3];
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++)
                for (int c = 0; c < 3; c++)
                    px[y][x][c] = (unsigned char)(img * 60 + c * 20 + y * 3 + x);
        write_png(fx(img ? "p2/y/b.png" : "p2/x/a.png"), 3, 2, PNG_FORMAT_RGB, px, NULL, 0);
    }
    ds = expect_load(fx("p2/")); /* a trailing slash is fine */
    if (ds) {
        CHECK(ds->n == 2 && ds->c == 3 && ds->h == 2 && ds->w == 3 && ds->classes == 2);
        int ok = 1;
        for (int i = 0; i < 2; i++)
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < 2; y++)
                    for (int x = 0; x < 3; x++)
                        ok &= ds->pixels[i * 18 + c * 6 + y * 3 + x] ==
                              (unsigned char)(i * 60 + c * 20 + y * 3 + x);
        CHECK(ok);
        data_free(ds);
    }

    /* Palette images expand to RGB; a palette with transparency (tRNS) keeps its colours. */
    make_dir("p3");
    make_dir("p3/opaque");
    make_dir("p3/trns");
    const unsigned char cmap[4][3] = {{10, 20, 30}, {200, 100, 0}, {0, 255, 7}, {1, 2, 3}};
    const unsigned char cmap_a[4][4] = {
        {10, 20, 30, 255}, {200, 100, 0, 0}, {0, 255, 7, 128}, {1, 2, 3, 255}};
    const unsigned char index[2][2] = {{0, 1}, {2, 3}};
    write_png(fx("p3/opaque/a.png"), 2, 2, PNG_FORMAT_RGB_COLORMAP, index, cmap, 4);
    write_png(fx("p3/trns/a.png"), 2, 2, PNG_FORMAT_RGBA_COLORMAP, index, cmap_a, 4);
    ds = expect_load(fx("p3"));
    if (ds) {
        CHECK(ds->n == 2 && ds->c == 3 && ds->h == 2 && ds->w == 2);
        int ok = 1;
        for (int i = 0; i < 2; i++)
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 4; p++)
                    ok &= ds->pixels[i * 12 + c * 4 + p] == cmap[p][c];
        CHECKF(ok, "palette pixels");
        data_free(ds);
    }

    /* 1-bit gray, interlaced: expanded to 0/255. */
    make_dir("p4");
    make_dir("p4/k");
    write_png_1bit_interlaced(fx("p4/k/a.png"), 13, 9);
    ds = expect_load(fx("p4"));
    if (ds) {
        CHECK(ds->n == 1 && ds->c == 1 && ds->h == 9 && ds->w == 13);
        int ok = 1;
        for (int y = 0; y < 9; y++)
            for (int x = 0; x < 13; x++)
                ok &= ds->pixels[y * 13 + x] == (((x + y) & 1) ? 255 : 0);
        CHECK(ok);
        data_free(ds);
    }
}

static void test_png_bad(void)
{
    /* Wrong size, wrong channel count. */
    make_dir("q1");
    make_dir("q1/a");
    write_gray(fx("q1/a/a.png"), 0);
    unsigned char six[4][6] = {{0}};
    write_png(fx("q1/a/b.png"), 6, 4, PNG_FORMAT_GRAY, six, NULL, 0);
    expect_fail(fx("q1"), fx("q1/a/b.png"), "6x4 gray image; expected 5x4 gray");

    make_dir("q2");
    make_dir("q2/a");
    make_dir("q2/b");
    write_gray(fx("q2/a/a.png"), 0);
    unsigned char rgb[4][5][3] = {{{0}}};
    write_png(fx("q2/b/a.png"), 5, 4, PNG_FORMAT_RGB, rgb, NULL, 0);
    expect_fail(fx("q2"), fx("q2/b/a.png"), "5x4 RGB image; expected 5x4 gray");

    /* Truncated in the middle of the image data, and cut just before IEND. */
    make_dir("q3");
    make_dir("q3/a");
    const char *cut = fx("q3/a/a.png");
    static unsigned char noise[64][64];
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 64; x++)
            noise[y][x] = (unsigned char)((x * 131 + y * 71 + x * y * 13) >> 2);
    write_png(cut, 64, 64, PNG_FORMAT_GRAY, noise, NULL, 0);
    size_t len = 0;
    unsigned char *bytes = read_all(cut, &len);
    CHECK(bytes != NULL && len > 200);
    if (bytes) {
        write_bytes(cut, bytes, len / 2);
        expect_fail(fx("q3"), cut, "truncated");
        write_bytes(cut, bytes, len - 12); /* IEND is the last 12 bytes */
        expect_fail(fx("q3"), cut, "truncated");
        bytes[len / 2] ^= 0xFF; /* inside IDAT: a CRC or inflate error */
        write_bytes(cut, bytes, len);
        expect_fail(fx("q3"), cut, "broken");
        free(bytes);
    }

    /* Not a PNG at all, and an empty file. */
    make_dir("q4");
    make_dir("q4/a");
    const char *text = fx("q4/a/a.png");
    write_bytes(text, "hello, I am not an image\n", 25);
    expect_fail(fx("q4"), text, "not a PNG");
    write_bytes(text, "", 0);
    expect_fail(fx("q4"), text, "not a PNG");

    /* 16-bit and alpha are refused, not converted. */
    make_dir("q5");
    make_dir("q5/a");
    const char *deep = fx("q5/a/a.png");
    const uint16_t px16[4] = {0, 1000, 40000, 65535};
    write_png(deep, 2, 2, PNG_FORMAT_LINEAR_Y, px16, NULL, 0);
    expect_fail(fx("q5"), deep, "16-bit");
    const unsigned char rgba[4][4] = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}, {0}};
    write_png(deep, 2, 2, PNG_FORMAT_RGBA, rgba, NULL, 0);
    expect_fail(fx("q5"), deep, "RGBA PNG has an alpha channel");
    const unsigned char ga[4][2] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}};
    write_png(deep, 2, 2, PNG_FORMAT_GA, ga, NULL, 0);
    expect_fail(fx("q5"), deep, "gray+alpha");

    /* An empty class folder; no class folders; no folder. */
    make_dir("q6");
    make_dir("q6/a");
    make_dir("q6/b");
    write_gray(fx("q6/a/a.png"), 0);
    write_bytes(fx("q6/b/readme.txt"), "x", 1);
    expect_fail(fx("q6"), fx("q6/b"), "class folder has no .png files");
    make_dir("q7");
    write_gray(fx("q7/a.png"), 0);
    expect_fail(fx("q7"), fx("q7"), "no class subfolders");
    expect_fail(fx("q8/"), fx("q8/"), "cannot open folder");
}

/* ---- normalisation, permutation, shards ------------------------------------------ */

static void test_normalize(void)
{
    uint8_t px[2 * 2 * 3] = {0, 1, 2, 3, 4, 5, 255, 254, 128, 127, 17, 99};
    int32_t labels[2] = {0, 1};
    data_set ds = {.n = 2, .c = 2, .h = 1, .w = 3, .pixels = px, .labels = labels,
                   .classes = 2};
    const float mean[2] = {0.4914f, 0.25f}, std[2] = {0.247f, 0.5f};
    const int idx[3] = {1, 0, 1};
    float out[3 * 6];
    data_normalize(&ds, idx, 3, mean, std, out);
    int exact = 1, near = 1;
    for (int i = 0; i < 3; i++)
        for (int c = 0; c < 2; c++)
            for (int p = 0; p < 3; p++) {
                uint8_t v = px[idx[i] * 6 + c * 3 + p];
                float x = (float)v / 255.0f;
                x = x - mean[c];
                float e = x / std[c];
                float got = out[i * 6 + c * 3 + p];
                exact &= float_bits(got) == float_bits(e);
                near &= fabs(got - ((double)v / 255.0 - mean[c]) / std[c]) < 1e-5;
            }
    CHECK(exact);
    CHECK(near);
    out[0] = 12345.0f;
    data_normalize(&ds, idx, 0, mean, std, out); /* nothing to do, nothing touched */
    CHECK(out[0] == 12345.0f);
}

static void test_permutation(void)
{
    enum { N = 1000 };
    int *a = data_permutation(N, 42), *b = data_permutation(N, 42);
    int *c = data_permutation(N, 43);
    static char seen[N];
    int perm = 1, identity = 1, same = 1, differ = 0;
    for (int i = 0; i < N; i++) {
        if (a[i] < 0 || a[i] >= N || seen[a[i]])
            perm = 0;
        else
            seen[a[i]] = 1;
        identity &= a[i] == i;
        same &= a[i] == b[i];
        differ |= a[i] != c[i];
    }
    CHECK(perm);
    CHECK(!identity);
    CHECK(same);
    CHECK(differ);
    free(a);
    free(b);
    free(c);
    int *one = data_permutation(1, 7);
    CHECK(one[0] == 0);
    free(one);
    free(data_permutation(0, 7));
}

static void test_shards(void)
{
    const int ns[] = {0, 1, 7, 10, 100, 10007};
    const int ranks[] = {1, 2, 3, 4, 7, 64};
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
        for (size_t j = 0; j < sizeof ranks / sizeof *ranks; j++) {
            int n = ns[i], nr = ranks[j];
            int next = 0, lo = n, hi = 0, ok = 1;
            for (int r = 0; r < nr; r++) {
                int first, count;
                data_shard_range(n, r, nr, &first, &count);
                ok &= first == next && count >= 0; /* contiguous and disjoint */
                ok &= count == n / nr + (r < n % nr);
                next = first + count;
                lo = count < lo ? count : lo;
                hi = count > hi ? count : hi;
            }
            ok &= next == n && hi - lo <= 1; /* covering, balanced */
            CHECKF(ok, "shards of %d over %d ranks", n, nr);
        }
}

int main(void)
{
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    unsetenv("QEVO_FASHION_MNIST_DIR");
    data_free(NULL);
    test_fashion_mnist();
    test_idx_small();
    test_idx_hostile();
    test_cifar();
    test_png_good();
    test_png_bad();
    test_normalize();
    test_permutation();
    test_shards();
    CHECK(nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0);
    TEST_END("test_data");
}
