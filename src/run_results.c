/* The end of a run: the held-out test split is scored once (float, nearest, start and
 * the best state chosen on validation), with paired statistics, and rank 0 writes
 * result.json, best.safetensors and, for autoencoders, a reconstruction PNG. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run_internal.h"

static json_t *score_json(const run_state *s, const fit_totals *t)
{
    if (net_get_task(s->nt) == NET_CLASSIFY)
        return json_pack("{sfsfsfsisi}", "accuracy", fit_accuracy(t), "cross_entropy",
                         fit_mean_ce(t), "kl", fit_mean_kl(t), "correct", (int)t->correct,
                         "images", (int)t->images);
    return json_pack("{sfsfsi}", "mse", fit_mse(t), "psnr", fit_psnr(t), "images",
                     (int)t->images);
}

/* Paired comparison of `a` against `b` on the same test images, summed over ranks.
 * Classifiers: McNemar's test on the images only one of them gets right. Autoencoders:
 * the paired t statistic of per-image MSE differences. */
static json_t *paired_json(const run_state *s, const float *a, const float *b, int n)
{
    double v[4] = {0, 0, 0, 0};
    bool classify = net_get_task(s->nt) == NET_CLASSIFY;
    for (int i = 0; i < n; i++) {
        if (classify) {
            v[0] += a[i] > 0.5f && b[i] < 0.5f; /* only a right */
            v[1] += a[i] < 0.5f && b[i] > 0.5f; /* only b right */
        } else {
            double d = (double)a[i] - b[i];
            v[0] += 1, v[1] += d, v[2] += d * d, v[3] += d < 0;
        }
    }
    island_sum(v, 4);
    if (classify) {
        double disc = v[0] + v[1];
        double chi2 = disc > 0 ? pow(fabs(v[0] - v[1]) - 1.0, 2) / disc : 0.0;
        return json_pack("{sisisfsf}", "only_evolved_right", (int)v[0], "only_other_right",
                         (int)v[1], "mcnemar_chi2", chi2, "p_value", erfc(sqrt(chi2 / 2.0)));
    }
    double mean = v[1] / v[0], var = (v[2] - v[0] * mean * mean) / fmax(1.0, v[0] - 1.0);
    double t = var > 0 ? mean / sqrt(var / v[0]) : 0.0;
    return json_pack("{sfsfsi}", "mean_mse_difference", mean, "paired_t", t,
                     "images_improved", (int)v[3]);
}

static json_t *changed_json(const run_state *s)
{
    json_t *layers = json_array();
    size_t total_nearest = 0, total_start = 0;
    for (int k = 0; k < quant_layer_count(s->q); k++) {
        const quant_layer *ql = quant_layer_at(s->q, k);
        size_t vs_nearest = evo_diff(s->nearest + ql->woff, s->best + ql->woff, ql->wcount, NULL);
        size_t vs_start = evo_diff(s->start + ql->woff, s->best + ql->woff, ql->wcount, NULL);
        total_nearest += vs_nearest;
        total_start += vs_start;
        json_array_append_new(layers, json_pack(
            "{sssisIsIsI}", "layer", net_node_at(s->nt, ql->node)->name, "bits", ql->bits,
            "weights", (json_int_t)ql->wcount, "changed_vs_nearest", (json_int_t)vs_nearest,
            "changed_vs_start", (json_int_t)vs_start));
    }
    return json_pack("{sIsIsIso}", "weights", (json_int_t)quant_size(s->q), "vs_nearest",
                     (json_int_t)total_nearest, "vs_start", (json_int_t)total_start,
                     "per_layer", layers);
}

/* Counters of how the evaluations ran (incremental or full, cache rebuilds): they
 * depend on caches, which a resumed run rebuilds, so they sit apart from the results,
 * like the timings. */
static json_t *performance_json(run_state *s, double *evaluations)
{
    const evo_stats *es = evo_get_stats(s->is);
    double v[5] = {(double)es->evaluations, (double)es->incremental, (double)es->cache_builds,
                   es->eval_seconds, es->flops};
    island_sum(v, 5);
    *evaluations = v[0];
    double *loops = s->rank == 0 ? qv_malloc(sizeof(double) * (size_t)s->nranks) : NULL;
    island_gather_doubles(&s->t_loop, 1, loops);
    json_t *loop_seconds = json_array();
    for (int r = 0; s->rank == 0 && r < s->nranks; r++)
        json_array_append_new(loop_seconds, json_real(loops[r]));
    free(loops);
    return json_pack("{sIsIsfsfsisfso}", "incremental_evaluations", (json_int_t)v[1],
                     "cache_builds", (json_int_t)v[2], "evaluation_seconds_all_islands", v[3],
                     "gflop", v[4] / 1e9, "cache_slots_per_island", evo_cache_slots(s->is),
                     "cache_mib_per_parent", evo_cache_bytes(s->is) / 1048576.0,
                     "loop_seconds_per_island", loop_seconds);
}

