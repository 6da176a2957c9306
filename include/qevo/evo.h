/* evo: one island of the evolution strategy over quantization states. No MPI here:
 * island.c moves states between islands; this module breeds, scores and selects.
 *
 * A genome is an int8 code per weight over the net's flat weight space. Offspring are
 * scored on the island's fitness batch by running the network only from the first node
 * their changes touch, on the cut-node activations cached for their parent
 * (net_acts_create_cache); a memory bound limits how many parents keep a cache. */
#ifndef QEVO_EVO_H
#define QEVO_EVO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qevo/config.h"
#include "qevo/data.h"
#include "qevo/fitness.h"
#include "qevo/net.h"
#include "qevo/quant.h"
#include "qevo/rng.h"

/* Images prepared for scoring once: normalised inputs plus what the fitness needs. */
typedef struct {
    int count;
    float *x;        /* (count, C, H, W) normalised */
    int32_t *labels; /* (count), classifiers */
    float *teacher;  /* (count, classes) log-probabilities of the float model, classifiers */
    float *target;   /* (count, C*H*W) the images in [0, 1], autoencoders */
    double temperature; /* of the KL to the teacher */
    /* Feature term (fitness.features), or feat NULL: the float model's input of node
     * feat_node for each image, (count, feat_dim); an image's term is feat_weight times
     * its squared error. */
    float *feat;
    int feat_node, feat_dim;
    double feat_weight;
} evo_images;

/* Prepares images idx[0..count) of ds. The float teacher's outputs (log-probabilities at
 * `temperature`) are computed with the quantizer's reference weights; nt's weights are
 * restored afterwards. */
void evo_images_prepare(evo_images *im, const data_set *ds, const int *idx, int count,
                        net *nt, const quant *q, int eval_batch, double temperature);
/* Adds the feature term to prepared images: the float model's input of the last
 * conv/linear layer, and feat_weight = weight / (its mean squared norm over im). */
void evo_images_add_features(evo_images *im, net *nt, const quant *q, int eval_batch,
                             double weight);
void evo_images_free(evo_images *im);
/* dst = rows[0..count) of src (copies; src must outlive nothing). */
void evo_images_subset(evo_images *dst, const evo_images *src, const int *rows, int count,
                       const net *nt);

/* Scores the weights now in nt on all of im by full forward passes. If per_image is not
 * NULL it receives, per image, 1/0 for a correct/wrong label (classifiers) or the
 * image's mean squared error (autoencoders), for paired tests. */
fit_totals evo_score_weights(const net *nt, const evo_images *im, net_acts *work,
                             float *per_image);
/* The same for a code array (applied to nt first). */
fit_totals evo_score(net *nt, const quant *q, const int8_t *codes, const evo_images *im,
                     net_acts *work, float *per_image);

/* The selection key of a score under a fitness kind: lower is better, compared
 * lexicographically (accuracy is ranked by correct images, then cross-entropy). */
typedef struct {
    double k[2];
} evo_key;
evo_key evo_key_of(fit_kind kind, const fit_totals *t);
int evo_key_cmp(evo_key a, evo_key b);
/* The score in its natural unit: KL or cross-entropy (nats), accuracy (share), MSE,
 * PSNR (dB). */
double evo_value(fit_kind kind, const fit_totals *t);

/* A change of a genome: weight `idx` takes `code`. States travel between islands as
 * lists of changes from the start state. */
typedef struct {
    uint32_t idx;
    int8_t code;
} evo_change;
/* Writes the positions where codes differ from base (ascending); returns their count.
 * out must hold n entries (or be NULL to only count). */
size_t evo_diff(const int8_t *base, const int8_t *codes, size_t n, evo_change *out);
void evo_patch(int8_t *codes, const evo_change *changes, size_t count);

/* Per-weight facts the operators need: ratio w/s, its floor and the nearest code. */
typedef struct {
    size_t n;
    float *ratio;    /* w / s */
    int8_t *lo;      /* floor(w / s), clamped to the code range */
    int8_t *nearest; /* the nearest-rounding code */
    float *closeness; /* 1 at a rounding boundary (frac = 0.5), 0 on a state */
} evo_weights;
void evo_weights_init(evo_weights *w, const quant *q);
void evo_weights_free(evo_weights *w);

