#define _POSIX_C_SOURCE 200809L
#include "qevo/config.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/quant.h"
#include "qevo/recon.h"

typedef enum { T_INT, T_NUM, T_BOOL, T_STR, T_ENUM, T_LAYERS, T_SEED } field_type;

typedef struct {
    const char *key; /* dotted JSON path */
    field_type type;
    size_t off;      /* into config */
    const char *dflt; /* JSON text; NULL = required */
    double lo, hi;   /* inclusive range for numbers */
    bool lo_open;    /* lo itself excluded */
    const char *const *names; /* enum names */
    const char *doc;
} field;

static const char *const granularity_names[] = {"per_tensor", "per_channel", NULL};
static const char *const grid_names[] = {"symmetric", "asymmetric", NULL};
static const char *const scale_names[] = {"max", "mse", NULL};
static const char *const fit_names[] = {"kl", "cross_entropy", "accuracy", "mse", "psnr", NULL};
static const char *const sel_names[] = {"plus", "comma", NULL};
static const char *const step_names[] = {"flip", "pm1", "random", NULL};
static const char *const spread_names[] = {"one_layer", "all_layers", NULL};
static const char *const topo_names[] = {"ring", "torus", "full", "random", NULL};
static const char *const policy_names[] = {"replace_worst_if_better", "replace_worst", NULL};
static const char *const mode_names[] = {"sync", "async", NULL};
_Static_assert(RECON_MAX_INPUTS == 4096, "reconstruction.sweeps documents the limit");
_Static_assert(QUANT_PER_TENSOR == 0 && QUANT_PER_CHANNEL == 1, "granularity_names order");
_Static_assert(QUANT_SYMMETRIC == 0 && QUANT_ASYMMETRIC == 1, "grid_names order");
_Static_assert(QUANT_SCALE_MAX == 0 && QUANT_SCALE_MSE == 1, "scale_names order");

#define F(k, t, member, d, lo, hi, open, names, doc) \
    {k, t, offsetof(config, member), d, lo, hi, open, names, doc}
#define BIG 2147483647.0 /* INT_MAX: integer fields are ints */

