#include "qevo/evo.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Images and scores ---- */

static size_t per_image(op_dims d)
{
    return (size_t)d.c * d.h * d.w;
}

static void apply_reference(net *nt, const quant *q)
{
    memcpy(net_weights(nt), quant_reference(q), sizeof(float) * quant_size(q));
}

void evo_images_prepare(evo_images *im, const data_set *ds, const int *idx, int count,
                        net *nt, const quant *q, int eval_batch, double temperature)
{
    memset(im, 0, sizeof *im);
    im->count = count;
    im->temperature = temperature;
    op_dims in = net_input_dims(nt), od = net_output_dims(nt);
    size_t in_per = per_image(in), out_per = per_image(od);
    im->x = qv_malloc_aligned(sizeof(float) * in_per * (size_t)(count ? count : 1));
    data_normalize(ds, idx, count, net_mean(nt), net_std(nt), im->x);
    if (net_get_task(nt) == NET_RECONSTRUCT) {
        float zero[64] = {0}, one[64];
        QV_ASSERT(in.c <= 64);
        for (int c = 0; c < in.c; c++)
            one[c] = 1.0f;
        im->target = qv_malloc_aligned(sizeof(float) * in_per * (size_t)(count ? count : 1));
        data_normalize(ds, idx, count, zero, one, im->target);
        return;
    }
    im->labels = qv_malloc(sizeof(int32_t) * (size_t)(count ? count : 1));
    for (int i = 0; i < count; i++)
        im->labels[i] = ds->labels[idx[i]];
    /* The float teacher: the reference weights, restored to what nt held afterwards. */
    float *saved = qv_malloc_aligned(sizeof(float) * quant_size(q) + 64);
    memcpy(saved, net_weights(nt), sizeof(float) * quant_size(q));
    apply_reference(nt, q);
    im->teacher = qv_malloc_aligned(sizeof(float) * out_per * (size_t)(count ? count : 1));
    net_acts *a = net_acts_create(nt, eval_batch);
    for (int b0 = 0; b0 < count; b0 += eval_batch) {
        int n = count - b0 < eval_batch ? count - b0 : eval_batch;
        net_forward(nt, a, im->x + (size_t)b0 * in_per, n);
        net_output(nt, a, n, im->teacher + (size_t)b0 * out_per);
    }
    fit_log_softmax(im->teacher, count, (int)out_per, temperature, im->teacher);
    net_acts_free(a);
    memcpy(net_weights(nt), saved, sizeof(float) * quant_size(q));
    qv_free_aligned(saved);
}

/* Image j's copy of node k's input in a pass of n images in a: (feat_dim). Activations
 * are CNHW per block of net_block_images() images. */
static void node_input_of(const net *nt, const net_acts *a, int k, int n, int j, float *out)
{
    const net_node *nd = net_node_at(nt, k);
    int block = net_block_images(nt), b0 = j / block * block;
    int nb = n - b0 < block ? n - b0 : block;
    size_t hw = (size_t)nd->in.h * nd->in.w;
    const float *x = net_node_input(nt, a, k, b0);
    for (int c = 0; c < nd->in.c; c++)
        memcpy(out + (size_t)c * hw, x + ((size_t)c * nb + (size_t)(j - b0)) * hw,
               sizeof(float) * hw);
}

void evo_images_add_features(evo_images *im, net *nt, const quant *q, int eval_batch,
                             double weight)
{
    im->feat_node = quant_layer_at(q, quant_layer_count(q) - 1)->node;
    im->feat_dim = (int)per_image(net_node_at(nt, im->feat_node)->in);
    size_t dim = (size_t)im->feat_dim, in_per = per_image(net_input_dims(nt));
    im->feat = qv_malloc_aligned(sizeof(float) * dim * (size_t)(im->count ? im->count : 1));
    float *saved = qv_malloc_aligned(sizeof(float) * quant_size(q) + 64);
    memcpy(saved, net_weights(nt), sizeof(float) * quant_size(q));
    apply_reference(nt, q);
    net_acts *a = net_acts_create(nt, eval_batch);
    double norm = 0.0;
    for (int b0 = 0; b0 < im->count; b0 += eval_batch) {
        int n = im->count - b0 < eval_batch ? im->count - b0 : eval_batch;
        net_forward(nt, a, im->x + (size_t)b0 * in_per, n);
        for (int j = 0; j < n; j++) {
            float *f = im->feat + (size_t)(b0 + j) * dim;
            node_input_of(nt, a, im->feat_node, n, j, f);
            for (size_t d = 0; d < dim; d++)
                norm += (double)f[d] * f[d];
        }
    }
    net_acts_free(a);
    memcpy(net_weights(nt), saved, sizeof(float) * quant_size(q));
    qv_free_aligned(saved);
    norm = im->count ? norm / im->count : 0.0;
    im->feat_weight = norm > 0.0 ? weight / norm : 0.0;
}

void evo_images_free(evo_images *im)
{
    qv_free_aligned(im->x);
    qv_free_aligned(im->feat);
    qv_free_aligned(im->teacher);
    qv_free_aligned(im->target);
    free(im->labels);
    memset(im, 0, sizeof *im);
}

/* Copies `count` rows of `per` floats (or ints) selected by rows[]. */
static void *gather_rows(const void *src, size_t row_bytes, const int *rows, int count, bool aligned)
{
    if (!src)
        return NULL;
    size_t bytes = row_bytes * (size_t)(count ? count : 1);
    char *dst = aligned ? qv_malloc_aligned(bytes) : qv_malloc(bytes);
    for (int i = 0; i < count; i++)
        memcpy(dst + (size_t)i * row_bytes, (const char *)src + (size_t)rows[i] * row_bytes,
               row_bytes);
    return dst;
}

void evo_images_subset(evo_images *dst, const evo_images *src, const int *rows, int count,
                       const net *nt)
{
    size_t in_per = per_image(net_input_dims(nt)), out_per = per_image(net_output_dims(nt));
    memset(dst, 0, sizeof *dst);
    dst->count = count;
    dst->temperature = src->temperature;
    dst->x = gather_rows(src->x, sizeof(float) * in_per, rows, count, true);
    dst->labels = gather_rows(src->labels, sizeof(int32_t), rows, count, false);
    dst->teacher = gather_rows(src->teacher, sizeof(float) * out_per, rows, count, true);
    dst->target = gather_rows(src->target, sizeof(float) * out_per, rows, count, true);
    dst->feat = gather_rows(src->feat, sizeof(float) * (size_t)src->feat_dim, rows, count, true);
    dst->feat_node = src->feat_node;
    dst->feat_dim = src->feat_dim;
    dst->feat_weight = src->feat_weight;
}

