/* net: a graph using every op against a hand-composed reference (batch-norm applied
 * unfolded), incremental evaluation (forward_from) against full passes bit for bit, and
 * broken graphs, each rejected with a message naming the file and the layer. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/net.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_builder.h"
#include "qevo/ops.h"
#include "qevo/quant.h"
#include "test.h"

static char dir[64], path[128];

/* Input (3, 9, 9). Covers conv+bn+relu, strided conv+bn, option-A shortcut, add+relu,
 * maxpool, a standalone relu, avgpool, convtranspose+sigmoid, flatten, linear. */
static void build_all_ops(const char *file, uint64_t seed)
{
    model_builder mb;
    mb_init(&mb, seed);
    mb_tensor(&mb, "c1.w", -0.5f, 0.5f, 4, 4, 3, 3, 3);
    mb_tensor(&mb, "c1.b", -0.1f, 0.1f, 1, 4);
    mb_tensor(&mb, "bn1.g", 0.5f, 1.5f, 1, 4);
    mb_tensor(&mb, "bn1.b", -0.2f, 0.2f, 1, 4);
    mb_tensor(&mb, "bn1.m", -0.2f, 0.2f, 1, 4);
    mb_tensor(&mb, "bn1.v", 0.5f, 2.0f, 1, 4);
    mb_tensor(&mb, "c2.w", -0.5f, 0.5f, 4, 6, 4, 3, 3);
    mb_tensor(&mb, "bn2.g", 0.5f, 1.5f, 1, 6);
    mb_tensor(&mb, "bn2.b", -0.2f, 0.2f, 1, 6);
    mb_tensor(&mb, "bn2.m", -0.2f, 0.2f, 1, 6);
    mb_tensor(&mb, "bn2.v", 0.5f, 2.0f, 1, 6);
    mb_tensor(&mb, "ct.w", -0.5f, 0.5f, 4, 6, 2, 3, 3);
    mb_tensor(&mb, "ct.b", -0.1f, 0.1f, 1, 2);
    mb_tensor(&mb, "fc.w", -0.2f, 0.2f, 2, 10, 128);
    mb_tensor(&mb, "fc.b", -0.1f, 0.1f, 1, 10);
    mb_layer(&mb, "{\"name\":\"c1\",\"op\":\"conv2d\",\"weight\":\"c1.w\",\"bias\":\"c1.b\","
                  "\"stride\":[1,1],\"padding\":[1,1]}");
    mb_layer(&mb, "{\"name\":\"bn1\",\"op\":\"batchnorm\",\"weight\":\"bn1.g\",\"bias\":\"bn1.b\","
                  "\"mean\":\"bn1.m\",\"var\":\"bn1.v\",\"eps\":1e-5}");
    mb_layer(&mb, "{\"name\":\"relu1\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c2\",\"op\":\"conv2d\",\"weight\":\"c2.w\",\"bias\":null,"
                  "\"stride\":[2,2],\"padding\":[1,1]}");
    mb_layer(&mb, "{\"name\":\"bn2\",\"op\":\"batchnorm\",\"weight\":\"bn2.g\",\"bias\":\"bn2.b\","
                  "\"mean\":\"bn2.m\",\"var\":\"bn2.v\",\"eps\":1e-3}");
    mb_layer(&mb, "{\"name\":\"sub\",\"op\":\"subsample\",\"inputs\":[\"relu1\"],\"stride\":[2,2]}");
    mb_layer(&mb, "{\"name\":\"pad\",\"op\":\"pad_channels\",\"before\":1,\"after\":1}");
    mb_layer(&mb, "{\"name\":\"add\",\"op\":\"add\",\"inputs\":[\"bn2\",\"pad\"]}");
    mb_layer(&mb, "{\"name\":\"relu2\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"mp\",\"op\":\"maxpool\",\"kernel\":[3,3],\"stride\":[1,1],"
                  "\"padding\":[1,1]}");
    mb_layer(&mb, "{\"name\":\"relu3\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"ap\",\"op\":\"avgpool\",\"kernel\":[2,2],\"stride\":[1,1],"
                  "\"padding\":[0,0]}");
    mb_layer(&mb, "{\"name\":\"ct\",\"op\":\"convtranspose2d\",\"weight\":\"ct.w\",\"bias\":\"ct.b\","
                  "\"stride\":[2,2],\"padding\":[1,1],\"output_padding\":[1,1]}");
    mb_layer(&mb, "{\"name\":\"sig\",\"op\":\"sigmoid\"}");
    mb_layer(&mb, "{\"name\":\"flat\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\",\"bias\":\"fc.b\"}");
    CHECK(mb_save(&mb, file, "classify", 3, 9, 9) == 0);
}

static float *alloc_f(size_t n)
{
    return qv_calloc(n ? n : 1, sizeof(float));
}

/* Unfolded batch-norm on a CNHW tensor, in double. */
static void bn_ref(float *x, op_dims d, const float *g, const float *b, const float *m,
                   const float *v, double eps)
{
    size_t per = (size_t)d.n * d.h * d.w;
    for (int c = 0; c < d.c; c++)
        for (size_t i = 0; i < per; i++) {
            double y = (x[c * per + i] - m[c]) / sqrt(v[c] + eps) * g[c] + b[c];
            x[c * per + i] = (float)y;
        }
}

