/*
 * kv.c - Lockstep's flagship example guest: a Redis-protocol key-value server.
 *
 * The same source builds two ways:
 *   - for wasm32-wasi with clang + wasi-libc, where Lockstep preopens the
 *     listening socket as fd 3 and the VM's disk as /data;
 *   - natively with gcc, started by native/shim.c, which binds a TCP port,
 *     moves the listener to fd 3 and execs this program.
 * WASI preview1 has no socket(), bind() or listen(), so the server never
 * creates its listener: it only accept()s on fd 3.
 *
 * What it does:
 *   - speaks RESP2 (multibulk and inline requests, pipelining) to many
 *     clients at once from a single poll() loop, with non-blocking client
 *     sockets and bounded per-client buffers;
 *   - keeps binary-safe string keys and values in a hash table that grows;
 *   - answers the commands that redis-cli, redis-benchmark 7.0 and ioredis
 *     send (see the command table near the end of this file);
 *   - logs every mutating command to an append-only file in RESP format,
 *     fsynced per policy (always, everysec, no), and replays that file at
 *     start, truncating a torn last record.
 *
 * Configuration (an argument wins over the environment):
 *   --dir DIR        or KV_DIR=DIR          data folder (default /data)
 *   --fsync POLICY   or KV_FSYNC=POLICY     always | everysec | no
 *                                            (default everysec)
 *   --max-bulk BYTES or KV_MAX_BULK=BYTES   largest accepted argument
 *                                            (default 512 MiB, as Redis)
 *
 * Determinism: every input reaches this program through a WASI call
 * (accept, recv, clock_gettime, file reads). It uses no threads, no
 * randomness and no address-dependent ordering, so a recorded run replays
 * exactly.
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The listener is always fd 3: Lockstep's first --listen, or the shim's dup2. */
#define LISTEN_FD 3

/* Reads are done in chunks of at least this size, so small requests do not
 * cost one recv() each but idle clients do not pin large buffers. */
#define READ_CHUNK (16 * 1024)

/* A client whose pending replies exceed this stops being read until they
 * drain. This bounds the output buffer for pipelined floods (a single large
 * reply can still exceed it, since a reply is never split). */
#define OUT_HIGH_WATER (1024 * 1024)

/* Redis' limits for the parts of a request that are not bulk payloads. */
#define MAX_INLINE (64 * 1024)
#define MAX_MULTIBULK (1024 * 1024)

/* Initial number of hash buckets; the table doubles whenever the number of
 * keys exceeds the number of buckets. */
#define INITIAL_BUCKETS 1024

/* Expired keys are removed lazily on access and by a sweep that visits this
 * many buckets per loop turn (at least every EXPIRE_SWEEP_MS while any key
 * has a time to live). */
#define EXPIRE_SWEEP_BUCKETS 256
#define EXPIRE_SWEEP_MS 100

/* ------------------------------------------------------------------------ */
/* Small utilities                                                          */
/* ------------------------------------------------------------------------ */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("kv: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory (%zu bytes)", n);
    return q;
}

/* Milliseconds on the monotonic clock: used for fsync pacing and sweeps,
 * which must not jump when the wall clock is set. */
static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds since the epoch: key expiry times are absolute wall-clock
 * times (as Redis' PXAT), so they keep their meaning across restarts. */
static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A growable byte buffer. Bytes in [off, len) are pending; consumed bytes
 * before off are reclaimed by buf_compact() rather than on every read, so
 * pipelined requests are not moved once per command. */
typedef struct {
    char *data;
    size_t len, cap, off;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->cap - b->len >= extra) return;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_append(buf_t *b, const void *p, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_printf(buf_t *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_append(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Drops consumed bytes, and gives memory back when a burst has passed, so
 * an idle connection does not keep a large buffer. */
static void buf_compact(buf_t *b) {
    if (b->off == 0) return;
    size_t pending = b->len - b->off;
    if (pending) memmove(b->data, b->data + b->off, pending);
    b->len = pending;
    b->off = 0;
    if (b->cap > 4 * READ_CHUNK && pending < b->cap / 8) {
        size_t cap = pending > READ_CHUNK ? pending : READ_CHUNK;
        b->data = xrealloc(b->data, cap);
        b->cap = cap;
    }
}

static void buf_free(buf_t *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Parses a whole decimal int64 the way Redis' string2ll does: optional '-',
 * no '+', no spaces, no leading zeros, no overflow. */
static int parse_ll(const char *s, size_t n, int64_t *out) {
    if (n == 0 || n > 20) return 0;
    size_t i = 0;
    int neg = 0;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1) return 0;
    }
    if (s[i] == '0' && n - i > 1) return 0;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return 0;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX) return 0;
        *out = (int64_t)v;
    }
    return 1;
}

/* ASCII case-insensitive comparison of a length-delimited argument with a
 * NUL-terminated lower-case name. */
static int arg_is(const char *a, size_t n, const char *name) {
    size_t i = 0;
    for (; i < n && name[i]; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != name[i]) return 0;
    }
    return i == n && name[i] == '\0';
}

/* Glob matching as Redis' stringmatchlen (used by KEYS and CONFIG GET):
 * '*', '?', '[...]' with ranges and '^', and '\' escapes. */
static int glob_match(const char *p, size_t pn, const char *s, size_t sn, int nocase) {
    while (pn > 0) {
        switch (p[0]) {
        case '*':
            while (pn > 1 && p[1] == '*') {
                p++;
                pn--;
            }
            if (pn == 1) return 1;
            for (size_t k = 0; k <= sn; k++)
                if (glob_match(p + 1, pn - 1, s + k, sn - k, nocase)) return 1;
            return 0;
        case '?':
            if (sn == 0) return 0;
            s++;
            sn--;
            break;
        case '[': {
            if (sn == 0) return 0;
            p++;
            pn--;
            int negate = pn > 0 && p[0] == '^';
            if (negate) {
                p++;
                pn--;
            }
            int match = 0;
            while (pn > 0 && p[0] != ']') {
                if (p[0] == '\\' && pn >= 2) {
                    p++;
                    pn--;
                    if (p[0] == s[0]) match = 1;
                } else if (pn >= 3 && p[1] == '-') {
                    unsigned char lo = (unsigned char)p[0], hi = (unsigned char)p[2];
                    unsigned char c = (unsigned char)s[0];
                    if (lo > hi) {
                        unsigned char t = lo;
                        lo = hi;
                        hi = t;
                    }
                    if (c >= lo && c <= hi) match = 1;
                    p += 2;
                    pn -= 2;
                } else if (p[0] == s[0]) {
                    match = 1;
                }
                p++;
                pn--;
            }
            if (pn == 0) return 0; /* unterminated class: no match */
            if (negate) match = !match;
            if (!match) return 0;
            s++;
            sn--;
            break;
        }
        case '\\':
            if (pn >= 2) {
                p++;
                pn--;
            }
            /* fall through */
        default: {
            if (sn == 0) return 0;
            char a = p[0], b = s[0];
            if (nocase) {
                if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
                if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
            }
            if (a != b) return 0;
            s++;
            sn--;
            break;
        }
        }
        p++;
        pn--;
    }
    return sn == 0;
}