/* The selection loss of one image's totals: what the fitness kind ranks by. */
static double image_loss(fit_kind kind, const fit_totals *t)
{
    switch (kind) {
    case FIT_KL: return t->kl + t->feat;
    case FIT_CROSS_ENTROPY: return t->ce + t->feat;
    case FIT_ACCURACY: return t->ce; /* correct/wrong is too coarse to pair */
    case FIT_MSE:
    case FIT_PSNR: return t->sq_err;
    }
    return 0;
}

/* What a scoring pass records beside the totals. */
typedef struct {
    fit_kind kind;
    float *loss;           /* per-image losses under kind, or NULL */
    double *ferr;           /* per-image feature terms (images with features), or NULL */
    const double *ferr_same; /* feature terms to take as they are: the pass did not
                             * recompute the feature node's input (or NULL) */
} score_out;

/* The feature term of image j (of a pass of n in a) whose features are f_ref. */
static double feature_term(const net *nt, const net_acts *a, const evo_images *im, int n, int j,
                           const float *f_ref, float *scratch)
{
    node_input_of(nt, a, im->feat_node, n, j, scratch);
    double e = 0.0;
    for (int d = 0; d < im->feat_dim; d++) {
        double diff = (double)scratch[d] - f_ref[d];
        e += diff * diff;
    }
    return im->feat_weight * e;
}

/* Adds the scores of images [b0, b0+n) of im whose outputs are in a; o (or NULL) says
 * what else to record. Per-image work only where a loss or a feature term asks for it. */
static void score_chunk(const net *nt, const net_acts *a, const evo_images *im, int b0, int n,
                        float *y, fit_totals *t, const score_out *o)
{
    size_t out_per = per_image(net_output_dims(nt));
    net_output(nt, a, n, y);
    if ((o && o->loss) || im->feat) { /* image by image: the same totals, plus each image's */
        float *scratch = im->feat ? qv_malloc(sizeof(float) * (size_t)im->feat_dim) : NULL;
        for (int i = 0; i < n; i++) {
            fit_totals one = {0};
            const float *yi = y + (size_t)i * out_per;
            size_t row = (size_t)(b0 + i) * out_per;
            if (net_get_task(nt) == NET_CLASSIFY)
                fit_classify(yi, 1, (int)out_per, im->labels + b0 + i, im->teacher + row,
                             im->temperature, &one);
            else
                fit_reconstruct(yi, im->target + row, out_per, 1, &one);
            if (im->feat) {
                one.feat = o && o->ferr_same
                               ? o->ferr_same[b0 + i]
                               : feature_term(nt, a, im, n, i,
                                              im->feat + (size_t)(b0 + i) * im->feat_dim, scratch);
                if (o && o->ferr)
                    o->ferr[b0 + i] = one.feat;
            }
            if (o && o->loss)
                o->loss[b0 + i] = (float)image_loss(o->kind, &one);
            fit_add(t, &one);
        }
        free(scratch);
        return;
    }
    if (net_get_task(nt) == NET_CLASSIFY)
        fit_classify(y, n, (int)out_per, im->labels + b0, im->teacher + (size_t)b0 * out_per,
                     im->temperature, t);
    else
        fit_reconstruct(y, im->target + (size_t)b0 * out_per, out_per * (size_t)n, n, t);
}

/* Per image of a chunk whose outputs are y: correct (1/0) or mean squared error. */
static void per_image_scores(const net *nt, const evo_images *im, int b0, int n,
                             const float *y, float *out)
{
    size_t per = per_image(net_output_dims(nt));
    for (int i = 0; i < n; i++) {
        const float *yi = y + (size_t)i * per;
        if (net_get_task(nt) == NET_CLASSIFY) {
            size_t arg = 0;
            for (size_t k = 1; k < per; k++)
                arg = yi[k] > yi[arg] ? k : arg;
            out[b0 + i] = (int32_t)arg == im->labels[b0 + i];
        } else {
            const float *t = im->target + (size_t)(b0 + i) * per;
            double s = 0;
            for (size_t k = 0; k < per; k++)
                s += ((double)yi[k] - t[k]) * ((double)yi[k] - t[k]);
            out[b0 + i] = (float)(s / (double)per);
        }
    }
}

fit_totals evo_score(net *nt, const quant *q, const int8_t *codes, const evo_images *im,
                     net_acts *work, float *per_image_out)
{
    quant_apply(q, nt, codes);
    return evo_score_weights(nt, im, work, per_image_out);
}

fit_totals evo_score_weights(const net *nt, const evo_images *im, net_acts *work,
                             float *per_image_out)
{
    fit_totals t = {0};
    int batch = net_acts_batch(work);
    size_t in_per = per_image(net_input_dims(nt)), out_per = per_image(net_output_dims(nt));
    float *y = qv_malloc_aligned(sizeof(float) * out_per * (size_t)batch);
    for (int b0 = 0; b0 < im->count; b0 += batch) {
        int n = im->count - b0 < batch ? im->count - b0 : batch;
        net_forward(nt, work, im->x + (size_t)b0 * in_per, n);
        score_chunk(nt, work, im, b0, n, y, &t, NULL);
        if (per_image_out)
            per_image_scores(nt, im, b0, n, y, per_image_out);
    }
    qv_free_aligned(y);
    return t;
}

evo_key evo_key_of(fit_kind kind, const fit_totals *t)
{
    evo_key k = {{0, 0}};
    switch (kind) {
    case FIT_KL: /* plus the feature term, where the images have one */
        k.k[0] = t->images ? (t->kl + t->feat) / t->images : 0.0;
        break;
    case FIT_CROSS_ENTROPY:
        k.k[0] = t->images ? (t->ce + t->feat) / t->images : 0.0;
        break;
    case FIT_ACCURACY:
        k.k[0] = -t->correct;
        k.k[1] = fit_mean_ce(t);
        break;
    case FIT_MSE:
    case FIT_PSNR: /* PSNR is a decreasing function of MSE: the same order */
        k.k[0] = fit_mse(t);
        break;
    }
    return k;
}

int evo_key_cmp(evo_key a, evo_key b)
{
    for (int i = 0; i < 2; i++)
        if (a.k[i] != b.k[i])
            return a.k[i] < b.k[i] ? -1 : 1;
    return 0;
}

double evo_value(fit_kind kind, const fit_totals *t)
{
    switch (kind) {
    case FIT_KL: return fit_mean_kl(t);
    case FIT_CROSS_ENTROPY: return fit_mean_ce(t);
    case FIT_ACCURACY: return fit_accuracy(t);
    case FIT_MSE: return fit_mse(t);
    case FIT_PSNR: return fit_psnr(t);
    }
    return 0;
}

/* ---- Sparse differences ---- */

size_t evo_diff(const int8_t *base, const int8_t *codes, size_t n, evo_change *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (base[i] != codes[i]) {
            if (out)
                out[k] = (evo_change){(uint32_t)i, codes[i]};
            k++;
        }
    return k;
}