static const float *tensor(const st_file *f, const char *name)
{
    return st_find(f, name)->data;
}

/* The same graph composed by hand from the _ref kernels. x: (n, 3, 9, 9) NCHW. */
static void reference_forward(const char *file, const float *x, int n, float *logits)
{
    st_file *f;
    QV_ASSERT(st_open(file, &f, NULL) == 0);
    op_dims d0 = {3, n, 9, 9};
    float *in = alloc_f(3 * 81 * (size_t)n);
    op_nchw_to_cnhw(x, d0, in);
    op_conv p1 = {3, 4, 3, 3, 1, 1, 1, 1, 0, 0};
    op_dims d1 = op_conv2d_out(d0, &p1);
    float *a1 = alloc_f(4 * 81 * (size_t)n);
    op_conv2d_ref(in, d0, &p1, tensor(f, "c1.w"), tensor(f, "c1.b"), ACT_NONE, a1);
    bn_ref(a1, d1, tensor(f, "bn1.g"), tensor(f, "bn1.b"), tensor(f, "bn1.m"), tensor(f, "bn1.v"),
           1e-5);
    op_activate_ref(a1, 4 * 81 * (size_t)n, ACT_RELU);
    op_conv p2 = {4, 6, 3, 3, 2, 2, 1, 1, 0, 0};
    op_dims d2 = op_conv2d_out(d1, &p2); /* (6, n, 5, 5) */
    float *a2 = alloc_f(6 * 25 * (size_t)n);
    op_conv2d_ref(a1, d1, &p2, tensor(f, "c2.w"), NULL, ACT_NONE, a2);
    bn_ref(a2, d2, tensor(f, "bn2.g"), tensor(f, "bn2.b"), tensor(f, "bn2.m"), tensor(f, "bn2.v"),
           1e-3);
    float *sub = alloc_f(4 * 25 * (size_t)n), *pad = alloc_f(6 * 25 * (size_t)n);
    op_subsample_ref(a1, d1, 2, 2, sub);
    op_pad_channels_ref(sub, (op_dims){4, n, 5, 5}, 1, 1, pad);
    float *sum = alloc_f(6 * 25 * (size_t)n), *mp = alloc_f(6 * 25 * (size_t)n);
    op_add_ref(a2, pad, 6 * 25 * (size_t)n, ACT_RELU, sum);
    op_pool mpp = {3, 3, 1, 1, 1, 1}, app = {2, 2, 1, 1, 0, 0};
    op_maxpool_ref(sum, d2, &mpp, mp);
    op_activate_ref(mp, 6 * 25 * (size_t)n, ACT_RELU);
    float *ap = alloc_f(6 * 16 * (size_t)n);
    op_avgpool_ref(mp, d2, &app, ap);
    op_conv pt = {6, 2, 3, 3, 2, 2, 1, 1, 1, 1};
    op_dims d3 = {6, n, 4, 4};
    float *ct = alloc_f(2 * 64 * (size_t)n), *flat = alloc_f(2 * 64 * (size_t)n);
    op_convt2d_ref(ap, d3, &pt, tensor(f, "ct.w"), tensor(f, "ct.b"), ACT_SIGMOID, ct);
    op_flatten_ref(ct, (op_dims){2, n, 8, 8}, flat);
    float *out = alloc_f(10 * (size_t)n);
    op_linear_ref(flat, 128, n, tensor(f, "fc.w"), tensor(f, "fc.b"), 10, ACT_NONE, out);
    op_cnhw_to_nchw(out, (op_dims){10, n, 1, 1}, logits);
    free(in), free(a1), free(a2), free(sub), free(pad), free(sum), free(mp), free(ap);
    free(ct), free(flat), free(out);
    st_close(f);
}

/* Output of a fresh full pass of n images: (n, nout). */
static void full_output(const net *nt, net_acts *a, const float *x, int n, float *y)
{
    net_forward(nt, a, x, n);
    net_output(nt, a, n, y);
}

/* Incremental evaluation: change one weight of node k, recompute from k, compare with a
 * full pass bit for bit; also in place (out == cached). For every node k. */
static void check_forward_from(net *nt, const float *x, int n, int nout)
{
    net_acts *a = net_acts_create(nt, n), *child = net_acts_create(nt, n);
    net_acts *full = net_acts_create(nt, n);
    float *yc = alloc_f((size_t)nout * n), *yf = alloc_f((size_t)nout * n);
    for (int k = 0; k < net_node_count(nt); k++) {
        const net_node *nd = net_node_at(nt, k);
        net_forward(nt, a, x, n); /* parent state */
        float *w = net_weights(nt) + nd->woff;
        float saved = nd->wcount ? w[nd->wcount / 2] : 0;
        if (nd->wcount)
            w[nd->wcount / 2] += 0.25f;
        net_forward_from(nt, k, a, child, n);
        full_output(nt, full, x, n, yf);
        net_output(nt, child, n, yc);
        CHECKF(memcmp(yc, yf, sizeof(float) * nout * (size_t)n) == 0,
               "forward_from(%d) differs from a full pass", k);
        net_forward_from(nt, k, a, a, n);
        net_output(nt, a, n, yc);
        CHECKF(memcmp(yc, yf, sizeof(float) * nout * (size_t)n) == 0,
               "in-place forward_from(%d) differs from a full pass", k);
        if (nd->wcount)
            w[nd->wcount / 2] = saved;
    }
    free(yc), free(yf);
    net_acts_free(a), net_acts_free(child), net_acts_free(full);
}