/* ------------------------------------------------------------------------ */
/* The key space: a chained hash table that doubles as it fills             */
/* ------------------------------------------------------------------------ */

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expire_at; /* wall-clock ms, or -1 for no expiry */
    char *val;
    size_t vlen;
    size_t klen;
    char key[]; /* klen bytes, not NUL-terminated (keys are binary) */
} entry_t;

static struct {
    entry_t **buckets;
    size_t nbuckets; /* always a power of two */
    size_t count;
    size_t expires; /* how many entries have an expiry */
    size_t sweep_cursor;
} db;

/* FNV-1a: simple, and deterministic across hosts (no random seed), which
 * keeps iteration order (KEYS) identical on a replaying backup. */
static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void db_init(void) {
    db.nbuckets = INITIAL_BUCKETS;
    db.buckets = calloc(db.nbuckets, sizeof *db.buckets);
    if (!db.buckets) die("out of memory");
}

static void db_grow(void) {
    size_t n = db.nbuckets * 2;
    entry_t **nb = calloc(n, sizeof *nb);
    if (!nb) return; /* keep the old table: slower, but still correct */
    for (size_t i = 0; i < db.nbuckets; i++) {
        entry_t *e = db.buckets[i];
        while (e) {
            entry_t *next = e->next;
            size_t j = (size_t)(e->hash & (n - 1));
            e->next = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    free(db.buckets);
    db.buckets = nb;
    db.nbuckets = n;
    db.sweep_cursor = 0;
}

static void entry_free(entry_t *e) {
    free(e->val);
    free(e);
}

/* Unlinks and frees the entry that *link points to. */
static void db_unlink(entry_t **link) {
    entry_t *e = *link;
    *link = e->next;
    if (e->expire_at >= 0) db.expires--;
    db.count--;
    entry_free(e);
}

/* Finds a live key. An expired key found on the way is deleted, so callers
 * never see it. */
static entry_t *db_find(const char *k, size_t kn) {
    uint64_t h = hash_bytes(k, kn);
    entry_t **link = &db.buckets[h & (db.nbuckets - 1)];
    while (*link) {
        entry_t *e = *link;
        if (e->hash == h && e->klen == kn && memcmp(e->key, k, kn) == 0) {
            if (e->expire_at >= 0 && e->expire_at <= wall_ms()) {
                db_unlink(link);
                return NULL;
            }
            return e;
        }
        link = &e->next;
    }
    return NULL;
}

static int db_delete(const char *k, size_t kn) {
    uint64_t h = hash_bytes(k, kn);
    entry_t **link = &db.buckets[h & (db.nbuckets - 1)];
    while (*link) {
        entry_t *e = *link;
        if (e->hash == h && e->klen == kn && memcmp(e->key, k, kn) == 0) {
            int live = !(e->expire_at >= 0 && e->expire_at <= wall_ms());
            db_unlink(link);
            return live;
        }
        link = &e->next;
    }
    return 0;
}

static void entry_set_expire(entry_t *e, int64_t at) {
    if (e->expire_at >= 0) db.expires--;
    e->expire_at = at;
    if (at >= 0) db.expires++;
}

/* Stores a copy of the value, creating the key if needed. The value buffer
 * is taken over (not copied) to avoid a second copy of large values. */
static entry_t *db_set_owned(const char *k, size_t kn, char *v, size_t vn) {
    entry_t *e = db_find(k, kn);
    if (e) {
        free(e->val);
        e->val = v;
        e->vlen = vn;
        return e;
    }
    if (db.count >= db.nbuckets) db_grow();
    e = xmalloc(sizeof *e + kn);
    e->hash = hash_bytes(k, kn);
    e->expire_at = -1;
    e->val = v;
    e->vlen = vn;
    e->klen = kn;
    memcpy(e->key, k, kn);
    size_t j = (size_t)(e->hash & (db.nbuckets - 1));
    e->next = db.buckets[j];
    db.buckets[j] = e;
    db.count++;
    return e;
}

static entry_t *db_set(const char *k, size_t kn, const char *v, size_t vn) {
    char *copy = xmalloc(vn);
    memcpy(copy, v, vn);
    return db_set_owned(k, kn, copy, vn);
}

static void db_flush(void) {
    for (size_t i = 0; i < db.nbuckets; i++) {
        while (db.buckets[i]) db_unlink(&db.buckets[i]);
    }
}

/* Visits a slice of the table and drops expired keys, so memory and DBSIZE
 * do not keep keys that nobody reads again. */
static void db_sweep(void) {
    if (db.expires == 0) return;
    int64_t now = wall_ms();
    for (int n = 0; n < EXPIRE_SWEEP_BUCKETS; n++) {
        size_t i = db.sweep_cursor;
        db.sweep_cursor = (db.sweep_cursor + 1) & (db.nbuckets - 1);
        entry_t **link = &db.buckets[i];
        while (*link) {
            if ((*link)->expire_at >= 0 && (*link)->expire_at <= now)
                db_unlink(link);
            else
                link = &(*link)->next;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Append-only file                                                         */
/* ------------------------------------------------------------------------ */

enum fsync_policy { FSYNC_ALWAYS, FSYNC_EVERYSEC, FSYNC_NO };
static const char *const fsync_names[] = {"always", "everysec", "no"};

static struct {
    int fd;
    char *path;
    enum fsync_policy policy;
    buf_t pending;     /* records not yet written to the file */
    int unsynced;      /* written but not yet fsynced */
    int64_t last_sync; /* monotonic ms of the last fsync */
    int loading;       /* true while replaying: do not log again */
} aof = {.fd = -1, .policy = FSYNC_EVERYSEC};

/* Appends one command, as a RESP multibulk, to the pending records. */
static void aof_log(int argc, const char *const *argv, const size_t *lens) {
    if (aof.loading || aof.fd < 0) return;
    buf_printf(&aof.pending, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        buf_printf(&aof.pending, "$%zu\r\n", lens[i]);
        buf_append(&aof.pending, argv[i], lens[i]);
        buf_append(&aof.pending, "\r\n", 2);
    }
}

/* Writes pending records and fsyncs per policy. It runs once per loop turn,
 * after commands execute and before replies are sent, so with "always" no
 * client sees a reply to a write that is not on disk. */
static void aof_flush(void) {
    if (aof.fd < 0) return;
    size_t off = 0;
    while (off < aof.pending.len) {
        ssize_t n = write(aof.fd, aof.pending.data + off, aof.pending.len - off);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            /* Carrying on would acknowledge writes that are not durable. */
            die("cannot write %s: %s", aof.path, strerror(errno));
        }
        off += (size_t)n;
    }
    if (aof.pending.len) {
        aof.unsynced = 1;
        aof.pending.len = 0;
        if (aof.pending.cap > 4 * READ_CHUNK) buf_free(&aof.pending);
    }
    if (!aof.unsynced || aof.policy == FSYNC_NO) return;
    int64_t now = mono_ms();
    if (aof.policy == FSYNC_ALWAYS || now - aof.last_sync >= 1000) {
        if (fsync(aof.fd) != 0) die("cannot fsync %s: %s", aof.path, strerror(errno));
        aof.unsynced = 0;
        aof.last_sync = now;
    }
}

/* How long the loop may sleep before an everysec fsync is due. */
static int aof_timeout_ms(void) {
    if (aof.fd < 0 || !aof.unsynced || aof.policy != FSYNC_EVERYSEC) return -1;
    int64_t wait = aof.last_sync + 1000 - mono_ms();
    return wait < 0 ? 0 : (int)wait;
}

/* ------------------------------------------------------------------------ */
/* Request parsing                                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    int argc, cap;
    const char **argv;
    size_t *lens;
} args_t;

static void args_push(args_t *a, const char *p, size_t n) {
    if (a->argc == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->argv = xrealloc(a->argv, (size_t)a->cap * sizeof *a->argv);
        a->lens = xrealloc(a->lens, (size_t)a->cap * sizeof *a->lens);
    }
    a->argv[a->argc] = p;
    a->lens[a->argc] = n;
    a->argc++;
}

enum { PARSE_OK, PARSE_MORE, PARSE_ERR };

static size_t max_bulk = 512u * 1024 * 1024;

/* Reads a "<prefix><int>\r\n" line at p. Returns PARSE_MORE when the line
 * is not complete yet. */
static int parse_header(const char *p, size_t n, int64_t *val, size_t *used, const char **err) {
    size_t lim = n < MAX_INLINE ? n : MAX_INLINE;
    const char *cr = memchr(p, '\r', lim);
    if (!cr) {
        if (n >= MAX_INLINE) {
            *err = "Protocol error: too big mbulk count string";
            return PARSE_ERR;
        }
        return PARSE_MORE;
    }
    size_t linelen = (size_t)(cr - p);
    if (linelen + 1 >= n) return PARSE_MORE; /* '\n' not received yet */
    if (cr[1] != '\n' || !parse_ll(p + 1, linelen - 1, val)) {
        *err = p[0] == '*' ? "Protocol error: invalid multibulk length"
                           : "Protocol error: invalid bulk length";
        return PARSE_ERR;
    }
    *used = linelen + 2;
    return PARSE_OK;
}

/*
 * Parses one request at p[0..n). On PARSE_OK, *used is its length and args
 * point into p (valid until the buffer changes). On PARSE_MORE, *need is a
 * hint of the total bytes the request will occupy, if known, so the caller
 * can size the buffer once for a large value. A request of zero arguments
 * (an empty inline line, "*0") parses OK with argc 0 and is skipped.
 */
static int parse_request(const char *p, size_t n, args_t *a, size_t *used, size_t *need,
                         const char **err) {
    a->argc = 0;
    *need = 0;
    if (n == 0) return PARSE_MORE;

    if (p[0] != '*') {
        /* Inline request: one line, arguments separated by blanks. */
        size_t lim = n < MAX_INLINE ? n : MAX_INLINE;
        const char *nl = memchr(p, '\n', lim);
        if (!nl) {
            if (n >= MAX_INLINE) {
                *err = "Protocol error: too big inline request";
                return PARSE_ERR;
            }
            return PARSE_MORE;
        }
        size_t end = (size_t)(nl - p);
        *used = end + 1;
        if (end > 0 && p[end - 1] == '\r') end--;
        size_t i = 0;
        while (i < end) {
            while (i < end && (p[i] == ' ' || p[i] == '\t')) i++;
            size_t start = i;
            while (i < end && p[i] != ' ' && p[i] != '\t') i++;
            if (i > start) args_push(a, p + start, i - start);
        }
        return PARSE_OK;
    }

    int64_t count;
    size_t pos, hl;
    int r = parse_header(p, n, &count, &hl, err);
    if (r != PARSE_OK) return r;
    if (count > MAX_MULTIBULK) {
        *err = "Protocol error: invalid multibulk length";
        return PARSE_ERR;
    }
    pos = hl;
    for (int64_t i = 0; i < count; i++) {
        if (pos >= n) return PARSE_MORE;
        if (p[pos] != '$') {
            static char msg[64];
            snprintf(msg, sizeof msg, "Protocol error: expected '$', got '%c'",
                     (p[pos] >= 32 && p[pos] < 127) ? p[pos] : '?');
            *err = msg;
            return PARSE_ERR;
        }
        int64_t blen;
        r = parse_header(p + pos, n - pos, &blen, &hl, err);
        if (r != PARSE_OK) return r;
        if (blen < 0 || (uint64_t)blen > max_bulk) {
            *err = "Protocol error: invalid bulk length";
            return PARSE_ERR;
        }
        pos += hl;
        if (n - pos < (size_t)blen + 2) {
            *need = pos + (size_t)blen + 2;
            return PARSE_MORE;
        }
        if (p[pos + (size_t)blen] != '\r' || p[pos + (size_t)blen + 1] != '\n') {
            *err = "Protocol error: bulk payload not followed by CRLF";
            return PARSE_ERR;
        }
        args_push(a, p + pos, (size_t)blen);
        pos += (size_t)blen + 2;
    }
    *used = pos;
    return PARSE_OK;
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int fd;
    uint64_t id;
    buf_t in, out;
    int eof;         /* peer finished sending; close once replies are out */
    int closing;     /* QUIT or protocol error: close once replies are out */
    int dead;        /* socket error: close now */
    int has_input;   /* unparsed bytes may hold a complete request */
    char *name;      /* CLIENT SETNAME */
} client_t;

static client_t **clients;
static size_t nclients, clients_cap;
static uint64_t next_client_id = 1;
static uint64_t total_commands, total_connections;
static int64_t start_mono;
static args_t args;

/* ------------------------------------------------------------------------ */
/* Replies                                                                  */
/* ------------------------------------------------------------------------ */

static void reply_status(client_t *c, const char *s) {
    buf_append(&c->out, "+", 1);
    buf_puts(&c->out, s);
    buf_append(&c->out, "\r\n", 2);
}

static void reply_error(client_t *c, const char *s) {
    buf_append(&c->out, "-", 1);
    buf_puts(&c->out, s);
    buf_append(&c->out, "\r\n", 2);
}

static void reply_int(client_t *c, int64_t v) { buf_printf(&c->out, ":%" PRId64 "\r\n", v); }

static void reply_bulk(client_t *c, const char *p, size_t n) {
    buf_printf(&c->out, "$%zu\r\n", n);
    buf_append(&c->out, p, n);
    buf_append(&c->out, "\r\n", 2);
}

static void reply_bulk_str(client_t *c, const char *s) { reply_bulk(c, s, strlen(s)); }

static void reply_null(client_t *c) { buf_append(&c->out, "$-1\r\n", 5); }

static void reply_array(client_t *c, size_t n) { buf_printf(&c->out, "*%zu\r\n", n); }

static void reply_ok(client_t *c) { buf_append(&c->out, "+OK\r\n", 5); }

static void reply_arity(client_t *c, const char *cmd) {
    buf_printf(&c->out, "-ERR wrong number of arguments for '%s' command\r\n", cmd);
}

static void reply_not_int(client_t *c) {
    reply_error(c, "ERR value is not an integer or out of range");
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */
/* ------------------------------------------------------------------------ */

/* Every command handler gets the whole argument vector; argv[0] is the
 * command name. A handler that changes the key space logs itself to the
 * AOF with aof_log(), in a form that replays to the same state. */
typedef void (*handler_fn)(client_t *c, int argc, const char **argv, const size_t *lens);

static void cmd_ping(client_t *c, int argc, const char **argv, const size_t *lens) {
    if (argc == 1)
        reply_status(c, "PONG");
    else if (argc == 2)
        reply_bulk(c, argv[1], lens[1]);
    else
        reply_arity(c, "ping");
}

static void cmd_echo(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    reply_bulk(c, argv[1], lens[1]);
}

static void cmd_get(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    entry_t *e = db_find(argv[1], lens[1]);
    if (e)
        reply_bulk(c, e->val, e->vlen);
    else
        reply_null(c);
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL].
 * Relative expiries are logged as PXAT so a replay does not extend them. */
static void cmd_set(client_t *c, int argc, const char **argv, const size_t *lens) {
    int nx = 0, xx = 0, get = 0, keepttl = 0;
    int64_t expire_at = -1;
    for (int i = 3; i < argc; i++) {
        const char *o = argv[i];
        size_t on = lens[i];
        if (arg_is(o, on, "nx")) {
            nx = 1;
        } else if (arg_is(o, on, "xx")) {
            xx = 1;
        } else if (arg_is(o, on, "get")) {
            get = 1;
        } else if (arg_is(o, on, "keepttl")) {
            keepttl = 1;
        } else if ((arg_is(o, on, "ex") || arg_is(o, on, "px") || arg_is(o, on, "exat") ||
                    arg_is(o, on, "pxat")) &&
                   i + 1 < argc && expire_at < 0) {
            int64_t v;
            if (!parse_ll(argv[i + 1], lens[i + 1], &v) || v <= 0) {
                reply_error(c, "ERR invalid expire time in 'set' command");
                return;
            }
            int ms = o[0] == 'p' || o[0] == 'P';
            int at = on == 4;
            if (!ms) {
                if (v > INT64_MAX / 1000) {
                    reply_error(c, "ERR invalid expire time in 'set' command");
                    return;
                }
                v *= 1000;
            }
            expire_at = at ? v : wall_ms() + v;
            i++;
        } else {
            reply_error(c, "ERR syntax error");
            return;
        }
    }
    if ((nx && xx) || (keepttl && expire_at >= 0)) {
        reply_error(c, "ERR syntax error");
        return;
    }
    entry_t *old = db_find(argv[1], lens[1]);
    if (get) {
        if (old)
            reply_bulk(c, old->val, old->vlen);
        else
            reply_null(c);
    }
    if ((nx && old) || (xx && !old)) {
        if (!get) reply_null(c);
        return;
    }
    int64_t keep = old && keepttl ? old->expire_at : -1;
    entry_t *e = db_set(argv[1], lens[1], argv[2], lens[2]);
    entry_set_expire(e, expire_at >= 0 ? expire_at : keep);
    if (!get) reply_ok(c);

    if (e->expire_at >= 0) {
        char ts[24];
        int tn = snprintf(ts, sizeof ts, "%" PRId64, e->expire_at);
        const char *lv[5] = {"SET", argv[1], argv[2], "PXAT", ts};
        size_t ll[5] = {3, lens[1], lens[2], 4, (size_t)tn};
        aof_log(5, lv, ll);
    } else {
        const char *lv[3] = {"SET", argv[1], argv[2]};
        size_t ll[3] = {3, lens[1], lens[2]};
        aof_log(3, lv, ll);
    }
}

static void cmd_setnx(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    if (db_find(argv[1], lens[1])) {
        reply_int(c, 0);
        return;
    }
    db_set(argv[1], lens[1], argv[2], lens[2]);
    const char *lv[3] = {"SET", argv[1], argv[2]};
    size_t ll[3] = {3, lens[1], lens[2]};
    aof_log(3, lv, ll);
    reply_int(c, 1);
}

static void cmd_del(client_t *c, int argc, const char **argv, const size_t *lens) {
    int64_t n = 0;
    for (int i = 1; i < argc; i++) n += db_delete(argv[i], lens[i]);
    if (n > 0) aof_log(argc, argv, lens);
    reply_int(c, n);
}

static void cmd_exists(client_t *c, int argc, const char **argv, const size_t *lens) {
    int64_t n = 0;
    for (int i = 1; i < argc; i++) n += db_find(argv[i], lens[i]) != NULL;
    reply_int(c, n);
}

/* INCR, DECR, INCRBY, DECRBY share this; the result is logged as a SET of
 * the new value so the AOF stays correct even if the key had expired. */
static void incr_by(client_t *c, const char **argv, const size_t *lens, int64_t by) {
    entry_t *e = db_find(argv[1], lens[1]);
    int64_t v = 0;
    if (e && !parse_ll(e->val, e->vlen, &v)) {
        reply_not_int(c);
        return;
    }
    if ((by > 0 && v > INT64_MAX - by) || (by < 0 && v < INT64_MIN - by)) {
        reply_error(c, "ERR increment or decrement would overflow");
        return;
    }
    v += by;
    char tmp[24];
    int tn = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    int64_t keep = e ? e->expire_at : -1;
    e = db_set(argv[1], lens[1], tmp, (size_t)tn);
    if (keep >= 0) {
        char ts[24];
        int sn = snprintf(ts, sizeof ts, "%" PRId64, keep);
        const char *lv[5] = {"SET", argv[1], tmp, "PXAT", ts};
        size_t ll[5] = {3, lens[1], (size_t)tn, 4, (size_t)sn};
        aof_log(5, lv, ll);
    } else {
        const char *lv[3] = {"SET", argv[1], tmp};
        size_t ll[3] = {3, lens[1], (size_t)tn};
        aof_log(3, lv, ll);
    }
    reply_int(c, v);
}

static void cmd_incr(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    incr_by(c, argv, lens, 1);
}

static void cmd_decr(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    incr_by(c, argv, lens, -1);
}

static void cmd_incrby(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    int64_t by;
    if (!parse_ll(argv[2], lens[2], &by)) {
        reply_not_int(c);
        return;
    }
    incr_by(c, argv, lens, by);
}

static void cmd_decrby(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    int64_t by;
    if (!parse_ll(argv[2], lens[2], &by) || by == INT64_MIN) {
        reply_not_int(c);
        return;
    }
    incr_by(c, argv, lens, -by);
}

static void cmd_append(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    entry_t *e = db_find(argv[1], lens[1]);
    if (!e) {
        e = db_set(argv[1], lens[1], argv[2], lens[2]);
    } else {
        if (e->vlen + lens[2] > max_bulk) {
            reply_error(c, "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
            return;
        }
        e->val = xrealloc(e->val, e->vlen + lens[2]);
        memcpy(e->val + e->vlen, argv[2], lens[2]);
        e->vlen += lens[2];
    }
    aof_log(argc, argv, lens);
    reply_int(c, (int64_t)e->vlen);
}

static void cmd_strlen(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    entry_t *e = db_find(argv[1], lens[1]);
    reply_int(c, e ? (int64_t)e->vlen : 0);
}

static void cmd_mget(client_t *c, int argc, const char **argv, const size_t *lens) {
    reply_array(c, (size_t)argc - 1);
    for (int i = 1; i < argc; i++) {
        entry_t *e = db_find(argv[i], lens[i]);
        if (e)
            reply_bulk(c, e->val, e->vlen);
        else
            reply_null(c);
    }
}

static void cmd_mset(client_t *c, int argc, const char **argv, const size_t *lens) {
    if (argc % 2 != 1) {
        reply_arity(c, "mset");
        return;
    }
    for (int i = 1; i < argc; i += 2) {
        entry_t *e = db_set(argv[i], lens[i], argv[i + 1], lens[i + 1]);
        entry_set_expire(e, -1);
    }
    aof_log(argc, argv, lens);
    reply_ok(c);
}

/* EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key n; logged as PEXPIREAT. */
static void cmd_expire(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    int64_t v;
    if (!parse_ll(argv[2], lens[2], &v)) {
        reply_not_int(c);
        return;
    }
    int ms = argv[0][0] == 'p' || argv[0][0] == 'P';
    int at = lens[0] == (ms ? 9u : 8u);
    if (!ms) {
        if (v > INT64_MAX / 1000 || v < INT64_MIN / 1000) {
            reply_error(c, "ERR invalid expire time");
            return;
        }
        v *= 1000;
    }
    int64_t when = at ? v : wall_ms() + v;
    entry_t *e = db_find(argv[1], lens[1]);
    if (!e) {
        reply_int(c, 0);
        return;
    }
    char ts[24];
    int tn = snprintf(ts, sizeof ts, "%" PRId64, when);
    const char *lv[3] = {"PEXPIREAT", argv[1], ts};
    size_t ll[3] = {9, lens[1], (size_t)tn};
    aof_log(3, lv, ll);
    if (when <= wall_ms())
        db_delete(argv[1], lens[1]);
    else
        entry_set_expire(e, when);
    reply_int(c, 1);
}

static void cmd_persist(client_t *c, int argc, const char **argv, const size_t *lens) {
    entry_t *e = db_find(argv[1], lens[1]);
    if (!e || e->expire_at < 0) {
        reply_int(c, 0);
        return;
    }
    entry_set_expire(e, -1);
    aof_log(argc, argv, lens);
    reply_int(c, 1);
}

static void cmd_ttl(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    entry_t *e = db_find(argv[1], lens[1]);
    if (!e) {
        reply_int(c, -2);
        return;
    }
    if (e->expire_at < 0) {
        reply_int(c, -1);
        return;
    }
    int64_t left = e->expire_at - wall_ms();
    if (left < 0) left = 0;
    int ms = argv[0][0] == 'p' || argv[0][0] == 'P';
    reply_int(c, ms ? left : (left + 500) / 1000);
}

static void cmd_dbsize(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    (void)argv;
    (void)lens;
    reply_int(c, (int64_t)db.count);
}

static void cmd_flushdb(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    (void)lens;
    db_flush();
    const char *lv[1] = {"FLUSHALL"};
    size_t ll[1] = {8};
    (void)argv;
    aof_log(1, lv, ll);
    reply_ok(c);
}

static void cmd_keys(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    int64_t now = wall_ms();
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) reply_array(c, n);
        for (size_t i = 0; i < db.nbuckets; i++) {
            for (entry_t *e = db.buckets[i]; e; e = e->next) {
                if (e->expire_at >= 0 && e->expire_at <= now) continue;
                if (!glob_match(argv[1], lens[1], e->key, e->klen, 0)) continue;
                if (pass == 0)
                    n++;
                else
                    reply_bulk(c, e->key, e->klen);
            }
        }
    }
}

static void cmd_select(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    int64_t idx;
    if (!parse_ll(argv[1], lens[1], &idx)) {
        reply_not_int(c);
        return;
    }
    if (idx != 0)
        reply_error(c, "ERR DB index is out of range");
    else
        reply_ok(c);
}

static void cmd_quit(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    (void)argv;
    (void)lens;
    reply_ok(c);
    c->closing = 1;
}

/* COMMAND, COMMAND DOCS, COMMAND INFO: an empty array is a valid answer and
 * all that redis-cli needs for its hints. COMMAND COUNT says 0 likewise. */
static void cmd_command(client_t *c, int argc, const char **argv, const size_t *lens) {
    if (argc >= 2 && arg_is(argv[1], lens[1], "count"))
        reply_int(c, 0);
    else
        reply_array(c, 0);
}

static void cmd_client(client_t *c, int argc, const char **argv, const size_t *lens) {
    if (argc >= 3 && arg_is(argv[1], lens[1], "setname")) {
        for (size_t i = 0; i < lens[2]; i++) {
            if (argv[2][i] <= ' ' || argv[2][i] > '~') {
                reply_error(c, "ERR Client names cannot contain spaces, newlines or special "
                               "characters.");
                return;
            }
        }
        free(c->name);
        c->name = xmalloc(lens[2] + 1);
        memcpy(c->name, argv[2], lens[2]);
        c->name[lens[2]] = '\0';
        reply_ok(c);
    } else if (arg_is(argv[1], lens[1], "getname")) {
        if (c->name && c->name[0])
            reply_bulk_str(c, c->name);
        else
            reply_null(c);
    } else if (arg_is(argv[1], lens[1], "id")) {
        reply_int(c, (int64_t)c->id);
    } else if (arg_is(argv[1], lens[1], "setinfo") || arg_is(argv[1], lens[1], "reply") ||
               arg_is(argv[1], lens[1], "no-evict") || arg_is(argv[1], lens[1], "no-touch")) {
        reply_ok(c);
    } else if (arg_is(argv[1], lens[1], "info") || arg_is(argv[1], lens[1], "list")) {
        buf_t t = {0};
        for (size_t i = 0; i < nclients; i++) {
            client_t *o = clients[i];
            if (arg_is(argv[1], lens[1], "info") && o != c) continue;
            buf_printf(&t, "id=%" PRIu64 " fd=%d name=%s db=0\n", o->id, o->fd,
                       o->name ? o->name : "");
        }
        reply_bulk(c, t.data ? t.data : "", t.len);
        buf_free(&t);
    } else {
        buf_printf(&c->out, "-ERR unknown subcommand '%.*s'. Try CLIENT HELP.\r\n",
                   (int)(lens[1] > 64 ? 64 : lens[1]), argv[1]);
    }
}

/* CONFIG GET: the few parameters clients ask about (redis-benchmark reads
 * "save" and "appendonly" at start). CONFIG SET is refused: the server's
 * configuration comes from its arguments only. */
static void cmd_config(client_t *c, int argc, const char **argv, const size_t *lens) {
    if (arg_is(argv[1], lens[1], "get")) {
        if (argc < 3) {
            reply_arity(c, "config|get");
            return;
        }
        char bulk[24];
        snprintf(bulk, sizeof bulk, "%zu", max_bulk);
        const char *params[][2] = {
            {"appendonly", "yes"},
            {"appendfsync", fsync_names[aof.policy]},
            {"appendfilename", "appendonly.aof"},
            {"databases", "1"},
            {"dir", aof.path ? aof.path : ""},
            {"maxclients", "10000"},
            {"maxmemory", "0"},
            {"proto-max-bulk-len", bulk},
            {"save", ""},
        };
        size_t np = sizeof params / sizeof params[0];
        const char *hit[sizeof params / sizeof params[0]];
        size_t nh = 0;
        for (size_t i = 0; i < np; i++) {
            for (int a = 2; a < argc; a++) {
                if (glob_match(argv[a], lens[a], params[i][0], strlen(params[i][0]), 1)) {
                    hit[nh++] = params[i][0];
                    break;
                }
            }
        }
        reply_array(c, nh * 2);
        for (size_t h = 0; h < nh; h++) {
            for (size_t i = 0; i < np; i++) {
                if (params[i][0] == hit[h]) {
                    reply_bulk_str(c, params[i][0]);
                    reply_bulk_str(c, params[i][1]);
                }
            }
        }
    } else if (arg_is(argv[1], lens[1], "resetstat")) {
        total_commands = 0;
        reply_ok(c);
    } else if (arg_is(argv[1], lens[1], "set")) {
        reply_error(c, "ERR CONFIG SET is not supported by this server");
    } else {
        buf_printf(&c->out, "-ERR unknown subcommand '%.*s'. Try CONFIG HELP.\r\n",
                   (int)(lens[1] > 64 ? 64 : lens[1]), argv[1]);
    }
}

/* INFO in Redis' format. ioredis' ready check waits for "loading:0". */
static void cmd_info(client_t *c, int argc, const char **argv, const size_t *lens) {
    (void)argc;
    (void)argv;
    (void)lens;
    buf_t t = {0};
    buf_printf(&t,
               "# Server\r\n"
               "redis_version:7.0.0\r\n"
               "redis_mode:standalone\r\n"
               "server_name:lockstep-kv\r\n"
               "uptime_in_seconds:%" PRId64 "\r\n"
               "\r\n"
               "# Clients\r\n"
               "connected_clients:%zu\r\n"
               "\r\n"
               "# Persistence\r\n"
               "loading:0\r\n"
               "aof_enabled:%d\r\n"
               "aof_fsync:%s\r\n"
               "\r\n"
               "# Stats\r\n"
               "total_connections_received:%" PRIu64 "\r\n"
               "total_commands_processed:%" PRIu64 "\r\n"
               "\r\n"
               "# Replication\r\n"
               "role:master\r\n"
               "connected_slaves:0\r\n"
               "\r\n"
               "# Keyspace\r\n",
               (mono_ms() - start_mono) / 1000, nclients, aof.fd >= 0,
               fsync_names[aof.policy], total_connections, total_commands);
    if (db.count) buf_printf(&t, "db0:keys=%zu,expires=%zu,avg_ttl=0\r\n", db.count, db.expires);
    reply_bulk(c, t.data, t.len);
    buf_free(&t);
}

/* The command table. arity follows Redis: positive means exactly that many
 * arguments (counting the name), negative means at least -arity. */
static const struct command {
    const char *name;
    handler_fn fn;
    int arity;
} commands[] = {
    {"get", cmd_get, 2},
    {"set", cmd_set, -3},
    {"ping", cmd_ping, -1},
    {"echo", cmd_echo, 2},
    {"del", cmd_del, -2},
    {"unlink", cmd_del, -2},
    {"exists", cmd_exists, -2},
    {"incr", cmd_incr, 2},
    {"decr", cmd_decr, 2},
    {"incrby", cmd_incrby, 3},
    {"decrby", cmd_decrby, 3},
    {"setnx", cmd_setnx, 3},
    {"append", cmd_append, 3},
    {"strlen", cmd_strlen, 2},
    {"mget", cmd_mget, -2},
    {"mset", cmd_mset, -3},
    {"expire", cmd_expire, 3},
    {"pexpire", cmd_expire, 3},
    {"expireat", cmd_expire, 3},
    {"pexpireat", cmd_expire, 3},
    {"persist", cmd_persist, 2},
    {"ttl", cmd_ttl, 2},
    {"pttl", cmd_ttl, 2},
    {"dbsize", cmd_dbsize, 1},
    {"flushdb", cmd_flushdb, -1},
    {"flushall", cmd_flushdb, -1},
    {"keys", cmd_keys, 2},
    {"select", cmd_select, 2},
    {"quit", cmd_quit, -1},
    {"command", cmd_command, -1},
    {"client", cmd_client, -2},
    {"config", cmd_config, -2},
    {"info", cmd_info, -1},
};

static void execute(client_t *c, int argc, const char **argv, const size_t *lens) {
    total_commands++;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *cmd = &commands[i];
        if (!arg_is(argv[0], lens[0], cmd->name)) continue;
        if ((cmd->arity > 0 && argc != cmd->arity) || (cmd->arity < 0 && argc < -cmd->arity)) {
            reply_arity(c, cmd->name);
            return;
        }
        cmd->fn(c, argc, argv, lens);
        return;
    }
    /* Redis quotes at most 128 bytes of the unknown name. */
    buf_printf(&c->out, "-ERR unknown command '%.*s', with args beginning with: ",
               (int)(lens[0] > 128 ? 128 : lens[0]), argv[0]);
    for (int i = 1; i < argc && i < 8; i++)
        buf_printf(&c->out, "'%.*s' ", (int)(lens[i] > 128 ? 128 : lens[i]), argv[i]);
    buf_append(&c->out, "\r\n", 2);
}

/* ------------------------------------------------------------------------ */
/* Connection handling                                                      */
/* ------------------------------------------------------------------------ */

static size_t out_pending(const client_t *c) { return c->out.len - c->out.off; }

/* Runs the complete requests buffered for a client, stopping when its
 * replies pass the high-water mark (it resumes once they drain). */
static void process_input(client_t *c) {
    while (!c->closing && c->in.off < c->in.len && out_pending(c) < OUT_HIGH_WATER) {
        size_t used = 0, need = 0;
        const char *err = NULL;
        int r = parse_request(c->in.data + c->in.off, c->in.len - c->in.off, &args, &used,
                              &need, &err);
        if (r == PARSE_MORE) {
            /* Size the buffer once for a large bulk instead of doubling. */
            if (need > c->in.len - c->in.off) {
                buf_compact(&c->in);
                buf_reserve(&c->in, need - c->in.len);
            }
            c->has_input = 0;
            return;
        }
        if (r == PARSE_ERR) {
            buf_printf(&c->out, "-ERR %s\r\n", err);
            c->closing = 1;
            break;
        }
        c->in.off += used;
        if (args.argc > 0) execute(c, args.argc, args.argv, args.lens);
    }
    if (c->in.off == c->in.len || c->closing) c->has_input = 0;
}

/* The most a client may have buffered for one unfinished request: room for
 * the largest bulk plus its neighbours, and never less than Redis' 1 GiB
 * client-query-buffer-limit. It is a ceiling, not an allocation. */
static size_t query_limit(void) {
    size_t lim = max_bulk + (size_t)(1 << 20);
    return lim > (size_t)1 << 30 ? lim : (size_t)1 << 30;
}

static void read_client(client_t *c) {
    if (c->in.len - c->in.off >= query_limit()) {
        buf_puts(&c->out, "-ERR Protocol error: query buffer limit exceeded\r\n");
        c->closing = 1;
        return;
    }
    if (c->in.cap - c->in.len < READ_CHUNK) {
        buf_compact(&c->in);
        buf_reserve(&c->in, READ_CHUNK);
    }
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
        c->has_input = 1;
    } else if (n == 0) {
        c->eof = 1;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        c->dead = 1;
    }
}

static void write_client(client_t *c) {
    while (out_pending(c) > 0) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, out_pending(c), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) c->dead = 1;
            return;
        }
        c->out.off += (size_t)n;
    }
    /* Everything was sent: reset, and let the buffer shrink after a burst. */
    c->out.off = c->out.len = 0;
    if (c->out.cap > 4 * READ_CHUNK) buf_free(&c->out);
    /* Requests held back by the high-water mark can run again. */
    if (c->in.off < c->in.len) c->has_input = 1;
}

