/* util: errors, checked allocation, atomic file output. Shared by every module. */
#ifndef QEVO_UTIL_H
#define QEVO_UTIL_H

#include <stddef.h>
#include <stdio.h>

/* An error message for input problems (files, JSON, data, MPI setup). Functions that can
 * fail on input take a `qv_err *` (may be NULL), fill it, and return -1. */
#define QV_ERR_LEN 1024
typedef struct {
    char msg[QV_ERR_LEN];
} qv_err;

/* Formats the message into err (if not NULL) and returns -1, so callers can write
 * `return qv_fail(err, "%s: ...", path);`. */
int qv_fail(qv_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (adds context on the way up). */
int qv_wrap(qv_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Programmer errors: always on (also in release builds), file:line, abort. */
#define QV_ASSERT(cond)                                                                \
    do {                                                                               \
        if (!(cond))                                                                   \
            qv_assert_failed(#cond, __FILE__, __LINE__);                               \
    } while (0)
_Noreturn void qv_assert_failed(const char *cond, const char *file, int line);

/* Allocation failure aborts with the byte count; these never return NULL. */
void *qv_malloc(size_t bytes);
void *qv_calloc(size_t count, size_t size);
void *qv_realloc(void *p, size_t bytes);
char *qv_strdup(const char *s);
/* 64-byte aligned allocation (for tensors), freed with qv_free_aligned. */
void *qv_malloc_aligned(size_t bytes);
void qv_free_aligned(void *p);

/* Reads a whole file. Returns 0 and a malloc'd buffer (caller frees), or -1. */
int qv_read_file(const char *path, unsigned char **data, size_t *len, qv_err *err);

/* Atomic output: data goes to a temporary file beside `path`; commit flushes, fsyncs
 * and renames it over `path` (then fsyncs the directory); abort removes it. A crash or
 * kill at any point leaves either the old file or the complete new one. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp;
} qv_atomic;
int qv_atomic_open(qv_atomic *a, const char *path, qv_err *err);
int qv_atomic_commit(qv_atomic *a, qv_err *err);
void qv_atomic_abort(qv_atomic *a);
/* One-shot: writes len bytes atomically. */
int qv_write_file_atomic(const char *path, const void *data, size_t len, qv_err *err);

/* Creates a directory and its parents (like mkdir -p). */
int qv_mkdir_p(const char *path, qv_err *err);

/* Monotonic seconds, for timing. */
double qv_now(void);

#endif