void evo_patch(int8_t *codes, const evo_change *changes, size_t count)
{
    for (size_t k = 0; k < count; k++)
        codes[changes[k].idx] = changes[k].code;
}

/* ---- Operators ---- */

void evo_weights_init(evo_weights *w, const quant *q)
{
    size_t n = quant_size(q);
    w->n = n;
    w->ratio = qv_malloc(sizeof(float) * (n ? n : 1));
    w->lo = qv_malloc(n ? n : 1);
    w->nearest = qv_malloc(n ? n : 1);
    w->closeness = qv_malloc(sizeof(float) * (n ? n : 1));
    const float *ref = quant_reference(q), *scale = quant_scale_of(q);
    const int8_t *lo = quant_lo_of(q), *hi = quant_hi_of(q);
    for (size_t i = 0; i < n; i++) {
        float r = ref[i] / scale[i];
        float f = floorf(r);
        w->ratio[i] = r;
        w->lo[i] = (int8_t)fmaxf(lo[i], fminf(hi[i], f));
        w->nearest[i] = quant_nearest_code(ref[i], scale[i], lo[i], hi[i]);
        w->closeness[i] = 1.0f - 2.0f * fabsf((r - f) - 0.5f);
    }
}

void evo_weights_free(evo_weights *w)
{
    free(w->ratio);
    free(w->lo);
    free(w->nearest);
    free(w->closeness);
    memset(w, 0, sizeof *w);
}

/* A new code for weight i under the step kind, or the current one if it cannot move. */
static int8_t step_code(const config *c, const evo_weights *w, int cmin, int cmax, size_t i,
                        int code, rng *r)
{
    int near = w->nearest[i], shift = c->evolution.max_shift;
    int lo = near - shift < cmin ? cmin : near - shift;
    int hi = near + shift > cmax ? cmax : near + shift;
    int next = code;
    switch (c->evolution.step) {
    case STEP_FLIP: {
        int down = w->lo[i], up = down + 1 > cmax ? cmax : down + 1;
        next = code == down ? up : code == up ? down : (abs(code - down) < abs(code - up) ? down : up);
        break;
    }
    case STEP_PM1: {
        int d = rng_below(r, 2) ? 1 : -1;
        next = code + d;
        if (next < lo || next > hi)
            next = code - d;
        break;
    }
    case STEP_RANDOM:
        if (hi > lo) {
            next = lo + (int)rng_below(r, (uint32_t)(hi - lo));
            if (next >= code)
                next++; /* uniform over the range without the current code */
        }
        break;
    }
    if (next < lo || next > hi)
        return (int8_t)code;
    return (int8_t)next;
}

/* Picks a weight in [begin, end), preferring those near a rounding boundary by the bias. */
static size_t pick_weight(const evo_weights *w, double bias, size_t begin, size_t end, rng *r)
{
    for (;;) {
        size_t i = begin + (size_t)(rng_uniform(r) * (double)(end - begin));
        if (i >= end)
            i = end - 1;
        if (bias <= 0 || rng_uniform(r) < (1.0 - bias) + bias * w->closeness[i])
            return i;
    }
}

static int pick_layer(const int *layers, const double *weight, int nlayers, rng *r)
{
    double total = 0;
    for (int k = 0; k < nlayers; k++)
        total += weight[k];
    double x = rng_uniform(r) * total;
    for (int k = 0; k < nlayers; k++) {
        x -= weight[k];
        if (x < 0)
            return layers[k];
    }
    return layers[nlayers - 1];
}

size_t evo_mutate(const config *c, const quant *q, const evo_weights *w, double rate,
                  const int *layers, const double *layer_weight, int nlayers, int8_t *codes,
                  uint32_t *changed, rng *r)
{
    size_t begin = 0, end = w->n;
    if (c->evolution.spread == SPREAD_ONE_LAYER) {
        const quant_layer *ql = quant_layer_at(q, pick_layer(layers, layer_weight, nlayers, r));
        begin = ql->woff;
        end = ql->woff + ql->wcount;
    }
    size_t want = (size_t)llround(rate * (double)(end - begin));
    if (want < (size_t)c->evolution.min_weights)
        want = (size_t)c->evolution.min_weights;
    if (want > end - begin)
        want = end - begin;
    const int8_t *cmin = quant_lo_of(q), *cmax = quant_hi_of(q);
    size_t count = 0;
    /* Distinct weights; a few extra tries allow for weights that cannot move. */
    for (size_t tries = 0; count < want && tries < 4 * want + 16; tries++) {
        size_t i = pick_weight(w, c->evolution.boundary_bias, begin, end, r);
        int8_t next = step_code(c, w, cmin[i], cmax[i], i, codes[i], r);
        if (next == codes[i])
            continue;
        bool seen = false;
        for (size_t k = 0; k < count && !seen; k++)
            seen = changed[k] == i;
        if (seen)
            continue;
        codes[i] = next;
        changed[count++] = (uint32_t)i;
    }
    return count;
}

size_t evo_crossover(const int8_t *a, const int8_t *b, size_t n, int8_t *child,
                     uint32_t *changed, rng *r)
{
    memcpy(child, a, n);
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i] && rng_below(r, 2)) {
            child[i] = b[i];
            changed[count++] = (uint32_t)i;
        }
    return count;
}

/* ---- The island ---- */

struct evo_island {
    net *nt;
    const quant *q;
    const config *c;
    const evo_images *batch;
    const evo_images *confirm; /* confirmation batch, or NULL */
    evo_weights w;
    uint32_t island;
    size_t n;                /* weights */
    int *layers;             /* quantized layers mutations may touch */
    int nlayers;
    double *layer_weight;    /* probability weights of choosing each of them */
    double *gain, *cost;     /* adaptive choice: recent improvement and FLOPs per layer */
    int *kid_layer;          /* layer index (into layers) of each kid's mutation, or -1 */
    int *first_node_of;      /* quantized layer -> net node */
    int mu, lambda;
    evo_member *pop;         /* mu members, sorted best first */
    evo_member *kids;        /* lambda offspring */
    int *kid_parent;         /* index into pop at breeding time */
    int *kid_first;          /* first changed node */
    uint32_t *changed;       /* scratch, n */
    float *import_loss;      /* per-image losses of an arriving migrant */
    float *import_closs;     /* its losses on the confirmation batch */
    double *import_ferr;     /* its feature terms */
    double rate;
    uint64_t next_id;
    /* Activation caches: slots of cut-node storage, each one net_acts per chunk. */
    int chunks;
    int nslots;
    net_acts ***slots;
    bool *slot_used;
    size_t slot_bytes;
    net_acts *work;          /* full storage for one chunk */
    float *y;                /* outputs of one chunk */
    evo_stats stats;
    rng r;
};

static int chunk_size(const evo_island *is, int c)
{
    int b = net_acts_batch(is->work), b0 = c * b;
    return is->batch->count - b0 < b ? is->batch->count - b0 : b;
}

