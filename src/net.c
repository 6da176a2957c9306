#include "qevo/net.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/safetensors.h"

static const char *const op_names[] = {
    [NET_CONV2D] = "conv2d",
    [NET_CONVT2D] = "convtranspose2d",
    [NET_LINEAR] = "linear",
    [NET_BATCHNORM] = "batchnorm",
    [NET_RELU] = "relu",
    [NET_SIGMOID] = "sigmoid",
    [NET_MAXPOOL] = "maxpool",
    [NET_AVGPOOL] = "avgpool",
    [NET_GLOBAL_AVGPOOL] = "global_avgpool",
    [NET_FLATTEN] = "flatten",
    [NET_ADD] = "add",
    [NET_SUBSAMPLE] = "subsample",
    [NET_PAD_CHANNELS] = "pad_channels",
};
_Static_assert(sizeof op_names / sizeof op_names[0] == NET_OP_COUNT,
               "op_names must name every net_op");

/* Limits that reject hostile files before they allocate: far beyond any CNN qevo runs. */
#define MAX_LAYERS 100000
#define MAX_DIM 65536
#define MAX_ACT_PER_IMAGE ((size_t)1 << 28)

const char *net_op_name(net_op op)
{
    return op < NET_OP_COUNT ? op_names[op] : "?";
}

struct net {
    char *path;
    char *description;
    net_task task;
    op_dims input;
    float *mean, *std;
    int count;
    net_node *nodes;
    float *weights;
    size_t nweights;
    float *biases;
    size_t nbiases;
    int block; /* images per block of depth-first execution (see net_forward_from) */
};

struct net_acts {
    int max_batch;
    int count;
    float *input;  /* (C, max_batch, H, W) */
    float **out;   /* per node */
    float *ws;     /* kernel workspace */
    size_t bytes;
};

/* ---- Loading: the file's layers, before folding and fusion ---- */

typedef struct {
    const char *name;
    net_op op;
    int ninputs;
    int inputs[2];        /* layer indices or NET_INPUT */
    op_dims in, out;      /* one image */
    json_t *json;         /* the layer's object (borrowed) */
    const st_tensor *w, *b;
    const st_tensor *bn[4]; /* gamma, beta, mean, var */
    float eps;
    int consumers;
    int node;             /* executed node that computes this layer */
} layer;

typedef struct {
    const char *path;
    const st_file *st;
    json_t *graph;
    layer *layers;
    int count;
    qv_err *err;
} loader;

