/* Migration: each island sends its best `migrants` states, as differences from the start
 * state, to its neighbours; arrivals are scored on the receiver's own batch and let in
 * by the replacement policy. Synchronous (a neighbourhood collective every `interval`
 * generations) or asynchronous (non-blocking messages, taken in when they arrive). */
#include <stdlib.h>
#include <string.h>

#include "run_internal.h"

void record_migration_event(run_state *s, int sender, int accepted)
{
    if (s->nmig == s->mig_cap) {
        s->mig_cap = s->mig_cap ? 2 * s->mig_cap : 16;
        s->mig_sender = qv_realloc(s->mig_sender, sizeof(int) * (size_t)s->mig_cap);
        s->mig_accepted = qv_realloc(s->mig_accepted, sizeof(int) * (size_t)s->mig_cap);
    }
    s->mig_sender[s->nmig] = sender;
    s->mig_accepted[s->nmig++] = accepted;
}

/* The island's best states as change lists (caller frees with free_outgoing). */
static evo_change **outgoing(run_state *s, size_t *counts)
{
    int k = s->cfg.islands.migrants;
    size_t n = quant_size(s->q);
    evo_change **changes = qv_malloc(sizeof(evo_change *) * (size_t)k);
    const int *nb;
    uint64_t degree = (uint64_t)island_neighbours(s->topo, &nb);
    for (int i = 0; i < k; i++) {
        const int8_t *codes = evo_member_at(s->is, i)->codes;
        counts[i] = evo_diff(s->start, codes, n, NULL);
        changes[i] = qv_malloc(sizeof(evo_change) * (counts[i] ? counts[i] : 1));
        evo_diff(s->start, codes, n, changes[i]);
        s->bytes_sent += (4 + 5 * counts[i]) * degree; /* on the wire, to each neighbour */
    }
    s->states_sent += (uint64_t)k * degree;
    return changes;
}

static void free_outgoing(evo_change **changes, int k)
{
    for (int i = 0; i < k; i++)
        free(changes[i]);
    free(changes);
}

/* Scores and lets in every arrived state. */
static void take_in(run_state *s, island_states *in)
{
    size_t n = quant_size(s->q);
    int8_t *codes = qv_malloc(n ? n : 1);
    for (int i = 0; i < in->count; i++) {
        memcpy(codes, s->start, n);
        evo_patch(codes, in->changes[i], in->nchanges[i]);
        record_migration_event(s, in->source[i],
                               evo_import(s->is, codes, s->cfg.islands.policy));
    }
    free(codes);
    island_states_free(in);
}

void run_migrate(run_state *s)
{
    double t0 = qv_now();
    int k = s->cfg.islands.migrants;
    size_t *counts = qv_malloc(sizeof(size_t) * (size_t)k);
    evo_change **changes = outgoing(s, counts);
    island_states in;
    island_exchange(s->topo, changes, counts, k, &in);
    take_in(s, &in);
    free_outgoing(changes, k);
    free(counts);
    s->t_migration += qv_now() - t0;
}

void run_migrate_async(run_state *s, bool send)
{
    double t0 = qv_now();
    if (send) {
        int k = s->cfg.islands.migrants;
        size_t *counts = qv_malloc(sizeof(size_t) * (size_t)k);
        evo_change **changes = outgoing(s, counts);
        island_async_send(s->async, changes, counts, k);
        free_outgoing(changes, k);
        free(counts);
    }
    island_states in;
    island_async_receive(s->async, &in);
    take_in(s, &in);
    s->t_migration += qv_now() - t0;
}

void run_migrate_async_finish(run_state *s)
{
    double t0 = qv_now();
    island_states in;
    island_async_finish(s->async, &in);
    take_in(s, &in);
    s->t_migration += qv_now() - t0;
}