static int acquire_slot(evo_island *is)
{
    for (int s = 0; s < is->nslots; s++)
        if (!is->slot_used[s]) {
            is->slot_used[s] = true;
            return s;
        }
    return -1;
}

static void release(evo_island *is, evo_member *m)
{
    if (m->cache >= 0)
        is->slot_used[m->cache] = false;
    m->cache = -1;
}

/* Full passes over the batch with the weights now in the net; fills slot s if >= 0 and
 * per-image losses if loss is not NULL. */
static fit_totals full_pass(evo_island *is, int s, float *loss, double *ferr)
{
    score_out o = {is->c->fitness.kind, loss, ferr, NULL};
    fit_totals t = {0};
    size_t in_per = per_image(net_input_dims(is->nt));
    int b = net_acts_batch(is->work);
    for (int c = 0; c < is->chunks; c++) {
        int n = chunk_size(is, c);
        net_forward(is->nt, is->work, is->batch->x + (size_t)c * b * in_per, n);
        score_chunk(is->nt, is->work, is->batch, c * b, n, is->y, &t, &o);
        if (s >= 0)
            net_acts_copy(is->nt, is->work, is->slots[s][c], 0, net_node_count(is->nt), n);
    }
    is->stats.flops += net_flops(is->nt) * is->batch->count;
    return t;
}

/* Paired selection: members carry per-image losses. */
static bool paired(const evo_island *is)
{
    return is->c->evolution.significance > 0;
}

/* Gives member m a cache if a slot is free. */
static void give_cache(evo_island *is, evo_member *m)
{
    if (m->cache >= 0 || is->nslots == 0)
        return;
    int s = acquire_slot(is);
    if (s < 0)
        return;
    quant_apply(is->q, is->nt, m->codes);
    full_pass(is, s, paired(is) ? m->loss : NULL, m->ferr);
    m->loss_valid = paired(is);
    m->cache = s;
    is->stats.cache_builds++;
}

/* Scores codes (already in the net) resuming from parent's cache at node first. */
static fit_totals resumed_pass(evo_island *is, const evo_member *parent, int first,
                               float *loss, double *ferr)
{
    fit_totals t = {0};
    int r = net_resume_node(is->nt, first);
    /* A pass from r recomputes the feature node's input only if its producer is at or
     * after r; otherwise the parent's feature terms hold. */
    const evo_images *im = is->batch;
    bool same = im->feat && net_node_at(is->nt, im->feat_node)->inputs[0] < r;
    score_out o = {is->c->fitness.kind, loss, ferr, same ? parent->ferr : NULL};
    for (int c = 0; c < is->chunks; c++) {
        int n = chunk_size(is, c);
        net_forward_from(is->nt, r, is->slots[parent->cache][c], is->work, n);
        score_chunk(is->nt, is->work, is->batch, c * net_acts_batch(is->work), n, is->y, &t, &o);
    }
    for (int k = r; k < net_node_count(is->nt); k++)
        is->stats.flops += net_node_at(is->nt, k)->flops * is->batch->count;
    is->stats.incremental++;
    return t;
}

static void score_member(evo_island *is, evo_member *m, fit_totals t)
{
    m->totals = t;
    m->key = evo_key_of(is->c->fitness.kind, &t);
}

/* Per-image losses on the confirmation batch of the weights now in the net. */
static void confirm_pass(evo_island *is, float *loss)
{
    const evo_images *im = is->confirm;
    fit_totals t = {0};
    score_out o = {is->c->fitness.kind, loss, NULL, NULL};
    size_t in_per = per_image(net_input_dims(is->nt));
    int b = net_acts_batch(is->work);
    for (int b0 = 0; b0 < im->count; b0 += b) {
        int n = im->count - b0 < b ? im->count - b0 : b;
        net_forward(is->nt, is->work, im->x + (size_t)b0 * in_per, n);
        score_chunk(is->nt, is->work, im, b0, n, is->y, &t, &o);
    }
    is->stats.flops += net_flops(is->nt) * im->count;
}

/* Member m's confirmation losses, by a pass if it has none for this confirmation batch. */
static void ensure_closses(evo_island *is, evo_member *m)
{
    if (m->closs_valid)
        return;
    quant_apply(is->q, is->nt, m->codes);
    confirm_pass(is, m->closs);
    m->closs_valid = true;
}

/* Member m's per-image losses on the current batch, by a full pass if it has none (a
 * member restored from a checkpoint). */
static void ensure_losses(evo_island *is, evo_member *m)
{
    if (m->loss_valid)
        return;
    quant_apply(is->q, is->nt, m->codes);
    full_pass(is, -1, m->loss, m->ferr);
    m->loss_valid = true;
}

/* Paired t statistic of the per-image gain of `cand` over `base` (base - cand: positive
 * when cand is better) on the same n images. No difference at all is no evidence. */
static double paired_t(const float *base, const float *cand, int n)
{
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < n; i++) {
        double d = (double)base[i] - (double)cand[i];
        sum += d;
        sq += d * d;
    }
    double mean = sum / n, var = n > 1 ? (sq - sum * mean) / (n - 1) : 0.0;
    if (var <= 0.0)
        return mean > 0.0 ? INFINITY : 0.0;
    return mean / sqrt(var / n);
}

/* Paired selection: a candidate whose gain over `base` is not significant is treated as
 * no better (it can neither survive nor count as a success). */
static bool significant(const evo_island *is, const evo_member *base, const float *cand)
{
    return paired_t(base->loss, cand, is->batch->count) >= is->c->evolution.significance;
}

static bool confirming(const evo_island *is)
{
    return is->confirm && is->confirm->count > 0;
}

/* The confirmation of a paired win: the same test on images that took no part in
 * choosing the candidate, whose codes are in the net (and are left there). */
static bool confirmed(evo_island *is, evo_member *base, const int8_t *codes, float *closs)
{
    ensure_closses(is, base);
    quant_apply(is->q, is->nt, codes);
    confirm_pass(is, closs);
    return paired_t(base->closs, closs, is->confirm->count) >= is->c->evolution.significance;
}

static const evo_key rejected_key = {{INFINITY, INFINITY}};

static int cmp_members(const void *a, const void *b)
{
    const evo_member *x = a, *y = b;
    int c = evo_key_cmp(x->key, y->key);
    if (c)
        return c;
    /* Ties go to the younger state: neutral moves let the search drift. */
    return x->id < y->id ? 1 : x->id > y->id ? -1 : 0;
}

/* Choice weights: weight counts for proportional (and adaptive, until it has data),
 * equal otherwise. */
