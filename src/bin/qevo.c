/* qevo: single-process tools around the engine: eval, quantize, inspect. */
#include <cblas.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/data.h"
#include "qevo/fitness.h"
#include "qevo/net.h"
#include "qevo/quant.h"
#include "qevo/report.h"
#include "qevo/util.h"

static const char usage[] =
    "usage: qevo <command> [options]\n"
    "\n"
    "commands:\n"
    "  eval MODEL --data DATASET [quantizer options] [--batch N] [--limit N]\n"
    "             [--threads N] [--dump-outputs FILE.npy] [--json]\n"
    "      Scores MODEL on DATASET: accuracy and cross-entropy for a classifier, MSE and\n"
    "      PSNR for an autoencoder, and the forward throughput in images/s.\n"
    "  quantize MODEL --out FILE [quantizer options]\n"
    "      Quantizes MODEL by nearest rounding and writes a quantized model file.\n"
    "  inspect MODEL\n"
    "      Prints the executed graph (after batch-norm folding and activation fusion),\n"
    "      output shapes, parameter and FLOP counts.\n"
    "\n"
    "quantizer options (without --bits, eval runs the weights as stored in MODEL):\n"
    "  --bits B           bits per weight, 2..8\n"
    "  --per-channel      one scale per output channel (default)\n"
    "  --per-tensor       one scale per layer\n"
    "  --first-bits B     bits of the first conv/linear layer (e.g. 8)\n"
    "  --last-bits B      bits of the last conv/linear layer (e.g. 8)\n"
    "  --grid G           symmetric (default: codes in [-qmax, qmax]) or asymmetric (all\n"
    "                     2^B states, a zero point per channel)\n"
    "  --scales S         max (default: the scale covers max|W|) or mse (the clipping\n"
    "                     ratio with the smallest weight error)\n"
    "\n"
    "DATASET: fashion-mnist:test, fashion-mnist:train, an IDX images file, IMAGES,LABELS,\n"
    "cifar10:DIR:train|test, CIFAR-10 .bin files, or a folder of PNGs (one subfolder per\n"
    "class).\n";

typedef struct {
    const char *model, *data, *out, *dump;
    quant_settings q;
    bool quantize, json;
    int batch, limit, threads;
} options;

static int fail_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "qevo: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(qevo --help for usage)\n");
    return 1;
}

static bool parse_int(const char *s, int lo, int hi, int *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < lo || x > hi)
        return false;
    *v = (int)x;
    return true;
}

/* Parses argv[2..]; returns 0, or 1 after printing the problem. */
static int parse_options(int argc, char **argv, options *o)
{
    *o = (options){.q = {.bits = 8, .granularity = QUANT_PER_CHANNEL}, .batch = 256};
    static const struct {
        const char *flag;
        int lo, hi;
        size_t field;
    } ints[] = {
        {"--bits", 2, 8, offsetof(options, q.bits)},
        {"--first-bits", 2, 8, offsetof(options, q.first_bits)},
        {"--last-bits", 2, 8, offsetof(options, q.last_bits)},
        {"--batch", 1, 65536, offsetof(options, batch)},
        {"--limit", 1, 1 << 30, offsetof(options, limit)},
        {"--threads", 1, 1024, offsetof(options, threads)},
    };
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        bool done = false;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !done; k++) {
            if (strcmp(a, ints[k].flag))
                continue;
            if (i + 1 >= argc)
                return fail_usage("%s needs a value", a);
            int *field = (int *)((char *)o + ints[k].field);
            if (!parse_int(argv[++i], ints[k].lo, ints[k].hi, field)) {
                fprintf(stderr, "qevo: %s must be an integer in [%d, %d], found '%s'\n", a,
                        ints[k].lo, ints[k].hi, argv[i]);
                return 1;
            }
            o->quantize |= strstr(a, "bits") != NULL;
            done = true;
        }
        if (done)
            continue;
        if (!strcmp(a, "--per-channel") || !strcmp(a, "--per-tensor")) {
            o->q.granularity = a[6] == 'c' ? QUANT_PER_CHANNEL : QUANT_PER_TENSOR;
        } else if (!strcmp(a, "--grid") || !strcmp(a, "--scales")) {
            bool grid = a[2] == 'g';
            if (i + 1 >= argc)
                return fail_usage("%s needs a value", a);
            const char *v = argv[++i];
            if (grid && (!strcmp(v, "symmetric") || !strcmp(v, "asymmetric")))
                o->q.grid = v[0] == 'a' ? QUANT_ASYMMETRIC : QUANT_SYMMETRIC;
            else if (!grid && (!strcmp(v, "max") || !strcmp(v, "mse")))
                o->q.scales = v[1] == 's' ? QUANT_SCALE_MSE : QUANT_SCALE_MAX;
            else
                return fail_usage(grid ? "--grid must be symmetric or asymmetric, found '%s'"
                                       : "--scales must be max or mse, found '%s'", v);
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--data") || !strcmp(a, "--out") || !strcmp(a, "--dump-outputs")) {
            if (i + 1 >= argc)
                return fail_usage("%s needs a value", a);
            const char **field = a[2] == 'd' && a[3] == 'a' ? &o->data
                                 : a[2] == 'o'               ? &o->out
                                                             : &o->dump;
            *field = argv[++i];
        } else if (a[0] == '-') {
            return fail_usage("unknown option '%s'", a);
        } else if (!o->model) {
            o->model = a;
        } else {
            return fail_usage("unexpected argument '%s'", a);
        }
    }
    if (!o->model)
        return fail_usage("%s", "missing MODEL");
    if (o->threads)
        openblas_set_num_threads(o->threads);
    return 0;
}

