#include "qevo/recon.h"

#include <cblas.h>
#include <float.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/util.h"

/* Floats per image of a shape. */
static size_t volume(op_dims d)
{
    return (size_t)d.c * d.h * d.w;
}

/* Length of one output channel's weight row (its inputs): K = cin*kh*kw, or in for a
 * linear layer. */
static int row_length(const net_node *nd)
{
    if (nd->op == NET_LINEAR)
        return nd->p.conv.cin;
    return nd->p.conv.cin * nd->p.conv.kh * nd->p.conv.kw;
}

/* Offset in the layer's weights of input j = (c, ki, kj) of output channel o: rows are
 * contiguous for conv2d (cout, cin*kh*kw) and linear (out, in); a convtranspose2d stores
 * (cin, cout*kh*kw). */
static size_t weight_at(const net_node *nd, int o, int j)
{
    const op_conv *p = &nd->p.conv;
    if (nd->op != NET_CONVT2D)
        return (size_t)o * row_length(nd) + j;
    int taps = p->kh * p->kw;
    return ((size_t)(j / taps) * p->cout + o) * taps + j % taps;
}

/* Columns of a transposed convolution, (cin*kh*kw, N*OH*OW): row (c, ki, kj), column
 * (image, oy, ox) holds the input pixel that tap (ki, kj) carries to (oy, ox), or 0. */
static void convt_columns(const float *x, op_dims in, const op_conv *p, op_dims o, float *col)
{
    size_t cols = (size_t)in.n * o.h * o.w;
    for (int c = 0; c < in.c; c++)
        for (int ki = 0; ki < p->kh; ki++)
            for (int kj = 0; kj < p->kw; kj++) {
                float *d = col + (((size_t)c * p->kh + ki) * p->kw + kj) * cols;
                for (int n = 0; n < in.n; n++) {
                    const float *src = x + ((size_t)c * in.n + n) * in.h * in.w;
                    for (int oy = 0; oy < o.h; oy++)
                        for (int ox = 0; ox < o.w; ox++, d++) {
                            int ty = oy + p->ph - ki, tx = ox + p->pw - kj;
                            int iy = ty / p->sh, ix = tx / p->sw;
                            bool hit = ty >= 0 && tx >= 0 && ty % p->sh == 0 &&
                                       tx % p->sw == 0 && iy < in.h && ix < in.w;
                            *d = hit ? src[(size_t)iy * in.w + ix] : 0.0f;
                        }
                }
            }
}

/* The layer's input columns for one block of bn images, (K, cols) row-major: im2col for
 * a conv, its transposed counterpart for a convtranspose2d, the (in, N) activation
 * itself for a linear layer. */
static const float *input_columns(const net_node *nd, const float *x, int bn, float *buf,
                                  size_t *cols)
{
    if (nd->op == NET_LINEAR) {
        *cols = (size_t)bn;
        return x;
    }
    op_dims in = nd->in, out = nd->out;
    in.n = out.n = bn;
    if (nd->op == NET_CONVT2D)
        convt_columns(x, in, &nd->p.conv, out, buf);
    else
        op_im2col(x, in, &nd->p.conv, buf);
    *cols = (size_t)bn * nd->out.h * nd->out.w;
    return buf;
}

/* acc (k x k, double) += a b^T for a, b (k x cols) row-major; tmp holds k * k floats. */
static void add_gram(int k, size_t cols, const float *a, const float *b, float *tmp, double *acc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, k, (int)cols, 1.0f, a, (int)cols,
                b, (int)cols, 0.0f, tmp, k);
    for (size_t i = 0; i < (size_t)k * k; i++)
        acc[i] += tmp[i];
}

/* The three Grams (H, C, F: 3 k^2 doubles, added to) of node `node` over the blocks of
 * one chunk of n images held by the quantized pass aq and the float pass af. */
static void add_chunk_grams(const net *nt, int node, const net_acts *aq, const net_acts *af,
                            int n, float *colq, float *colf, float *tmp, double *g3)
{
    const net_node *nd = net_node_at(nt, node);
    int k = row_length(nd), block = net_block_images(nt);
    size_t kk = (size_t)k * k;
    for (int b0 = 0; b0 < n; b0 += block) {
        int bn = n - b0 < block ? n - b0 : block;
        size_t cols;
        const float *xq = input_columns(nd, net_node_input(nt, aq, node, b0), bn, colq, &cols);
        const float *xf = input_columns(nd, net_node_input(nt, af, node, b0), bn, colf, &cols);
        add_gram(k, cols, xq, xq, tmp, g3);
        add_gram(k, cols, xq, xf, tmp, g3 + kk);
        add_gram(k, cols, xf, xf, tmp, g3 + 2 * kk);
    }
}

/* Makes a Gram exactly symmetric (its sgemm halves may differ in the last bits). */
static void symmetrize(int k, double *g)
{
    for (int i = 0; i < k; i++)
        for (int j = i + 1; j < k; j++) {
            double m = 0.5 * (g[(size_t)i * k + j] + g[(size_t)j * k + i]);
            g[(size_t)i * k + j] = g[(size_t)j * k + i] = m;
        }
}

