#define _POSIX_C_SOURCE 200809L
#include "qevo/run.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/config.h"
#include "qevo/data.h"
#include "qevo/evo.h"
#include "qevo/island.h"
#include "qevo/net.h"
#include "qevo/quant.h"
#include "qevo/report.h"
#include "run_internal.h"

static volatile sig_atomic_t pending_signals;

static void on_signal(int sig)
{
    pending_signals |= sig == SIGUSR1 ? RUN_SIGNAL_CHECKPOINT : RUN_SIGNAL_STOP;
}

int run_take_signals(void)
{
    int s = pending_signals;
    pending_signals = 0;
    return s;
}

/* SIGTERM (a scheduler ending the job), SIGUSR2: checkpoint at the next generation
 * boundary and exit 0. SIGUSR1: checkpoint and go on. The handler only sets a flag. */
static void install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
}

static const char usage[] =
    "usage: qevo-island CONFIG.json [--set KEY=VALUE]... [--dry-run]\n"
    "       mpirun -n N qevo-island CONFIG.json\n"
    "\n"
    "Evolves the quantization state of a model on N islands (one per MPI rank) that\n"
    "exchange their best states, and reports what was gained on the held-out test split.\n"
    "A run resumes by itself from the newest valid checkpoint in its output folder.\n"
    "SIGTERM or SIGUSR2: checkpoint and exit 0; SIGUSR1: checkpoint and go on.\n"
    "\n"
    "  --set KEY=VALUE   override one configuration key, e.g. --set evolution.rate=0.001\n"
    "                    --set stop.generations=50 --set output.dir=runs/x\n"
    "  --resume DIR      resume from the newest valid checkpoint in DIR (a run's output\n"
    "                    folder, its checkpoints folder, or one checkpoint)\n"
    "  --dry-run         check the configuration, write the resolved config and the data\n"
    "                    splits to the output folder, and stop\n"
    "  --help-config     list every configuration key with its default\n";

/* ---- Setup ---- */

/* Parses the command line; returns 0, 1 on a usage error, 2 when done (help). */
static int parse_args(int argc, char **argv, run_state *s)
{
    s->overrides = qv_calloc((size_t)argc, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (s->rank == 0)
                fputs(usage, stdout);
            return 2;
        } else if (!strcmp(a, "--help-config")) {
            if (s->rank == 0)
                config_print_keys(stdout);
            return 2;
        } else if (!strcmp(a, "--set")) {
            if (i + 1 >= argc)
                return qv_fail(&s->err, "--set needs KEY=VALUE"), 1;
            s->overrides[s->noverrides++] = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            if (i + 1 >= argc)
                return qv_fail(&s->err, "--resume needs a folder"), 1;
            s->resume_dir = argv[++i];
        } else if (!strcmp(a, "--dry-run")) {
            s->dry_run = true;
        } else if (a[0] == '-') {
            return qv_fail(&s->err, "unknown option '%s' (qevo-island --help)", a), 1;
        } else if (!s->config_path) {
            s->config_path = a;
        } else {
            return qv_fail(&s->err, "unexpected argument '%s' (qevo-island --help)", a), 1;
        }
    }
    if (!s->config_path)
        return qv_fail(&s->err, "missing CONFIG.json\n%s", usage), 1;
    return 0;
}

/* Rank 0 reads and validates the configuration; every rank gets the resolved one. */
static int setup_config(run_state *s)
{
    qv_err local = {{0}};
    char *text = NULL;
    int rc = 0;
    if (s->rank == 0) {
        config c;
        rc = config_load(s->config_path, (const char *const *)s->overrides, s->noverrides, &c,
                         &local);
        if (rc == 0) {
            text = config_to_json(&c);
            config_free(&c);
        }
    }
    if (island_agree(rc, &local, &s->err))
        return -1;
    char *resolved = island_bcast_string(text);
    free(text);
    rc = config_parse(resolved, "resolved configuration", &s->cfg, &local);
    s->resolved = resolved;
    return island_agree(rc, &local, &s->err);
}