static void free_client(client_t *c) {
    close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c->name);
    free(c);
}

static void accept_clients(int listener_nonblocking) {
    /* With a blocking listener, accept only once: poll said one is ready. */
    int budget = listener_nonblocking ? 64 : 1;
    while (budget-- > 0) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof addr;
        int fd = accept(LISTEN_FD, (struct sockaddr *)&addr, &alen);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                fprintf(stderr, "kv: accept: %s\n", strerror(errno));
            return;
        }
        /* Client sockets are non-blocking so one slow peer cannot stall the
         * loop; EAGAIN then means "wait for poll". */
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            fprintf(stderr, "kv: cannot make fd %d non-blocking: %s\n", fd, strerror(errno));
            close(fd);
            continue;
        }
        if (nclients == clients_cap) {
            clients_cap = clients_cap ? clients_cap * 2 : 64;
            clients = xrealloc(clients, clients_cap * sizeof *clients);
        }
        client_t *c = xmalloc(sizeof *c);
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->id = next_client_id++;
        clients[nclients++] = c;
        total_connections++;
    }
}

/* ------------------------------------------------------------------------ */
/* Start-up: configuration and AOF replay                                   */
/* ------------------------------------------------------------------------ */

/* Replays the AOF. A record cut short at the end (a crash mid-write) is
 * dropped and the file truncated to the last whole record, as Redis does
 * with aof-load-truncated. Damage before the end stops the server instead,
 * since guessing would silently lose acknowledged writes. */
