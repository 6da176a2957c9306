#include "qevo/ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "qevo/util.h"

/* Column buffers are sized to about this many floats (4 MiB): big enough for sgemm to
 * run at full speed, small enough to stay near the cache. */
#define COL_TARGET_FLOATS ((size_t)1 << 20)

op_dims op_conv2d_out(op_dims in, const op_conv *p)
{
    op_dims o = {p->cout, in.n, (in.h + 2 * p->ph - p->kh) / p->sh + 1,
                 (in.w + 2 * p->pw - p->kw) / p->sw + 1};
    return o;
}

op_dims op_convt2d_out(op_dims in, const op_conv *p)
{
    op_dims o = {p->cout, in.n, (in.h - 1) * p->sh - 2 * p->ph + p->kh + p->oph,
                 (in.w - 1) * p->sw - 2 * p->pw + p->kw + p->opw};
    return o;
}

op_dims op_pool_out(op_dims in, const op_pool *p)
{
    op_dims o = {in.c, in.n, (in.h + 2 * p->ph - p->kh) / p->sh + 1,
                 (in.w + 2 * p->pw - p->kw) / p->sw + 1};
    return o;
}

static int is_pointwise(const op_conv *p)
{
    return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->ph == 0 && p->pw == 0;
}

/* Images per chunk so that a chunk's columns hold about COL_TARGET_FLOATS. */
static int chunk_images(size_t floats_per_image, int n)
{
    size_t nb = COL_TARGET_FLOATS / (floats_per_image ? floats_per_image : 1);
    if (nb < 1)
        nb = 1;
    return nb < (size_t)n ? (int)nb : n;
}

static size_t conv_col_per_image(op_dims in, const op_conv *p)
{
    op_dims o = op_conv2d_out(in, p);
    return (size_t)p->cin * p->kh * p->kw * o.h * o.w;
}

static size_t convt_col_per_image(op_dims in, const op_conv *p)
{
    return (size_t)p->cout * p->kh * p->kw * in.h * in.w;
}

size_t op_conv2d_workspace(op_dims in, const op_conv *p)
{
    if (is_pointwise(p))
        return 0;
    size_t per = conv_col_per_image(in, p);
    return per * (size_t)chunk_images(per, in.n);
}

size_t op_convt2d_workspace(op_dims in, const op_conv *p)
{
    size_t per = convt_col_per_image(in, p);
    return per * (size_t)chunk_images(per, in.n);
}

static float sigmoidf(float v)
{
    return 1.0f / (1.0f + expf(-v));
}

/* y[i] = act(y[i] + bias) over one contiguous run. */
static void bias_act(float *y, size_t count, float bias, op_act act)
{
    switch (act) {
    case ACT_NONE:
        if (bias != 0.0f)
            for (size_t i = 0; i < count; i++)
                y[i] += bias;
        break;
    case ACT_RELU:
        for (size_t i = 0; i < count; i++) {
            float v = y[i] + bias;
            y[i] = v > 0.0f ? v : 0.0f;
        }
        break;
    case ACT_SIGMOID:
        for (size_t i = 0; i < count; i++)
            y[i] = sigmoidf(y[i] + bias);
        break;
    }
}

/* First and last output index o in [0, n_out) with 0 <= o*s - pad + k < n_in; returns
 * an empty range (lo > hi) when there is none. */
static void valid_range(int n_out, int n_in, int s, int pad, int k, int *lo, int *hi)
{
    int a = pad - k; /* need o*s >= a */
    int first = a <= 0 ? 0 : (a + s - 1) / s;
    int b = n_in - 1 + pad - k; /* need o*s <= b */
    int last = b < 0 ? -1 : b / s;
    *lo = first;
    *hi = last < n_out - 1 ? last : n_out - 1;
}