typedef struct {
    int k;
    const double *h, *c, *f; /* Grams, k x k row-major */
    int max_shift, max_sweeps;
} layer_problem;

/* One output channel's weights, gathered contiguous. */
typedef struct {
    float *w, *scale;
    int8_t *lo, *hi, *nearest, *codes;
} row_view;

/* Greedy sweeps over one output channel's codes (v->codes, k of them); returns its
 * error after, and gives its error before, its ||W X||^2 (norm) and the sweeps run.
 * Error of the row:
 *   L(wq) = wq.H.wq - 2 wq.C.w + w.F.w,   half-gradient g = H.wq - C.w,
 * so moving weight j by d changes L by d (2 g_j + d H_jj), and g by d H[j, :]. */
static double reconstruct_row(const layer_problem *p, const row_view *v, double *work,
                              double *before, double *norm, int *sweeps)
{
    int k = p->k;
    const float *w = v->w, *scale = v->scale;
    const int8_t *cmin = v->lo, *cmax = v->hi, *nearest = v->nearest;
    int8_t *codes = v->codes;
    double *wq = work, *wf = work + k, *g = work + 2 * k, *t = work + 3 * k;
    for (int j = 0; j < k; j++) {
        wq[j] = (double)codes[j] * scale[j];
        wf[j] = w[j];
    }
    cblas_dsymv(CblasRowMajor, CblasUpper, k, 1.0, p->f, k, wf, 1, 0.0, t, 1);
    double ff = cblas_ddot(k, wf, 1, t, 1);
    cblas_dgemv(CblasRowMajor, CblasNoTrans, k, k, 1.0, p->c, k, wf, 1, 0.0, t, 1);
    cblas_dsymv(CblasRowMajor, CblasUpper, k, 1.0, p->h, k, wq, 1, 0.0, g, 1);
    double loss = cblas_ddot(k, wq, 1, g, 1) - 2.0 * cblas_ddot(k, wq, 1, t, 1) + ff;
    cblas_daxpy(k, -1.0, t, 1, g, 1);
    *before = loss;
    *norm = ff;
    /* Moves smaller than this are rounding noise of the Grams: stop there. */
    double tiny = 1e-12 * (ff > DBL_MIN ? ff : DBL_MIN);
    int s = 0;
    while (s < p->max_sweeps) {
        s++;
        int moved = 0;
        for (int j = 0; j < k; j++) {
            int lo = nearest[j] - p->max_shift, hi = nearest[j] + p->max_shift;
            lo = lo < cmin[j] ? cmin[j] : lo;
            hi = hi > cmax[j] ? cmax[j] : hi;
            double hjj = p->h[(size_t)j * k + j], best = -tiny;
            int to = codes[j];
            for (int cand = lo; cand <= hi; cand++) {
                double d = (double)(cand - codes[j]) * scale[j];
                double change = d * (2.0 * g[j] + d * hjj);
                if (cand != codes[j] && change < best) {
                    best = change;
                    to = cand;
                }
            }
            if (to == codes[j])
                continue;
            double d = (double)(to - codes[j]) * scale[j];
            cblas_daxpy(k, d, p->h + (size_t)j * k, 1, g, 1);
            codes[j] = (int8_t)to;
            loss += best;
            moved++;
        }
        if (!moved)
            break;
    }
    *sweeps = s;
    return loss;
}

static void reconstruct_layer(const quant *q, const quant_layer *ql, const net_node *nd,
                              const layer_problem *p, const int8_t *nearest, int8_t *codes,
                              recon_layer *st)
{
    int k = p->k;
    size_t rows = ql->wcount / (size_t)k;
    double *work = qv_malloc(sizeof(double) * 4 * (size_t)k);
    row_view v = {qv_malloc(sizeof(float) * (size_t)k), qv_malloc(sizeof(float) * (size_t)k),
                  qv_malloc((size_t)k), qv_malloc((size_t)k), qv_malloc((size_t)k),
                  qv_malloc((size_t)k)};
    double before = 0.0, after = 0.0, norm = 0.0;
    for (size_t r = 0; r < rows; r++) {
        for (int j = 0; j < k; j++) {
            size_t i = ql->woff + weight_at(nd, (int)r, j);
            v.w[j] = quant_reference(q)[i];
            v.scale[j] = quant_scale_of(q)[i];
            v.lo[j] = quant_lo_of(q)[i];
            v.hi[j] = quant_hi_of(q)[i];
            v.nearest[j] = nearest[i];
            v.codes[j] = codes[i];
        }
        double b, n;
        int sweeps;
        after += reconstruct_row(p, &v, work, &b, &n, &sweeps);
        before += b;
        norm += n;
        st->sweeps = sweeps > st->sweeps ? sweeps : st->sweeps;
        for (int j = 0; j < k; j++) {
            size_t i = ql->woff + weight_at(nd, (int)r, j);
            st->changed += codes[i] != v.codes[j];
            codes[i] = v.codes[j];
        }
    }
    st->before = norm > 0.0 ? before / norm : 0.0;
    st->after = norm > 0.0 ? after / norm : 0.0;
    free(v.w), free(v.scale), free(v.lo), free(v.hi), free(v.nearest), free(v.codes);
    free(work);
}

