#define _POSIX_C_SOURCE 200809L
#include "qevo/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The reference implementation refuses headers above 100 MB; a larger one is either
 * hostile or not a model we could run anyway. */
#define ST_MAX_HEADER 100000000ull

/* Tensor data is copied into 64-byte aligned slots (see copy_data), so callers may cast
 * st_tensor.data to the element type directly. */
#define ST_ALIGN 64

static const char *const dtype_names[] = {
    [ST_F32] = "F32", [ST_F64] = "F64", [ST_F16] = "F16", [ST_BF16] = "BF16",
    [ST_I8] = "I8",   [ST_U8] = "U8",   [ST_I16] = "I16", [ST_I32] = "I32",
    [ST_I64] = "I64", [ST_BOOL] = "BOOL",
};
static const size_t dtype_sizes[] = {
    [ST_F32] = 4, [ST_F64] = 8, [ST_F16] = 2, [ST_BF16] = 2, [ST_I8] = 1,
    [ST_U8] = 1,  [ST_I16] = 2, [ST_I32] = 4, [ST_I64] = 8,  [ST_BOOL] = 1,
};
_Static_assert(sizeof dtype_names / sizeof dtype_names[0] == ST_DTYPE_COUNT,
               "dtype_names out of sync with st_dtype");
_Static_assert(sizeof dtype_sizes / sizeof dtype_sizes[0] == ST_DTYPE_COUNT,
               "dtype_sizes out of sync with st_dtype");

const char *st_dtype_name(st_dtype t)
{
    QV_ASSERT((unsigned)t < ST_DTYPE_COUNT);
    return dtype_names[t];
}

size_t st_dtype_size(st_dtype t)
{
    QV_ASSERT((unsigned)t < ST_DTYPE_COUNT);
    return dtype_sizes[t];
}

static int dtype_parse(const char *s, st_dtype *out)
{
    for (int t = 0; t < ST_DTYPE_COUNT; t++) {
        if (strcmp(s, dtype_names[t]) == 0) {
            *out = (st_dtype)t;
            return 0;
        }
    }
    return -1;
}

/* Writes "[3, 3]" (or "[]" for a scalar) into buf; a negative dim is a wildcard "?". */
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++) {
        const char *sep = d ? ", " : "";
        if (shape[d] < 0)
            n += (size_t)snprintf(buf + n, cap - n, "%s?", sep);
        else
            n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, sep, shape[d]);
    }
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* ---------------------------------------------------------------- reader */

struct st_file {
    char *path;
    json_t *root;       /* keeps tensor names and metadata strings alive */
    json_t *meta;       /* borrowed from root; NULL without __metadata__ */
    int count;
    st_tensor *tensors; /* sorted by data offset */
    void *arena;        /* 64-byte aligned copies of all tensor data */
};

/* A tensor's byte range relative to the data area; needed only while validating. */
typedef struct {
    uint64_t begin, end;
} st_range;

static const char *json_kind(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown JSON value";
}

/* What was found where a non-negative integer was expected: the value itself when it
 * is an integer, so "-3" rather than "an integer". */
static const char *describe_nonneg(const json_t *j, char *buf, size_t cap)
{
    if (json_is_integer(j)) {
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        return buf;
    }
    return json_kind(j);
}

static uint64_t read_le_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int parse_metadata(const char *path, const json_t *meta, qv_err *err)
{
    if (!json_is_object(meta))
        return qv_fail(err, "%s: '__metadata__' must be an object of strings, found %s", path,
                       json_kind(meta));
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return qv_fail(err, "%s: metadata '%s' must be a string, found %s", path, key,
                           json_kind(val));
    }
    return 0;
}

/* Exactly the three fields dtype, shape, data_offsets: an unknown field most likely
 * means a different format or a typo, and silently ignoring it would hide that. */
static int check_fields(const char *path, const char *name, const json_t *entry, qv_err *err)
{
    static const char *const fields[] = {"dtype", "shape", "data_offsets"};
    if (!json_is_object(entry))
        return qv_fail(err,
                       "%s: tensor '%s': expected an object with dtype, shape and "
                       "data_offsets, found %s",
                       path, name, json_kind(entry));
    for (size_t i = 0; i < 3; i++) {
        if (!json_object_get(entry, fields[i]))
            return qv_fail(err, "%s: tensor '%s': missing field '%s'", path, name, fields[i]);
    }
    if (json_object_size(entry) != 3) {
        const char *key;
        const json_t *val;
        json_object_foreach((json_t *)entry, key, val) {
            if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
                return qv_fail(err,
                               "%s: tensor '%s': unexpected field '%s' (expected only dtype, "
                               "shape, data_offsets)",
                               path, name, key);
        }
    }
    return 0;
}

