/* safetensors: round trips through the writer and reader, the exact file layout,
 * hostile files (each must fail with a message naming the file and the problem),
 * st_expect messages, and atomic saving. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/safetensors.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static char tmpdir[64];

static void tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

/* Writes a file by hand: an explicit header length (to forge bad ones), the header
 * bytes, then `data`. */
static void write_raw_len(const char *path, uint64_t hlen, const char *header, size_t header_len,
                          const void *data, size_t data_len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        perror(path);
        exit(2);
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(lenbuf, 1, 8, fp);
    if (header_len)
        fwrite(header, 1, header_len, fp);
    if (data_len)
        fwrite(data, 1, data_len, fp);
    fclose(fp);
}

static void write_raw(const char *path, const char *header, size_t data_len)
{
    unsigned char data[256] = {0};
    if (data_len > sizeof data)
        exit(2);
    write_raw_len(path, strlen(header), header, strlen(header), data, data_len);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        perror(path);
        exit(2);
    }
    if (n)
        fwrite(p, 1, n, fp);
    fclose(fp);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Files in tmpdir whose name contains ".tmp." (leftovers of an aborted atomic write). */
static int count_temp_files(void)
{
    DIR *d = opendir(tmpdir);
    int n = 0;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* st_open must fail, set no file, and say which file and what is wrong. */
static void expect_open_fails(const char *path, const char *phrase)
{
    qv_err err = {{0}};
    st_file *f = (st_file *)&err; /* must be reset to NULL on failure */
    int rc = st_open(path, &f, &err);
    CHECKF(rc == -1, "%s: st_open accepted a file that should fail with '%s'", path, phrase);
    CHECK(f == NULL);
    CHECKF(strstr(err.msg, path) == err.msg, "message does not start with the path: %s",
           err.msg);
    CHECKF(strstr(err.msg, phrase) != NULL, "message lacks '%s': %s", phrase, err.msg);
    if (rc == 0)
        st_close(f);
}

static void expect_raw_fails(const char *name, const char *header, size_t data_len,
                             const char *phrase)
{
    char path[128];
    tmp_path(path, sizeof path, name);
    write_raw(path, header, data_len);
    expect_open_fails(path, phrase);
}

static void test_dtype_tables(void)
{
    static const char *const names[] = {"F32", "F64", "F16", "BF16", "I8",
                                        "U8",  "I16", "I32", "I64",  "BOOL"};
    static const size_t sizes[] = {4, 8, 2, 2, 1, 1, 2, 4, 8, 1};
    for (int t = 0; t < ST_DTYPE_COUNT; t++) {
        CHECK(strcmp(st_dtype_name((st_dtype)t), names[t]) == 0);
        CHECK(st_dtype_size((st_dtype)t) == sizes[t]);
    }
}

/* One tensor of each dtype, a scalar, an empty tensor, an 8-dim tensor, and a one-byte
 * tensor before an F32 so that the F32 is misaligned in the file. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} spec;

static const spec specs[] = {
    {"conv1.weight", ST_F32, 4, {2, 1, 3, 3}},
    {"d", ST_F64, 1, {5}},
    {"h", ST_F16, 2, {3, 1}},
    {"bf", ST_BF16, 2, {2, 2}},
    {"codes", ST_I8, 1, {7}},
    {"scales", ST_F32, 1, {3}},
    {"u", ST_U8, 3, {1, 1, 3}},
    {"s", ST_I16, 1, {3}},
    {"i", ST_I32, 2, {2, 1}},
    {"l", ST_I64, 1, {2}},
    {"mask", ST_BOOL, 1, {4}},
    {"scalar", ST_F32, 0, {0}},
    {"empty", ST_F32, 2, {0, 5}},
    {"deep", ST_I8, 8, {1, 2, 1, 1, 1, 1, 1, 3}},
};
#define NSPECS ((int)(sizeof specs / sizeof specs[0]))

static size_t spec_bytes(const spec *s)
{
    size_t n = st_dtype_size(s->dtype);
    for (int d = 0; d < s->ndim; d++)
        n *= (size_t)s->shape[d];
    return n;
}

/* Deterministic distinct bytes per tensor. */
static void fill(unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 37 + (int)i * 11 + 1);
}

static const char *graph_json = "{\"version\": 1, \"layers\": [\"conv1\"],\n"
                                "\"note\": \"quote \\\" caf\xc3\xa9\"}";

