/* Writes the seed corpora of the fuzz targets into OUT/<target>/ (fuzz/make_corpus.sh
 * runs it; the output is committed). Seeds are made with the library's own writers
 * (st_writer, quant_save, evo_state_write, zlib, libpng), so that each is a valid input,
 * plus a few deliberately broken ones. Everything is seeded: the output is the same on
 * every run. The tiny copies of the example models (fuzz/shrink_models.py) must already
 * be in OUT/graph/; this program quantizes them too.
 *
 * usage: make_corpus OUT */
#include "fuzz.h"

#include <cblas.h>
#include <jansson.h>
#include <png.h>
#include <zlib.h>

#include "ckpt_fixture.h"
#include "model_builder.h"
#include "qevo/ckpt.h"
#include "qevo/safetensors.h"
#include "quantizers.h"
#include "run_internal.h"

static const char *out_dir;

/* ---- byte buffers and chunked inputs (fuzz.h's layout) ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *data, size_t len)
{
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        FUZZ_CHECK(b->p);
    }
    if (len)
        memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void put_byte(buf *b, uint8_t v)
{
    put(b, &v, 1);
}

static void put_chunk(buf *b, const void *data, size_t len)
{
    FUZZ_CHECK(len <= 0xffff);
    uint8_t l[2] = {(uint8_t)len, (uint8_t)(len >> 8)};
    put(b, l, 2);
    put(b, data, len);
}

static void put_chunk_buf(buf *b, const buf *c)
{
    put_chunk(b, c->p, c->n);
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void read_all(const char *path, buf *b)
{
    unsigned char *data;
    size_t len;
    qv_err err;
    if (qv_read_file(path, &data, &len, &err) != 0) {
        fprintf(stderr, "make_corpus: %s\n", err.msg);
        exit(1);
    }
    b->n = 0;
    put(b, data, len);
    free(data);
}

static void seed(const char *target, const char *name, const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    fuzz_write(path, data, len);
}

static void seed_buf(const char *target, const char *name, const buf *b)
{
    seed(target, name, b->p, b->n);
}

static void tmp_path(char *p, size_t cap, const char *name)
{
    snprintf(p, cap, "%s/%s", fuzz_dir(), name);
}

/* ---- models ---- */

/* One of every op, each small: convtranspose2d + batchnorm, conv without bias, average
 * pooling with padding, an add that cannot be fused (its conv output is read twice),
 * subsample + pad_channels, sigmoid, global average pooling. */
