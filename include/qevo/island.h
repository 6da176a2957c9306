/* island: the only module that calls MPI. One island per rank: start-up and shutdown,
 * agreement on errors and stopping, the migration topology, moving states between
 * islands as sparse differences, and exact data-parallel sums. */
#ifndef QEVO_ISLAND_H
#define QEVO_ISLAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qevo/config.h"
#include "qevo/evo.h"
#include "qevo/fitness.h"
#include "qevo/util.h"

void island_init(int *argc, char ***argv);
void island_finalize(void);
int island_rank(void);
int island_count(void);
/* Ends every rank at once (after a failure that leaves no time for agreement). */
_Noreturn void island_abort(int code);

/* Collective: 0 if status is 0 on every rank; otherwise -1 on every rank, with err (on
 * every rank) holding "rank R: <message>" of the lowest failing rank. */
int island_agree(int status, const qv_err *local, qv_err *err);
/* Collective: rank 0's string on every rank (malloc'd; caller frees). */
char *island_bcast_string(const char *s);
/* Collective: true on every rank if flag is true on any. */
bool island_any(bool flag);
/* Collective: the bitwise OR of every rank's flags. */
int island_or(int flags);
/* Collective: element-wise sums over ranks, in place (exact for integer counts; the
 * same reduction order every run). fit_totals are plain doubles: pass
 * (double *)t, count * FIT_TOTALS_FIELDS. */
void island_sum(double *v, int count);
/* Collective: rank 0 receives every rank's `count` doubles in rank order (all, of
 * nranks * count); other ranks may pass NULL. */
void island_gather_doubles(const double *mine, int count, double *all);
/* Collective: every rank's bytes, concatenated in rank order, on rank 0 (malloc'd;
 * *total set); NULL on other ranks. */
char *island_gather_bytes(const char *mine, size_t len, size_t *total);

/* The migration graph (undirected; no self-loops or duplicates), as an MPI distributed
 * graph topology so neighbourhood collectives move only neighbour-to-neighbour data. */
typedef struct island_topology island_topology;
island_topology *island_topology_create(topology_kind kind, int degree, uint64_t seed,
                                        qv_err *err);
void island_topology_free(island_topology *t);
/* This rank's neighbours, ascending. */
int island_neighbours(const island_topology *t, const int **list);
/* The neighbours of any rank under a topology, without MPI (for tests and logs):
 * fills out (capacity nranks) and returns their count, or -1 with a message when the
 * topology is impossible (e.g. a random regular graph with n * degree odd). */
int island_topology_neighbours(topology_kind kind, int degree, uint64_t seed, int nranks,
                               int rank, int *out, qv_err *err);

/* States on the wire: a list of sparse differences from the start state. */
typedef struct {
    int count;          /* states */
    int *source;        /* rank each state came from */
    size_t *nchanges;   /* per state */
    evo_change **changes;
} island_states;
void island_states_free(island_states *s);

/* Collective over neighbours: sends this island's states (each a change list) to every
 * neighbour and returns what the neighbours sent, in neighbour order. */
void island_exchange(island_topology *t, evo_change *const *changes, const size_t *nchanges,
                     int count, island_states *received);
/* Collective: every island's states on every rank, in rank order. */
void island_allgather_states(evo_change *const *changes, const size_t *nchanges, int count,
                             island_states *all);

/* Asynchronous migration: islands never wait for each other while they search. States
 * go out with non-blocking sends and are taken in when they have arrived; at the end,
 * island_async_finish (collective) receives every state still in flight, so none is lost
 * or delivered twice. */
typedef struct island_async island_async;
island_async *island_async_create(island_topology *t);
void island_async_free(island_async *a);
/* Posts this island's states to every neighbour; returns at once. */
void island_async_send(island_async *a, evo_change *const *changes, const size_t *nchanges,
                       int count);
/* Appends the states that have arrived so far (never blocks) and retires finished sends. */
void island_async_receive(island_async *a, island_states *received);
/* Collective: the states still in flight to this island, then every send completed. */
void island_async_finish(island_async *a, island_states *received);
/* Messages (each carrying `migrants` states) sent and received so far. */
uint64_t island_async_sent(const island_async *a);
uint64_t island_async_received(const island_async *a);

#endif