/* Columns for images [n0, n0+nb): row (c, ki, kj), column (image, oy, ox). */
static void im2col(const float *x, op_dims in, const op_conv *p, op_dims o, int n0, int nb,
                   float *col)
{
    size_t hw = (size_t)in.h * in.w, ohw = (size_t)o.h * o.w;
    for (int c = 0; c < in.c; c++)
        for (int ki = 0; ki < p->kh; ki++)
            for (int kj = 0; kj < p->kw; kj++) {
                float *dst = col + (((size_t)c * p->kh + ki) * p->kw + kj) * nb * ohw;
                int lo, hi;
                valid_range(o.w, in.w, p->sw, p->pw, kj, &lo, &hi);
                for (int nl = 0; nl < nb; nl++) {
                    const float *src = x + ((size_t)c * in.n + n0 + nl) * hw;
                    for (int oy = 0; oy < o.h; oy++) {
                        float *d = dst + ((size_t)nl * o.h + oy) * o.w;
                        int iy = oy * p->sh - p->ph + ki;
                        if (iy < 0 || iy >= in.h || lo > hi) {
                            memset(d, 0, sizeof(float) * (size_t)o.w);
                            continue;
                        }
                        const float *row = src + (size_t)iy * in.w - p->pw + kj;
                        for (int ox = 0; ox < lo; ox++)
                            d[ox] = 0.0f;
                        if (p->sw == 1)
                            memcpy(d + lo, row + lo, sizeof(float) * (size_t)(hi - lo + 1));
                        else
                            for (int ox = lo; ox <= hi; ox++)
                                d[ox] = row[ox * p->sw];
                        for (int ox = hi + 1; ox < o.w; ox++)
                            d[ox] = 0.0f;
                    }
                }
            }
}

void op_conv2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
               op_act act, float *y, float *ws)
{
    QV_ASSERT(in.c == p->cin);
    op_dims o = op_conv2d_out(in, p);
    size_t ohw = (size_t)o.h * o.w, ldy = (size_t)in.n * ohw;
    int k = p->cin * p->kh * p->kw;
    if (is_pointwise(p)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->cout, (int)ldy, k, 1.0f, w,
                    k, x, (int)ldy, 0.0f, y, (int)ldy);
        for (int co = 0; co < p->cout; co++)
            bias_act(y + co * ldy, ldy, b ? b[co] : 0.0f, act);
        return;
    }
    int chunk = chunk_images(conv_col_per_image(in, p), in.n);
    for (int n0 = 0; n0 < in.n; n0 += chunk) {
        int nb = in.n - n0 < chunk ? in.n - n0 : chunk;
        size_t cols = (size_t)nb * ohw;
        im2col(x, in, p, o, n0, nb, ws);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->cout, (int)cols, k, 1.0f,
                    w, k, ws, (int)cols, 0.0f, y + (size_t)n0 * ohw, (int)ldy);
        for (int co = 0; co < p->cout; co++)
            bias_act(y + co * ldy + (size_t)n0 * ohw, cols, b ? b[co] : 0.0f, act);
    }
}

void op_conv2d_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                   const float *b, op_act act, float *y)
{
    op_dims o = op_conv2d_out(in, p);
    for (int co = 0; co < p->cout; co++)
        for (int n = 0; n < in.n; n++)
            for (int oy = 0; oy < o.h; oy++)
                for (int ox = 0; ox < o.w; ox++) {
                    float s = 0.0f;
                    for (int ci = 0; ci < p->cin; ci++)
                        for (int ki = 0; ki < p->kh; ki++)
                            for (int kj = 0; kj < p->kw; kj++) {
                                int iy = oy * p->sh - p->ph + ki, ix = ox * p->sw - p->pw + kj;
                                if (iy < 0 || iy >= in.h || ix < 0 || ix >= in.w)
                                    continue;
                                s += w[((co * p->cin + ci) * p->kh + ki) * p->kw + kj] *
                                     x[(((size_t)ci * in.n + n) * in.h + iy) * in.w + ix];
                            }
                    float *d = &y[(((size_t)co * in.n + n) * o.h + oy) * o.w + ox];
                    *d = s;
                    bias_act(d, 1, b ? b[co] : 0.0f, act);
                }
}

/* Adds the columns of images [n0, n0+nb) into y: row (co, ki, kj), column (image, iy, ix)
 * lands on output (co, image, iy*sh - ph + ki, ix*sw - pw + kj). */
static void col2im_add(const float *col, op_dims in, const op_conv *p, op_dims o, int n0,
                       int nb, float *y)
{
    size_t hw = (size_t)in.h * in.w, ohw = (size_t)o.h * o.w;
    for (int co = 0; co < p->cout; co++)
        for (int ki = 0; ki < p->kh; ki++)
            for (int kj = 0; kj < p->kw; kj++) {
                const float *src = col + (((size_t)co * p->kh + ki) * p->kw + kj) * nb * hw;
                int lo, hi;
                /* Input columns ix whose output ox = ix*sw - pw + kj lies in [0, o.w). */
                int a = p->pw - kj, bnd = o.w - 1 + p->pw - kj;
                lo = a <= 0 ? 0 : (a + p->sw - 1) / p->sw;
                hi = bnd < 0 ? -1 : bnd / p->sw;
                if (hi > in.w - 1)
                    hi = in.w - 1;
                for (int nl = 0; nl < nb; nl++) {
                    float *dst = y + ((size_t)co * in.n + n0 + nl) * ohw;
                    for (int iy = 0; iy < in.h; iy++) {
                        int oy = iy * p->sh - p->ph + ki;
                        if (oy < 0 || oy >= o.h)
                            continue;
                        const float *s = src + ((size_t)nl * in.h + iy) * in.w;
                        float *d = dst + (size_t)oy * o.w - p->pw + kj;
                        for (int ix = lo; ix <= hi; ix++)
                            d[ix * p->sw] += s[ix];
                    }
                }
            }
}

