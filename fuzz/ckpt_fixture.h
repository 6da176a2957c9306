/* The island the checkpoint harness checks saved states against, and make_corpus writes
 * seed checkpoints from: the small test classifier (tests/model_builder.h, seed 21: 1126
 * weights in 3 conv/linear layers), 3 bits per channel, a population of 3 scored on 8
 * random 8x8 images. The same model, quantizer and population as the islands whose
 * checkpoints are in fuzz/crashes/checkpoint/. */
#ifndef QEVO_FUZZ_CKPT_FIXTURE_H
#define QEVO_FUZZ_CKPT_FIXTURE_H

#include "fuzz.h"
#include "model_builder.h"
#include "qevo/evo.h"
#include "qevo/net.h"
#include "qevo/quant.h"

#include "quantizers.h"

#define FIXTURE_CONFIG                                                                  \
    "{\"model\": \"m\", \"stop\": {\"generations\": 1}, \"evolution\": {\"population\": 3, " \
    "\"offspring\": 6}}"

typedef struct {
    net *nt;
    quant *q;
    data_set *ds;
    evo_images im;
    int8_t *start;
    config cfg;
    evo_island *is;
} ckpt_fixture;

static inline void fixture_init(ckpt_fixture *fx, const char *dir)
{
    char path[700];
    snprintf(path, sizeof path, "%s/fixture.safetensors", dir);
    mb_small_classifier(path, 21);
    qv_err err;
    FUZZ_CHECK(net_load(path, &fx->nt, &err) == 0);
    unlink(path);
    fx->q = quant_create(fx->nt, &fuzz_quantizers[0]);
    fx->ds = mb_random_images(16, 8, 8, 9);
    int idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    evo_images_prepare(&fx->im, fx->ds, idx, 8, fx->nt, fx->q, 8, 1.0);
    fx->start = malloc(quant_size(fx->q));
    FUZZ_CHECK(fx->start);
    quant_nearest(fx->q, fx->start);
    FUZZ_CHECK(config_parse(FIXTURE_CONFIG, "fixture", &fx->cfg, &err) == 0);
    fx->is = evo_create(fx->nt, fx->q, fx->start, &fx->cfg, &fx->im, 0, &err);
    FUZZ_CHECK(fx->is);
}

static inline void fixture_free(ckpt_fixture *fx)
{
    evo_free(fx->is);
    config_free(&fx->cfg);
    free(fx->start);
    evo_images_free(&fx->im);
    data_free(fx->ds);
    quant_free(fx->q);
    net_free(fx->nt);
    memset(fx, 0, sizeof *fx);
}

#endif
