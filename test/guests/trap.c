/*
 * trap.c - prints "about to trap" and executes a WebAssembly unreachable
 * instruction (__builtin_trap). The host must report a trap, not an exit.
 */
#include <stdio.h>

int main(void) {
    printf("about to trap\n");
    fflush(stdout);
    __builtin_trap();
}
