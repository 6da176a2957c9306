#include "qevo/quant.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/safetensors.h"

struct quant {
    quant_settings settings;
    int count;
    quant_layer *layers;
    size_t size;
    float *reference;
    float *scale_of;
    int8_t *lo_of, *hi_of;
};

const char *quant_granularity_name(quant_granularity g)
{
    return g == QUANT_PER_CHANNEL ? "per_channel" : "per_tensor";
}

const char *quant_grid_name(quant_grid g)
{
    return g == QUANT_ASYMMETRIC ? "asymmetric" : "symmetric";
}

const char *quant_scale_search_name(quant_scale_search s)
{
    return s == QUANT_SCALE_MSE ? "mse" : "max";
}

int quant_settings_check(const quant_settings *s, qv_err *err)
{
    if (s->bits < 2 || s->bits > 8)
        return qv_fail(err, "quantizer bits must be in [2, 8], found %d", s->bits);
    if (s->first_bits && (s->first_bits < 2 || s->first_bits > 8))
        return qv_fail(err, "first-layer bits must be in [2, 8] (or 0 = same), found %d",
                       s->first_bits);
    if (s->last_bits && (s->last_bits < 2 || s->last_bits > 8))
        return qv_fail(err, "last-layer bits must be in [2, 8] (or 0 = same), found %d",
                       s->last_bits);
    return 0;
}

static bool is_weighted(net_op op)
{
    return op == NET_CONV2D || op == NET_CONVT2D || op == NET_LINEAR;
}

/* Channel c of a node's weight covers `outer` runs of `inner` floats, `stride` apart:
 * (C_out, rest) for conv2d/linear, (C_in, C_out, kh*kw) for convtranspose2d. */
typedef struct {
    size_t outer, inner, stride;
} channel_layout;

static channel_layout layout_of(const net_node *nd, int channels)
{
    channel_layout l;
    if (channels == 1) {
        l.outer = 1, l.inner = nd->wcount, l.stride = 0;
    } else if (nd->op == NET_CONVT2D) {
        l.outer = (size_t)nd->wshape[0];
        l.inner = (size_t)nd->wshape[2] * nd->wshape[3];
        l.stride = (size_t)channels * l.inner;
    } else {
        l.outer = 1, l.inner = nd->wcount / (size_t)channels, l.stride = 0;
    }
    return l;
}

/* First index of channel c's run o. */
static size_t run_start(const net_node *nd, channel_layout l, int c, size_t o)
{
    if (nd->op == NET_CONVT2D && l.stride)
        return o * l.stride + (size_t)c * l.inner;
    return (size_t)c * l.inner;
}

int8_t quant_nearest_code(float w, float scale, int lo, int hi)
{
    float r = rintf(w / scale);
    if (r > (float)hi)
        r = (float)hi;
    if (r < (float)lo)
        r = (float)lo;
    return (int8_t)r;
}

/* The grid of a group for clipping ratio a (docs/FORMAT.md, float32 throughout). */
static void grid_at(float a, float wmin, float wmax, float amax, int bits, quant_grid grid,
                    float *scale, int *lo, int *hi)
{
    if (grid == QUANT_SYMMETRIC) {
        int qmax = (1 << (bits - 1)) - 1;
        float s = (a * amax) / (float)qmax;
        /* An all-zero group (or one so small its scale underflows) keeps scale 1, so its
         * codes are 0 and nothing divides by 0. */
        *scale = s == 0.0f ? 1.0f : s;
        *lo = -qmax, *hi = qmax;
        return;
    }
    int levels = (1 << bits) - 1;
    /* Zero points that keep both ends of the range inside int8. */
    int zmin = levels - 127 > 0 ? levels - 127 : 0, zmax = levels < 128 ? levels : 128;
    float mn = a * (wmin < 0.0f ? wmin : 0.0f), mx = a * (wmax > 0.0f ? wmax : 0.0f);
    float s = (mx - mn) / (float)levels;
    int z = zmin;
    if (s == 0.0f) {
        s = 1.0f;
    } else {
        float zf = rintf(-mn / s);
        z = zf < (float)zmin ? zmin : zf > (float)zmax ? zmax : (int)zf;
        if ((float)z != zf) { /* 8 bits: z = 128; widen the scale to cover both ends */
            float up = mx / (float)(levels - z), down = -mn / (float)z;
            s = up > down ? up : down;
            s = s == 0.0f ? 1.0f : s;
        }
    }
    *scale = s;
    *lo = -z, *hi = levels - z;
}

