/* evo: operators keep codes in range and within max_shift; flips go to the other
 * rounding neighbour; crossover touches only differing positions; sparse differences
 * round-trip; incremental evaluation scores exactly like full passes and evolves the
 * same states; selection keeps the elite. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/evo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_builder.h"
#include "test.h"

static char dir[64], path[128];

static config base_config(void)
{
    config c;
    qv_err err;
    static const char text[] = "{\"model\": \"m\", \"stop\": {\"generations\": 1}}";
    QV_ASSERT(config_parse(text, "test", &c, &err) == 0);
    return c;
}

static void test_operators(const quant *q)
{
    evo_weights w;
    evo_weights_init(&w, q);
    size_t n = quant_size(q);
    int8_t *codes = qv_malloc(n), *before = qv_malloc(n);
    uint32_t *changed = qv_malloc(sizeof(uint32_t) * n);
    int layers[3] = {0, 1, 2};
    const double weights[3] = {1, 1, 1};
    rng r = rng_stream(4, 0, 0, RNG_TEST);
    const int8_t *cmin = quant_lo_of(q), *cmax = quant_hi_of(q);
    for (int step = 0; step < 3; step++)
        for (int shift = 1; shift <= 2; shift++)
            for (int spread = 0; spread < 2; spread++) {
                config c = base_config();
                c.evolution.step = (step_kind)step;
                c.evolution.max_shift = shift;
                c.evolution.spread = (spread_kind)spread;
                c.evolution.boundary_bias = spread ? 1.0 : 0.0;
                memcpy(codes, w.nearest, n);
                int bad_range = 0, bad_shift = 0, none = 0, flips_ok = 1;
                for (int it = 0; it < 300; it++) {
                    memcpy(before, codes, n);
                    size_t k = evo_mutate(&c, q, &w, 0.02, layers, weights, 3, codes, changed, &r);
                    none += k == 0;
                    for (size_t i = 0; i < n; i++) {
                        bad_range += codes[i] > cmax[i] || codes[i] < cmin[i];
                        bad_shift += abs(codes[i] - w.nearest[i]) > shift;
                    }
                    for (size_t j = 0; j < k && step == STEP_FLIP; j++) {
                        size_t i = changed[j];
                        /* A flip lands on floor or ceil of w/s. */
                        flips_ok &= codes[i] == w.lo[i] || codes[i] == w.lo[i] + 1 ||
                                    codes[i] == cmax[i] || codes[i] == cmin[i];
                    }
                    size_t diff = evo_diff(before, codes, n, NULL);
                    CHECKF(diff == k, "step %d: %zu weights differ, %zu reported", step, diff, k);
                }
                CHECKF(bad_range == 0, "step %d shift %d: codes out of range", step, shift);
                CHECKF(bad_shift == 0, "step %d shift %d: codes beyond max_shift", step, shift);
                CHECKF(none == 0, "step %d: a mutation changed nothing", step);
                CHECK(flips_ok);
                config_free(&c);
            }
    /* Crossover takes only positions where the parents differ. */
    int8_t *a = qv_malloc(n), *b = qv_malloc(n);
    memcpy(a, w.nearest, n);
    memcpy(b, w.nearest, n);
    for (size_t i = 0; i < n; i += 7)
        b[i] = (int8_t)(b[i] == cmax[i] ? b[i] - 1 : b[i] + 1);
    size_t k = evo_crossover(a, b, n, codes, changed, &r);
    int outside = 0, wrong = 0;
    for (size_t i = 0; i < n; i++) {
        outside += codes[i] != a[i] && a[i] == b[i];
        wrong += codes[i] != a[i] && codes[i] != b[i];
    }
    CHECK(outside == 0 && wrong == 0 && k > 0 && k < (n + 6) / 7);
    CHECK(evo_diff(a, codes, n, NULL) == k);
    /* Sparse differences round-trip. */
    evo_change *ch = qv_malloc(sizeof(evo_change) * n);
    size_t m = evo_diff(a, b, n, ch);
    memcpy(codes, a, n);
    evo_patch(codes, ch, m);
    CHECK(m == (n + 6) / 7 && memcmp(codes, b, n) == 0);
    free(ch), free(a), free(b), free(codes), free(before), free(changed);
    evo_weights_free(&w);
}

