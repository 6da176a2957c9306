/* quant: uniform weight quantizers (2-8 bits, per tensor or per output channel,
 * symmetric or asymmetric grid, scales from the max or by an error search) over the flat
 * weight index space of a net, and quantized model files (docs/FORMAT.md, to the bit).
 *
 * A quantization state is an int8 code per weight (the genome of the optimizer); a
 * weight is always code * scale. The quantizer keeps the float reference weights, one
 * scale per weight (looked up through its channel), and one code range [lo, hi] per
 * weight, so operators work on single indices without knowing layers. */
#ifndef QEVO_QUANT_H
#define QEVO_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/net.h"
#include "qevo/util.h"

typedef enum { QUANT_PER_TENSOR, QUANT_PER_CHANNEL } quant_granularity;
/* symmetric: codes in [-qmax, qmax], 2^b - 1 states; asymmetric: all 2^b states with a
 * zero point per group. */
typedef enum { QUANT_SYMMETRIC, QUANT_ASYMMETRIC } quant_grid;
/* max: the scale covers the group's range; mse: the clipping ratio with the smallest
 * squared weight error, of 100 ratios 1.00 .. 0.01. */
typedef enum { QUANT_SCALE_MAX, QUANT_SCALE_MSE } quant_scale_search;

typedef struct {
    int bits;                     /* 2..8 */
    quant_granularity granularity;
    quant_grid grid;
    quant_scale_search scales;
    int first_bits;               /* bits of the first weighted layer; 0 = `bits` */
    int last_bits;                /* bits of the last weighted layer; 0 = `bits` */
} quant_settings;

/* Checks bits ranges; returns 0 or -1 with a message. */
int quant_settings_check(const quant_settings *s, qv_err *err);
const char *quant_granularity_name(quant_granularity g);
const char *quant_grid_name(quant_grid g);
const char *quant_scale_search_name(quant_scale_search s);

/* One quantized (weighted) node. */
typedef struct {
    int node;            /* net node index */
    size_t woff, wcount; /* range in the flat weight space */
    int bits;
    int channels;        /* number of scales: out channels, or 1 per tensor */
    float *scales;       /* (channels) */
    int8_t *code_min, *code_max; /* (channels) code range of each channel */
} quant_layer;

typedef struct quant quant;

/* A quantizer for every conv2d / convtranspose2d / linear node of nt, with scales and
 * code ranges from nt's current weights (docs/FORMAT.md), which it copies as the float
 * reference. */
quant *quant_create(const net *nt, const quant_settings *s);
void quant_free(quant *q);

size_t quant_size(const quant *q); /* number of weights = length of a code array */
int quant_layer_count(const quant *q);
const quant_layer *quant_layer_at(const quant *q, int i);
/* The quantized layer holding flat weight index idx. */
int quant_layer_of(const quant *q, size_t idx);

const float *quant_reference(const quant *q); /* float weights, (size) */
const float *quant_scale_of(const quant *q);  /* scale of each weight, (size) */
const int8_t *quant_lo_of(const quant *q);    /* smallest code of each weight, (size) */
const int8_t *quant_hi_of(const quant *q);    /* largest code of each weight, (size) */
/* Fails naming the first code outside its weight's [lo, hi], for codes read from files. */
int quant_check_codes(const quant *q, const int8_t *codes, qv_err *err);

/* Nearest rounding: clamp(rint(w / scale), lo, hi), ties to even, float32. */
int8_t quant_nearest_code(float w, float scale, int lo, int hi);

/* The scale and code range [*lo, *hi] of one group of weights w[0..n) (a channel or a
 * tensor, in the order FORMAT.md sums the search error in). */
void quant_group_grid(const float *w, size_t n, int bits, quant_grid grid,
                      quant_scale_search search, float *scale, int *lo, int *hi);
void quant_nearest(const quant *q, int8_t *codes);

/* Writes code * scale into the net's weights: all of them, or only listed indices. */
void quant_apply(const quant *q, net *nt, const int8_t *codes);
void quant_apply_at(const quant *q, net *nt, const int8_t *codes, const uint32_t *idx,
                    size_t count);

/* Reads the codes of a quantized model file (docs/FORMAT.md: written by qevo, by
 * scripts/adaround.py, ...) into codes (quant_size). The file must quantize the same
 * layers with the same bits and scales as q (same model and quantizer settings); codes
 * must be within the code range. Returns 0, or -1 with a message naming the file and
 * the layer. */
int quant_load_codes(const quant *q, const net *nt, const char *path, int8_t *codes,
                     qv_err *err);

/* Writes a quantized model (docs/FORMAT.md): the folded graph, dequantized weights,
 * biases, scales, int8 codes and the quantizer settings, atomically. */
int quant_save(const quant *q, const net *nt, const int8_t *codes, const char *path,
               const char *description, qv_err *err);

#endif