static void print_settings(const quant_settings *s)
{
    printf("%d bits %s, %s grid, %s scales", s->bits, quant_granularity_name(s->granularity),
           quant_grid_name(s->grid), quant_scale_search_name(s->scales));
    if (s->first_bits)
        printf(", first layer %d bits", s->first_bits);
    if (s->last_bits)
        printf(", last layer %d bits", s->last_bits);
}

static int cmd_eval(const options *o)
{
    if (!o->data)
        return fail_usage("%s", "eval needs --data DATASET");
    qv_err err;
    net *nt = NULL;
    data_set *ds = NULL;
    if (net_load(o->model, &nt, &err) || data_load(o->data, &ds, &err)) {
        fprintf(stderr, "qevo: %s\n", err.msg);
        net_free(nt);
        return 1;
    }
    op_dims in = net_input_dims(nt);
    if (ds->c != in.c || ds->h != in.h || ds->w != in.w) {
        fprintf(stderr, "qevo: %s has images of (%d, %d, %d), but %s expects (%d, %d, %d)\n",
                o->data, ds->c, ds->h, ds->w, o->model, in.c, in.h, in.w);
        net_free(nt);
        data_free(ds);
        return 1;
    }
    op_dims od = net_output_dims(nt);
    if (net_get_task(nt) == NET_CLASSIFY && ds->classes > od.c) {
        fprintf(stderr, "qevo: %s has labels up to %d, but %s has only %d outputs\n", o->data,
                ds->classes - 1, o->model, od.c);
        net_free(nt);
        data_free(ds);
        return 1;
    }
    if (o->quantize) {
        quant *q = quant_create(nt, &o->q);
        int8_t *codes = qv_malloc(quant_size(q) ? quant_size(q) : 1);
        quant_nearest(q, codes);
        quant_apply(q, nt, codes);
        free(codes);
        quant_free(q);
    }
    int count = o->limit && o->limit < ds->n ? o->limit : ds->n;
    int *idx = qv_malloc(sizeof(int) * (size_t)count);
    for (int i = 0; i < count; i++)
        idx[i] = i;
    size_t out_per = (size_t)od.c * od.h * od.w;
    float *outputs = o->dump ? qv_malloc_aligned(sizeof(float) * out_per * (size_t)count) : NULL;
    net_acts *acts = net_acts_create(nt, o->batch < count ? o->batch : count);
    fit_totals t = {0};
    double t0 = qv_now();
    fit_evaluate(nt, acts, ds, idx, count, &t, outputs);
    double secs = qv_now() - t0;
    int rc = 0;
    if (o->dump && report_write_npy(o->dump, outputs, (size_t)count, out_per, &err)) {
        fprintf(stderr, "qevo: %s\n", err.msg);
        rc = 1;
    }
    bool classify = net_get_task(nt) == NET_CLASSIFY;
    double ips = count / secs;
    if (o->json) {
        printf("{\"model\": \"%s\", \"data\": \"%s\", \"images\": %d, \"bits\": %d, "
               "\"granularity\": \"%s\", \"grid\": \"%s\", \"scales\": \"%s\", "
               "\"first_bits\": %d, \"last_bits\": %d, ",
               o->model, o->data, count, o->quantize ? o->q.bits : 0,
               o->quantize ? quant_granularity_name(o->q.granularity) : "none",
               o->quantize ? quant_grid_name(o->q.grid) : "none",
               o->quantize ? quant_scale_search_name(o->q.scales) : "none",
               o->q.first_bits, o->q.last_bits);
        if (classify)
            printf("\"accuracy\": %.6f, \"correct\": %.0f, \"cross_entropy\": %.6f, ",
                   fit_accuracy(&t), t.correct, fit_mean_ce(&t));
        else
            printf("\"mse\": %.8f, \"psnr\": %.4f, ", fit_mse(&t), fit_psnr(&t));
        printf("\"images_per_s\": %.1f}\n", ips);
    } else {
        printf("model      %s\n", o->model);
        printf("data       %s (%d images)\n", o->data, count);
        printf("weights    ");
        if (o->quantize)
            print_settings(&o->q), printf(", nearest rounding\n");
        else
            printf("as stored in the model file\n");
        if (classify)
            printf("accuracy   %.4f (%.0f / %d)   cross-entropy %.4f\n", fit_accuracy(&t),
                   t.correct, count, fit_mean_ce(&t));
        else
            printf("mse        %.6f   psnr %.2f dB\n", fit_mse(&t), fit_psnr(&t));
        printf("speed      %.0f images/s (batch %d, %.2f s)\n", ips, net_acts_batch(acts),
               secs);
    }
    free(idx);
    qv_free_aligned(outputs);
    net_acts_free(acts);
    net_free(nt);
    data_free(ds);
    return rc;
}