/* Mutation of `codes` in place by the configured operator, in one of the quantized
 * layers `layers` chosen with probabilities proportional to layer_weight (or over the
 * whole network with spread all_layers); writes the changed indices to changed
 * (capacity n) and returns their count (>= 1 unless no weight can move). Codes stay in
 * their code range and within max_shift of nearest. */
size_t evo_mutate(const config *c, const quant *q, const evo_weights *w, double rate,
                  const int *layers, const double *layer_weight, int nlayers, int8_t *codes,
                  uint32_t *changed, rng *r);
/* Uniform crossover where a and b differ: child starts as a; each differing position
 * takes b's code with probability 1/2. Returns the number of positions taken from b,
 * written to changed. */
size_t evo_crossover(const int8_t *a, const int8_t *b, size_t n, int8_t *child,
                     uint32_t *changed, rng *r);

/* One member of a population. */
typedef struct {
    int8_t *codes;
    fit_totals totals;
    evo_key key;
    int cache;      /* cache slot, or -1 */
    uint64_t id;    /* unique within the island, for logs */
    uint64_t born;  /* generation it was created */
    float *loss;    /* per-image loss on the batch (paired selection), when loss_valid */
    float *closs;   /* the same on the confirmation batch, when closs_valid */
    double *ferr;   /* per-image feature terms on the batch, when the batch has features */
    bool loss_valid, closs_valid;
} evo_member;

typedef struct {
    uint64_t evaluations;      /* offspring and migrants scored */
    uint64_t incremental;      /* of which resumed from a cached parent */
    uint64_t cache_builds;     /* full passes to give a parent a cache */
    uint64_t accepted;         /* offspring that entered the population */
    uint64_t migrants_in, migrants_accepted;
    double eval_seconds;
    double flops;              /* network FLOPs actually run */
} evo_stats;

typedef struct evo_island evo_island;

/* An island: population of config->evolution.population copies of `start`, scored on
 * `batch` (borrowed: must outlive the island or be replaced by evo_set_batch). Returns
 * NULL with a message if the configuration does not fit the model (unknown layer
 * names, ...). */
evo_island *evo_create(net *nt, const quant *q, const int8_t *start, const config *c,
                       const evo_images *batch, uint32_t island, qv_err *err);
void evo_free(evo_island *is);

/* Breeds, scores and selects one generation. */
void evo_generation(evo_island *is, uint32_t generation);
/* Replaces the fitness batch and re-scores the population. */
void evo_set_batch(evo_island *is, const evo_images *batch);
/* Sets the confirmation batch (borrowed, like the batch; none = count 0): with
 * evolution.significance, a candidate that wins its paired test on the batch must win
 * it again on these images. */
void evo_set_confirmation(evo_island *is, const evo_images *confirm);
/* Scores a migrant on this island's batch and lets it in by the policy (and, with
 * evolution.significance, only if it is significantly better than the member it would
 * replace, image by image); returns 1 if it replaced a member. */
int evo_import(evo_island *is, const int8_t *codes, migrate_policy policy);

/* The island's state (population with scores and ids, rate, counters) as bytes, for
 * checkpoints. Activation caches are not part of it: they are rebuilt on demand and
 * change only speed, never results. */
size_t evo_state_size(const evo_island *is);
void evo_state_write(const evo_island *is, unsigned char *buf);
/* Restores from one or more saved islands' states (several when a run resumes on fewer
 * ranks): the best `population` members of their union, best first, with the first
 * state's rate and the summed counters. Returns 0, or -1 if a state does not fit
 * (another model or population). */
/* Checks one saved state against this island's model before it is used: every length,
 * at least one member, every code within its weight's range. */
int evo_state_check(const evo_island *is, const unsigned char *buf, size_t len, qv_err *err);
int evo_state_read(evo_island *is, const unsigned char *const *bufs, const size_t *lens,
                   int count, qv_err *err);

int evo_size(const evo_island *is);
/* Members sorted best first. */
const evo_member *evo_member_at(const evo_island *is, int i);
const evo_stats *evo_get_stats(const evo_island *is);
double evo_rate(const evo_island *is);
/* Bytes of one cached parent, and how many parents the bound lets keep a cache. */
size_t evo_cache_bytes(const evo_island *is);
int evo_cache_slots(const evo_island *is);

#endif
