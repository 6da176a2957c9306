/* Every fast kernel against its naive twin on random shapes: odd sizes, stride 2,
 * padding, 1x1 convs, chunked and unchunked batches. */
#include <stdlib.h>
#include <string.h>

#include "qevo/ops.h"
#include "qevo/rng.h"
#include "qevo/util.h"
#include "test.h"

static rng r;

static float *random_buf(size_t n)
{
    float *p = qv_malloc_aligned(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(rng_uniform(&r) * 2.0 - 1.0);
    return p;
}

static int rand_in(int lo, int hi)
{
    return lo + (int)rng_below(&r, (uint32_t)(hi - lo + 1));
}

static size_t numel(op_dims d)
{
    return (size_t)d.c * d.n * d.h * d.w;
}

/* Largest |a-b| relative to max(1, max|b|). */
static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double worst = 0.0, scale = 1.0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst / scale;
}

static op_conv random_conv(int cin, int transpose)
{
    op_conv p = {0};
    p.cin = cin;
    p.cout = rand_in(1, 19);
    p.kh = rand_in(1, 5);
    p.kw = rand_in(1, 5);
    p.sh = rand_in(1, 3);
    p.sw = rand_in(1, 3);
    p.ph = rand_in(0, p.kh - 1);
    p.pw = rand_in(0, p.kw - 1);
    if (transpose) {
        p.oph = rand_in(0, p.sh - 1);
        p.opw = rand_in(0, p.sw - 1);
    }
    return p;
}

/* op_conv2d and op_conv2d_add against their references, on the direct kernel (where the
 * CPU and shape allow it) and on im2col + sgemm. */
static void test_conv2d(int trial)
{
    op_dims in = {rand_in(1, 9), rand_in(1, 5), rand_in(1, 17), rand_in(1, 17)};
    op_conv p = random_conv(in.c, 0);
    if (trial % 5 == 0) /* pointwise path */
        p.kh = p.kw = p.sh = p.sw = 1, p.ph = p.pw = 0;
    if (trial % 5 == 1) /* "same" convs: the common case, wide images span several tiles */
        in.w = rand_in(1, 80), p.sh = p.sw = 1, p.kh = p.kw = 1 + 2 * rand_in(0, 2),
        p.ph = p.pw = p.kh / 2;
    if (trial % 7 == 0) /* many images: several chunks */
        in.n = 300, in.h = in.w = 30, in.c = p.cin = 3, p.kh = p.kw = 5, p.sh = p.sw = 1,
        p.ph = p.pw = 2;
    if (trial % 11 == 3) /* 14 x 14, 16 channels: the direct kernel's 8-channel tiles */
        in.h = in.w = 14, p.cout = 16, p.kh = p.kw = 3, p.sh = p.sw = 1, p.ph = p.pw = 1;
    if (in.h + 2 * p.ph < p.kh || in.w + 2 * p.pw < p.kw)
        return;
    op_dims o = op_conv2d_out(in, &p);
    float *x = random_buf(numel(in)), *w = random_buf((size_t)p.cout * p.cin * p.kh * p.kw);
    float *b = trial % 2 ? random_buf((size_t)p.cout) : NULL, *res = random_buf(numel(o));
    float *y = random_buf(numel(o)), *yr = random_buf(numel(o));
    op_act act = (op_act)(trial % 3);
    for (int direct = 0; direct < 2; direct++) {
        op_set_direct_conv(direct);
        float *ws = random_buf(op_conv2d_workspace(in, &p));
        op_conv2d(x, in, &p, w, b, act, y, ws);
        op_conv2d_ref(x, in, &p, w, b, act, yr);
        double d = max_rel_diff(y, yr, numel(o));
        CHECKF(d < 1e-5, "conv2d%s c%d n%d %dx%d -> %d k%dx%d s%dx%d p%dx%d: diff %g",
               direct ? "" : " (im2col)", in.c, in.n, in.h, in.w, p.cout, p.kh, p.kw, p.sh,
               p.sw, p.ph, p.pw, d);
        op_conv2d_add(x, in, &p, w, b, res, act, y, ws);
        op_conv2d_add_ref(x, in, &p, w, b, res, act, yr);
        d = max_rel_diff(y, yr, numel(o));
        CHECKF(d < 1e-5, "conv2d_add%s c%d n%d %dx%d -> %d k%dx%d s%dx%d p%dx%d: diff %g",
               direct ? "" : " (im2col)", in.c, in.n, in.h, in.w, p.cout, p.kh, p.kw, p.sh,
               p.sw, p.ph, p.pw, d);
        qv_free_aligned(ws);
    }
    qv_free_aligned(x), qv_free_aligned(w), qv_free_aligned(b), qv_free_aligned(y);
    qv_free_aligned(yr), qv_free_aligned(res);
}