/* Prepares images 0..count-1 of ds, one chunk. */
static void prepare_first(evo_images *im, const data_set *ds, net *nt, const quant *q, int count)
{
    int *idx = qv_malloc(sizeof(int) * (size_t)count);
    for (int i = 0; i < count; i++)
        idx[i] = i;
    evo_images_prepare(im, ds, idx, count, nt, q, count, 1.0);
    free(idx);
}

/* After generations of incremental evaluation, every member's score equals a full pass. */
static void test_island(net *nt, const quant *q, const data_set *ds, sel_kind sel, int cache_mb,
                        layer_choice layers, double significance, double features)
{
    config c = base_config();
    c.evolution.significance = significance;
    c.evolution.layers = layers;
    c.evolution.selection = sel;
    c.evolution.population = 3;
    c.evolution.offspring = 6;
    c.evolution.rate = 0.01;
    c.evolution.cache_mb = cache_mb;
    c.data.eval_batch = 64;
    evo_images im;
    prepare_first(&im, ds, nt, q, 40);
    if (features > 0)
        evo_images_add_features(&im, nt, q, 64, features);
    int8_t *start = qv_malloc(quant_size(q));
    quant_nearest(q, start);
    qv_err err;
    evo_island *is = evo_create(nt, q, start, &c, &im, 0, &err);
    QV_ASSERT(is);
    net_acts *work = net_acts_create(nt, 64);
    if (features > 0) {
        /* The float model has no feature error; the start has some. */
        memcpy(net_weights(nt), quant_reference(q), sizeof(float) * quant_size(q));
        fit_totals f = evo_score_weights(nt, &im, work, NULL);
        CHECKF(f.feat == 0.0 && evo_member_at(is, 0)->totals.feat > 0.0,
               "feature term: float %g, start %g", f.feat, evo_member_at(is, 0)->totals.feat);
    }
    evo_key elite = evo_member_at(is, 0)->key;
    int elite_lost = 0, mismatched = 0;
    for (uint32_t g = 1; g <= 12; g++) {
        evo_generation(is, g);
        evo_key now = evo_member_at(is, 0)->key;
        elite_lost += evo_key_cmp(now, elite) > 0;
        elite = now;
        for (int i = 0; i < evo_size(is); i++) {
            const evo_member *m = evo_member_at(is, i);
            fit_totals t = evo_score(nt, q, m->codes, &im, work, NULL);
            mismatched += memcmp(&t, &m->totals, sizeof t) != 0;
        }
    }
    CHECKF(elite_lost == 0, "selection %d lost its elite", sel);
    CHECKF(mismatched == 0, "selection %d cache %d: %d incremental scores differ from full passes",
           sel, cache_mb, mismatched);
    if (cache_mb)
        CHECK(evo_get_stats(is)->incremental > 0);
    else
        CHECK(evo_get_stats(is)->incremental == 0);
    CHECK(evo_key_cmp(evo_member_at(is, 0)->key, evo_member_at(is, 2)->key) <= 0);
    /* A migrant better than the worst gets in; the same state again (no better) does not
     * replace by "if better" but does by "always". */
    int8_t *best = qv_malloc(quant_size(q));
    memcpy(best, evo_member_at(is, 0)->codes, quant_size(q));
    evo_key worst = evo_member_at(is, 2)->key;
    int in = evo_import(is, best, MIGRATE_REPLACE_WORST_IF_BETTER);
    CHECK(in == (evo_key_cmp(evo_member_at(is, 0)->key, worst) < 0));
    CHECK(evo_import(is, start, MIGRATE_REPLACE_WORST) == 1);
    free(best);
    /* Saving and restoring the state into a fresh island gives the same future. */
    size_t len = evo_state_size(is);
    unsigned char *state = qv_malloc(len);
    evo_state_write(is, state);
    evo_island *twin = evo_create(nt, q, start, &c, &im, 0, &err);
    const unsigned char *states[1] = {state};
    CHECK(evo_state_read(twin, states, &len, 1, &err) == 0);
    evo_generation(is, 13);
    evo_generation(twin, 13);
    int same = 1;
    for (int i = 0; i < evo_size(is); i++)
        same &= memcmp(evo_member_at(is, i)->codes, evo_member_at(twin, i)->codes,
                       quant_size(q)) == 0 &&
                memcmp(&evo_member_at(is, i)->totals, &evo_member_at(twin, i)->totals,
                       sizeof(fit_totals)) == 0;
    CHECKF(same, "a restored island went another way (layers %d)", layers);
    free(state);
    evo_free(twin);
    net_acts_free(work);
    evo_free(is);
    free(start);
    evo_images_free(&im);
    config_free(&c);
}