static void write_model(const char *path)
{
    st_writer *w = st_writer_create();
    unsigned char buf[512];
    for (int i = 0; i < NSPECS; i++) {
        fill(buf, spec_bytes(&specs[i]), i);
        st_writer_add(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape,
                      spec_bytes(&specs[i]) ? buf : NULL);
    }
    st_writer_meta(w, "qevo.graph", graph_json);
    st_writer_meta(w, "qevo.description", "first");
    st_writer_meta(w, "qevo.description", "replaced");
    st_writer_meta(w, "empty", "");
    qv_err err = {{0}};
    CHECKF(st_writer_save(w, path, &err) == 0, "save: %s", err.msg);
    st_writer_free(w);
}

static void test_round_trip(void)
{
    char path[128];
    tmp_path(path, sizeof path, "model.safetensors");
    write_model(path);

    qv_err err = {{0}};
    st_file *f = NULL;
    CHECKF(st_open(path, &f, &err) == 0, "open: %s", err.msg);
    if (!f)
        return;
    CHECK(strcmp(st_path(f), path) == 0);
    CHECK(st_count(f) == NSPECS);
    unsigned char want[512];
    for (int i = 0; i < NSPECS && i < st_count(f); i++) {
        /* Written contiguously in insertion order, so offset order is insertion order
         * (the empty tensor sorts before the one sharing its offset). */
        const st_tensor *t = st_at(f, i);
        const spec *s = &specs[i];
        CHECKF(strcmp(t->name, s->name) == 0, "st_at(%d) is '%s', expected '%s'", i, t->name,
               s->name);
        CHECK(st_find(f, s->name) == t);
        CHECK(t->dtype == s->dtype);
        CHECK(t->ndim == s->ndim);
        int64_t numel = 1;
        for (int d = 0; d < s->ndim; d++) {
            CHECK(t->shape[d] == s->shape[d]);
            numel *= s->shape[d];
        }
        CHECK(t->numel == numel);
        CHECK(t->nbytes == spec_bytes(s));
        CHECK(t->data != NULL);
        CHECKF((uintptr_t)t->data % 64 == 0, "'%s' data not 64-byte aligned", t->name);
        fill(want, t->nbytes, i);
        CHECKF(t->nbytes == 0 || memcmp(t->data, want, t->nbytes) == 0, "'%s' data differs",
               t->name);
    }
    const st_tensor *sc = st_find(f, "scalar");
    CHECK(sc && sc->ndim == 0 && sc->numel == 1 && sc->nbytes == 4);
    const st_tensor *em = st_find(f, "empty");
    CHECK(em && em->numel == 0 && em->nbytes == 0);
    CHECK(st_find(f, "nope") == NULL);
    CHECK(st_find(f, "__metadata__") == NULL);

    CHECK(st_meta(f, "qevo.graph") && strcmp(st_meta(f, "qevo.graph"), graph_json) == 0);
    CHECK(st_meta(f, "qevo.description") &&
          strcmp(st_meta(f, "qevo.description"), "replaced") == 0);
    CHECK(st_meta(f, "empty") && strcmp(st_meta(f, "empty"), "") == 0);
    CHECK(st_meta(f, "qevo.quant") == NULL);
    st_close(f);
    CHECK(count_temp_files() == 0);
}

/* The bytes on disk: length prefix, header padded with spaces to a multiple of 8,
 * __metadata__ first and tensors in insertion order with contiguous offsets. */
static void test_layout(void)
{
    char path[128];
    tmp_path(path, sizeof path, "layout.safetensors");
    st_writer *w = st_writer_create();
    const int64_t s3[] = {3};
    const float x[3] = {1.0f, -2.5f, 3.25f};
    const int8_t c[3] = {-7, 0, 7};
    st_writer_add(w, "b", ST_F32, 1, s3, x);
    st_writer_add(w, "a", ST_I8, 1, s3, c);
    st_writer_meta(w, "k", "v");
    qv_err err = {{0}};
    CHECKF(st_writer_save(w, path, &err) == 0, "save: %s", err.msg);
    st_writer_free(w);

    unsigned char *buf = NULL;
    size_t len = 0;
    CHECKF(qv_read_file(path, &buf, &len, &err) == 0, "read: %s", err.msg);
    if (!buf)
        return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    CHECK(hlen % 8 == 0);
    CHECK(len == 8 + hlen + 15);
    const char *expect = "{\"__metadata__\":{\"k\":\"v\"},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                         "\"a\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[12,15]}}";
    size_t n = strlen(expect);
    CHECKF(hlen >= n && memcmp(buf + 8, expect, n) == 0, "header: %.*s", (int)hlen,
           (const char *)buf + 8);
    int spaces = 1;
    for (size_t i = 8 + n; i < 8 + hlen && i < len; i++)
        spaces &= buf[i] == ' ';
    CHECK(spaces);
    CHECK(len == 8 + hlen + 15 && memcmp(buf + 8 + hlen, x, 12) == 0 &&
          memcmp(buf + 8 + hlen + 12, c, 3) == 0);
    free(buf);
}

