/* rng: counter-based random numbers (Philox4x32-10).
 *
 * Every random decision comes from a stream keyed by (seed, island, generation,
 * purpose), so results do not depend on how many numbers some other part of the program
 * drew before, and a checkpoint only needs the key and the counter. */
#ifndef QEVO_RNG_H
#define QEVO_RNG_H

#include <stdint.h>

typedef struct {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t out[4];
    int used; /* words of `out` already handed out (4 = none left) */
} rng;

/* What a stream is for; part of its key, so streams for different purposes never overlap. */
enum rng_purpose {
    RNG_SHARD = 1,
    RNG_MUTATE,
    RNG_CROSSOVER,
    RNG_SELECT,
    RNG_BATCH,
    RNG_TOPOLOGY,
    RNG_TEST,
};

/* A stream for (seed, island, generation, purpose); island/generation may be 0. */
rng rng_stream(uint64_t seed, uint32_t island, uint32_t generation, enum rng_purpose purpose);

uint32_t rng_u32(rng *r);
uint64_t rng_u64(rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform(rng *r);
/* Uniform integer in [0, n), unbiased; n > 0. */
uint32_t rng_below(rng *r, uint32_t n);
/* Standard normal (Box-Muller). */
double rng_normal(rng *r);
/* Fisher-Yates shuffle of an int array. */
void rng_shuffle(rng *r, int *a, int n);

#endif
