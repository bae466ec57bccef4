/*
 * idle_poll.c - an idle event loop: reads the monotonic clock, then sleeps
 * in poll() on no descriptors with a 1000 ms timeout, forever. It never
 * exits by itself and prints one line at start ("idle_poll: started").
 *
 * bench/record.mjs records it to measure what an idle guest costs in event
 * log bytes per second (the target: at most 100 B/s). wasi-libc's
 * poll() with nfds 0 becomes a poll_oneoff with one REALTIME relative clock
 * subscription, so each turn is two host calls: clock_time_get and
 * poll_oneoff.
 *
 * With argv[1] = N it stops after N turns and exits 0 (for tests).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long turns = argc > 1 ? atol(argv[1]) : -1;
    printf("idle_poll: started\n");
    fflush(stdout);
    struct timespec ts;
    for (long i = 0; turns < 0 || i < turns; i++) {
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
            perror("clock_gettime");
            return 1;
        }
        if (poll(NULL, 0, 1000) < 0) {
            perror("poll");
            return 1;
        }
    }
    return 0;
}