static void mini_ops_model(const char *path)
{
    model_builder mb;
    mb_init(&mb, 77);
    mb_tensor(&mb, "c1.w", -0.5f, 0.5f, 4, 4, 2, 3, 3);
    mb_tensor(&mb, "t1.w", -0.5f, 0.5f, 4, 4, 4, 2, 2);
    mb_tensor(&mb, "t1.b", -0.1f, 0.1f, 1, 4);
    mb_tensor(&mb, "bn.g", 0.5f, 1.5f, 1, 4);
    mb_tensor(&mb, "bn.b", -0.2f, 0.2f, 1, 4);
    mb_tensor(&mb, "bn.m", -0.2f, 0.2f, 1, 4);
    mb_tensor(&mb, "bn.v", 0.5f, 1.5f, 1, 4);
    mb_tensor(&mb, "c2.w", -0.5f, 0.5f, 4, 4, 4, 1, 1);
    mb_tensor(&mb, "c3.w", -0.5f, 0.5f, 4, 6, 4, 3, 3);
    mb_tensor(&mb, "c3.b", -0.1f, 0.1f, 1, 6);
    mb_tensor(&mb, "fc.w", -0.3f, 0.3f, 2, 3, 6);
    mb_layer(&mb, "{\"name\":\"c1\",\"op\":\"conv2d\",\"weight\":\"c1.w\",\"bias\":null,"
                  "\"stride\":[2,2],\"padding\":[1,1]}");
    mb_layer(&mb, "{\"name\":\"t1\",\"op\":\"convtranspose2d\",\"weight\":\"t1.w\","
                  "\"bias\":\"t1.b\",\"stride\":2,\"padding\":0,\"output_padding\":0}");
    mb_layer(&mb, "{\"name\":\"bn\",\"op\":\"batchnorm\",\"weight\":\"bn.g\",\"bias\":\"bn.b\","
                  "\"mean\":\"bn.m\",\"var\":\"bn.v\",\"eps\":1e-5}");
    mb_layer(&mb, "{\"name\":\"s1\",\"op\":\"sigmoid\"}");
    mb_layer(&mb, "{\"name\":\"c2\",\"op\":\"conv2d\",\"weight\":\"c2.w\"}");
    mb_layer(&mb, "{\"name\":\"a1\",\"op\":\"add\",\"inputs\":[\"c2\",\"s1\"]}");
    mb_layer(&mb, "{\"name\":\"a2\",\"op\":\"add\",\"inputs\":[\"a1\",\"c2\"]}");
    mb_layer(&mb, "{\"name\":\"p1\",\"op\":\"avgpool\",\"kernel\":3,\"stride\":1,"
                  "\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"c3\",\"op\":\"conv2d\",\"weight\":\"c3.w\",\"bias\":\"c3.b\","
                  "\"stride\":2,\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"r1\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"sub\",\"op\":\"subsample\",\"inputs\":[\"p1\"],\"stride\":2}");
    mb_layer(&mb, "{\"name\":\"pad\",\"op\":\"pad_channels\",\"before\":1,\"after\":1}");
    mb_layer(&mb, "{\"name\":\"a3\",\"op\":\"add\",\"inputs\":[\"r1\",\"pad\"]}");
    mb_layer(&mb, "{\"name\":\"mp\",\"op\":\"maxpool\",\"kernel\":[2,2],\"stride\":[2,2],"
                  "\"padding\":[0,0]}");
    mb_layer(&mb, "{\"name\":\"gp\",\"op\":\"global_avgpool\"}");
    mb_layer(&mb, "{\"name\":\"fl\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}");
    QV_ASSERT(mb_save(&mb, path, "classify", 2, 8, 8) == 0);
}

/* An autoencoder whose output is not the last layer ("output" names it). */
static void mini_autoencoder(const char *path)
{
    model_builder mb;
    mb_init(&mb, 78);
    mb_tensor(&mb, "e.w", -0.5f, 0.5f, 4, 2, 3, 3, 3);
    mb_tensor(&mb, "e.b", -0.1f, 0.1f, 1, 2);
    mb_tensor(&mb, "d.w", -0.5f, 0.5f, 4, 2, 3, 3, 3);
    mb_tensor(&mb, "d.b", -0.1f, 0.1f, 1, 3);
    mb_layer(&mb, "{\"name\":\"e\",\"op\":\"conv2d\",\"weight\":\"e.w\",\"bias\":\"e.b\","
                  "\"stride\":2,\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"er\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"d\",\"op\":\"convtranspose2d\",\"weight\":\"d.w\",\"bias\":\"d.b\","
                  "\"stride\":2,\"padding\":1,\"output_padding\":1}");
    mb_layer(&mb, "{\"name\":\"ds\",\"op\":\"sigmoid\"}");
    QV_ASSERT(mb_save(&mb, path, "reconstruct", 3, 4, 4) == 0);
}

static void check_loads(const char *path)
{
    net *nt;
    qv_err err;
    if (net_load(path, &nt, &err) != 0) {
        fprintf(stderr, "make_corpus: a graph seed does not load: %s\n", err.msg);
        exit(1);
    }
    net_free(nt);
}

