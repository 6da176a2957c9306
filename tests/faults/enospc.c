/* LD_PRELOAD shim for tests: fsync of a file whose path contains $QEVO_FAIL_FSYNC fails
 * with ENOSPC, as it does on a full disk (qevo writes every file through an fsync before
 * it renames it into place, so this is where a full disk shows). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fsync(int fd)
{
    const char *match = getenv("QEVO_FAIL_FSYNC");
    if (match && match[0]) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) {
            path[n] = 0;
            if (strstr(path, match)) {
                errno = ENOSPC;
                return -1;
            }
        }
    }
    int (*real)(int);
    void *sym = dlsym(RTLD_NEXT, "fsync");
    memcpy(&real, &sym, sizeof real); /* POSIX's way from an object to a function pointer */
    return real(fd);
}
