/* MPI behaviour of the island module, run under mpirun -n 1, 2, 4: topologies give the
 * intended neighbours; states cross intact (neighbourhood exchange and allgather);
 * a migrant is scored on the receiver's own batch; error agreement names the failing
 * rank; sums are exact. Counts are reduced to rank 0, which prints the result line. */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_builder.h"
#include "qevo/evo.h"
#include "qevo/island.h"
#include "test.h"

static int rank, nranks;

static bool contains(const int *v, int n, int x)
{
    for (int i = 0; i < n; i++)
        if (v[i] == x)
            return true;
    return false;
}

static void test_topologies(void)
{
    int out[64], other[64];
    qv_err err;
    for (int n = 1; n <= 9; n++)
        for (int kind = TOPO_RING; kind <= TOPO_RANDOM; kind++) {
            int degree = 3;
            bool feasible = kind != TOPO_RANDOM || n % 2 == 0 || n <= degree + 1 || degree % 2 == 0;
            for (int r = 0; r < n; r++) {
                int k = island_topology_neighbours((topology_kind)kind, degree, 7, n, r, out, &err);
                if (!feasible) {
                    CHECKF(k < 0 && strstr(err.msg, "islands.degree"), "n %d random: %s", n,
                           err.msg);
                    continue;
                }
                CHECKF(k >= 0, "kind %d n %d: %s", kind, n, err.msg);
                for (int i = 0; i < k; i++) {
                    CHECK(out[i] != r && out[i] >= 0 && out[i] < n);
                    CHECK(i == 0 || out[i] > out[i - 1]);
                    int m = island_topology_neighbours((topology_kind)kind, degree, 7, n, out[i],
                                                       other, &err);
                    CHECKF(contains(other, m, r), "kind %d n %d: %d -> %d not symmetric", kind,
                           n, r, out[i]);
                }
                int want = kind == TOPO_RING   ? (n > 2 ? 2 : n - 1)
                           : kind == TOPO_FULL ? n - 1
                           : kind == TOPO_RANDOM ? (degree < n - 1 ? degree : n - 1)
                                                 : -1;
                if (want >= 0)
                    CHECKF(k == want, "kind %d n %d rank %d: %d neighbours, want %d", kind, n, r,
                           k, want);
                if (kind == TOPO_RING && n > 2)
                    CHECK(contains(out, k, (r + 1) % n) && contains(out, k, (r + n - 1) % n));
            }
        }
    /* The 2-D torus of 4 islands is 2 x 2: island 0 neighbours 1 and 2; of 8, 4 x 2. */
    int k = island_topology_neighbours(TOPO_TORUS, 0, 0, 4, 0, out, &err);
    CHECK(k == 2 && out[0] == 1 && out[1] == 2);
    k = island_topology_neighbours(TOPO_TORUS, 0, 0, 8, 0, out, &err);
    CHECK(k == 3 && out[0] == 1 && out[1] == 2 && out[2] == 6);
    /* The MPI graph communicator has the same neighbours. */
    for (int kind = TOPO_RING; kind <= TOPO_FULL; kind++) {
        island_topology *t = island_topology_create((topology_kind)kind, 3, 7, &err);
        const int *list;
        int m = island_neighbours(t, &list);
        k = island_topology_neighbours((topology_kind)kind, 3, 7, nranks, rank, out, &err);
        CHECK(m == k && memcmp(list, out, sizeof(int) * (size_t)k) == 0);
        island_topology_free(t);
    }
}

/* State j of rank r: j + 1 changes (r * 1000 + 10 j + i, code r - j). */
static void make_states(int r, evo_change **ch, size_t *n)
{
    for (int j = 0; j < 2; j++) {
        n[j] = (size_t)j + 1;
        ch[j] = qv_malloc(sizeof(evo_change) * n[j]);
        for (size_t i = 0; i < n[j]; i++)
            ch[j][i] = (evo_change){(uint32_t)(r * 1000 + 10 * j + (int)i), (int8_t)(r - j)};
    }
}