/* Cache-only storage: resuming at net_resume_node from the cache equals a full pass, bit
 * for bit, for a change in every node. */
static void check_cache_resume(net *nt, const float *x, int n, int nout)
{
    net_acts *full = net_acts_create(nt, n), *child = net_acts_create(nt, n);
    net_acts *cache = net_acts_create_cache(nt, n);
    CHECK(net_acts_bytes(cache) < net_acts_bytes(full));
    float *yc = alloc_f((size_t)nout * n), *yf = alloc_f((size_t)nout * n);
    for (int k = 0; k < net_node_count(nt); k++) {
        const net_node *nd = net_node_at(nt, k);
        net_forward(nt, full, x, n);
        net_acts_copy(nt, full, cache, 0, net_node_count(nt), n);
        float *w = net_weights(nt) + nd->woff;
        float saved = nd->wcount ? w[0] : 0;
        if (nd->wcount)
            w[0] -= 0.5f;
        net_forward_from(nt, net_resume_node(nt, k), cache, child, n);
        full_output(nt, full, x, n, yf);
        net_output(nt, child, n, yc);
        CHECKF(memcmp(yc, yf, sizeof(float) * nout * (size_t)n) == 0,
               "resume at %d from the cache differs from a full pass", k);
        if (nd->wcount)
            w[0] = saved;
    }
    free(yc), free(yf);
    net_acts_free(cache), net_acts_free(full), net_acts_free(child);
}

/* max |y - yr| <= tol * max(1, max |yr|) */
static void check_close(const float *y, const float *yr, size_t count, double tol,
                        const char *what)
{
    double worst = 0, scale = 0;
    for (size_t i = 0; i < count; i++) {
        worst = fmax(worst, fabs(y[i] - yr[i]));
        scale = fmax(scale, fabs(yr[i]));
    }
    CHECKF(worst <= tol * fmax(scale, 1.0), "%s: max diff %g (scale %g)", what, worst, scale);
}

static float *random_images(int n, int per, uint64_t seed)
{
    float *x = alloc_f((size_t)per * n);
    rng r = rng_stream(seed, 0, 0, RNG_TEST);
    for (size_t i = 0; i < (size_t)per * n; i++)
        x[i] = (float)rng_normal(&r);
    return x;
}