static int check_data(run_state *s, const data_set *ds, const char *key, qv_err *err)
{
    op_dims in = net_input_dims(s->nt);
    if (ds->c != in.c || ds->h != in.h || ds->w != in.w)
        return qv_fail(err, "%s: %s has images of (%d, %d, %d), the model expects (%d, %d, %d)",
                       key, ds->name, ds->c, ds->h, ds->w, in.c, in.h, in.w);
    if (net_get_task(s->nt) == NET_CLASSIFY && ds->classes > net_output_dims(s->nt).c)
        return qv_fail(err, "%s: %s has labels up to %d; the model has %d outputs", key,
                       ds->name, ds->classes - 1, net_output_dims(s->nt).c);
    return 0;
}

static int check_sizes(run_state *s, qv_err *err)
{
    const config *c = &s->cfg;
    bool classify = net_get_task(s->nt) == NET_CLASSIFY;
    fit_kind k = c->fitness.kind;
    if (classify && (k == FIT_MSE || k == FIT_PSNR))
        return qv_fail(err, "fitness.kind: \"%s\" scores reconstructions, but %s is a classifier "
                       "(use kl, cross_entropy or accuracy)", config_fit_name(k), c->model);
    if (c->fitness.features > 0 && (!classify || (k != FIT_KL && k != FIT_CROSS_ENTROPY)))
        return qv_fail(err, "fitness.features: the feature term is for classifiers scored by kl or "
                       "cross_entropy, found fitness.kind \"%s\" on %s", config_fit_name(k),
                       c->model);
    if (!classify && k != FIT_MSE && k != FIT_PSNR)
        return qv_fail(err, "fitness.kind: \"%s\" scores classifiers, but %s is an autoencoder "
                       "(use mse or psnr)", config_fit_name(k), c->model);
    if ((long long)c->data.fitness_size + c->data.validation_size > s->train->n)
        return qv_fail(err, "data.fitness_size (%d) + data.validation_size (%d) exceed the %d "
                       "images of %s", c->data.fitness_size, c->data.validation_size,
                       s->train->n, c->data.train);
    if (c->data.test_size > s->test->n)
        return qv_fail(err, "data.test_size: %d is more than the %d images of %s (0 = all of "
                       "them)", c->data.test_size, s->test->n, c->data.test);
    if (c->data.fitness_size < s->nranks)
        return qv_fail(err, "data.fitness_size: %d images cannot give each of %d islands a "
                       "shard", c->data.fitness_size, s->nranks);
    int smallest = c->data.fitness_size / s->nranks;
    if (c->data.fitness_batch > smallest)
        return qv_fail(err, "data.fitness_batch: %d is larger than the smallest island shard "
                       "(%d images = data.fitness_size / %d islands)", c->data.fitness_batch,
                       smallest, s->nranks);
    if (c->data.confirmation_batch &&
        (c->data.fitness_batch == 0 ||
         c->data.fitness_batch + c->data.confirmation_batch > smallest))
        return qv_fail(err, "data.confirmation_batch: the fitness batch (%d) and the "
                       "confirmation batch (%d) must both fit, disjoint, in the smallest island "
                       "shard (%d images = data.fitness_size / %d islands)",
                       c->data.fitness_batch, c->data.confirmation_batch, smallest, s->nranks);
    return 0;
}

/* Start state: nearest rounding, or the codes of `start`, each within max_shift. */
static int load_start(run_state *s, qv_err *err)
{
    size_t n = quant_size(s->q);
    s->nearest = qv_malloc(n ? n : 1);
    s->start = qv_malloc(n ? n : 1);
    quant_nearest(s->q, s->nearest);
    memcpy(s->start, s->nearest, n);
    if (!s->cfg.start[0])
        return 0;
    if (quant_load_codes(s->q, s->nt, s->cfg.start, s->start, err))
        return qv_wrap(err, "start");
    for (size_t i = 0; i < n; i++)
        if (abs(s->start[i] - s->nearest[i]) > s->cfg.evolution.max_shift) {
            int k = quant_layer_of(s->q, i);
            return qv_fail(err, "start: %s: layer '%s' has codes %d states from nearest "
                           "rounding, more than evolution.max_shift (%d)", s->cfg.start,
                           net_node_at(s->nt, quant_layer_at(s->q, k)->node)->name,
                           abs(s->start[i] - s->nearest[i]), s->cfg.evolution.max_shift);
        }
    return 0;
}