static void aof_load(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        if (errno == ENOENT) return;
        die("cannot open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) die("cannot stat %s: %s", path, strerror(errno));
    buf_t b = {0};
    size_t file_off = 0; /* file offset of b.data[b.off] */
    int at_eof = 0;
    client_t fake;
    memset(&fake, 0, sizeof fake);
    fake.fd = -1;
    aof.loading = 1;
    for (;;) {
        size_t used = 0, need = 0;
        const char *err = NULL;
        int r = b.off < b.len ? parse_request(b.data + b.off, b.len - b.off, &args, &used, &need,
                                              &err)
                              : PARSE_MORE;
        if (r == PARSE_OK) {
            if (args.argc > 0) execute(&fake, args.argc, args.argv, args.lens);
            fake.out.len = fake.out.off = 0; /* replies are not needed */
            b.off += used;
            file_off += used;
            continue;
        }
        if (r == PARSE_ERR || (b.off < b.len && b.data[b.off] != '*'))
            die("%s is damaged at byte %zu (%s); not starting", path, file_off,
                err ? err : "not a RESP array");
        if (at_eof) break;
        buf_compact(&b);
        /* A torn record may announce a bulk longer than what the file still
         * holds: never reserve past the end of the file. */
        size_t want = need > b.len ? need - b.len : 0;
        size_t left = (size_t)st.st_size > file_off + b.len ? (size_t)st.st_size - file_off - b.len : 0;
        if (want > left) want = left;
        buf_reserve(&b, want > (1 << 20) ? want : (1 << 20));
        ssize_t n = read(fd, b.data + b.len, b.cap - b.len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("cannot read %s: %s", path, strerror(errno));
        }
        if (n == 0)
            at_eof = 1;
        else
            b.len += (size_t)n;
    }
    close(fd);
    if (b.len > b.off) {
        fprintf(stderr, "kv: %s: dropping a torn last record (%zu bytes at offset %zu)\n", path,
                b.len - b.off, file_off);
        int wfd = open(path, O_WRONLY);
        if (wfd < 0 || ftruncate(wfd, (off_t)file_off) != 0)
            die("cannot truncate %s: %s", path, strerror(errno));
        close(wfd);
    }
    aof.loading = 0;
    buf_free(&b);
    buf_free(&fake.out);
    free(fake.name);
    /* Keys whose PXAT passed while the server was down are gone now, so the
     * start-up count and DBSIZE do not include them. */
    for (size_t i = 0; i <= db.nbuckets / EXPIRE_SWEEP_BUCKETS; i++) db_sweep();
    total_commands = 0;
}

static int parse_policy(const char *s, enum fsync_policy *out) {
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, fsync_names[i]) == 0) {
            *out = (enum fsync_policy)i;
            return 1;
        }
    }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: kv [--dir DIR] [--fsync always|everysec|no] [--max-bulk BYTES]\n"
                    "  environment: KV_DIR, KV_FSYNC, KV_MAX_BULK (arguments win)\n"
                    "  the listening socket must be fd 3\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *dir = getenv("KV_DIR");
    const char *policy = getenv("KV_FSYNC");
    const char *bulk = getenv("KV_MAX_BULK");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--fsync") == 0 && i + 1 < argc)
            policy = argv[++i];
        else if (strcmp(argv[i], "--max-bulk") == 0 && i + 1 < argc)
            bulk = argv[++i];
        else
            usage();
    }
    if (!dir || !*dir) dir = "/data";
    if (policy && *policy && !parse_policy(policy, &aof.policy)) {
        fprintf(stderr, "kv: bad fsync policy '%s'\n", policy);
        usage();
    }
    if (bulk && *bulk) {
        int64_t v;
        if (!parse_ll(bulk, strlen(bulk), &v) || v < 1) {
            fprintf(stderr, "kv: bad max bulk length '%s'\n", bulk);
            usage();
        }
        max_bulk = (uint64_t)v > SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)v;
    }

    start_mono = mono_ms();
    db_init();

    size_t plen = strlen(dir) + sizeof "/appendonly.aof";
    aof.path = xmalloc(plen);
    snprintf(aof.path, plen, "%s/appendonly.aof", dir);
    aof_load(aof.path);
    aof.fd = open(aof.path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (aof.fd < 0) die("cannot open %s: %s", aof.path, strerror(errno));
    aof.last_sync = mono_ms();

    /* A non-blocking listener lets one wake-up accept a burst of clients.
     * If the host refuses the flag, accepting one per wake-up still works. */
    int lfl = fcntl(LISTEN_FD, F_GETFL);
    int listener_nonblocking = lfl >= 0 && fcntl(LISTEN_FD, F_SETFL, lfl | O_NONBLOCK) == 0;

    fprintf(stderr, "kv: listening on fd %d, %zu keys loaded (aof %s, fsync %s)\n", LISTEN_FD,
            db.count, aof.path, fsync_names[aof.policy]);

    struct pollfd *pfds = NULL;
    size_t pfds_cap = 0;
    for (;;) {
        if (pfds_cap < nclients + 1) {
            pfds_cap = (nclients + 1) * 2;
            pfds = xrealloc(pfds, pfds_cap * sizeof *pfds);
        }
        /* Every entry asks for at least one event: wasi-libc's poll()
         * rejects entries with none. */
        pfds[0].fd = LISTEN_FD;
        pfds[0].events = POLLIN;
        pfds[0].revents = 0;
        for (size_t i = 0; i < nclients; i++) {
            client_t *c = clients[i];
            short ev = 0;
            if (!c->eof && !c->closing && out_pending(c) < OUT_HIGH_WATER) ev |= POLLIN;
            if (out_pending(c) > 0 || ev == 0) ev |= POLLOUT;
            pfds[i + 1].fd = c->fd;
            pfds[i + 1].events = ev;
            pfds[i + 1].revents = 0;
        }
        int timeout = aof_timeout_ms();
        if (db.expires > 0 && (timeout < 0 || timeout > EXPIRE_SWEEP_MS))
            timeout = EXPIRE_SWEEP_MS;

        int ready = poll(pfds, (nfds_t)(nclients + 1), timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("poll: %s", strerror(errno));
        }

        /* Clients first: their order in the array is fixed for this turn. */
        size_t n = nclients;
        for (size_t i = 0; i < n; i++) {
            client_t *c = clients[i];
            short re = pfds[i + 1].revents;
            if (re & POLLNVAL) c->dead = 1;
            if ((pfds[i + 1].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR)))
                read_client(c);
            else if (re & POLLERR)
                c->dead = 1;
            if (c->has_input && !c->dead) process_input(c);
        }

        /* Log before replying, so an acknowledged write is in the AOF. */
        aof_flush();

        size_t kept = 0;
        for (size_t i = 0; i < nclients; i++) {
            client_t *c = clients[i];
            if (!c->dead && out_pending(c) > 0) write_client(c);
            /* Replies drained below the mark: run held-back requests now. */
            if (!c->dead && c->has_input) process_input(c);
            int done = c->dead || ((c->eof || c->closing) && out_pending(c) == 0);
            if (done)
                free_client(c);
            else
                clients[kept++] = c;
        }
        nclients = kept;
        /* Requests run after the writes above may have logged records. */
        aof_flush();

        if (pfds[0].revents & POLLIN) accept_clients(listener_nonblocking);
        db_sweep();
    }
}