static const field fields[] = {
    F("model", T_STR, model, NULL, 0, 0, 0, NULL, "float model file (.safetensors)"),
    F("start", T_STR, start, "\"\"", 0, 0, 0, NULL,
      "quantized model whose codes start the search (e.g. AdaRound's); \"\" = nearest rounding"),
    F("quantizer.bits", T_INT, quantizer.bits, "3", 2, 8, 0, NULL, "bits per weight"),
    F("quantizer.granularity", T_ENUM, quantizer.granularity, "\"per_channel\"", 0, 0, 0,
      granularity_names, "one scale per output channel, or per layer"),
    F("quantizer.grid", T_ENUM, quantizer.grid, "\"symmetric\"", 0, 0, 0, grid_names,
      "symmetric = codes in [-qmax, qmax] (at 2 bits the ternary {-1, 0, 1} x scale); "
      "asymmetric = all 2^bits states with a zero point per scale (docs/FORMAT.md)"),
    F("quantizer.scales", T_ENUM, quantizer.scales, "\"max\"", 0, 0, 0, scale_names,
      "max = each scale covers its weights' range; mse = the clipping ratio (of 1.00, 0.99, "
      ".. 0.01) with the smallest squared weight error"),
    F("quantizer.first_bits", T_INT, quantizer.first_bits, "0", 0, 8, 0, NULL,
      "bits of the first conv/linear layer; 0 = quantizer.bits"),
    F("quantizer.last_bits", T_INT, quantizer.last_bits, "0", 0, 8, 0, NULL,
      "bits of the last conv/linear layer; 0 = quantizer.bits"),
    F("reconstruction.sweeps", T_INT, reconstruction.sweeps, "0", 0, 10000, 0, NULL,
      "before the evolution, give each weighted layer in turn the codes (within "
      "evolution.max_shift of nearest) that best reproduce its float output on the fitness "
      "images, by greedy sweeps over its weights, at most this many (layers with more than 4096 "
      "inputs per output channel are kept); 0 = off (start from `start` as it is)"),
    F("data.train", T_STR, data.train, "\"fashion-mnist:train\"", 0, 0, 0, NULL,
      "dataset the fitness shards and the validation split are drawn from"),
    F("data.test", T_STR, data.test, "\"fashion-mnist:test\"", 0, 0, 0, NULL,
      "held-out test split, scored once at the end and never used for any choice"),
    F("data.test_size", T_INT, data.test_size, "0", 0, BIG, 0, NULL,
      "score only the first images of the test split (quick runs); 0 = all of it"),
    F("data.fitness_size", T_INT, data.fitness_size, "4096", 1, BIG, 0, NULL,
      "images shared out among the islands (disjoint shards)"),
    F("data.validation_size", T_INT, data.validation_size, "5000", 1, BIG, 0, NULL,
      "validation images (disjoint from the shards), scored data-parallel by all ranks"),
    F("data.fitness_batch", T_INT, data.fitness_batch, "256", 0, BIG, 0, NULL,
      "images per fitness evaluation, drawn from the island's shard; 0 = the whole shard "
      "(keep it <= data.eval_batch so offspring caches need no extra passes)"),
    F("data.redraw_every", T_INT, data.redraw_every, "0", 0, BIG, 0, NULL,
      "generations between redraws of the fitness batch (the population is re-scored); 0 = never"),
    F("data.confirmation_batch", T_INT, data.confirmation_batch, "0", 0, BIG, 0, NULL,
      "images of the island's shard, disjoint from the fitness batch and redrawn with it, on "
      "which an offspring or migrant that passed paired selection must pass it again, so that "
      "a win picked among many candidates is confirmed on images that took no part in picking "
      "it (needs evolution.significance > 0); 0 = off"),
    F("data.eval_batch", T_INT, data.eval_batch, "256", 1, 65536, 0, NULL,
      "images per forward pass"),
    F("fitness.kind", T_ENUM, fitness.kind, "\"kl\"", 0, 0, 0, fit_names,
      "kl (to the float model, no labels), cross_entropy, accuracy (ties by cross-entropy); "
      "mse or psnr for autoencoders"),
    F("fitness.temperature", T_NUM, fitness.temperature, "1", 0, 100, 1, NULL,
      "temperature T of the KL (softmaxes of logits / T, scaled by T^2): T > 1 also weighs "
      "the classes the float model finds unlikely"),
    F("fitness.features", T_NUM, fitness.features, "0", 0, 1e6, 0, NULL,
      "classifiers, kl or cross_entropy: weight of a feature term added per image to the island "
      "fitness: the squared error of the last conv/linear layer's input against the float "
      "model's, relative to its mean squared norm over the shard (far more numbers per image "
      "than the logits); validation and test are scored without it; 0 = off"),
    F("evolution.population", T_INT, evolution.population, "4", 1, 100000, 0, NULL,
      "parents per island (mu)"),
    F("evolution.offspring", T_INT, evolution.offspring, "8", 1, 100000, 0, NULL,
      "offspring per generation (lambda)"),
    F("evolution.selection", T_ENUM, evolution.selection, "\"plus\"", 0, 0, 0, sel_names,
      "plus = (mu + lambda); comma = (mu, lambda) keeping the best parent (elitism)"),
    F("evolution.tournament", T_INT, evolution.tournament, "2", 1, 100000, 0, NULL,
      "tournament size for choosing parents"),
    F("evolution.crossover", T_NUM, evolution.crossover, "0", 0, 1, 0, NULL,
      "probability that an offspring is a uniform crossover (where the parents differ) of two parents"),
    F("evolution.rate", T_NUM, evolution.rate, "0.0005", 0, 1, 1, NULL,
      "share of the weights (of the chosen layer or of all) moved per mutation"),
    F("evolution.min_weights", T_INT, evolution.min_weights, "1", 1, 1000000, 0, NULL,
      "at least this many weights per mutation"),
    F("evolution.step", T_ENUM, evolution.step, "\"flip\"", 0, 0, 0, step_names,
      "flip = other rounding neighbour of w/s; pm1 = one state up or down; random = any state "
      "within max_shift of nearest"),
    F("evolution.max_shift", T_INT, evolution.max_shift, "1", 1, 254, 0, NULL,
      "codes stay within this many states of their nearest code"),
    F("evolution.boundary_bias", T_NUM, evolution.boundary_bias, "0.9", 0, 1, 0, NULL,
      "0 = weights chosen uniformly; 1 = in proportion to closeness of w/s to a rounding boundary"),
    F("evolution.layers", T_LAYERS, evolution.layers, "\"adaptive\"", 0, 0, 0, NULL,
      "layer of a mutation: proportional (to weight count), uniform, adaptive (by recent "
      "improvement per FLOP of evaluation), or a list of layer names"),
    F("evolution.spread", T_ENUM, evolution.spread, "\"one_layer\"", 0, 0, 0, spread_names,
      "one_layer = a mutation stays in one layer; all_layers = spread over the whole network"),
    F("evolution.one_fifth", T_BOOL, evolution.one_fifth, "true", 0, 0, 0, NULL,
      "adapt the rate by the 1/5 success rule"),
    F("evolution.significance", T_NUM, evolution.significance, "0", 0, 100, 0, NULL,
      "paired selection: an offspring (or a migrant) enters the population only if its per-image "
      "losses on the island's batch are lower than its parent's (the member it would replace) "
      "by a paired t statistic of at least this (e.g. 2); 0 = any improvement of the mean"),
    F("evolution.cache_mb", T_NUM, evolution.cache_mb, "1024", 0, 1e9, 0, NULL,
      "memory bound (MiB) for cached parent activations per island; 0 = no cache (full passes)"),
    F("islands.topology", T_ENUM, islands.topology, "\"ring\"", 0, 0, 0, topo_names,
      "ring, torus (2-D), full, random (regular graph of `degree`, from the seed)"),
    F("islands.degree", T_INT, islands.degree, "3", 1, 1000000, 0, NULL,
      "neighbours per island in the random topology"),
    F("islands.interval", T_INT, islands.interval, "10", 0, BIG, 0, NULL,
      "generations between migrations; 0 = never"),
    F("islands.migrants", T_INT, islands.migrants, "1", 1, 100000, 0, NULL,
      "best states each island sends to each neighbour"),
    F("islands.policy", T_ENUM, islands.policy, "\"replace_worst_if_better\"", 0, 0, 0,
      policy_names, "what an arriving migrant replaces"),
    F("islands.mode", T_ENUM, islands.mode, "\"sync\"", 0, 0, 0, mode_names,
      "sync = islands migrate, validate and stop together (reproducible); async = islands "
      "never wait for each other: migrants travel by non-blocking messages, each island "
      "stops on its own, the bests are validated at the end"),
    F("stop.generations", T_INT, stop.generations, "0", 0, BIG, 0, NULL,
      "stop after this many generations; 0 = no limit"),
    F("stop.seconds", T_NUM, stop.seconds, "0", 0, 1e9, 0, NULL,
      "stop after this much wall time; 0 = no limit"),
    F("stop.patience", T_INT, stop.patience, "0", 0, BIG, 0, NULL,
      "stop after this many reports without validation improvement; 0 = never"),
    F("checkpoint.every_generations", T_INT, checkpoint.every_generations, "0", 0, BIG, 0,
      NULL, "checkpoint every this many generations; 0 = not by generations"),
    F("checkpoint.every_seconds", T_NUM, checkpoint.every_seconds, "0", 0, 1e9, 0, NULL,
      "checkpoint every this many seconds of wall time; 0 = not by time (SIGTERM, SIGUSR1 "
      "and SIGUSR2 always checkpoint)"),
    F("checkpoint.keep", T_INT, checkpoint.keep, "3", 1, 1000, 0, NULL,
      "newest checkpoints kept in output.dir/checkpoints"),
    F("report.interval", T_INT, report.interval, "20", 1, BIG, 0, NULL,
      "generations between reports (validation of the island bests, progress line, log)"),
    F("report.grid_images", T_INT, report.grid_images, "12", 0, 1000, 0, NULL,
      "autoencoders: test images in the reconstruction PNG"),
    F("output.dir", T_STR, output.dir, "\"runs/qevo\"", 0, 0, 0, NULL,
      "output folder (created)"),
    F("seed", T_SEED, seed, "1", 0, 0, 0, NULL, "seed of every random choice"),
};
#define NFIELDS ((int)(sizeof fields / sizeof fields[0]))