/* Paired selection: an offspring enters only with a paired t of its per-image losses
 * against its parent's of at least evolution.significance. Unreachable: nothing enters
 * and the population stays the start; reachable: every accepted state is, image by
 * image, better than the start on the whole (its t against the start is positive). */
static void test_paired(net *nt, const quant *q, const data_set *ds)
{
    evo_images im;
    prepare_first(&im, ds, nt, q, 40);
    int8_t *start = qv_malloc(quant_size(q));
    quant_nearest(q, start);
    net_acts *work = net_acts_create(nt, 64);
    float *base = qv_malloc(sizeof(float) * 40);
    /* Confirmation images: 24 others, disjoint from the batch. */
    evo_images confirm;
    int rows[24];
    for (int i = 0; i < 24; i++)
        rows[i] = 40 + i;
    evo_images all;
    prepare_first(&all, ds, nt, q, 64);
    evo_images_subset(&confirm, &all, rows, 24, nt);
    evo_images_free(&all);
    for (int k = 0; k < 3; k++) {
        config c = base_config();
        c.evolution.rate = 0.01;
        c.evolution.cache_mb = 64;
        c.data.eval_batch = 64;
        c.evolution.significance = k ? 1.0 : 100.0;
        qv_err err;
        evo_island *is = evo_create(nt, q, start, &c, &im, 0, &err);
        QV_ASSERT(is);
        if (k == 2)
            evo_set_confirmation(is, &confirm);
        memcpy(base, evo_member_at(is, 0)->loss, sizeof(float) * 40);
        for (uint32_t g = 1; g <= 20; g++)
            evo_generation(is, g);
        const evo_member *best = evo_member_at(is, 0);
        if (k == 0) {
            CHECK(evo_get_stats(is)->accepted == 0);
            CHECK(memcmp(best->codes, start, quant_size(q)) == 0);
        } else {
            CHECKF(evo_get_stats(is)->accepted > 0, "%llu accepted",
                   (unsigned long long)evo_get_stats(is)->accepted);
            double gain = 0;
            for (int i = 0; i < 40; i++)
                gain += (double)base[i] - best->loss[i];
            CHECK(gain > 0 && best->loss_valid);
            /* The stored losses are the member's own: they sum to its KL. */
            double sum = 0;
            for (int i = 0; i < 40; i++)
                sum += best->loss[i];
            fit_totals t = evo_score(nt, q, best->codes, &im, work, NULL);
            CHECKF(fabs(sum - t.kl) <= 1e-4 * fabs(t.kl) + 1e-9, "losses %g, KL %g", sum, t.kl);
        }
        if (k == 2 && memcmp(best->codes, start, quant_size(q)) != 0) {
            /* Every accepted step was confirmed on the other images: the best state is
             * better than the start there too. */
            fit_totals t0 = evo_score(nt, q, start, &confirm, work, NULL);
            fit_totals t1 = evo_score(nt, q, best->codes, &confirm, work, NULL);
            CHECKF(t1.kl < t0.kl, "confirmed best %g, start %g on the confirmation images",
                   t1.kl, t0.kl);
        }
        evo_free(is);
        config_free(&c);
    }
    free(base);
    evo_images_free(&confirm);
    net_acts_free(work);
    free(start);
    evo_images_free(&im);
}

/* The cache changes only speed: with and without it an island (adaptive layer choice,
 * whose costs are those of incremental evaluation) evolves the same states. */