static int layer_fail(loader *L, int i, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int layer_fail(loader *L, int i, const char *fmt, ...)
{
    char msg[QV_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *name = L->layers[i].name ? L->layers[i].name : "?";
    return qv_fail(L->err, "%s: qevo.graph: layers[%d] ('%s'): %s", L->path, i, name, msg);
}

/* Reads an int field, or a [a, b] pair (a single int means both), into v[0..1]. */
static int get_pair(loader *L, int i, const char *key, int lo, int dflt, int v[2])
{
    json_t *j = json_object_get(L->layers[i].json, key);
    if (!j) {
        if (dflt < lo)
            return layer_fail(L, i, "missing '%s'", key);
        v[0] = v[1] = dflt;
        return 0;
    }
    if (json_is_integer(j)) {
        v[0] = v[1] = (int)json_integer_value(j);
        if (json_integer_value(j) < lo || json_integer_value(j) > MAX_DIM)
            return layer_fail(L, i, "'%s' must be in [%d, %d]", key, lo, MAX_DIM);
        return 0;
    }
    if (!json_is_array(j) || json_array_size(j) != 2 || !json_is_integer(json_array_get(j, 0)) ||
        !json_is_integer(json_array_get(j, 1)))
        return layer_fail(L, i, "'%s' must be an integer or a list of two integers", key);
    for (int k = 0; k < 2; k++) {
        json_int_t x = json_integer_value(json_array_get(j, (size_t)k));
        if (x < lo || x > MAX_DIM)
            return layer_fail(L, i, "'%s' values must be in [%d, %d], found %lld", key, lo,
                              MAX_DIM, (long long)x);
        v[k] = (int)x;
    }
    return 0;
}

static int get_int(loader *L, int i, const char *key, int lo, int hi, int *v)
{
    json_t *j = json_object_get(L->layers[i].json, key);
    if (!json_is_integer(j))
        return layer_fail(L, i, "'%s' must be an integer", key);
    json_int_t x = json_integer_value(j);
    if (x < lo || x > hi)
        return layer_fail(L, i, "'%s' must be in [%d, %d], found %lld", key, lo, hi,
                          (long long)x);
    *v = (int)x;
    return 0;
}

/* A float32 tensor named by field `key`, with the given shape (dims < 0 match any).
 * Optional fields may be absent or null (then *t = NULL). */
static int get_tensor(loader *L, int i, const char *key, bool optional, int ndim,
                      const int64_t *shape, const st_tensor **t)
{
    *t = NULL;
    json_t *j = json_object_get(L->layers[i].json, key);
    if (!j || json_is_null(j)) {
        if (optional)
            return 0;
        return layer_fail(L, i, "missing tensor reference '%s'", key);
    }
    if (!json_is_string(j))
        return layer_fail(L, i, "'%s' must be a tensor name (string)", key);
    qv_err e;
    *t = st_expect(L->st, json_string_value(j), ST_F32, ndim, shape, &e);
    if (!*t) {
        /* st_expect's message starts with the file name; keep the rest. */
        const char *rest = strncmp(e.msg, L->path, strlen(L->path)) == 0
                               ? e.msg + strlen(L->path) + 2 : e.msg;
        return layer_fail(L, i, "'%s': %s", key, rest);
    }
    for (int64_t k = 0; k < (*t)->numel; k++)
        if (!isfinite(((const float *)(*t)->data)[k]))
            return layer_fail(L, i, "tensor '%s' holds a non-finite value at index %lld",
                              (*t)->name, (long long)k);
    return 0;
}

static int check_keys(loader *L, int i, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(L->layers[i].json, key, v) {
        (void)v;
        bool ok = !strcmp(key, "name") || !strcmp(key, "op") || !strcmp(key, "inputs");
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = !strcmp(key, *a);
        if (!ok)
            return layer_fail(L, i, "unknown field '%s' for op '%s'", key,
                              net_op_name(L->layers[i].op));
    }
    return 0;
}

static int find_layer(loader *L, int before, const char *name)
{
    if (!strcmp(name, "input"))
        return NET_INPUT;
    for (int k = 0; k < before; k++)
        if (!strcmp(L->layers[k].name, name))
            return k;
    return -2;
}

static op_dims input_dims_of(loader *L, int idx, op_dims image)
{
    return idx == NET_INPUT ? image : L->layers[idx].out;
}

static int parse_inputs(loader *L, int i, op_dims image)
{
    layer *ly = &L->layers[i];
    int want = ly->op == NET_ADD ? 2 : 1;
    json_t *j = json_object_get(ly->json, "inputs");
    if (!j) {
        if (want != 1)
            return layer_fail(L, i, "'add' needs \"inputs\": [a, b]");
        ly->ninputs = 1;
        ly->inputs[0] = i - 1 < 0 ? NET_INPUT : i - 1;
    } else {
        if (!json_is_array(j) || (int)json_array_size(j) != want)
            return layer_fail(L, i, "'inputs' must be a list of %d layer name%s", want,
                              want > 1 ? "s" : "");
        ly->ninputs = want;
        for (int k = 0; k < want; k++) {
            json_t *s = json_array_get(j, (size_t)k);
            if (!json_is_string(s))
                return layer_fail(L, i, "'inputs' must hold layer names (strings)");
            int idx = find_layer(L, i, json_string_value(s));
            if (idx == -2)
                return layer_fail(L, i, "input '%s' is not an earlier layer (nor \"input\")",
                                  json_string_value(s));
            ly->inputs[k] = idx;
        }
    }
    for (int k = 0; k < ly->ninputs; k++)
        if (ly->inputs[k] != NET_INPUT)
            L->layers[ly->inputs[k]].consumers++;
    ly->in = input_dims_of(L, ly->inputs[0], image);
    return 0;
}

static bool dims_equal(op_dims a, op_dims b)
{
    return a.c == b.c && a.h == b.h && a.w == b.w;
}

static int parse_conv(loader *L, int i, op_conv *p)
{
    layer *ly = &L->layers[i];
    bool transpose = ly->op == NET_CONVT2D;
    static const char *const conv_keys[] = {"weight", "bias", "stride", "padding", NULL};
    static const char *const convt_keys[] = {"weight", "bias", "stride", "padding",
                                             "output_padding", NULL};
    if (check_keys(L, i, transpose ? convt_keys : conv_keys))
        return -1;
    int64_t wshape[4] = {-1, -1, -1, -1};
    wshape[transpose ? 0 : 1] = ly->in.c;
    if (get_tensor(L, i, "weight", false, 4, wshape, &ly->w))
        return -1;
    const int64_t *s = ly->w->shape;
    memset(p, 0, sizeof *p);
    p->cin = ly->in.c;
    p->cout = (int)(transpose ? s[1] : s[0]);
    p->kh = (int)s[2];
    p->kw = (int)s[3];
    if (p->cout < 1 || p->kh < 1 || p->kw < 1 || p->cout > MAX_DIM || p->kh > MAX_DIM ||
        p->kw > MAX_DIM)
        return layer_fail(L, i, "weight '%s' has an empty or absurd dimension", ly->w->name);
    int st[2], pad[2], opad[2] = {0, 0};
    if (get_pair(L, i, "stride", 1, 1, st) || get_pair(L, i, "padding", 0, 0, pad))
        return -1;
    if (transpose && get_pair(L, i, "output_padding", 0, 0, opad))
        return -1;
    p->sh = st[0], p->sw = st[1], p->ph = pad[0], p->pw = pad[1];
    p->oph = opad[0], p->opw = opad[1];
    if (transpose && (p->oph >= p->sh || p->opw >= p->sw))
        return layer_fail(L, i, "output_padding must be smaller than stride");
    int64_t bshape[1] = {p->cout};
    if (get_tensor(L, i, "bias", true, 1, bshape, &ly->b))
        return -1;
    ly->out = transpose ? op_convt2d_out(ly->in, p) : op_conv2d_out(ly->in, p);
    bool fits = transpose ? ly->out.h >= 1 && ly->out.w >= 1
                          : ly->in.h + 2 * p->ph >= p->kh && ly->in.w + 2 * p->pw >= p->kw;
    if (!fits)
        return layer_fail(L, i, "kernel %dx%d does not fit the %dx%d input with padding %dx%d",
                          p->kh, p->kw, ly->in.h, ly->in.w, p->ph, p->pw);
    return 0;
}

static int parse_linear(loader *L, int i, op_conv *p)
{
    layer *ly = &L->layers[i];
    static const char *const keys[] = {"weight", "bias", NULL};
    if (check_keys(L, i, keys))
        return -1;
    if (ly->in.h != 1 || ly->in.w != 1)
        return layer_fail(L, i, "linear needs a flat input (features, 1, 1), found (%d, %d, %d);"
                          " add a flatten layer", ly->in.c, ly->in.h, ly->in.w);
    int64_t wshape[2] = {-1, ly->in.c};
    if (get_tensor(L, i, "weight", false, 2, wshape, &ly->w))
        return -1;
    memset(p, 0, sizeof *p);
    p->cin = ly->in.c;
    p->cout = (int)ly->w->shape[0];
    p->kh = p->kw = p->sh = p->sw = 1;
    if (p->cout < 1 || p->cout > (1 << 24))
        return layer_fail(L, i, "weight '%s' has %d outputs", ly->w->name, p->cout);
    int64_t bshape[1] = {p->cout};
    if (get_tensor(L, i, "bias", true, 1, bshape, &ly->b))
        return -1;
    ly->out = (op_dims){p->cout, 1, 1, 1};
    return 0;
}

static int parse_batchnorm(loader *L, int i)
{
    layer *ly = &L->layers[i];
    static const char *const keys[] = {"weight", "bias", "mean", "var", "eps", NULL};
    static const char *const tensors[4] = {"weight", "bias", "mean", "var"};
    if (check_keys(L, i, keys))
        return -1;
    int64_t shape[1] = {ly->in.c};
    for (int k = 0; k < 4; k++)
        if (get_tensor(L, i, tensors[k], false, 1, shape, &ly->bn[k]))
            return -1;
    json_t *eps = json_object_get(ly->json, "eps");
    if (!json_is_number(eps) || json_number_value(eps) < 0 || json_number_value(eps) > 1)
        return layer_fail(L, i, "'eps' must be a number in [0, 1]");
    ly->eps = (float)json_number_value(eps);
    const float *var = ly->bn[3]->data;
    for (int c = 0; c < ly->in.c; c++)
        if (!(var[c] + ly->eps > 0.0f))
            return layer_fail(L, i, "running variance + eps is not positive in channel %d", c);
    ly->out = ly->in;
    return 0;
}

static int parse_pool(loader *L, int i, op_pool *p)
{
    layer *ly = &L->layers[i];
    static const char *const keys[] = {"kernel", "stride", "padding", NULL};
    if (check_keys(L, i, keys))
        return -1;
    int k[2], s[2], pad[2];
    if (get_pair(L, i, "kernel", 1, 0, k) || get_pair(L, i, "stride", 1, 0, s) ||
        get_pair(L, i, "padding", 0, 0, pad))
        return -1;
    *p = (op_pool){k[0], k[1], s[0], s[1], pad[0], pad[1]};
    if (2 * p->ph > p->kh || 2 * p->pw > p->kw)
        return layer_fail(L, i, "padding must be at most half the kernel size");
    if (ly->in.h + 2 * p->ph < p->kh || ly->in.w + 2 * p->pw < p->kw)
        return layer_fail(L, i, "kernel %dx%d does not fit the %dx%d input", p->kh, p->kw,
                          ly->in.h, ly->in.w);
    ly->out = op_pool_out(ly->in, p);
    return 0;
}

static int parse_op(loader *L, int i)
{
    layer *ly = &L->layers[i];
    json_t *op = json_object_get(ly->json, "op");
    if (!json_is_string(op))
        return layer_fail(L, i, "missing 'op' (a string)");
    for (int k = 0; k < NET_OP_COUNT; k++)
        if (!strcmp(json_string_value(op), op_names[k])) {
            ly->op = (net_op)k;
            return 0;
        }
    char ops[512] = "";
    for (int k = 0; k < NET_OP_COUNT; k++)
        snprintf(ops + strlen(ops), sizeof ops - strlen(ops), "%s%s", k ? ", " : "", op_names[k]);
    return layer_fail(L, i, "unknown op '%s' (supported: %s)", json_string_value(op), ops);
}

/* Parses layer i (name, op, inputs, parameters, tensors) and computes its output shape. */
static int parse_layer(loader *L, int i, op_dims image, net_node *scratch)
{
    layer *ly = &L->layers[i];
    json_t *name = json_object_get(ly->json, "name");
    if (!json_is_string(name) || !json_string_length(name))
        return layer_fail(L, i, "missing 'name' (a non-empty string)");
    ly->name = json_string_value(name);
    if (!strcmp(ly->name, "input") || find_layer(L, i, ly->name) >= 0)
        return layer_fail(L, i, "the name is used twice (or is the reserved \"input\")");
    if (parse_op(L, i) || parse_inputs(L, i, image))
        return -1;
    static const char *const none[] = {NULL};
    static const char *const sub_keys[] = {"stride", NULL};
    static const char *const pad_keys[] = {"before", "after", NULL};
    switch (ly->op) {
    case NET_CONV2D:
    case NET_CONVT2D:
        return parse_conv(L, i, &scratch->p.conv);
    case NET_LINEAR:
        return parse_linear(L, i, &scratch->p.conv);
    case NET_BATCHNORM:
        return parse_batchnorm(L, i);
    case NET_MAXPOOL:
    case NET_AVGPOOL:
        return parse_pool(L, i, &scratch->p.pool);
    case NET_RELU:
    case NET_SIGMOID:
        ly->out = ly->in;
        return check_keys(L, i, none);
    case NET_GLOBAL_AVGPOOL:
        ly->out = (op_dims){ly->in.c, 1, 1, 1};
        return check_keys(L, i, none);
    case NET_FLATTEN:
        ly->out = (op_dims){ly->in.c * ly->in.h * ly->in.w, 1, 1, 1};
        return check_keys(L, i, none);
    case NET_ADD: {
        op_dims b = input_dims_of(L, ly->inputs[1], image);
        if (!dims_equal(ly->in, b))
            return layer_fail(L, i, "inputs have different shapes (%d, %d, %d) and (%d, %d, %d)",
                              ly->in.c, ly->in.h, ly->in.w, b.c, b.h, b.w);
        ly->out = ly->in;
        return check_keys(L, i, none);
    }
    case NET_SUBSAMPLE: {
        int s[2];
        if (check_keys(L, i, sub_keys) || get_pair(L, i, "stride", 1, 0, s))
            return -1;
        scratch->p.subsample.sh = s[0], scratch->p.subsample.sw = s[1];
        ly->out = (op_dims){ly->in.c, 1, (ly->in.h + s[0] - 1) / s[0], (ly->in.w + s[1] - 1) / s[1]};
        return 0;
    }
    case NET_PAD_CHANNELS: {
        int before = 0, after = 0;
        if (check_keys(L, i, pad_keys) || get_int(L, i, "before", 0, MAX_DIM, &before) ||
            get_int(L, i, "after", 0, MAX_DIM, &after))
            return -1;
        scratch->p.pad.before = before, scratch->p.pad.after = after;
        ly->out = (op_dims){ly->in.c + before + after, 1, ly->in.h, ly->in.w};
        return 0;
    }
    case NET_OP_COUNT:
        break;
    }
    QV_ASSERT(0);
}

/* ---- Folding, fusion and node construction ---- */

static bool has_weights(net_op op)
{
    return op == NET_CONV2D || op == NET_CONVT2D || op == NET_LINEAR;
}

static void fold_batchnorm(net *nt, net_node *nd, const layer *bn)
{
    const float *gamma = bn->bn[0]->data, *beta = bn->bn[1]->data;
    const float *mean = bn->bn[2]->data, *var = bn->bn[3]->data;
    float *w = nt->weights + nd->woff, *b = nt->biases + nd->boff;
    int cout = nd->out.c;
    /* (C_out, C_in, kh, kw) for conv2d; (C_in, C_out, kh, kw) for transpose. */
    int outer = nd->op == NET_CONVT2D ? nd->wshape[0] : 1;
    size_t inner = (size_t)nd->wcount / ((size_t)outer * cout);
    for (int c = 0; c < cout; c++) {
        /* The exact float32 order of docs/FORMAT.md, shared with scripts/qevo_ref.py. */
        float k = gamma[c] / sqrtf(var[c] + bn->eps);
        for (int o = 0; o < outer; o++) {
            float *wc = w + ((size_t)o * cout + c) * inner;
            for (size_t i = 0; i < inner; i++)
                wc[i] = wc[i] * k;
        }
        float conv_b = nd->has_bias ? b[c] : 0.0f;
        b[c] = beta[c] + (conv_b - mean[c]) * k;
    }
    nd->has_bias = true;
}

/* Fuses add layer i into the conv2d node built just before it (node count - 1) if one of
 * the add's inputs is that conv's output and nothing else reads it: the node then computes
 * act(conv + bias + the add's other input) in one kernel (op_conv2d_add), and the conv's
 * output is never stored on its own. Returns whether it did. */
static bool fuse_add(loader *L, net *nt, int count, int i, int output)
{
    layer *ly = &L->layers[i];
    if (count == 0)
        return false;
    net_node *nd = &nt->nodes[count - 1];
    if (nd->op != NET_CONV2D || nd->act != ACT_NONE || nd->add_name)
        return false;
    for (int k = 0; k < 2; k++) {
        int src = ly->inputs[k], other = ly->inputs[1 - k];
        if (src < 0 || L->layers[src].node != count - 1 || L->layers[src].consumers != 1 ||
            src == output)
            continue;
        nd->add_name = qv_strdup(ly->name);
        nd->add_slot = k;
        nd->ninputs = 2;
        nd->inputs[1] = other == NET_INPUT ? NET_INPUT : L->layers[other].node;
        ly->node = count - 1;
        return true;
    }
    return false;
}

/* Quantization computes (max - min) / levels and code * scale in float32 (docs/FORMAT.md):
 * weights of at most 2^126 in magnitude keep both finite. The file's tensors were checked
 * to be finite as they were read; batch-norm folding multiplies them, so this runs on the
 * folded weights and biases. */
#define MAX_WEIGHT 0x1p126f

static int check_weights(loader *L, const net *nt)
{
    for (int i = 0; i < nt->count; i++) {
        const net_node *nd = &nt->nodes[i];
        if (!has_weights(nd->op))
            continue;
        const float *w = nt->weights + nd->woff, *b = nt->biases + nd->boff;
        for (size_t k = 0; k < nd->wcount; k++) {
            if (nd->bn_name && !isfinite(w[k]))
                return qv_fail(L->err, "%s: qevo.graph: layer '%s': folding batchnorm '%s' "
                               "into it makes weight %zu not finite (gamma / sqrt(var + eps) "
                               "is too large)", L->path, nd->name, nd->bn_name, k);
            if (!(fabsf(w[k]) <= MAX_WEIGHT))
                return qv_fail(L->err, "%s: qevo.graph: layer '%s': weight %zu is %g%s%s%s; "
                               "weights must be at most 2^126 in magnitude", L->path, nd->name,
                               k, (double)w[k], nd->bn_name ? " after folding batchnorm '" : "",
                               nd->bn_name ? nd->bn_name : "", nd->bn_name ? "'" : "");
        }
        for (int c = 0; nd->bn_name && c < nd->out.c; c++)
            if (!isfinite(b[c]))
                return qv_fail(L->err, "%s: qevo.graph: layer '%s': folding batchnorm '%s' "
                               "into it makes bias %d not finite", L->path, nd->name,
                               nd->bn_name, c);
    }
    return 0;
}

/* Turns the parsed layers into executed nodes: batchnorm folded into the conv before
 * it, an add into the conv2d just before it (fuse_add), relu/sigmoid fused into a
 * conv/linear/add before it that nobody else reads. */
static int build_nodes(loader *L, net *nt, const net_node *params, int output)
{
    nt->nodes = qv_calloc((size_t)L->count, sizeof(net_node));
    size_t nweights = 0, nbiases = 0;
    for (int i = 0; i < L->count; i++)
        if (has_weights(L->layers[i].op)) {
            nweights += (size_t)L->layers[i].w->numel;
            nbiases += (size_t)L->layers[i].out.c;
        }
    nt->weights = qv_malloc_aligned(sizeof(float) * (nweights ? nweights : 1));
    nt->biases = qv_malloc_aligned(sizeof(float) * (nbiases ? nbiases : 1));
    nt->nweights = nweights;
    nt->nbiases = nbiases;
    size_t woff = 0, boff = 0;
    int count = 0;
    for (int i = 0; i < L->count; i++) {
        layer *ly = &L->layers[i];
        int src = ly->inputs[0];
        layer *prev = src >= 0 ? &L->layers[src] : NULL;
        bool single = prev && prev->consumers == 1 && src != output;
        if (ly->op == NET_BATCHNORM) {
            if (!single || (prev->op != NET_CONV2D && prev->op != NET_CONVT2D) ||
                nt->nodes[prev->node].bn_name || nt->nodes[prev->node].act != ACT_NONE)
                return layer_fail(L, i, "a batchnorm must directly follow a conv2d or "
                                  "convtranspose2d whose output nothing else uses");
            net_node *nd = &nt->nodes[prev->node];
            fold_batchnorm(nt, nd, ly);
            nd->bn_name = qv_strdup(ly->name);
            ly->node = prev->node;
            continue;
        }
        if (ly->op == NET_ADD && fuse_add(L, nt, count, i, output))
            continue;
        if ((ly->op == NET_RELU || ly->op == NET_SIGMOID) && single &&
            (has_weights(prev->op) || prev->op == NET_ADD || prev->op == NET_BATCHNORM) &&
            nt->nodes[prev->node].act == ACT_NONE) {
            net_node *nd = &nt->nodes[prev->node];
            nd->act = ly->op == NET_RELU ? ACT_RELU : ACT_SIGMOID;
            nd->act_name = qv_strdup(ly->name);
            ly->node = prev->node;
            continue;
        }
        net_node *nd = &nt->nodes[count];
        *nd = params[i];
        nd->name = qv_strdup(ly->name);
        nd->op = ly->op;
        nd->ninputs = ly->ninputs;
        for (int k = 0; k < ly->ninputs; k++)
            nd->inputs[k] = ly->inputs[k] == NET_INPUT ? NET_INPUT : L->layers[ly->inputs[k]].node;
        nd->in = ly->in;
        nd->out = ly->out;
        if (ly->op == NET_RELU || ly->op == NET_SIGMOID)
            nd->act = ly->op == NET_RELU ? ACT_RELU : ACT_SIGMOID;
        if (has_weights(ly->op)) {
            nd->woff = woff;
            nd->wcount = (size_t)ly->w->numel;
            nd->wndim = ly->w->ndim;
            for (int k = 0; k < ly->w->ndim; k++)
                nd->wshape[k] = (int)ly->w->shape[k];
            memcpy(nt->weights + woff, ly->w->data, sizeof(float) * nd->wcount);
            woff += nd->wcount;
            nd->boff = boff;
            nd->has_bias = ly->b != NULL;
            if (ly->b)
                memcpy(nt->biases + boff, ly->b->data, sizeof(float) * (size_t)nd->out.c);
            else
                memset(nt->biases + boff, 0, sizeof(float) * (size_t)nd->out.c);
            boff += (size_t)nd->out.c;
            double per_out = 2.0 * nd->p.conv.cin * nd->p.conv.kh * nd->p.conv.kw;
            nd->flops = ly->op == NET_CONVT2D
                            ? 2.0 * nd->wcount * nd->in.h * nd->in.w
                            : per_out * nd->out.c * nd->out.h * nd->out.w;
        }
        ly->node = count++;
        nt->count = count; /* so that net_free frees the names if a later layer fails */
    }
    return 0;
}

static int parse_input(loader *L, net *nt)
{
    json_t *in = json_object_get(L->graph, "input");
    json_t *shape = json_object_get(in, "shape");
    if (!json_is_array(shape) || json_array_size(shape) != 3)
        return qv_fail(L->err, "%s: qevo.graph: input.shape must be [C, H, W]", L->path);
    int d[3];
    for (int k = 0; k < 3; k++) {
        json_t *v = json_array_get(shape, (size_t)k);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_DIM)
            return qv_fail(L->err, "%s: qevo.graph: input.shape[%d] must be an integer in "
                           "[1, %d]", L->path, k, MAX_DIM);
        d[k] = (int)json_integer_value(v);
    }
    nt->input = (op_dims){d[0], 1, d[1], d[2]};
    nt->mean = qv_malloc(sizeof(float) * (size_t)d[0]);
    nt->std = qv_malloc(sizeof(float) * (size_t)d[0]);
    static const char *const keys[2] = {"mean", "std"};
    for (int k = 0; k < 2; k++) {
        json_t *a = json_object_get(in, keys[k]);
        if (!json_is_array(a) || (int)json_array_size(a) != d[0])
            return qv_fail(L->err, "%s: qevo.graph: input.%s must be a list of %d numbers "
                           "(one per channel)", L->path, keys[k], d[0]);
        for (int c = 0; c < d[0]; c++) {
            json_t *v = json_array_get(a, (size_t)c);
            double x = json_is_number(v) ? json_number_value(v) : NAN;
            if (!isfinite(x) || (k == 1 && !(x > 0)))
                return qv_fail(L->err, "%s: qevo.graph: input.%s[%d] must be a %snumber",
                               L->path, keys[k], c, k == 1 ? "positive " : "");
            (k ? nt->std : nt->mean)[c] = (float)x;
        }
    }
    json_t *task = json_object_get(L->graph, "task");
    const char *t = json_is_string(task) ? json_string_value(task) : "";
    if (!strcmp(t, "classify"))
        nt->task = NET_CLASSIFY;
    else if (!strcmp(t, "reconstruct"))
        nt->task = NET_RECONSTRUCT;
    else
        return qv_fail(L->err, "%s: qevo.graph: 'task' must be \"classify\" or \"reconstruct\"",
                       L->path);
    return 0;
}

static int find_output(loader *L, int *output)
{
    json_t *o = json_object_get(L->graph, "output");
    *output = L->count - 1;
    if (o && !json_is_null(o)) {
        if (!json_is_string(o))
            return qv_fail(L->err, "%s: qevo.graph: 'output' must be a layer name", L->path);
        int idx = find_layer(L, L->count, json_string_value(o));
        if (idx < 0)
            return qv_fail(L->err, "%s: qevo.graph: output '%s' is not a layer", L->path,
                           json_string_value(o));
        if (idx != L->count - 1)
            return qv_fail(L->err, "%s: qevo.graph: output '%s' is not the last layer; the "
                           "layers after it would never be used", L->path, json_string_value(o));
    }
    return 0;
}

static int check_task_shape(loader *L, net *nt)
{
    op_dims o = nt->nodes[nt->count - 1].out;
    if (nt->task == NET_CLASSIFY && (o.h != 1 || o.w != 1 || o.c < 2))
        return qv_fail(L->err, "%s: qevo.graph: a classifier's output must be (classes >= 2, 1, "
                       "1), found (%d, %d, %d)", L->path, o.c, o.h, o.w);
    if (nt->task == NET_RECONSTRUCT && !dims_equal(o, nt->input))
        return qv_fail(L->err, "%s: qevo.graph: a reconstruction's output must have the "
                       "input's shape (%d, %d, %d), found (%d, %d, %d)", L->path, nt->input.c,
                       nt->input.h, nt->input.w, o.c, o.h, o.w);
    return 0;
}

/* Marks the cut nodes: node i is a cut if the smallest input index read by any node
 * after i is >= i (NET_INPUT counts as -1). */
static void mark_cuts(net *nt)
{
    int min_read = nt->count;
    for (int i = nt->count - 1; i >= 0; i--) {
        nt->nodes[i].cut = min_read >= i;
        for (int j = 0; j < nt->nodes[i].ninputs; j++)
            min_read = nt->nodes[i].inputs[j] < min_read ? nt->nodes[i].inputs[j] : min_read;
    }
}

/* Images per block of depth-first execution: a pass runs every node on one block of
 * images before the next block, so that a node's input is still in cache when it is
 * read instead of streaming the whole batch through memory at every node. About 1 MiB of
 * the largest node output per block: small enough to stay in the caches, large enough
 * that the kernels work on long rows. Depends on the net only, so that all activation
 * storage of a net has one layout. */
#define BLOCK_TARGET_FLOATS ((size_t)1 << 18)
#define BLOCK_MAX 64

static int block_images(const net *nt)
{
    size_t largest = (size_t)nt->input.c * nt->input.h * nt->input.w;
    for (int i = 0; i < nt->count; i++) {
        op_dims d = nt->nodes[i].out;
        size_t per = (size_t)d.c * d.h * d.w;
        largest = per > largest ? per : largest;
    }
    size_t block = BLOCK_TARGET_FLOATS / largest;
    return block < 1 ? 1 : block > BLOCK_MAX ? BLOCK_MAX : (int)block;
}

static int load_graph(loader *L, net *nt)
{
    const char *text = st_meta(L->st, "qevo.graph");
    if (!text)
        return qv_fail(L->err, "%s: no qevo.graph in the header's __metadata__: not a qevo "
                       "model (export PyTorch models with scripts/qevo_export.py)", L->path);
    json_error_t je;
    L->graph = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!L->graph)
        return qv_fail(L->err, "%s: qevo.graph: invalid JSON at line %d column %d: %s",
                       L->path, je.line, je.column, je.text);
    json_t *version = json_object_get(L->graph, "version");
    if (!json_is_integer(version) || json_integer_value(version) != 1)
        return qv_fail(L->err, "%s: qevo.graph: 'version' must be 1", L->path);
    if (parse_input(L, nt))
        return -1;
    json_t *layers = json_object_get(L->graph, "layers");
    if (!json_is_array(layers) || json_array_size(layers) == 0 ||
        json_array_size(layers) > MAX_LAYERS)
        return qv_fail(L->err, "%s: qevo.graph: 'layers' must be a non-empty list", L->path);
    L->count = (int)json_array_size(layers);
    L->layers = qv_calloc((size_t)L->count, sizeof(layer));
    net_node *params = qv_calloc((size_t)L->count, sizeof(net_node));
    int rc = 0;
    for (int i = 0; i < L->count && rc == 0; i++) {
        L->layers[i].json = json_array_get(layers, (size_t)i);
        if (!json_is_object(L->layers[i].json))
            rc = layer_fail(L, i, "must be an object");
        else
            rc = parse_layer(L, i, nt->input, &params[i]);
        op_dims o = L->layers[i].out;
        if (rc == 0 && (o.c < 1 || o.h < 1 || o.w < 1 ||
                        (size_t)o.c * o.h * o.w > MAX_ACT_PER_IMAGE))
            rc = layer_fail(L, i, "output shape (%d, %d, %d) is empty or too large", o.c,
                            o.h, o.w);
    }
    int output = 0;
    if (rc == 0)
        rc = find_output(L, &output);
    for (int i = 0; i < L->count - 1 && rc == 0; i++)
        if (L->layers[i].consumers == 0)
            rc = layer_fail(L, i, "its output is never used (only the last layer may be "
                            "unused: it is the model's output)");
    if (rc == 0)
        rc = build_nodes(L, nt, params, output);
    if (rc == 0)
        rc = check_weights(L, nt);
    if (rc == 0)
        rc = check_task_shape(L, nt);
    if (rc == 0) {
        mark_cuts(nt);
        nt->block = block_images(nt);
    }
    free(params);
    return rc;
}