/* A quantized copy of the model at `path` (nearest rounding, quantizer k). */
static void quantize_to(const char *path, int k, const char *target, const char *name,
                        int with_ctl)
{
    net *nt;
    qv_err err;
    FUZZ_CHECK(net_load(path, &nt, &err) == 0);
    quant *q = quant_create(nt, &fuzz_quantizers[k]);
    int8_t *codes = malloc(quant_size(q) + 1);
    quant_nearest(q, codes);
    /* Move a few codes to a neighbouring state, as an optimized state would. */
    const int8_t *lo = quant_lo_of(q), *hi = quant_hi_of(q);
    for (size_t i = 0; i < quant_size(q); i += 7)
        codes[i] = codes[i] < hi[i] ? (int8_t)(codes[i] + 1) : lo[i];
    char tmp[700];
    tmp_path(tmp, sizeof tmp, "q.safetensors");
    FUZZ_CHECK(quant_save(q, nt, codes, tmp, "fuzz seed", &err) == 0);
    buf b = {0}, file = {0};
    read_all(tmp, &file);
    unlink(tmp);
    if (with_ctl)
        put_byte(&b, (uint8_t)k);
    put(&b, file.p, file.n);
    seed_buf(target, name, &b);
    buf_free(&b);
    buf_free(&file);
    free(codes);
    quant_free(q);
    net_free(nt);
}

static void graph_and_quant_seeds(void)
{
    char path[1024], name[256];
    /* The tiny example models: check them, quantize them, offer them to safetensors too. */
    static const char *const tiny[] = {"tiny-vgg", "tiny-resnet20", "tiny-autoencoder"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/graph/%s.safetensors", out_dir, tiny[i]);
        check_loads(path);
        snprintf(name, sizeof name, "%s-q%d.safetensors", tiny[i], i);
        quantize_to(path, i, "graph", name, 0);
        buf b = {0};
        read_all(path, &b);
        snprintf(name, sizeof name, "%s.safetensors", tiny[i]);
        seed_buf("safetensors", name, &b);
        buf_free(&b);
    }
    snprintf(path, sizeof path, "%s/graph/small-classifier.safetensors", out_dir);
    mb_small_classifier(path, 21);
    check_loads(path);
    snprintf(path, sizeof path, "%s/graph/mini-ops.safetensors", out_dir);
    mini_ops_model(path);
    check_loads(path);
    quantize_to(path, 1, "graph", "mini-ops-q1.safetensors", 0);
    snprintf(path, sizeof path, "%s/graph/mini-autoencoder.safetensors", out_dir);
    mini_autoencoder(path);
    check_loads(path);
    quantize_to(path, 3, "graph", "mini-autoencoder-q3.safetensors", 0);

    /* quant_codes: the small classifier quantized by each quantizer, led by its index. */
    char model[700];
    tmp_path(model, sizeof model, "m.safetensors");
    mb_small_classifier(model, 21);
    for (int k = 0; k < FUZZ_QUANTIZERS; k++) {
        snprintf(name, sizeof name, "small-classifier-q%d", k);
        quantize_to(model, k, "quant_codes", name, 1);
        if (k == 0)
            quantize_to(model, 0, "safetensors", "small-classifier-q0.safetensors", 0);
    }
    unlink(model);
}

/* ---- safetensors ---- */