static void test_all_ops(void)
{
    build_all_ops(path, 7);
    net *nt;
    qv_err err;
    int rc = net_load(path, &nt, &err);
    CHECKF(rc == 0, "load: %s", err.msg);
    if (rc)
        return;
    /* Folding and fusion: c1+bn1+relu1, c2+bn2, sub, pad, add+relu2, mp, relu3, ap,
     * ct+sig, flat, fc. */
    CHECK(net_node_count(nt) == 11);
    const net_node *c1 = net_node_at(nt, 0);
    CHECK(!strcmp(c1->name, "c1") && c1->bn_name && !strcmp(c1->bn_name, "bn1") &&
          c1->act == ACT_RELU);
    CHECK(net_node_at(nt, 1)->bn_name && net_node_at(nt, 1)->act == ACT_NONE);
    CHECK(net_node_at(nt, 4)->op == NET_ADD && net_node_at(nt, 4)->act == ACT_RELU);
    CHECK(net_node_at(nt, 6)->op == NET_RELU);
    CHECK(net_find(nt, "relu2") == 4 && net_find(nt, "bn2") == 1 && net_find(nt, "nope") < 0);
    CHECK(net_weight_count(nt) == 4 * 27 + 6 * 36 + 6 * 18 + 1280);
    /* A few images (one block of the depth-first pass) and many (several blocks, the
     * last one partial). */
    const int sizes[2] = {5, 150};
    for (int t = 0; t < 2; t++) {
        int n = sizes[t];
        float *x = random_images(n, 3 * 81, 3), *y = alloc_f(10 * (size_t)n);
        float *yr = alloc_f(10 * (size_t)n);
        net_acts *a = net_acts_create(nt, n + 3);
        full_output(nt, a, x, n, y);
        reference_forward(path, x, n, yr);
        check_close(y, yr, 10 * (size_t)n, 1e-5, "forward vs reference");
        net_acts_free(a);
        check_forward_from(nt, x, n, 10);
        check_cache_resume(nt, x, n, 10);
        free(x), free(y), free(yr);
    }

    /* Folded graph: batch-norm folded away, the fused activations back as layers. */
    char *g = net_folded_graph_json(nt);
    CHECK(strstr(g, "batchnorm") == NULL && strstr(g, "\"relu1\"") != NULL);
    free(g);

    /* Cache-only storage keeps the cut nodes: c1, add and everything after it. */
    const bool want_cut[11] = {1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
    for (int k = 0; k < 11; k++)
        CHECKF(net_is_cut(nt, k) == want_cut[k], "node %d cut %d", k, net_is_cut(nt, k));
    CHECK(net_resume_node(nt, 0) == 0 && net_resume_node(nt, 3) == 1 &&
          net_resume_node(nt, 5) == 5);
    net_free(nt);
}

/* Input (2, 8, 8). Two residual blocks: an identity shortcut (the add fuses into c2, the
 * conv before it) and a conv shortcut computed after the block's second conv (the add
 * fuses into the shortcut conv, with c4's output as the residual). */
static void build_residual(const char *file, uint64_t seed)
{
    model_builder mb;
    mb_init(&mb, seed);
    mb_tensor(&mb, "c0.w", -0.5f, 0.5f, 4, 4, 2, 3, 3);
    mb_tensor(&mb, "c1.w", -0.3f, 0.3f, 4, 4, 4, 3, 3);
    mb_tensor(&mb, "c2.w", -0.3f, 0.3f, 4, 4, 4, 3, 3);
    mb_tensor(&mb, "c3.w", -0.3f, 0.3f, 4, 6, 4, 3, 3);
    mb_tensor(&mb, "c3.b", -0.1f, 0.1f, 1, 6);
    mb_tensor(&mb, "c4.w", -0.3f, 0.3f, 4, 6, 6, 3, 3);
    mb_tensor(&mb, "c4.b", -0.1f, 0.1f, 1, 6);
    mb_tensor(&mb, "sc.w", -0.5f, 0.5f, 4, 6, 4, 1, 1);
    const char *bns[4] = {"bn0", "bn1", "bn2", "bnsc"};
    const int bnc[4] = {4, 4, 4, 6};
    char name[32];
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "%s.g", bns[k]);
        mb_tensor(&mb, name, 0.5f, 1.5f, 1, bnc[k]);
        snprintf(name, sizeof name, "%s.b", bns[k]);
        mb_tensor(&mb, name, -0.2f, 0.2f, 1, bnc[k]);
        snprintf(name, sizeof name, "%s.m", bns[k]);
        mb_tensor(&mb, name, -0.2f, 0.2f, 1, bnc[k]);
        snprintf(name, sizeof name, "%s.v", bns[k]);
        mb_tensor(&mb, name, 0.5f, 2.0f, 1, bnc[k]);
    }
    mb_tensor(&mb, "fc.w", -0.5f, 0.5f, 2, 10, 6);
    mb_tensor(&mb, "fc.b", -0.1f, 0.1f, 1, 10);
#define BN(n) "{\"name\":\"" n "\",\"op\":\"batchnorm\",\"weight\":\"" n ".g\",\"bias\":\"" n \
              ".b\",\"mean\":\"" n ".m\",\"var\":\"" n ".v\",\"eps\":1e-5}"
    mb_layer(&mb, "{\"name\":\"c0\",\"op\":\"conv2d\",\"weight\":\"c0.w\",\"padding\":1}");
    mb_layer(&mb, BN("bn0"));
    mb_layer(&mb, "{\"name\":\"relu0\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c1\",\"op\":\"conv2d\",\"weight\":\"c1.w\",\"padding\":1}");
    mb_layer(&mb, BN("bn1"));
    mb_layer(&mb, "{\"name\":\"relu1\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c2\",\"op\":\"conv2d\",\"weight\":\"c2.w\",\"padding\":1}");
    mb_layer(&mb, BN("bn2"));
    mb_layer(&mb, "{\"name\":\"add1\",\"op\":\"add\",\"inputs\":[\"bn2\",\"relu0\"]}");
    mb_layer(&mb, "{\"name\":\"relu2\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c3\",\"op\":\"conv2d\",\"weight\":\"c3.w\",\"bias\":\"c3.b\","
                  "\"stride\":2,\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"relu3\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"c4\",\"op\":\"conv2d\",\"weight\":\"c4.w\",\"bias\":\"c4.b\","
                  "\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"sc\",\"op\":\"conv2d\",\"inputs\":[\"relu2\"],\"weight\":\"sc.w\","
                  "\"stride\":2}");
    mb_layer(&mb, BN("bnsc"));
    mb_layer(&mb, "{\"name\":\"add2\",\"op\":\"add\",\"inputs\":[\"c4\",\"bnsc\"]}");
    mb_layer(&mb, "{\"name\":\"relu4\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"gap\",\"op\":\"global_avgpool\"}");
    mb_layer(&mb, "{\"name\":\"flat\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\",\"bias\":\"fc.b\"}");
#undef BN
    CHECK(mb_save(&mb, file, "classify", 2, 8, 8) == 0);
}

/* conv + unfolded batch-norm (in double) with the _ref kernels: (cout, n, oh, ow). */
static float *conv_bn_ref(const st_file *f, const float *x, op_dims d, const op_conv *p,
                          const char *conv, const char *bias, const char *bn)
{
    op_dims o = op_conv2d_out(d, p);
    float *y = alloc_f((size_t)o.c * o.n * o.h * o.w);
    char w[32], g[32], b[32], m[32], v[32];
    snprintf(w, sizeof w, "%s.w", conv);
    op_conv2d_ref(x, d, p, tensor(f, w), bias ? tensor(f, bias) : NULL, ACT_NONE, y);
    if (bn) {
        snprintf(g, sizeof g, "%s.g", bn), snprintf(b, sizeof b, "%s.b", bn);
        snprintf(m, sizeof m, "%s.m", bn), snprintf(v, sizeof v, "%s.v", bn);
        bn_ref(y, o, tensor(f, g), tensor(f, b), tensor(f, m), tensor(f, v), 1e-5);
    }
    return y;
}

