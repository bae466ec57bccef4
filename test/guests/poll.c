/*
 * poll.c - checks poll() over WASI poll_oneoff with a listener, a
 * connection and timeouts. The listener is fd 3.
 *
 * Client protocol (the test harness): connect to the listener once, wait
 * about 100 ms, send "ping\n", read until "pong\n" arrives, then close the
 * connection. Connect only one client. The guest exits 0 when every check
 * passed. Timeline on the guest side:
 *   1. poll with no fds and a 100 ms timeout: sleeps >= 100 ms;
 *   2. poll on the listener until the client connects (POLLIN), accept;
 *   3. poll on the listener with timeout 0: nothing is ready, returns 0;
 *   4. POLLOUT on the new connection;
 *   5. POLLIN on the connection when "ping\n" arrives; recv it; send pong;
 *   6. after the client closes: POLLIN and/or POLLHUP, then recv returns 0.
 */
#define _DEFAULT_SOURCE /* clock_gettime, fcntl flags */
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define LISTENER 3

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void) {
    check_init();

    /* 1. A timeout-only poll sleeps at least the timeout. */
    int64_t t0 = mono_ms();
    int r = poll(NULL, 0, 100);
    int64_t el = mono_ms() - t0;
    CHECK("poll_timeout_only", r == 0, "poll returned %d (%s)", r, strerror(errno));
    CHECK("poll_timeout_sleeps", el >= 100, "slept %lld ms, want >= 100", (long long)el);

    /* 2. The listener becomes readable when the client connects. */
    struct pollfd p = {.fd = LISTENER, .events = POLLIN};
    r = poll(&p, 1, 10000);
    CHECK("poll_listener_pollin", r == 1 && (p.revents & POLLIN), "poll returned %d revents %#x",
          r, (unsigned)p.revents);
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    int c = accept(LISTENER, (struct sockaddr *)&addr, &alen);
    CHECK("accept", c >= 0, "accept: %s", strerror(errno));
    if (c < 0) return finish();

    /* 3. Nothing else will connect: a zero timeout returns 0 at once. */
    p.revents = 0;
    t0 = mono_ms();
    r = poll(&p, 1, 0);
    el = mono_ms() - t0;
    CHECK("poll_timeout0_nothing_ready", r == 0 && p.revents == 0, "poll returned %d revents %#x",
          r, (unsigned)p.revents);
    CHECK("poll_timeout0_immediate", el < 50, "took %lld ms", (long long)el);

    /* 4. A fresh connection is writable. */
    struct pollfd q = {.fd = c, .events = POLLOUT};
    r = poll(&q, 1, 1000);
    CHECK("pollout_connected", r == 1 && (q.revents & POLLOUT), "poll returned %d revents %#x", r,
          (unsigned)q.revents);

    /* 5. "ping\n" arrives after ~100 ms: wait for it with POLLIN. Both fds
     * in one poll: only the connection may be ready. */
    char buf[64];
    size_t got = 0;
    int first = 1;
    while (got < 5) {
        struct pollfd two[2] = {{.fd = LISTENER, .events = POLLIN}, {.fd = c, .events = POLLIN}};
        r = poll(two, 2, 10000);
        if (first) {
            CHECK("poll_conn_pollin", r == 1 && (two[1].revents & POLLIN) && two[0].revents == 0,
                  "poll returned %d revents listener %#x conn %#x", r, (unsigned)two[0].revents,
                  (unsigned)two[1].revents);
            first = 0;
        }
        if (r <= 0) break;
        ssize_t n = recv(c, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    CHECK("recv_ping", got == 5 && memcmp(buf, "ping\n", 5) == 0, "received %zu bytes \"%s\"",
          got, buf);
    CHECK("send_pong", send(c, "pong\n", 5, 0) == 5, "send: %s", strerror(errno));

    /* 6. The client closes after pong: readable (EOF) and maybe POLLHUP. */
    q.events = POLLIN;
    q.revents = 0;
    r = poll(&q, 1, 10000);
    printf("# after close: poll %d revents %#x\n", r, (unsigned)q.revents);
    CHECK("poll_reports_close", r == 1 && (q.revents & (POLLIN | POLLHUP)),
          "poll returned %d revents %#x", r, (unsigned)q.revents);
    ssize_t n = recv(c, buf, sizeof buf, 0);
    CHECK("recv_eof", n == 0, "recv returned %zd (%s)", n, n < 0 ? strerror(errno) : "data");
    CHECK_OK("close_conn", close(c));
    return finish();
}
