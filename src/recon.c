#include "qevo/recon.h"

#include <cblas.h>
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/util.h"

/* Floats per image of a shape. */
static size_t volume(op_dims d)
{
    return (size_t)d.c * d.h * d.w;
}

/* Length of one output channel's weight row: conv2d (cout, cin*kh*kw), linear (out, in). */
static int row_length(const net_node *nd)
{
    if (nd->op == NET_LINEAR)
        return nd->p.conv.cin;
    return nd->p.conv.cin * nd->p.conv.kh * nd->p.conv.kw;
}

/* The layer's input columns for one block of bn images, (K, cols) row-major: im2col for
 * a conv, the (in, N) activation itself for a linear layer. */
static const float *input_columns(const net_node *nd, const float *x, int bn, float *buf,
                                  size_t *cols)
{
    if (nd->op == NET_LINEAR) {
        *cols = (size_t)bn;
        return x;
    }
    op_dims in = nd->in;
    in.n = bn;
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

/* Greedy sweeps over one output channel's codes (k of them, from codes[0]); returns its
 * error before (*before) and after, and the sweeps run. Error of the row:
 *   L(wq) = wq.H.wq - 2 wq.C.w + w.F.w,   half-gradient g = H.wq - C.w,
 * so moving weight j by d changes L by d (2 g_j + d H_jj), and g by d H[j, :]. */
static double reconstruct_row(const layer_problem *p, const float *w, const float *scale,
                              const int8_t *qmax, const int8_t *nearest, int8_t *codes,
                              double *work, double *before, double *scale_sq, int *sweeps)
{
    int k = p->k;
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
    *scale_sq = ff;
    /* Moves smaller than this are rounding noise of the Grams: stop there. */
    double tiny = 1e-12 * (ff > DBL_MIN ? ff : DBL_MIN);
    int s = 0;
    while (s < p->max_sweeps) {
        s++;
        int moved = 0;
        for (int j = 0; j < k; j++) {
            int lo = nearest[j] - p->max_shift, hi = nearest[j] + p->max_shift;
            lo = lo < -qmax[j] ? -qmax[j] : lo;
            hi = hi > qmax[j] ? qmax[j] : hi;
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

static void reconstruct_layer(const quant *q, const quant_layer *ql, const layer_problem *p,
                              const int8_t *nearest, int8_t *codes, recon_layer *st)
{
    const float *ref = quant_reference(q), *scale = quant_scale_of(q);
    const int8_t *qmax = quant_qmax_of(q);
    int k = p->k;
    size_t rows = ql->wcount / (size_t)k;
    double *work = qv_malloc(sizeof(double) * 4 * (size_t)k);
    int8_t *start = qv_malloc(ql->wcount);
    memcpy(start, codes + ql->woff, ql->wcount);
    double before = 0.0, after = 0.0, norm = 0.0;
    for (size_t r = 0; r < rows; r++) {
        size_t at = ql->woff + r * (size_t)k;
        double b, n;
        int sweeps;
        after += reconstruct_row(p, ref + at, scale + at, qmax + at, nearest + at, codes + at,
                                 work, &b, &n, &sweeps);
        before += b;
        norm += n;
        st->sweeps = sweeps > st->sweeps ? sweeps : st->sweeps;
    }
    for (size_t i = 0; i < ql->wcount; i++)
        st->changed += codes[ql->woff + i] != start[i];
    st->before = norm > 0.0 ? before / norm : 0.0;
    st->after = norm > 0.0 ? after / norm : 0.0;
    free(start);
    free(work);
}

void recon_run(net *nt, const quant *q, int8_t *codes, const evo_images *im, int eval_batch,
               int max_shift, int max_sweeps, recon_sum_fn sum, recon_layer *layers)
{
    size_t n = quant_size(q);
    QV_ASSERT(n == net_weight_count(nt) && im->count >= 1 && eval_batch >= 1);
    int8_t *nearest = qv_malloc(n ? n : 1);
    quant_nearest(q, nearest);
    int chunk = eval_batch < im->count ? eval_batch : im->count;
    int nchunks = (im->count + chunk - 1) / chunk;
    size_t per = volume(net_input_dims(nt));
    net_acts *af = net_acts_create(nt, chunk), *aq = net_acts_create(nt, chunk);
    /* Column buffers for the widest layer, one block at a time. */
    size_t col_floats = 1, kk_max = 1;
    for (int l = 0; l < quant_layer_count(q); l++) {
        const net_node *nd = net_node_at(nt, quant_layer_at(q, l)->node);
        size_t k = (size_t)row_length(nd);
        size_t cols = nd->op == NET_CONV2D ? (size_t)nd->out.h * nd->out.w : 1;
        size_t need = k * cols * (size_t)net_block_images(nt);
        col_floats = need > col_floats ? need : col_floats;
        kk_max = k * k > kk_max ? k * k : kk_max;
    }
    float *colq = qv_malloc(sizeof(float) * col_floats);
    float *colf = qv_malloc(sizeof(float) * col_floats);
    float *tmp = qv_malloc(sizeof(float) * kk_max);
    double *g3 = qv_malloc(sizeof(double) * 3 * kk_max);
    float *w = net_weights(nt);
    bool float_kept = false;
    for (int l = 0; l < quant_layer_count(q); l++) {
        const quant_layer *ql = quant_layer_at(q, l);
        const net_node *nd = net_node_at(nt, ql->node);
        recon_layer st = {.node = ql->node};
        if (nd->op != NET_CONVT2D) {
            int k = row_length(nd);
            size_t kk = (size_t)k * k;
            memset(g3, 0, sizeof(double) * 3 * kk);
            for (int c = 0; c < nchunks; c++) {
                int c0 = c * chunk, cn = im->count - c0 < chunk ? im->count - c0 : chunk;
                const float *x = im->x + (size_t)c0 * per;
                if (nchunks > 1 || !float_kept) { /* one chunk: the float pass is kept */
                    memcpy(w, quant_reference(q), sizeof(float) * n);
                    net_forward(nt, af, x, cn);
                    float_kept = true;
                }
                quant_apply(q, nt, codes);
                net_forward(nt, aq, x, cn);
                add_chunk_grams(nt, ql->node, aq, af, cn, colq, colf, tmp, g3);
            }
            if (sum)
                sum(g3, 3 * kk);
            symmetrize(k, g3);
            symmetrize(k, g3 + 2 * kk);
            layer_problem p = {k, g3, g3 + kk, g3 + 2 * kk, max_shift, max_sweeps};
            st.reconstructed = 1;
            reconstruct_layer(q, ql, &p, nearest, codes, &st);
        }
        if (layers)
            layers[l] = st;
    }
    quant_apply(q, nt, codes);
    free(g3);
    free(tmp);
    free(colf);
    free(colq);
    net_acts_free(aq);
    net_acts_free(af);
    free(nearest);
}