static void test_convt2d(int trial)
{
    op_dims in = {rand_in(1, 9), rand_in(1, 5), rand_in(1, 12), rand_in(1, 12)};
    op_conv p = random_conv(in.c, 1);
    if (trial % 7 == 0)
        in.n = 200, in.h = in.w = 14, p.kh = p.kw = 3, p.sh = p.sw = 2, p.ph = p.pw = 1,
        p.oph = p.opw = 1;
    op_dims o = op_convt2d_out(in, &p);
    if (o.h < 1 || o.w < 1)
        return;
    float *x = random_buf(numel(in)), *w = random_buf((size_t)p.cout * p.cin * p.kh * p.kw);
    float *b = trial % 2 ? random_buf((size_t)p.cout) : NULL;
    float *y = random_buf(numel(o)), *yr = random_buf(numel(o));
    float *ws = random_buf(op_convt2d_workspace(in, &p));
    op_act act = (op_act)(trial % 3);
    op_convt2d(x, in, &p, w, b, act, y, ws);
    op_convt2d_ref(x, in, &p, w, b, act, yr);
    double d = max_rel_diff(y, yr, numel(o));
    CHECKF(d < 1e-5, "convt2d c%d n%d %dx%d -> %d k%dx%d s%dx%d p%dx%d op%dx%d: diff %g", in.c,
           in.n, in.h, in.w, p.cout, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.oph, p.opw, d);
    qv_free_aligned(x), qv_free_aligned(w), qv_free_aligned(b), qv_free_aligned(y);
    qv_free_aligned(yr), qv_free_aligned(ws);
}

static void test_linear(int trial)
{
    int in = rand_in(1, 70), n = rand_in(1, 33), out = rand_in(1, 40);
    float *x = random_buf((size_t)in * n), *w = random_buf((size_t)in * out);
    float *b = trial % 2 ? random_buf((size_t)out) : NULL;
    float *y = random_buf((size_t)out * n), *yr = random_buf((size_t)out * n);
    op_act act = (op_act)(trial % 3);
    op_linear(x, in, n, w, b, out, act, y);
    op_linear_ref(x, in, n, w, b, out, act, yr);
    double d = max_rel_diff(y, yr, (size_t)out * n);
    CHECKF(d < 1e-5, "linear %d -> %d, n %d: diff %g", in, out, n, d);
    qv_free_aligned(x), qv_free_aligned(w), qv_free_aligned(b), qv_free_aligned(y);
    qv_free_aligned(yr);
}

static void test_pools(int trial)
{
    op_dims in = {rand_in(1, 6), rand_in(1, 4), rand_in(1, 15), rand_in(1, 15)};
    op_pool p = {rand_in(1, 4), rand_in(1, 4), rand_in(1, 3), rand_in(1, 3), 0, 0};
    p.ph = rand_in(0, p.kh / 2);
    p.pw = rand_in(0, p.kw / 2);
    if (trial % 3 == 0) /* the 2 x 2 stride-2 fast path, odd sizes included */
        p = (op_pool){2, 2, 2, 2, 0, 0};
    if (in.h + 2 * p.ph < p.kh || in.w + 2 * p.pw < p.kw)
        return;
    op_dims o = op_pool_out(in, &p);
    float *x = random_buf(numel(in)), *y = random_buf(numel(o)), *yr = random_buf(numel(o));
    op_maxpool(x, in, &p, y);
    op_maxpool_ref(x, in, &p, yr);
    CHECKF(max_rel_diff(y, yr, numel(o)) == 0.0, "maxpool %dx%d k%d s%d p%d", in.h, in.w, p.kh,
           p.sh, p.ph);
    op_avgpool(x, in, &p, y);
    op_avgpool_ref(x, in, &p, yr);
    CHECKF(max_rel_diff(y, yr, numel(o)) < 1e-6, "avgpool %dx%d k%d s%d p%d", in.h, in.w, p.kh,
           p.sh, p.ph);
    float *g = random_buf((size_t)in.c * in.n), *gr = random_buf((size_t)in.c * in.n);
    op_global_avgpool(x, in, g);
    op_global_avgpool_ref(x, in, gr);
    CHECKF(max_rel_diff(g, gr, (size_t)in.c * in.n) < 1e-6, "global_avgpool %dx%d", in.h, in.w);
    qv_free_aligned(x), qv_free_aligned(y), qv_free_aligned(yr), qv_free_aligned(g);
    qv_free_aligned(gr);
}

