/*
 * sessions.c - an example guest that exercises timers, randomness and both
 * clocks: an in-memory session store with expiry, served on fd 3.
 *
 * Under Lockstep every one of these inputs is a WASI call (poll_oneoff for
 * timers, random_get for ids, clock_time_get for time), so a recorded run
 * replays to the same ids, the same expiries and the same output.
 *
 * Protocol: text lines over TCP, one request per line (LF or CRLF), one
 * reply line per request. Replies start with "OK" or "ERR".
 *
 *   NEW <ttl_ms>   create a session living ttl_ms milliseconds (1 .. 2^31-1)
 *                  -> OK <id>        id: 32 lower-case hex digits (128 bits
 *                                    from getentropy)
 *   GET <id>       -> OK <remaining_ms>       or ERR not found
 *   TOUCH <id>     restart the session's ttl from now
 *                  -> OK <ttl_ms>             or ERR not found
 *   DEL <id>       -> OK 1 (deleted)          or OK 0 (no such session)
 *   COUNT          -> OK <live sessions>
 *   TIME           -> OK <monotonic_ns> <realtime_ns>
 *                     (CLOCK_MONOTONIC and CLOCK_REALTIME, in nanoseconds)
 *   QUIT           -> OK bye, then the server closes the connection
 *   anything else  -> ERR unknown command
 *   a line over 1024 bytes -> ERR line too long, then the server closes.
 *
 * Expiry: sessions sit in a min-heap ordered by deadline (monotonic ms).
 * The poll() timeout is the time to the earliest deadline, so sessions are
 * removed on time even when no client talks, and an expired session is
 * never visible (GET/TOUCH also check the deadline).
 *
 * Stderr: one start-up line, then every stats interval a line
 *   sessions: live=N created=N expired=N clients=N
 * The interval is 10000 ms, or SESSIONS_STATS_MS from the environment, or
 * the first argument (milliseconds; 0 disables the stats lines).
 */

/* getentropy() is a BSD extension in both glibc and wasi-libc. */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_FD 3
#define MAX_LINE 1024

/* ------------------------------------------------------------------------ */

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) {
        fputs("sessions: out of memory\n", stderr);
        exit(1);
    }
    return q;
}

static int64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t mono_ms(void) { return clock_ns(CLOCK_MONOTONIC) / 1000000; }

/* ------------------------------------------------------------------------ */
/* Sessions: a hash table by id plus a min-heap by deadline                 */
/* ------------------------------------------------------------------------ */

typedef struct session {
    unsigned char id[16];
    int64_t ttl_ms;
    int64_t deadline; /* monotonic ms */
    size_t heap_pos;
    struct session *next; /* hash chain */
} session_t;

static session_t **table;
static size_t table_size; /* power of two */
static session_t **heap;
static size_t heap_len, heap_cap;
static uint64_t created, expired;

/* The ids are uniformly random, so their first bytes are already a good
 * hash. */
static size_t slot_in(const unsigned char *id, size_t size) {
    uint64_t h;
    memcpy(&h, id, sizeof h);
    return (size_t)(h & (size - 1));
}

static size_t slot_of(const unsigned char *id) { return slot_in(id, table_size); }

static void heap_swap(size_t a, size_t b) {
    session_t *t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
    heap[a]->heap_pos = a;
    heap[b]->heap_pos = b;
}

static void heap_up(size_t i) {
    while (i > 0 && heap[(i - 1) / 2]->deadline > heap[i]->deadline) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && heap[l]->deadline < heap[m]->deadline) m = l;
        if (r < heap_len && heap[r]->deadline < heap[m]->deadline) m = r;
        if (m == i) return;
        heap_swap(i, m);
        i = m;
    }
}

static void table_grow(void) {
    size_t n = table_size ? table_size * 2 : 256;
    session_t **t = calloc(n, sizeof *t);
    if (!t) {
        fputs("sessions: out of memory\n", stderr);
        exit(1);
    }
    for (size_t i = 0; i < table_size; i++) {
        while (table[i]) {
            session_t *s = table[i];
            table[i] = s->next;
            size_t j = slot_in(s->id, n);
            s->next = t[j];
            t[j] = s;
        }
    }
    free(table);
    table = t;
    table_size = n;
}

static session_t *find(const unsigned char *id) {
    for (session_t *s = table[slot_of(id)]; s; s = s->next)
        if (memcmp(s->id, id, 16) == 0) return s;
    return NULL;
}