/* Squared error of a group under one grid, summed in order in double. */
static double grid_error(const float *w, size_t n, float scale, int lo, int hi)
{
    double e = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)w[i] - (double)quant_nearest_code(w[i], scale, lo, hi) * (double)scale;
        e += d * d;
    }
    return e;
}

void quant_group_grid(const float *w, size_t n, int bits, quant_grid grid,
                      quant_scale_search search, float *scale, int *lo, int *hi)
{
    float wmin = 0.0f, wmax = 0.0f, amax = 0.0f;
    for (size_t i = 0; i < n; i++) {
        wmin = w[i] < wmin ? w[i] : wmin;
        wmax = w[i] > wmax ? w[i] : wmax;
        amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
    }
    grid_at(1.0f, wmin, wmax, amax, bits, grid, scale, lo, hi);
    if (search == QUANT_SCALE_MAX)
        return;
    double best = grid_error(w, n, *scale, *lo, *hi);
    for (int k = 1; k < 100; k++) {
        float s;
        int l, h;
        grid_at((float)(100 - k) / 100.0f, wmin, wmax, amax, bits, grid, &s, &l, &h);
        double e = grid_error(w, n, s, l, h);
        if (e < best)
            best = e, *scale = s, *lo = l, *hi = h;
    }
}

static void init_layer(quant *q, const net *nt, quant_layer *ql, const net_node *nd)
{
    ql->woff = nd->woff;
    ql->wcount = nd->wcount;
    ql->channels = q->settings.granularity == QUANT_PER_CHANNEL ? nd->out.c : 1;
    ql->scales = qv_malloc(sizeof(float) * (size_t)ql->channels);
    ql->code_min = qv_malloc((size_t)ql->channels);
    ql->code_max = qv_malloc((size_t)ql->channels);
    const float *w = net_weights_const(nt) + nd->woff;
    channel_layout l = layout_of(nd, ql->channels);
    size_t per = l.outer * l.inner;
    float *group = qv_malloc(sizeof(float) * (per ? per : 1));
    for (int c = 0; c < ql->channels; c++) {
        for (size_t o = 0; o < l.outer; o++)
            memcpy(group + o * l.inner, w + run_start(nd, l, c, o), sizeof(float) * l.inner);
        float s;
        int lo, hi;
        quant_group_grid(group, per, ql->bits, q->settings.grid, q->settings.scales, &s, &lo,
                         &hi);
        ql->scales[c] = s;
        ql->code_min[c] = (int8_t)lo;
        ql->code_max[c] = (int8_t)hi;
        for (size_t o = 0; o < l.outer; o++) {
            size_t start = nd->woff + run_start(nd, l, c, o);
            for (size_t i = 0; i < l.inner; i++) {
                q->scale_of[start + i] = s;
                q->lo_of[start + i] = (int8_t)lo;
                q->hi_of[start + i] = (int8_t)hi;
            }
        }
    }
    free(group);
}