static void test_empty_writer(void)
{
    char path[128];
    tmp_path(path, sizeof path, "nothing.safetensors");
    st_writer *w = st_writer_create();
    qv_err err = {{0}};
    CHECKF(st_writer_save(w, path, &err) == 0, "save: %s", err.msg);
    st_writer_free(w);
    st_file *f = NULL;
    CHECKF(st_open(path, &f, &err) == 0, "open: %s", err.msg);
    CHECK(f && st_count(f) == 0 && st_meta(f, "x") == NULL);
    st_close(f);
    st_close(NULL);
    st_writer_free(NULL);
}

/* Files from other writers: header not padded, trailing spaces, no metadata, gaps
 * between tensors, tensors listed out of offset order. */
static void test_foreign_files(void)
{
    char path[128];
    tmp_path(path, sizeof path, "foreign.safetensors");
    write_raw(path,
              "{\"z\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]},"
              "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}   ",
              12);
    qv_err err = {{0}};
    st_file *f = NULL;
    CHECKF(st_open(path, &f, &err) == 0, "open: %s", err.msg);
    if (!f)
        return;
    CHECK(st_count(f) == 2);
    CHECK(strcmp(st_at(f, 0)->name, "y") == 0 && strcmp(st_at(f, 1)->name, "z") == 0);
    CHECK((uintptr_t)st_at(f, 0)->data % 64 == 0);
    CHECK(st_meta(f, "anything") == NULL);
    st_close(f);
}