static int cmd_quantize(const options *o)
{
    if (!o->out)
        return fail_usage("%s", "quantize needs --out FILE");
    qv_err err;
    net *nt;
    if (net_load(o->model, &nt, &err)) {
        fprintf(stderr, "qevo: %s\n", err.msg);
        return 1;
    }
    quant *q = quant_create(nt, &o->q);
    int8_t *codes = qv_malloc(quant_size(q) ? quant_size(q) : 1);
    quant_nearest(q, codes);
    char desc[2048];
    snprintf(desc, sizeof desc, "nearest rounding of %s", o->model);
    int rc = quant_save(q, nt, codes, o->out, desc, &err);
    if (rc)
        fprintf(stderr, "qevo: %s\n", err.msg);
    else {
        printf("wrote %s (", o->out);
        print_settings(&o->q);
        printf(", %zu weights)\n", quant_size(q));
    }
    free(codes);
    quant_free(q);
    net_free(nt);
    return rc ? 1 : 0;
}

static void format_dims(char *buf, size_t n, op_dims d)
{
    if (d.h == 1 && d.w == 1)
        snprintf(buf, n, "(%d)", d.c);
    else
        snprintf(buf, n, "(%d, %d, %d)", d.c, d.h, d.w);
}

/* "+bn +add +relu": the layers folded or fused into a node. */
static void fused_names(const net_node *nd, char *buf, size_t n)
{
    const char *names[3] = {nd->bn_name, nd->add_name, nd->act_name};
    buf[0] = '\0';
    for (int k = 0; k < 3; k++)
        if (names[k])
            snprintf(buf + strlen(buf), n - strlen(buf), "%s+%s", buf[0] ? " " : "", names[k]);
}

static int cmd_inspect(const options *o)
{
    qv_err err;
    net *nt;
    if (net_load(o->model, &nt, &err)) {
        fprintf(stderr, "qevo: %s\n", err.msg);
        return 1;
    }
    op_dims in = net_input_dims(nt);
    char buf[64];
    format_dims(buf, sizeof buf, in);
    printf("model   %s\n", o->model);
    if (net_description(nt)[0])
        printf("about   %s\n", net_description(nt));
    printf("task    %s, input %s, mean/std", net_get_task(nt) == NET_CLASSIFY ? "classify"
                                                                               : "reconstruct",
           buf);
    for (int c = 0; c < in.c; c++)
        printf(" %.4g/%.4g", net_mean(nt)[c], net_std(nt)[c]);
    char fused[256];
    int width = 12; /* of the folded/fused column */
    for (int i = 0; i < net_node_count(nt); i++) {
        fused_names(net_node_at(nt, i), fused, sizeof fused);
        width = (int)strlen(fused) > width ? (int)strlen(fused) : width;
    }
    printf("\n\n%3s  %-22s %-16s %-*s %-15s %10s %10s\n", "#", "node", "op", width,
           "folded/fused", "output", "weights", "MFLOP");
    for (int i = 0; i < net_node_count(nt); i++) {
        const net_node *nd = net_node_at(nt, i);
        fused_names(nd, fused, sizeof fused);
        format_dims(buf, sizeof buf, nd->out);
        printf("%3d  %-22s %-16s %-*s %-15s %10zu %10.3f\n", i, nd->name, net_op_name(nd->op),
               width, fused, buf, nd->wcount, nd->flops / 1e6);
    }
    printf("\n%zu weights (quantizable), %zu biases, %.2f MFLOP per image\n",
           net_weight_count(nt), net_bias_count(nt), net_flops(nt) / 1e6);
    net_free(nt);
    return 0;
}

int main(int argc, char **argv)
{
    op_blas_select_kernels(argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "eval") && strcmp(cmd, "quantize") && strcmp(cmd, "inspect"))
        return fail_usage("unknown command '%s'", cmd);
    options o;
    if (parse_options(argc, argv, &o))
        return 1;
    if (!strcmp(cmd, "eval"))
        return cmd_eval(&o);
    if (!strcmp(cmd, "quantize"))
        return cmd_quantize(&o);
    return cmd_inspect(&o);
}