/* Fitness shard of this island and validation/test slices of this rank. */
static void make_splits(run_state *s)
{
    const config *c = &s->cfg;
    s->perm = data_permutation(s->train->n, c->seed);
    int first, count;
    data_shard_range(c->data.fitness_size, s->rank, s->nranks, &first, &count);
    s->shard = s->perm + first;
    s->shard_count = count;
    data_shard_range(c->data.validation_size, s->rank, s->nranks, &first, &count);
    s->val_idx = s->perm + c->data.fitness_size + first;
    s->val_count = count;
    int test_n = c->data.test_size ? c->data.test_size : s->test->n;
    data_shard_range(test_n, s->rank, s->nranks, &first, &count);
    s->test_idx = qv_malloc(sizeof(int) * (size_t)(count ? count : 1));
    for (int i = 0; i < count; i++)
        s->test_idx[i] = first + i;
    s->test_count = count;
}

void run_draw_batch(run_state *s, uint32_t draw, evo_images *im, evo_images *confirm)
{
    int b = s->cfg.data.fitness_batch, n = s->shard_count, cb = s->cfg.data.confirmation_batch;
    if (b == 0 || b > n)
        b = n;
    int *pick = qv_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        pick[i] = i;
    if (b < n) {
        rng r = rng_stream(s->cfg.seed, (uint32_t)s->rank, draw, RNG_BATCH);
        rng_shuffle(&r, pick, n);
    }
    /* The shard was prepared once (inputs and teacher outputs): a draw only copies rows.
     * The confirmation images follow the batch's in the same shuffle: disjoint from it. */
    evo_images_subset(im, &s->shard_im, pick, b, s->nt);
    evo_images_subset(confirm, &s->shard_im, pick + b, cb, s->nt);
    free(pick);
}

static int setup_model_and_data(run_state *s, qv_err *err)
{
    const config *c = &s->cfg;
    quant_settings qs = {.bits = c->quantizer.bits,
                         .granularity = (quant_granularity)c->quantizer.granularity,
                         .grid = (quant_grid)c->quantizer.grid,
                         .scales = (quant_scale_search)c->quantizer.scales,
                         .first_bits = c->quantizer.first_bits,
                         .last_bits = c->quantizer.last_bits};
    if (net_load(c->model, &s->nt, err))
        return qv_wrap(err, "model");
    if (data_load(c->data.train, &s->train, err))
        return qv_wrap(err, "data.train");
    if (data_load(c->data.test, &s->test, err))
        return qv_wrap(err, "data.test");
    if (check_data(s, s->train, "data.train", err) || check_data(s, s->test, "data.test", err) ||
        check_sizes(s, err))
        return -1;
    s->q = quant_create(s->nt, &qs);
    return load_start(s, err);
}

void run_describe_start(const run_state *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", s->cfg.start[0] ? s->cfg.start : "nearest",
             s->recon ? " + reconstruction" : "");
}

static void sum_over_islands(double *v, size_t count)
{
    QV_ASSERT(count <= INT_MAX);
    island_sum(v, (int)count);
}

/* reconstruction.sweeps: the start state becomes the layer-wise reconstruction of
 * `start`, on the whole fitness split (every shard), the same on every island. */
static void reconstruct_start(run_state *s)
{
    double t0 = qv_now();
    s->recon = qv_calloc((size_t)quant_layer_count(s->q), sizeof(recon_layer));
    recon_run(s->nt, s->q, s->start, &s->shard_im, s->cfg.data.eval_batch,
              s->cfg.evolution.max_shift, s->cfg.reconstruction.sweeps, sum_over_islands,
              s->recon);
    s->t_recon = qv_now() - t0;
}