int net_load(const char *path, net **out, qv_err *err)
{
    *out = NULL;
    st_file *st;
    if (st_open(path, &st, err))
        return -1;
    net *nt = qv_calloc(1, sizeof *nt);
    nt->path = qv_strdup(path);
    const char *desc = st_meta(st, "qevo.description");
    nt->description = qv_strdup(desc ? desc : "");
    loader L = {.path = path, .st = st, .err = err};
    int rc = load_graph(&L, nt);
    json_decref(L.graph);
    free(L.layers);
    st_close(st);
    if (rc) {
        net_free(nt);
        return -1;
    }
    *out = nt;
    return 0;
}

void net_free(net *nt)
{
    if (!nt)
        return;
    for (int i = 0; i < nt->count; i++) {
        free(nt->nodes[i].name);
        free(nt->nodes[i].bn_name);
        free(nt->nodes[i].act_name);
        free(nt->nodes[i].add_name);
    }
    free(nt->nodes);
    qv_free_aligned(nt->weights);
    qv_free_aligned(nt->biases);
    free(nt->mean);
    free(nt->std);
    free(nt->path);
    free(nt->description);
    free(nt);
}

/* ---- Accessors ---- */

const char *net_path(const net *nt) { return nt->path; }
int net_node_count(const net *nt) { return nt->count; }
const net_node *net_node_at(const net *nt, int i)
{
    QV_ASSERT(i >= 0 && i < nt->count);
    return &nt->nodes[i];
}
net_task net_get_task(const net *nt) { return nt->task; }
op_dims net_input_dims(const net *nt) { return nt->input; }
op_dims net_output_dims(const net *nt) { return nt->nodes[nt->count - 1].out; }
const float *net_mean(const net *nt) { return nt->mean; }
const float *net_std(const net *nt) { return nt->std; }
const char *net_description(const net *nt) { return nt->description; }
float *net_weights(net *nt) { return nt->weights; }
const float *net_weights_const(const net *nt) { return nt->weights; }
size_t net_weight_count(const net *nt) { return nt->nweights; }
const float *net_biases(const net *nt) { return nt->biases; }
size_t net_bias_count(const net *nt) { return nt->nbiases; }