static void safetensors_seeds(void)
{
    char tmp[700];
    tmp_path(tmp, sizeof tmp, "s.safetensors");
    buf b = {0};
    qv_err err;
    /* One tensor of every dtype, a scalar and an empty tensor, metadata. */
    st_writer *w = st_writer_create();
    uint8_t bytes[64];
    for (int i = 0; i < 64; i++)
        bytes[i] = (uint8_t)(i * 37 + 11);
    bytes[40] = bytes[41] = bytes[42] = 1; /* bool values must be 0/1 where BOOL reads */
    static const struct {
        const char *name;
        st_dtype t;
        int ndim;
        int64_t shape[3];
    } ts[] = {{"f32", ST_F32, 2, {2, 3}}, {"f64", ST_F64, 1, {2}},  {"f16", ST_F16, 1, {3}},
              {"bf16", ST_BF16, 1, {2}},  {"i8", ST_I8, 3, {1, 2, 2}}, {"u8", ST_U8, 2, {2, 2}},
              {"i16", ST_I16, 1, {2}},    {"i32", ST_I32, 1, {1}},  {"i64", ST_I64, 1, {1}},
              {"scalar", ST_F32, 0, {0}}, {"empty", ST_F32, 2, {0, 5}}};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        st_writer_add(w, ts[i].name, ts[i].t, ts[i].ndim, ts[i].shape, bytes);
    int64_t bshape[1] = {3};
    st_writer_add(w, "bool", ST_BOOL, 1, bshape, bytes + 40);
    st_writer_meta(w, "qevo.description", "every dtype");
    st_writer_meta(w, "format", "pt");
    FUZZ_CHECK(st_writer_save(w, tmp, &err) == 0);
    st_writer_free(w);
    read_all(tmp, &b);
    seed_buf("safetensors", "dtypes.safetensors", &b);
    /* Metadata only; no tensors and no metadata. */
    w = st_writer_create();
    st_writer_meta(w, "qevo.graph", "{\"version\": 1}");
    FUZZ_CHECK(st_writer_save(w, tmp, &err) == 0);
    st_writer_free(w);
    read_all(tmp, &b);
    seed_buf("safetensors", "meta-only.safetensors", &b);
    w = st_writer_create();
    FUZZ_CHECK(st_writer_save(w, tmp, &err) == 0);
    st_writer_free(w);
    read_all(tmp, &b);
    seed_buf("safetensors", "empty.safetensors", &b);
    unlink(tmp);
    buf_free(&b);
    /* Broken by hand: overlapping ranges, a range past the end, a header length past
     * the end of the file. */
    static const char overlap[] =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    static const char past[] = "{\"a\":{\"dtype\":\"I8\",\"shape\":[9],\"data_offsets\":[0,9]}}";
    const char *hand[2] = {overlap, past};
    for (int k = 0; k < 2; k++) {
        buf h = {0};
        uint64_t n = strlen(hand[k]);
        put(&h, &n, 8);
        put(&h, hand[k], n);
        put(&h, bytes, 8);
        seed_buf("safetensors", k ? "range-past-end.safetensors" : "overlap.safetensors", &h);
        buf_free(&h);
    }
    uint8_t longhdr[16] = {0xff, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    seed("safetensors", "header-past-end.safetensors", longhdr, sizeof longhdr);
}

/* ---- IDX ---- */

static void idx_file(buf *b, int ndim, const uint32_t *dims, uint8_t fill)
{
    uint8_t magic[4] = {0, 0, 8, (uint8_t)ndim};
    put(b, magic, 4);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        uint8_t be[4] = {(uint8_t)(dims[i] >> 24), (uint8_t)(dims[i] >> 16),
                         (uint8_t)(dims[i] >> 8), (uint8_t)dims[i]};
        put(b, be, 4);
        count *= dims[i];
    }
    for (size_t i = 0; i < count; i++)
        put_byte(b, ndim == 1 ? (uint8_t)((i * 3 + fill) % 10) : (uint8_t)(i * 29 + fill));
}

static void gzip_buf(const buf *in, buf *out)
{
    char tmp[700];
    tmp_path(tmp, sizeof tmp, "x.gz");
    gzFile f = gzopen(tmp, "wb9");
    FUZZ_CHECK(f);
    FUZZ_CHECK(gzwrite(f, in->p, (unsigned)in->n) == (int)in->n);
    FUZZ_CHECK(gzclose(f) == Z_OK);
    read_all(tmp, out);
    unlink(tmp);
}

static void idx_seed(const char *name, uint8_t ctl, const buf *images, const buf *labels)
{
    buf b = {0};
    put_byte(&b, ctl);
    if ((ctl & 3) == 1) { /* the files are gzip streams */
        buf gi = {0}, gl = {0};
        gzip_buf(images, &gi);
        gzip_buf(labels, &gl);
        put_chunk_buf(&b, &gi);
        put_chunk_buf(&b, &gl);
        buf_free(&gi);
        buf_free(&gl);
    } else {
        put_chunk_buf(&b, images);
        put_chunk_buf(&b, labels);
    }
    seed_buf("idx", name, &b);
    buf_free(&b);
}