const char *config_fit_name(fit_kind k) { return fit_names[k]; }
const char *config_topology_name(topology_kind t) { return topo_names[t]; }

static void *member(config *c, const field *f) { return (char *)c + f->off; }
static const void *cmember(const config *c, const field *f) { return (const char *)c + f->off; }

/* The value at a dotted path, or NULL. */
static json_t *get_path(json_t *root, const char *key)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", key);
    json_t *j = root;
    char *save;
    for (char *part = strtok_r(buf, ".", &save); part && j; part = strtok_r(NULL, ".", &save))
        j = json_is_object(j) ? json_object_get(j, part) : NULL;
    return j;
}

static bool is_section(const char *prefix, size_t len)
{
    for (int i = 0; i < NFIELDS; i++)
        if (strlen(fields[i].key) > len && !strncmp(fields[i].key, prefix, len) &&
            fields[i].key[len] == '.')
            return true;
    return false;
}

static const field *find_field(const char *key)
{
    for (int i = 0; i < NFIELDS; i++)
        if (!strcmp(fields[i].key, key))
            return &fields[i];
    return NULL;
}

/* Lists the keys under a section, for "unknown key" messages. */
static void known_under(const char *section, char *buf, size_t cap)
{
    size_t len = strlen(section);
    buf[0] = 0;
    for (int i = 0; i < NFIELDS; i++) {
        const char *k = fields[i].key;
        if (len && (strncmp(k, section, len) || k[len] != '.'))
            continue;
        const char *rest = len ? k + len + 1 : k;
        char top[64];
        snprintf(top, sizeof top, "%.*s", (int)strcspn(rest, "."), rest);
        if (!strstr(buf, top))
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", buf[0] ? ", " : "", top);
    }
}

