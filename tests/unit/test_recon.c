/* recon: the relative errors it reports equal the output errors of the layers computed
 * directly from forward passes; reconstructed codes stay in range and within max_shift;
 * the result is a local optimum (no single weight moved to another allowed state lowers
 * the layer's error); more images in one chunk or several gives the same codes; all of
 * this also for a transposed convolution; a layer with too many inputs is kept. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/recon.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_builder.h"
#include "test.h"

static char dir[64], path[128];

/* conv(1->4, stride 2)+relu, convtranspose(4->1, stride 2)+sigmoid. (1, 8, 8). */
static void build_autoencoder(void)
{
    model_builder mb;
    mb_init(&mb, 32);
    mb_tensor(&mb, "e.w", -0.5f, 0.5f, 4, 4, 1, 3, 3);
    mb_tensor(&mb, "e.b", -0.1f, 0.1f, 1, 4);
    mb_tensor(&mb, "d.w", -0.5f, 0.5f, 4, 4, 1, 3, 3);
    mb_tensor(&mb, "d.b", -0.1f, 0.1f, 1, 1);
    mb_layer(&mb, "{\"name\":\"e\",\"op\":\"conv2d\",\"weight\":\"e.w\",\"bias\":\"e.b\","
                  "\"stride\":2,\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"r\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"d\",\"op\":\"convtranspose2d\",\"weight\":\"d.w\",\"bias\":\"d.b\","
                  "\"stride\":2,\"padding\":1,\"output_padding\":1}");
    mb_layer(&mb, "{\"name\":\"s\",\"op\":\"sigmoid\"}");
    QV_ASSERT(mb_save(&mb, path, "reconstruct", 1, 8, 8) == 0);
}

/* conv(1->2, 3x3, padding 1), flatten, linear(2*64*33 -> 3): the linear layer has
 * 4224 > RECON_MAX_INPUTS inputs. (1, 64, 33). */
static void build_wide(void)
{
    model_builder mb;
    mb_init(&mb, 33);
    mb_tensor(&mb, "c.w", -0.5f, 0.5f, 4, 2, 1, 3, 3);
    mb_tensor(&mb, "fc.w", -0.05f, 0.05f, 2, 3, 2 * 64 * 33);
    mb_layer(&mb, "{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"c.w\",\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"f\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}");
    QV_ASSERT(mb_save(&mb, path, "classify", 1, 64, 33) == 0);
}

static void prepare(evo_images *im, const data_set *ds, net *nt, const quant *q)
{
    int *idx = qv_malloc(sizeof(int) * (size_t)ds->n);
    for (int i = 0; i < ds->n; i++)
        idx[i] = i;
    evo_images_prepare(im, ds, idx, ds->n, nt, q, ds->n, 1.0);
    free(idx);
}

/* The layer's pre-activation output without bias, y = W x, for the input x of node i in
 * the pass held by a (all images). */
static void layer_output(const net *nt, const net_acts *a, int i, const float *w, int n,
                         float *y)
{
    const net_node *nd = net_node_at(nt, i);
    QV_ASSERT(net_block_images(nt) >= n); /* one block holds every image */
    const float *x = net_node_input(nt, a, i, 0);
    if (nd->op == NET_LINEAR) {
        op_linear_ref(x, nd->p.conv.cin, n, w, NULL, nd->p.conv.cout, ACT_NONE, y);
        return;
    }
    op_dims in = nd->in;
    in.n = n;
    if (nd->op == NET_CONVT2D)
        op_convt2d_ref(x, in, &nd->p.conv, w, NULL, ACT_NONE, y);
    else
        op_conv2d_ref(x, in, &nd->p.conv, w, NULL, ACT_NONE, y);
}

/* ||Wq X~ - W X||^2 / ||W X||^2 of quantized layer l, with X~ from the pass aq (codes)
 * and X from the float pass af; layer_codes are the codes of layer l itself. */
static double relative_error(const net *nt, const quant *q, int l, const net_acts *aq,
                             const net_acts *af, const int8_t *layer_codes, int n)
{
    const quant_layer *ql = quant_layer_at(q, l);
    const net_node *nd = net_node_at(nt, ql->node);
    size_t count = (size_t)nd->out.c * nd->out.h * nd->out.w * (size_t)n;
    float *wq = qv_malloc(sizeof(float) * ql->wcount);
    for (size_t j = 0; j < ql->wcount; j++)
        wq[j] = layer_codes[j] * quant_scale_of(q)[ql->woff + j];
    float *y0 = qv_malloc(sizeof(float) * count), *y1 = qv_malloc(sizeof(float) * count);
    layer_output(nt, af, ql->node, quant_reference(q) + ql->woff, n, y0);
    layer_output(nt, aq, ql->node, wq, n, y1);
    double err = 0.0, norm = 0.0;
    for (size_t j = 0; j < count; j++) {
        err += ((double)y1[j] - y0[j]) * ((double)y1[j] - y0[j]);
        norm += (double)y0[j] * y0[j];
    }
    free(wq), free(y0), free(y1);
    return err / norm;
}