static void idx_seeds(void)
{
    buf im = {0}, lab = {0}, bad = {0};
    uint32_t dims[3] = {3, 4, 5}, n3[1] = {3}, n2[1] = {2};
    idx_file(&im, 3, dims, 1);
    idx_file(&lab, 1, n3, 0);
    idx_seed("raw", 0, &im, &lab);
    idx_seed("gz", 1, &im, &lab);
    idx_seed("gz-by-harness", 2 | (5 << 3), &im, &lab);
    idx_seed("explicit", 3, &im, &lab);
    idx_seed("explicit-gz-images", 3 | 4, &im, &lab);
    /* Label count differing from the image count; a truncated body; trailing bytes;
     * a 0 dimension; another element type. */
    idx_file(&bad, 1, n2, 0);
    idx_seed("count-mismatch", 0, &im, &bad);
    bad.n = 0;
    put(&bad, im.p, im.n - 7);
    idx_seed("truncated", 1, &bad, &lab);
    bad.n = 0;
    put(&bad, im.p, im.n);
    put(&bad, "xyz", 3);
    idx_seed("trailing", 0, &bad, &lab);
    uint32_t zero[3] = {3, 0, 5};
    bad.n = 0;
    idx_file(&bad, 3, zero, 0);
    idx_seed("zero-dim", 2, &bad, &lab);
    bad.n = 0;
    put(&bad, im.p, im.n);
    bad.p[2] = 0x0d; /* float elements */
    idx_seed("float-type", 3, &bad, &lab);
    /* One 28x28 image, as Fashion-MNIST's files have. */
    uint32_t one[3] = {1, 28, 28}, n1[1] = {1};
    buf big = {0}, l1 = {0};
    idx_file(&big, 3, one, 3);
    idx_file(&l1, 1, n1, 0);
    idx_seed("fashion-like-gz", 1, &big, &l1);
    buf_free(&big);
    buf_free(&l1);
    buf_free(&im);
    buf_free(&lab);
    buf_free(&bad);
}

/* ---- CIFAR-10 ---- */

static void cifar_records(buf *b, int n, uint8_t first_label)
{
    for (int r = 0; r < n; r++) {
        put_byte(b, (uint8_t)((first_label + r) % 10));
        for (int i = 0; i < 3 * 32 * 32; i++)
            put_byte(b, (uint8_t)(i * 7 + r * 13));
    }
}

static void cifar_seeds(void)
{
    buf f1 = {0}, f2 = {0}, b = {0};
    cifar_records(&f1, 2, 3);
    cifar_records(&f2, 1, 9);
    put_byte(&b, 0);
    put_chunk_buf(&b, &f1);
    seed_buf("cifar", "one-file", &b);
    b.n = 0;
    put_byte(&b, 1);
    put_chunk_buf(&b, &f1);
    put_chunk_buf(&b, &f2);
    seed_buf("cifar", "list", &b);
    b.n = 0;
    put_byte(&b, 2);
    put_chunk_buf(&b, &f2);
    seed_buf("cifar", "split-test", &b);
    b.n = 0;
    put_byte(&b, 3);
    for (int k = 0; k < 5; k++)
        put_chunk_buf(&b, &f2);
    seed_buf("cifar", "split-train", &b);
    /* A label of 10; a size that is not a whole number of records. */
    f2.p[0] = 10;
    b.n = 0;
    put_byte(&b, 1);
    put_chunk_buf(&b, &f1);
    put_chunk_buf(&b, &f2);
    seed_buf("cifar", "bad-label", &b);
    b.n = 0;
    put_byte(&b, 0);
    put_chunk(&b, f1.p, f1.n - 100);
    seed_buf("cifar", "partial-record", &b);
    buf_free(&f1);
    buf_free(&f2);
    buf_free(&b);
}

/* ---- PNG ---- */

static void png_to_buf(png_structp png, png_bytep data, png_size_t len)
{
    put(png_get_io_ptr(png), data, len);
}

static void png_flush_none(png_structp png)
{
    (void)png;
}

/* A w x h PNG of the given colour type and depth, optionally interlaced, with a tRNS
 * chunk for palette images when trns is set. */