static bool same_states(const island_states *s, int at, int r)
{
    evo_change *ch[2];
    size_t n[2];
    make_states(r, ch, n);
    bool ok = true;
    for (int j = 0; j < 2; j++) {
        ok &= s->source[at + j] == r && s->nchanges[at + j] == n[j];
        for (size_t i = 0; ok && i < n[j]; i++) /* field by field: structs have padding */
            ok &= s->changes[at + j][i].idx == ch[j][i].idx &&
                  s->changes[at + j][i].code == ch[j][i].code;
        free(ch[j]);
    }
    return ok;
}

static void test_exchange(void)
{
    evo_change *ch[2];
    size_t n[2];
    make_states(rank, ch, n);
    qv_err err;
    island_topology *t = island_topology_create(TOPO_RING, 0, 0, &err);
    const int *nb;
    int k = island_neighbours(t, &nb);
    island_states got;
    island_exchange(t, ch, n, 2, &got);
    CHECK(got.count == 2 * k);
    for (int i = 0; i < k; i++)
        CHECKF(same_states(&got, 2 * i, nb[i]), "states from %d arrived changed", nb[i]);
    island_states_free(&got);
    island_allgather_states(ch, n, 2, &got);
    CHECK(got.count == 2 * nranks);
    for (int r = 0; r < nranks; r++)
        CHECK(same_states(&got, 2 * r, r));
    island_states_free(&got);
    island_topology_free(t);
    free(ch[0]), free(ch[1]);
}

static void test_agree_and_sum(void)
{
    qv_err local, err;
    CHECK(island_agree(0, NULL, &err) == 0);
    snprintf(local.msg, sizeof local.msg, "boom on %d", rank);
    int failing = nranks > 1 ? 1 : 0;
    int rc = island_agree(rank == failing, &local, &err);
    char want[64];
    snprintf(want, sizeof want, nranks > 1 ? "rank 1: boom on 1" : "boom on 0");
    CHECKF(rc == -1 && !strcmp(err.msg, want), "agree: '%s', want '%s'", err.msg, want);
    double v[2] = {1.0, (double)rank};
    island_sum(v, 2);
    CHECK(v[0] == nranks && v[1] == nranks * (nranks - 1) / 2.0);
    char *s = island_bcast_string(rank == 0 ? "from rank 0" : NULL);
    CHECK(!strcmp(s, "from rank 0"));
    free(s);
    CHECK(island_any(rank == nranks - 1) && !island_any(false));
}