/* Checks reconstruction on the model at `path` with `images` random images. */
static void test_model(const char *what, int images)
{
    net *nt;
    qv_err err;
    QV_ASSERT(net_load(path, &nt, &err) == 0);
    quant_settings qs = {.bits = 3, .granularity = QUANT_PER_CHANNEL};
    quant *q = quant_create(nt, &qs);
    data_set *ds = mb_random_images(images, 8, 8, 19);
    evo_images im;
    prepare(&im, ds, nt, q);
    size_t n = quant_size(q);
    int layers = quant_layer_count(q);
    int8_t *nearest = qv_malloc(n), *codes = qv_malloc(n), *again = qv_malloc(n);
    quant_nearest(q, nearest);
    for (int shift = 1; shift <= 2; shift++) {
        memcpy(codes, nearest, n);
        recon_layer st[3];
        QV_ASSERT(layers <= 3);
        recon_run(nt, q, codes, &im, images, shift, 1000, NULL, st);
        int bad = 0;
        size_t moved = 0;
        for (size_t i = 0; i < n; i++) {
            bad += abs(codes[i] - nearest[i]) > shift || codes[i] > quant_hi_of(q)[i] ||
                   codes[i] < quant_lo_of(q)[i];
            moved += codes[i] != nearest[i];
        }
        CHECKF(bad == 0, "%s, max_shift %d: %d codes out of range or too far from nearest",
               what, shift, bad);
        size_t reported = 0;
        for (int l = 0; l < layers; l++)
            reported += st[l].changed;
        CHECK(moved == reported && moved > 0);

        /* Reported errors against direct computation: X~ from the reconstructed codes
         * (layer l's input depends only on earlier layers). */
        net_acts *af = net_acts_create(nt, ds->n), *aq = net_acts_create(nt, ds->n);
        memcpy(net_weights(nt), quant_reference(q), sizeof(float) * n);
        net_forward(nt, af, im.x, im.count);
        quant_apply(q, nt, codes);
        net_forward(nt, aq, im.x, im.count);
        for (int l = 0; l < layers; l++) {
            const quant_layer *ql = quant_layer_at(q, l);
            double before = relative_error(nt, q, l, aq, af, nearest + ql->woff, im.count);
            double after = relative_error(nt, q, l, aq, af, codes + ql->woff, im.count);
            CHECK(st[l].node == ql->node && st[l].sweeps < 1000);
            CHECK_NEAR(st[l].before, before, 1e-4);
            CHECK_NEAR(st[l].after, after, 1e-4);
            CHECKF(after < before, "%s layer %d: error %g not below nearest's %g", what, l, after,
                   before);

            /* Local optimum: no single weight moved to another allowed state helps. */
            int8_t *trial = qv_malloc(ql->wcount);
            memcpy(trial, codes + ql->woff, ql->wcount);
            int better = 0;
            for (size_t j = 0; j < ql->wcount; j++) {
                size_t i = ql->woff + j;
                for (int c = nearest[i] - shift; c <= nearest[i] + shift; c++) {
                    if (c == codes[i] || c > quant_hi_of(q)[i] || c < quant_lo_of(q)[i])
                        continue;
                    trial[j] = (int8_t)c;
                    better += relative_error(nt, q, l, aq, af, trial, im.count) <
                              after * (1 - 1e-6);
                    trial[j] = codes[i];
                }
            }
            CHECKF(better == 0, "%s layer %d: %d single moves lower the error further", what, l,
                   better);
            free(trial);
        }
        net_acts_free(af);
        net_acts_free(aq);

        /* Chunks of 7 images give the same Grams up to rounding, hence the same codes. */
        memcpy(again, nearest, n);
        recon_run(nt, q, again, &im, 7, shift, 1000, NULL, NULL);
        size_t differ = evo_diff(codes, again, n, NULL);
        CHECKF(differ == 0, "%s, max_shift %d: %zu codes differ between chunk sizes", what,
               shift, differ);
    }
    free(nearest), free(codes), free(again);
    evo_images_free(&im);
    data_free(ds);
    quant_free(q);
    net_free(nt);
}

static void test_wide(void)
{
    build_wide();
    net *nt;
    qv_err err;
    QV_ASSERT(net_load(path, &nt, &err) == 0);
    quant_settings qs = {.bits = 3, .granularity = QUANT_PER_CHANNEL};
    quant *q = quant_create(nt, &qs);
    data_set *ds = mb_random_images(4, 64, 33, 19);
    evo_images im;
    prepare(&im, ds, nt, q);
    size_t n = quant_size(q);
    int8_t *nearest = qv_malloc(n), *codes = qv_malloc(n);
    quant_nearest(q, nearest);
    memcpy(codes, nearest, n);
    recon_layer st[2];
    recon_run(nt, q, codes, &im, 4, 1, 100, NULL, st);
    const quant_layer *fc = quant_layer_at(q, 1);
    CHECK(!st[0].skipped && st[0].inputs == 9);
    CHECK(st[1].skipped && st[1].inputs == 2 * 64 * 33 && st[1].changed == 0);
    CHECK(memcmp(codes + fc->woff, nearest + fc->woff, fc->wcount) == 0);
    free(nearest), free(codes);
    evo_images_free(&im);
    data_free(ds);
    quant_free(q);
    net_free(nt);
}

int main(void)
{
    strcpy(dir, "/tmp/qevo-test-recon-XXXXXX");
    QV_ASSERT(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    mb_small_classifier(path, 31);
    test_model("classifier", 48);
    build_autoencoder();
    test_model("autoencoder", 16);
    test_wide();
    unlink(path);
    rmdir(dir);
    TEST_END("test_recon");
}
