/*
 * check.h - the tiny self-check framework shared by the C test guests.
 *
 * Every check prints one line, "ok <name>" or "FAIL <name>: <detail>", and
 * finish() returns the exit status: 0 only if no check failed. Lines that
 * start with "# " are information for humans (values, hex dumps) and are
 * not checks. Stdout is line-buffered so that the lines before a crash or
 * a kill are not lost in a buffer.
 */
#ifndef LOCKSTEP_TEST_CHECK_H
#define LOCKSTEP_TEST_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

static void check_init(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

/* CHECK(name, condition, printf-style detail shown on failure). */
#define CHECK(name, cond, ...)                                                                     \
    do {                                                                                           \
        check_count++;                                                                             \
        if (cond) {                                                                                \
            printf("ok %s\n", (name));                                                             \
        } else {                                                                                   \
            check_failures++;                                                                      \
            printf("FAIL %s: ", (name));                                                           \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* The call must succeed (return >= 0). */
#define CHECK_OK(name, expr)                                                                       \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long check_r_ = (long)(expr);                                                              \
        int check_e_ = errno;                                                                      \
        CHECK(name, check_r_ >= 0, "%s returned %ld, errno %d (%s)", #expr, check_r_, check_e_,   \
              strerror(check_e_));                                                                 \
    } while (0)

/* The call must fail with -1 and exactly this errno. */
#define CHECK_ERR(name, expr, want)                                                                \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long check_r_ = (long)(expr);                                                              \
        int check_e_ = errno;                                                                      \
        CHECK(name, check_r_ == -1 && check_e_ == (want),                                          \
              "%s returned %ld, errno %d (%s); want -1 with %s (%d)", #expr, check_r_, check_e_,  \
              strerror(check_e_), #want, (want));                                                  \
    } while (0)

/* The call must fail with -1 and one of two errno values. */
#define CHECK_ERR2(name, expr, want1, want2)                                                       \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long check_r_ = (long)(expr);                                                              \
        int check_e_ = errno;                                                                      \
        CHECK(name, check_r_ == -1 && (check_e_ == (want1) || check_e_ == (want2)),                \
              "%s returned %ld, errno %d (%s); want -1 with %s or %s", #expr, check_r_, check_e_, \
              strerror(check_e_), #want1, #want2);                                                 \
    } while (0)

static int finish(void) {
    printf("# %d checks, %d failed\n", check_count, check_failures);
    fflush(stdout);
    return check_failures ? 1 : 0;
}

#endif