/* Rejects keys that are neither fields nor sections. */
static int check_unknown(json_t *obj, const char *prefix, const char *origin, qv_err *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", k);
        if (find_field(path))
            continue;
        if (is_section(path, strlen(path))) {
            if (!json_is_object(v))
                return qv_fail(err, "%s: %s: expected an object", origin, path);
            if (check_unknown(v, path, origin, err))
                return -1;
            continue;
        }
        char known[1024];
        known_under(prefix, known, sizeof known);
        return qv_fail(err, "%s: %s: unknown key (known%s%s: %s)", origin, path,
                       prefix[0] ? " under " : "", prefix, known);
    }
    return 0;
}

static const char *kind_of(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static void describe(const json_t *j, char *buf, size_t cap)
{
    char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, cap, "%s%s", s ? s : "?", "");
    if (strlen(buf) > 60)
        strcpy(buf + 57, "...");
    free(s);
}

static int set_enum(config *c, const field *f, const json_t *v, const char *origin,
                    qv_err *err)
{
    if (json_is_string(v))
        for (int k = 0; f->names[k]; k++)
            if (!strcmp(json_string_value(v), f->names[k])) {
                *(int *)member(c, f) = k;
                return 0;
            }
    char choices[512] = "", found[128];
    for (int k = 0; f->names[k]; k++)
        snprintf(choices + strlen(choices), sizeof choices - strlen(choices), "%s\"%s\"",
                 k ? ", " : "", f->names[k]);
    describe(v, found, sizeof found);
    return qv_fail(err, "%s: %s: expected one of %s, found %s", origin, f->key, choices, found);
}