static void init_layer_weights(evo_island *is)
{
    int n = is->nlayers;
    is->layer_weight = qv_malloc(sizeof(double) * (size_t)n);
    is->gain = qv_calloc((size_t)n, sizeof(double));
    is->cost = qv_calloc((size_t)n, sizeof(double));
    layer_choice how = is->c->evolution.layers;
    for (int k = 0; k < n; k++)
        is->layer_weight[k] = how == LAYERS_PROPORTIONAL || how == LAYERS_ADAPTIVE
                                  ? (double)quant_layer_at(is->q, is->layers[k])->wcount
                                  : 1.0;
}

/* Adaptive choice: after each offspring, layer k's recent improvement of the fitness and
 * the FLOPs its evaluation ran are averaged (exponentially, so the estimate follows the
 * search); layers are then chosen by improvement per FLOP, with a quarter of the
 * choices spread evenly so that no layer is starved of trials. Deterministic: costs are
 * counted in FLOPs, not seconds. */
static void adapt_layer_weights(evo_island *is, int k, double improvement, double flops)
{
    const double keep = 0.95;
    bool first = is->cost[k] == 0;
    is->gain[k] = first ? improvement : keep * is->gain[k] + (1 - keep) * improvement;
    is->cost[k] = first ? flops : keep * is->cost[k] + (1 - keep) * flops;
    double total = 0;
    for (int j = 0; j < is->nlayers; j++)
        total += is->cost[j] > 0 ? is->gain[j] / is->cost[j] : 0;
    if (total <= 0)
        return;
    for (int j = 0; j < is->nlayers; j++) {
        double value = is->cost[j] > 0 ? is->gain[j] / is->cost[j] / total : 1.0 / is->nlayers;
        is->layer_weight[j] = 0.25 / is->nlayers + 0.75 * value;
    }
}

static int resolve_layers(evo_island *is, const config *c, qv_err *err)
{
    int nq = quant_layer_count(is->q);
    is->layers = qv_malloc(sizeof(int) * (size_t)nq);
    if (c->evolution.layers != LAYERS_LIST) {
        for (int k = 0; k < nq; k++)
            is->layers[is->nlayers++] = k;
        return 0;
    }
    for (int i = 0; i < c->evolution.layer_count; i++) {
        const char *name = c->evolution.layer_list[i];
        int k = 0;
        while (k < nq && strcmp(net_node_at(is->nt, quant_layer_at(is->q, k)->node)->name, name))
            k++;
        if (k == nq) {
            char known[2048] = "";
            for (int j = 0; j < nq; j++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "",
                         net_node_at(is->nt, quant_layer_at(is->q, j)->node)->name);
            return qv_fail(err, "evolution.layers[%d]: '%s' is not a conv2d/convtranspose2d/linear "
                           "layer of %s (those are: %s)", i, name, net_path(is->nt), known);
        }
        is->layers[is->nlayers++] = k;
    }
    return 0;
}

static void init_slots(evo_island *is)
{
    int b = net_acts_batch(is->work);
    net_acts *probe = net_acts_create_cache(is->nt, b);
    is->slot_bytes = net_acts_bytes(probe) * (size_t)is->chunks;
    net_acts_free(probe);
    double budget = is->c->evolution.cache_mb * 1048576.0;
    int want = 2 * is->mu; /* every parent, and as many promising offspring */
    is->nslots = (int)fmin(want, floor(budget / (double)is->slot_bytes));
    is->slots = qv_calloc((size_t)(is->nslots ? is->nslots : 1), sizeof(net_acts **));
    is->slot_used = qv_calloc((size_t)(is->nslots ? is->nslots : 1), sizeof(bool));
    for (int s = 0; s < is->nslots; s++) {
        is->slots[s] = qv_calloc((size_t)is->chunks, sizeof(net_acts *));
        for (int c = 0; c < is->chunks; c++)
            is->slots[s][c] = net_acts_create_cache(is->nt, b);
    }
}

static void alloc_members(evo_island *is, evo_member *m, int count)
{
    for (int i = 0; i < count; i++) {
        m[i].codes = qv_malloc(is->n ? is->n : 1);
        m[i].loss = qv_malloc(sizeof(float) * (size_t)(is->batch->count ? is->batch->count : 1));
        m[i].ferr = qv_calloc((size_t)(is->batch->count ? is->batch->count : 1), sizeof(double));
        m[i].cache = -1;
    }
}

static void free_members(evo_member *m, int count)
{
    for (int i = 0; m && i < count; i++) {
        free(m[i].codes);
        free(m[i].loss);
        free(m[i].closs);
        free(m[i].ferr);
    }
}

evo_island *evo_create(net *nt, const quant *q, const int8_t *start, const config *c,
                       const evo_images *batch, uint32_t island, qv_err *err)
{
    evo_island *is = qv_calloc(1, sizeof *is);
    is->nt = nt, is->q = q, is->c = c, is->batch = batch, is->island = island;
    is->n = quant_size(q);
    is->mu = c->evolution.population;
    is->lambda = c->evolution.offspring;
    is->rate = c->evolution.rate;
    is->r = rng_stream(c->seed, island, 0, RNG_MUTATE);
    if (resolve_layers(is, c, err)) {
        evo_free(is);
        return NULL;
    }
    init_layer_weights(is);
    evo_weights_init(&is->w, q);
    is->first_node_of = qv_malloc(sizeof(int) * (size_t)quant_layer_count(q));
    for (int k = 0; k < quant_layer_count(q); k++)
        is->first_node_of[k] = quant_layer_at(q, k)->node;
    int b = c->data.eval_batch < batch->count ? c->data.eval_batch : batch->count;
    is->work = net_acts_create(nt, b > 0 ? b : 1);
    is->chunks = (batch->count + net_acts_batch(is->work) - 1) / net_acts_batch(is->work);
    is->y = qv_malloc_aligned(sizeof(float) * per_image(net_output_dims(nt)) *
                              (size_t)net_acts_batch(is->work));
    is->changed = qv_malloc(sizeof(uint32_t) * (is->n ? is->n : 1));
    is->pop = qv_calloc((size_t)is->mu, sizeof(evo_member));
    is->kids = qv_calloc((size_t)is->lambda, sizeof(evo_member));
    is->kid_parent = qv_malloc(sizeof(int) * (size_t)is->lambda);
    is->kid_first = qv_malloc(sizeof(int) * (size_t)is->lambda);
    is->kid_layer = qv_malloc(sizeof(int) * (size_t)is->lambda);
    is->import_loss = qv_malloc(sizeof(float) * (size_t)(batch->count ? batch->count : 1));
    is->import_ferr = qv_calloc((size_t)(batch->count ? batch->count : 1), sizeof(double));
    alloc_members(is, is->pop, is->mu);
    alloc_members(is, is->kids, is->lambda);
    init_slots(is);
    /* Every member starts as the start state: score it once, share the score. */
    quant_apply(q, nt, start);
    fit_totals t = full_pass(is, -1, is->pop[0].loss, is->pop[0].ferr);
    for (int i = 0; i < is->mu; i++) {
        memcpy(is->pop[i].codes, start, is->n);
        memcpy(is->pop[i].loss, is->pop[0].loss, sizeof(float) * (size_t)batch->count);
        memcpy(is->pop[i].ferr, is->pop[0].ferr, sizeof(double) * (size_t)batch->count);
        is->pop[i].loss_valid = paired(is);
        score_member(is, &is->pop[i], t);
        is->pop[i].id = is->next_id++;
    }
    return is;
}