static void test_cache_neutral(net *nt, const quant *q, const data_set *ds)
{
    evo_images im;
    prepare_first(&im, ds, nt, q, 40);
    int8_t *start = qv_malloc(quant_size(q));
    quant_nearest(q, start);
    evo_island *is[2];
    config c[2];
    for (int k = 0; k < 2; k++) {
        c[k] = base_config();
        c[k].evolution.layers = LAYERS_ADAPTIVE;
        c[k].evolution.rate = 0.01;
        c[k].evolution.cache_mb = k ? 64 : 0;
        c[k].data.eval_batch = 64;
        qv_err err;
        is[k] = evo_create(nt, q, start, &c[k], &im, 0, &err);
        QV_ASSERT(is[k]);
        for (uint32_t g = 1; g <= 15; g++)
            evo_generation(is[k], g);
    }
    int same = 1;
    for (int i = 0; i < evo_size(is[0]); i++)
        same &= memcmp(evo_member_at(is[0], i)->codes, evo_member_at(is[1], i)->codes,
                       quant_size(q)) == 0;
    CHECKF(same, "adaptive layer choice evolved other states without the cache");
    CHECK(evo_get_stats(is[1])->incremental > 0 && evo_get_stats(is[0])->incremental == 0);
    for (int k = 0; k < 2; k++) {
        evo_free(is[k]);
        config_free(&c[k]);
    }
    free(start);
    evo_images_free(&im);
}

static void test_layer_names(net *nt, const quant *q, const data_set *ds)
{
    config c = base_config();
    c.evolution.layers = LAYERS_LIST;
    c.evolution.layer_count = 1;
    c.evolution.layer_list = qv_malloc(sizeof(char *));
    c.evolution.layer_list[0] = qv_strdup("r1");
    int idx[4] = {0, 1, 2, 3};
    evo_images im;
    evo_images_prepare(&im, ds, idx, 4, nt, q, 4, 1.0);
    int8_t *start = qv_malloc(quant_size(q));
    quant_nearest(q, start);
    qv_err err;
    evo_island *is = evo_create(nt, q, start, &c, &im, 0, &err);
    CHECKF(!is && strstr(err.msg, "evolution.layers[0]: 'r1' is not a conv2d"), "%s", err.msg);
    evo_free(is);
    free(start);
    evo_images_free(&im);
    config_free(&c);
}

int main(void)
{
    strcpy(dir, "/tmp/qevo-test-evo-XXXXXX");
    QV_ASSERT(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    mb_small_classifier(path, 21);
    net *nt;
    qv_err err;
    QV_ASSERT(net_load(path, &nt, &err) == 0);
    quant_settings qs = {.bits = 3, .granularity = QUANT_PER_CHANNEL};
    quant *q = quant_create(nt, &qs);
    data_set *ds = mb_random_images(64, 8, 8, 9);
    test_operators(q);
    test_island(nt, q, ds, SEL_PLUS, 64, LAYERS_PROPORTIONAL, 0, 0);
    test_island(nt, q, ds, SEL_COMMA, 64, LAYERS_UNIFORM, 0, 0);
    test_island(nt, q, ds, SEL_PLUS, 0, LAYERS_ADAPTIVE, 0, 0);
    test_island(nt, q, ds, SEL_PLUS, 64, LAYERS_ADAPTIVE, 0, 0);
    test_island(nt, q, ds, SEL_PLUS, 64, LAYERS_ADAPTIVE, 1.0, 0);
    test_island(nt, q, ds, SEL_PLUS, 0, LAYERS_PROPORTIONAL, 1.0, 0);
    /* The feature term: incremental scores (a mutation in the last layer keeps the
     * parent's feature terms) equal full passes, with and without paired selection. */
    test_island(nt, q, ds, SEL_PLUS, 64, LAYERS_UNIFORM, 0, 1.0);
    test_island(nt, q, ds, SEL_PLUS, 64, LAYERS_UNIFORM, 1.0, 1.0);
    test_paired(nt, q, ds);
    test_cache_neutral(nt, q, ds);
    test_layer_names(nt, q, ds);
    data_free(ds);
    quant_free(q);
    net_free(nt);
    unlink(path);
    rmdir(dir);
    TEST_END("test_evo");
}