quant *quant_create(const net *nt, const quant_settings *s)
{
    quant *q = qv_calloc(1, sizeof *q);
    q->settings = *s;
    q->size = net_weight_count(nt);
    q->reference = qv_malloc_aligned(sizeof(float) * (q->size ? q->size : 1));
    memcpy(q->reference, net_weights_const(nt), sizeof(float) * q->size);
    q->scale_of = qv_malloc_aligned(sizeof(float) * (q->size ? q->size : 1));
    q->lo_of = qv_malloc(q->size ? q->size : 1);
    q->hi_of = qv_malloc(q->size ? q->size : 1);
    q->layers = qv_calloc((size_t)net_node_count(nt), sizeof(quant_layer));
    for (int i = 0; i < net_node_count(nt); i++)
        if (is_weighted(net_node_at(nt, i)->op))
            q->layers[q->count++].node = i;
    for (int k = 0; k < q->count; k++) {
        quant_layer *ql = &q->layers[k];
        ql->bits = s->bits;
        if (k == 0 && s->first_bits)
            ql->bits = s->first_bits;
        if (k == q->count - 1 && s->last_bits)
            ql->bits = s->last_bits;
        init_layer(q, nt, ql, net_node_at(nt, ql->node));
    }
    return q;
}

void quant_free(quant *q)
{
    if (!q)
        return;
    for (int k = 0; k < q->count; k++) {
        free(q->layers[k].scales);
        free(q->layers[k].code_min);
        free(q->layers[k].code_max);
    }
    free(q->layers);
    qv_free_aligned(q->reference);
    qv_free_aligned(q->scale_of);
    free(q->lo_of);
    free(q->hi_of);
    free(q);
}

size_t quant_size(const quant *q) { return q->size; }
int quant_layer_count(const quant *q) { return q->count; }
const float *quant_reference(const quant *q) { return q->reference; }
const float *quant_scale_of(const quant *q) { return q->scale_of; }
const int8_t *quant_lo_of(const quant *q) { return q->lo_of; }
const int8_t *quant_hi_of(const quant *q) { return q->hi_of; }

int quant_check_codes(const quant *q, const int8_t *codes, qv_err *err)
{
    for (size_t i = 0; i < q->size; i++)
        if (codes[i] < q->lo_of[i] || codes[i] > q->hi_of[i])
            return qv_fail(err, "weight %zu has code %d outside its range [%d, %d]", i, codes[i],
                           q->lo_of[i], q->hi_of[i]);
    return 0;
}

const quant_layer *quant_layer_at(const quant *q, int i)
{
    QV_ASSERT(i >= 0 && i < q->count);
    return &q->layers[i];
}

