/* fitness: scores of a network's outputs: accuracy, cross-entropy, KL divergence to a
 * float teacher (needs no labels), MSE / PSNR for reconstructions.
 *
 * Scores are kept as sums (fit_totals), so that totals from batches, shards and ranks
 * add up to exactly the totals of the whole set. */
#ifndef QEVO_FITNESS_H
#define QEVO_FITNESS_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/data.h"
#include "qevo/net.h"

typedef struct {
    double images;
    double correct;  /* classify: correctly labelled images */
    double ce;       /* classify: summed cross-entropy, nats */
    double kl;       /* classify: summed KL(teacher || model), nats (teacher given) */
    double sq_err;   /* reconstruct: summed squared error */
    double values;   /* reconstruct: number of values compared */
    double feat;     /* classify: summed weighted feature error (fitness.features), 0 if off */
} fit_totals;

#define FIT_TOTALS_FIELDS 7 /* doubles in fit_totals, for MPI reductions */

void fit_add(fit_totals *acc, const fit_totals *t);

/* Adds n images' scores. logits: (n, classes). teacher_logp: the float teacher's
 * log-probabilities at temperature T (n, classes), or NULL; the KL is then taken between
 * the softmaxes of logits / T and scaled by T^2 (Hinton et al.'s distillation loss, so
 * that T > 1 also weighs the classes the teacher finds unlikely). */
void fit_classify(const float *logits, int n, int classes, const int32_t *labels,
                  const float *teacher_logp, double temperature, fit_totals *t);
/* Adds the squared error of `count` values of n images. */
void fit_reconstruct(const float *out, const float *target, size_t count, int n,
                     fit_totals *t);

/* Log-softmax of each row of logits / temperature (n, classes), computed in double. */
void fit_log_softmax(const float *logits, int n, int classes, double temperature, float *logp);

double fit_accuracy(const fit_totals *t);     /* correct / images */
double fit_mean_ce(const fit_totals *t);      /* ce / images */
double fit_mean_kl(const fit_totals *t);      /* kl / images */
double fit_mse(const fit_totals *t);          /* sq_err / values */
double fit_psnr(const fit_totals *t);         /* 10 log10(1 / mse), images in [0, 1] */

/* Runs the net over images idx[0..count) of ds in batches of the acts' size and adds
 * their scores to t. If outputs is not NULL it receives the (count, out) outputs. */
void fit_evaluate(const net *nt, net_acts *acts, const data_set *ds, const int *idx,
                  int count, fit_totals *t, float *outputs);

#endif
