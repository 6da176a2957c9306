/* What every dataset data_load accepts must satisfy (idx, cifar and png harnesses). */
#ifndef QEVO_FUZZ_DATA_H
#define QEVO_FUZZ_DATA_H

#include "fuzz.h"
#include "qevo/data.h"

/* Loads spec; on success checks the set's shape and labels, normalises a few images and
 * shards it, then frees it. */
static inline void fuzz_load_dataset(const char *spec, int channels)
{
    data_set *ds;
    qv_err err;
    int rc = data_load(spec, &ds, &err);
    fuzz_note("data_load", rc, err.msg);
    if (rc != 0) {
        FUZZ_CHECK(ds == NULL && err.msg[0]);
        return;
    }
    FUZZ_CHECK(ds->n >= 1 && ds->h >= 1 && ds->w >= 1);
    FUZZ_CHECK(channels ? ds->c == channels : ds->c == 1 || ds->c == 3);
    FUZZ_CHECK(ds->name && !strcmp(ds->name, spec));
    int32_t max = 0;
    for (int i = 0; i < ds->n; i++) {
        FUZZ_CHECK(ds->labels[i] >= 0 && ds->labels[i] < ds->classes);
        max = ds->labels[i] > max ? ds->labels[i] : max;
    }
    FUZZ_CHECK(ds->classes == max + 1);
    int idx[2] = {0, ds->n - 1};
    const float mean[3] = {0.5f, 0.25f, 0.f}, sd[3] = {0.5f, 1.f, 2.f};
    size_t image = (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
    float *x = malloc(sizeof(float) * 2 * image);
    FUZZ_CHECK(x);
    data_normalize(ds, idx, 2, mean, sd, x);
    for (size_t i = 0; i < 2 * image; i++)
        FUZZ_CHECK(x[i] >= -1.f && x[i] <= 2.f);
    free(x);
    int first, count;
    data_shard_range(ds->n, 1, 3, &first, &count);
    FUZZ_CHECK(first >= 0 && count >= 0 && first + count <= ds->n);
    data_free(ds);
}

#endif