/* What moved between islands: states sent and received (equal: none lost or doubled),
 * bytes of the sparse differences against a whole code array, per-island generations
 * (they differ in asynchronous mode). */
static json_t *migration_json(run_state *s)
{
    double v[3] = {(double)s->states_sent, (double)evo_get_stats(s->is)->migrants_in,
                   (double)s->bytes_sent};
    island_sum(v, 3);
    double gen = s->generation;
    double *gens = s->rank == 0 ? qv_malloc(sizeof(double) * (size_t)s->nranks) : NULL;
    island_gather_doubles(&gen, 1, gens);
    json_t *per_island = json_array();
    for (int r = 0; s->rank == 0 && r < s->nranks; r++)
        json_array_append_new(per_island, json_integer((json_int_t)gens[r]));
    free(gens);
    return json_pack("{sssIsIsIsfsIso}", "mode",
                     s->cfg.islands.mode == MODE_ASYNC ? "async" : "sync", "states_sent",
                     (json_int_t)v[0], "states_received", (json_int_t)v[1], "bytes_sent",
                     (json_int_t)v[2], "bytes_per_state", v[0] > 0 ? v[2] / v[0] : 0.0,
                     "full_state_bytes", (json_int_t)quant_size(s->q),
                     "generations_per_island", per_island);
}

