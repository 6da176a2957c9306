/* cifar: data_load on CIFAR-10 binary batches (records of 1 label byte + 3x32x32 pixels).
 *
 * Input: a control byte, then up to five chunks (fuzz.h), one file each. The low two bits
 * of the control byte choose the spec:
 *   0  one file, "D/one.bin"
 *   1  a list, "D/f0.bin,D/f1.bin,..." (as many files as there are chunks, at least one)
 *   2  "cifar10:D:test" (the first chunk is D/test_batch.bin)
 *   3  "cifar10:D:train" (the chunks are D/data_batch_1.bin ..., missing ones missing) */
#include "fuzz.h"

#include "fuzz_data.h"

#define MAX_FILES 5

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t ctl = fuzz_byte(&in);
    int mode = ctl & 3;
    const uint8_t *part[MAX_FILES];
    size_t len[MAX_FILES];
    int n = 0;
    while (n < MAX_FILES && fuzz_chunk(&in, &part[n], &len[n]))
        n++;
    char path[MAX_FILES][600], name[64], spec[MAX_FILES * 610 + 32];
    spec[0] = 0;
    for (int k = 0; k < n; k++) {
        if (mode == 0)
            snprintf(name, sizeof name, "one.bin");
        else if (mode == 1)
            snprintf(name, sizeof name, "f%d.bin", k);
        else if (mode == 2)
            snprintf(name, sizeof name, "test_batch.bin");
        else
            snprintf(name, sizeof name, "data_batch_%d.bin", k + 1);
        fuzz_path(path[k], sizeof path[k], name);
        if ((mode == 0 || mode == 2) && k > 0)
            break;
        fuzz_write(path[k], part[k], len[k]);
        if (mode == 1) {
            size_t at = strlen(spec);
            snprintf(spec + at, sizeof spec - at, "%s%s", k ? "," : "", path[k]);
        }
    }
    int written = (mode == 0 || mode == 2) && n > 1 ? 1 : n;
    if (mode == 0)
        fuzz_path(spec, sizeof spec, "one.bin");
    else if (mode == 1 && n == 0)
        fuzz_path(spec, sizeof spec, "f0.bin");
    else if (mode >= 2)
        snprintf(spec, sizeof spec, "cifar10:%s:%s", fuzz_dir(), mode == 2 ? "test" : "train");
    fuzz_load_dataset(spec, 3);
    for (int k = 0; k < written; k++)
        unlink(path[k]);
    return 0;
}
