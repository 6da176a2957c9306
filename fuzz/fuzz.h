/* Shared by the libFuzzer harnesses in fuzz/ (one translation unit each; header-only).
 *
 * The readers under test take file paths, so a harness writes each input to a file in a
 * private folder of its process ($TMPDIR, else /dev/shm, else /tmp: qevo-fuzz-PID-XXXXXX),
 * calls the reader, and deletes the file again; the folder is removed at exit. Inputs
 * that hold several files are split into chunks: a 2-byte little-endian length, then
 * that many bytes (a length beyond the end of the input takes what is left). Every
 * harness frees everything it allocates, so memory does not grow from input to input.
 *
 * A harness aborts (FUZZ_CHECK) only when a reader breaks its own contract, such as
 * accepting a file and then returning something inconsistent; a rejected input is the
 * normal, uninteresting case. */
#ifndef QEVO_FUZZ_H
#define QEVO_FUZZ_H

#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A contract violation found by a harness: a crash for libFuzzer. */
#define FUZZ_CHECK(cond)                                                               \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "fuzz: %s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                            \
            abort();                                                                   \
        }                                                                              \
    } while (0)

static char fuzz_dir_path[512];

static inline void fuzz_dir_remove(void)
{
    if (fuzz_dir_path[0])
        rmdir(fuzz_dir_path); /* harnesses delete their files; only the folder is left */
}

/* The process's private folder (created on first use). */
static inline const char *fuzz_dir(void)
{
    if (fuzz_dir_path[0])
        return fuzz_dir_path;
    const char *base = getenv("TMPDIR");
    struct stat st;
    if (!base || !*base || stat(base, &st) != 0 || !S_ISDIR(st.st_mode))
        base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/qevo-fuzz-%ld-XXXXXX", base,
             (long)getpid());
    if (!mkdtemp(fuzz_dir_path)) {
        perror(fuzz_dir_path);
        abort();
    }
    atexit(fuzz_dir_remove);
    return fuzz_dir_path;
}

/* dir/name into buf. */
static inline void fuzz_path(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", fuzz_dir(), name);
    if (n < 0 || (size_t)n >= cap)
        abort();
}

static inline void fuzz_write(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* With QEVO_FUZZ_VERBOSE set, each reader's verdict on each input goes to stderr (to see
 * what a seed or a crash input reaches). */
static inline void fuzz_note(const char *reader, int rc, const char *msg)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("QEVO_FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "fuzz: %s: %s\n", reader, rc == 0 ? "accepted" : msg);
}

/* A reader over the input: one control byte, then chunks. */
typedef struct {
    const uint8_t *p;
    size_t left;
} fuzz_in;

static inline uint8_t fuzz_byte(fuzz_in *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

/* The next chunk; returns 0 if the input holds none (not even its length). */
static inline int fuzz_chunk(fuzz_in *in, const uint8_t **data, size_t *len)
{
    if (in->left < 2)
        return 0;
    size_t n = (size_t)in->p[0] | (size_t)in->p[1] << 8;
    in->p += 2;
    in->left -= 2;
    if (n > in->left)
        n = in->left;
    *data = in->p;
    *len = n;
    in->p += n;
    in->left -= n;
    return 1;
}

/* A malloc'd, 0-terminated copy. */
static inline char *fuzz_strndup(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    if (!s)
        abort();
    if (len)
        memcpy(s, data, len);
    s[len] = 0;
    return s;
}

#endif
