/* Minimal test harness: CHECK counts passes and failures; TEST_END prints
 * "<name>: N passed, N failed" (tests/run.sh adds these up) and sets the exit status. */
#ifndef QEVO_TEST_H
#define QEVO_TEST_H

#include <math.h>
#include <stdio.h>

static int test_passed, test_failed;

#define CHECK(cond) CHECKF(cond, "%s", #cond)

#define CHECKF(cond, ...)                                                              \
    do {                                                                               \
        if (cond) {                                                                    \
            test_passed++;                                                             \
        } else {                                                                       \
            test_failed++;                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                      \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
        }                                                                              \
    } while (0)

/* |a - b| <= tol * max(1, |b|) */
#define CHECK_NEAR(a, b, tol)                                                          \
    CHECKF(fabs((double)(a) - (double)(b)) <= (tol) * fmax(1.0, fabs((double)(b))),   \
           "%s = %.9g, expected %.9g (tol %g)", #a, (double)(a), (double)(b), (double)(tol))

#define TEST_END(name)                                                                 \
    do {                                                                               \
        printf("%s: %d passed, %d failed\n", name, test_passed, test_failed);          \
        return test_failed ? 1 : 0;                                                    \
    } while (0)

#endif
