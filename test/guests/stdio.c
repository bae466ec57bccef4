/*
 * stdio.c - checks the standard streams, with output a test can compare
 * byte for byte. No arguments; stdin is read to EOF.
 *
 * stdout receives, in order:
 *   "hello stdout\n"
 *   "partial" (flushed without newline), later completed by " line\n"
 *   131072 bytes: 2048 lines of 64 bytes, "big NNNN " then 54 'x' and "\n"
 *     (NNNN is the line number 0000..2047), written with one write() call
 *     loop on fd 1 (partial writes are handled)
 *   "stdin bytes=N fnv1a=HHHHHHHHHHHHHHHH\n" for the bytes read on stdin
 *     (FNV-1a 64-bit, lower-case hex; empty stdin gives cbf29ce484222325)
 * stderr receives, in order:
 *   "hello stderr\n", "partial-err" (no newline), "\n", "done\n"
 * The interleaving is: hello stdout, hello stderr, partial, partial-err,
 * " line\n", "\n" on stderr, the big block, the stdin line, done.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

int main(void) {
    fputs("hello stdout\n", stdout);
    fflush(stdout);
    fputs("hello stderr\n", stderr);
    fputs("partial", stdout);
    fflush(stdout);
    fputs("partial-err", stderr);
    fputs(" line\n", stdout);
    fflush(stdout);
    fputs("\n", stderr);

    static char big[2048 * 64];
    for (int i = 0; i < 2048; i++) {
        char *line = big + i * 64;
        snprintf(line, 10, "big %04d ", i);
        memset(line + 9, 'x', 54);
        line[63] = '\n';
    }
    write_all(STDOUT_FILENO, big, sizeof big);

    uint64_t h = 14695981039346656037ULL; /* the FNV-1a 64 offset basis, 0xcbf29ce484222325 */
    size_t total = 0;
    char buf[4096];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; i++) {
            h ^= (unsigned char)buf[i];
            h *= 1099511628211ULL;
        }
        total += (size_t)n;
    }
    printf("stdin bytes=%zu fnv1a=%016llx\n", total, (unsigned long long)h);
    fflush(stdout);
    fputs("done\n", stderr);
    return 0;
}
