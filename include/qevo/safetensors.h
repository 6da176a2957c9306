/* safetensors: bounds-checked reading and atomic writing of the safetensors format
 * (8-byte little-endian header length, JSON header parsed with jansson, raw data). */
#ifndef QEVO_SAFETENSORS_H
#define QEVO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/util.h"

typedef enum {
    ST_F32,
    ST_F64,
    ST_F16,
    ST_BF16,
    ST_I8,
    ST_U8,
    ST_I16,
    ST_I32,
    ST_I64,
    ST_BOOL,
    ST_DTYPE_COUNT
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* points into the file's data area; valid until st_close */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* Opens and fully validates a safetensors file: header length against the file size,
 * the JSON, dtypes, shapes (numel * element size == byte range), offsets inside the
 * data area, no overlapping ranges, metadata values are strings. Returns 0 and a new
 * st_file, or -1 with a message naming the file and the problem. */
int st_open(const char *path, st_file **out, qv_err *err);
void st_close(st_file *f);

const char *st_path(const st_file *f);
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
/* The tensor called `name`, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);
/* A `__metadata__` string value, or NULL if absent. */
const char *st_meta(const st_file *f, const char *key);

/* Looks up `name` and checks its dtype and shape (ndim dims; a dim < 0 matches any).
 * Returns the tensor, or NULL with a message naming the file, the tensor, and the
 * expected and actual dtype/shape. */
const st_tensor *st_expect(const st_file *f, const char *name, st_dtype dtype, int ndim,
                           const int64_t *shape, qv_err *err);

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

/* Writer: collects tensors (data is copied) and metadata, then writes the file
 * atomically (temporary file, fsync, rename). Tensors are written in the order added. */
typedef struct st_writer st_writer;
st_writer *st_writer_create(void);
void st_writer_free(st_writer *w);
void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                   const int64_t *shape, const void *data);
void st_writer_meta(st_writer *w, const char *key, const char *value);
int st_writer_save(const st_writer *w, const char *path, qv_err *err);

#endif
