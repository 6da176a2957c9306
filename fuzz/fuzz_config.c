/* config: config_load with --set overrides, and config_parse.
 *
 * Input: text split at NUL bytes. The first part is the configuration file; each later
 * part (at most four) is one override "key=value" as given to --set. The first part is
 * also parsed as text by config_parse. A configuration that loads must resolve to JSON
 * (config_to_json) that config_parse accepts and that resolves to the same JSON again:
 * qevo-island's rank 0 resolves the file and every rank parses what it sent. */
#include "fuzz.h"

#include "qevo/config.h"

#define MAX_OVERRIDES 4

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void round_trip(const config *c)
{
    char *text = config_to_json(c);
    FUZZ_CHECK(text);
    config again;
    qv_err err;
    if (config_parse(text, "resolved", &again, &err) != 0) {
        fprintf(stderr, "fuzz: the resolved configuration does not parse: %s\n%s\n", err.msg,
                text);
        abort();
    }
    char *text2 = config_to_json(&again);
    if (strcmp(text, text2) != 0) {
        fprintf(stderr, "fuzz: the resolved configuration changes when parsed again:\n%s\n%s\n",
                text, text2);
        abort();
    }
    (void)config_fit_name(again.fitness.kind);
    (void)config_topology_name(again.islands.topology);
    free(text2);
    free(text);
    config_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *end = memchr(data, 0, size);
    size_t flen = end ? (size_t)(end - data) : size;
    char *overrides[MAX_OVERRIDES];
    int n = 0;
    for (size_t at = flen + 1; at < size && n < MAX_OVERRIDES;) {
        const uint8_t *next = memchr(data + at, 0, size - at);
        size_t olen = next ? (size_t)(next - (data + at)) : size - at;
        overrides[n++] = fuzz_strndup(data + at, olen);
        at += olen + 1;
    }
    char path[600];
    fuzz_path(path, sizeof path, "config.json");
    fuzz_write(path, data, flen);
    config c;
    qv_err err;
    int rc = config_load(path, (const char *const *)overrides, n, &c, &err);
    fuzz_note("config_load", rc, err.msg);
    if (rc == 0) {
        round_trip(&c);
        config_free(&c);
    } else {
        FUZZ_CHECK(err.msg[0]);
    }
    char *text = fuzz_strndup(data, flen);
    rc = config_parse(text, "fuzz", &c, &err);
    fuzz_note("config_parse", rc, err.msg);
    if (rc == 0) {
        round_trip(&c);
        config_free(&c);
    }
    free(text);
    for (int i = 0; i < n; i++)
        free(overrides[i]);
    unlink(path);
    return 0;
}