/* A migrant is scored on the receiver's batch: each island has its own images. */
static void test_migrant_scoring(const char *path)
{
    net *nt;
    qv_err err;
    QV_ASSERT(net_load(path, &nt, &err) == 0);
    quant_settings qs = {.bits = 3, .granularity = QUANT_PER_CHANNEL};
    quant *q = quant_create(nt, &qs);
    data_set ds = {.n = 16, .c = 1, .h = 6, .w = 6, .classes = 4};
    ds.pixels = qv_malloc(16 * 36);
    ds.labels = qv_malloc(sizeof(int32_t) * 16);
    rng r = rng_stream(5, (uint32_t)rank, 0, RNG_TEST); /* different images per island */
    for (int i = 0; i < 16 * 36; i++)
        ds.pixels[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < 16; i++)
        ds.labels[i] = (int32_t)rng_below(&r, 4);
    int idx[16];
    for (int i = 0; i < 16; i++)
        idx[i] = i;
    evo_images im;
    evo_images_prepare(&im, &ds, idx, 16, nt, q, 16, 1.0);
    config c;
    QV_ASSERT(config_parse("{\"model\": \"m\", \"stop\": {\"generations\": 1}, \"evolution\": "
                           "{\"population\": 2, \"offspring\": 4, \"rate\": 0.05}}", "t", &c,
                           &err) == 0);
    int8_t *start = qv_malloc(quant_size(q));
    quant_nearest(q, start);
    evo_island *is = evo_create(nt, q, start, &c, &im, (uint32_t)rank, &err);
    for (uint32_t g = 1; g <= 3; g++)
        evo_generation(is, g);
    const evo_member *best = evo_member_at(is, 0);
    size_t n = evo_diff(start, best->codes, quant_size(q), NULL);
    evo_change *ch = qv_malloc(sizeof(evo_change) * (n ? n : 1));
    evo_diff(start, best->codes, quant_size(q), ch);
    double sender_kl = best->totals.kl;
    island_topology *t = island_topology_create(TOPO_RING, 0, 0, &err);
    island_states got;
    island_exchange(t, &ch, &n, 1, &got);
    double *kl = qv_malloc(sizeof(double) * (size_t)nranks);
    MPI_Allgather(&sender_kl, 1, MPI_DOUBLE, kl, 1, MPI_DOUBLE, MPI_COMM_WORLD);
    net_acts *work = net_acts_create(nt, 16);
    int8_t *codes = qv_malloc(quant_size(q));
    for (int i = 0; i < got.count; i++) {
        memcpy(codes, start, quant_size(q));
        evo_patch(codes, got.changes[i], got.nchanges[i]);
        fit_totals here = evo_score(nt, q, codes, &im, work, NULL);
        CHECK(evo_import(is, codes, MIGRATE_REPLACE_WORST) == 1);
        bool found = false;
        for (int m = 0; m < evo_size(is) && !found; m++)
            found = memcmp(evo_member_at(is, m)->codes, codes, quant_size(q)) == 0 &&
                    memcmp(&evo_member_at(is, m)->totals, &here, sizeof here) == 0;
        CHECKF(found, "migrant from %d not scored on the receiver's batch", got.source[i]);
        CHECK(here.kl != kl[got.source[i]]); /* the sender scored it on other images */
    }
    free(codes), free(kl), free(ch), free(start);
    island_states_free(&got);
    island_topology_free(t);
    net_acts_free(work);
    evo_free(is);
    config_free(&c);
    evo_images_free(&im);
    free(ds.pixels), free(ds.labels);
    quant_free(q);
    net_free(nt);
}

static void write_model(const char *path)
{
    model_builder mb;
    mb_init(&mb, 3);
    mb_tensor(&mb, "c.w", -1, 1, 4, 4, 1, 3, 3);
    mb_tensor(&mb, "fc.w", -0.3f, 0.3f, 2, 4, 144);
    mb_layer(&mb, "{\"name\":\"c\",\"op\":\"conv2d\",\"weight\":\"c.w\",\"padding\":1}");
    mb_layer(&mb, "{\"name\":\"r\",\"op\":\"relu\"}");
    mb_layer(&mb, "{\"name\":\"f\",\"op\":\"flatten\"}");
    mb_layer(&mb, "{\"name\":\"fc\",\"op\":\"linear\",\"weight\":\"fc.w\"}");
    QV_ASSERT(mb_save(&mb, path, "classify", 1, 6, 6) == 0);
}

int main(int argc, char **argv)
{
    island_init(&argc, &argv);
    rank = island_rank();
    nranks = island_count();
    char path[128];
    snprintf(path, sizeof path, "/tmp/qevo-test-island-%d-%d.safetensors", (int)getppid(), rank);
    write_model(path);
    test_topologies();
    test_exchange();
    test_agree_and_sum();
    test_migrant_scoring(path);
    unlink(path);
    int mine[2] = {test_passed, test_failed}, all[2];
    MPI_Reduce(mine, all, 2, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    island_finalize();
    if (rank == 0)
        printf("test_island (%d ranks): %d passed, %d failed\n", nranks, all[0], all[1]);
    return rank == 0 && all[1] ? 1 : 0;
}
