#include "qevo/fitness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/util.h"

_Static_assert(sizeof(fit_totals) == FIT_TOTALS_FIELDS * sizeof(double),
               "fit_totals must be plain doubles");

void fit_add(fit_totals *acc, const fit_totals *t)
{
    double *a = (double *)acc;
    const double *b = (const double *)t;
    for (int i = 0; i < FIT_TOTALS_FIELDS; i++)
        a[i] += b[i];
}

/* log(sum(exp(z / T))) of one row, in double. */
static double log_sum_exp(const float *z, int classes, double temperature)
{
    double m = z[0] / temperature;
    for (int c = 1; c < classes; c++)
        m = z[c] / temperature > m ? z[c] / temperature : m;
    double s = 0.0;
    for (int c = 0; c < classes; c++)
        s += exp(z[c] / temperature - m);
    return m + log(s);
}

void fit_log_softmax(const float *logits, int n, int classes, double temperature, float *logp)
{
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        double lse = log_sum_exp(z, classes, temperature);
        for (int c = 0; c < classes; c++)
            logp[(size_t)i * classes + c] = (float)(z[c] / temperature - lse);
    }
}

void fit_classify(const float *logits, int n, int classes, const int32_t *labels,
                  const float *teacher_logp, double temperature, fit_totals *t)
{
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        int arg = 0;
        for (int c = 1; c < classes; c++)
            arg = z[c] > z[arg] ? c : arg;
        double lse = log_sum_exp(z, classes, 1.0);
        if (labels) {
            t->correct += arg == labels[i];
            t->ce += lse - (double)z[labels[i]];
        }
        if (teacher_logp) {
            const float *tp = teacher_logp + (size_t)i * classes;
            double lse_t = temperature == 1.0 ? lse : log_sum_exp(z, classes, temperature);
            double kl = 0.0;
            for (int c = 0; c < classes; c++)
                kl += exp((double)tp[c]) * ((double)tp[c] - (z[c] / temperature - lse_t));
            t->kl += kl * temperature * temperature;
        }
    }
    t->images += n;
}

void fit_reconstruct(const float *out, const float *target, size_t count, int n,
                     fit_totals *t)
{
    double s = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = (double)out[i] - (double)target[i];
        s += d * d;
    }
    t->sq_err += s;
    t->values += (double)count;
    t->images += n;
}

double fit_accuracy(const fit_totals *t) { return t->images ? t->correct / t->images : 0.0; }
double fit_mean_ce(const fit_totals *t) { return t->images ? t->ce / t->images : 0.0; }
double fit_mean_kl(const fit_totals *t) { return t->images ? t->kl / t->images : 0.0; }
double fit_mse(const fit_totals *t) { return t->values ? t->sq_err / t->values : 0.0; }

double fit_psnr(const fit_totals *t)
{
    double mse = fit_mse(t);
    return mse > 0.0 ? 10.0 * log10(1.0 / mse) : INFINITY;
}

void fit_evaluate(const net *nt, net_acts *acts, const data_set *ds, const int *idx,
                  int count, fit_totals *t, float *outputs)
{
    op_dims in = net_input_dims(nt), od = net_output_dims(nt);
    size_t in_per = (size_t)in.c * in.h * in.w, out_per = (size_t)od.c * od.h * od.w;
    int batch = net_acts_batch(acts);
    float *x = qv_malloc_aligned(sizeof(float) * in_per * (size_t)batch);
    float *y = qv_malloc_aligned(sizeof(float) * out_per * (size_t)batch);
    float *target = NULL;
    int32_t *labels = qv_malloc(sizeof(int32_t) * (size_t)batch);
    float zero[64], one[64];
    if (net_get_task(nt) == NET_RECONSTRUCT) {
        target = qv_malloc_aligned(sizeof(float) * in_per * (size_t)batch);
        QV_ASSERT(in.c <= 64);
        for (int c = 0; c < in.c; c++)
            zero[c] = 0.0f, one[c] = 1.0f;
    }
    for (int b0 = 0; b0 < count; b0 += batch) {
        int n = count - b0 < batch ? count - b0 : batch;
        data_normalize(ds, idx + b0, n, net_mean(nt), net_std(nt), x);
        net_forward(nt, acts, x, n);
        net_output(nt, acts, n, y);
        if (net_get_task(nt) == NET_CLASSIFY) {
            for (int i = 0; i < n; i++)
                labels[i] = ds->labels[idx[b0 + i]];
            fit_classify(y, n, (int)out_per, labels, NULL, 1.0, t);
        } else {
            data_normalize(ds, idx + b0, n, zero, one, target);
            fit_reconstruct(y, target, out_per * (size_t)n, n, t);
        }
        if (outputs)
            memcpy(outputs + (size_t)b0 * out_per, y, sizeof(float) * out_per * (size_t)n);
    }
    qv_free_aligned(x);
    qv_free_aligned(y);
    qv_free_aligned(target);
    free(labels);
}
