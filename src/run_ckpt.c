/* Checkpoints of a run: every island's state and the run's own (global best, report
 * counters, log position), written together at a generation boundary, and resuming
 * from the newest whole one, also on another number of ranks. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qevo/ckpt.h"
#include "run_internal.h"

/* Keys that may change between a run and its resumption: they change when or where a
 * run stops or reports, or its speed, never its results. */
static const char *const resumable_keys[] = {
    "stop.generations", "stop.seconds", "stop.patience", "output.dir",
    "checkpoint.every_generations", "checkpoint.every_seconds", "checkpoint.keep",
    "report.grid_images", "evolution.cache_mb", NULL};

static char *root_of(const run_state *s)
{
    size_t n = strlen(s->cfg.output.dir) + 16;
    char *p = qv_malloc(n);
    snprintf(p, n, "%s/checkpoints", s->cfg.output.dir);
    return p;
}

static void island_name(char *buf, size_t cap, int island)
{
    snprintf(buf, cap, "island-%05d.bin", island);
}

/* ---- Writing ---- */

static unsigned char *island_payload(const run_state *s, size_t *len)
{
    island_header h = {1, (uint32_t)s->rank, (uint64_t)s->generation, s->draws,
                       s->validated_once, s->validated_id, s->states_sent, s->bytes_sent,
                       (uint32_t)s->nmig, 0};
    size_t events = (size_t)s->nmig * 2 * sizeof(int32_t);
    *len = sizeof h + events + evo_state_size(s->is);
    unsigned char *buf = qv_malloc(*len), *p = buf;
    memcpy(p, &h, sizeof h);
    p += sizeof h;
    for (int i = 0; i < s->nmig; i++) {
        int32_t ev[2] = {s->mig_sender[i], s->mig_accepted[i]};
        memcpy(p, ev, sizeof ev);
        p += sizeof ev;
    }
    evo_state_write(s->is, p);
    return buf;
}

int island_blob_parse(const unsigned char *buf, size_t len, const char *file, island_blob *b,
                      qv_err *err)
{
    if (len < sizeof b->h)
        return qv_fail(err, "%s: %zu bytes, shorter than the %zu-byte island header", file, len,
                       sizeof b->h);
    memcpy(&b->h, buf, sizeof b->h);
    if (b->h.version != 1)
        return qv_fail(err, "%s: island state version %u; this qevo reads version 1", file,
                       b->h.version);
    size_t rest = len - sizeof b->h, event_bytes = 2 * sizeof(int32_t);
    if (b->h.nmig > rest / event_bytes)
        return qv_fail(err, "%s: %u migration events of %zu bytes do not fit in the %zu bytes "
                       "after the header", file, b->h.nmig, event_bytes, rest);
    b->events = buf + sizeof b->h;
    b->state = b->events + (size_t)b->h.nmig * event_bytes;
    b->state_len = rest - (size_t)b->h.nmig * event_bytes;
    return 0;
}