/* Rank 0: test images, float, nearest and evolved reconstructions, one row each. */
static int write_reconstructions(run_state *s, qv_err *err)
{
    int n = s->cfg.report.grid_images < s->test->n ? s->cfg.report.grid_images : s->test->n;
    if (n == 0)
        return 0;
    op_dims in = net_input_dims(s->nt);
    size_t per = (size_t)in.c * in.h * in.w;
    int *idx = qv_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    float *grid = qv_malloc(sizeof(float) * per * 4 * (size_t)n);
    float zero[64] = {0}, one[64];
    for (int c = 0; c < in.c && c < 64; c++)
        one[c] = 1.0f;
    data_normalize(s->test, idx, n, zero, one, grid);
    float *x = qv_malloc_aligned(sizeof(float) * per * (size_t)n);
    data_normalize(s->test, idx, n, net_mean(s->nt), net_std(s->nt), x);
    net_acts *a = net_acts_create(s->nt, n);
    const int8_t *rows[3] = {NULL, s->nearest, s->best};
    for (int r = 0; r < 3; r++) {
        if (rows[r])
            quant_apply(s->q, s->nt, rows[r]);
        else
            memcpy(net_weights(s->nt), quant_reference(s->q), sizeof(float) * quant_size(s->q));
        net_forward(s->nt, a, x, n);
        net_output(s->nt, a, n, grid + per * (size_t)n * (size_t)(r + 1));
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/reconstructions.png", s->cfg.output.dir);
    int rc = report_write_png_grid(path, grid, 4, n, in.c, in.h, in.w, 2, err);
    net_acts_free(a);
    qv_free_aligned(x);
    free(grid);
    free(idx);
    return rc;
}

/* reconstruction.sweeps: what the layer-wise stage did to each layer. */
static json_t *reconstruction_json(const run_state *s)
{
    json_t *layers = json_array();
    for (int l = 0; l < quant_layer_count(s->q); l++) {
        const recon_layer *r = &s->recon[l];
        json_t *o = json_pack("{ss sb}", "layer", net_node_at(s->nt, r->node)->name,
                              "skipped", r->skipped);
        if (!r->skipped)
            json_object_update_new(o, json_pack("{sf sf sI si}", "error_before", r->before,
                                                "error_after", r->after, "codes_moved",
                                                (json_int_t)r->changed, "sweeps", r->sweeps));
        json_array_append_new(layers, o);
    }
    return json_pack("{si sf so}", "max_sweeps", s->cfg.reconstruction.sweeps, "seconds",
                     s->t_recon, "layers", layers);
}

/* result.json first: it is small, so a disk that fills up while the larger files are
 * written still leaves the run's scores. */
static int write_outputs(run_state *s, json_t *result, qv_err *err)
{
    const char *dir = s->cfg.output.dir;
    char path[4096], desc[4096];
    snprintf(path, sizeof path, "%s/result.json", dir);
    char *text = json_dumps(result, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    size_t len = strlen(text);
    text = qv_realloc(text, len + 2);
    text[len] = '\n';
    int rc = qv_write_file_atomic(path, text, len + 1, err);
    free(text);
    if (rc)
        return -1;
    snprintf(path, sizeof path, "%s/best.safetensors", dir);
    snprintf(desc, sizeof desc, "qevo-island: %s, %d-bit %s, chosen on validation (island %d, "
             "generation %d)", s->cfg.model, s->cfg.quantizer.bits,
             s->cfg.quantizer.granularity ? "per_channel" : "per_tensor", s->best_island,
             s->best_generation);
    if (quant_save(s->q, s->nt, s->best, path, desc, err))
        return -1;
    if (net_get_task(s->nt) == NET_RECONSTRUCT && write_reconstructions(s, err))
        return -1;
    return 0;
}

int run_results(run_state *s)
{
    double t0 = qv_now();
    int n = s->test_count;
    float *near_pi = qv_malloc(sizeof(float) * (size_t)(n ? n : 1));
    float *start_pi = qv_malloc(sizeof(float) * (size_t)(n ? n : 1));
    float *best_pi = qv_malloc(sizeof(float) * (size_t)(n ? n : 1));
    fit_totals t[3];
    t[0] = evo_score(s->nt, s->q, s->nearest, &s->test_im, s->work, near_pi);
    t[1] = evo_score(s->nt, s->q, s->start, &s->test_im, s->work, start_pi);
    t[2] = evo_score(s->nt, s->q, s->best, &s->test_im, s->work, best_pi);
    island_sum((double *)t, 3 * FIT_TOTALS_FIELDS);
    fit_totals tf = run_score_float(s, &s->test_im);
    json_t *vs_nearest = paired_json(s, best_pi, near_pi, n);
    json_t *vs_start = paired_json(s, best_pi, start_pi, n);
    double evaluations;
    json_t *changed = changed_json(s), *perf = performance_json(s, &evaluations);
    json_t *migration = migration_json(s);
    s->t_test = qv_now() - t0;
    free(near_pi), free(start_pi), free(best_pi);

    double total = qv_now() - s->t_start;
    const config *c = &s->cfg;
    char start_desc[4096];
    run_describe_start(s, start_desc, sizeof start_desc);
    json_t *result = json_pack(
        "{ss ss si ss s{sisssssssisi} s{sisisisi} si "
        "s{s{soso so so} s{soso so so}} s{soso} s{sisisf} so sI so so "
        "s{sfsfsfsfsfsfsf}}",
        "model", c->model, "start", start_desc, "ranks", s->nranks,
        "topology", config_topology_name(c->islands.topology),
        "quantizer", "bits", c->quantizer.bits, "granularity",
        c->quantizer.granularity ? "per_channel" : "per_tensor", "grid",
        quant_grid_name((quant_grid)c->quantizer.grid), "scales",
        quant_scale_search_name((quant_scale_search)c->quantizer.scales), "first_bits",
        c->quantizer.first_bits, "last_bits", c->quantizer.last_bits,
        "data", "fitness_images", c->data.fitness_size, "fitness_batch", s->batch.count,
        "validation_images", c->data.validation_size, "test_images", (int)tf.images,
        "generations", s->generation,
        "scores", "validation", "float", score_json(s, &s->float_val), "nearest",
        score_json(s, &s->nearest_val), "start", score_json(s, &s->start_val), "evolved",
        score_json(s, &s->best_val),
        "test", "float", score_json(s, &tf), "nearest", score_json(s, &t[0]), "start",
        score_json(s, &t[1]), "evolved", score_json(s, &t[2]),
        "test_paired", "evolved_vs_nearest", vs_nearest, "evolved_vs_start", vs_start,
        "best", "island", s->best_island, "generation", s->best_generation,
        "validation_fitness", evo_value(c->fitness.kind, &s->best_val),
        "changed_weights", changed, "evaluations", (json_int_t)evaluations, "migration",
        migration, "performance", perf,
        "time", "total", total, "setup", s->t_setup, "evaluation",
        json_real_value(json_object_get(perf, "evaluation_seconds_all_islands")) / s->nranks,
        "migration", s->t_migration, "validation", s->t_validation, "redraw", s->t_redraw,
        "test", s->t_test);
    QV_ASSERT(result);
    if (s->recon) {
        json_object_set_new(result, "reconstruction", reconstruction_json(s));
        json_object_set_new(json_object_get(result, "time"), "reconstruction",
                            json_real(s->t_recon));
    }
    qv_err local = {{0}};
    int rc = 0;
    if (s->rank == 0) {
        rc = write_outputs(s, result, &local);
        char a[128], b[128], cc[128];
        run_format_score(s, &tf, a, sizeof a);
        run_format_score(s, &t[0], b, sizeof b);
        run_format_score(s, &t[2], cc, sizeof cc);
        printf("\ntest (%d images, never used for any choice):\n  float    %s\n  nearest  %s\n"
               "  evolved  %s\n", (int)tf.images, a, b, cc);
        if (c->start[0] || s->recon) {
            run_format_score(s, &t[1], a, sizeof a);
            printf("  start    %s (%s)\n", a, start_desc);
        }
        if (rc == 0)
            printf("wrote %s/{result.json,best.safetensors,log.jsonl}\n", c->output.dir);
    }
    json_decref(result);
    return island_agree(rc, &local, &s->err);
}