static void remove_session(session_t *s) {
    session_t **link = &table[slot_of(s->id)];
    while (*link != s) link = &(*link)->next;
    *link = s->next;
    size_t i = s->heap_pos;
    heap_len--;
    if (i != heap_len) {
        heap[i] = heap[heap_len];
        heap[i]->heap_pos = i;
        heap_up(i);
        heap_down(heap[i]->heap_pos);
    }
    free(s);
}

static session_t *create(int64_t ttl_ms) {
    session_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    /* 128 random bits; a collision is astronomically unlikely, but a
     * repeat draw keeps ids unique regardless. */
    do {
        if (getentropy(s->id, sizeof s->id) != 0) {
            free(s);
            return NULL;
        }
    } while (find(s->id));
    s->ttl_ms = ttl_ms;
    s->deadline = mono_ms() + ttl_ms;
    if (heap_len + 1 > table_size) table_grow();
    size_t j = slot_of(s->id);
    s->next = table[j];
    table[j] = s;
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 256;
        heap = xrealloc(heap, heap_cap * sizeof *heap);
    }
    s->heap_pos = heap_len;
    heap[heap_len++] = s;
    heap_up(s->heap_pos);
    created++;
    return s;
}

/* Removes every session whose deadline has passed. */
static void expire_due(void) {
    int64_t now = mono_ms();
    while (heap_len > 0 && heap[0]->deadline <= now) {
        remove_session(heap[0]);
        expired++;
    }
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int fd;
    char in[MAX_LINE + 2];
    size_t in_len;
    char *out;
    size_t out_len, out_off, out_cap;
    int closing, dead;
} client_t;

static client_t **clients;
static size_t nclients, clients_cap;

static void emit(client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(client_t *c, const char *fmt, ...) {
    char line[160];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (c->out_len + (size_t)n > c->out_cap) {
        c->out_cap = (c->out_len + (size_t)n) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, line, (size_t)n);
    c->out_len += (size_t)n;
}

static void hex_id(const unsigned char *id, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[32] = '\0';
}

static int parse_id(const char *s, unsigned char *id) {
    if (strlen(s) != 32) return 0;
    for (int i = 0; i < 32; i++) {
        char ch = s[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (v < 0) return 0;
        if (i % 2 == 0)
            id[i / 2] = (unsigned char)(v << 4);
        else
            id[i / 2] |= (unsigned char)v;
    }
    return 1;
}

static void handle_line(client_t *c, char *line) {
    /* Expire first, so a request never sees a session past its deadline. */
    expire_due();
    char *cmd = strtok(line, " \t");
    char *arg = strtok(NULL, " \t");
    if (!cmd) {
        emit(c, "ERR empty request");
        return;
    }
    unsigned char id[16];
    if (strcmp(cmd, "NEW") == 0) {
        char *end;
        long long ttl = arg ? strtoll(arg, &end, 10) : 0;
        if (!arg || *end || ttl < 1 || ttl > INT32_MAX) {
            emit(c, "ERR usage: NEW <ttl_ms>");
            return;
        }
        session_t *s = create(ttl);
        if (!s) {
            emit(c, "ERR cannot create session");
            return;
        }
        char hex[33];
        hex_id(s->id, hex);
        emit(c, "OK %s", hex);
    } else if (strcmp(cmd, "GET") == 0 || strcmp(cmd, "TOUCH") == 0 || strcmp(cmd, "DEL") == 0) {
        if (!arg || !parse_id(arg, id)) {
            emit(c, "ERR usage: %s <id>", cmd);
            return;
        }
        session_t *s = find(id);
        if (cmd[0] == 'D') {
            if (s) remove_session(s);
            emit(c, "OK %d", s != NULL);
        } else if (!s) {
            emit(c, "ERR not found");
        } else if (cmd[0] == 'G') {
            emit(c, "OK %" PRId64, s->deadline - mono_ms());
        } else {
            s->deadline = mono_ms() + s->ttl_ms;
            heap_down(s->heap_pos);
            emit(c, "OK %" PRId64, s->ttl_ms);
        }
    } else if (strcmp(cmd, "COUNT") == 0) {
        emit(c, "OK %zu", heap_len);
    } else if (strcmp(cmd, "TIME") == 0) {
        int64_t mono = clock_ns(CLOCK_MONOTONIC);
        int64_t real = clock_ns(CLOCK_REALTIME);
        emit(c, "OK %" PRId64 " %" PRId64, mono, real);
    } else if (strcmp(cmd, "QUIT") == 0) {
        emit(c, "OK bye");
        c->closing = 1;
    } else {
        emit(c, "ERR unknown command");
    }
}

static void read_client(client_t *c) {
    ssize_t n = recv(c->fd, c->in + c->in_len, MAX_LINE + 1 - c->in_len, 0);
    if (n == 0) {
        c->closing = 1;
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->dead = 1;
        return;
    }
    c->in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < c->in_len && !c->closing; i++) {
        if (c->in[i] != '\n') continue;
        size_t end = i;
        if (end > start && c->in[end - 1] == '\r') end--;
        c->in[end] = '\0';
        handle_line(c, c->in + start);
        start = i + 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len > MAX_LINE && !c->closing) {
        emit(c, "ERR line too long");
        c->closing = 1;
    }
}

static void write_client(client_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->dead = 1;
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
}

static void accept_client(void) {
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    int fd = accept(LISTEN_FD, (struct sockaddr *)&addr, &alen);
    if (fd < 0) return;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        close(fd);
        return;
    }
    client_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    if (nclients == clients_cap) {
        clients_cap = clients_cap ? clients_cap * 2 : 16;
        clients = xrealloc(clients, clients_cap * sizeof *clients);
    }
    clients[nclients++] = c;
}

