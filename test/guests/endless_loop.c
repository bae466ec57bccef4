/*
 * endless_loop.c - prints "looping" and then computes forever without any
 * host call. The volatile counter keeps the optimiser from removing the
 * loop. Only the host's CPU budget or a kill can stop it.
 */
#include <stdint.h>
#include <stdio.h>

int main(void) {
    printf("looping\n");
    fflush(stdout);
    volatile uint64_t counter = 0;
    for (;;) counter++;
}
