/* config: the qevo-island configuration. One JSON file, a table-driven schema with
 * defaults, validation whose every error names the JSON path and what was expected,
 * command-line overrides of single keys (--set evolution.rate=0.001), and the resolved
 * configuration (defaults filled in) as JSON. */
#ifndef QEVO_CONFIG_H
#define QEVO_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "qevo/util.h"

typedef enum { FIT_KL, FIT_CROSS_ENTROPY, FIT_ACCURACY, FIT_MSE, FIT_PSNR } fit_kind;
typedef enum { SEL_PLUS, SEL_COMMA } sel_kind;
typedef enum { STEP_FLIP, STEP_PM1, STEP_RANDOM } step_kind;
typedef enum { LAYERS_PROPORTIONAL, LAYERS_UNIFORM, LAYERS_ADAPTIVE, LAYERS_LIST } layer_choice;
typedef enum { SPREAD_ONE_LAYER, SPREAD_ALL_LAYERS } spread_kind;
typedef enum { TOPO_RING, TOPO_TORUS, TOPO_FULL, TOPO_RANDOM } topology_kind;
typedef enum { MIGRATE_REPLACE_WORST_IF_BETTER, MIGRATE_REPLACE_WORST } migrate_policy;
typedef enum { MODE_SYNC, MODE_ASYNC } migrate_mode;

typedef struct {
    char *model;         /* float model file */
    char *start;         /* quantized model whose codes start the search; "" = nearest */
    struct {
        int bits;
        int granularity; /* quant_granularity */
        int grid;        /* quant_grid */
        int scales;      /* quant_scale_search */
        int first_bits, last_bits;
    } quantizer;
    struct {
        int sweeps;           /* layer-wise reconstruction of the start state; 0 = off */
    } reconstruction;
    struct {
        char *train;          /* dataset the fitness and validation splits come from */
        char *test;           /* held-out test split: scored once, at the end */
        int test_size;        /* first images of the test split to score; 0 = all */
        int fitness_size;     /* images shared out among the islands */
        int validation_size;  /* images, disjoint from every shard */
        int fitness_batch;    /* images per fitness evaluation (0 = the whole shard) */
        int redraw_every;     /* generations between redraws of the batch (0 = never) */
        int confirmation_batch; /* images on which a paired win must be confirmed (0 = off) */
        int eval_batch;       /* images per forward pass */
    } data;
    struct {
        fit_kind kind;
        double temperature;   /* of the KL to the float model */
        double features;      /* weight of the feature term of the island fitness; 0 = off */
    } fitness;
    struct {
        int population;       /* mu */
        int offspring;        /* lambda */
        sel_kind selection;
        int tournament;
        double crossover;     /* probability that an offspring is a crossover child */
        double rate;          /* share of weights moved per mutation */
        int min_weights;      /* at least this many weights per mutation */
        step_kind step;
        int max_shift;        /* codes stay within this many states of nearest */
        double boundary_bias; /* 0 = uniform choice of weights, 1 = by closeness to a rounding boundary */
        layer_choice layers;
        char **layer_list;    /* names, when layers == LAYERS_LIST */
        int layer_count;
        spread_kind spread;
        bool one_fifth;       /* adapt the rate by the 1/5 success rule */
        double significance;  /* paired t an offspring must reach over its parent; 0 = off */
        double cache_mb;      /* memory bound for cached parent activations per island */
    } evolution;
    struct {
        topology_kind topology;
        int degree;           /* random regular topology */
        int interval;         /* generations between migrations (0 = never) */
        int migrants;
        migrate_policy policy;
        migrate_mode mode;
    } islands;
    struct {
        int generations;      /* 0 = no limit */
        double seconds;       /* wall time; 0 = no limit */
        int patience;         /* reports without validation improvement; 0 = never */
    } stop;
    struct {
        int every_generations; /* 0 = not by generations */
        double every_seconds;  /* 0 = not by time */
        int keep;              /* newest checkpoints kept */
    } checkpoint;
    struct {
        int interval;         /* generations between reports (validation, progress) */
        int grid_images;      /* autoencoder PNG grid: test images shown */
    } report;
    struct {
        char *dir;
    } output;
    uint64_t seed;
} config;

/* Reads `path`, applies overrides ("a.b=value", value as JSON or else a bare string),
 * fills defaults and validates. Returns 0 and fills *c, or -1 with a message such as
 * "cfg.json: evolution.rate: expected a number in (0, 1], found 2". */
int config_load(const char *path, const char *const *overrides, int noverrides, config *c,
                qv_err *err);
/* Parses a resolved configuration given as JSON text (as config_to_json writes it). */
int config_parse(const char *json_text, const char *origin, config *c, qv_err *err);
/* The resolved configuration as pretty JSON text (malloc'd). */
char *config_to_json(const config *c);
void config_free(config *c);

/* The names used in the config file for enum values. */
const char *config_fit_name(fit_kind k);
const char *config_topology_name(topology_kind t);

/* Markdown list of every key with its type, default and meaning (README / --help). */
void config_print_keys(FILE *out);

#endif
