/*
 * shim.c - native launcher for the example servers (kv, sessions).
 *
 * Usage: kv-shim ADDR:PORT PROGRAM [ARGS...]
 *
 * Lockstep hands a guest its listening socket as fd 3 (WASI has no socket,
 * bind or listen). To run the very same C source natively, this launcher
 * does what Lockstep's host does: it binds and listens on ADDR:PORT, moves
 * the listener to fd 3, and execs PROGRAM, which then only accept()s on
 * fd 3. ADDR may be an IPv4 address, a bracketed IPv6 address ([::1]) or a
 * host name; PORT 0 picks a free port, which is printed on stderr as
 * "kv-shim: listening on ADDR:PORT" so tests can find it.
 *
 * SIGPIPE is set to ignored before the exec (the setting survives exec), so
 * a write to a closed connection fails with EPIPE, as it does under WASI,
 * instead of killing the server.
 */

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TARGET_FD 3

static void usage(void) {
    fprintf(stderr, "usage: kv-shim ADDR:PORT PROGRAM [ARGS...]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 3) usage();

    /* Split ADDR:PORT at the last colon; strip brackets from IPv6. */
    char *spec = strdup(argv[1]);
    char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!colon) usage();
    *colon = '\0';
    const char *host = spec, *port = colon + 1;
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']') usage();
        spec[n - 1] = '\0';
        host++;
    }

    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "kv-shim: %s: %s\n", argv[1], gai_strerror(gai));
        return 1;
    }

    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0) {
        perror("kv-shim: socket");
        return 1;
    }
    /* Restarting the server on the same port must not wait for TIME_WAIT. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        fprintf(stderr, "kv-shim: bind %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (listen(fd, 511) != 0) {
        perror("kv-shim: listen");
        return 1;
    }
    freeaddrinfo(res);

    /* Report the actual address, which matters when PORT was 0. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char h[INET6_ADDRSTRLEN + 2] = "?", p[16] = "?";
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV);
    fprintf(stderr, "kv-shim: listening on %s%s%s:%s\n", ss.ss_family == AF_INET6 ? "[" : "", h,
            ss.ss_family == AF_INET6 ? "]" : "", p);

    if (fd != TARGET_FD) {
        if (dup2(fd, TARGET_FD) < 0) {
            perror("kv-shim: dup2");
            return 1;
        }
        close(fd);
    }
    signal(SIGPIPE, SIG_IGN);
    execv(argv[2], argv + 2);
    fprintf(stderr, "kv-shim: exec %s: %s\n", argv[2], strerror(errno));
    return 127;
}