static int parse_dtype(const char *path, const char *name, const json_t *j, st_dtype *out,
                       qv_err *err)
{
    if (!json_is_string(j))
        return qv_fail(err, "%s: tensor '%s': dtype must be a string, found %s", path, name,
                       json_kind(j));
    if (dtype_parse(json_string_value(j), out) != 0)
        return qv_fail(err,
                       "%s: tensor '%s': unknown dtype '%s' (expected F32, F64, F16, BF16, "
                       "I8, U8, I16, I32, I64 or BOOL)",
                       path, name, json_string_value(j));
    return 0;
}

/* Fills ndim, shape and numel; numel is the product with overflow checked, so that the
 * byte count compared against the offsets later cannot wrap around. */
static int parse_shape(const char *path, const char *name, const json_t *j, st_tensor *t,
                       qv_err *err)
{
    char found[32];
    if (!json_is_array(j))
        return qv_fail(err, "%s: tensor '%s': shape must be an array of integers, found %s",
                       path, name, json_kind(j));
    size_t ndim = json_array_size(j);
    if (ndim > ST_MAX_DIMS)
        return qv_fail(err, "%s: tensor '%s': shape has %zu dims, at most %d are supported",
                       path, name, ndim, ST_MAX_DIMS);
    t->ndim = (int)ndim;
    int any_zero = 0;
    for (size_t d = 0; d < ndim; d++) {
        const json_t *dim = json_array_get(j, d);
        if (!json_is_integer(dim) || json_integer_value(dim) < 0)
            return qv_fail(err,
                           "%s: tensor '%s': shape[%zu] must be a non-negative integer, "
                           "found %s",
                           path, name, d, describe_nonneg(dim, found, sizeof found));
        t->shape[d] = (int64_t)json_integer_value(dim);
        any_zero |= t->shape[d] == 0;
    }
    /* With a zero dim the product is 0 whatever the other dims are, so only a shape
     * without zeros can overflow. */
    int64_t numel = any_zero ? 0 : 1;
    for (int d = 0; !any_zero && d < t->ndim; d++) {
        if (numel > INT64_MAX / t->shape[d]) {
            char shape[256];
            format_shape(shape, sizeof shape, t->ndim, t->shape);
            return qv_fail(err, "%s: tensor '%s': shape %s has more than 2^63 elements",
                           path, name, shape);
        }
        numel *= t->shape[d];
    }
    t->numel = numel;
    return 0;
}

static int parse_offsets(const char *path, const char *name, const json_t *j, st_range *r,
                         qv_err *err)
{
    char found[32];
    if (!json_is_array(j) || json_array_size(j) != 2)
        return qv_fail(err,
                       "%s: tensor '%s': data_offsets must be an array of two integers "
                       "[begin, end], found %s",
                       path, name,
                       json_is_array(j) ? "an array of another length" : json_kind(j));
    uint64_t v[2];
    for (size_t i = 0; i < 2; i++) {
        const json_t *o = json_array_get(j, i);
        if (!json_is_integer(o) || json_integer_value(o) < 0)
            return qv_fail(err,
                           "%s: tensor '%s': data_offsets[%zu] must be a non-negative "
                           "integer, found %s",
                           path, name, i, describe_nonneg(o, found, sizeof found));
        v[i] = (uint64_t)json_integer_value(o);
    }
    r->begin = v[0];
    r->end = v[1];
    return 0;
}

