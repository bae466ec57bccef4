/*
 * deep_recursion.c - recurses without bound until the host stops it.
 *
 * The recursion keeps its state in WebAssembly locals only (no address is
 * taken, and progress printing lives in a separate function), so each
 * level uses the engine's call stack rather than wasi-libc's stack in
 * linear memory: what runs out is the host's call-depth limit (or V8's
 * stack), not the 64 KiB shadow stack. The result of each call goes
 * through a volatile global before it is used, so the optimiser can
 * neither turn the recursion into a loop nor drop it.
 *
 * argv[1], if given, is a depth at which to stop (the compiler cannot know
 * it); the program then prints "returned from depth N" and exits 0, which
 * lets a test check that moderate recursion works. Without it the
 * recursion never ends. Progress goes to stdout every 10000 levels.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int64_t limit = -1;
static volatile uint64_t sink;

__attribute__((noinline)) static void report(int64_t depth) {
    printf("depth %lld\n", (long long)depth);
}

static uint64_t descend(int64_t depth) {
    if (depth == limit) return (uint64_t)depth;
    if (depth % 10000 == 0) report(depth);
    uint64_t below = descend(depth + 1);
    sink = below;
    return sink * 31 + (uint64_t)depth;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1) limit = atoll(argv[1]);
    uint64_t r = descend(0);
    printf("returned from depth %lld (%llx)\n", (long long)limit, (unsigned long long)r);
    return 0;
}