/* build_residual's graph composed by hand from the _ref kernels. x: (n, 2, 8, 8). */
static void residual_reference(const char *file, const float *x, int n, float *logits)
{
    st_file *f;
    QV_ASSERT(st_open(file, &f, NULL) == 0);
    op_dims d0 = {2, n, 8, 8}, d4 = {4, n, 8, 8}, d6 = {6, n, 4, 4};
    size_t n4 = 4 * 64 * (size_t)n, n6 = 6 * 16 * (size_t)n;
    float *in = alloc_f(2 * 64 * (size_t)n);
    op_nchw_to_cnhw(x, d0, in);
    op_conv p0 = {2, 4, 3, 3, 1, 1, 1, 1, 0, 0}, p1 = {4, 4, 3, 3, 1, 1, 1, 1, 0, 0};
    op_conv p3 = {4, 6, 3, 3, 2, 2, 1, 1, 0, 0}, p4 = {6, 6, 3, 3, 1, 1, 1, 1, 0, 0};
    op_conv psc = {4, 6, 1, 1, 2, 2, 0, 0, 0, 0};
    float *a0 = conv_bn_ref(f, in, d0, &p0, "c0", NULL, "bn0");
    op_activate_ref(a0, n4, ACT_RELU);
    float *a1 = conv_bn_ref(f, a0, d4, &p1, "c1", NULL, "bn1");
    op_activate_ref(a1, n4, ACT_RELU);
    float *a2 = conv_bn_ref(f, a1, d4, &p1, "c2", NULL, "bn2");
    op_add_ref(a2, a0, n4, ACT_RELU, a2);
    float *a3 = conv_bn_ref(f, a2, d4, &p3, "c3", "c3.b", NULL);
    op_activate_ref(a3, n6, ACT_RELU);
    float *a4 = conv_bn_ref(f, a3, d6, &p4, "c4", "c4.b", NULL);
    float *sc = conv_bn_ref(f, a2, d4, &psc, "sc", NULL, "bnsc");
    op_add_ref(a4, sc, n6, ACT_RELU, a4);
    float *gap = alloc_f(6 * (size_t)n), *out = alloc_f(10 * (size_t)n);
    op_global_avgpool_ref(a4, d6, gap);
    op_linear_ref(gap, 6, n, tensor(f, "fc.w"), tensor(f, "fc.b"), 10, ACT_NONE, out);
    op_cnhw_to_nchw(out, (op_dims){10, n, 1, 1}, logits);
    free(in), free(a0), free(a1), free(a2), free(a3), free(a4), free(sc), free(gap), free(out);
    st_close(f);
}

/* Writes nt's folded graph with its folded weights as a model file. */
static void save_folded(net *nt, const char *file)
{
    st_writer *w = st_writer_create();
    char name[256];
    for (int i = 0; i < net_node_count(nt); i++) {
        const net_node *nd = net_node_at(nt, i);
        if (!nd->wcount)
            continue;
        int64_t shape[4], bshape[1] = {nd->out.c};
        for (int k = 0; k < nd->wndim; k++)
            shape[k] = nd->wshape[k];
        snprintf(name, sizeof name, "%s.weight", nd->name);
        st_writer_add(w, name, ST_F32, nd->wndim, shape, net_weights(nt) + nd->woff);
        snprintf(name, sizeof name, "%s.bias", nd->name);
        if (nd->has_bias)
            st_writer_add(w, name, ST_F32, 1, bshape, net_biases(nt) + nd->boff);
    }
    char *g = net_folded_graph_json(nt);
    st_writer_meta(w, "qevo.graph", g);
    free(g);
    QV_ASSERT(st_writer_save(w, file, NULL) == 0);
    st_writer_free(w);
}

