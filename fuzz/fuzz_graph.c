/* graph: net_load on arbitrary model files (safetensors + qevo.graph), then, for a net
 * that loads and is small enough to run quickly:
 *   - a full forward pass of two images (net_forward) and its output (net_output);
 *   - a pass resumed at a node (net_forward_from) from full storage and from cut-node
 *     storage (net_acts_create_cache + net_acts_copy), which net.h promises equals the
 *     full pass bit for bit;
 *   - nearest-rounding quantization, quant_save, and reading that file back: it must
 *     load as a net, and quant_load_codes must return the codes that were saved.
 * The last input byte picks the node to resume from, the quantizer and the image values. */
#include "fuzz.h"

#include <cblas.h>
#include <math.h>

#include "qevo/net.h"
#include "qevo/quant.h"

/* Work per image above which a loaded net is not run: a model may legitimately ask for
 * a 65536-wide pooling window, but running it tells nothing new and takes seconds. */
#define MAX_WORK 4e6
#define MAX_FLOATS ((size_t)1 << 20)
#define IMAGES 2

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    openblas_set_num_threads(1);
    return 0;
}

static size_t numel(op_dims d)
{
    return (size_t)d.c * (size_t)d.h * (size_t)d.w;
}

/* Floats stored and multiply-adds done per image, estimated from the node shapes. */
static int small_enough(const net *nt)
{
    double work = 0;
    size_t floats = numel(net_input_dims(nt));
    for (int i = 0; i < net_node_count(nt); i++) {
        const net_node *nd = net_node_at(nt, i);
        size_t in = numel(nd->in), out = numel(nd->out);
        floats += out;
        work += nd->flops + (double)in + (double)out;
        if (nd->op == NET_MAXPOOL || nd->op == NET_AVGPOOL)
            work += (double)out * nd->p.pool.kh * nd->p.pool.kw;
        if (nd->op == NET_CONV2D || nd->op == NET_CONVT2D) /* im2col / col2im */
            work += (double)nd->p.conv.cin * nd->p.conv.kh * nd->p.conv.kw *
                    (nd->op == NET_CONV2D ? (double)nd->out.h * nd->out.w
                                          : (double)nd->in.h * nd->in.w);
        if (work > MAX_WORK || floats > MAX_FLOATS)
            return 0;
    }
    return 1;
}

static void run(net *nt, uint8_t seed)
{
    op_dims in = net_input_dims(nt), out = net_output_dims(nt);
    size_t nin = numel(in) * IMAGES, nout = numel(out) * IMAGES;
    float *x = malloc(sizeof(float) * nin);
    float *y = malloc(sizeof(float) * nout), *y2 = malloc(sizeof(float) * nout);
    FUZZ_CHECK(x && y && y2);
    uint32_t s = 2654435761u * (seed + 1u);
    for (size_t i = 0; i < nin; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)(s >> 8) / (float)(1u << 24) * 4.0f - 2.0f;
    }
    net_acts *a = net_acts_create(nt, IMAGES);
    FUZZ_CHECK(net_acts_batch(a) == IMAGES && net_acts_bytes(a) > 0);
    net_forward(nt, a, x, IMAGES);
    net_output(nt, a, IMAGES, y);
    volatile float sink = 0;
    for (size_t i = 0; i < nout; i++)
        sink += y[i];
    (void)sink;

    int count = net_node_count(nt);
    int first = count ? seed % count : 0;
    /* From full storage, into other full storage. */
    net_acts *b = net_acts_create(nt, IMAGES);
    net_forward_from(nt, first, a, b, IMAGES);
    net_output(nt, b, IMAGES, y2);
    FUZZ_CHECK(!memcmp(y, y2, sizeof(float) * nout));
    /* From cut-node storage, at the node a pass must restart from. */
    net_acts *c = net_acts_create_cache(nt, IMAGES);
    net_acts_copy(nt, a, c, 0, count, IMAGES);
    int r = net_resume_node(nt, first);
    FUZZ_CHECK(r >= 0 && r <= first && (r == 0 || net_is_cut(nt, r - 1)));
    memset(y2, 0, sizeof(float) * nout);
    net_forward_from(nt, r, c, b, IMAGES);
    net_output(nt, b, IMAGES, y2);
    FUZZ_CHECK(!memcmp(y, y2, sizeof(float) * nout));
    net_acts_free(c);
    net_acts_free(b);
    net_acts_free(a);
    free(x);
    free(y);
    free(y2);
}