void evo_free(evo_island *is)
{
    if (!is)
        return;
    free_members(is->pop, is->mu);
    free_members(is->kids, is->lambda);
    free(is->import_loss);
    free(is->import_closs);
    free(is->import_ferr);
    for (int s = 0; s < is->nslots; s++) {
        for (int c = 0; c < is->chunks; c++)
            net_acts_free(is->slots[s][c]);
        free(is->slots[s]);
    }
    free(is->slots);
    free(is->slot_used);
    free(is->pop);
    free(is->kids);
    free(is->kid_parent);
    free(is->kid_first);
    free(is->kid_layer);
    free(is->layer_weight);
    free(is->gain);
    free(is->cost);
    free(is->changed);
    free(is->layers);
    free(is->first_node_of);
    qv_free_aligned(is->y);
    net_acts_free(is->work);
    evo_weights_free(&is->w);
    free(is);
}

static int tournament(evo_island *is)
{
    int best = (int)rng_below(&is->r, (uint32_t)is->mu);
    for (int k = 1; k < is->c->evolution.tournament; k++) {
        int j = (int)rng_below(&is->r, (uint32_t)is->mu);
        if (j < best) /* the population is sorted best first */
            best = j;
    }
    return best;
}

/* The first node whose weights the changes touch. */
static int first_node(const evo_island *is, const uint32_t *changed, size_t count)
{
    int first = net_node_count(is->nt);
    for (size_t k = 0; k < count; k++) {
        int node = is->first_node_of[quant_layer_of(is->q, changed[k])];
        first = node < first ? node : first;
    }
    return first;
}

/* Breeds offspring j: a mutation (or crossover, then mutation) of a tournament winner. */
static void breed(evo_island *is, int j, uint32_t generation)
{
    evo_member *kid = &is->kids[j];
    int p = tournament(is);
    size_t count = 0;
    if (is->mu > 1 && is->c->evolution.crossover > 0 &&
        rng_uniform(&is->r) < is->c->evolution.crossover) {
        int other = tournament(is);
        if (other != p)
            count = evo_crossover(is->pop[p].codes, is->pop[other].codes, is->n, kid->codes,
                                  is->changed, &is->r);
        else
            memcpy(kid->codes, is->pop[p].codes, is->n);
    } else {
        memcpy(kid->codes, is->pop[p].codes, is->n);
    }
    size_t crossed = count;
    count += evo_mutate(is->c, is->q, &is->w, is->rate, is->layers, is->layer_weight,
                        is->nlayers, kid->codes, is->changed + count, &is->r);
    /* The layer this kid's mutation went to, for the adaptive choice. */
    is->kid_layer[j] = -1;
    if (crossed == 0 && count > 0 && is->c->evolution.spread == SPREAD_ONE_LAYER) {
        int layer = quant_layer_of(is->q, is->changed[0]);
        for (int k = 0; k < is->nlayers; k++)
            if (is->layers[k] == layer)
                is->kid_layer[j] = k;
    }
    is->kid_parent[j] = p;
    is->kid_first[j] = first_node(is, is->changed, count);
    kid->id = is->next_id++;
    kid->born = generation;
    kid->cache = -1;
}

/* A kid good enough to enter the population keeps the activations its evaluation just
 * computed: the parent's cut nodes before the resume point and its own from there on.
 * Copying them costs far less than the full pass a new parent would otherwise need.
 * Only possible when the batch is one chunk (the work storage then holds all of it). */
static void keep_kid_cache(evo_island *is, int j, const evo_member *parent, int resume)
{
    evo_member *kid = &is->kids[j];
    if (is->chunks != 1 || evo_key_cmp(kid->key, is->pop[is->mu - 1].key) >= 0)
        return;
    int s = acquire_slot(is);
    if (s < 0) {
        /* Take the slot of this generation's worst cached kid, if this one is better:
         * then the slots go to the kids most likely to survive. */
        int worst = -1;
        for (int i = 0; i < j; i++)
            if (is->kids[i].cache >= 0 &&
                (worst < 0 || evo_key_cmp(is->kids[i].key, is->kids[worst].key) > 0))
                worst = i;
        if (worst < 0 || evo_key_cmp(kid->key, is->kids[worst].key) >= 0)
            return;
        s = is->kids[worst].cache;
        is->kids[worst].cache = -1;
    }
    int n = chunk_size(is, 0), from = parent->cache >= 0 ? resume : 0;
    if (from > 0)
        net_acts_copy(is->nt, is->slots[parent->cache][0], is->slots[s][0], 0, from, n);
    net_acts_copy(is->nt, is->work, is->slots[s][0], from, net_node_count(is->nt), n);
    kid->cache = s;
}

static void evaluate_kid(evo_island *is, int j)
{
    evo_member *kid = &is->kids[j], *parent = &is->pop[is->kid_parent[j]];
    double t0 = qv_now();
    give_cache(is, parent);
    float *loss = paired(is) ? kid->loss : NULL;
    if (loss)
        ensure_losses(is, parent);
    quant_apply(is->q, is->nt, kid->codes);
    int resume = net_resume_node(is->nt, is->kid_first[j]);
    fit_totals t = parent->cache >= 0
                       ? resumed_pass(is, parent, is->kid_first[j], loss, kid->ferr)
                       : full_pass(is, -1, loss, kid->ferr);
    score_member(is, kid, t);
    kid->loss_valid = loss != NULL;
    kid->closs_valid = false;
    if (loss && !significant(is, parent, loss))
        kid->key = rejected_key;
    keep_kid_cache(is, j, parent, resume); /* before a confirmation overwrites the work */
    if (loss && confirming(is) && evo_key_cmp(kid->key, rejected_key) != 0) {
        if (confirmed(is, parent, kid->codes, kid->closs)) {
            kid->closs_valid = true;
        } else {
            kid->key = rejected_key;
            release(is, kid);
        }
    }
    if (is->c->evolution.layers == LAYERS_ADAPTIVE && is->kid_layer[j] >= 0) {
        /* The layer's cost is what an incremental evaluation runs, cache or not: the
         * search must not depend on the cache's memory bound. */
        double flops = 0;
        for (int k = resume; k < net_node_count(is->nt); k++)
            flops += net_node_at(is->nt, k)->flops;
        adapt_layer_weights(is, is->kid_layer[j], fmax(0.0, parent->key.k[0] - kid->key.k[0]),
                            flops);
    }
    is->stats.evaluations++;
    is->stats.eval_seconds += qv_now() - t0;
}