static int set_layers(config *c, const field *f, const json_t *v, const char *origin,
                      qv_err *err)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        static const char *const names[] = {"proportional", "uniform", "adaptive"};
        for (int k = 0; k < 3; k++)
            if (!strcmp(s, names[k])) {
                c->evolution.layers = (layer_choice)k;
                return 0;
            }
    } else if (json_is_array(v) && json_array_size(v) > 0) {
        size_t n = json_array_size(v);
        c->evolution.layer_list = qv_calloc(n, sizeof(char *));
        c->evolution.layer_count = (int)n;
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_array_get(v, i);
            if (!json_is_string(s))
                return qv_fail(err, "%s: %s[%zu]: expected a layer name (string), found %s",
                               origin, f->key, i, kind_of(s));
            c->evolution.layer_list[i] = qv_strdup(json_string_value(s));
        }
        c->evolution.layers = LAYERS_LIST;
        return 0;
    }
    char found[128];
    describe(v, found, sizeof found);
    return qv_fail(err, "%s: %s: expected \"proportional\", \"uniform\", \"adaptive\" or a "
                   "non-empty list of layer names, found %s", origin, f->key, found);
}

static int set_number(config *c, const field *f, const json_t *v, const char *origin,
                      qv_err *err)
{
    char found[128];
    describe(v, found, sizeof found);
    bool integer = f->type == T_INT;
    if (integer ? !json_is_integer(v) : !json_is_number(v))
        return qv_fail(err, "%s: %s: expected %s, found %s", origin, f->key,
                       integer ? "an integer" : "a number", found);
    double x = json_number_value(v);
    bool low = f->lo_open ? x <= f->lo : x < f->lo;
    if (low || x > f->hi || !isfinite(x)) {
        char hi[32];
        snprintf(hi, sizeof hi, "%.17g]", f->hi);
        return qv_fail(err, "%s: %s: expected %s in %c%g, %s, found %s", origin, f->key,
                       integer ? "an integer" : "a number", f->lo_open ? '(' : '[', f->lo, hi,
                       found);
    }
    if (integer)
        *(int *)member(c, f) = (int)json_integer_value(v);
    else
        *(double *)member(c, f) = x;
    return 0;
}

static int set_field(config *c, const field *f, const json_t *v, const char *origin,
                     qv_err *err)
{
    char found[128];
    switch (f->type) {
    case T_INT:
    case T_NUM:
        return set_number(c, f, v, origin, err);
    case T_BOOL:
        if (!json_is_boolean(v))
            break;
        *(bool *)member(c, f) = json_is_true(v);
        return 0;
    case T_STR:
        if (!json_is_string(v))
            break;
        *(char **)member(c, f) = qv_strdup(json_string_value(v));
        return 0;
    case T_ENUM:
        return set_enum(c, f, v, origin, err);
    case T_LAYERS:
        return set_layers(c, f, v, origin, err);
    case T_SEED:
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            break;
        *(uint64_t *)member(c, f) = (uint64_t)json_integer_value(v);
        return 0;
    }
    describe(v, found, sizeof found);
    static const char *const want[] = {[T_BOOL] = "true or false", [T_STR] = "a string",
                                       [T_SEED] = "a non-negative integer"};
    return qv_fail(err, "%s: %s: expected %s, found %s", origin, f->key, want[f->type], found);
}

