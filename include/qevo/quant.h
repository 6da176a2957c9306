/* quant: symmetric uniform weight quantizers (2-8 bits, per tensor or per output
 * channel) over the flat weight index space of a net, and quantized model files.
 *
 * A quantization state is an int8 code per weight (the genome of the optimizer). The
 * quantizer keeps the float reference weights, one scale per weight (looked up through
 * its channel), and one code range per weight, so operators work on single indices
 * without knowing layers. */
#ifndef QEVO_QUANT_H
#define QEVO_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/net.h"
#include "qevo/util.h"

typedef enum { QUANT_PER_TENSOR, QUANT_PER_CHANNEL } quant_granularity;

typedef struct {
    int bits;                     /* 2..8 */
    quant_granularity granularity;
    int first_bits;               /* bits of the first weighted layer; 0 = `bits` */
    int last_bits;                /* bits of the last weighted layer; 0 = `bits` */
} quant_settings;

/* Checks bits ranges; returns 0 or -1 with a message. */
int quant_settings_check(const quant_settings *s, qv_err *err);
const char *quant_granularity_name(quant_granularity g);

/* One quantized (weighted) node. */
typedef struct {
    int node;            /* net node index */
    size_t woff, wcount; /* range in the flat weight space */
    int bits, qmax;      /* codes in [-qmax, qmax] */
    int channels;        /* number of scales: out channels, or 1 per tensor */
    float *scales;       /* (channels) */
} quant_layer;

typedef struct quant quant;

/* A quantizer for every conv2d / convtranspose2d / linear node of nt, with scales from
 * nt's current weights, which it copies as the float reference:
 * scale = max|W| / qmax (1 where max|W| = 0). */
quant *quant_create(const net *nt, const quant_settings *s);
void quant_free(quant *q);

const quant_settings *quant_get_settings(const quant *q);
size_t quant_size(const quant *q); /* number of weights = length of a code array */
int quant_layer_count(const quant *q);
const quant_layer *quant_layer_at(const quant *q, int i);
/* The quantized layer holding flat weight index idx. */
int quant_layer_of(const quant *q, size_t idx);

const float *quant_reference(const quant *q); /* float weights, (size) */
const float *quant_scale_of(const quant *q);  /* scale of each weight, (size) */
const int8_t *quant_qmax_of(const quant *q);  /* qmax of each weight, (size) */

/* Nearest rounding: clamp(rint(w / scale), -qmax, qmax), ties to even, float32. */
int8_t quant_nearest_code(float w, float scale, int qmax);
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