/* (mu + lambda): the best mu of parents and offspring. (mu, lambda): the best mu
 * offspring, with the best parent kept if no offspring beats it (elitism). Members
 * that do not survive hand their buffers to the next generation's offspring. */
static void select_survivors(evo_island *is)
{
    int mu = is->mu, total = mu + is->lambda;
    evo_member *pool = qv_malloc(sizeof(evo_member) * (size_t)total);
    memcpy(pool, is->pop, sizeof(evo_member) * (size_t)mu);
    memcpy(pool + mu, is->kids, sizeof(evo_member) * (size_t)is->lambda);
    int *order = qv_malloc(sizeof(int) * (size_t)total), k = 0;
    if (is->c->evolution.selection == SEL_PLUS) {
        qsort(pool, (size_t)total, sizeof(evo_member), cmp_members);
        for (int i = 0; i < total; i++)
            order[k++] = i;
    } else {
        qsort(pool + mu, (size_t)is->lambda, sizeof(evo_member), cmp_members);
        bool elite = evo_key_cmp(pool[0].key, pool[mu].key) < 0; /* parents are sorted */
        int kids_kept = elite ? mu - 1 : mu;
        if (elite)
            order[k++] = 0;
        for (int i = 0; i < kids_kept; i++)
            order[k++] = mu + i;
        for (int i = elite ? 1 : 0; i < mu; i++)
            order[k++] = i;
        for (int i = mu + kids_kept; i < total; i++)
            order[k++] = i;
    }
    for (int i = 0; i < mu; i++)
        is->pop[i] = pool[order[i]];
    for (int i = mu; i < total; i++) {
        is->kids[i - mu] = pool[order[i]];
        release(is, &is->kids[i - mu]);
    }
    qsort(is->pop, (size_t)mu, sizeof(evo_member), cmp_members);
    free(order);
    free(pool);
}

void evo_generation(evo_island *is, uint32_t generation)
{
    is->r = rng_stream(is->c->seed, is->island, generation, RNG_MUTATE);
    int better_than_parent = 0;
    uint64_t first_kid = is->next_id;
    for (int j = 0; j < is->lambda; j++) {
        breed(is, j, generation);
        evaluate_kid(is, j);
        better_than_parent += evo_key_cmp(is->kids[j].key, is->pop[is->kid_parent[j]].key) < 0;
    }
    select_survivors(is);
    for (int i = 0; i < is->mu; i++)
        is->stats.accepted += is->pop[i].id >= first_kid;
    if (is->c->evolution.one_fifth) {
        /* 1/5 success rule (Rechenberg): more than a fifth of the offspring beating their
         * parents means steps are too timid; fewer, too bold. */
        double ps = (double)better_than_parent / is->lambda;
        is->rate *= ps > 0.2 ? 1.0 / 0.85 : ps < 0.2 ? 0.85 : 1.0;
        double lo = 1.0 / (double)is->n, hi = 0.1;
        is->rate = fmin(hi, fmax(lo, is->rate));
    }
}

void evo_set_confirmation(evo_island *is, const evo_images *confirm)
{
    is->confirm = confirm;
    size_t bytes = sizeof(float) * (size_t)(confirm->count ? confirm->count : 1);
    for (int i = 0; i < is->mu; i++) {
        is->pop[i].closs = qv_realloc(is->pop[i].closs, bytes);
        is->pop[i].closs_valid = false;
    }
    for (int i = 0; i < is->lambda; i++) {
        is->kids[i].closs = qv_realloc(is->kids[i].closs, bytes);
        is->kids[i].closs_valid = false;
    }
    is->import_closs = qv_realloc(is->import_closs, bytes);
}

void evo_set_batch(evo_island *is, const evo_images *batch)
{
    QV_ASSERT(batch->count == is->batch->count);
    is->batch = batch;
    for (int i = 0; i < is->mu; i++)
        release(is, &is->pop[i]);
    /* One pass per member both scores it on the new batch and refills its cache. */
    for (int i = 0; i < is->mu; i++) {
        int slot = acquire_slot(is);
        quant_apply(is->q, is->nt, is->pop[i].codes);
        score_member(is, &is->pop[i],
                     full_pass(is, slot, paired(is) ? is->pop[i].loss : NULL, is->pop[i].ferr));
        is->pop[i].loss_valid = paired(is);
        is->pop[i].closs_valid = false; /* a new batch comes with a new confirmation batch */
        is->pop[i].cache = slot;
    }
    qsort(is->pop, (size_t)is->mu, sizeof(evo_member), cmp_members);
}

int evo_import(evo_island *is, const int8_t *codes, migrate_policy policy)
{
    double t0 = qv_now();
    evo_member *worst = &is->pop[is->mu - 1];
    if (paired(is))
        ensure_losses(is, worst);
    quant_apply(is->q, is->nt, codes);
    fit_totals t = full_pass(is, -1, paired(is) ? is->import_loss : NULL, is->import_ferr);
    is->stats.evaluations++;
    is->stats.migrants_in++;
    is->stats.eval_seconds += qv_now() - t0;
    evo_key key = evo_key_of(is->c->fitness.kind, &t);
    if (policy == MIGRATE_REPLACE_WORST_IF_BETTER &&
        (evo_key_cmp(key, worst->key) >= 0 ||
         (paired(is) && !significant(is, worst, is->import_loss))))
        return 0;
    /* A confirmation pass would overwrite the migrant's activations: no cache then. */
    bool confirm = paired(is) && confirming(is);
    if (confirm && policy == MIGRATE_REPLACE_WORST_IF_BETTER &&
        !confirmed(is, worst, codes, is->import_closs))
        return 0;
    if (confirm && policy == MIGRATE_REPLACE_WORST)
        confirm_pass(is, is->import_closs);
    release(is, worst);
    memcpy(worst->codes, codes, is->n);
    double *swap_f = worst->ferr; /* the migrant's feature terms become the member's */
    worst->ferr = is->import_ferr;
    is->import_ferr = swap_f;
    if (paired(is)) { /* the migrant's losses become the member's */
        float *swap = worst->loss;
        worst->loss = is->import_loss;
        is->import_loss = swap;
        worst->loss_valid = true;
        swap = worst->closs;
        worst->closs = is->import_closs;
        is->import_closs = swap;
        worst->closs_valid = confirm;
    }
    score_member(is, worst, t);
    worst->id = is->next_id++;
    int slot = is->chunks == 1 && !confirm ? acquire_slot(is) : -1;
    if (slot >= 0) { /* the work storage holds the migrant's whole pass */
        net_acts_copy(is->nt, is->work, is->slots[slot][0], 0, net_node_count(is->nt),
                      chunk_size(is, 0));
        worst->cache = slot;
    }
    qsort(is->pop, (size_t)is->mu, sizeof(evo_member), cmp_members);
    is->stats.migrants_accepted++;
    return 1;
}