static void make_png(buf *out, int w, int h, int color, int depth, int interlace, int trns,
                     int seedv)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    FUZZ_CHECK(png && info);
    if (setjmp(png_jmpbuf(png))) {
        fprintf(stderr, "make_corpus: libpng failed\n");
        exit(1);
    }
    out->n = 0;
    png_set_write_fn(png, out, png_to_buf, png_flush_none);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {20, 40, 250}};
        png_set_PLTE(png, info, pal, 4);
        if (trns) {
            png_byte alpha[2] = {0, 128};
            png_set_tRNS(png, info, alpha, 2, NULL);
        }
    }
    png_write_info(png, info);
    int channels = color == PNG_COLOR_TYPE_RGB         ? 3
                   : color == PNG_COLOR_TYPE_RGB_ALPHA  ? 4
                   : color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                                                        : 1;
    size_t rowbytes = ((size_t)w * (size_t)channels * (size_t)depth + 7) / 8;
    png_bytep row = malloc(rowbytes);
    int passes = png_set_interlace_handling(png);
    for (int pass = 0; pass < passes; pass++)
        for (int y = 0; y < h; y++) {
            for (size_t i = 0; i < rowbytes; i++)
                row[i] = (png_byte)(i * 31 + (size_t)y * 17 + (size_t)seedv);
            if (color == PNG_COLOR_TYPE_PALETTE && depth == 8)
                for (size_t i = 0; i < rowbytes; i++)
                    row[i] &= 3;
            png_write_row(png, row);
        }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
}

static void png_seeds(void)
{
    buf a = {0}, c = {0}, b = {0};
    struct {
        const char *name;
        int w, h, color, depth, interlace, trns;
    } kinds[] = {
        {"gray8", 4, 3, PNG_COLOR_TYPE_GRAY, 8, 0, 0},
        {"rgb8", 4, 3, PNG_COLOR_TYPE_RGB, 8, 0, 0},
        {"palette-trns", 4, 3, PNG_COLOR_TYPE_PALETTE, 8, 0, 1},
        {"palette2", 4, 3, PNG_COLOR_TYPE_PALETTE, 2, 0, 0},
        {"gray1", 9, 3, PNG_COLOR_TYPE_GRAY, 1, 0, 0},
        {"gray2", 4, 3, PNG_COLOR_TYPE_GRAY, 2, 0, 0},
        {"gray4-interlaced", 5, 5, PNG_COLOR_TYPE_GRAY, 4, 1, 0},
        {"rgb8-interlaced", 4, 3, PNG_COLOR_TYPE_RGB, 8, 1, 0},
        {"gray16", 4, 3, PNG_COLOR_TYPE_GRAY, 16, 0, 0},
        {"rgba8", 4, 3, PNG_COLOR_TYPE_RGB_ALPHA, 8, 0, 0},
        {"gray-alpha8", 4, 3, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, 0},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        /* Two classes (control 1), two images each, plus the ignored extras (bit 2). */
        make_png(&a, kinds[k].w, kinds[k].h, kinds[k].color, kinds[k].depth, kinds[k].interlace,
                 kinds[k].trns, 1);
        make_png(&c, kinds[k].w, kinds[k].h, kinds[k].color, kinds[k].depth, kinds[k].interlace,
                 kinds[k].trns, 2);
        b.n = 0;
        put_byte(&b, (uint8_t)(1 | (k % 3 == 0 ? 4 : 0) | (k % 4 == 1 ? 8 : 0)));
        put_chunk_buf(&b, &a);
        put_chunk_buf(&b, &c);
        put_chunk_buf(&b, &c);
        put_chunk_buf(&b, &a);
        seed_buf("png", kinds[k].name, &b);
    }
    /* Images of two sizes; a cut-off file; one class folder left empty (3 classes,
     * 2 images). */
    make_png(&a, 4, 3, PNG_COLOR_TYPE_GRAY, 8, 0, 0, 3);
    make_png(&c, 3, 4, PNG_COLOR_TYPE_GRAY, 8, 0, 0, 4);
    b.n = 0;
    put_byte(&b, 0);
    put_chunk_buf(&b, &a);
    put_chunk_buf(&b, &c);
    seed_buf("png", "two-sizes", &b);
    b.n = 0;
    put_byte(&b, 0);
    put_chunk(&b, a.p, a.n - 20);
    seed_buf("png", "truncated", &b);
    b.n = 0;
    put_byte(&b, 2);
    put_chunk_buf(&b, &a);
    put_chunk_buf(&b, &a);
    seed_buf("png", "empty-class", &b);
    buf_free(&a);
    buf_free(&c);
    buf_free(&b);
}