/* Cross-field rules: settings that are each fine but impossible together. */
static int check_combinations(const config *c, const char *origin, qv_err *err)
{
    if (!c->model[0])
        return qv_fail(err, "%s: model: expected a model file name, found \"\"", origin);
    if (c->evolution.selection == SEL_COMMA && c->evolution.offspring < c->evolution.population)
        return qv_fail(err, "%s: evolution.offspring: (mu, lambda) selection needs offspring >= "
                       "population (%d), found %d", origin, c->evolution.population,
                       c->evolution.offspring);
    if (c->evolution.significance > 0 && c->evolution.selection != SEL_PLUS)
        return qv_fail(err, "%s: evolution.significance: paired selection needs "
                       "evolution.selection \"plus\" (a rejected offspring must not displace its "
                       "parent), found \"comma\"", origin);
    if (c->data.confirmation_batch > 0 && c->evolution.significance <= 0)
        return qv_fail(err, "%s: data.confirmation_batch: confirming paired wins needs "
                       "evolution.significance > 0, found 0", origin);
    if (c->evolution.tournament > c->evolution.population)
        return qv_fail(err, "%s: evolution.tournament: expected at most the population (%d), "
                       "found %d", origin, c->evolution.population, c->evolution.tournament);
    if (c->islands.migrants > c->evolution.population)
        return qv_fail(err, "%s: islands.migrants: expected at most the population (%d), found "
                       "%d", origin, c->evolution.population, c->islands.migrants);
    if (!c->stop.generations && !c->stop.seconds && !c->stop.patience)
        return qv_fail(err, "%s: stop: set at least one of stop.generations, stop.seconds, "
                       "stop.patience", origin);
    if (c->islands.mode == MODE_ASYNC && c->stop.patience)
        return qv_fail(err, "%s: stop.patience: needs islands.mode \"sync\" (asynchronous "
                       "islands validate only at the end)", origin);
    if (c->islands.mode == MODE_ASYNC &&
        (c->checkpoint.every_generations || c->checkpoint.every_seconds))
        return qv_fail(err, "%s: checkpoint: periodic checkpoints need islands.mode \"sync\" "
                       "(asynchronous islands checkpoint on SIGTERM/SIGUSR2 and at the end)",
                       origin);
    if (!c->output.dir[0])
        return qv_fail(err, "%s: output.dir: expected a folder name, found \"\"", origin);
    return 0;
}

static int resolve(json_t *root, const char *origin, config *c, qv_err *err)
{
    memset(c, 0, sizeof *c);
    if (!json_is_object(root))
        return qv_fail(err, "%s: expected a JSON object at the top level", origin);
    if (check_unknown(root, "", origin, err))
        return -1;
    for (int i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        json_t *v = get_path(root, f->key), *dflt = NULL;
        if (!v || json_is_null(v)) {
            if (!f->dflt)
                return qv_fail(err, "%s: %s: required (%s)", origin, f->key, f->doc);
            dflt = json_loads(f->dflt, JSON_DECODE_ANY, NULL);
            QV_ASSERT(dflt);
            v = dflt;
        }
        int rc = set_field(c, f, v, origin, err);
        json_decref(dflt);
        if (rc)
            return -1;
    }
    return check_combinations(c, origin, err);
}

/* Sets a dotted key to a value given on the command line. */
static int apply_override(json_t *root, const char *text, qv_err *err)
{
    const char *eq = strchr(text, '=');
    if (!eq || eq == text)
        return qv_fail(err, "--set %s: expected KEY=VALUE", text);
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - text), text);
    if (!find_field(key)) {
        char known[1024];
        known_under("", known, sizeof known);
        return qv_fail(err, "--set %s: unknown key '%s' (sections and keys: %s)", text, key,
                       known);
    }
    json_t *value = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
    if (!value)
        value = json_string(eq + 1); /* a bare word is a string */
    json_t *obj = root;
    char *save, *part = strtok_r(key, ".", &save);
    for (char *next = strtok_r(NULL, ".", &save); next; part = next, next = strtok_r(NULL, ".", &save)) {
        json_t *child = json_object_get(obj, part);
        if (!json_is_object(child)) {
            child = json_object();
            json_object_set_new(obj, part, child);
        }
        obj = child;
    }
    json_object_set_new(obj, part, value);
    return 0;
}