int net_find(const net *nt, const char *name)
{
    for (int i = 0; i < nt->count; i++) {
        const net_node *nd = &nt->nodes[i];
        if (!strcmp(nd->name, name) || (nd->bn_name && !strcmp(nd->bn_name, name)) ||
            (nd->add_name && !strcmp(nd->add_name, name)) ||
            (nd->act_name && !strcmp(nd->act_name, name)))
            return i;
    }
    return -1;
}

double net_flops(const net *nt)
{
    double f = 0;
    for (int i = 0; i < nt->count; i++)
        f += nt->nodes[i].flops;
    return f;
}

/* ---- The folded graph as JSON ---- */

static json_t *pair(int a, int b)
{
    return json_pack("[ii]", a, b);
}

/* The name consumers use for node i's output: its last fused layer's. */
static const char *output_name(const net *nt, int i)
{
    if (i == NET_INPUT)
        return "input";
    const net_node *nd = &nt->nodes[i];
    return nd->act_name ? nd->act_name : nd->add_name ? nd->add_name : nd->name;
}

static json_t *node_json(const net *nt, int i)
{
    const net_node *nd = &nt->nodes[i];
    json_t *j = json_pack("{ssss}", "name", nd->name, "op", net_op_name(nd->op));
    json_t *inputs = json_array();
    /* A fused add's other input belongs to the add layer (add_json). */
    for (int k = 0; k < (nd->add_name ? 1 : nd->ninputs); k++)
        json_array_append_new(inputs, json_string(output_name(nt, nd->inputs[k])));
    json_object_set_new(j, "inputs", inputs);
    char tensor[1024];
    switch (nd->op) {
    case NET_CONV2D:
    case NET_CONVT2D:
    case NET_LINEAR:
        snprintf(tensor, sizeof tensor, "%s.weight", nd->name);
        json_object_set_new(j, "weight", json_string(tensor));
        snprintf(tensor, sizeof tensor, "%s.bias", nd->name);
        json_object_set_new(j, "bias", nd->has_bias ? json_string(tensor) : json_null());
        if (nd->op == NET_LINEAR)
            break;
        json_object_set_new(j, "stride", pair(nd->p.conv.sh, nd->p.conv.sw));
        json_object_set_new(j, "padding", pair(nd->p.conv.ph, nd->p.conv.pw));
        if (nd->op == NET_CONVT2D)
            json_object_set_new(j, "output_padding", pair(nd->p.conv.oph, nd->p.conv.opw));
        break;
    case NET_MAXPOOL:
    case NET_AVGPOOL:
        json_object_set_new(j, "kernel", pair(nd->p.pool.kh, nd->p.pool.kw));
        json_object_set_new(j, "stride", pair(nd->p.pool.sh, nd->p.pool.sw));
        json_object_set_new(j, "padding", pair(nd->p.pool.ph, nd->p.pool.pw));
        break;
    case NET_SUBSAMPLE:
        json_object_set_new(j, "stride", pair(nd->p.subsample.sh, nd->p.subsample.sw));
        break;
    case NET_PAD_CHANNELS:
        json_object_set_new(j, "before", json_integer(nd->p.pad.before));
        json_object_set_new(j, "after", json_integer(nd->p.pad.after));
        break;
    default:
        break;
    }
    return j;
}