void op_convt2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
                op_act act, float *y, float *ws)
{
    QV_ASSERT(in.c == p->cin);
    op_dims o = op_convt2d_out(in, p);
    size_t hw = (size_t)in.h * in.w, ohw = (size_t)o.h * o.w, ldx = (size_t)in.n * hw;
    int m = p->cout * p->kh * p->kw;
    int chunk = chunk_images(convt_col_per_image(in, p), in.n);
    for (int n0 = 0; n0 < in.n; n0 += chunk) {
        int nb = in.n - n0 < chunk ? in.n - n0 : chunk;
        size_t cols = (size_t)nb * hw;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, (int)cols, p->cin, 1.0f, w, m,
                    x + (size_t)n0 * hw, (int)ldx, 0.0f, ws, (int)cols);
        for (int co = 0; co < p->cout; co++)
            memset(y + ((size_t)co * in.n + n0) * ohw, 0, sizeof(float) * nb * ohw);
        col2im_add(ws, in, p, o, n0, nb, y);
        for (int co = 0; co < p->cout; co++)
            bias_act(y + ((size_t)co * in.n + n0) * ohw, nb * ohw, b ? b[co] : 0.0f, act);
    }
}

void op_convt2d_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                    const float *b, op_act act, float *y)
{
    op_dims o = op_convt2d_out(in, p);
    size_t total = (size_t)o.c * o.n * o.h * o.w;
    memset(y, 0, sizeof(float) * total);
    for (int ci = 0; ci < p->cin; ci++)
        for (int n = 0; n < in.n; n++)
            for (int iy = 0; iy < in.h; iy++)
                for (int ix = 0; ix < in.w; ix++) {
                    float v = x[(((size_t)ci * in.n + n) * in.h + iy) * in.w + ix];
                    for (int co = 0; co < p->cout; co++)
                        for (int ki = 0; ki < p->kh; ki++)
                            for (int kj = 0; kj < p->kw; kj++) {
                                int oy = iy * p->sh - p->ph + ki, ox = ix * p->sw - p->pw + kj;
                                if (oy < 0 || oy >= o.h || ox < 0 || ox >= o.w)
                                    continue;
                                y[(((size_t)co * o.n + n) * o.h + oy) * o.w + ox] +=
                                    v * w[((ci * p->cout + co) * p->kh + ki) * p->kw + kj];
                            }
                }
    size_t per = (size_t)o.n * o.h * o.w;
    for (int co = 0; co < o.c; co++)
        for (size_t i = 0; i < per; i++)
            bias_act(&y[co * per + i], 1, b ? b[co] : 0.0f, act);
}

void op_linear(const float *x, int in, int n, const float *w, const float *b, int out,
               op_act act, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, n, in, 1.0f, w, in, x, n,
                0.0f, y, n);
    for (int o = 0; o < out; o++)
        bias_act(y + (size_t)o * n, (size_t)n, b ? b[o] : 0.0f, act);
}

void op_linear_ref(const float *x, int in, int n, const float *w, const float *b, int out,
                   op_act act, float *y)
{
    for (int o = 0; o < out; o++)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int i = 0; i < in; i++)
                s += w[(size_t)o * in + i] * x[(size_t)i * n + j];
            y[(size_t)o * n + j] = s;
            bias_act(&y[(size_t)o * n + j], 1, b ? b[o] : 0.0f, act);
        }
}