static void test_fused_add(void)
{
    build_residual(path, 11);
    net *nt;
    qv_err err;
    int rc = net_load(path, &nt, &err);
    CHECKF(rc == 0, "load: %s", err.msg);
    if (rc)
        return;
    /* c0+bn0+relu0, c1+bn1+relu1, c2+bn2+add1+relu2, c3+relu3, c4, sc+bnsc+add2+relu4,
     * gap, flat, fc. */
    CHECK(net_node_count(nt) == 9);
    const net_node *c2 = net_node_at(nt, 2), *sc = net_node_at(nt, 5);
    CHECK(!strcmp(c2->name, "c2") && c2->add_name && !strcmp(c2->add_name, "add1") &&
          c2->act == ACT_RELU && c2->ninputs == 2 && c2->inputs[0] == 1 &&
          c2->inputs[1] == 0 && c2->add_slot == 0);
    CHECK(!strcmp(sc->name, "sc") && sc->add_name && !strcmp(sc->add_name, "add2") &&
          sc->act == ACT_RELU && sc->ninputs == 2 && sc->inputs[0] == 2 &&
          sc->inputs[1] == 4 && sc->add_slot == 1 && sc->wcount == 24);
    CHECK(net_node_at(nt, 4)->add_name == NULL && net_node_at(nt, 4)->act == ACT_NONE);
    CHECK(net_find(nt, "add1") == 2 && net_find(nt, "add2") == 5 && net_find(nt, "relu4") == 5);
    /* Cuts: after c0 nothing reads the input, after c2 nothing reads c0 or c1, ... */
    const bool want_cut[9] = {1, 0, 1, 0, 0, 1, 1, 1, 1};
    for (int k = 0; k < 9; k++)
        CHECKF(net_is_cut(nt, k) == want_cut[k], "residual node %d cut %d", k,
               net_is_cut(nt, k));

    int n = 150;
    float *x = random_images(n, 2 * 64, 5), *y = alloc_f(10 * (size_t)n);
    float *yr = alloc_f(10 * (size_t)n);
    net_acts *a = net_acts_create(nt, n);
    full_output(nt, a, x, n, y);
    residual_reference(path, x, n, yr);
    check_close(y, yr, 10 * (size_t)n, 1e-5, "fused add: forward vs reference");
    check_forward_from(nt, x, n, 10);
    check_cache_resume(nt, x, n, 10);

    /* The folded graph writes each add back as its own layer, inputs in the file's order;
     * reloading it fuses the same way and computes the same outputs, bit for bit. */
    char *g = net_folded_graph_json(nt);
    CHECK(strstr(g, "{\"name\":\"add1\",\"op\":\"add\",\"inputs\":[\"c2\",\"relu0\"]}") &&
          strstr(g, "{\"name\":\"add2\",\"op\":\"add\",\"inputs\":[\"c4\",\"sc\"]}") &&
          strstr(g, "{\"name\":\"relu4\",\"op\":\"relu\",\"inputs\":[\"add2\"]}") &&
          strstr(g, "{\"name\":\"gap\",\"op\":\"global_avgpool\",\"inputs\":[\"relu4\"]}"));
    free(g);
    char folded[160];
    snprintf(folded, sizeof folded, "%s/folded.safetensors", dir);
    save_folded(nt, folded);
    net *nt2 = NULL;
    rc = net_load(folded, &nt2, &err);
    CHECKF(rc == 0, "folded graph does not load: %s", rc ? err.msg : "");
    if (rc == 0) {
        CHECK(net_node_count(nt2) == 9 && net_node_at(nt2, 5)->add_name &&
              net_node_at(nt2, 5)->add_slot == 1);
        float *y2 = alloc_f(10 * (size_t)n);
        net_acts *a2 = net_acts_create(nt2, n);
        full_output(nt2, a2, x, n, y2);
        CHECK(memcmp(y, y2, sizeof(float) * 10 * (size_t)n) == 0);
        net_acts_free(a2);
        free(y2);
        net_free(nt2);
    }
    unlink(folded);
    net_acts_free(a);
    free(x), free(y), free(yr);
    net_free(nt);
}

/* A broken variant of a small valid graph: `layers` replaces the graph's layers. */
/* Writes the small graph with the given layers; returns net_load's status. */
static int load_variant(const char *layers_json, const char *task, qv_err *err)
{
    model_builder mb;
    mb_init(&mb, 1);
    mb_tensor(&mb, "c.w", -1, 1, 4, 4, 1, 3, 3);
    mb_tensor(&mb, "c.b", -1, 1, 1, 4);
    mb_tensor(&mb, "bn.g", 0.5f, 1, 1, 4);
    mb_tensor(&mb, "bn.b", 0, 1, 1, 4);
    mb_tensor(&mb, "bn.m", 0, 1, 1, 4);
    mb_tensor(&mb, "bn.v", 0.5f, 1, 1, 4);
    mb_tensor(&mb, "fc.w", -1, 1, 2, 10, 4);
    mb_tensor(&mb, "fc.w3", -1, 1, 3, 10, 4, 1);
    json_error_t e;
    json_t *layers = json_loads(layers_json, 0, &e);
    QV_ASSERT(layers);
    size_t i;
    json_t *l;
    json_array_foreach(layers, i, l) {
        char *s = json_dumps(l, JSON_COMPACT);
        mb_layer(&mb, s);
        free(s);
    }
    json_decref(layers);
    QV_ASSERT(mb_save(&mb, path, task, 1, 6, 6) == 0);
    net *nt = NULL;
    int rc = net_load(path, &nt, err);
    net_free(nt);
    return rc;
}

static void expect_bad(const char *layers_json, const char *task, const char *want,
                       const char *why)
{
    qv_err err = {{0}};
    int rc = load_variant(layers_json, task, &err);
    CHECKF(rc != 0, "%s: loaded, but should fail", why);
    CHECKF(rc != 0 && strstr(err.msg, path) && strstr(err.msg, want),
           "%s: message '%s' should name the file and contain '%s'", why, err.msg, want);
}

#define CONV "{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"c.w\",\"stride\":1,\"padding\":1}"
#define GAP_FC "{\"name\":\"g\",\"op\":\"global_avgpool\"},{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}"