/* The add layer fused into conv node i, its inputs in the file's order. */
static json_t *add_json(const net *nt, int i)
{
    const net_node *nd = &nt->nodes[i];
    const char *in[2];
    in[nd->add_slot] = nd->name;
    in[1 - nd->add_slot] = output_name(nt, nd->inputs[1]);
    return json_pack("{sssss[ss]}", "name", nd->add_name, "op", "add", "inputs", in[0], in[1]);
}

char *net_folded_graph_json(const net *nt)
{
    json_t *mean = json_array(), *std = json_array(), *layers = json_array();
    for (int c = 0; c < nt->input.c; c++) {
        json_array_append_new(mean, json_real(nt->mean[c]));
        json_array_append_new(std, json_real(nt->std[c]));
    }
    for (int i = 0; i < nt->count; i++) {
        const net_node *nd = &nt->nodes[i];
        json_array_append_new(layers, node_json(nt, i));
        /* A fused add or activation goes back to being its own layer; a standalone one is
         * already. */
        if (nd->add_name)
            json_array_append_new(layers, add_json(nt, i));
        if (nd->act_name)
            json_array_append_new(layers, json_pack("{sssss[s]}", "name", nd->act_name, "op",
                                                    nd->act == ACT_RELU ? "relu" : "sigmoid",
                                                    "inputs", nd->add_name ? nd->add_name
                                                                           : nd->name));
    }
    json_t *g = json_pack("{sisss{s[iii]soso}soss}", "version", 1, "task",
                          nt->task == NET_CLASSIFY ? "classify" : "reconstruct", "input",
                          "shape", nt->input.c, nt->input.h, nt->input.w, "mean", mean, "std",
                          std, "layers", layers, "output",
                          output_name(nt, nt->count - 1));
    char *s = json_dumps(g, JSON_COMPACT);
    json_decref(g);
    QV_ASSERT(s);
    char *copy = qv_strdup(s);
    free(s);
    return copy;
}

