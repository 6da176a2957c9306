/* Internal to the run module (run.c: setup; run_loop.c: generations and reports;
 * run_results.c: test scores and output files). */
#ifndef QEVO_RUN_INTERNAL_H
#define QEVO_RUN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "qevo/config.h"
#include "qevo/data.h"
#include "qevo/evo.h"
#include "qevo/island.h"
#include "qevo/net.h"
#include "qevo/quant.h"
#include "qevo/recon.h"
#include "qevo/report.h"

typedef struct {
    /* command line and configuration */
    int rank, nranks;
    const char *config_path;
    char **overrides;
    int noverrides;
    bool dry_run;
    qv_err err;
    config cfg;
    char *resolved;
    /* model, quantizer, states */
    net *nt;
    quant *q;
    int8_t *nearest, *start, *best;
    recon_layer *recon;       /* reconstruction.sweeps: per quantized layer, or NULL */
    /* data: the train permutation; this island's shard; this rank's slices */
    data_set *train, *test;
    int *perm;
    const int *shard, *val_idx;
    int *test_idx;
    int shard_count, val_count, test_count;
    evo_images shard_im;      /* this island's whole shard, prepared once */
    evo_images batch, confirm, val, test_im;
    uint32_t draws;
    net_acts *work;
    /* the island */
    evo_island *is;
    island_topology *topo;
    /* validation: baselines and the global best, chosen by validation only */
    fit_totals float_val, nearest_val, start_val, best_val;
    fit_totals *island_val;   /* last validation of each island's best */
    uint64_t validated_id;    /* id of this island's best when last validated */
    bool validated_once;
    bool have_best;
    int best_generation, best_island, stale_reports;
    /* migration: events of this island since the last report; totals */
    int *mig_sender, *mig_accepted, nmig, mig_cap;
    uint64_t states_sent, bytes_sent;
    island_async *async;      /* islands.mode "async" */
    /* progress */
    int generation, last_report;
    double last_report_time;
    double last_report_evals;
    report_log *log;
    /* checkpoints */
    const char *resume_dir;   /* --resume DIR, or NULL: look in output.dir/checkpoints */
    bool resumed;
    bool interrupted;         /* stopped by a signal after a checkpoint */
    double last_checkpoint_time;
    long long log_bytes;      /* log.jsonl length to resume at */
    /* time per phase */
    double t_start, t_setup, t_recon, t_migration, t_validation, t_test, t_redraw;
    double t_loop;            /* in the generation loop (this run's part) */
} run_state;

int run_all(run_state *s);
int run_setup(run_state *s);
int run_write_setup_files(run_state *s, qv_err *err);
void run_state_free(run_state *s);
/* Generations until a stop condition; returns 0, or -1 with s->err on every rank. */
int run_loop(run_state *s);
/* Test scores, result.json, best.safetensors, PNGs. */
int run_results(run_state *s);
/* Collective: writes a checkpoint of the current generation. */
int run_checkpoint(run_state *s);
/* Collective: resumes from the newest valid checkpoint (or --resume DIR) if there is
 * one; returns 0 (s->resumed tells whether), or -1 with s->err. */
int run_resume(run_state *s);
/* An island's checkpoint blob: this header, nmig (sender, accepted) int32 pairs, then
 * the evolution state (evo_state_write). */
typedef struct {
    uint32_t version, island;
    uint64_t generation;
    uint32_t draws, validated_once;
    uint64_t validated_id;
    uint64_t states_sent, bytes_sent;
    uint32_t nmig, pad;
} island_header;
typedef struct {
    island_header h;
    const unsigned char *events, *state; /* point into the blob */
    size_t state_len;
} island_blob;
/* Splits a blob into its parts, checking every length and count against the bytes there
 * are (CRC or not); `file` names it in messages. */
int island_blob_parse(const unsigned char *buf, size_t len, const char *file, island_blob *b,
                      qv_err *err);
/* Checks every field of a checkpoint's run.json that resuming reads, with its type and
 * range, before any is used; `dir` names the checkpoint in messages. Returns 0 or -1. */
struct json_t;
int check_run_json(struct json_t *j, const char *dir, qv_err *err);
/* Signals seen since the last call (SIGUSR1: checkpoint; SIGTERM, SIGUSR2: checkpoint
 * and stop). The handlers only set these bits. */
enum { RUN_SIGNAL_CHECKPOINT = 1, RUN_SIGNAL_STOP = 2 };
int run_take_signals(void);

/* Notes a migrant's arrival from `sender` for the next report. */
void record_migration_event(run_state *s, int sender, int accepted);
/* Collective: one synchronous migration. */
void run_migrate(run_state *s);
/* Asynchronous migration: sends this island's bests if `send`, and takes in whatever
 * has arrived; never waits. */
void run_migrate_async(run_state *s, bool send);
/* Collective: takes in every state still in flight. */
void run_migrate_async_finish(run_state *s);

/* The island's fitness batch number `draw`: the whole shard, or fitness_batch images
 * drawn from it by the seed. */
/* The fitness batch and the confirmation batch (data.confirmation_batch images, possibly
 * none) of draw `draw`, disjoint rows of this island's shard. */
void run_draw_batch(run_state *s, uint32_t draw, evo_images *im, evo_images *confirm);

/* Data-parallel scores on the validation (or test) slices: one sum over ranks. */
void run_score_states(run_state *s, const evo_images *im, int8_t *const *codes, int count,
                      fit_totals *totals);
/* The float model's totals on im, summed over ranks. */
fit_totals run_score_float(run_state *s, const evo_images *im);
/* "nearest", or the `start` file, plus " + reconstruction" when that stage ran. */
void run_describe_start(const run_state *s, char *buf, size_t cap);
/* Display of a score: "kl 0.1234 acc 0.9012" or "mse 0.0123 psnr 19.1". */
void run_format_score(const run_state *s, const fit_totals *t, char *buf, size_t cap);

#endif
