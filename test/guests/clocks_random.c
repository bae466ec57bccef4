/*
 * clocks_random.c - checks clocks, sleeping and randomness through WASI
 * (clock_time_get, clock_res_get, poll_oneoff, random_get). No arguments,
 * no preopens. It sleeps about 150 ms in total.
 */
#define _DEFAULT_SOURCE /* arc4random, getentropy, usleep */
#include <stdint.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static int64_t ns(clockid_t id) {
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

int main(void) {
    check_init();
    struct timespec ts;

    /* Wall clock: after 2020-01-01 and before 2200-01-01. */
    CHECK_OK("realtime_gettime", clock_gettime(CLOCK_REALTIME, &ts));
    printf("# realtime %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
    CHECK("realtime_plausible", ts.tv_sec > 1577836800LL && ts.tv_sec < 7258118400LL,
          "tv_sec %lld", (long long)ts.tv_sec);
    CHECK("realtime_nsec_range", ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000L, "tv_nsec %ld",
          ts.tv_nsec);
    time_t t = time(NULL);
    CHECK("time_matches_realtime", t >= ts.tv_sec && t - ts.tv_sec < 5, "time() %lld vs %lld",
          (long long)t, (long long)ts.tv_sec);
    struct timeval tv;
    CHECK_OK("gettimeofday", gettimeofday(&tv, NULL));
    CHECK("gettimeofday_matches", tv.tv_sec >= ts.tv_sec && tv.tv_sec - ts.tv_sec < 5,
          "gettimeofday %lld", (long long)tv.tv_sec);

    /* Monotonic clock: never decreases over many calls. */
    CHECK_OK("monotonic_gettime", clock_gettime(CLOCK_MONOTONIC, &ts));
    int64_t prev = ns(CLOCK_MONOTONIC), worst = 0;
    int backwards = 0;
    for (int i = 0; i < 10000; i++) {
        int64_t now = ns(CLOCK_MONOTONIC);
        if (now < prev) {
            backwards++;
            if (prev - now > worst) worst = prev - now;
        }
        prev = now;
    }
    CHECK("monotonic_nondecreasing", backwards == 0, "%d steps backwards, worst %lld ns",
          backwards, (long long)worst);

    /* Resolutions exist and are sane (positive, at most one second). */
    struct timespec res;
    CHECK_OK("realtime_getres", clock_getres(CLOCK_REALTIME, &res));
    CHECK("realtime_res_sane", res.tv_sec == 0 && res.tv_nsec > 0, "res %lld.%09ld",
          (long long)res.tv_sec, res.tv_nsec);
    CHECK_OK("monotonic_getres", clock_getres(CLOCK_MONOTONIC, &res));
    CHECK("monotonic_res_sane", res.tv_sec == 0 && res.tv_nsec > 0, "res %lld.%09ld",
          (long long)res.tv_sec, res.tv_nsec);

    /* Sleeping lasts at least the requested time on the monotonic clock. */
    int64_t t0 = ns(CLOCK_MONOTONIC);
    struct timespec req = {0, 50 * 1000000L};
    CHECK_OK("nanosleep", nanosleep(&req, NULL));
    int64_t slept = ns(CLOCK_MONOTONIC) - t0;
    printf("# nanosleep(50ms) took %lld ns\n", (long long)slept);
    CHECK("nanosleep_duration", slept >= 50 * 1000000LL, "slept %lld ns", (long long)slept);

    t0 = ns(CLOCK_MONOTONIC);
    CHECK_OK("usleep", usleep(30000));
    slept = ns(CLOCK_MONOTONIC) - t0;
    CHECK("usleep_duration", slept >= 30 * 1000000LL, "slept %lld ns", (long long)slept);

    t0 = ns(CLOCK_MONOTONIC);
    req.tv_nsec = 40 * 1000000L;
    CHECK("clock_nanosleep_monotonic", clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL) == 0,
          "failed");
    slept = ns(CLOCK_MONOTONIC) - t0;
    CHECK("clock_nanosleep_duration", slept >= 40 * 1000000LL, "slept %lld ns", (long long)slept);

    t0 = ns(CLOCK_MONOTONIC);
    req.tv_nsec = 0;
    CHECK_OK("nanosleep_zero", nanosleep(&req, NULL));

    /* getentropy: random bytes, different each call, at most 256 bytes. */
    unsigned char a[32], b[32];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    CHECK_OK("getentropy", getentropy(a, sizeof a));
    CHECK_OK("getentropy_again", getentropy(b, sizeof b));
    CHECK("getentropy_not_zero", !all_zero(a, sizeof a), "32 zero bytes");
    CHECK("getentropy_differs", memcmp(a, b, sizeof a) != 0, "two calls gave the same bytes");
    unsigned char big[257];
    CHECK_OK("getentropy_256", getentropy(big, 256));
    CHECK_ERR("getentropy_257_eio", getentropy(big, 257), EIO);

    /* arc4random: seeded from random_get. */
    unsigned char c[64], d[64];
    memset(c, 0, sizeof c);
    memset(d, 0, sizeof d);
    arc4random_buf(c, sizeof c);
    arc4random_buf(d, sizeof d);
    CHECK("arc4random_buf_not_zero", !all_zero(c, sizeof c), "64 zero bytes");
    CHECK("arc4random_buf_differs", memcmp(c, d, sizeof c) != 0, "two calls gave the same bytes");
    uint32_t r1 = arc4random(), r2 = arc4random(), r3 = arc4random();
    CHECK("arc4random_differs", !(r1 == r2 && r2 == r3), "three equal values %u", r1);
    uint32_t u = arc4random_uniform(10);
    CHECK("arc4random_uniform_range", u < 10, "value %u", u);

    /* CLOCK_PROCESS_CPUTIME_ID goes to the host as WASI clock id 2. Either
     * answer is allowed: a non-negative time, or an error (EINVAL, ENOTSUP
     * or ENOSYS) if the host does not offer process time. */
    errno = 0;
    int rc = clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    int err = errno;
    if (rc == 0)
        printf("# process cputime %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
    else
        printf("# process cputime unavailable: errno %d (%s)\n", err, strerror(err));
    CHECK("process_cputime_defined",
          (rc == 0 && ts.tv_sec >= 0) ||
              (rc == -1 && (err == EINVAL || err == ENOTSUP || err == ENOSYS)),
          "rc %d errno %d (%s)", rc, err, strerror(err));
    return finish();
}