/* ---- Execution ---- */

static size_t numel(op_dims d)
{
    return (size_t)d.c * d.n * d.h * d.w;
}

static op_dims batch_of(op_dims d, int n)
{
    d.n = n;
    return d;
}

/* Activations are stored as consecutive CNHW blocks of nt->block images (the last one
 * may hold fewer): block k of a tensor of `per` floats per image starts at k * block *
 * per, so n images fill the first n * per floats whatever the block size. */
static size_t per_image(op_dims d)
{
    return (size_t)d.c * d.h * d.w;
}

bool net_is_cut(const net *nt, int i)
{
    QV_ASSERT(i >= 0 && i < nt->count);
    return nt->nodes[i].cut;
}

int net_resume_node(const net *nt, int first)
{
    QV_ASSERT(first >= 0 && first <= nt->count);
    int r = first;
    while (r > 0 && !net_is_cut(nt, r - 1))
        r--;
    return r;
}

static net_acts *acts_create(const net *nt, int max_batch, bool cut_only)
{
    QV_ASSERT(max_batch >= 1);
    net_acts *a = qv_calloc(1, sizeof *a);
    a->max_batch = max_batch;
    a->count = nt->count;
    a->input = qv_malloc_aligned(sizeof(float) * numel(batch_of(nt->input, max_batch)));
    a->out = qv_calloc((size_t)nt->count, sizeof(float *));
    size_t ws = 0, bytes = sizeof(float) * numel(batch_of(nt->input, max_batch));
    for (int i = 0; i < nt->count; i++) {
        const net_node *nd = &nt->nodes[i];
        size_t n = numel(batch_of(nd->out, max_batch));
        if (cut_only && !net_is_cut(nt, i))
            continue;
        a->out[i] = qv_malloc_aligned(sizeof(float) * n);
        bytes += sizeof(float) * n;
        if (cut_only)
            continue;
        /* Kernels run on one block at a time. */
        int block = max_batch < nt->block ? max_batch : nt->block;
        size_t need = 0;
        if (nd->op == NET_CONV2D)
            need = op_conv2d_workspace(batch_of(nd->in, block), &nd->p.conv);
        else if (nd->op == NET_CONVT2D)
            need = op_convt2d_workspace(batch_of(nd->in, block), &nd->p.conv);
        ws = need > ws ? need : ws;
    }
    a->ws = cut_only ? NULL : qv_malloc_aligned(sizeof(float) * (ws ? ws : 1));
    a->bytes = bytes + sizeof(float) * ws;
    return a;
}

