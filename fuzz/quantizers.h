/* The quantizers the quant_codes harness reads codes for (the first input byte picks one)
 * and make_corpus writes seed files with: every grid, granularity and scale search. */
#ifndef QEVO_FUZZ_QUANTIZERS_H
#define QEVO_FUZZ_QUANTIZERS_H

#include "qevo/quant.h"

#define FUZZ_QUANTIZERS 4
static const quant_settings fuzz_quantizers[FUZZ_QUANTIZERS] = {
    {.bits = 3, .granularity = QUANT_PER_CHANNEL, .grid = QUANT_SYMMETRIC,
     .scales = QUANT_SCALE_MAX},
    {.bits = 2, .granularity = QUANT_PER_TENSOR, .grid = QUANT_ASYMMETRIC,
     .scales = QUANT_SCALE_MAX},
    {.bits = 4, .granularity = QUANT_PER_CHANNEL, .grid = QUANT_ASYMMETRIC,
     .scales = QUANT_SCALE_MSE, .first_bits = 8, .last_bits = 8},
    {.bits = 8, .granularity = QUANT_PER_TENSOR, .grid = QUANT_SYMMETRIC,
     .scales = QUANT_SCALE_MSE, .last_bits = 2},
};

#endif