/* Checks the byte range against the data area and the dtype/shape it must hold. */
static int check_range(const char *path, const st_tensor *t, const st_range *r,
                       uint64_t data_size, qv_err *err)
{
    if (r->begin > r->end)
        return qv_fail(err,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "]: begin is after end",
                       path, t->name, r->begin, r->end);
    if (r->end > data_size)
        return qv_fail(err,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "] lie outside the data area of %" PRIu64 " bytes",
                       path, t->name, r->begin, r->end, data_size);
    uint64_t size = dtype_sizes[t->dtype];
    uint64_t held = r->end - r->begin;
    /* numel <= INT64_MAX, so an overflowing byte count cannot equal `held` (< 2^63
     * because it fits in the file); the division avoids computing it at all. */
    int fits = (uint64_t)t->numel <= UINT64_MAX / size;
    if (!fits || (uint64_t)t->numel * size != held) {
        char shape[256], needs[32];
        format_shape(shape, sizeof shape, t->ndim, t->shape);
        if (fits)
            snprintf(needs, sizeof needs, "%" PRIu64, (uint64_t)t->numel * size);
        else
            snprintf(needs, sizeof needs, "more than 2^64");
        return qv_fail(err,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "] hold %" PRIu64 " bytes, but %s shape %s needs %s",
                       path, t->name, r->begin, r->end, held, dtype_names[t->dtype], shape,
                       needs);
    }
    return 0;
}

typedef struct {
    st_tensor t;
    st_range r;
} st_entry;

/* Orders by begin, then end (an empty tensor sorts before a non-empty one at the same
 * offset), then name, so that the order is total and does not depend on qsort. */
static int entry_cmp(const void *pa, const void *pb)
{
    const st_entry *a = pa, *b = pb;
    if (a->r.begin != b->r.begin)
        return a->r.begin < b->r.begin ? -1 : 1;
    if (a->r.end != b->r.end)
        return a->r.end < b->r.end ? -1 : 1;
    return strcmp(a->t.name, b->t.name);
}

static int check_overlaps(const char *path, const st_entry *e, int n, qv_err *err)
{
    /* Sorted by begin: if no neighbours overlap, the ends are non-decreasing and no
     * two ranges anywhere overlap. */
    for (int i = 1; i < n; i++) {
        if (e[i - 1].r.end > e[i].r.begin)
            return qv_fail(err,
                           "%s: tensors '%s' data_offsets [%" PRIu64 ", %" PRIu64
                           "] and '%s' data_offsets [%" PRIu64 ", %" PRIu64
                           "] overlap",
                           path, e[i - 1].t.name, e[i - 1].r.begin, e[i - 1].r.end,
                           e[i].t.name, e[i].r.begin, e[i].r.end);
    }
    return 0;
}

/* Parses and validates every entry of the header into `entries` (count known). */
static int parse_entries(st_file *f, st_entry *entries, uint64_t data_size, qv_err *err)
{
    const char *key;
    json_t *val;
    int n = 0;
    json_object_foreach(f->root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (parse_metadata(f->path, val, err) != 0)
                return -1;
            f->meta = val;
            continue;
        }
        st_entry *e = &entries[n];
        memset(e, 0, sizeof *e);
        e->t.name = key;
        if (check_fields(f->path, key, val, err) != 0 ||
            parse_dtype(f->path, key, json_object_get(val, "dtype"), &e->t.dtype, err) != 0 ||
            parse_shape(f->path, key, json_object_get(val, "shape"), &e->t, err) != 0 ||
            parse_offsets(f->path, key, json_object_get(val, "data_offsets"), &e->r, err) != 0 ||
            check_range(f->path, &e->t, &e->r, data_size, err) != 0)
            return -1;
        e->t.nbytes = (size_t)(e->r.end - e->r.begin);
        n++;
    }
    return 0;
}

/* Copies each tensor into its own 64-byte aligned slot. The format guarantees no
 * alignment at all (the header length and the offsets are arbitrary), and every
 * consumer casting `data` to float * would otherwise have to remember to memcpy. */