static json_t *totals_json(const fit_totals *t)
{
    const double *v = (const double *)t;
    json_t *a = json_array();
    for (int i = 0; i < FIT_TOTALS_FIELDS; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static char *run_json(const run_state *s)
{
    json_t *islands = json_array();
    for (int r = 0; r < s->nranks; r++)
        json_array_append_new(islands, totals_json(&s->island_val[r]));
    json_t *j = json_pack(
        "{si sI si ss sf sf sf sf si sf si si si sI so so}", "version", 1, "generation",
        (json_int_t)s->generation, "islands", s->nranks, "config", s->resolved, "elapsed",
        qv_now() - s->t_start, "t_setup", s->t_setup, "t_migration", s->t_migration,
        "t_validation", s->t_validation, "last_report", s->last_report, "last_report_evals",
        s->last_report_evals, "stale_reports", s->stale_reports, "best_generation",
        s->best_generation, "best_island", s->best_island, "log_bytes",
        (json_int_t)report_log_size(s->log), "best_val", totals_json(&s->best_val),
        "island_val", islands);
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    json_decref(j);
    return text;
}

/* Rank 0's part, once every island's blob is in the staging folder. */
static int finish_checkpoint(run_state *s, const char *root, const char *dir, qv_err *err)
{
    char *text = run_json(s);
    int rc = ckpt_write_blob(dir, "run.json", text, strlen(text), err);
    free(text);
    if (rc == 0)
        rc = ckpt_write_blob(dir, "best.bin", s->best, quant_size(s->q), err);
    if (rc == 0)
        rc = ckpt_commit(root, (uint64_t)s->generation, s->cfg.checkpoint.keep, err);
    return rc;
}

/* Collective. A checkpoint that fails on any rank fails on all, and rank 0 removes its
 * staging folder. */
int run_checkpoint(run_state *s)
{
    double t0 = qv_now();
    char *root = root_of(s);
    qv_err local = {{0}};
    int rc = s->rank == 0 ? ckpt_begin(root, (uint64_t)s->generation, &local) : 0;
    char *dir = ckpt_staging_dir(root, (uint64_t)s->generation);
    rc = island_agree(rc, &local, &s->err);
    if (rc == 0) {
        char name[64];
        size_t len;
        unsigned char *payload = island_payload(s, &len);
        island_name(name, sizeof name, s->rank);
        rc = ckpt_write_blob(dir, name, payload, len, &local);
        free(payload);
        rc = island_agree(rc, &local, &s->err);
    }
    if (rc == 0) {
        rc = s->rank == 0 ? finish_checkpoint(s, root, dir, &local) : 0;
        rc = island_agree(rc, &local, &s->err);
    }
    if (rc == 0 && s->rank == 0) {
        printf("checkpoint: generation %d (%.1f s)\n", s->generation, qv_now() - t0);
        fflush(stdout);
    }
    if (rc && s->rank == 0)
        ckpt_abandon(root, (uint64_t)s->generation);
    free(dir);
    free(root);
    s->last_checkpoint_time = qv_now();
    return rc;
}

/* ---- Finding and verifying ---- */

static int check_checkpoint(const char *dir, void *arg)
{
    (void)arg;
    unsigned char *text;
    size_t len;
    qv_err err;
    if (ckpt_read_blob(dir, "run.json", &text, &len, &err))
        return -1;
    json_t *j = json_loads((const char *)text, 0, NULL);
    free(text);
    json_int_t islands = json_integer_value(json_object_get(j, "islands"));
    json_decref(j);
    if (islands < 1 || islands > INT_MAX)
        return -1;
    unsigned char *blob;
    if (ckpt_read_blob(dir, "best.bin", &blob, &len, &err))
        return -1;
    free(blob);
    for (int i = 0; i < (int)islands; i++) {
        char name[64];
        island_name(name, sizeof name, i);
        if (ckpt_read_blob(dir, name, &blob, &len, &err))
            return -1;
        free(blob);
    }
    return 0;
}

/* Collective: the checkpoint to resume from (rank 0 looks), or NULL. An explicit
 * --resume DIR must hold a valid one. */
static char *find_checkpoint(run_state *s, qv_err *local, int *rc)
{
    char *found = NULL;
    *rc = 0;
    if (s->rank == 0) {
        char *root = s->resume_dir ? qv_strdup(s->resume_dir) : root_of(s);
        /* --resume accepts a run's output folder, its checkpoints folder, or one checkpoint. */
        if (check_checkpoint(root, NULL) == 0) {
            found = qv_strdup(root);
        } else {
            int skipped;
            found = ckpt_latest(root, check_checkpoint, NULL, &skipped);
            if (!found && s->resume_dir) {
                size_t n = strlen(root) + 16;
                char *sub = qv_malloc(n);
                snprintf(sub, n, "%s/checkpoints", root);
                found = ckpt_latest(sub, check_checkpoint, NULL, &skipped);
                free(sub);
            }
            if (skipped)
                printf("checkpoint: skipped %d incomplete or corrupt checkpoint%s\n", skipped,
                       skipped > 1 ? "s" : "");
            if (!found && s->resume_dir)
                *rc = qv_fail(local, "--resume %s: no valid checkpoint there", s->resume_dir);
        }
        free(root);
    }
    char *shared = island_bcast_string(found ? found : "");
    free(found);
    if (!shared[0]) {
        free(shared);
        return NULL;
    }
    return shared;
}

static bool resumable(const char *path)
{
    for (const char *const *k = resumable_keys; *k; k++)
        if (!strcmp(*k, path))
            return true;
    return false;
}

/* Appends "path (old -> new)" for every setting that differs and matters, including
 * one that only one side has (a checkpoint from a version without a newer setting). */
static void diff_json(json_t *a, json_t *b, const char *prefix, char *out, size_t cap)
{
    if (json_is_object(a) || json_is_object(b)) {
        const char *key;
        json_t *v;
        char path[256];
        json_object_foreach(a, key, v) {
            snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", key);
            diff_json(v, json_object_get(b, key), path, out, cap);
        }
        json_object_foreach(b, key, v) {
            if (json_object_get(a, key))
                continue;
            snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", key);
            diff_json(NULL, v, path, out, cap);
        }
        return;
    }
    if (resumable(prefix) || (a && b && json_equal(a, b)))
        return;
    char *x = a ? json_dumps(a, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    char *y = b ? json_dumps(b, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    size_t len = strlen(out);
    snprintf(out + len, cap - len, "%s%s (%s -> %s)", len ? ", " : "", prefix,
             x ? x : "absent", y ? y : "absent");
    free(x);
    free(y);
}

/* Refuses to resume when a setting that matters changed, saying which. */
static int compare_configs(const char *saved_text, const char *now_text, qv_err *err)
{
    json_t *a = saved_text ? json_loads(saved_text, 0, NULL) : NULL;
    json_t *b = json_loads(now_text, 0, NULL);
    char changed[QV_ERR_LEN / 2] = "";
    if (a)
        diff_json(a, b, "", changed, sizeof changed);
    json_decref(a);
    json_decref(b);
    if (!a)
        return qv_fail(err, "resume: the checkpoint's configuration is unreadable");
    if (changed[0])
        return qv_fail(err, "resume: the configuration changed: %s. Resume with the same "
                       "settings, or start a new run in another output.dir", changed);
    return 0;
}

static void read_totals(json_t *a, fit_totals *t)
{
    double *v = (double *)t;
    for (int i = 0; i < FIT_TOTALS_FIELDS; i++)
        v[i] = json_real_value(json_array_get(a, (size_t)i));
}

static bool is_totals(json_t *a)
{
    if (!json_is_array(a) || json_array_size(a) != FIT_TOTALS_FIELDS)
        return false;
    for (size_t i = 0; i < FIT_TOTALS_FIELDS; i++)
        if (!json_is_real(json_array_get(a, i)) || !isfinite(json_real_value(json_array_get(a, i))))
            return false;
    return true;
}

/* Every field restore_run reads, with its type and range, before any is used. */
int check_run_json(json_t *j, const char *dir, qv_err *err)
{
    static const char *const ints[] = {"generation", "last_report", "stale_reports",
                                       "best_generation", NULL};
    static const char *const reals[] = {"elapsed", "t_setup", "t_migration", "t_validation",
                                        "last_report_evals", NULL};
    json_t *islands = json_object_get(j, "islands"), *iv = json_object_get(j, "island_val");
    json_t *log_bytes = json_object_get(j, "log_bytes");
    json_int_t n = json_integer_value(islands);
    json_int_t best = json_integer_value(json_object_get(j, "best_island"));
    if (!json_is_integer(islands) || n < 1 || n > INT_MAX)
        return qv_fail(err, "%s/run.json: \"islands\" must be a positive integer", dir);
    for (const char *const *k = ints; *k; k++) {
        json_t *v = json_object_get(j, *k);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
            return qv_fail(err, "%s/run.json: \"%s\" must be an integer in [0, %d]", dir, *k,
                           INT_MAX);
    }
    for (const char *const *k = reals; *k; k++)
        if (!json_is_number(json_object_get(j, *k)) ||
            !isfinite(json_number_value(json_object_get(j, *k))))
            return qv_fail(err, "%s/run.json: \"%s\" must be a finite number", dir, *k);
    if (!json_is_integer(log_bytes) || json_integer_value(log_bytes) < 0)
        return qv_fail(err, "%s/run.json: \"log_bytes\" must be a byte count", dir);
    if (!json_is_integer(json_object_get(j, "best_island")) || best < -1 || best >= n)
        return qv_fail(err, "%s/run.json: \"best_island\" must be -1 or an island below %lld",
                       dir, (long long)n);
    if (!is_totals(json_object_get(j, "best_val")))
        return qv_fail(err, "%s/run.json: \"best_val\" must be %d finite numbers", dir,
                       FIT_TOTALS_FIELDS);
    if (!json_is_array(iv) || json_array_size(iv) != (size_t)n)
        return qv_fail(err, "%s/run.json: \"island_val\" must hold one entry per island (%lld)",
                       dir, (long long)n);
    for (size_t i = 0; i < (size_t)n; i++)
        if (!is_totals(json_array_get(iv, i)))
            return qv_fail(err, "%s/run.json: \"island_val\"[%zu] must be %d finite numbers", dir,
                           i, FIT_TOTALS_FIELDS);
    return 0;
}

/* Restores this rank's island from the saved islands mapped onto it. */
static int restore_island(run_state *s, const char *dir, int saved, qv_err *err)
{
    int count = 0;
    unsigned char *bufs[64];
    const unsigned char *states[64];
    size_t lens[64];
    int rc = 0;
    /* More saved islands than ranks: rank r takes r, r + n, ...; fewer: r % saved. */
    for (int i = saved > s->nranks ? s->rank : s->rank % saved; i < saved && count < 64 && rc == 0;
         i += s->nranks) {
        char name[64];
        island_name(name, sizeof name, i);
        size_t len;
        rc = ckpt_read_blob(dir, name, &bufs[count], &len, err);
        if (rc)
            break;
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", dir, name);
        island_blob b;
        rc = island_blob_parse(bufs[count], len, file, &b, err);
        if (rc == 0 && b.h.island != (uint32_t)i)
            rc = qv_fail(err, "%s: holds the state of island %u", file, b.h.island);
        if (rc == 0 && evo_state_check(s->is, b.state, b.state_len, err))
            rc = qv_wrap(err, "%s", file);
        if (rc) {
            free(bufs[count]);
            break;
        }
        /* Migration totals: each saved island's counts go to exactly one rank. */
        if (count == 0 || saved > s->nranks) {
            bool duplicate = saved < s->nranks && s->rank >= saved;
            s->states_sent += duplicate ? 0 : b.h.states_sent;
            s->bytes_sent += duplicate ? 0 : b.h.bytes_sent;
        }
        states[count] = b.state;
        lens[count] = b.state_len;
        if (count == 0 && saved == s->nranks) {
            /* The same islands: the run continues exactly where it stopped. */
            s->draws = b.h.draws;
            if (s->draws) { /* the saved scores are on that draw's batch: draw it again */
                evo_images_free(&s->batch);
                evo_images_free(&s->confirm);
                run_draw_batch(s, s->draws, &s->batch, &s->confirm);
                evo_set_confirmation(s->is, &s->confirm);
            }
            s->validated_once = b.h.validated_once;
            s->validated_id = b.h.validated_id;
            for (uint32_t k = 0; k < b.h.nmig; k++) {
                int32_t ev[2];
                memcpy(ev, b.events + k * sizeof ev, sizeof ev);
                record_migration_event(s, ev[0], ev[1]);
            }
        }
        count++;
        if (saved <= s->nranks)
            break;
    }
    if (rc == 0)
        rc = evo_state_read(s->is, states, lens, count, err);
    for (int i = 0; i < count; i++)
        free(bufs[i]);
    return rc;
}

static int restore_run(run_state *s, const char *dir, json_t *j, qv_err *err)
{
    if (check_run_json(j, dir, err))
        return -1;
    int saved = (int)json_integer_value(json_object_get(j, "islands"));
    s->generation = (int)json_integer_value(json_object_get(j, "generation"));
    s->t_start = qv_now() - json_real_value(json_object_get(j, "elapsed"));
    s->t_setup = json_real_value(json_object_get(j, "t_setup"));
    s->t_migration = json_real_value(json_object_get(j, "t_migration"));
    s->t_validation = json_real_value(json_object_get(j, "t_validation"));
    s->last_report = (int)json_integer_value(json_object_get(j, "last_report"));
    s->last_report_evals = json_real_value(json_object_get(j, "last_report_evals"));
    s->stale_reports = (int)json_integer_value(json_object_get(j, "stale_reports"));
    s->best_generation = (int)json_integer_value(json_object_get(j, "best_generation"));
    s->best_island = (int)json_integer_value(json_object_get(j, "best_island"));
    read_totals(json_object_get(j, "best_val"), &s->best_val);
    json_t *iv = json_object_get(j, "island_val");
    for (int r = 0; r < s->nranks; r++)
        read_totals(json_array_get(iv, (size_t)(r % saved)), &s->island_val[r]);
    s->log_bytes = (long long)json_integer_value(json_object_get(j, "log_bytes"));
    unsigned char *best;
    size_t len;
    if (ckpt_read_blob(dir, "best.bin", &best, &len, err))
        return -1;
    if (len != quant_size(s->q)) {
        free(best);
        return qv_fail(err, "%s/best.bin: %zu codes, the model has %zu weights", dir, len,
                       quant_size(s->q));
    }
    int rc = quant_check_codes(s->q, (const int8_t *)best, err);
    memcpy(s->best, best, len);
    free(best);
    if (rc)
        return qv_wrap(err, "%s/best.bin", dir);
    if (restore_island(s, dir, saved, err))
        return -1;
    if (saved != s->nranks) {
        /* Other shards now: score the restored population on this island's batch and
         * let every island's best be validated afresh. */
        evo_set_batch(s->is, &s->batch);
        s->validated_once = false;
    }
    return 0;
}

static void print_mapping(const run_state *s, int saved, const char *dir)
{
    if (s->rank != 0)
        return;
    printf("resuming from %s (generation %d)", dir, s->generation);
    if (saved == s->nranks) {
        printf("\n");
    } else if (saved > s->nranks) {
        printf(": %d saved islands on %d ranks, each rank takes the best of its islands:\n",
               saved, s->nranks);
        for (int r = 0; r < s->nranks; r++) {
            printf("  rank %d <- islands", r);
            for (int i = r; i < saved; i += s->nranks)
                printf(" %d", i);
            printf("\n");
        }
    } else {
        printf(": %d saved islands on %d ranks, rank r starts from island r mod %d\n", saved,
               s->nranks, saved);
    }
    fflush(stdout);
}

int run_resume(run_state *s)
{
    qv_err local = {{0}};
    int rc;
    char *dir = find_checkpoint(s, &local, &rc);
    if (island_agree(rc, &local, &s->err)) { /* every rank, whichever one failed */
        free(dir);
        return -1;
    }
    if (!dir)
        return 0;
    unsigned char *text = NULL;
    size_t len;
    json_t *j = NULL;
    rc = ckpt_read_blob(dir, "run.json", &text, &len, &local);
    if (rc == 0) {
        j = json_loads((const char *)text, 0, NULL);
        rc = j ? compare_configs(json_string_value(json_object_get(j, "config")), s->resolved,
                                 &local)
               : qv_fail(&local, "%s/run.json: invalid JSON", dir);
    }
    if (rc == 0)
        rc = restore_run(s, dir, j, &local);
    int saved = j ? (int)json_integer_value(json_object_get(j, "islands")) : 0;
    free(text);
    json_decref(j);
    rc = island_agree(rc, &local, &s->err);
    if (rc == 0) {
        s->resumed = true;
        print_mapping(s, saved, dir);
    }
    free(dir);
    return rc;
}
