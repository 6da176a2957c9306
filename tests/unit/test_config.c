/* config: defaults, overrides, the resolved round trip, and every class of bad input,
 * each naming the file and the JSON path and saying what was expected. */
#define _POSIX_C_SOURCE 200809L
#include "qevo/config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

static char dir[64], path[128];

static void write_text(const char *text)
{
    FILE *f = fopen(path, "w");
    QV_ASSERT(f);
    fputs(text, f);
    fclose(f);
}

static void expect_error(const char *text, const char *const *sets, int nsets, const char *want)
{
    write_text(text);
    config c;
    qv_err err = {{0}};
    int rc = config_load(path, sets, nsets, &c, &err);
    CHECKF(rc != 0, "config %s should be rejected (want '%s')", text, want);
    CHECKF(rc != 0 && strstr(err.msg, want), "message '%s' lacks '%s'", err.msg, want);
    if (rc == 0)
        config_free(&c);
}

static void test_defaults_and_overrides(void)
{
    write_text("{\"model\": \"m.safetensors\", \"stop\": {\"generations\": 5}}");
    const char *sets[] = {"evolution.rate=0.001", "stop.generations=50", "output.dir=runs/x",
                          "evolution.layers=[\"a\", \"b\"]", "islands.topology=torus",
                          "evolution.one_fifth=true"};
    config c;
    qv_err err;
    int rc = config_load(path, sets, 6, &c, &err);
    CHECKF(rc == 0, "load: %s", err.msg);
    if (rc)
        return;
    CHECK(c.quantizer.bits == 3 && c.quantizer.granularity == 1); /* defaults */
    CHECK(c.evolution.rate == 0.001 && c.stop.generations == 50);
    CHECK(!strcmp(c.output.dir, "runs/x"));
    CHECK(c.evolution.layers == LAYERS_LIST && c.evolution.layer_count == 2 &&
          !strcmp(c.evolution.layer_list[1], "b"));
    CHECK(c.islands.topology == TOPO_TORUS && c.evolution.one_fifth);
    CHECK(c.seed == 1 && !strcmp(c.data.train, "fashion-mnist:train"));
    /* The resolved JSON parses back to the same configuration. */
    char *json = config_to_json(&c);
    config back;
    rc = config_parse(json, "resolved", &back, &err);
    CHECKF(rc == 0, "parse resolved: %s", err.msg);
    if (rc == 0) {
        char *again = config_to_json(&back);
        CHECK(!strcmp(json, again));
        free(again);
        config_free(&back);
    }
    free(json);
    config_free(&c);
}

static void test_errors(void)
{
    config c;
    qv_err err;
    CHECK(config_load("/nonexistent/cfg.json", NULL, 0, &c, &err) != 0 &&
          strstr(err.msg, "/nonexistent/cfg.json") && strstr(err.msg, "cannot read"));
    expect_error("{\"model\": \"m\",", NULL, 0, "invalid JSON at line 1");
    expect_error("[1, 2]", NULL, 0, "expected a JSON object at the top level");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolutoin\": {}}", NULL, 0,
                 "evolutoin: unknown key");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"rat\": 1}}",
                 NULL, 0, "evolution.rat: unknown key (known under evolution: population");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"rate\": \"x\"}}",
                 NULL, 0, "evolution.rate: expected a number, found \"x\"");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"rate\": 2}}",
                 NULL, 0, "evolution.rate: expected a number in (0, 1], found 2");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"rate\": 0}}",
                 NULL, 0, "evolution.rate: expected a number in (0, 1]");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 2.5}}", NULL, 0,
                 "stop.generations: expected an integer, found 2.5");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"quantizer\": {\"bits\": 9}}",
                 NULL, 0, "quantizer.bits: expected an integer in [2, 8], found 9");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"islands\": {\"topology\": "
                 "\"star\"}}", NULL, 0,
                 "islands.topology: expected one of \"ring\", \"torus\", \"full\", \"random\"");
    expect_error("{\"stop\": {\"generations\": 5}}", NULL, 0, "model: required");
    expect_error("{\"model\": \"m\"}", NULL, 0, "stop: set at least one of");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"selection\": "
                 "\"comma\", \"population\": 8, \"offspring\": 4}}", NULL, 0,
                 "evolution.offspring: (mu, lambda) selection needs offspring >= population");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"tournament\": 9}}",
                 NULL, 0, "evolution.tournament: expected at most the population");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": {\"layers\": [1]}}",
                 NULL, 0, "evolution.layers[0]: expected a layer name");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"evolution\": 3}", NULL, 0,
                 "evolution: expected an object");
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}, \"seed\": -1}", NULL, 0,
                 "seed: expected a non-negative integer");
    const char *bad_key[] = {"evolution.speed=3"};
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}}", bad_key, 1,
                 "--set evolution.speed=3: unknown key 'evolution.speed'");
    const char *no_eq[] = {"stop.generations"};
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}}", no_eq, 1,
                 "expected KEY=VALUE");
    const char *bad_value[] = {"stop.generations=many"};
    expect_error("{\"model\": \"m\", \"stop\": {\"generations\": 5}}", bad_value, 1,
                 "stop.generations: expected an integer, found \"many\"");
    expect_error("{\"model\": \"m\", \"model\": \"n\", \"stop\": {\"generations\": 5}}", NULL, 0,
                 "duplicate object key");
}

int main(void)
{
    strcpy(dir, "/tmp/qevo-test-config-XXXXXX");
    QV_ASSERT(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    test_defaults_and_overrides();
    test_errors();
    unlink(path);
    rmdir(dir);
    TEST_END("test_config");
}