net_acts *net_acts_create(const net *nt, int max_batch)
{
    return acts_create(nt, max_batch, false);
}

net_acts *net_acts_create_cache(const net *nt, int max_batch)
{
    return acts_create(nt, max_batch, true);
}

void net_acts_copy(const net *nt, const net_acts *src, net_acts *dst, int first, int end,
                   int n)
{
    QV_ASSERT(n <= src->max_batch && n <= dst->max_batch && end <= nt->count);
    if (first == 0)
        memcpy(dst->input, src->input, sizeof(float) * numel(batch_of(nt->input, n)));
    for (int i = first; i < end; i++)
        if (dst->out[i]) {
            QV_ASSERT(src->out[i]);
            memcpy(dst->out[i], src->out[i], sizeof(float) * numel(batch_of(nt->nodes[i].out, n)));
        }
}

void net_acts_free(net_acts *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->count; i++)
        qv_free_aligned(a->out[i]);
    free(a->out);
    qv_free_aligned(a->input);
    qv_free_aligned(a->ws);
    free(a);
}

int net_acts_batch(const net_acts *a) { return a->max_batch; }
size_t net_acts_bytes(const net_acts *a) { return a->bytes; }

static void run_node(const net *nt, int i, const float *const *in, float *y, float *ws, int n)
{
    const net_node *nd = &nt->nodes[i];
    op_dims d = batch_of(nd->in, n);
    const float *w = nt->weights + nd->woff;
    const float *b = nd->has_bias ? nt->biases + nd->boff : NULL;
    switch (nd->op) {
    case NET_CONV2D:
        if (nd->add_name)
            op_conv2d_add(in[0], d, &nd->p.conv, w, b, in[1], nd->act, y, ws);
        else
            op_conv2d(in[0], d, &nd->p.conv, w, b, nd->act, y, ws);
        break;
    case NET_CONVT2D:
        op_convt2d(in[0], d, &nd->p.conv, w, b, nd->act, y, ws);
        break;
    case NET_LINEAR:
        op_linear(in[0], nd->p.conv.cin, n, w, b, nd->p.conv.cout, nd->act, y);
        break;
    case NET_RELU:
    case NET_SIGMOID:
        memcpy(y, in[0], sizeof(float) * numel(d));
        op_activate(y, numel(d), nd->act);
        break;
    case NET_MAXPOOL:
        op_maxpool(in[0], d, &nd->p.pool, y);
        break;
    case NET_AVGPOOL:
        op_avgpool(in[0], d, &nd->p.pool, y);
        break;
    case NET_GLOBAL_AVGPOOL:
        op_global_avgpool(in[0], d, y);
        break;
    case NET_FLATTEN:
        op_flatten(in[0], d, y);
        break;
    case NET_ADD:
        op_add(in[0], in[1], numel(d), nd->act, y);
        break;
    case NET_SUBSAMPLE:
        op_subsample(in[0], d, nd->p.subsample.sh, nd->p.subsample.sw, y);
        break;
    case NET_PAD_CHANNELS:
        op_pad_channels(in[0], d, nd->p.pad.before, nd->p.pad.after, y);
        break;
    case NET_BATCHNORM:
    case NET_OP_COUNT:
        QV_ASSERT(0);
    }
}

