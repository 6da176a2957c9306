#define _POSIX_C_SOURCE 200809L /* setenv, execv */
#include "qevo/ops.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "qevo/util.h"

/* The direct convolution kernel needs GCC/Clang's x86 intrinsics and function targets;
 * elsewhere every conv takes the im2col + sgemm path. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_DIRECT_CONV 1
#else
#define HAVE_DIRECT_CONV 0
#endif

/* ---- BLAS kernel selection ---- */

/* Set in the environment of the re-executed process, so that it never re-executes again. */
#define REEXEC_MARKER "QEVO_BLAS_REEXECUTED"

static bool core_has_avx512_kernels(const char *core)
{
    static const char *const names[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(core, names[i]))
            return true;
    return false;
}

static bool cpu_has_avx512(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    /* The set OpenBLAS's SkylakeX kernels use; __builtin_cpu_supports also checks that the
     * OS saves the AVX-512 registers. */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512cd");
#else
    return false;
#endif
}

void op_blas_select_kernels(char **argv)
{
    /* An explicit choice by the user wins, and a re-executed process must not loop. */
    if (getenv("OPENBLAS_CORETYPE") || getenv(REEXEC_MARKER))
        return;
    const char *core = openblas_get_corename();
    if (!core || core_has_avx512_kernels(core) || !cpu_has_avx512())
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) || setenv(REEXEC_MARKER, "1", 1))
        return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): carry on with the kernels already loaded. */
    unsetenv("OPENBLAS_CORETYPE");
}

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

/* A pointwise conv has no column buffer; its chunks are sized by input plus output. */
static size_t pointwise_per_image(op_dims in, const op_conv *p)
{
    return (size_t)(p->cin + p->cout) * in.h * in.w;
}

static bool use_direct(const op_conv *p);
static size_t direct_per_image(op_dims in, const op_conv *p);
static size_t direct_slack(const op_conv *p);

