#define _POSIX_C_SOURCE 200809L
#include "qevo/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static const char magic[8] = {'Q', 'E', 'V', 'O', 'C', 'K', 'P', '1'};

static char *path_of(const char *root, const char *fmt, uint64_t gen)
{
    size_t n = strlen(root) + 64;
    char *p = qv_malloc(n);
    char name[48];
    snprintf(name, sizeof name, fmt, (unsigned long long)gen);
    snprintf(p, n, "%s/%s", root, name);
    return p;
}

char *ckpt_staging_dir(const char *root, uint64_t gen)
{
    return path_of(root, ".gen-%08llu", gen);
}

char *ckpt_final_dir(const char *root, uint64_t gen)
{
    return path_of(root, "gen-%08llu", gen);
}

/* Removes a directory and the plain files in it (checkpoints hold nothing else). */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        size_t n = strlen(dir) + strlen(e->d_name) + 2;
        char *p = qv_malloc(n);
        snprintf(p, n, "%s/%s", dir, e->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int ckpt_begin(const char *root, uint64_t gen, qv_err *err)
{
    if (qv_mkdir_p(root, err))
        return -1;
    char *dir = ckpt_staging_dir(root, gen);
    remove_dir(dir);
    int rc = 0;
    if (mkdir(dir, 0777) != 0)
        rc = qv_fail(err, "%s: cannot create: %s", dir, strerror(errno));
    free(dir);
    return rc;
}

int ckpt_write_blob(const char *dir, const char *name, const void *data, size_t len,
                    qv_err *err)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = qv_malloc(n);
    snprintf(path, n, "%s/%s", dir, name);
    uint64_t len64 = len;
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    for (size_t off = 0; off < len;) { /* crc32 takes at most 4 GiB per call */
        size_t chunk = len - off > (1u << 30) ? (1u << 30) : len - off;
        crc = (uint32_t)crc32(crc, (const Bytef *)data + off, (uInt)chunk);
        off += chunk;
    }
    qv_atomic a;
    int rc = qv_atomic_open(&a, path, err);
    if (rc == 0) {
        if (fwrite(magic, 1, 8, a.f) != 8 || fwrite(&len64, 8, 1, a.f) != 1 ||
            fwrite(&crc, 4, 1, a.f) != 1 || (len && fwrite(data, 1, len, a.f) != len)) {
            qv_atomic_abort(&a);
            rc = qv_fail(err, "%s: write failed: %s", path, strerror(errno));
        } else {
            rc = qv_atomic_commit(&a, err);
        }
    }
    free(path);
    return rc;
}

int ckpt_read_blob(const char *dir, const char *name, unsigned char **data, size_t *len,
                   qv_err *err)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = qv_malloc(n);
    snprintf(path, n, "%s/%s", dir, name);
    unsigned char *buf;
    size_t size;
    int rc = qv_read_file(path, &buf, &size, err);
    if (rc) {
        free(path);
        return -1;
    }
    uint64_t len64 = 0;
    uint32_t crc = 0;
    if (size < 20 || memcmp(buf, magic, 8) != 0)
        rc = qv_fail(err, "%s: not a qevo checkpoint file", path);
    if (rc == 0) {
        memcpy(&len64, buf + 8, 8);
        memcpy(&crc, buf + 16, 4);
        if (len64 != size - 20)
            rc = qv_fail(err, "%s: truncated: header says %llu bytes, file holds %zu", path,
                         (unsigned long long)len64, size - 20);
    }
    if (rc == 0) {
        uint32_t actual = (uint32_t)crc32(0L, Z_NULL, 0);
        for (size_t off = 0; off < len64;) {
            size_t chunk = len64 - off > (1u << 30) ? (1u << 30) : len64 - off;
            actual = (uint32_t)crc32(actual, buf + 20 + off, (uInt)chunk);
            off += chunk;
        }
        if (actual != crc)
            rc = qv_fail(err, "%s: checksum mismatch (corrupt file)", path);
    }
    if (rc == 0) {
        memmove(buf, buf + 20, len64);
        buf[len64] = 0; /* qv_read_file leaves room for it */
        *data = buf;
        *len = len64;
    } else {
        free(buf);
    }
    free(path);
    return rc;
}

static int cmp_names_desc(const void *a, const void *b)
{
    return strcmp(*(char *const *)b, *(char *const *)a);
}

/* Names of final checkpoint directories under root, newest first. */
static char **list_checkpoints(const char *root, int *count)
{
    *count = 0;
    DIR *d = opendir(root);
    if (!d)
        return NULL;
    char **names = NULL;
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "gen-", 4) != 0)
            continue;
        if (*count == cap) {
            cap = cap ? 2 * cap : 16;
            names = qv_realloc(names, sizeof(char *) * (size_t)cap);
        }
        names[(*count)++] = qv_strdup(e->d_name);
    }
    closedir(d);
    if (*count > 1) /* qsort of NULL, 0 is undefined */
        qsort(names, (size_t)*count, sizeof(char *), cmp_names_desc);
    return names;
}

void ckpt_abandon(const char *root, uint64_t gen)
{
    char *staging = ckpt_staging_dir(root, gen);
    remove_dir(staging);
    free(staging);
}

int ckpt_commit(const char *root, uint64_t gen, int keep, qv_err *err)
{
    char *staging = ckpt_staging_dir(root, gen), *final = ckpt_final_dir(root, gen);
    fsync_dir(staging);
    remove_dir(final); /* a checkpoint of the same generation from an earlier attempt */
    int rc = 0;
    if (rename(staging, final) != 0)
        rc = qv_fail(err, "%s: cannot rename to %s: %s", staging, final, strerror(errno));
    fsync_dir(root);
    free(staging);
    free(final);
    if (rc)
        return -1;
    int count;
    char **names = list_checkpoints(root, &count);
    for (int i = 0; i < count; i++) {
        if (i >= keep) {
            size_t n = strlen(root) + strlen(names[i]) + 2;
            char *p = qv_malloc(n);
            snprintf(p, n, "%s/%s", root, names[i]);
            remove_dir(p);
            free(p);
        }
        free(names[i]);
    }
    free(names);
    return 0;
}

char *ckpt_latest(const char *root, int (*check)(const char *dir, void *arg), void *arg,
                  int *skipped)
{
    *skipped = 0;
    int count;
    char **names = list_checkpoints(root, &count);
    char *found = NULL;
    for (int i = 0; i < count; i++) {
        if (!found) {
            size_t n = strlen(root) + strlen(names[i]) + 2;
            char *p = qv_malloc(n);
            snprintf(p, n, "%s/%s", root, names[i]);
            if (check(p, arg) == 0)
                found = p;
            else {
                free(p);
                (*skipped)++;
            }
        }
        free(names[i]);
    }
    free(names);
    return found;
}