int quant_layer_of(const quant *q, size_t idx)
{
    QV_ASSERT(idx < q->size);
    int lo = 0, hi = q->count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (q->layers[mid].woff <= idx)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

void quant_nearest(const quant *q, int8_t *codes)
{
    for (size_t i = 0; i < q->size; i++)
        codes[i] = quant_nearest_code(q->reference[i], q->scale_of[i], q->lo_of[i], q->hi_of[i]);
}

void quant_apply(const quant *q, net *nt, const int8_t *codes)
{
    float *w = net_weights(nt);
    for (size_t i = 0; i < q->size; i++)
        w[i] = (float)codes[i] * q->scale_of[i];
}

void quant_apply_at(const quant *q, net *nt, const int8_t *codes, const uint32_t *idx,
                    size_t count)
{
    float *w = net_weights(nt);
    for (size_t k = 0; k < count; k++) {
        QV_ASSERT(idx[k] < q->size);
        w[idx[k]] = (float)codes[idx[k]] * q->scale_of[idx[k]];
    }
}

static char *quant_meta_json(const quant *q, const net *nt)
{
    bool asym = q->settings.grid == QUANT_ASYMMETRIC;
    json_t *layers = json_object();
    for (int k = 0; k < q->count; k++) {
        const char *name = net_node_at(nt, q->layers[k].node)->name;
        char codes[1024], scales[1024], mins[1024];
        snprintf(codes, sizeof codes, "%s.codes", name);
        snprintf(scales, sizeof scales, "%s.scales", name);
        snprintf(mins, sizeof mins, "%s.code_min", name);
        json_t *e = json_pack("{siss ss}", "bits", q->layers[k].bits, "codes", codes,
                              "scales", scales);
        if (asym)
            json_object_set_new(e, "code_min", json_string(mins));
        json_object_set_new(layers, name, e);
    }
    json_t *j = json_pack("{sisssssssisisiso}", "version", 1, "granularity",
                          quant_granularity_name(q->settings.granularity), "grid",
                          quant_grid_name(q->settings.grid), "scales",
                          quant_scale_search_name(q->settings.scales), "bits",
                          q->settings.bits, "first_bits", q->settings.first_bits,
                          "last_bits", q->settings.last_bits, "layers", layers);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    QV_ASSERT(s);
    return s;
}

int quant_save(const quant *q, const net *nt, const int8_t *codes, const char *path,
               const char *description, qv_err *err)
{
    st_writer *w = st_writer_create();
    float *deq = qv_malloc_aligned(sizeof(float) * (q->size ? q->size : 1));
    for (size_t i = 0; i < q->size; i++)
        deq[i] = (float)codes[i] * q->scale_of[i];
    char name[1024];
    /* Float tensors first, int8 codes last, so every float tensor stays 4-byte aligned
     * in the file. */
    for (int k = 0; k < q->count; k++) {
        const net_node *nd = net_node_at(nt, q->layers[k].node);
        int64_t shape[4];
        for (int d = 0; d < nd->wndim; d++)
            shape[d] = nd->wshape[d];
        snprintf(name, sizeof name, "%s.weight", nd->name);
        st_writer_add(w, name, ST_F32, nd->wndim, shape, deq + nd->woff);
        if (nd->has_bias) {
            int64_t bshape[1] = {nd->out.c};
            snprintf(name, sizeof name, "%s.bias", nd->name);
            st_writer_add(w, name, ST_F32, 1, bshape, net_biases(nt) + nd->boff);
        }
        int64_t sshape[1] = {q->layers[k].channels};
        snprintf(name, sizeof name, "%s.scales", nd->name);
        st_writer_add(w, name, ST_F32, 1, sshape, q->layers[k].scales);
    }
    for (int k = 0; k < q->count; k++) {
        const net_node *nd = net_node_at(nt, q->layers[k].node);
        int64_t shape[4];
        for (int d = 0; d < nd->wndim; d++)
            shape[d] = nd->wshape[d];
        snprintf(name, sizeof name, "%s.codes", nd->name);
        st_writer_add(w, name, ST_I8, nd->wndim, shape, codes + nd->woff);
        if (q->settings.grid == QUANT_ASYMMETRIC) {
            int64_t mshape[1] = {q->layers[k].channels};
            snprintf(name, sizeof name, "%s.code_min", nd->name);
            st_writer_add(w, name, ST_I8, 1, mshape, q->layers[k].code_min);
        }
    }
    char *graph = net_folded_graph_json(nt);
    char *meta = quant_meta_json(q, nt);
    st_writer_meta(w, "qevo.graph", graph);
    st_writer_meta(w, "qevo.quant", meta);
    st_writer_meta(w, "qevo.description", description ? description : "");
    int rc = st_writer_save(w, path, err);
    free(graph);
    free(meta);
    qv_free_aligned(deq);
    st_writer_free(w);
    return rc;
}

/* Checks one layer of a quantized file against q and copies its codes. */
static int load_layer_codes(const quant *q, const quant_layer *ql, const net_node *nd,
                            const st_file *f, json_t *entry, int8_t *codes, qv_err *err)
{
    const char *path = st_path(f);
    json_t *bits = json_object_get(entry, "bits");
    json_t *cname = json_object_get(entry, "codes"), *sname = json_object_get(entry, "scales");
    if (!json_is_integer(bits) || !json_is_string(cname) || !json_is_string(sname))
        return qv_fail(err, "%s: qevo.quant: layer '%s' needs \"bits\", \"codes\" and "
                       "\"scales\"", path, nd->name);
    if (json_integer_value(bits) != ql->bits)
        return qv_fail(err, "%s: layer '%s' is quantized to %lld bits, but this run's "
                       "quantizer gives it %d bits", path, nd->name,
                       (long long)json_integer_value(bits), ql->bits);
    int64_t shape[4], sshape[1] = {ql->channels};
    for (int d = 0; d < nd->wndim; d++)
        shape[d] = nd->wshape[d];
    const st_tensor *c = st_expect(f, json_string_value(cname), ST_I8, nd->wndim, shape, err);
    const st_tensor *sc = c ? st_expect(f, json_string_value(sname), ST_F32, 1, sshape, err)
                            : NULL;
    if (!sc)
        return qv_wrap(err, "layer '%s'", nd->name), -1;
    if (memcmp(sc->data, ql->scales, sizeof(float) * (size_t)ql->channels) != 0)
        return qv_fail(err, "%s: layer '%s': scales differ from this run's quantizer (was the "
                       "file made from another model or with other quantizer settings?)",
                       path, nd->name);
    if (q->settings.grid == QUANT_ASYMMETRIC) {
        json_t *mname = json_object_get(entry, "code_min");
        const st_tensor *m =
            json_is_string(mname) ? st_expect(f, json_string_value(mname), ST_I8, 1, sshape, err)
                                  : NULL;
        if (!json_is_string(mname))
            return qv_fail(err, "%s: qevo.quant: layer '%s' of an asymmetric grid needs "
                           "\"code_min\"", path, nd->name);
        if (!m)
            return qv_wrap(err, "layer '%s'", nd->name), -1;
        if (memcmp(m->data, ql->code_min, (size_t)ql->channels) != 0)
            return qv_fail(err, "%s: layer '%s': code_min differs from this run's quantizer",
                           path, nd->name);
    }
    const int8_t *src = c->data;
    for (size_t i = 0; i < ql->wcount; i++) {
        int lo = q->lo_of[ql->woff + i], hi = q->hi_of[ql->woff + i];
        if (src[i] > hi || src[i] < lo)
            return qv_fail(err, "%s: layer '%s': code %d at index %zu is outside [%d, %d]",
                           path, nd->name, src[i], i, lo, hi);
    }
    memcpy(codes + ql->woff, src, ql->wcount);
    return 0;
}

/* The file's value of a quantizer setting (absent = the default) must be this run's. */
static int check_setting(json_t *j, const char *key, const char *dflt, const char *want,
                         const char *path, qv_err *err)
{
    json_t *v = json_object_get(j, key);
    if (v && !json_is_string(v))
        return qv_fail(err, "%s: qevo.quant: \"%s\" must be a string", path, key);
    const char *got = v ? json_string_value(v) : dflt;
    if (strcmp(got, want) != 0)
        return qv_fail(err, "%s: quantized with %s \"%s\", but this run's quantizer uses "
                       "\"%s\"", path, key, got, want);
    return 0;
}

int quant_load_codes(const quant *q, const net *nt, const char *path, int8_t *codes,
                     qv_err *err)
{
    st_file *f;
    if (st_open(path, &f, err))
        return -1;
    const char *meta = st_meta(f, "qevo.quant");
    json_t *j = meta ? json_loads(meta, 0, NULL) : NULL;
    json_t *layers = json_object_get(j, "layers");
    int rc = 0;
    if (!json_is_object(layers))
        rc = qv_fail(err, "%s: no valid qevo.quant metadata: not a quantized qevo model", path);
    if (rc == 0)
        rc = check_setting(j, "grid", "symmetric", quant_grid_name(q->settings.grid), path, err);
    if (rc == 0)
        rc = check_setting(j, "scales", "max", quant_scale_search_name(q->settings.scales),
                           path, err);
    if (rc == 0 && (int)json_object_size(layers) != q->count)
        rc = qv_fail(err, "%s: quantizes %zu layers, the model has %d conv/linear layers", path,
                     json_object_size(layers), q->count);
    for (int k = 0; k < q->count && rc == 0; k++) {
        const net_node *nd = net_node_at(nt, q->layers[k].node);
        json_t *entry = json_object_get(layers, nd->name);
        if (!entry)
            rc = qv_fail(err, "%s: has no codes for layer '%s'", path, nd->name);
        else
            rc = load_layer_codes(q, &q->layers[k], nd, f, entry, codes, err);
    }
    json_decref(j);
    st_close(f);
    return rc;
}