int config_load(const char *path, const char *const *overrides, int noverrides, config *c,
                qv_err *err)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line < 0 || strstr(je.text, "unable to open"))
            return qv_fail(err, "%s: cannot read: %s", path, je.text);
        return qv_fail(err, "%s: invalid JSON at line %d column %d: %s", path, je.line,
                       je.column, je.text);
    }
    int rc = 0;
    for (int i = 0; i < noverrides && rc == 0; i++)
        rc = json_is_object(root) ? apply_override(root, overrides[i], err)
                                  : qv_fail(err, "%s: expected a JSON object at the top level", path);
    if (rc == 0)
        rc = resolve(root, path, c, err);
    json_decref(root);
    if (rc)
        config_free(c);
    return rc;
}

int config_parse(const char *json_text, const char *origin, config *c, qv_err *err)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return qv_fail(err, "%s: invalid JSON at line %d column %d: %s", origin, je.line,
                       je.column, je.text);
    int rc = resolve(root, origin, c, err);
    json_decref(root);
    if (rc)
        config_free(c);
    return rc;
}

static json_t *field_json(const config *c, const field *f)
{
    switch (f->type) {
    case T_INT:
        return json_integer(*(const int *)cmember(c, f));
    case T_NUM:
        return json_real(*(const double *)cmember(c, f));
    case T_BOOL:
        return json_boolean(*(const bool *)cmember(c, f));
    case T_STR:
        return json_string(*(char *const *)cmember(c, f));
    case T_ENUM:
        return json_string(f->names[*(const int *)cmember(c, f)]);
    case T_SEED:
        return json_integer((json_int_t)c->seed);
    case T_LAYERS:
        if (c->evolution.layers != LAYERS_LIST) {
            static const char *const names[] = {"proportional", "uniform", "adaptive"};
            return json_string(names[c->evolution.layers]);
        }
        json_t *a = json_array();
        for (int i = 0; i < c->evolution.layer_count; i++)
            json_array_append_new(a, json_string(c->evolution.layer_list[i]));
        return a;
    }
    QV_ASSERT(0);
}

char *config_to_json(const config *c)
{
    json_t *root = json_object();
    for (int i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        char key[256];
        snprintf(key, sizeof key, "%s", f->key);
        json_t *obj = root;
        char *save, *part = strtok_r(key, ".", &save);
        for (char *next = strtok_r(NULL, ".", &save); next;
             part = next, next = strtok_r(NULL, ".", &save)) {
            json_t *child = json_object_get(obj, part);
            if (!child) {
                child = json_object();
                json_object_set_new(obj, part, child);
            }
            obj = child;
        }
        json_object_set_new(obj, part, field_json(c, f));
    }
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(root);
    QV_ASSERT(s);
    char *copy = qv_strdup(s);
    free(s);
    return copy;
}

void config_free(config *c)
{
    for (int i = 0; i < NFIELDS; i++)
        if (fields[i].type == T_STR)
            free(*(char **)member(c, &fields[i]));
    for (int i = 0; i < c->evolution.layer_count; i++)
        free(c->evolution.layer_list[i]);
    free(c->evolution.layer_list);
    memset(c, 0, sizeof *c);
}

void config_print_keys(FILE *out)
{
    for (int i = 0; i < NFIELDS; i++)
        fprintf(out, "- `%s` (default `%s`): %s\n", fields[i].key,
                fields[i].dflt ? fields[i].dflt : "required", fields[i].doc);
}