int main(int argc, char **argv) {
    int64_t stats_ms = 10000;
    const char *env = getenv("SESSIONS_STATS_MS");
    if (argc > 1)
        stats_ms = strtoll(argv[1], NULL, 10);
    else if (env && *env)
        stats_ms = strtoll(env, NULL, 10);
    if (stats_ms < 0) stats_ms = 0;

    table_grow();
    fprintf(stderr, "sessions: listening on fd %d, stats every %" PRId64 " ms\n", LISTEN_FD,
            stats_ms);

    int64_t next_stats = mono_ms() + stats_ms;
    struct pollfd *pfds = NULL;
    size_t pfds_cap = 0;
    for (;;) {
        if (pfds_cap < nclients + 1) {
            pfds_cap = (nclients + 1) * 2;
            pfds = xrealloc(pfds, pfds_cap * sizeof *pfds);
        }
        pfds[0] = (struct pollfd){.fd = LISTEN_FD, .events = POLLIN};
        for (size_t i = 0; i < nclients; i++) {
            client_t *c = clients[i];
            short ev = c->closing ? 0 : POLLIN;
            if (c->out_len > c->out_off || ev == 0) ev |= POLLOUT;
            pfds[i + 1] = (struct pollfd){.fd = c->fd, .events = ev};
        }

        /* Sleep until the earliest of: next expiry, next stats line. */
        int64_t now = mono_ms();
        int64_t wake = -1;
        if (heap_len > 0) wake = heap[0]->deadline;
        if (stats_ms > 0 && (wake < 0 || next_stats < wake)) wake = next_stats;
        int timeout = -1;
        if (wake >= 0) {
            int64_t d = wake - now;
            timeout = d < 0 ? 0 : d > INT32_MAX ? INT32_MAX : (int)d;
        }

        if (poll(pfds, (nfds_t)(nclients + 1), timeout) < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "sessions: poll: %s\n", strerror(errno));
            return 1;
        }

        expire_due();
        size_t n = nclients;
        for (size_t i = 0; i < n; i++) {
            client_t *c = clients[i];
            short re = pfds[i + 1].revents;
            if ((pfds[i + 1].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR)))
                read_client(c);
            else if (re & (POLLERR | POLLNVAL))
                c->dead = 1;
        }
        size_t kept = 0;
        for (size_t i = 0; i < nclients; i++) {
            client_t *c = clients[i];
            if (!c->dead) write_client(c);
            if (c->dead || (c->closing && c->out_off == c->out_len)) {
                close(c->fd);
                free(c->out);
                free(c);
            } else {
                clients[kept++] = c;
            }
        }
        nclients = kept;
        if (pfds[0].revents & POLLIN) accept_client();

        if (stats_ms > 0 && mono_ms() >= next_stats) {
            fprintf(stderr,
                    "sessions: live=%zu created=%" PRIu64 " expired=%" PRIu64 " clients=%zu\n",
                    heap_len, created, expired, nclients);
            next_stats += stats_ms;
            if (next_stats <= mono_ms()) next_stats = mono_ms() + stats_ms;
        }
    }
}