/* ---- config ---- */

static void config_seeds(void)
{
    static const char *const examples[] = {"autoencoder", "resnet20-2bit", "resnet20",
                                           "vgg-2bit", "vgg"};
    /* --set overrides, NUL-separated after the file (fuzz_config.c). */
#define OVERRIDES(s) {s, sizeof s - 1}
    static const struct {
        const char *text;
        size_t len;
    } overrides[] = {
        OVERRIDES(""),
        OVERRIDES("evolution.rate=0.002\0islands.topology=torus\0stop.seconds=12.5"),
        OVERRIDES("evolution.layers=[\"features_0_0\",\"classifier_1\"]\0"
                  "evolution.selection=comma\0evolution.offspring=64"),
        OVERRIDES("quantizer.grid=asymmetric\0quantizer.scales=mse\0fitness.kind=accuracy"),
        OVERRIDES("output.dir=runs/x\0data.fitness_batch=0\0fitness.features=0.5\0"
                  "report.interval=5"),
    };
    char path[512];
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "examples/%s.json", examples[i]);
        buf b = {0};
        read_all(path, &b);
        if (overrides[i].len) {
            put_byte(&b, 0);
            put(&b, overrides[i].text, overrides[i].len);
        }
        seed_buf("config", examples[i], &b);
        buf_free(&b);
    }
    static const char minimal[] = "{\"model\": \"m.safetensors\", \"stop\": {\"seconds\": 60}}";
    seed("config", "minimal", minimal, strlen(minimal));
    static const char broken[] =
        "{\"model\": \"m\", \"evolution\": {\"rate\": 2, \"bogus\": 1}, \"seed\": -1}";
    seed("config", "broken", broken, strlen(broken));
    /* The resolved configuration, every key present. */
    config c;
    qv_err err;
    FUZZ_CHECK(config_parse(FIXTURE_CONFIG, "seed", &c, &err) == 0);
    char *text = config_to_json(&c);
    seed("config", "resolved", text, strlen(text));
    free(text);
    config_free(&c);
}

/* ---- checkpoints ---- */

static char *run_json_text(int generation, int islands, const config *cfg, int with_val)
{
    json_t *iv = json_array();
    for (int r = 0; r < islands; r++) {
        json_t *t = json_array();
        for (int f = 0; f < FIT_TOTALS_FIELDS; f++)
            json_array_append_new(t, json_real(with_val ? 8.0 * (f == 0) + 0.25 * f + r : 0.0));
        json_array_append_new(iv, t);
    }
    json_t *best = json_array();
    for (int f = 0; f < FIT_TOTALS_FIELDS; f++)
        json_array_append_new(best, json_real(with_val ? 8.0 * (f == 0) + 0.5 * f : 0.0));
    char *resolved = config_to_json(cfg);
    json_t *j = json_pack("{si sI si ss sf sf sf sf si sf si si si sI so so}", "version", 1,
                          "generation", (json_int_t)generation, "islands", islands, "config",
                          resolved, "elapsed", 1.5, "t_setup", 0.25, "t_migration", 0.0,
                          "t_validation", 0.125, "last_report", generation, "last_report_evals",
                          36.0, "stale_reports", 0, "best_generation", generation,
                          "best_island", islands - 1, "log_bytes", (json_int_t)1234,
                          "best_val", best, "island_val", iv);
    free(resolved);
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    json_decref(j);
    return text;
}

static void write_island_blob(buf *b, const evo_island *is, uint32_t island, uint64_t generation,
                        uint32_t nmig)
{
    island_header h = {1, island, generation, 2, 1, 7, 3 * nmig, 3000 * nmig, nmig, 0};
    b->n = 0;
    put(b, &h, sizeof h);
    for (uint32_t k = 0; k < nmig; k++) {
        int32_t ev[2] = {(int32_t)((island + 1 + k) % 4), (int32_t)(k & 1)};
        put(b, ev, sizeof ev);
    }
    size_t n = evo_state_size(is);
    unsigned char *state = malloc(n);
    evo_state_write(is, state);
    /* The state's stats hold measured seconds: a fixed value keeps the seeds the same. */
    double seconds = 0.5;
    memcpy(state + 28 + offsetof(evo_stats, eval_seconds), &seconds, sizeof seconds);
    put(b, state, n);
    free(state);
}

