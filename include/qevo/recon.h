/* recon: layer-wise reconstruction, the optional warm start of the optimizer.
 *
 * Before the evolution, each conv2d / convtranspose2d / linear layer in turn (first to last) gets the codes
 * that make its output closest to the float model's on the calibration images:
 *     minimise || Wq X~ - W X ||^2
 * where W, X are the layer's float weights and input in the float model and X~ its input
 * in the quantized model whose earlier layers are already reconstructed (the asymmetric
 * reconstruction objective of AdaRound, Nagel et al. 2020). The error is a quadratic
 * function of each output channel's weights with Gram matrices H = X~ X~^T, C = X~ X^T
 * and F = X X^T, so moving one weight to another state is scored in O(1) and applied in
 * O(K): greedy sweeps over a channel's weights give each one the best state within
 * max_shift of nearest rounding, until a sweep changes nothing. The evolution then
 * optimizes the end-to-end fitness, which no layer-wise error sees.
 *
 * The Grams are summed over all islands' shards by a caller-given reduction, so every
 * island computes the same start state. */
#ifndef QEVO_RECON_H
#define QEVO_RECON_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/evo.h"
#include "qevo/net.h"
#include "qevo/quant.h"

/* Layers with more inputs per output channel than this keep their codes: their three
 * K x K Grams (doubles) would take more than 384 MiB. */
#define RECON_MAX_INPUTS 4096

/* Adds v (count doubles) over all islands, in place, identically on every island. */
typedef void (*recon_sum_fn)(double *v, size_t count);

typedef struct {
    int node;             /* net node of the layer */
    int inputs;           /* K: weights per output channel */
    int skipped;          /* K > RECON_MAX_INPUTS: codes kept as they were */
    double before, after; /* relative output error ||Wq X~ - W X||^2 / ||W X||^2 */
    size_t changed;       /* codes moved by this stage */
    int sweeps;           /* sweeps run (the last one changed nothing, or max_sweeps) */
} recon_layer;

/* Reconstructs codes (quant_size entries, changed in place) layer by layer on the images
 * of im (x only), eval_batch at a time; codes stay within max_shift of nearest rounding
 * and in the code range. sum: the reduction over islands, NULL for a single island.
 * layers: quant_layer_count(q) entries of statistics, or NULL. On return nt's weights
 * hold the reconstructed codes. */
void recon_run(net *nt, const quant *q, int8_t *codes, const evo_images *im, int eval_batch,
               int max_shift, int max_sweeps, recon_sum_fn sum, recon_layer *layers);

#endif
