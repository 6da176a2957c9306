/* checkpoint: the readers of a checkpoint's payloads, in the order run_resume uses them:
 * check_run_json on run.json, the length and code check of best.bin, and for every
 * island file island_blob_parse, the island number, evo_state_check against the fixture
 * island (ckpt_fixture.h) and finally evo_state_read. The CRC'd files around these
 * payloads are ckpt_read_blob's, fuzzed by the ckpt_blob target; here the payloads come
 * straight from the input, each copied into its own exact-size allocation so that an
 * over-read of one is caught.
 *
 * Input layout (that of the issue filer's harness, whose crash inputs are in
 * fuzz/crashes/checkpoint/):
 *   byte 0          nranks - 1 (mod 8): the number of ranks that resume
 *   chunk 0         run.json text           (a chunk: u16 little-endian length, bytes;
 *   chunk 1         best.bin codes           a length beyond the end takes what is left)
 *   chunk 2 + i     island-0000i.bin payload (an absent chunk is a missing file)
 * Saved islands are mapped onto ranks as restore_island does (more islands than ranks:
 * rank r takes r, r + nranks, ...; fewer: island r mod saved), for every rank. Each part
 * is checked even when an earlier one is refused (when run.json is, the number of island
 * chunks stands in for its "islands"), so that one broken part does not hide the others. */
#include "fuzz.h"

#include <cblas.h>
#include <jansson.h>
#include <limits.h>

#include "ckpt_fixture.h"
#include "run_internal.h"

#define MAX_ISLAND_FILES 64
#define MAX_PER_RANK 64 /* restore_island's limit */

static ckpt_fixture fx;

static void cleanup(void)
{
    fixture_free(&fx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    openblas_set_num_threads(1);
    fixture_init(&fx, fuzz_dir());
    atexit(cleanup);
    return 0;
}

/* A copy of bytes in an allocation of exactly that size (at least 1). */
static uint8_t *copy_exact(const uint8_t *p, size_t len)
{
    uint8_t *c = malloc(len ? len : 1);
    FUZZ_CHECK(c);
    if (len)
        memcpy(c, p, len);
    return c;
}

static void check_json(const uint8_t *p, size_t len, int *saved)
{
    char *text = fuzz_strndup(p, len);
    json_t *j = json_loads(text, 0, NULL);
    qv_err err;
    int rc = j ? check_run_json(j, "fuzz", &err) : qv_fail(&err, "fuzz/run.json: invalid JSON");
    fuzz_note("check_run_json", rc, err.msg);
    if (rc == 0) {
        json_int_t n = json_integer_value(json_object_get(j, "islands"));
        FUZZ_CHECK(n >= 1 && n <= INT_MAX);
        FUZZ_CHECK(json_array_size(json_object_get(j, "island_val")) == (size_t)n);
        *saved = (int)n;
        /* The saved configuration, which resume compares with the current one. */
        const char *saved_config = json_string_value(json_object_get(j, "config"));
        config c;
        rc = saved_config ? config_parse(saved_config, "fuzz run.json", &c, &err)
                          : qv_fail(&err, "run.json: no \"config\" string");
        fuzz_note("config_parse (run.json config)", rc, err.msg);
        if (rc == 0)
            config_free(&c);
    }
    json_decref(j);
    free(text);
}

static void check_best(const uint8_t *p, size_t len)
{
    qv_err err;
    if (len != quant_size(fx.q)) {
        fuzz_note("best.bin", -1, "not one code per weight");
        return;
    }
    uint8_t *best = copy_exact(p, len);
    int rc = quant_check_codes(fx.q, (const int8_t *)best, &err);
    fuzz_note("best.bin quant_check_codes", rc, err.msg);
    free(best);
}

/* Rank `rank`'s part of a resume: parse and check its islands, then read them. */
static void restore_rank(int rank, int nranks, int saved, uint8_t *const *blob,
                         const size_t *blen, int nfiles)
{
    const unsigned char *states[MAX_PER_RANK];
    size_t lens[MAX_PER_RANK];
    int count = 0;
    qv_err err;
    for (int i = saved > nranks ? rank : rank % saved; i < saved && count < MAX_PER_RANK;
         i += nranks) {
        if (i >= nfiles) { /* a missing island file: ckpt_read_blob fails */
            fuzz_note("island file", -1, "missing");
            return;
        }
        island_blob b;
        int rc = island_blob_parse(blob[i], blen[i], "fuzz/island.bin", &b, &err);
        fuzz_note("island_blob_parse", rc, err.msg);
        if (rc != 0)
            return;
        FUZZ_CHECK(b.events == blob[i] + sizeof b.h);
        FUZZ_CHECK(b.state == b.events + (size_t)b.h.nmig * 2 * sizeof(int32_t));
        FUZZ_CHECK(b.state + b.state_len == blob[i] + blen[i]);
        if (b.h.island != (uint32_t)i) {
            fuzz_note("island number", -1, "another island's state");
            return;
        }
        rc = evo_state_check(fx.is, b.state, b.state_len, &err);
        fuzz_note("evo_state_check", rc, err.msg);
        if (rc != 0)
            return;
        volatile int32_t sink = 0;
        for (uint32_t k = 0; k < b.h.nmig; k++) { /* record_migration_event's reads */
            int32_t ev[2];
            memcpy(ev, b.events + k * sizeof ev, sizeof ev);
            sink += ev[0] + ev[1];
        }
        (void)sink;
        states[count] = b.state;
        lens[count] = b.state_len;
        count++;
        if (saved <= nranks)
            break;
    }
    if (count == 0)
        return;
    /* Every state passed evo_state_check: reading them must succeed. */
    fuzz_note("evo_state_read", 0, "");
    if (evo_state_read(fx.is, states, lens, count, &err) != 0) {
        fprintf(stderr, "fuzz: evo_state_read refuses states evo_state_check accepted: %s\n",
                err.msg);
        abort();
    }
    FUZZ_CHECK(evo_size(fx.is) == fx.cfg.evolution.population);
    for (int m = 0; m < evo_size(fx.is); m++)
        FUZZ_CHECK(quant_check_codes(fx.q, evo_member_at(fx.is, m)->codes, &err) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    int nranks = 1 + fuzz_byte(&in) % 8;
    const uint8_t *p;
    size_t len;
    int saved = 0;
    if (fuzz_chunk(&in, &p, &len))
        check_json(p, len, &saved);
    if (fuzz_chunk(&in, &p, &len))
        check_best(p, len);
    uint8_t *blob[MAX_ISLAND_FILES];
    size_t blen[MAX_ISLAND_FILES];
    int nfiles = 0;
    while (nfiles < MAX_ISLAND_FILES && fuzz_chunk(&in, &p, &len)) {
        blob[nfiles] = copy_exact(p, len);
        blen[nfiles] = len;
        nfiles++;
    }
    if (saved == 0)
        saved = nfiles;
    if (saved > 0)
        for (int r = 0; r < nranks; r++)
            restore_rank(r, nranks, saved, blob, blen, nfiles);
    for (int i = 0; i < nfiles; i++)
        free(blob[i]);
    return 0;
}
