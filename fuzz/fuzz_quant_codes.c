/* quant_codes: quant_load_codes, the reader of quantized model files' codes (a run's
 * `start` file, AdaRound's output, ...), against a fixed model and quantizer.
 *
 * Input: one byte choosing one of four quantizers of the small test classifier
 * (tests/model_builder.h, 1126 weights in 3 layers), then the quantized model file.
 * The codes it accepts must be within every weight's code range. */
#include "fuzz.h"

#include <cblas.h>

#include "model_builder.h"
#include "qevo/net.h"
#include "qevo/quant.h"

#include "quantizers.h"

static net *model;
static quant *quants[FUZZ_QUANTIZERS];
static int8_t *codes;

static void cleanup(void)
{
    for (int i = 0; i < FUZZ_QUANTIZERS; i++)
        quant_free(quants[i]);
    net_free(model);
    free(codes);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    openblas_set_num_threads(1);
    char path[600];
    fuzz_path(path, sizeof path, "model.safetensors");
    mb_small_classifier(path, 21);
    qv_err err;
    FUZZ_CHECK(net_load(path, &model, &err) == 0);
    unlink(path);
    for (int i = 0; i < FUZZ_QUANTIZERS; i++)
        quants[i] = quant_create(model, &fuzz_quantizers[i]);
    codes = malloc(quant_size(quants[0]));
    FUZZ_CHECK(codes);
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    const quant *q = quants[fuzz_byte(&in) % FUZZ_QUANTIZERS];
    char path[600];
    fuzz_path(path, sizeof path, "codes.safetensors");
    fuzz_write(path, in.p, in.left);
    qv_err err;
    memset(codes, 0x7f, quant_size(q));
    int rc = quant_load_codes(q, model, path, codes, &err);
    fuzz_note("quant_load_codes", rc, err.msg);
    if (rc == 0)
        FUZZ_CHECK(quant_check_codes(q, codes, &err) == 0);
    unlink(path);
    return 0;
}
