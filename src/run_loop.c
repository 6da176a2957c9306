/* The generation loop of a run: breeding, migration, batch redraws, reports with
 * data-parallel validation, and the collective stop decision. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "run_internal.h"

/* ---- Scores ---- */

void run_score_states(run_state *s, const evo_images *im, int8_t *const *codes, int count,
                      fit_totals *totals)
{
    for (int i = 0; i < count; i++)
        totals[i] = evo_score(s->nt, s->q, codes[i], im, s->work, NULL);
    island_sum((double *)totals, count * FIT_TOTALS_FIELDS);
}

fit_totals run_score_float(run_state *s, const evo_images *im)
{
    /* The float model is the quantizer's reference weights, not a code array. */
    memcpy(net_weights(s->nt), quant_reference(s->q), sizeof(float) * quant_size(s->q));
    fit_totals t = evo_score_weights(s->nt, im, s->work, NULL);
    island_sum((double *)&t, FIT_TOTALS_FIELDS);
    return t;
}

void run_format_score(const run_state *s, const fit_totals *t, char *buf, size_t cap)
{
    if (net_get_task(s->nt) == NET_CLASSIFY)
        snprintf(buf, cap, "acc %.4f  ce %.4f  kl %.4f", fit_accuracy(t), fit_mean_ce(t),
                 fmax(0.0, fit_mean_kl(t))); /* the float model's KL is 0 up to rounding */
    else
        snprintf(buf, cap, "mse %.6f  psnr %.2f dB", fit_mse(t), fit_psnr(t));
}

/* ---- Setup files and header ---- */

static int write_json_file(const char *dir, const char *name, json_t *j, qv_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    QV_ASSERT(text);
    size_t len = strlen(text);
    text = qv_realloc(text, len + 2);
    text[len] = '\n';
    int rc = qv_write_file_atomic(path, text, len + 1, err);
    free(text);
    return rc;
}