/* Passes and buffers shared by the layers of one reconstruction. */
typedef struct {
    net *nt;
    const quant *q;
    const evo_images *im;
    int chunk, nchunks;
    bool float_kept;  /* one chunk: its float pass serves every layer */
    net_acts *af, *aq; /* float and quantized passes of one chunk */
    float *colq, *colf, *tmp;
    double *g3;       /* H, C, F of the current layer */
} recon_ctx;

static void ctx_init(recon_ctx *x, net *nt, const quant *q, const evo_images *im,
                     int eval_batch)
{
    x->nt = nt, x->q = q, x->im = im;
    x->chunk = eval_batch < im->count ? eval_batch : im->count;
    x->nchunks = (im->count + x->chunk - 1) / x->chunk;
    x->float_kept = false;
    x->af = net_acts_create(nt, x->chunk);
    x->aq = net_acts_create(nt, x->chunk);
    /* Column buffers for the widest layer, one block at a time. */
    size_t col_floats = 1, kk_max = 1;
    for (int l = 0; l < quant_layer_count(q); l++) {
        const net_node *nd = net_node_at(nt, quant_layer_at(q, l)->node);
        size_t k = (size_t)row_length(nd);
        if (k > RECON_MAX_INPUTS)
            continue;
        size_t cols = nd->op == NET_LINEAR ? 1 : (size_t)nd->out.h * nd->out.w;
        size_t need = k * cols * (size_t)net_block_images(nt);
        col_floats = need > col_floats ? need : col_floats;
        kk_max = k * k > kk_max ? k * k : kk_max;
    }
    x->colq = qv_malloc(sizeof(float) * col_floats);
    x->colf = qv_malloc(sizeof(float) * col_floats);
    x->tmp = qv_malloc(sizeof(float) * kk_max);
    x->g3 = qv_malloc(sizeof(double) * 3 * kk_max);
}

static void ctx_free(recon_ctx *x)
{
    free(x->g3), free(x->tmp), free(x->colf), free(x->colq);
    net_acts_free(x->aq);
    net_acts_free(x->af);
}

/* The Grams of node `node` (k inputs) over every image, codes applied for the
 * quantized pass, summed over islands; into x->g3. */
static void layer_grams(recon_ctx *x, int node, int k, const int8_t *codes, recon_sum_fn sum)
{
    size_t kk = (size_t)k * k, n = quant_size(x->q);
    size_t per = volume(net_input_dims(x->nt));
    memset(x->g3, 0, sizeof(double) * 3 * kk);
    for (int c = 0; c < x->nchunks; c++) {
        int c0 = c * x->chunk, cn = x->im->count - c0 < x->chunk ? x->im->count - c0 : x->chunk;
        const float *images = x->im->x + (size_t)c0 * per;
        if (x->nchunks > 1 || !x->float_kept) {
            memcpy(net_weights(x->nt), quant_reference(x->q), sizeof(float) * n);
            net_forward(x->nt, x->af, images, cn);
            x->float_kept = true;
        }
        quant_apply(x->q, x->nt, codes);
        net_forward(x->nt, x->aq, images, cn);
        add_chunk_grams(x->nt, node, x->aq, x->af, cn, x->colq, x->colf, x->tmp, x->g3);
    }
    if (sum)
        sum(x->g3, 3 * kk);
    symmetrize(k, x->g3);
    symmetrize(k, x->g3 + 2 * kk);
}

void recon_run(net *nt, const quant *q, int8_t *codes, const evo_images *im, int eval_batch,
               int max_shift, int max_sweeps, recon_sum_fn sum, recon_layer *layers)
{
    size_t n = quant_size(q);
    QV_ASSERT(n == net_weight_count(nt) && im->count >= 1 && eval_batch >= 1);
    int8_t *nearest = qv_malloc(n ? n : 1);
    quant_nearest(q, nearest);
    recon_ctx x;
    ctx_init(&x, nt, q, im, eval_batch);
    for (int l = 0; l < quant_layer_count(q); l++) {
        const quant_layer *ql = quant_layer_at(q, l);
        const net_node *nd = net_node_at(nt, ql->node);
        int k = row_length(nd);
        size_t kk = (size_t)k * k;
        recon_layer st = {.node = ql->node, .inputs = k, .skipped = k > RECON_MAX_INPUTS};
        if (!st.skipped) {
            layer_grams(&x, ql->node, k, codes, sum);
            layer_problem p = {k, x.g3, x.g3 + kk, x.g3 + 2 * kk, max_shift, max_sweeps};
            reconstruct_layer(q, ql, nd, &p, nearest, codes, &st);
        }
        if (layers)
            layers[l] = st;
    }
    quant_apply(q, nt, codes);
    ctx_free(&x);
    free(nearest);
}
