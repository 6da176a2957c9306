/* Forward throughput of qevo's engine on model files, and this machine's sgemm peak with
 * the same thread count. Prints one JSON object per line (bench/run.sh puts them beside
 * PyTorch's numbers).
 *
 *   bench_forward [--batch N] [--seconds S] MODEL...                                  */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qevo/net.h"
#include "qevo/rng.h"
#include "qevo/util.h"

/* Process CPU seconds: on a loaded machine they are steadier than wall-clock seconds. */
static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    double wall, cpu; /* seconds per call */
} timing;

/* Runs fn until `seconds` have passed (at least 3 times): wall and CPU seconds per call. */
static timing time_calls(void (*fn)(void *), void *arg, double seconds)
{
    fn(arg); /* warm-up: page faults, OpenBLAS buffers */
    int calls = 0;
    double t0 = qv_now(), c0 = cpu_now(), t;
    do {
        fn(arg);
        calls++;
        t = qv_now() - t0;
    } while (t < seconds || calls < 3);
    return (timing){t / calls, (cpu_now() - c0) / calls};
}

typedef struct {
    int n;
    float *a, *b, *c;
} gemm_job;

static void run_gemm(void *p)
{
    gemm_job *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->n, g->n, g->n, 1.0f, g->a, g->n,
                g->b, g->n, 0.0f, g->c, g->n);
}

typedef struct {
    net *nt;
    net_acts *acts;
    float *x;
    int batch;
} forward_job;

static void run_forward(void *p)
{
    forward_job *f = p;
    net_forward(f->nt, f->acts, f->x, f->batch);
}

int main(int argc, char **argv)
{
    op_blas_select_kernels(argv);
    int batch = 256;
    double seconds = 3.0;
    int first = 1;
    for (; first < argc && argv[first][0] == '-'; first += 2) {
        if (first + 1 >= argc)
            break;
        if (!strcmp(argv[first], "--batch"))
            batch = atoi(argv[first + 1]);
        else if (!strcmp(argv[first], "--seconds"))
            seconds = atof(argv[first + 1]);
    }
    if (first >= argc || batch < 1 || seconds <= 0) {
        fprintf(stderr, "usage: bench_forward [--batch N] [--seconds S] MODEL...\n");
        return 1;
    }
    gemm_job g = {1024, NULL, NULL, NULL};
    size_t nn = (size_t)g.n * g.n;
    g.a = qv_malloc_aligned(sizeof(float) * nn);
    g.b = qv_malloc_aligned(sizeof(float) * nn);
    g.c = qv_malloc_aligned(sizeof(float) * nn);
    for (size_t i = 0; i < nn; i++)
        g.a[i] = g.b[i] = (float)(i % 7) * 0.1f;
    double gemm_s = time_calls(run_gemm, &g, seconds).wall;
    double peak = 2.0 * g.n * g.n * g.n / gemm_s / 1e9;
    printf("{\"what\": \"sgemm\", \"n\": %d, \"threads\": %d, \"core\": \"%s\", "
           "\"gflops\": %.2f}\n", g.n, openblas_get_num_threads(), openblas_get_corename(), peak);
    qv_free_aligned(g.a), qv_free_aligned(g.b), qv_free_aligned(g.c);

    for (int i = first; i < argc; i++) {
        forward_job f = {.batch = batch};
        qv_err err;
        if (net_load(argv[i], &f.nt, &err)) {
            fprintf(stderr, "bench_forward: %s\n", err.msg);
            return 1;
        }
        op_dims in = net_input_dims(f.nt);
        size_t n = (size_t)batch * in.c * in.h * in.w;
        f.x = qv_malloc_aligned(sizeof(float) * n);
        rng r = rng_stream(1, 0, 0, RNG_TEST);
        for (size_t k = 0; k < n; k++)
            f.x[k] = (float)rng_normal(&r);
        f.acts = net_acts_create(f.nt, batch);
        timing t = time_calls(run_forward, &f, seconds);
        double gflops = net_flops(f.nt) * batch / t.wall / 1e9;
        printf("{\"what\": \"qevo\", \"model\": \"%s\", \"batch\": %d, \"images_per_s\": %.1f, "
               "\"images_per_cpu_s\": %.1f, \"gflops\": %.2f, \"peak_fraction\": %.3f, "
               "\"mflop_per_image\": %.3f}\n", argv[i], batch, batch / t.wall, batch / t.cpu,
               gflops, gflops / peak, net_flops(f.nt) / 1e6);
        fflush(stdout);
        net_acts_free(f.acts);
        qv_free_aligned(f.x);
        net_free(f.nt);
    }
    return 0;
}