static void test_hostile(void)
{
    char path[128];

    tmp_path(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    expect_open_fails(path, "too short");

    tmp_path(path, sizeof path, "four.safetensors");
    write_bytes(path, "\x10\0\0\0", 4);
    expect_open_fails(path, "too short");

    tmp_path(path, sizeof path, "missing.safetensors");
    expect_open_fails(path, "cannot open");

    tmp_path(path, sizeof path, "longheader.safetensors");
    write_raw_len(path, 1000, "{}", 2, NULL, 0);
    expect_open_fails(path, "header length 1000 is larger than the 2 bytes");

    tmp_path(path, sizeof path, "absurd.safetensors");
    write_raw_len(path, (uint64_t)1 << 63, "{}", 2, NULL, 0);
    expect_open_fails(path, "header length 9223372036854775808 exceeds the limit");

    tmp_path(path, sizeof path, "zeroheader.safetensors");
    write_raw_len(path, 0, NULL, 0, NULL, 0);
    expect_open_fails(path, "not valid JSON");

    expect_raw_fails("broken.safetensors", "{\"a\": {\"dtype\": \"F32\",", 0, "not valid JSON");
    expect_raw_fails("trailing.safetensors", "{} x", 0, "not valid JSON");
    expect_raw_fails("dup.safetensors",
                     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                     2, "duplicate");
    expect_raw_fails("array.safetensors", "[1, 2]", 0, "header must be a JSON object, found an array");
    expect_raw_fails("entry.safetensors", "{\"a\": 3}", 0,
                     "tensor 'a': expected an object with dtype, shape and data_offsets");
    expect_raw_fails("dtype.safetensors",
                     "{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                     "tensor 'w': unknown dtype 'F8'");
    expect_raw_fails("dtypetype.safetensors",
                     "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                     "tensor 'w': dtype must be a string, found an integer");
    expect_raw_fails("negshape.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0,
                     "tensor 'w': shape[1] must be a non-negative integer, found -3");
    expect_raw_fails("realshape.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
                     "shape[0] must be a non-negative integer, found a real number");
    expect_raw_fails("deepshape.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                     "\"data_offsets\":[0,1]}}",
                     1, "shape has 9 dims, at most 8");
    expect_raw_fails("hugeshape.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                     "\"data_offsets\":[0,1]}}",
                     1, "more than 2^63 elements");
    expect_raw_fails("hugebytes.safetensors",
                     "{\"w\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904],"
                     "\"data_offsets\":[0,8]}}",
                     8, "needs more than 2^64");
    expect_raw_fails("mismatch.safetensors",
                     "{\"conv1.weight\":{\"dtype\":\"F32\",\"shape\":[3,3],"
                     "\"data_offsets\":[0,100]}}",
                     100,
                     "tensor 'conv1.weight': data_offsets [0, 100] hold 100 bytes, but F32 "
                     "shape [3, 3] needs 36");
    expect_raw_fails("outside.safetensors",
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 20,
                     "tensor 'w': data_offsets [8, 24] lie outside the data area of 20 bytes");
    expect_raw_fails("reversed.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 8,
                     "data_offsets [4, 2]: begin is after end");
    expect_raw_fails("negoffset.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 8,
                     "data_offsets[0] must be a non-negative integer, found -1");
    expect_raw_fails("threeoffsets.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 8,
                     "data_offsets must be an array of two integers");
    expect_raw_fails("overlap.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                     12, "tensors 'b' data_offsets [0, 8] and 'a' data_offsets [4, 12] overlap");
    expect_raw_fails("metaint.safetensors",
                     "{\"__metadata__\":{\"ok\":\"x\",\"k\":3},"
                     "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                     1, "metadata 'k' must be a string, found an integer");
    expect_raw_fails("metaarray.safetensors", "{\"__metadata__\":[\"x\"]}", 0,
                     "'__metadata__' must be an object of strings, found an array");
    expect_raw_fails("nooffsets.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                     "tensor 'w': missing field 'data_offsets'");
    expect_raw_fails("extrafield.safetensors",
                     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
                     "\"strides\":[1]}}",
                     1, "tensor 'w': unexpected field 'strides'");
}

static void test_expect(void)
{
    char path[128];
    tmp_path(path, sizeof path, "expect.safetensors");
    st_writer *w = st_writer_create();
    float fcw[10 * 32] = {0};
    const int64_t s_fcw[] = {10, 32};
    st_writer_add(w, "fc.weight", ST_F32, 2, s_fcw, fcw);
    const float one = 1.0f;
    st_writer_add(w, "t", ST_F32, 0, NULL, &one);
    qv_err err = {{0}};
    CHECKF(st_writer_save(w, path, &err) == 0, "save: %s", err.msg);
    st_writer_free(w);
    st_file *f = NULL;
    CHECKF(st_open(path, &f, &err) == 0, "open: %s", err.msg);
    if (!f)
        return;

    const int64_t ok[] = {10, 32}, any[] = {-1, 32}, wrong[] = {10, 64};
    CHECK(st_expect(f, "fc.weight", ST_F32, 2, ok, &err) == st_find(f, "fc.weight"));
    CHECK(st_expect(f, "fc.weight", ST_F32, 2, any, &err) != NULL);
    CHECK(st_expect(f, "t", ST_F32, 0, NULL, &err) != NULL);

    char want[256];
    CHECK(st_expect(f, "fc.weight", ST_F32, 2, wrong, &err) == NULL);
    snprintf(want, sizeof want,
             "%s: tensor 'fc.weight': expected F32 shape [10, 64], found F32 shape [10, 32]",
             path);
    CHECKF(strcmp(err.msg, want) == 0, "got: %s", err.msg);

    CHECK(st_expect(f, "fc.weight", ST_I8, 2, ok, &err) == NULL);
    snprintf(want, sizeof want,
             "%s: tensor 'fc.weight': expected I8 shape [10, 32], found F32 shape [10, 32]",
             path);
    CHECKF(strcmp(err.msg, want) == 0, "got: %s", err.msg);

    CHECK(st_expect(f, "fc.weight", ST_F32, 1, ok, &err) == NULL);
    CHECKF(strstr(err.msg, "expected F32 shape [10], found F32 shape [10, 32]") != NULL,
           "got: %s", err.msg);

    CHECK(st_expect(f, "fc.weight", ST_F32, 2, (const int64_t[]){-1, 7}, &err) == NULL);
    CHECKF(strstr(err.msg, "expected F32 shape [?, 7]") != NULL, "got: %s", err.msg);

    CHECK(st_expect(f, "t", ST_F32, 1, (const int64_t[]){1}, &err) == NULL);
    CHECKF(strstr(err.msg, "expected F32 shape [1], found F32 shape []") != NULL, "got: %s",
           err.msg);

    const int64_t s_bias[] = {10};
    CHECK(st_expect(f, "fc.bias", ST_F32, 1, s_bias, &err) == NULL);
    CHECKF(strstr(err.msg, path) == err.msg && strstr(err.msg, "missing tensor 'fc.bias'"),
           "got: %s", err.msg);
    CHECK(st_expect(f, "fc.bias", ST_F32, 1, s_bias, NULL) == NULL);
    st_close(f);
}

static void test_save_failures(void)
{
    char path[160];
    const int64_t s1[] = {1};
    const float x = 2.0f;
    st_writer *w = st_writer_create();
    st_writer_add(w, "x", ST_F32, 1, s1, &x);
    qv_err err = {{0}};

    tmp_path(path, sizeof path, "no/such/dir/m.safetensors");
    CHECK(st_writer_save(w, path, &err) == -1);
    CHECKF(strstr(err.msg, path) == err.msg && strstr(err.msg, "cannot create"), "got: %s",
           err.msg);
    CHECK(!file_exists(path));
    CHECK(count_temp_files() == 0);

    /* The rename over a directory fails after the data was written: the temporary file
     * must be removed and the directory left alone. */
    tmp_path(path, sizeof path, "isdir.safetensors");
    CHECK(mkdir(path, 0777) == 0);
    CHECK(st_writer_save(w, path, &err) == -1);
    CHECKF(strstr(err.msg, path) == err.msg, "got: %s", err.msg);
    CHECK(count_temp_files() == 0);
    rmdir(path);
    st_writer_free(w);

    /* A write that fails midway (file size limit reached): no half-written file. */
    tmp_path(path, sizeof path, "toobig.safetensors");
    static unsigned char big[1 << 16];
    const int64_t sbig[] = {sizeof big};
    w = st_writer_create();
    st_writer_add(w, "big", ST_U8, 1, sbig, big);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {4096, old.rlim_max};
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    int limited = setrlimit(RLIMIT_FSIZE, &lim) == 0;
    int rc = st_writer_save(w, path, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    CHECK(limited);
    CHECK(rc == -1);
    CHECKF(strstr(err.msg, path) == err.msg && strstr(err.msg, "write failed"), "got: %s",
           err.msg);
    CHECK(!file_exists(path));
    CHECK(count_temp_files() == 0);
    st_writer_free(w);
}

static void test_replace(void)
{
    char path[128];
    tmp_path(path, sizeof path, "replace.safetensors");
    const int64_t s2[] = {2}, s1[] = {1};
    const float a[2] = {1.0f, 2.0f};
    const int32_t b = 42;
    qv_err err = {{0}};

    st_writer *w = st_writer_create();
    st_writer_add(w, "a", ST_F32, 1, s2, a);
    st_writer_meta(w, "gen", "1");
    CHECKF(st_writer_save(w, path, &err) == 0, "save: %s", err.msg);
    st_writer_free(w);

    w = st_writer_create();
    st_writer_add(w, "b", ST_I32, 1, s1, &b);
    CHECKF(st_writer_save(w, path, &err) == 0, "save over: %s", err.msg);
    st_writer_free(w);

    st_file *f = NULL;
    CHECKF(st_open(path, &f, &err) == 0, "open: %s", err.msg);
    if (!f)
        return;
    CHECK(st_count(f) == 1 && st_find(f, "a") == NULL && st_meta(f, "gen") == NULL);
    const st_tensor *t = st_expect(f, "b", ST_I32, 1, s1, &err);
    CHECK(t && *(const int32_t *)t->data == 42);
    st_close(f);
    CHECK(count_temp_files() == 0);
}

/* Removes everything the tests wrote (the files are flat in tmpdir). */
static void cleanup(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    char path[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qevo_test_st_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtype_tables();
    test_round_trip();
    test_layout();
    test_empty_writer();
    test_foreign_files();
    test_hostile();
    test_expect();
    test_save_failures();
    test_replace();
    if (getenv("QEVO_KEEP_TMP"))
        printf("kept %s\n", tmpdir);
    else
        cleanup();
    TEST_END("test_safetensors");
}
