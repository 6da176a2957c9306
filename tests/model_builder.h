/* Builds small qevo model files for tests: layers given as JSON text, tensors filled
 * with seeded random values. Header-only; each test binary includes it once. */
#ifndef QEVO_TEST_MODEL_BUILDER_H
#define QEVO_TEST_MODEL_BUILDER_H

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/rng.h"
#include "qevo/safetensors.h"
#include "qevo/util.h"

typedef struct {
    st_writer *w;
    json_t *layers;
    rng r;
} model_builder;

static void mb_init(model_builder *mb, uint64_t seed)
{
    mb->w = st_writer_create();
    mb->layers = json_array();
    mb->r = rng_stream(seed, 0, 0, RNG_TEST);
}

/* Adds a float32 tensor with values uniform in [lo, hi). */
static void mb_tensor(model_builder *mb, const char *name, float lo, float hi, int ndim, ...)
{
    int64_t shape[4];
    size_t n = 1;
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++)
        n *= (size_t)(shape[i] = va_arg(ap, int));
    va_end(ap);
    float *data = qv_malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        data[i] = lo + (hi - lo) * (float)rng_uniform(&mb->r);
    st_writer_add(mb->w, name, ST_F32, ndim, shape, data);
    free(data);
}

static void mb_layer(model_builder *mb, const char *json_text)
{
    json_error_t e;
    json_t *j = json_loads(json_text, 0, &e);
    if (!j) {
        fprintf(stderr, "model_builder: bad layer JSON %s: %s\n", json_text, e.text);
        abort();
    }
    json_array_append_new(mb->layers, j);
}

/* Writes the file with graph {"version": 1, "task", "input": ...} plus `extra` keys
 * (JSON object text or NULL) and frees the builder. */
static int mb_save(model_builder *mb, const char *path, const char *task, int c, int h, int w)
{
    json_t *mean = json_array(), *std = json_array();
    for (int i = 0; i < c; i++) {
        json_array_append_new(mean, json_real(0.25 * i));
        json_array_append_new(std, json_real(0.5 + 0.25 * i));
    }
    json_t *g = json_pack("{sisss{s[iii]soso}so}", "version", 1, "task", task, "input",
                          "shape", c, h, w, "mean", mean, "std", std, "layers", mb->layers);
    char *text = json_dumps(g, JSON_COMPACT);
    st_writer_meta(mb->w, "qevo.graph", text);
    free(text);
    json_decref(g);
    qv_err err;
    int rc = st_writer_save(mb->w, path, &err);
    if (rc)
        fprintf(stderr, "model_builder: %s\n", err.msg);
    st_writer_free(mb->w);
    return rc;
}

#endif