static void test_bad_graphs(void)
{
    qv_err err;
    CHECKF(load_variant("[" CONV "," GAP_FC "]", "classify", &err) == 0,
           "the valid base graph must load: %s", err.msg);
    expect_bad("[" CONV ",{\"name\":\"x\",\"op\":\"gelu\"}," GAP_FC "]", "classify",
               "'x'): unknown op 'gelu'", "unknown op");
    expect_bad("[{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"nope\"}," GAP_FC "]", "classify",
               "missing tensor 'nope'", "missing tensor");
    expect_bad("[{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"fc.w\"}," GAP_FC "]", "classify",
               "('c')", "2-D weight for conv2d");
    expect_bad("[" CONV ",{\"name\":\"g\",\"op\":\"global_avgpool\"},{\"name\":\"fc\",\"op\":"
               "\"linear\",\"weight\":\"fc.w3\"}]", "classify", "('fc')", "3-D linear weight");
    expect_bad("[" CONV ",{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}]", "classify",
               "add a flatten layer", "linear on a 4x6x6 input");
    expect_bad("[" CONV ",{\"name\":\"a\",\"op\":\"add\",\"inputs\":[\"c\",\"input\"]}," GAP_FC
               "]", "classify", "different shapes", "add of (4,6,6) and (1,6,6)");
    expect_bad("[" CONV ",{\"name\":\"a\",\"op\":\"add\",\"inputs\":[\"c\",\"later\"]}," GAP_FC
               "]", "classify", "'later' is not an earlier layer", "forward reference");
    expect_bad("[" CONV ",{\"name\":\"r\",\"op\":\"relu\"},{\"name\":\"bn\",\"op\":\"batchnorm\","
               "\"weight\":\"bn.g\",\"bias\":\"bn.b\",\"mean\":\"bn.m\",\"var\":\"bn.v\",\"eps\":"
               "1e-5}," GAP_FC "]", "classify", "batchnorm must directly follow",
               "batchnorm after relu");
    expect_bad("[" CONV ",{\"name\":\"c\",\"op\":\"relu\"}," GAP_FC "]", "classify",
               "used twice", "duplicate name");
    expect_bad("[{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"c.w\",\"stride\":0}," GAP_FC "]",
               "classify", "'stride'", "stride 0");
    expect_bad("[{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"c.w\",\"padding\":1,\"dilation\":2},"
               GAP_FC "]", "classify", "unknown field 'dilation'", "dilation");
    expect_bad("[" CONV ",{\"name\":\"m\",\"op\":\"maxpool\",\"kernel\":9,\"stride\":1}," GAP_FC "]",
               "classify", "does not fit", "pool kernel larger than the input");
    expect_bad("[" CONV ",{\"name\":\"dead\",\"op\":\"relu\",\"inputs\":[\"input\"]},"
               "{\"name\":\"g\",\"op\":\"global_avgpool\",\"inputs\":[\"c\"]},"
               "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}]",
               "classify", "never used", "unused layer");
    expect_bad("[" CONV "]", "classify", "classifier's output", "classifier ending in a conv");
    expect_bad("[" CONV "," GAP_FC "]", "reconstruct", "input's shape", "autoencoder shape");
    expect_bad("[" CONV "," GAP_FC "]", "segment", "'task'", "unknown task");
    expect_bad("[]", "classify", "non-empty list", "no layers");
}

/* conv (weights uniform in [w_lo, w_hi]) [+ batchnorm of constant gamma and var, eps]
 * + global pool + linear. Returns net_load's status; *out gets the net if it loads (and
 * out is not NULL). */
static int load_extreme(float w_lo, float w_hi, int bn, float gamma, float var, const char *eps,
                        net **out, qv_err *err)
{
    model_builder mb;
    mb_init(&mb, 2);
    mb_tensor(&mb, "c.w", w_lo, w_hi, 4, 4, 1, 3, 3);
    mb_tensor(&mb, "bn.g", gamma, gamma, 1, 4);
    mb_tensor(&mb, "bn.b", 0, 0, 1, 4);
    mb_tensor(&mb, "bn.m", 0, 0, 1, 4);
    mb_tensor(&mb, "bn.v", var, var, 1, 4);
    mb_tensor(&mb, "fc.w", -1, 1, 2, 10, 4);
    mb_layer(&mb, CONV);
    if (bn) {
        char layer[256];
        snprintf(layer, sizeof layer, "{\"name\":\"bn\",\"op\":\"batchnorm\",\"weight\":\"bn.g\","
                 "\"bias\":\"bn.b\",\"mean\":\"bn.m\",\"var\":\"bn.v\",\"eps\":%s}", eps);
        mb_layer(&mb, layer);
    }
    mb_layer(&mb, "{\"name\":\"g\",\"op\":\"global_avgpool\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}");
    QV_ASSERT(mb_save(&mb, path, "classify", 1, 6, 6) == 0);
    net *nt = NULL;
    int rc = net_load(path, &nt, err);
    if (out)
        *out = nt;
    else
        net_free(nt);
    return rc;
}