static void copy_data(st_file *f, st_entry *entries, const unsigned char *data_area)
{
    size_t total = 0;
    for (int i = 0; i < f->count; i++)
        total += (entries[i].t.nbytes + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
    f->arena = qv_malloc_aligned(total);
    unsigned char *dst = f->arena;
    for (int i = 0; i < f->count; i++) {
        st_tensor *t = &entries[i].t;
        if (t->nbytes)
            memcpy(dst, data_area + entries[i].r.begin, t->nbytes);
        t->data = dst;
        dst += (t->nbytes + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
        f->tensors[i] = *t;
    }
}

/* Everything after reading the bytes: header length, JSON, entries, data. */
static int parse_file(st_file *f, const unsigned char *buf, size_t len, qv_err *err)
{
    if (len < 8)
        return qv_fail(err,
                       "%s: file is %zu bytes, too short for the 8-byte header length "
                       "of a safetensors file",
                       f->path, len);
    uint64_t hlen = read_le_u64(buf);
    if (hlen > ST_MAX_HEADER)
        return qv_fail(err,
                       "%s: header length %" PRIu64 " exceeds the limit of %llu bytes "
                       "(not a safetensors file?)",
                       f->path, hlen, ST_MAX_HEADER);
    if (hlen > len - 8)
        return qv_fail(err,
                       "%s: header length %" PRIu64 " is larger than the %zu bytes that "
                       "follow it (truncated file?)",
                       f->path, hlen, len - 8);

    json_error_t jerr;
    f->root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root)
        return qv_fail(err,
                       "%s: header is not valid JSON: %s (line %d, column %d, byte %d of "
                       "the header)",
                       f->path, jerr.text, jerr.line, jerr.column, jerr.position);
    if (!json_is_object(f->root))
        return qv_fail(err, "%s: header must be a JSON object, found %s", f->path,
                       json_kind(f->root));

    size_t nkeys = json_object_size(f->root);
    size_t ntensors = nkeys - (json_object_get(f->root, "__metadata__") ? 1 : 0);
    /* A 100 MB header holds far fewer than INT_MAX entries; checked all the same. */
    QV_ASSERT(ntensors < (size_t)INT32_MAX);
    uint64_t data_size = (uint64_t)(len - 8 - (size_t)hlen);

    st_entry *entries = qv_calloc(ntensors, sizeof *entries);
    int rc = parse_entries(f, entries, data_size, err);
    if (rc == 0) {
        qsort(entries, ntensors, sizeof *entries, entry_cmp);
        rc = check_overlaps(f->path, entries, (int)ntensors, err);
    }
    if (rc == 0) {
        f->count = (int)ntensors;
        f->tensors = qv_calloc(ntensors, sizeof *f->tensors);
        copy_data(f, entries, buf + 8 + hlen);
    }
    free(entries);
    return rc;
}

int st_open(const char *path, st_file **out, qv_err *err)
{
    *out = NULL;
    unsigned char *buf;
    size_t len;
    if (qv_read_file(path, &buf, &len, err) != 0)
        return -1;
    st_file *f = qv_calloc(1, sizeof *f);
    f->path = qv_strdup(path);
    int rc = parse_file(f, buf, len, err);
    /* The data was copied into the arena, so the file image is not needed any more. */
    free(buf);
    if (rc != 0) {
        st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    json_decref(f->root);
    qv_free_aligned(f->arena);
    free(f->tensors);
    free(f->path);
    free(f);
}

const char *st_path(const st_file *f)
{
    return f->path;
}

int st_count(const st_file *f)
{
    return f->count;
}

const st_tensor *st_at(const st_file *f, int i)
{
    QV_ASSERT(i >= 0 && i < f->count);
    return &f->tensors[i];
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    /* Models have at most a few hundred tensors; a linear scan is cheap enough. */
    for (int i = 0; i < f->count; i++) {
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    }
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    if (!f->meta)
        return NULL;
    return json_string_value(json_object_get(f->meta, key));
}

const st_tensor *st_expect(const st_file *f, const char *name, st_dtype dtype, int ndim,
                           const int64_t *shape, qv_err *err)
{
    QV_ASSERT((unsigned)dtype < ST_DTYPE_COUNT);
    QV_ASSERT(ndim >= 0 && ndim <= ST_MAX_DIMS && (ndim == 0 || shape));
    char want[256];
    format_shape(want, sizeof want, ndim, shape);
    const st_tensor *t = st_find(f, name);
    if (!t) {
        qv_fail(err, "%s: missing tensor '%s' (expected %s shape %s)", f->path, name,
                dtype_names[dtype], want);
        return NULL;
    }
    int ok = t->dtype == dtype && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = shape[d] < 0 || shape[d] == t->shape[d];
    if (!ok) {
        char have[256];
        format_shape(have, sizeof have, t->ndim, t->shape);
        qv_fail(err, "%s: tensor '%s': expected %s shape %s, found %s shape %s", f->path,
                name, dtype_names[dtype], want, dtype_names[t->dtype], have);
        return NULL;
    }
    return t;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    void *data;
    size_t nbytes;
} st_wtensor;

struct st_writer {
    st_wtensor *tensors;
    int count, cap;
    json_t *meta; /* object of strings, in insertion order */
};

st_writer *st_writer_create(void)
{
    st_writer *w = qv_calloc(1, sizeof *w);
    w->meta = json_object();
    QV_ASSERT(w->meta);
    return w;
}

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->count; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    json_decref(w->meta);
    free(w);
}

/* Byte count of a shape; bad shapes are programmer errors on the writing side. */
static size_t shape_bytes(st_dtype dtype, int ndim, const int64_t *shape)
{
    uint64_t n = st_dtype_size(dtype);
    for (int d = 0; d < ndim; d++) {
        QV_ASSERT(shape[d] >= 0);
        QV_ASSERT(shape[d] == 0 || n <= (uint64_t)INT64_MAX / (uint64_t)shape[d]);
        n *= (uint64_t)shape[d];
    }
    QV_ASSERT(n <= SIZE_MAX);
    return (size_t)n;
}

void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                   const int64_t *shape, const void *data)
{
    QV_ASSERT(name && strcmp(name, "__metadata__") != 0);
    QV_ASSERT(ndim >= 0 && ndim <= ST_MAX_DIMS && (ndim == 0 || shape));
    for (int i = 0; i < w->count; i++)
        QV_ASSERT(strcmp(w->tensors[i].name, name) != 0);
    size_t nbytes = shape_bytes(dtype, ndim, shape);
    QV_ASSERT(nbytes == 0 || data);
    if (w->count == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        w->tensors = qv_realloc(w->tensors, (size_t)w->cap * sizeof *w->tensors);
    }
    st_wtensor *t = &w->tensors[w->count++];
    memset(t, 0, sizeof *t);
    t->name = qv_strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->nbytes = nbytes;
    t->data = qv_malloc(nbytes);
    if (nbytes)
        memcpy(t->data, data, nbytes);
}

