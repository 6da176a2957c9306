#include "qevo/island.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "qevo/rng.h"

void island_init(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    /* Errors in MPI calls are programmer errors or a broken job: abort every rank. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
}

void island_finalize(void)
{
    MPI_Finalize();
}

int island_rank(void)
{
    int r;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int island_count(void)
{
    int n;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

void island_abort(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code); /* not reached */
}

int island_agree(int status, const qv_err *local, qv_err *err)
{
    int n = island_count(), me = island_rank();
    int mine = status ? me : n, first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == n)
        return 0;
    char msg[QV_ERR_LEN];
    if (me == first)
        snprintf(msg, sizeof msg, "%s", local->msg);
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD);
    msg[sizeof msg - 1] = 0;
    if (n > 1)
        qv_fail(err, "rank %d: %s", first, msg);
    else
        qv_fail(err, "%s", msg);
    return -1;
}

char *island_bcast_string(const char *s)
{
    long long len = island_rank() == 0 ? (long long)strlen(s) : 0;
    MPI_Bcast(&len, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    char *out = qv_malloc((size_t)len + 1);
    if (island_rank() == 0)
        memcpy(out, s, (size_t)len);
    MPI_Bcast(out, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);
    out[len] = 0;
    return out;
}

bool island_any(bool flag)
{
    int mine = flag, any;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any != 0;
}

int island_or(int flags)
{
    int all;
    MPI_Allreduce(&flags, &all, 1, MPI_INT, MPI_BOR, MPI_COMM_WORLD);
    return all;
}

void island_sum(double *v, int count)
{
    MPI_Allreduce(MPI_IN_PLACE, v, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void island_gather_doubles(const double *mine, int count, double *all)
{
    MPI_Gather(mine, count, MPI_DOUBLE, all, count, MPI_DOUBLE, 0, MPI_COMM_WORLD);
}

/* Counts and displacements (in bytes) for a variable gather. */
static int *displacements(const int *counts, int n, size_t *total)
{
    int *displs = qv_malloc(sizeof(int) * (size_t)n);
    size_t sum = 0;
    for (int i = 0; i < n; i++) {
        displs[i] = (int)sum;
        sum += (size_t)counts[i];
    }
    QV_ASSERT(sum < (size_t)1 << 31); /* MPI counts are ints */
    *total = sum;
    return displs;
}

char *island_gather_bytes(const char *mine, size_t len, size_t *total)
{
    int n = island_count(), me = island_rank(), mylen = (int)len;
    int *counts = me == 0 ? qv_malloc(sizeof(int) * (size_t)n) : NULL;
    MPI_Gather(&mylen, 1, MPI_INT, counts, 1, MPI_INT, 0, MPI_COMM_WORLD);
    char *all = NULL;
    int *displs = NULL;
    if (me == 0) {
        displs = displacements(counts, n, total);
        all = qv_malloc(*total + 1);
        all[*total] = 0;
    }
    MPI_Gatherv(mine, mylen, MPI_CHAR, all, counts, displs, MPI_CHAR, 0, MPI_COMM_WORLD);
    free(counts);
    free(displs);
    return all;
}

/* ---- Topologies ---- */

static int add_unique(int *out, int count, int v, int self)
{
    if (v == self)
        return count;
    for (int i = 0; i < count; i++)
        if (out[i] == v)
            return count;
    out[count] = v;
    return count + 1;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Random d-regular graph on n vertices from the seed: the configuration model (pair up
 * d half-edges per vertex at random), retried until there is no self-loop or double edge.
 * Every rank builds the same graph. Returns an adjacency matrix (n*n bytes) or NULL. */
static unsigned char *random_regular(int n, int d, uint64_t seed)
{
    unsigned char *adj = qv_calloc((size_t)n * n, 1);
    int *half_edges = qv_malloc(sizeof(int) * (size_t)n * d);
    for (uint32_t attempt = 0; attempt < 1000; attempt++) {
        rng r = rng_stream(seed, attempt, 0, RNG_TOPOLOGY);
        for (int i = 0; i < n * d; i++)
            half_edges[i] = i / d;
        rng_shuffle(&r, half_edges, n * d);
        memset(adj, 0, (size_t)n * n);
        bool ok = true;
        for (int i = 0; i < n * d && ok; i += 2) {
            int a = half_edges[i], b = half_edges[i + 1];
            ok = a != b && !adj[(size_t)a * n + b];
            adj[(size_t)a * n + b] = adj[(size_t)b * n + a] = 1;
        }
        if (ok) {
            free(half_edges);
            return adj;
        }
    }
    free(half_edges);
    free(adj);
    return NULL;
}

int island_topology_neighbours(topology_kind kind, int degree, uint64_t seed, int nranks,
                               int rank, int *out, qv_err *err)
{
    int count = 0, n = nranks;
    switch (kind) {
    case TOPO_RING:
        count = add_unique(out, count, (rank + 1) % n, rank);
        count = add_unique(out, count, (rank + n - 1) % n, rank);
        break;
    case TOPO_TORUS: {
        int dims[2] = {0, 0};
        MPI_Dims_create(n, 2, dims); /* as square as n allows */
        int rows = dims[0], cols = dims[1], row = rank / cols, col = rank % cols;
        count = add_unique(out, count, ((row + 1) % rows) * cols + col, rank);
        count = add_unique(out, count, ((row + rows - 1) % rows) * cols + col, rank);
        count = add_unique(out, count, row * cols + (col + 1) % cols, rank);
        count = add_unique(out, count, row * cols + (col + cols - 1) % cols, rank);
        break;
    }
    case TOPO_FULL:
        for (int i = 0; i < n; i++)
            count = add_unique(out, count, i, rank);
        break;
    case TOPO_RANDOM: {
        if (n == 1)
            break;
        int d = degree < n - 1 ? degree : n - 1;
        if ((n * d) % 2)
            return qv_fail(err, "islands.degree: a random %d-regular graph on %d islands does "
                           "not exist (islands * degree must be even)", d, n);
        unsigned char *adj = random_regular(n, d, seed);
        if (!adj)
            return qv_fail(err, "islands.degree: found no random %d-regular graph on %d "
                           "islands in 1000 tries", d, n);
        for (int i = 0; i < n; i++)
            if (adj[(size_t)rank * n + i])
                out[count++] = i;
        free(adj);
        break;
    }
    }
    qsort(out, (size_t)count, sizeof(int), cmp_int);
    return count;
}

struct island_topology {
    MPI_Comm comm; /* distributed graph communicator */
    int count;
    int *neighbours;
};

island_topology *island_topology_create(topology_kind kind, int degree, uint64_t seed,
                                        qv_err *err)
{
    int n = island_count(), me = island_rank();
    island_topology *t = qv_calloc(1, sizeof *t);
    t->neighbours = qv_malloc(sizeof(int) * (size_t)n);
    t->count = island_topology_neighbours(kind, degree, seed, n, me, t->neighbours, err);
    if (t->count < 0) {
        free(t->neighbours);
        free(t);
        return NULL;
    }
    /* Equal weights (MPI_UNWEIGHTED trips GCC's bounds checks in Open MPI's header);
     * reorder = 0: rank r stays island r, so results do not depend on the mapping. */
    int *weights = qv_malloc(sizeof(int) * (size_t)(t->count ? t->count : 1));
    for (int i = 0; i < t->count; i++)
        weights[i] = 1;
    MPI_Dist_graph_create_adjacent(MPI_COMM_WORLD, t->count, t->neighbours, weights, t->count,
                                   t->neighbours, weights, MPI_INFO_NULL, 0, &t->comm);
    free(weights);
    return t;
}

void island_topology_free(island_topology *t)
{
    if (!t)
        return;
    MPI_Comm_free(&t->comm);
    free(t->neighbours);
    free(t);
}

int island_neighbours(const island_topology *t, const int **list)
{
    *list = t->neighbours;
    return t->count;
}

/* ---- States on the wire ----
 * A message is: uint32 states, then per state uint32 changes and that many
 * (uint32 index, int8 code) pairs, packed without padding. All ranks run the same
 * binary on the same kind of machine, so host byte order is fine. */

static size_t packed_size(const size_t *nchanges, int count)
{
    size_t bytes = 4;
    for (int i = 0; i < count; i++)
        bytes += 4 + 5 * nchanges[i];
    return bytes;
}

static char *pack(evo_change *const *changes, const size_t *nchanges, int count, size_t *len)
{
    *len = packed_size(nchanges, count);
    char *buf = qv_malloc(*len), *p = buf;
    uint32_t c = (uint32_t)count;
    memcpy(p, &c, 4), p += 4;
    for (int i = 0; i < count; i++) {
        uint32_t m = (uint32_t)nchanges[i];
        memcpy(p, &m, 4), p += 4;
        for (size_t k = 0; k < nchanges[i]; k++) {
            memcpy(p, &changes[i][k].idx, 4);
            p[4] = (char)changes[i][k].code;
            p += 5;
        }
    }
    return buf;
}

/* Appends the states of one message from `source`. */
static void unpack(const char *p, size_t len, int source, island_states *s)
{
    QV_ASSERT(len >= 4);
    uint32_t c;
    memcpy(&c, p, 4), p += 4;
    int base = s->count;
    s->count += (int)c;
    s->source = qv_realloc(s->source, sizeof(int) * (size_t)s->count);
    s->nchanges = qv_realloc(s->nchanges, sizeof(size_t) * (size_t)s->count);
    s->changes = qv_realloc(s->changes, sizeof(evo_change *) * (size_t)s->count);
    for (uint32_t i = 0; i < c; i++) {
        uint32_t m;
        memcpy(&m, p, 4), p += 4;
        evo_change *ch = qv_malloc(sizeof(evo_change) * (m ? m : 1));
        for (uint32_t k = 0; k < m; k++) {
            memcpy(&ch[k].idx, p, 4);
            ch[k].code = (int8_t)p[4];
            p += 5;
        }
        s->source[base + (int)i] = source;
        s->nchanges[base + (int)i] = m;
        s->changes[base + (int)i] = ch;
    }
}

void island_states_free(island_states *s)
{
    for (int i = 0; i < s->count; i++)
        free(s->changes[i]);
    free(s->changes);
    free(s->nchanges);
    free(s->source);
    memset(s, 0, sizeof *s);
}

/* Every message of a variable-size collective, unpacked: counts/displs per peer. */
static void unpack_all(const char *buf, const int *counts, const int *displs, const int *peers,
                       int npeers, island_states *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < npeers; i++)
        unpack(buf + displs[i], (size_t)counts[i], peers[i], out);
}

void island_exchange(island_topology *t, evo_change *const *changes, const size_t *nchanges,
                     int count, island_states *received)
{
    size_t len;
    char *msg = pack(changes, nchanges, count, &len);
    int mylen = (int)len, n = t->count;
    int *counts = qv_malloc(sizeof(int) * (size_t)(n ? n : 1));
    /* Neighbourhood collectives: each island talks only to its neighbours, so the cost
     * grows with the degree of the topology, not with the number of islands. */
    MPI_Neighbor_allgather(&mylen, 1, MPI_INT, counts, 1, MPI_INT, t->comm);
    size_t total;
    int *displs = displacements(counts, n, &total);
    char *buf = qv_malloc(total ? total : 1);
    MPI_Neighbor_allgatherv(msg, mylen, MPI_CHAR, buf, counts, displs, MPI_CHAR, t->comm);
    unpack_all(buf, counts, displs, t->neighbours, n, received);
    free(msg);
    free(buf);
    free(counts);
    free(displs);
}

void island_allgather_states(evo_change *const *changes, const size_t *nchanges, int count,
                             island_states *all)
{
    size_t len;
    char *msg = pack(changes, nchanges, count, &len);
    int n = island_count(), mylen = (int)len;
    int *counts = qv_malloc(sizeof(int) * (size_t)n), *ranks = qv_malloc(sizeof(int) * (size_t)n);
    MPI_Allgather(&mylen, 1, MPI_INT, counts, 1, MPI_INT, MPI_COMM_WORLD);
    size_t total;
    int *displs = displacements(counts, n, &total);
    char *buf = qv_malloc(total ? total : 1);
    MPI_Allgatherv(msg, mylen, MPI_CHAR, buf, counts, displs, MPI_CHAR, MPI_COMM_WORLD);
    for (int i = 0; i < n; i++)
        ranks[i] = i;
    unpack_all(buf, counts, displs, ranks, n, all);
    free(msg);
    free(buf);
    free(counts);
    free(displs);
    free(ranks);
}

/* ---- Asynchronous migration ---- */

#define TAG_MIGRANTS 17

typedef struct {
    char *buf;
    MPI_Request *reqs; /* one per neighbour, all sending buf */
} pending_send;

struct island_async {
    island_topology *t;
    pending_send *pending;
    int npending, cap;
    uint64_t sent, received;     /* messages */
    uint64_t *received_from;     /* per neighbour index */
};

island_async *island_async_create(island_topology *t)
{
    island_async *a = qv_calloc(1, sizeof *a);
    a->t = t;
    a->received_from = qv_calloc((size_t)(t->count ? t->count : 1), sizeof(uint64_t));
    return a;
}

void island_async_free(island_async *a)
{
    if (!a)
        return;
    QV_ASSERT(a->npending == 0); /* island_async_finish completes every send */
    free(a->pending);
    free(a->received_from);
    free(a);
}

void island_async_send(island_async *a, evo_change *const *changes, const size_t *nchanges,
                       int count)
{
    if (a->t->count == 0)
        return;
    size_t len;
    pending_send p = {pack(changes, nchanges, count, &len), NULL};
    p.reqs = qv_malloc(sizeof(MPI_Request) * (size_t)a->t->count);
    for (int i = 0; i < a->t->count; i++)
        MPI_Isend(p.buf, (int)len, MPI_CHAR, a->t->neighbours[i], TAG_MIGRANTS, a->t->comm,
                  &p.reqs[i]);
    if (a->npending == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 8;
        a->pending = qv_realloc(a->pending, sizeof(pending_send) * (size_t)a->cap);
    }
    a->pending[a->npending++] = p;
    a->sent++;
}

/* Frees the buffers of sends that have completed. */
static void retire_sends(island_async *a, bool wait)
{
    int kept = 0;
    for (int i = 0; i < a->npending; i++) {
        int done = 0;
        if (wait) {
            MPI_Waitall(a->t->count, a->pending[i].reqs, MPI_STATUSES_IGNORE);
            done = 1;
        } else {
            MPI_Testall(a->t->count, a->pending[i].reqs, &done, MPI_STATUSES_IGNORE);
        }
        if (done) {
            free(a->pending[i].buf);
            free(a->pending[i].reqs);
        } else {
            a->pending[kept++] = a->pending[i];
        }
    }
    a->npending = kept;
}

static int neighbour_index(const island_topology *t, int rank)
{
    for (int i = 0; i < t->count; i++)
        if (t->neighbours[i] == rank)
            return i;
    QV_ASSERT(0);
}

/* Receives one message from `source` (MPI_ANY_SOURCE allowed) that is known to exist. */
static void receive_one(island_async *a, int source, island_states *received)
{
    MPI_Status st;
    MPI_Probe(source, TAG_MIGRANTS, a->t->comm, &st);
    int len;
    MPI_Get_count(&st, MPI_CHAR, &len);
    char *buf = qv_malloc((size_t)(len ? len : 1));
    MPI_Recv(buf, len, MPI_CHAR, st.MPI_SOURCE, TAG_MIGRANTS, a->t->comm, MPI_STATUS_IGNORE);
    unpack(buf, (size_t)len, st.MPI_SOURCE, received);
    free(buf);
    a->received_from[neighbour_index(a->t, st.MPI_SOURCE)]++;
    a->received++;
}

void island_async_receive(island_async *a, island_states *received)
{
    memset(received, 0, sizeof *received);
    for (;;) {
        int flag;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_MIGRANTS, a->t->comm, &flag, &st);
        if (!flag)
            break;
        receive_one(a, st.MPI_SOURCE, received);
    }
    retire_sends(a, false);
}

void island_async_finish(island_async *a, island_states *received)
{
    memset(received, 0, sizeof *received);
    /* Every island tells each neighbour how many messages it sent it (the same number to
     * each), so each knows exactly how many are still to come. */
    int n = a->t->count;
    long long *sent = qv_malloc(sizeof(long long) * (size_t)(n ? n : 1));
    long long *expected = qv_malloc(sizeof(long long) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++)
        sent[i] = (long long)a->sent;
    MPI_Neighbor_alltoall(sent, 1, MPI_LONG_LONG, expected, 1, MPI_LONG_LONG, a->t->comm);
    for (int i = 0; i < n; i++)
        while ((long long)a->received_from[i] < expected[i])
            receive_one(a, a->t->neighbours[i], received);
    retire_sends(a, true);
    free(sent);
    free(expected);
}

uint64_t island_async_sent(const island_async *a) { return a->sent; }
uint64_t island_async_received(const island_async *a) { return a->received; }
