/* safetensors: st_open on arbitrary bytes. A file it accepts must hold what its header
 * promised: every tensor's bytes readable, st_find/st_expect agreeing with st_at, and a
 * copy written with st_writer reading back the same tensors. */
#include "fuzz.h"

#include "qevo/safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static unsigned touch(const st_tensor *t)
{
    const unsigned char *b = t->data;
    unsigned sum = 0;
    for (size_t i = 0; i < t->nbytes; i++)
        sum += b[i];
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600], copy[600];
    fuzz_path(path, sizeof path, "in.safetensors");
    fuzz_path(copy, sizeof copy, "copy.safetensors");
    fuzz_write(path, data, size);
    st_file *f;
    qv_err err;
    int rc = st_open(path, &f, &err);
    fuzz_note("st_open", rc, err.msg);
    if (rc == 0) {
        int n = st_count(f);
        FUZZ_CHECK(n >= 0);
        volatile unsigned sum = 0;
        st_writer *w = st_writer_create();
        for (int i = 0; i < n; i++) {
            const st_tensor *t = st_at(f, i);
            FUZZ_CHECK(t && t->name && t->dtype < ST_DTYPE_COUNT);
            FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
            FUZZ_CHECK((size_t)t->numel * st_dtype_size(t->dtype) == t->nbytes);
            FUZZ_CHECK(st_find(f, t->name) == t);
            FUZZ_CHECK(st_expect(f, t->name, t->dtype, t->ndim, t->shape, &err) == t);
            sum += touch(t);
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
        }
        (void)sum;
        (void)st_meta(f, "qevo.graph");
        (void)st_meta(f, "qevo.quant");
        (void)st_find(f, "missing");
        (void)st_path(f);
        /* What was read can be written and read back unchanged. */
        if (st_writer_save(w, copy, &err) == 0) {
            st_file *g;
            FUZZ_CHECK(st_open(copy, &g, &err) == 0);
            FUZZ_CHECK(st_count(g) == n);
            for (int i = 0; i < n; i++) {
                const st_tensor *a = st_at(f, i), *b = st_find(g, a->name);
                FUZZ_CHECK(b && b->dtype == a->dtype && b->ndim == a->ndim &&
                           b->nbytes == a->nbytes);
                FUZZ_CHECK(!memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim));
                FUZZ_CHECK(!a->nbytes || !memcmp(a->data, b->data, a->nbytes));
            }
            st_close(g);
            unlink(copy);
        }
        st_writer_free(w);
        st_close(f);
    }
    unlink(path);
    return 0;
}