/* A checkpoint of `islands` saved islands resumed by `nranks` ranks. */
static void checkpoint_seed(ckpt_fixture *fx, const char *name, int nranks, int islands,
                            int generation, uint32_t nmig, int with_val)
{
    buf b = {0}, blob = {0};
    put_byte(&b, (uint8_t)(nranks - 1));
    char *text = run_json_text(generation, islands, &fx->cfg, with_val);
    put_chunk(&b, text, strlen(text));
    free(text);
    put_chunk(&b, evo_member_at(fx->is, 0)->codes, quant_size(fx->q));
    for (int i = 0; i < islands; i++) {
        evo_generation(fx->is, (uint32_t)(generation + i)); /* other islands, other states */
        write_island_blob(&blob, fx->is, (uint32_t)i, (uint64_t)generation, nmig);
        put_chunk_buf(&b, &blob);
    }
    seed_buf("checkpoint", name, &b);
    buf_free(&b);
    buf_free(&blob);
}

static void checkpoint_seeds(void)
{
    ckpt_fixture fx;
    fixture_init(&fx, fuzz_dir());
    for (uint32_t g = 1; g <= 3; g++)
        evo_generation(fx.is, g);
    checkpoint_seed(&fx, "one-island", 1, 1, 4, 0, 1);
    checkpoint_seed(&fx, "two-islands-same-ranks", 2, 2, 5, 2, 1);
    checkpoint_seed(&fx, "three-islands-on-two-ranks", 2, 3, 6, 1, 0);
    checkpoint_seed(&fx, "two-islands-on-one-rank", 1, 2, 7, 0, 1);
    checkpoint_seed(&fx, "one-island-on-three-ranks", 3, 1, 8, 3, 0);

    /* ckpt_blob: proper blobs of a run.json and of an island (control 0), a whole file as
     * ckpt_write_blob writes it (control 1), and damaged ones. */
    char *text = run_json_text(4, 1, &fx.cfg, 1);
    buf b = {0}, blob = {0}, file = {0};
    put_byte(&b, 0);
    put(&b, text, strlen(text));
    seed_buf("ckpt_blob", "run-json", &b);
    write_island_blob(&blob, fx.is, 0, 4, 1);
    b.n = 0;
    put_byte(&b, 0);
    put(&b, blob.p, blob.n);
    seed_buf("ckpt_blob", "island", &b);
    qv_err err;
    FUZZ_CHECK(ckpt_write_blob(fuzz_dir(), "run.json", text, strlen(text), &err) == 0);
    char path[700];
    tmp_path(path, sizeof path, "run.json");
    read_all(path, &file);
    unlink(path);
    b.n = 0;
    put_byte(&b, 1);
    put(&b, file.p, file.n);
    seed_buf("ckpt_blob", "file", &b);
    static const uint8_t damage[] = {2, 4, 6, 8 | (3 << 5), 16};
    for (size_t k = 0; k < sizeof damage; k++) {
        char name[32];
        snprintf(name, sizeof name, "damaged-%zu", k);
        b.n = 0;
        put_byte(&b, damage[k]);
        put(&b, "{\"version\": 1}", 14);
        seed_buf("ckpt_blob", name, &b);
    }
    b.n = 0;
    put_byte(&b, 0);
    seed_buf("ckpt_blob", "empty-payload", &b);
    free(text);
    buf_free(&b);
    buf_free(&blob);
    buf_free(&file);
    fixture_free(&fx);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus OUT\n");
        return 2;
    }
    openblas_set_num_threads(1);
    out_dir = argv[1];
    graph_and_quant_seeds();
    safetensors_seeds();
    idx_seeds();
    cifar_seeds();
    png_seeds();
    config_seeds();
    checkpoint_seeds();
    return 0;
}