/* Weights that are finite in the file but not once batch-norm is folded in (found by the
 * graph fuzzer: quantizing them converted NaN to int8), and weights too large to
 * quantize in float32 ((max - min) / levels overflowed to inf, so qevo wrote quantized
 * files it refused to read): net_load refuses both, naming the layer. Weights up to
 * 2^126 load, and every quantizer keeps their scales and codes * scales finite. */
static void test_extreme_weights(void)
{
    qv_err err = {{0}};
    /* gamma / sqrt(var + eps) = 1e30 / 1e-15 overflows float32: folded weights are inf. */
    int rc = load_extreme(0.5f, 0.5f, 1, 1e30f, 0.0f, "1e-30", NULL, &err);
    CHECKF(rc != 0 && strstr(err.msg, path) && strstr(err.msg, "'bn'") &&
               strstr(err.msg, "not finite"),
           "batchnorm folding to inf: rc %d, '%s'", rc, rc ? err.msg : "");
    /* Zero weights times an infinite factor: NaN. */
    rc = load_extreme(0.0f, 0.0f, 1, 1e30f, 0.0f, "1e-30", NULL, &err);
    CHECKF(rc != 0 && strstr(err.msg, "'bn'") && strstr(err.msg, "not finite"),
           "batchnorm folding to NaN: rc %d, '%s'", rc, rc ? err.msg : "");
    /* Finite in the file, beyond 2^126. */
    rc = load_extreme(-1.5e38f, 1.5e38f, 0, 1, 1, "0", NULL, &err);
    CHECKF(rc != 0 && strstr(err.msg, path) && strstr(err.msg, "layer 'c'") &&
               strstr(err.msg, "2^126"),
           "weights of 1.5e38: rc %d, '%s'", rc, rc ? err.msg : "");
    net *nt = NULL;
    rc = load_extreme(-0x1p126f, 0x1p126f, 0, 1, 1, "0", &nt, &err);
    CHECKF(rc == 0, "weights up to 2^126 must load: %s", err.msg);
    if (rc != 0)
        return;
    int bad = 0;
    for (int bits = 2; bits <= 8; bits++)
        for (int k = 0; k < 8; k++) {
            quant_settings qs = {.bits = bits,
                                 .granularity = k & 1 ? QUANT_PER_CHANNEL : QUANT_PER_TENSOR,
                                 .grid = k & 2 ? QUANT_ASYMMETRIC : QUANT_SYMMETRIC,
                                 .scales = k & 4 ? QUANT_SCALE_MSE : QUANT_SCALE_MAX};
            quant *q = quant_create(nt, &qs);
            size_t n = quant_size(q);
            int8_t *codes = qv_malloc(n);
            quant_nearest(q, codes);
            const int8_t *lo = quant_lo_of(q), *hi = quant_hi_of(q);
            for (size_t i = 0; i < n; i++)
                for (int c = lo[i]; c <= hi[i]; c++)
                    bad += !isfinite(quant_scale_of(q)[i]) ||
                           !isfinite((float)c * quant_scale_of(q)[i]);
            free(codes);
            quant_free(q);
        }
    CHECKF(bad == 0, "%d non-finite scales or dequantized weights at 2^126", bad);
    net_free(nt);
}

static void write_with_graph(const char *graph)
{
    st_writer *w = st_writer_create();
    if (graph)
        st_writer_meta(w, "qevo.graph", graph);
    QV_ASSERT(st_writer_save(w, path, NULL) == 0);
    st_writer_free(w);
}

static void test_bad_headers(void)
{
    static const struct {
        const char *graph, *want;
    } cases[] = {
        {NULL, "no qevo.graph"},
        {"{\"version\": 1, ", "invalid JSON"},
        {"{\"version\": 2}", "'version' must be 1"},
        {"{\"version\": 1, \"task\": \"classify\", \"input\": {\"shape\": [1, 0, 28]}}",
         "input.shape[1]"},
        {"{\"version\": 1, \"task\": \"classify\", \"input\": {\"shape\": [1, 28, 28], \"mean\": "
         "[0], \"std\": [0]}}", "input.std[0] must be a positive number"},
        {"{\"version\": 1, \"task\": \"classify\", \"input\": {\"shape\": [2, 28, 28], \"mean\": "
         "[0], \"std\": [1]}}", "input.mean must be a list of 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_with_graph(cases[i].graph);
        net *nt = NULL;
        qv_err err = {{0}};
        int rc = net_load(path, &nt, &err);
        CHECKF(rc != 0 && strstr(err.msg, path) && strstr(err.msg, cases[i].want),
               "header case %zu: got '%s', want '%s'", i, err.msg, cases[i].want);
        net_free(nt);
    }
    net *nt = NULL;
    qv_err err;
    CHECK(net_load("/nonexistent/model.safetensors", &nt, &err) != 0 &&
          strstr(err.msg, "/nonexistent/model.safetensors"));
}

int main(void)
{
    strcpy(dir, "/tmp/qevo-test-net-XXXXXX");
    QV_ASSERT(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    test_all_ops();
    test_fused_add();
    test_bad_graphs();
    test_bad_headers();
    test_extreme_weights();
    unlink(path);
    rmdir(dir);
    TEST_END("test_net");
}
