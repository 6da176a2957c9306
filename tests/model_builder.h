/* Builds small qevo model files and datasets for tests: layers given as JSON text,
 * tensors and pixels filled with seeded random values. Header-only; each test binary
 * includes it once. */
#ifndef QEVO_TEST_MODEL_BUILDER_H
#define QEVO_TEST_MODEL_BUILDER_H

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/data.h"
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

/* conv(1->6)+bn+relu, conv(6->8, stride 2)+relu, flatten, linear(8*4*4 -> 5); input
 * (1, 8, 8). */
static inline void mb_small_classifier(const char *path, uint64_t seed)
{
    model_builder mb;
    mb_init(&mb, seed);
    mb_tensor(&mb, "c1.w", -0.6f, 0.6f, 4, 6, 1, 3, 3);
    mb_tensor(&mb, "bn.g", 0.5f, 1.5f, 1, 6);
    mb_tensor(&mb, "bn.b", -0.2f, 0.2f, 1, 6);
    mb_tensor(&mb, "bn.m", -0.2f, 0.2f, 1, 6);
    mb_tensor(&mb, "bn.v", 0.5f, 1.5f, 1, 6);
    mb_tensor(&mb, "c2.w", -0.3f, 0.3f, 4, 8, 6, 3, 3);
    mb_tensor(&mb, "c2.b", -0.1f, 0.1f, 1, 8);
    mb_tensor(&mb, "fc.w", -0.2f, 0.2f, 2, 5, 128);
    mb_tensor(&mb, "fc.b", -0.1f, 0.1f, 1, 5);
    mb_layer(&mb, "{\"name\":\"c1\",\"op\":\"conv2d\",\"weight\":\"c1.w\",\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"bn\",\"op\":\"batchnorm\",\"weight\":\"bn.g\",\"bias\":\"bn.b\","
                  "\"mean\":\"bn.m\",\"var\":\"bn.v\",\"eps\":1e-5}");
    mb_layer(&mb, "{\"name\":\"r1\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c2\",\"op\":\"conv2d\",\"weight\":\"c2.w\",\"bias\":\"c2.b\","
                  "\"stride\":2,\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"r2\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"f\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\",\"bias\":\"fc.b\"}");
    QV_ASSERT(mb_save(&mb, path, "classify", 1, 8, 8) == 0);
}

/* n one-channel h x w images with random pixels and labels among 5 classes. */
static inline data_set *mb_random_images(int n, int h, int w, uint64_t seed)
{
    data_set *ds = qv_calloc(1, sizeof *ds);
    ds->n = n, ds->c = 1, ds->h = h, ds->w = w, ds->classes = 5;
    ds->pixels = qv_malloc((size_t)n * h * w);
    ds->labels = qv_malloc(sizeof(int32_t) * (size_t)n);
    ds->name = qv_strdup("random");
    rng r = rng_stream(seed, 0, 0, RNG_TEST);
    for (int i = 0; i < n * h * w; i++)
        ds->pixels[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < n; i++)
        ds->labels[i] = (int32_t)rng_below(&r, 5);
    return ds;
}

#endif