/* A quantized model written by qevo reads back: as a net, and as the same codes. */
static void quantize(const net *nt, uint8_t seed)
{
    quant_settings qs = {.bits = 2 + seed % 7,
                         .granularity = (seed >> 3) & 1 ? QUANT_PER_CHANNEL : QUANT_PER_TENSOR,
                         .grid = (seed >> 4) & 1 ? QUANT_ASYMMETRIC : QUANT_SYMMETRIC,
                         .scales = QUANT_SCALE_MAX,
                         .first_bits = (seed >> 5) & 1 ? 8 : 0,
                         .last_bits = (seed >> 6) & 1 ? 8 : 0};
    qv_err err;
    FUZZ_CHECK(quant_settings_check(&qs, &err) == 0);
    quant *q = quant_create(nt, &qs);
    size_t n = quant_size(q);
    int8_t *codes = malloc(n ? n : 1), *back = malloc(n ? n : 1);
    FUZZ_CHECK(codes && back);
    quant_nearest(q, codes);
    FUZZ_CHECK(quant_check_codes(q, codes, &err) == 0);
    /* net_load takes weights up to 2^126, for which scales and code * scale stay finite. */
    const float *w = net_weights_const(nt), *scale = quant_scale_of(q);
    float amax = 0;
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(isfinite(scale[i]) && scale[i] > 0);
        FUZZ_CHECK(isfinite((float)codes[i] * scale[i]));
        amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
    }
    /* The asymmetric grid's zero point can put code * scale up to a third of the range
     * above the largest weight: beyond 0.75 * 2^126 the quantized file may hold weights
     * net_load refuses (with a message). Below 2^125 it must read back. */
    if (amax > 0x1p125f) {
        free(codes);
        free(back);
        quant_free(q);
        return;
    }
    char path[600];
    fuzz_path(path, sizeof path, "quantized.safetensors");
    FUZZ_CHECK(quant_save(q, nt, codes, path, "fuzz", &err) == 0);
    net *again;
    if (net_load(path, &again, &err) != 0) {
        fprintf(stderr, "fuzz: a model quant_save wrote does not load: %s\n", err.msg);
        abort();
    }
    FUZZ_CHECK(net_weight_count(again) == n);
    net_free(again);
    memset(back, 0, n ? n : 1);
    if (quant_load_codes(q, nt, path, back, &err) != 0) {
        fprintf(stderr, "fuzz: quant_load_codes refuses what quant_save wrote: %s\n", err.msg);
        abort();
    }
    FUZZ_CHECK(!memcmp(codes, back, n));
    unlink(path);
    free(codes);
    free(back);
    quant_free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_path(path, sizeof path, "model.safetensors");
    fuzz_write(path, data, size);
    net *nt;
    qv_err err;
    int rc = net_load(path, &nt, &err);
    fuzz_note("net_load", rc, err.msg);
    if (rc == 0) {
        op_dims in = net_input_dims(nt), out = net_output_dims(nt);
        FUZZ_CHECK(in.c >= 1 && in.h >= 1 && in.w >= 1);
        FUZZ_CHECK(out.c >= 1 && out.h >= 1 && out.w >= 1);
        FUZZ_CHECK(net_node_count(nt) >= 1);
        for (int i = 0; i < net_node_count(nt); i++) {
            const net_node *nd = net_node_at(nt, i);
            FUZZ_CHECK(nd->name && net_find(nt, nd->name) == i);
            FUZZ_CHECK(nd->woff + nd->wcount <= net_weight_count(nt));
        }
        const float *mean = net_mean(nt), *sd = net_std(nt);
        volatile float sink = 0;
        for (int ch = 0; ch < in.c; ch++)
            sink += mean[ch] + sd[ch];
        (void)sink;
        (void)net_description(nt);
        (void)net_get_task(nt);
        (void)net_flops(nt);
        char *g = net_folded_graph_json(nt);
        FUZZ_CHECK(g);
        free(g);
        fuzz_note("forward pass", small_enough(nt) ? 0 : -1, "skipped: too large to run");
        if (small_enough(nt)) {
            run(nt, size ? data[size - 1] : 0);
            quantize(nt, size ? data[size - 1] : 0);
        }
        net_free(nt);
    }
    unlink(path);
    return 0;
}