static int setup_islands(run_state *s, qv_err *err)
{
    make_splits(s);
    evo_images_prepare(&s->shard_im, s->train, s->shard, s->shard_count, s->nt, s->q,
                       s->cfg.data.eval_batch, s->cfg.fitness.temperature);
    if (s->cfg.fitness.features > 0)
        evo_images_add_features(&s->shard_im, s->nt, s->q, s->cfg.data.eval_batch,
                                s->cfg.fitness.features);
    if (s->cfg.reconstruction.sweeps && !s->dry_run)
        reconstruct_start(s);
    run_draw_batch(s, 0, &s->batch, &s->confirm);
    /* Validation and test KL are reported at temperature 1, whatever the fitness uses. */
    evo_images_prepare(&s->val, s->train, s->val_idx, s->val_count, s->nt, s->q,
                       s->cfg.data.eval_batch, 1.0);
    evo_images_prepare(&s->test_im, s->test, s->test_idx, s->test_count, s->nt, s->q,
                       s->cfg.data.eval_batch, 1.0);
    s->work = net_acts_create(s->nt, s->cfg.data.eval_batch);
    s->is = evo_create(s->nt, s->q, s->start, &s->cfg, &s->batch, (uint32_t)s->rank, err);
    if (!s->is)
        return -1;
    evo_set_confirmation(s->is, &s->confirm);
    s->topo = island_topology_create(s->cfg.islands.topology, s->cfg.islands.degree,
                                     s->cfg.seed, err);
    if (!s->topo)
        return -1;
    s->best = qv_malloc(quant_size(s->q) ? quant_size(s->q) : 1);
    memcpy(s->best, s->start, quant_size(s->q));
    s->island_val = qv_calloc((size_t)s->nranks, sizeof(fit_totals));
    return 0;
}

void run_state_free(run_state *s)
{
    evo_free(s->is);
    island_topology_free(s->topo);
    evo_images_free(&s->batch);
    evo_images_free(&s->confirm);
    evo_images_free(&s->shard_im);
    evo_images_free(&s->val);
    evo_images_free(&s->test_im);
    net_acts_free(s->work);
    quant_free(s->q);
    net_free(s->nt);
    data_free(s->train);
    data_free(s->test);
    report_log_close(s->log);
    free(s->perm);
    free(s->test_idx);
    free(s->nearest);
    free(s->start);
    free(s->recon);
    free(s->best);
    free(s->overrides);
    free(s->resolved);
    free(s->island_val);
    free(s->mig_sender);
    free(s->mig_accepted);
    config_free(&s->cfg);
}

int run_island(int argc, char **argv)
{
    island_init(&argc, &argv);
    install_signal_handlers();
    run_state s = {0};
    s.rank = island_rank();
    s.nranks = island_count();
    s.t_start = qv_now();
    int rc = parse_args(argc, argv, &s);
    if (rc == 0)
        rc = run_all(&s) ? 1 : 0;
    else if (rc == 2)
        rc = 0;
    if (rc && s.rank == 0)
        fprintf(stderr, "qevo-island: %s\n", s.err.msg);
    run_state_free(&s);
    island_finalize();
    return rc;
}

int run_setup(run_state *s)
{
    if (setup_config(s))
        return -1;
    qv_err local = {{0}};
    int rc = setup_model_and_data(s, &local);
    if (island_agree(rc, &local, &s->err))
        return -1;
    rc = setup_islands(s, &local);
    if (island_agree(rc, &local, &s->err))
        return -1;
    if (!s->dry_run && run_resume(s))
        return -1;
    rc = s->rank == 0 ? run_write_setup_files(s, &local) : 0;
    if (island_agree(rc, &local, &s->err))
        return -1;
    s->t_setup = qv_now() - s->t_start;
    return 0;
}
