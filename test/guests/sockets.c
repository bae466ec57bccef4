/*
 * sockets.c - checks socket I/O on an accepted connection: blocking
 * accept, recv/send, read/write on the socket fd, MSG_PEEK, non-blocking
 * recv (EAGAIN), a 1 MiB send in partial writes, and shutdown(SHUT_WR).
 * The listener is fd 3.
 *
 * Client protocol (the test harness), on one connection:
 *   1. connect and send "hello" (5 bytes, no newline);
 *   2. read exactly 5 bytes: "world";
 *   3. read exactly 1048576 bytes where byte i is (i * 31 + 7) & 0xff;
 *   4. send any bytes and read the same bytes back (the guest echoes in
 *      order); repeat as wished; then shut down the write side (half-close,
 *      e.g. socket.end() in Node);
 *   5. read "bye\n", then EOF (the guest shut down its write side), close.
 * The guest prints "# echoed N bytes" and exits 0 when every check passed.
 * The client must send nothing between steps 1 and 2: the guest checks
 * that a non-blocking recv finds no data there.
 */
#define _DEFAULT_SOURCE /* clock_gettime, fcntl flags */
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

#define LISTENER 3
#define BIG (1024 * 1024)

static int set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

int main(void) {
    check_init();
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    int c = accept(LISTENER, (struct sockaddr *)&addr, &alen);
    CHECK("accept_blocking", c >= 0, "accept: %s", strerror(errno));
    if (c < 0) return finish();

    /* MSG_PEEK returns data without consuming it. */
    char buf[65536];
    ssize_t pk = recv(c, buf, 5, MSG_PEEK);
    CHECK("recv_peek", pk >= 1 && pk <= 5 && memcmp(buf, "hello", (size_t)pk) == 0,
          "peek returned %zd (%s)", pk, pk < 0 ? strerror(errno) : "data");

    size_t got = 0;
    while (got < 5) {
        ssize_t n = recv(c, buf + got, 5 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK("recv_hello", got == 5 && memcmp(buf, "hello", 5) == 0, "got %zu bytes", got);

    /* The client waits for "world": a non-blocking recv finds nothing. */
    CHECK_OK("set_nonblocking", set_nonblocking(c, 1));
    errno = 0;
    ssize_t n = recv(c, buf, sizeof buf, 0);
    CHECK("recv_nonblocking_eagain", n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK),
          "recv returned %zd errno %d (%s)", n, errno, strerror(errno));
    errno = 0;
    n = read(c, buf, sizeof buf);
    CHECK("read_nonblocking_eagain", n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK),
          "read returned %zd errno %d (%s)", n, errno, strerror(errno));

    /* write() works on a socket fd too (fd_write). */
    CHECK_OK("set_blocking", set_nonblocking(c, 0));
    CHECK("write_world", write(c, "world", 5) == 5, "write: %s", strerror(errno));

    /* 1 MiB with a non-blocking socket: partial sends and POLLOUT waits. */
    unsigned char *big = malloc(BIG);
    for (size_t i = 0; i < BIG; i++) big[i] = (unsigned char)((i * 31 + 7) & 0xff);
    set_nonblocking(c, 1);
    size_t sent = 0;
    int calls = 0, partial = 0, waits = 0, failed = 0;
    while (sent < BIG) {
        ssize_t s = send(c, big + sent, BIG - sent, 0);
        calls++;
        if (s < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                failed = errno;
                break;
            }
            struct pollfd p = {.fd = c, .events = POLLOUT};
            poll(&p, 1, 10000);
            waits++;
            continue;
        }
        if ((size_t)s < BIG - sent) partial++;
        sent += (size_t)s;
    }
    printf("# 1 MiB sent in %d calls (%d partial, %d POLLOUT waits)\n", calls, partial, waits);
    CHECK("send_1mib", sent == BIG && !failed, "sent %zu, error %s", sent,
          failed ? strerror(failed) : "none");
    free(big);
    set_nonblocking(c, 0);

    /* Echo with read() and send() until the client half-closes. */
    size_t echoed = 0;
    int echo_ok = 1;
    for (;;) {
        n = read(c, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) {
            echo_ok = 0;
            printf("# read failed: %s\n", strerror(errno));
            break;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            ssize_t s = send(c, buf + off, (size_t)n - off, 0);
            if (s <= 0) {
                echo_ok = 0;
                break;
            }
            off += (size_t)s;
        }
        if (!echo_ok) break;
        echoed += (size_t)n;
    }
    printf("# echoed %zu bytes\n", echoed);
    CHECK("echo_until_eof", echo_ok, "echo loop failed");
    CHECK("recv_after_eof_is_0", recv(c, buf, sizeof buf, 0) == 0, "second EOF read not 0");

    /* Our side: "bye\n", then SHUT_WR so the client reads EOF. */
    CHECK("send_bye", send(c, "bye\n", 4, 0) == 4, "send: %s", strerror(errno));
    CHECK_OK("shutdown_wr", shutdown(c, SHUT_WR));
    CHECK_OK("close", close(c));
    CHECK_ERR("recv_closed_ebadf", recv(c, buf, 1, 0), EBADF);
    return finish();
}
