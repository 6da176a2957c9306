#define _POSIX_C_SOURCE 200809L
#include "qevo/util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int qv_fail(qv_err *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int qv_wrap(qv_err *err, const char *fmt, ...)
{
    if (err) {
        char old[QV_ERR_LEN];
        memcpy(old, err->msg, sizeof old);
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        size_t used = k < 0 ? 0 : (size_t)k;
        if (used > sizeof err->msg - 1)
            used = sizeof err->msg - 1;
        /* Append ": old" by hand, truncating at the buffer's end. */
        const char *sep = ": ";
        for (const char *s = sep; *s && used < sizeof err->msg - 1; s++)
            err->msg[used++] = *s;
        for (const char *s = old; *s && used < sizeof err->msg - 1; s++)
            err->msg[used++] = *s;
        err->msg[used] = 0;
    }
    return -1;
}

void qv_assert_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "qevo: internal error at %s:%d: assertion '%s' failed\n", file, line, cond);
    abort();
}

static _Noreturn void out_of_memory(size_t bytes)
{
    fprintf(stderr, "qevo: out of memory allocating %zu bytes\n", bytes);
    abort();
}

void *qv_malloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        out_of_memory(bytes);
    return p;
}

void *qv_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size);
    return p;
}

void *qv_realloc(void *p, size_t bytes)
{
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q)
        out_of_memory(bytes);
    return q;
}

char *qv_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(qv_malloc(n), s, n);
}

void *qv_malloc_aligned(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        out_of_memory(bytes);
    return p;
}

void qv_free_aligned(void *p)
{
    free(p);
}

int qv_read_file(const char *path, unsigned char **data, size_t *len, qv_err *err)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return qv_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qv_fail(err, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = qv_malloc(n + 1);
    if (fread(buf, 1, n, f) != n) {
        int e = errno;
        fclose(f);
        free(buf);
        return qv_fail(err, "%s: read failed: %s", path, e ? strerror(e) : "short read");
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

int qv_atomic_open(qv_atomic *a, const char *path, qv_err *err)
{
    memset(a, 0, sizeof *a);
    size_t n = strlen(path) + 32;
    a->path = qv_strdup(path);
    a->tmp = qv_malloc(n);
    snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) {
        int e = errno;
        free(a->path);
        free(a->tmp);
        memset(a, 0, sizeof *a);
        return qv_fail(err, "%s: cannot create: %s", path, strerror(e));
    }
    return 0;
}

static void fsync_parent_dir(const char *path)
{
    char *copy = qv_strdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd); /* best effort: some filesystems refuse fsync on directories */
        close(fd);
    }
    free(copy);
}

int qv_atomic_commit(qv_atomic *a, qv_err *err)
{
    int rc = 0;
    int e = 0;
    if (fflush(a->f) != 0 || fsync(fileno(a->f)) != 0)
        e = errno, rc = -1;
    if (fclose(a->f) != 0 && rc == 0)
        e = errno, rc = -1;
    a->f = NULL;
    if (rc == 0 && rename(a->tmp, a->path) != 0)
        e = errno, rc = -1;
    if (rc != 0) {
        unlink(a->tmp);
        qv_fail(err, "%s: write failed: %s", a->path, strerror(e));
    } else {
        fsync_parent_dir(a->path);
    }
    free(a->path);
    free(a->tmp);
    memset(a, 0, sizeof *a);
    return rc;
}

void qv_atomic_abort(qv_atomic *a)
{
    if (a->f)
        fclose(a->f);
    if (a->tmp)
        unlink(a->tmp);
    free(a->path);
    free(a->tmp);
    memset(a, 0, sizeof *a);
}

int qv_write_file_atomic(const char *path, const void *data, size_t len, qv_err *err)
{
    qv_atomic a;
    if (qv_atomic_open(&a, path, err) != 0)
        return -1;
    if (len && fwrite(data, 1, len, a.f) != len) {
        int e = errno;
        qv_atomic_abort(&a);
        return qv_fail(err, "%s: write failed: %s", path, strerror(e));
    }
    return qv_atomic_commit(&a, err);
}

int qv_mkdir_p(const char *path, qv_err *err)
{
    if (!path[0])
        return qv_fail(err, "empty directory name");
    char *p = qv_strdup(path);
    for (char *s = p + 1;; s++) {
        char c = *s;
        if (c == '/' || c == 0) {
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                int e = errno;
                free(p);
                return qv_fail(err, "%s: cannot create directory: %s", path, strerror(e));
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return qv_fail(err, "%s: not a directory", path);
    return 0;
}

double qv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