/* Pooling works plane by plane: a CNHW tensor is C*N contiguous H x W planes. */
void op_maxpool(const float *x, op_dims in, const op_pool *p, float *y)
{
    op_dims o = op_pool_out(in, p);
    size_t planes = (size_t)in.c * in.n;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *src = x + pl * in.h * in.w;
        float *dst = y + pl * o.h * o.w;
        for (int oy = 0; oy < o.h; oy++) {
            int y0 = oy * p->sh - p->ph, y1 = y0 + p->kh;
            y0 = y0 < 0 ? 0 : y0;
            y1 = y1 > in.h ? in.h : y1;
            for (int ox = 0; ox < o.w; ox++) {
                int x0 = ox * p->sw - p->pw, x1 = x0 + p->kw;
                x0 = x0 < 0 ? 0 : x0;
                x1 = x1 > in.w ? in.w : x1;
                float m = -INFINITY;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++) {
                        float v = src[iy * in.w + ix];
                        m = v > m ? v : m;
                    }
                dst[oy * o.w + ox] = m;
            }
        }
    }
}

void op_maxpool_ref(const float *x, op_dims in, const op_pool *p, float *y)
{
    op_dims o = op_pool_out(in, p);
    for (int c = 0; c < in.c; c++)
        for (int n = 0; n < in.n; n++)
            for (int oy = 0; oy < o.h; oy++)
                for (int ox = 0; ox < o.w; ox++) {
                    float m = -INFINITY;
                    for (int ki = 0; ki < p->kh; ki++)
                        for (int kj = 0; kj < p->kw; kj++) {
                            int iy = oy * p->sh - p->ph + ki, ix = ox * p->sw - p->pw + kj;
                            if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w) {
                                float v = x[(((size_t)c * in.n + n) * in.h + iy) * in.w + ix];
                                if (v > m)
                                    m = v;
                            }
                        }
                    y[(((size_t)c * in.n + n) * o.h + oy) * o.w + ox] = m;
                }
}

void op_avgpool(const float *x, op_dims in, const op_pool *p, float *y)
{
    op_dims o = op_pool_out(in, p);
    size_t planes = (size_t)in.c * in.n;
    float inv = 1.0f / (float)(p->kh * p->kw);
    for (size_t pl = 0; pl < planes; pl++) {
        const float *src = x + pl * in.h * in.w;
        float *dst = y + pl * o.h * o.w;
        for (int oy = 0; oy < o.h; oy++) {
            int y0 = oy * p->sh - p->ph, y1 = y0 + p->kh;
            y0 = y0 < 0 ? 0 : y0;
            y1 = y1 > in.h ? in.h : y1;
            for (int ox = 0; ox < o.w; ox++) {
                int x0 = ox * p->sw - p->pw, x1 = x0 + p->kw;
                x0 = x0 < 0 ? 0 : x0;
                x1 = x1 > in.w ? in.w : x1;
                float s = 0.0f;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++)
                        s += src[iy * in.w + ix];
                dst[oy * o.w + ox] = s * inv;
            }
        }
    }
}

void op_avgpool_ref(const float *x, op_dims in, const op_pool *p, float *y)
{
    op_dims o = op_pool_out(in, p);
    for (int c = 0; c < in.c; c++)
        for (int n = 0; n < in.n; n++)
            for (int oy = 0; oy < o.h; oy++)
                for (int ox = 0; ox < o.w; ox++) {
                    float s = 0.0f;
                    for (int ki = 0; ki < p->kh; ki++)
                        for (int kj = 0; kj < p->kw; kj++) {
                            int iy = oy * p->sh - p->ph + ki, ix = ox * p->sw - p->pw + kj;
                            if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w)
                                s += x[(((size_t)c * in.n + n) * in.h + iy) * in.w + ix];
                        }
                    y[(((size_t)c * in.n + n) * o.h + oy) * o.w + ox] =
                        s / (float)(p->kh * p->kw);
                }
}

void op_global_avgpool(const float *x, op_dims in, float *y)
{
    size_t planes = (size_t)in.c * in.n, hw = (size_t)in.h * in.w;
    float inv = 1.0f / (float)hw;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *src = x + pl * hw;
        float s = 0.0f;
        for (size_t i = 0; i < hw; i++)
            s += src[i];
        y[pl] = s * inv;
    }
}

void op_global_avgpool_ref(const float *x, op_dims in, float *y)
{
    for (int c = 0; c < in.c; c++)
        for (int n = 0; n < in.n; n++) {
            double s = 0.0;
            for (int i = 0; i < in.h * in.w; i++)
                s += x[((size_t)c * in.n + n) * in.h * in.w + i];
            y[(size_t)c * in.n + n] = (float)(s / (in.h * in.w));
        }
}

