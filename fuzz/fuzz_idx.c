/* idx: data_load on IDX image and label files, raw and gzipped.
 *
 * Input: a control byte, then two chunks (fuzz.h): the images file and the labels file.
 * The low two bits of the control byte choose how they are written and named:
 *   0  raw, as D/x-images-idx3-ubyte and D/x-labels-idx1-ubyte (the spec is the images
 *      path; data_load finds the labels by the MNIST naming convention)
 *   1  the bytes as they are, named ...-ubyte.gz (gzip streams; zlib also reads a raw
 *      file through gzopen)
 *   2  each chunk gzip-compressed by the harness, so that the IDX inside a valid gzip
 *      stream is fuzzed as well as the stream itself
 *   3  raw, named explicitly as the spec "D/a.idx,D/b.idx"; control bit 2 gzips the
 *      images chunk too */
#include "fuzz.h"

#include <zlib.h>

#include "fuzz_data.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void write_gz(const char *path, const uint8_t *data, size_t len, int level)
{
    char mode[8];
    snprintf(mode, sizeof mode, "wb%d", level);
    gzFile f = gzopen(path, mode);
    FUZZ_CHECK(f);
    FUZZ_CHECK(len == 0 || gzwrite(f, data, (unsigned)len) == (int)len);
    FUZZ_CHECK(gzclose(f) == Z_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t ctl = fuzz_byte(&in);
    int mode = ctl & 3;
    const uint8_t *part[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    int nparts = 0;
    while (nparts < 2 && fuzz_chunk(&in, &part[nparts], &len[nparts]))
        nparts++;
    static const char *const names[4][2] = {
        {"x-images-idx3-ubyte", "x-labels-idx1-ubyte"},
        {"x-images-idx3-ubyte.gz", "x-labels-idx1-ubyte.gz"},
        {"x-images-idx3-ubyte.gz", "x-labels-idx1-ubyte.gz"},
        {"a.idx", "b.idx"}};
    char path[2][600];
    for (int k = 0; k < 2; k++)
        fuzz_path(path[k], sizeof path[k], names[mode][k]);
    /* A missing chunk is a missing file. */
    for (int k = 0; k < nparts; k++) {
        if (mode == 2 || (mode == 3 && k == 0 && (ctl & 4)))
            write_gz(path[k], part[k], len[k], 1 + (ctl >> 3) % 9);
        else
            fuzz_write(path[k], part[k], len[k]);
    }
    char spec[1300];
    if (mode == 3)
        snprintf(spec, sizeof spec, "%s,%s", path[0], path[1]);
    else
        snprintf(spec, sizeof spec, "%s", path[0]);
    fuzz_load_dataset(spec, 1);
    for (int k = 0; k < nparts; k++)
        unlink(path[k]);
    return 0;
}