/* Runs nodes first.. on the block of images [b0, b0 + n). */
static void forward_block(const net *nt, int first, const net_acts *cached, net_acts *out,
                          int b0, int n)
{
    for (int i = first; i < nt->count; i++) {
        const net_node *nd = &nt->nodes[i];
        const float *in[2] = {NULL, NULL};
        for (int k = 0; k < nd->ninputs; k++) {
            int j = nd->inputs[k];
            const float *buf = j == NET_INPUT ? cached->input
                               : j < first    ? cached->out[j]
                                              : out->out[j];
            QV_ASSERT(buf); /* a cache-only `cached` must be resumed at a cut */
            in[k] = buf + (size_t)b0 * per_image(j == NET_INPUT ? nt->input : nt->nodes[j].out);
        }
        run_node(nt, i, in, out->out[i] + (size_t)b0 * per_image(nd->out), out->ws, n);
    }
}

/* Depth-first: all nodes on one block of images, then the next block. The blocks and the
 * kernel calls on them depend only on n, so a pass from `first` repeats the exact
 * arithmetic of a full pass. */
void net_forward_from(const net *nt, int first, const net_acts *cached, net_acts *out, int n)
{
    QV_ASSERT(first >= 0 && first <= nt->count);
    QV_ASSERT(n >= 1 && n <= cached->max_batch && n <= out->max_batch);
    QV_ASSERT(cached->count == nt->count && out->count == nt->count && out->ws);
    for (int b0 = 0; b0 < n; b0 += nt->block)
        forward_block(nt, first, cached, out, b0, n - b0 < nt->block ? n - b0 : nt->block);
}

void net_forward(const net *nt, net_acts *a, const float *x, int n)
{
    QV_ASSERT(n >= 1 && n <= a->max_batch);
    size_t per = per_image(nt->input);
    for (int b0 = 0; b0 < n; b0 += nt->block) {
        int bn = n - b0 < nt->block ? n - b0 : nt->block;
        op_nchw_to_cnhw(x + b0 * per, batch_of(nt->input, bn), a->input + b0 * per);
    }
    net_forward_from(nt, 0, a, a, n);
}

int net_block_images(const net *nt)
{
    return nt->block;
}

const float *net_node_input(const net *nt, const net_acts *a, int i, int b0)
{
    QV_ASSERT(i >= 0 && i < nt->count && b0 % nt->block == 0 && a->ws);
    int j = nt->nodes[i].inputs[0];
    const float *buf = j == NET_INPUT ? a->input : a->out[j];
    return buf + (size_t)b0 * per_image(j == NET_INPUT ? nt->input : nt->nodes[j].out);
}

void net_output(const net *nt, const net_acts *a, int n, float *y)
{
    op_dims od = net_output_dims(nt);
    size_t per = per_image(od);
    const float *out = a->out[nt->count - 1];
    for (int b0 = 0; b0 < n; b0 += nt->block) {
        int bn = n - b0 < nt->block ? n - b0 : nt->block;
        op_cnhw_to_nchw(out + b0 * per, batch_of(od, bn), y + b0 * per);
    }
}
