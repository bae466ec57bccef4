/*
 * yes.c - writes "y\n" to stdout until a write fails, then exits with 3.
 * Run as `lockstep run yes.wasm | head -1`: when head exits, the guest must
 * see EPIPE (not spin forever on writes the host silently drops).
 */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    for (long i = 0; i < 100000000L; i++) {
        if (write(1, "y\n", 2) != 2) return 3;
    }
    return 0;
}