void op_add(const float *a, const float *b, size_t count, op_act act, float *y)
{
    if (act == ACT_RELU) {
        for (size_t i = 0; i < count; i++) {
            float v = a[i] + b[i];
            y[i] = v > 0.0f ? v : 0.0f;
        }
        return;
    }
    for (size_t i = 0; i < count; i++)
        y[i] = a[i] + b[i];
    if (act != ACT_NONE)
        op_activate(y, count, act);
}

void op_add_ref(const float *a, const float *b, size_t count, op_act act, float *y)
{
    for (size_t i = 0; i < count; i++) {
        y[i] = a[i] + b[i];
        op_activate_ref(&y[i], 1, act);
    }
}

void op_activate(float *x, size_t count, op_act act)
{
    bias_act(x, count, 0.0f, act);
}

void op_activate_ref(float *x, size_t count, op_act act)
{
    for (size_t i = 0; i < count; i++) {
        if (act == ACT_RELU && x[i] < 0.0f)
            x[i] = 0.0f;
        else if (act == ACT_SIGMOID)
            x[i] = 1.0f / (1.0f + expf(-x[i]));
    }
}

void op_flatten(const float *x, op_dims in, float *y)
{
    size_t hw = (size_t)in.h * in.w;
    for (int c = 0; c < in.c; c++)
        for (int n = 0; n < in.n; n++) {
            const float *src = x + ((size_t)c * in.n + n) * hw;
            float *dst = y + (size_t)c * hw * in.n + n;
            for (size_t i = 0; i < hw; i++)
                dst[i * in.n] = src[i];
        }
}

void op_flatten_ref(const float *x, op_dims in, float *y)
{
    for (int n = 0; n < in.n; n++)
        for (int c = 0; c < in.c; c++)
            for (int i = 0; i < in.h; i++)
                for (int j = 0; j < in.w; j++) {
                    size_t feature = ((size_t)c * in.h + i) * in.w + j;
                    y[feature * in.n + n] = x[(((size_t)c * in.n + n) * in.h + i) * in.w + j];
                }
}

void op_subsample(const float *x, op_dims in, int sh, int sw, float *y)
{
    int oh = (in.h + sh - 1) / sh, ow = (in.w + sw - 1) / sw;
    size_t planes = (size_t)in.c * in.n;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *src = x + pl * in.h * in.w;
        float *dst = y + pl * oh * ow;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                dst[oy * ow + ox] = src[(size_t)oy * sh * in.w + (size_t)ox * sw];
    }
}

void op_subsample_ref(const float *x, op_dims in, int sh, int sw, float *y)
{
    int oh = (in.h + sh - 1) / sh, ow = (in.w + sw - 1) / sw;
    for (int c = 0; c < in.c; c++)
        for (int n = 0; n < in.n; n++)
            for (int i = 0; i < in.h; i += sh)
                for (int j = 0; j < in.w; j += sw)
                    y[(((size_t)c * in.n + n) * oh + i / sh) * ow + j / sw] =
                        x[(((size_t)c * in.n + n) * in.h + i) * in.w + j];
}

void op_pad_channels(const float *x, op_dims in, int before, int after, float *y)
{
    /* In CNHW each channel is one contiguous block, so padding is three block copies. */
    size_t block = (size_t)in.n * in.h * in.w;
    memset(y, 0, sizeof(float) * block * before);
    memcpy(y + block * before, x, sizeof(float) * block * in.c);
    memset(y + block * (before + in.c), 0, sizeof(float) * block * after);
}

void op_pad_channels_ref(const float *x, op_dims in, int before, int after, float *y)
{
    size_t per = (size_t)in.n * in.h * in.w;
    for (int c = 0; c < before + in.c + after; c++)
        for (size_t i = 0; i < per; i++)
            y[c * per + i] = (c >= before && c < before + in.c) ? x[(c - before) * per + i] : 0;
}

void op_nchw_to_cnhw(const float *x, op_dims d, float *y)
{
    size_t hw = (size_t)d.h * d.w;
    for (int n = 0; n < d.n; n++)
        for (int c = 0; c < d.c; c++)
            memcpy(y + ((size_t)c * d.n + n) * hw, x + ((size_t)n * d.c + c) * hw,
                   sizeof(float) * hw);
}

void op_cnhw_to_nchw(const float *x, op_dims d, float *y)
{
    size_t hw = (size_t)d.h * d.w;
    for (int n = 0; n < d.n; n++)
        for (int c = 0; c < d.c; c++)
            memcpy(y + ((size_t)n * d.c + c) * hw, x + ((size_t)c * d.n + n) * hw,
                   sizeof(float) * hw);
}