static void test_shape_ops(int trial)
{
    op_dims in = {rand_in(1, 6), rand_in(1, 4), rand_in(1, 9), rand_in(1, 9)};
    size_t n = numel(in);
    float *x = random_buf(n), *x2 = random_buf(n);
    float *y = random_buf(n * 8), *yr = random_buf(n * 8); /* pad_channels grows up to 7x */
    op_act act = (op_act)(trial % 3);
    op_add(x, x2, n, act, y);
    op_add_ref(x, x2, n, act, yr);
    CHECKF(max_rel_diff(y, yr, n) < 1e-6, "add act %d", act);
    memcpy(y, x, sizeof(float) * n);
    memcpy(yr, x, sizeof(float) * n);
    op_activate(y, n, act);
    op_activate_ref(yr, n, act);
    CHECKF(max_rel_diff(y, yr, n) < 1e-6, "activate %d", act);
    op_flatten(x, in, y);
    op_flatten_ref(x, in, yr);
    CHECKF(max_rel_diff(y, yr, n) == 0.0, "flatten");
    int sh = rand_in(1, 3), sw = rand_in(1, 3);
    op_subsample(x, in, sh, sw, y);
    op_subsample_ref(x, in, sh, sw, yr);
    size_t sub = (size_t)in.c * in.n * ((in.h + sh - 1) / sh) * ((in.w + sw - 1) / sw);
    CHECKF(max_rel_diff(y, yr, sub) == 0.0, "subsample %d %d", sh, sw);
    int before = rand_in(0, 3), after = rand_in(0, 3);
    op_pad_channels(x, in, before, after, y);
    op_pad_channels_ref(x, in, before, after, yr);
    CHECKF(max_rel_diff(y, yr, n / in.c * (in.c + before + after)) == 0.0, "pad_channels");
    op_nchw_to_cnhw(x, in, y);
    op_cnhw_to_nchw(y, in, yr);
    CHECKF(memcmp(x, yr, sizeof(float) * n) == 0, "layout round trip");
    qv_free_aligned(x), qv_free_aligned(x2), qv_free_aligned(y), qv_free_aligned(yr);
}

/* Known values: a 3x3 all-ones kernel over a 3x3 image of ones with padding 1 gives the
 * count of in-bounds neighbours; a stride-2 transpose scatters each input to its block. */
static void test_known_values(void)
{
    op_dims in = {1, 1, 3, 3};
    op_conv p = {1, 1, 3, 3, 1, 1, 1, 1, 0, 0};
    float x[9], w[9], y[9], *ws = random_buf(op_conv2d_workspace(in, &p));
    for (int i = 0; i < 9; i++)
        x[i] = w[i] = 1.0f;
    op_conv2d(x, in, &p, w, NULL, ACT_NONE, y, ws);
    const float expect[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
    CHECK(memcmp(y, expect, sizeof expect) == 0);
    qv_free_aligned(ws);

    op_dims tin = {1, 1, 2, 2};
    op_conv t = {1, 1, 2, 2, 2, 2, 0, 0, 0, 0};
    float tx[4] = {1, 2, 3, 4}, tw[4] = {1, 1, 1, 1}, ty[16], tws[16];
    op_convt2d(tx, tin, &t, tw, NULL, ACT_NONE, ty, tws);
    const float texpect[16] = {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4};
    CHECK(memcmp(ty, texpect, sizeof texpect) == 0);
}

/* `test_ops [TRIALS]`: 60 random trials by default; fewer under valgrind, where each one
 * costs a hundred times more. */
int main(int argc, char **argv)
{
    int trials = argc > 1 ? atoi(argv[1]) : 60;
    if (trials < 1) {
        fprintf(stderr, "usage: test_ops [TRIALS >= 1]\n");
        return 2;
    }
    r = rng_stream(12345, 0, 0, RNG_TEST);
    test_known_values();
    for (int t = 0; t < trials; t++) {
        test_conv2d(t);
        test_convt2d(t);
        test_linear(t);
        test_pools(t);
        test_shape_ops(t);
    }
    TEST_END("test_ops");
}