static json_t *int_array(const int *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

/* Rank 0: the output folder, the resolved configuration, the data splits (which
 * images each island and the validation see; scripts/adaround.py reads it) and the log. */
int run_write_setup_files(run_state *s, qv_err *err)
{
    const char *dir = s->cfg.output.dir;
    if (qv_mkdir_p(dir, err))
        return qv_wrap(err, "output.dir");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len = strlen(s->resolved);
    char *text = qv_malloc(len + 2);
    memcpy(text, s->resolved, len);
    text[len] = '\n';
    int rc = qv_write_file_atomic(path, text, len + 1, err);
    free(text);
    if (rc)
        return -1;
    json_t *fitness = json_array();
    for (int r = 0; r < s->nranks; r++) {
        int first, count;
        data_shard_range(s->cfg.data.fitness_size, r, s->nranks, &first, &count);
        json_array_append_new(fitness, int_array(s->perm + first, count));
    }
    json_t *splits = json_pack("{sssososs}", "dataset", s->cfg.data.train, "fitness", fitness,
                               "validation",
                               int_array(s->perm + s->cfg.data.fitness_size,
                                         s->cfg.data.validation_size),
                               "test", s->cfg.data.test);
    rc = write_json_file(dir, "splits.json", splits, err);
    json_decref(splits);
    if (rc || s->dry_run)
        return rc;
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    if (s->resumed) {
        s->log = report_log_open_at(path, s->log_bytes, err); /* as the checkpoint saw it */
    } else {
        remove(path); /* a new run starts a new log */
        s->log = report_log_open(path, err);
    }
    return s->log ? 0 : -1;
}

static void print_header(run_state *s)
{
    if (s->rank != 0)
        return;
    const config *c = &s->cfg;
    char fl[128], ne[128], st[128];
    run_format_score(s, &s->float_val, fl, sizeof fl);
    run_format_score(s, &s->nearest_val, ne, sizeof ne);
    run_format_score(s, &s->start_val, st, sizeof st);
    printf("qevo-island: %s (%zu weights), %d-bit %s, %s grid, %s scales", c->model,
           quant_size(s->q), c->quantizer.bits,
           quant_granularity_name((quant_granularity)c->quantizer.granularity),
           quant_grid_name((quant_grid)c->quantizer.grid),
           quant_scale_search_name((quant_scale_search)c->quantizer.scales));
    if (c->quantizer.first_bits || c->quantizer.last_bits)
        printf(" (first %d, last %d bits)", c->quantizer.first_bits ? c->quantizer.first_bits
                                                                    : c->quantizer.bits,
               c->quantizer.last_bits ? c->quantizer.last_bits : c->quantizer.bits);
    printf("\n  %d island%s, %s topology; fitness %s on %d-image shards (batch %d); "
           "validation %d, test %d images\n",
           s->nranks, s->nranks > 1 ? "s" : "", config_topology_name(c->islands.topology),
           config_fit_name(c->fitness.kind), c->data.fitness_size / s->nranks,
           s->batch.count, c->data.validation_size,
           c->data.test_size ? c->data.test_size : s->test->n);
    printf("  population %d + %d offspring, rate %g, step %s; cache %d parents x %.0f MiB\n",
           c->evolution.population, c->evolution.offspring, c->evolution.rate,
           c->evolution.step == STEP_FLIP ? "flip" : c->evolution.step == STEP_PM1 ? "pm1"
                                                                                 : "random",
           evo_cache_slots(s->is), evo_cache_bytes(s->is) / 1048576.0);
    printf("  validation: float %s\n              nearest %s\n", fl, ne);
    if (c->start[0] || s->recon) {
        char from[4096];
        run_describe_start(s, from, sizeof from);
        printf("              start %s (%s)\n", st, from);
    }
    if (s->recon) {
        printf("  reconstruction (%.1f s), relative output error per layer:\n", s->t_recon);
        for (int l = 0; l < quant_layer_count(s->q); l++) {
            const recon_layer *r = &s->recon[l];
            const char *name = net_node_at(s->nt, r->node)->name;
            if (r->skipped)
                printf("    %-24s kept: %d inputs per channel, more than %d\n", name,
                       r->inputs, RECON_MAX_INPUTS);
            else
                printf("    %-24s %.5f -> %.5f  (%zu codes moved, %d sweeps)\n", name,
                       r->before, r->after, r->changed, r->sweeps);
        }
    }
    printf("\n%7s %11s %11s %11s %8s %9s %9s %9s %9s\n", "gen", "best fit", "mean fit",
           "val fit", "val acc", "evals/s", "migr acc", "elapsed", "remain");
    fflush(stdout);
}

/* ---- Migration ---- */

/* ---- Reports ---- */

/* Scores the islands' bests on the validation split (every rank scores every candidate
 * on its slice; one sum gives exact totals) and keeps the global best. An island whose
 * best has not changed since the last report sends nothing and keeps its score. */
static void validate(run_state *s)
{
    double t0 = qv_now();
    size_t n = quant_size(s->q);
    const evo_member *mine = evo_member_at(s->is, 0);
    bool changed = !s->validated_once || mine->id != s->validated_id;
    s->validated_once = true;
    s->validated_id = mine->id;
    size_t count = changed ? evo_diff(s->start, mine->codes, n, NULL) : 0;
    evo_change *changes = qv_malloc(sizeof(evo_change) * (count ? count : 1));
    evo_diff(s->start, mine->codes, n, changed ? changes : NULL);
    island_states all;
    island_allgather_states(&changes, &count, changed ? 1 : 0, &all);
    int8_t **codes = qv_malloc(sizeof(int8_t *) * (size_t)(all.count ? all.count : 1));
    fit_totals *totals = qv_malloc(sizeof(fit_totals) * (size_t)(all.count ? all.count : 1));
    for (int i = 0; i < all.count; i++) {
        codes[i] = qv_malloc(n ? n : 1);
        memcpy(codes[i], s->start, n);
        evo_patch(codes[i], all.changes[i], all.nchanges[i]);
    }
    run_score_states(s, &s->val, codes, all.count, totals);
    /* The global best is chosen on validation scores only. */
    fit_kind kind = s->cfg.fitness.kind;
    bool improved = false;
    for (int i = 0; i < all.count; i++) {
        s->island_val[all.source[i]] = totals[i];
        if (evo_key_cmp(evo_key_of(kind, &totals[i]), evo_key_of(kind, &s->best_val)) < 0) {
            s->best_val = totals[i];
            s->best_generation = s->generation;
            s->best_island = all.source[i];
            memcpy(s->best, codes[i], n);
            improved = true;
        }
    }
    s->stale_reports = improved ? 0 : s->stale_reports + 1;
    for (int i = 0; i < all.count; i++)
        free(codes[i]);
    free(codes);
    free(totals);
    free(changes);
    island_states_free(&all);
    s->t_validation += qv_now() - t0;
}

enum { STAT_BEST, STAT_MEAN, STAT_RATE, STAT_EVALS, STAT_INCR, STAT_ACCEPTED, STAT_MIG_IN,
       STAT_MIG_OK, STAT_EVAL_S, STAT_COUNT };

static void island_stats(run_state *s, double *st)
{
    const evo_stats *es = evo_get_stats(s->is);
    fit_kind k = s->cfg.fitness.kind;
    double mean = 0;
    for (int i = 0; i < evo_size(s->is); i++)
        mean += evo_value(k, &evo_member_at(s->is, i)->totals);
    st[STAT_BEST] = evo_value(k, &evo_member_at(s->is, 0)->totals);
    st[STAT_MEAN] = mean / evo_size(s->is);
    st[STAT_RATE] = evo_rate(s->is);
    st[STAT_EVALS] = (double)es->evaluations;
    st[STAT_INCR] = (double)es->incremental;
    st[STAT_ACCEPTED] = (double)es->accepted;
    st[STAT_MIG_IN] = (double)es->migrants_in;
    st[STAT_MIG_OK] = (double)es->migrants_accepted;
    st[STAT_EVAL_S] = es->eval_seconds;
}

/* This island's migration events since the last report, as JSON array items. */
static char *migration_events_json(run_state *s)
{
    size_t cap = 64 + (size_t)s->nmig * 96, len = 0;
    char *buf = qv_malloc(cap);
    buf[0] = 0;
    for (int i = 0; i < s->nmig; i++)
        len += (size_t)snprintf(buf + len, cap - len,
                                "{\"sender\": %d, \"receiver\": %d, \"accepted\": %s},",
                                s->mig_sender[i], s->rank, s->mig_accepted[i] ? "true" : "false");
    s->nmig = 0;
    return buf;
}

/* Rank 0: the progress line and the log record. */
static int write_report(run_state *s, const double *stats, const fit_totals *val,
                        const char *events, qv_err *err)
{
    const config *c = &s->cfg;
    double now = qv_now(), elapsed = now - s->t_start;
    double best = stats[STAT_BEST], mean = 0, evals = 0, mig_in = 0, mig_ok = 0;
    bool lower = c->fitness.kind != FIT_ACCURACY && c->fitness.kind != FIT_PSNR;
    for (int r = 0; r < s->nranks; r++) {
        const double *st = stats + (size_t)r * STAT_COUNT;
        best = lower ? fmin(best, st[STAT_BEST]) : fmax(best, st[STAT_BEST]);
        mean += st[STAT_MEAN] / s->nranks;
        evals += st[STAT_EVALS];
        mig_in += st[STAT_MIG_IN];
        mig_ok += st[STAT_MIG_OK];
    }
    double rate = (evals - s->last_report_evals) / fmax(1e-9, now - s->last_report_time);
    s->last_report_evals = evals;
    s->last_report_time = now;
    double remain = NAN;
    if (c->stop.generations)
        remain = elapsed / s->generation * (c->stop.generations - s->generation);
    if (c->stop.seconds)
        remain = isnan(remain) ? c->stop.seconds - elapsed
                               : fmin(remain, c->stop.seconds - elapsed);
    char el[32], re[32] = "?", mig[32];
    report_format_duration(elapsed, el, sizeof el);
    if (!isnan(remain))
        report_format_duration(remain, re, sizeof re);
    snprintf(mig, sizeof mig, "%.0f/%.0f", mig_ok, mig_in);
    double val_fit = evo_value(c->fitness.kind, &s->best_val);
    char acc[16] = "-";
    if (net_get_task(s->nt) == NET_CLASSIFY)
        snprintf(acc, sizeof acc, "%.4f", fit_accuracy(&s->best_val));
    printf("%7d %11.5g %11.5g %11.5g %8s %9.1f %9s %9s %9s\n", s->generation, best, mean,
           val_fit, acc, rate, mig, el, re);
    fflush(stdout);

    json_t *islands = json_array(), *vals = json_array();
    for (int r = 0; r < s->nranks; r++) {
        const double *st = stats + (size_t)r * STAT_COUNT;
        json_array_append_new(islands, json_pack(
            "{si sf sf sf sI sI sI sI sI sf}", "island", r, "best", st[STAT_BEST], "mean",
            st[STAT_MEAN], "rate", st[STAT_RATE], "evaluations", (json_int_t)st[STAT_EVALS],
            "incremental", (json_int_t)st[STAT_INCR], "accepted", (json_int_t)st[STAT_ACCEPTED],
            "migrants_in", (json_int_t)st[STAT_MIG_IN], "migrants_accepted",
            (json_int_t)st[STAT_MIG_OK], "eval_seconds", st[STAT_EVAL_S]));
        json_array_append_new(vals, json_real(evo_value(c->fitness.kind, &val[r])));
    }
    char *ev = qv_malloc(strlen(events) + 3);
    sprintf(ev, "[%.*s]", strlen(events) ? (int)strlen(events) - 1 : 0, events);
    json_t *migrations = json_loads(ev, 0, NULL);
    free(ev);
    QV_ASSERT(migrations);
    json_t *rec = json_pack("{ss si sf sI sf so s{so sf sf sb si si} so}", "type", "report",
                            "generation", s->generation, "elapsed", elapsed, "evaluations",
                            (json_int_t)evals, "evaluations_per_s", rate, "islands", islands,
                            "validation", "islands", vals, "global_best", val_fit,
                            "global_best_accuracy", fit_accuracy(&s->best_val), "improved",
                            s->stale_reports == 0, "best_island", s->best_island,
                            "best_generation", s->best_generation, "migrations", migrations);
    char *line = json_dumps(rec, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(rec);
    int rc = report_log_append(s->log, line, err);
    free(line);
    return rc;
}

static int report(run_state *s)
{
    validate(s);
    const fit_totals *val = s->island_val;
    double mine[STAT_COUNT];
    island_stats(s, mine);
    double *stats = s->rank == 0 ? qv_malloc(sizeof(double) * STAT_COUNT * (size_t)s->nranks)
                                 : NULL;
    island_gather_doubles(mine, STAT_COUNT, stats);
    char *events = migration_events_json(s);
    size_t total;
    char *all_events = island_gather_bytes(events, strlen(events), &total);
    qv_err local = {{0}};
    int rc = s->rank == 0 ? write_report(s, stats, val, all_events, &local) : 0;
    free(events);
    free(all_events);
    free(stats);
    s->last_report = s->generation;
    return island_agree(rc, &local, &s->err);
}

/* ---- The loop ---- */

/* A new fitness batch from the island's shard; the population is re-scored on it. */
static void redraw(run_state *s)
{
    double t0 = qv_now();
    evo_images next, confirm;
    run_draw_batch(s, ++s->draws, &next, &confirm);
    evo_images_free(&s->batch);
    evo_images_free(&s->confirm);
    s->batch = next; /* evo holds &s->batch: same address, new images */
    s->confirm = confirm;
    evo_set_batch(s->is, &s->batch);
    evo_set_confirmation(s->is, &s->confirm);
    s->t_redraw += qv_now() - t0;
}

enum { ACT_STOP = 1, ACT_CHECKPOINT = 2, ACT_INTERRUPT = 4 };

/* Collective: what every rank does at this generation boundary. Stopping and
 * checkpointing are agreed in one reduction, so all ranks act at the same generation. */
static int boundary_actions(run_state *s)
{
    const config *c = &s->cfg;
    int act = 0;
    if (c->stop.generations && s->generation >= c->stop.generations)
        act |= ACT_STOP;
    /* Wall time is rank 0's clock; the reduction shares its decision. */
    if (s->rank == 0 && c->stop.seconds && qv_now() - s->t_start >= c->stop.seconds)
        act |= ACT_STOP;
    if (c->stop.patience && s->last_report == s->generation &&
        s->stale_reports >= c->stop.patience)
        act |= ACT_STOP; /* validation totals are identical on every rank */
    if (c->checkpoint.every_generations && s->generation % c->checkpoint.every_generations == 0)
        act |= ACT_CHECKPOINT;
    if (s->rank == 0 && c->checkpoint.every_seconds &&
        qv_now() - s->last_checkpoint_time >= c->checkpoint.every_seconds)
        act |= ACT_CHECKPOINT;
    int sig = run_take_signals();
    if (sig & RUN_SIGNAL_CHECKPOINT)
        act |= ACT_CHECKPOINT;
    if (sig & RUN_SIGNAL_STOP)
        act |= ACT_CHECKPOINT | ACT_INTERRUPT;
    return island_or(act);
}

/* Test hook for asynchronous migration: QEVO_TEST_SLOW_RANK=r and QEVO_TEST_SLOW_MS=m
 * make island r sleep m milliseconds per generation. */
static void test_slowdown(const run_state *s)
{
    const char *rank = getenv("QEVO_TEST_SLOW_RANK"), *ms = getenv("QEVO_TEST_SLOW_MS");
    if (!rank || !ms || atoi(rank) != s->rank)
        return;
    long m = atol(ms);
    struct timespec ts = {m / 1000, (m % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Asynchronous islands report alone: rank 0 prints and logs its own island. */
static int local_report(run_state *s)
{
    if (s->rank != 0)
        return 0;
    double st[STAT_COUNT], now = qv_now();
    island_stats(s, st);
    double rate = (st[STAT_EVALS] - s->last_report_evals) / fmax(1e-9, now - s->last_report_time);
    s->last_report_evals = st[STAT_EVALS];
    s->last_report_time = now;
    char el[32], mig[32];
    report_format_duration(now - s->t_start, el, sizeof el);
    snprintf(mig, sizeof mig, "%.0f/%.0f", st[STAT_MIG_OK], st[STAT_MIG_IN]);
    printf("%7d %11.5g %11.5g %11s %8s %9.1f %9s %9s %9s\n", s->generation, st[STAT_BEST],
           st[STAT_MEAN], "-", "-", rate, mig, el, "(island 0)");
    fflush(stdout);
    char *events = migration_events_json(s);
    char line[1024 + 64];
    snprintf(line, sizeof line,
             "{\"type\": \"island_report\", \"island\": 0, \"generation\": %d, "
             "\"elapsed\": %.3f, \"best\": %.10g, \"mean\": %.10g, \"evaluations\": %.0f, "
             "\"migrants_in\": %.0f, \"migrants_accepted\": %.0f}",
             s->generation, now - s->t_start, st[STAT_BEST], st[STAT_MEAN], st[STAT_EVALS],
             st[STAT_MIG_IN], st[STAT_MIG_OK]);
    free(events);
    qv_err err;
    if (report_log_append(s->log, line, &err)) {
        fprintf(stderr, "qevo-island: %s\n", err.msg); /* reported again at the end */
        return -1;
    }
    return 0;
}

/* Islands that never wait for each other: each stops on its own conditions (or a
 * signal); the end is collective: migrants in flight are taken in, then the island
 * bests are validated together. */
static int run_loop_async(run_state *s)
{
    const config *c = &s->cfg;
    s->async = island_async_create(s->topo);
    s->last_report_time = qv_now();
    double loop_start = qv_now();
    int failed = 0;
    for (;;) {
        s->generation++;
        evo_generation(s->is, (uint32_t)s->generation);
        test_slowdown(s);
        /* Natives are re-scored on fresh images before migrants compete with them. */
        if (c->data.redraw_every && s->generation % c->data.redraw_every == 0)
            redraw(s);
        if (s->nranks > 1)
            run_migrate_async(s, c->islands.interval && s->generation % c->islands.interval == 0);
        if (s->generation % c->report.interval == 0 && !failed)
            failed = local_report(s);
        if (run_take_signals()) { /* any signal: checkpoint and stop (no partner waits) */
            s->interrupted = true;
            break;
        }
        if ((c->stop.generations && s->generation >= c->stop.generations) ||
            (c->stop.seconds && qv_now() - s->t_start >= c->stop.seconds))
            break;
    }
    s->t_loop = qv_now() - loop_start;
    run_migrate_async_finish(s);
    island_async_free(s->async);
    s->async = NULL;
    qv_err local;
    qv_fail(&local, "writing the log failed");
    if (island_agree(failed, &local, &s->err))
        return -1;
    if (s->interrupted)
        return run_checkpoint(s);
    return report(s);
}

int run_loop(run_state *s)
{
    const config *c = &s->cfg;
    if (c->islands.mode == MODE_ASYNC)
        return run_loop_async(s);
    s->last_report_time = qv_now();
    s->last_checkpoint_time = qv_now();
    double loop_start = qv_now();
    for (;;) {
        s->generation++;
        evo_generation(s->is, (uint32_t)s->generation);
        test_slowdown(s);
        /* Natives are re-scored on fresh images before migrants compete with them. */
        if (c->data.redraw_every && s->generation % c->data.redraw_every == 0)
            redraw(s);
        if (s->nranks > 1 && c->islands.interval && s->generation % c->islands.interval == 0)
            run_migrate(s);
        if (s->generation % c->report.interval == 0 && report(s))
            return -1;
        int act = boundary_actions(s);
        if ((act & ACT_CHECKPOINT) && run_checkpoint(s))
            return -1;
        if (act & ACT_INTERRUPT) {
            s->interrupted = true;
            return 0;
        }
        if (act & ACT_STOP) {
            bool checkpoints = c->checkpoint.every_generations || c->checkpoint.every_seconds;
            if (checkpoints && !(act & ACT_CHECKPOINT) && run_checkpoint(s))
                return -1; /* the end of a run can be resumed with a later stop */
            break;
        }
    }
    s->t_loop = qv_now() - loop_start;
    /* The last generation always reaches validation, so no state goes unconsidered. */
    if (s->last_report != s->generation && report(s))
        return -1;
    return 0;
}

int run_all(run_state *s)
{
    if (run_setup(s))
        return -1;
    if (s->dry_run) {
        if (s->rank == 0)
            printf("qevo-island: configuration valid; wrote %s/config.json and %s/splits.json\n",
                   s->cfg.output.dir, s->cfg.output.dir);
        return 0;
    }
    double t0 = qv_now();
    s->float_val = run_score_float(s, &s->val);
    int8_t *baselines[2] = {s->nearest, s->start};
    fit_totals base[2];
    run_score_states(s, &s->val, baselines, 2, base);
    s->nearest_val = base[0];
    s->start_val = base[1];
    if (!s->resumed) {
        /* The start state is the best known until validation says more. */
        s->best_val = base[1];
        s->best_island = -1;
        for (int r = 0; r < s->nranks; r++)
            s->island_val[r] = s->start_val;
    }
    s->t_validation += qv_now() - t0;
    print_header(s);
    if (run_loop(s))
        return -1;
    if (s->interrupted) {
        if (s->rank == 0)
            printf("qevo-island: stopped by a signal at generation %d after writing a "
                   "checkpoint; run again to resume\n", s->generation);
        return 0;
    }
    return run_results(s);
}