void st_writer_meta(st_writer *w, const char *key, const char *value)
{
    /* json_string refuses invalid UTF-8; the header must be UTF-8, so passing such a
     * string is a bug in the caller. A repeated key replaces the earlier value. */
    json_t *s = json_string(value);
    QV_ASSERT(s);
    QV_ASSERT(json_object_set_new(w->meta, key, s) == 0);
}

/* The header JSON, padded with spaces so that the data area starts at a multiple of 8
 * bytes, as the reference implementation writes it. Caller frees; *len excludes the
 * terminating NUL. */
static char *build_header(const st_writer *w, size_t *len)
{
    json_t *root = json_object();
    QV_ASSERT(root);
    /* The reference implementation writes __metadata__ first. */
    if (json_object_size(w->meta) > 0)
        QV_ASSERT(json_object_set(root, "__metadata__", w->meta) == 0);
    uint64_t offset = 0;
    for (int i = 0; i < w->count; i++) {
        const st_wtensor *t = &w->tensors[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype_names[t->dtype],
                                  "shape", shape, "data_offsets", (json_int_t)offset,
                                  (json_int_t)(offset + t->nbytes));
        /* Fails only for names that are not valid UTF-8, a caller bug. */
        QV_ASSERT(entry && json_object_set_new(root, t->name, entry) == 0);
        offset += t->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    QV_ASSERT(text);
    json_decref(root);
    size_t n = strlen(text);
    size_t padded = (n + 7) / 8 * 8;
    char *out = qv_malloc(padded + 1);
    memcpy(out, text, n);
    memset(out + n, ' ', padded - n);
    out[padded] = 0;
    free(text);
    *len = padded;
    return out;
}

static int write_all(FILE *fp, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, fp) == n ? 0 : -1;
}

int st_writer_save(const st_writer *w, const char *path, qv_err *err)
{
    size_t hlen;
    char *header = build_header(w, &hlen);
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));

    qv_atomic a;
    if (qv_atomic_open(&a, path, err) != 0) {
        free(header);
        return -1;
    }
    errno = 0;
    int rc = write_all(a.f, lenbuf, 8);
    if (rc == 0)
        rc = write_all(a.f, header, hlen);
    for (int i = 0; rc == 0 && i < w->count; i++)
        rc = write_all(a.f, w->tensors[i].data, w->tensors[i].nbytes);
    free(header);
    if (rc != 0) {
        int e = errno;
        qv_atomic_abort(&a);
        return qv_fail(err, "%s: write failed: %s", path, e ? strerror(e) : "short write");
    }
    return qv_atomic_commit(&a, err);
}