int evo_size(const evo_island *is) { return is->mu; }
const evo_stats *evo_get_stats(const evo_island *is) { return &is->stats; }
double evo_rate(const evo_island *is) { return is->rate; }
size_t evo_cache_bytes(const evo_island *is) { return is->slot_bytes; }
int evo_cache_slots(const evo_island *is) { return is->nslots; }

const evo_member *evo_member_at(const evo_island *is, int i)
{
    QV_ASSERT(i >= 0 && i < is->mu);
    return &is->pop[i];
}

/* ---- Checkpoint state ----
 * Layout: u32 mu, u64 n, f64 rate, u64 next_id, evo_stats, then per member u64 id,
 * u64 born, fit_totals, n code bytes. Host byte order: checkpoints are read back by the
 * same binary on the same kind of machine. */

static size_t member_bytes(size_t n)
{
    return 16 + sizeof(fit_totals) + n;
}

/* The adaptive layer choice's averages: part of the state, or a resumed run would
 * choose layers differently. */
static size_t layer_state_bytes(const evo_island *is)
{
    return 3 * sizeof(double) * (size_t)is->nlayers;
}

size_t evo_state_size(const evo_island *is)
{
    return 4 + 8 + 8 + 8 + sizeof(evo_stats) + layer_state_bytes(is) +
           (size_t)is->mu * member_bytes(is->n);
}

#define PUT(p, v) (memcpy((p), &(v), sizeof(v)), (p) += sizeof(v))
#define GET(p, v) (memcpy(&(v), (p), sizeof(v)), (p) += sizeof(v))

void evo_state_write(const evo_island *is, unsigned char *p)
{
    uint32_t mu = (uint32_t)is->mu;
    uint64_t n = is->n;
    PUT(p, mu);
    PUT(p, n);
    PUT(p, is->rate);
    PUT(p, is->next_id);
    PUT(p, is->stats);
    size_t lb = sizeof(double) * (size_t)is->nlayers;
    memcpy(p, is->layer_weight, lb), p += lb;
    memcpy(p, is->gain, lb), p += lb;
    memcpy(p, is->cost, lb), p += lb;
    for (int i = 0; i < is->mu; i++) {
        PUT(p, is->pop[i].id);
        PUT(p, is->pop[i].born);
        PUT(p, is->pop[i].totals);
        memcpy(p, is->pop[i].codes, is->n);
        p += is->n;
    }
}

int evo_state_check(const evo_island *is, const unsigned char *buf, size_t len, qv_err *err)
{
    const unsigned char *p = buf;
    uint32_t mu;
    uint64_t n;
    size_t fixed = 28 + sizeof(evo_stats) + layer_state_bytes(is);
    if (len < fixed)
        return qv_fail(err, "island state of %zu bytes, shorter than its %zu-byte header", len,
                       fixed);
    GET(p, mu);
    GET(p, n);
    if (n != is->n)
        return qv_fail(err, "island state of %llu weights; this model has %zu",
                       (unsigned long long)n, is->n);
    if (mu == 0 || (len - fixed) % member_bytes(is->n) || (len - fixed) / member_bytes(is->n) != mu)
        return qv_fail(err, "island state of %u members in %zu bytes; expected at least one "
                       "member of %zu bytes", mu, len - fixed, member_bytes(is->n));
    for (uint32_t m = 0; m < mu; m++) {
        const unsigned char *member = buf + fixed + m * member_bytes(is->n);
        double totals[FIT_TOTALS_FIELDS];
        memcpy(totals, member + 16, sizeof totals);
        for (int f = 0; f < FIT_TOTALS_FIELDS; f++)
            if (!isfinite(totals[f]))
                return qv_fail(err, "island state: member %u has a score that is not finite", m);
        if (quant_check_codes(is->q, (const int8_t *)(member + member_bytes(is->n) - is->n), err))
            return qv_wrap(err, "island state: member %u", m);
    }
    return 0;
}

int evo_state_read(evo_island *is, const unsigned char *const *bufs, const size_t *lens,
                   int count, qv_err *err)
{
    int total = 0;
    for (int k = 0; k < count; k++) {
        if (evo_state_check(is, bufs[k], lens[k], err))
            return qv_wrap(err, "saved island %d", k);
        uint32_t mu;
        memcpy(&mu, bufs[k], sizeof mu);
        if (mu > (uint32_t)(INT_MAX - total))
            return qv_fail(err, "saved islands: more than %d members together", INT_MAX);
        total += (int)mu;
    }
    evo_member *all = qv_calloc((size_t)total, sizeof(evo_member));
    evo_stats sum = {0};
    int m = 0;
    for (int k = 0; k < count; k++) {
        const unsigned char *p = bufs[k];
        uint32_t mu;
        uint64_t n, next_id;
        double rate;
        evo_stats st;
        GET(p, mu);
        GET(p, n);
        GET(p, rate);
        GET(p, next_id);
        GET(p, st);
        size_t lb = sizeof(double) * (size_t)is->nlayers;
        if (k == 0) {
            is->rate = rate;
            memcpy(is->layer_weight, p, lb);
            memcpy(is->gain, p + lb, lb);
            memcpy(is->cost, p + 2 * lb, lb);
        }
        p += 3 * lb;
        is->next_id = k == 0 || next_id > is->next_id ? next_id : is->next_id;
        sum.evaluations += st.evaluations, sum.incremental += st.incremental;
        sum.cache_builds += st.cache_builds, sum.accepted += st.accepted;
        sum.migrants_in += st.migrants_in, sum.migrants_accepted += st.migrants_accepted;
        sum.eval_seconds += st.eval_seconds, sum.flops += st.flops;
        for (uint32_t i = 0; i < mu; i++, m++) {
            GET(p, all[m].id);
            GET(p, all[m].born);
            GET(p, all[m].totals);
            all[m].codes = (int8_t *)p; /* borrowed until copied below */
            all[m].key = evo_key_of(is->c->fitness.kind, &all[m].totals);
            p += is->n;
        }
    }
    /* Members keep their saved order within an island, which is already best first;
     * across islands the scores decide. */
    if (count > 1)
        qsort(all, (size_t)total, sizeof(evo_member), cmp_members);
    for (int i = 0; i < is->mu; i++) {
        evo_member *dst = &is->pop[i];
        const evo_member *src = &all[i % total];
        release(is, dst);
        memcpy(dst->codes, src->codes, is->n);
        dst->totals = src->totals;
        dst->key = src->key;
        dst->id = src->id;
        dst->born = src->born;
        dst->loss_valid = dst->closs_valid = false; /* computed when first needed */
    }
    is->stats = sum;
    free(all);
    return 0;
}