size_t op_conv2d_workspace(op_dims in, const op_conv *p)
{
    if (use_direct(p)) {
        size_t per = direct_per_image(in, p);
        return per * (size_t)chunk_images(per, in.n) + direct_slack(p);
    }
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

/* y[i] = act(y[i] + bias) over one contiguous run (the reference kernels' epilogue). */
static void bias_act(float *y, size_t count, float bias, op_act act)
{
    for (size_t i = 0; i < count; i++) {
        float v = y[i] + bias;
        y[i] = act == ACT_RELU ? (v > 0.0f ? v : 0.0f) : act == ACT_SIGMOID ? sigmoidf(v) : v;
    }
}

/* The fast kernels' epilogue is split around a cblas_sgemm with beta = 1: the output is
 * first filled with what the products are added to (bias, plus the residual of a fused
 * add), and activated afterwards while it is still in cache. That saves sgemm's zeroing
 * pass and a separate bias or add pass over memory. */

/* Rows [0, rows) of y, `cols` floats each, row stride ldy: y = b[row] (0 if b is NULL)
 * + r (same layout as y; may be NULL). */
static void fill_rows(float *restrict y, size_t ldy, int rows, size_t cols,
                      const float *restrict b, const float *restrict r)
{
    for (int i = 0; i < rows; i++) {
        float *d = y + (size_t)i * ldy, v = b ? b[i] : 0.0f;
        if (r) {
            const float *s = r + (size_t)i * ldy;
            for (size_t j = 0; j < cols; j++)
                d[j] = s[j] + v;
        } else {
            for (size_t j = 0; j < cols; j++)
                d[j] = v;
        }
    }
}

static void activate_rows(float *y, size_t ldy, int rows, size_t cols, op_act act)
{
    if (act == ACT_NONE)
        return;
    for (int i = 0; i < rows; i++)
        op_activate(y + (size_t)i * ldy, cols, act);
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

/* One im2col row (c, ki, kj) of one image when stride and output width match the input
 * (stride 1, "same" width): the output plane is the input plane shifted by `shift`, so it
 * is one copy, after which the positions whose source lies in the padding are zeroed.
 * [ylo, yhi] and [lo, hi]: the output rows and columns with a source inside the image. */
static void shifted_plane(const float *src, op_dims o, int ylo, int yhi, int lo, int hi,
                          ptrdiff_t shift, float *d)
{
    if (ylo > yhi || lo > hi) {
        memset(d, 0, sizeof(float) * (size_t)o.h * o.w);
        return;
    }
    size_t first = (size_t)ylo * o.w + lo, last = (size_t)yhi * o.w + hi;
    memset(d, 0, sizeof(float) * first);
    memcpy(d + first, src + first + shift, sizeof(float) * (last - first + 1));
    memset(d + last + 1, 0, sizeof(float) * ((size_t)o.h * o.w - last - 1));
    /* The copy wrapped around row ends: columns outside [lo, hi] got the neighbours. */
    for (int oy = ylo; oy <= yhi; oy++) {
        float *row = d + (size_t)oy * o.w;
        for (int ox = 0; ox < lo; ox++)
            row[ox] = 0.0f;
        for (int ox = hi + 1; ox < o.w; ox++)
            row[ox] = 0.0f;
    }
}

/* Columns for images [n0, n0+nb): row (c, ki, kj), column (image, oy, ox). */
static void im2col(const float *x, op_dims in, const op_conv *p, op_dims o, int n0, int nb,
                   float *col)
{
    size_t hw = (size_t)in.h * in.w, ohw = (size_t)o.h * o.w;
    bool same_width = p->sw == 1 && p->sh == 1 && o.w == in.w;
    for (int c = 0; c < in.c; c++)
        for (int ki = 0; ki < p->kh; ki++)
            for (int kj = 0; kj < p->kw; kj++) {
                float *dst = col + (((size_t)c * p->kh + ki) * p->kw + kj) * nb * ohw;
                int lo, hi, ylo, yhi;
                valid_range(o.w, in.w, p->sw, p->pw, kj, &lo, &hi);
                valid_range(o.h, in.h, p->sh, p->ph, ki, &ylo, &yhi);
                for (int nl = 0; nl < nb; nl++) {
                    const float *src = x + ((size_t)c * in.n + n0 + nl) * hw;
                    if (same_width) {
                        ptrdiff_t shift = (ptrdiff_t)(ki - p->ph) * in.w + (kj - p->pw);
                        shifted_plane(src, o, ylo, yhi, lo, hi, shift, dst + nl * ohw);
                        continue;
                    }
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

void op_im2col(const float *x, op_dims in, const op_conv *p, float *col)
{
    im2col(x, in, p, op_conv2d_out(in, p), 0, in.n, col);
}

/* ---- Direct convolution (stride 1, AVX-512) ----
 *
 * For convs with few channels, im2col + sgemm spends more time copying (im2col writes
 * kh*kw copies of the input, sgemm packs them again) than multiplying. The direct kernel
 * reads a zero-padded copy of the input instead. In the padded plane (hp x wp) of one
 * image, output (oy, ox) of a stride-1 conv reads input q + ki*wp + kj for kernel tap
 * (ki, kj), where q = oy*wp + ox. So over "q-space" (oh rows of wp positions, the last
 * wp - ow of each row junk that is never stored) every tap is a shifted contiguous
 * vector load, and a tile of output channels x q positions is accumulated in registers
 * over all input channels and taps. */

#define TILE_MAX_Q 64 /* q positions of the longest tile shape */

static bool direct_enabled = true;

void op_set_direct_conv(bool enable)
{
    direct_enabled = enable;
}

static bool use_direct(const op_conv *p)
{
#if HAVE_DIRECT_CONV
    return direct_enabled && p->sh == 1 && p->sw == 1 && !is_pointwise(p) &&
           __builtin_cpu_supports("avx512f");
#else
    (void)p;
    return false;
#endif
}

/* Padded input floats per image. */
static size_t direct_per_image(op_dims in, const op_conv *p)
{
    return (size_t)p->cin * (in.h + 2 * p->ph) * (in.w + 2 * p->pw);
}

/* Floats after the last padded plane that tiles over-read: q-space is rounded up to
 * whole tiles, and the last tap reads kw - 1 further (see direct_image). */
static size_t direct_slack(const op_conv *p)
{
    return TILE_MAX_Q + (size_t)p->kw;
}

/* Geometry of one chunk of padded images, (cin, nb, hp, wp), and the tile shape. */
typedef struct {
    int cin, kh, kw;
    int wp;       /* padded row length: q-space's row stride */
    size_t plane; /* hp * wp */
    size_t chan;  /* floats between input channels: nb * plane */
    int oh, ow;
    int nq;       /* q-space positions per image: oh * wp */
    int ocb, qv;  /* tile: ocb output channels x qv vectors of 16 q positions */
} direct_geom;

/* Two tile shapes, each 16 accumulators: 4 channels x 64 positions, which needs the fewest
 * loads per multiply-add, and 8 x 32, for images whose q-space 64-wide tiles would round
 * up much further (14 x 14: 224 positions, 256 in 64-wide tiles, 224 in 32-wide ones). */
static void choose_tile(direct_geom *g, int cout)
{
    int waste64 = (g->nq + 63) / 64 * 64 - g->nq, waste32 = (g->nq + 31) / 32 * 32 - g->nq;
    bool narrow = cout % 8 == 0 && waste64 - waste32 > g->nq / 16;
    g->ocb = narrow ? 8 : 4;
    g->qv = narrow ? 2 : 4;
}

/* xp (cin, nb, hp, wp) = images [n0, n0 + nb) of x with zeros around each plane, then
 * direct_slack() zeros for the over-reads. */
static void pad_images(const float *x, op_dims in, const op_conv *p, int n0, int nb,
                       const direct_geom *g, float *xp)
{
    size_t hw = (size_t)in.h * in.w;
    for (int c = 0; c < in.c; c++)
        for (int nl = 0; nl < nb; nl++) {
            const float *src = x + ((size_t)c * in.n + n0 + nl) * hw;
            float *d = xp + (size_t)c * g->chan + (size_t)nl * g->plane;
            size_t pad_rows = (size_t)p->ph * g->wp;
            memset(d, 0, sizeof(float) * pad_rows);
            for (int iy = 0; iy < in.h; iy++) {
                float *row = d + pad_rows + (size_t)iy * g->wp;
                for (int k = 0; k < p->pw; k++)
                    row[k] = row[p->pw + in.w + k] = 0.0f;
                memcpy(row + p->pw, src + (size_t)iy * in.w, sizeof(float) * (size_t)in.w);
            }
            memset(d + g->plane - pad_rows, 0, sizeof(float) * pad_rows);
        }
    memset(xp + (size_t)in.c * g->chan, 0, sizeof(float) * direct_slack(p));
}

#if HAVE_DIRECT_CONV
/* Stores q-space positions [q0, q1) of one output channel of one image from tile row t:
 * y = act(t + r) at the positions that are outputs (ox < ow). y, r: the channel's plane. */
__attribute__((target("avx512f"))) static void
direct_store(const float *t, const direct_geom *g, int q0, int q1, const float *r, op_act act,
             float *y)
{
    int oy = q0 / g->wp, ox = q0 % g->wp;
    for (int q = q0; q < q1; oy++, ox = 0) {
        int run = g->wp - ox < q1 - q ? g->wp - ox : q1 - q;
        int valid = ox >= g->ow ? 0 : g->ow - ox < run ? g->ow - ox : run;
        size_t at = (size_t)oy * g->ow + ox;
        const float *s = t + (q - q0);
        for (int i = 0; i < valid; i += 16) {
            __mmask16 m = valid - i >= 16 ? 0xffff : (__mmask16)((1u << (valid - i)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, s + i);
            if (r)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r + at + i));
            if (act == ACT_RELU)
                v = _mm512_max_ps(v, _mm512_setzero_ps()); /* = v > 0 ? v : 0, NaN -> 0 */
            if (m == 0xffff)
                _mm512_storeu_ps(y + at + i, v);
            else
                _mm512_mask_storeu_ps(y + at + i, m, v);
        }
        if (act == ACT_SIGMOID)
            op_activate(y + at, (size_t)valid, act);
        q += run;
    }
}

/* tile (ocb rows of 16 * qv floats) = bias + the products of output channels
 * [oc0, oc0 + ocb) at q-space positions [q0, q0 + 16 * qv) of the image whose padded
 * planes start at xp. Always inlined with constant ocb, qv and (for 3-wide kernels) kw,
 * so the accumulators live in registers and the innermost loop unrolls. */
static inline __attribute__((always_inline, target("avx512f"))) void
direct_tile(const float *xp, const direct_geom *g, const float *w, const float *b, int oc0,
            const int ocb, const int qv, const int kw, int q0, float *tile)
{
    size_t k = (size_t)g->cin * g->kh * kw;
    __m512 acc[8][4];
#pragma GCC unroll 8
    for (int o = 0; o < ocb; o++)
#pragma GCC unroll 4
        for (int j = 0; j < qv; j++)
            acc[o][j] = _mm512_set1_ps(b ? b[oc0 + o] : 0.0f);
    for (int ic = 0; ic < g->cin; ic++)
        for (int ki = 0; ki < g->kh; ki++)
#pragma GCC unroll 3
            for (int kj = 0; kj < kw; kj++) {
                const float *xr = xp + ic * g->chan + (size_t)ki * g->wp + kj + q0;
                const float *wr = w + oc0 * k + ((size_t)ic * g->kh + ki) * kw + kj;
                __m512 v[4];
#pragma GCC unroll 4
                for (int j = 0; j < qv; j++)
                    v[j] = _mm512_loadu_ps(xr + 16 * j);
#pragma GCC unroll 8
                for (int o = 0; o < ocb; o++) {
                    __m512 wv = _mm512_set1_ps(wr[o * k]);
#pragma GCC unroll 4
                    for (int j = 0; j < qv; j++)
                        acc[o][j] = _mm512_fmadd_ps(wv, v[j], acc[o][j]);
                }
            }
#pragma GCC unroll 8
    for (int o = 0; o < ocb; o++)
#pragma GCC unroll 4
        for (int j = 0; j < qv; j++)
            _mm512_store_ps(tile + o * 16 * qv + 16 * j, acc[o][j]);
}

/* direct_tile with the tile shape as constants: g's shape, or one channel at a time for
 * the last cout % g->ocb channels. */
__attribute__((target("avx512f"))) static void
direct_tile_of(const float *xp, const direct_geom *g, const float *w, const float *b, int oc0,
               int ocb, int q0, float *tile)
{
    bool k3 = g->kw == 3;
    if (ocb == 8)
        k3 ? direct_tile(xp, g, w, b, oc0, 8, 2, 3, q0, tile)
           : direct_tile(xp, g, w, b, oc0, 8, 2, g->kw, q0, tile);
    else if (ocb == 4)
        k3 ? direct_tile(xp, g, w, b, oc0, 4, 4, 3, q0, tile)
           : direct_tile(xp, g, w, b, oc0, 4, 4, g->kw, q0, tile);
    else if (g->qv == 2)
        direct_tile(xp, g, w, b, oc0, 1, 2, g->kw, q0, tile);
    else
        direct_tile(xp, g, w, b, oc0, 1, 4, g->kw, q0, tile);
}

/* One image: y, r (cout planes of oh*ow, ldy apart) = act(conv + b + r). Tiles cover
 * q-space in steps of 16 * qv, reading at most 16 * qv - 1 positions past the last
 * one, plus the last tap's (kh-1)*wp + kw-1: that stays within the image's planes (hp
 * rows) but for kw - 1 + 16 * qv floats, hence direct_slack(). */
__attribute__((target("avx512f"))) static void
direct_image(const float *xp, const direct_geom *g, const float *w, const float *b, int cout,
             const float *r, op_act act, float *y, size_t ldy)
{
    float tile[4 * TILE_MAX_Q] __attribute__((aligned(64))); /* 4 x 64 or 8 x 32 */
    int tq = 16 * g->qv;
    for (int q0 = 0; q0 < g->nq; q0 += tq) {
        int q1 = g->nq - q0 < tq ? g->nq : q0 + tq;
        for (int oc0 = 0; oc0 < cout;) {
            int ocb = cout - oc0 >= g->ocb ? g->ocb : 1;
            direct_tile_of(xp, g, w, b, oc0, ocb, q0, tile);
            for (int o = 0; o < ocb; o++) {
                size_t c = (size_t)(oc0 + o) * ldy;
                direct_store(tile + o * tq, g, q0, q1, r ? r + c : NULL, act, y + c);
            }
            oc0 += ocb;
        }
    }
}
#endif

/* The direct path of conv2d (use_direct): chunks of images are padded into ws, then
 * convolved image by image. */
static void conv2d_direct(const float *x, op_dims in, const op_conv *p, const float *w,
                          const float *b, const float *r, op_act act, float *y, float *ws)
{
#if HAVE_DIRECT_CONV
    op_dims o = op_conv2d_out(in, p);
    size_t ohw = (size_t)o.h * o.w, ldy = (size_t)in.n * ohw;
    int hp = in.h + 2 * p->ph, wp = in.w + 2 * p->pw;
    int chunk = chunk_images(direct_per_image(in, p), in.n);
    for (int n0 = 0; n0 < in.n; n0 += chunk) {
        int nb = in.n - n0 < chunk ? in.n - n0 : chunk;
        direct_geom g = {p->cin, p->kh, p->kw, wp, (size_t)hp * wp, (size_t)nb * hp * wp,
                         o.h, o.w, o.h * wp, 0, 0};
        choose_tile(&g, p->cout);
        pad_images(x, in, p, n0, nb, &g, ws);
        for (int nl = 0; nl < nb; nl++) {
            size_t off = (size_t)(n0 + nl) * ohw;
            direct_image(ws + (size_t)nl * g.plane, &g, w, b, p->cout, r ? r + off : NULL,
                         act, y + off, ldy);
        }
    }
#else
    (void)x, (void)in, (void)p, (void)w, (void)b, (void)r, (void)act, (void)y, (void)ws;
    QV_ASSERT(0);
#endif
}

/* y = act(conv(x) + b + r), r NULL or shaped like y. The direct kernel where it applies;
 * otherwise chunks of images: each chunk's columns (im2col, or x itself for a pointwise
 * conv) go through one sgemm into a prefilled output that is activated right away. */
static void conv2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
                   const float *r, op_act act, float *y, float *ws)
{
    QV_ASSERT(in.c == p->cin);
    if (use_direct(p)) {
        conv2d_direct(x, in, p, w, b, r, act, y, ws);
        return;
    }
    op_dims o = op_conv2d_out(in, p);
    size_t ohw = (size_t)o.h * o.w, ldy = (size_t)in.n * ohw;
    int k = p->cin * p->kh * p->kw;
    bool pointwise = is_pointwise(p);
    int chunk = chunk_images(pointwise ? pointwise_per_image(in, p) : conv_col_per_image(in, p),
                             in.n);
    for (int n0 = 0; n0 < in.n; n0 += chunk) {
        int nb = in.n - n0 < chunk ? in.n - n0 : chunk;
        size_t cols = (size_t)nb * ohw, off = (size_t)n0 * ohw;
        const float *col = x + off;
        size_t ldcol = ldy;
        if (!pointwise) {
            im2col(x, in, p, o, n0, nb, ws);
            col = ws;
            ldcol = cols;
        }
        fill_rows(y + off, ldy, p->cout, cols, b, r ? r + off : NULL);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->cout, (int)cols, k, 1.0f, w,
                    k, col, (int)ldcol, 1.0f, y + off, (int)ldy);
        activate_rows(y + off, ldy, p->cout, cols, act);
    }
}

void op_conv2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
               op_act act, float *y, float *ws)
{
    conv2d(x, in, p, w, b, NULL, act, y, ws);
}

void op_conv2d_add(const float *x, op_dims in, const op_conv *p, const float *w,
                   const float *b, const float *r, op_act act, float *y, float *ws)
{
    conv2d(x, in, p, w, b, r, act, y, ws);
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

void op_conv2d_add_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                       const float *b, const float *r, op_act act, float *y)
{
    op_dims o = op_conv2d_out(in, p);
    size_t count = (size_t)o.c * o.n * o.h * o.w;
    op_conv2d_ref(x, in, p, w, b, ACT_NONE, y);
    op_add_ref(y, r, count, act, y);
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
        float *yc = y + (size_t)n0 * ohw;
        fill_rows(yc, (size_t)in.n * ohw, p->cout, nb * ohw, b, NULL);
        col2im_add(ws, in, p, o, n0, nb, y);
        activate_rows(yc, (size_t)in.n * ohw, p->cout, nb * ohw, act);
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
    fill_rows(y, (size_t)n, out, (size_t)n, b, NULL);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, n, in, 1.0f, w, in, x, n,
                1.0f, y, n);
    activate_rows(y, (size_t)n, out, (size_t)n, act);
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

/* The max the reference computes, in its order: m = v > m ? v : m (NaNs are skipped). */
static inline float max_gt(float m, float v)
{
    return v > m ? v : m;
}

/* The common 2 x 2, stride 2, unpadded case, without the window clipping. */
static void maxpool_2x2(const float *x, op_dims in, op_dims o, float *y)
{
    size_t planes = (size_t)in.c * in.n;
    for (size_t pl = 0; pl < planes; pl++)
        for (int oy = 0; oy < o.h; oy++) {
            const float *r0 = x + (pl * in.h + 2 * (size_t)oy) * in.w, *r1 = r0 + in.w;
            float *d = y + (pl * o.h + oy) * o.w;
            for (int ox = 0; ox < o.w; ox++) {
                float m = max_gt(max_gt(-INFINITY, r0[2 * ox]), r0[2 * ox + 1]);
                d[ox] = max_gt(max_gt(m, r1[2 * ox]), r1[2 * ox + 1]);
            }
        }
}

/* Pooling works plane by plane: a CNHW tensor is C*N contiguous H x W planes. */
void op_maxpool(const float *x, op_dims in, const op_pool *p, float *y)
{
    op_dims o = op_pool_out(in, p);
    if (p->kh == 2 && p->kw == 2 && p->sh == 2 && p->sw == 2 && p->ph == 0 && p->pw == 0) {
        maxpool_2x2(x, in, o, y);
        return;
    }
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
                    for (int ix = x0; ix < x1; ix++)
                        m = max_gt(m, src[iy * in.w + ix]);
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
    switch (act) {
    case ACT_NONE:
        break;
    case ACT_RELU:
        for (size_t i = 0; i < count; i++)
            x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case ACT_SIGMOID:
        for (size_t i = 0; i < count; i++)
            x[i] = sigmoidf(x[i]);
        break;
    }
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
