/*
 * memory_bomb.c - allocates 1 MiB blocks and writes every page of each,
 * forever, printing "allocated N MiB" after every block. Under a memory
 * limit the host either stops it when memory.grow is refused or malloc
 * returns NULL; in that case the program prints "malloc failed after N MiB"
 * and calls abort(), which traps. It never exits normally.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (1024 * 1024)

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* The blocks are chained so they stay reachable: nothing can free them. */
    void **head = NULL;
    for (unsigned long mib = 1;; mib++) {
        void **block = malloc(BLOCK);
        if (!block) {
            printf("malloc failed after %lu MiB\n", mib - 1);
            abort();
        }
        for (size_t off = 0; off < BLOCK; off += 4096) ((volatile char *)block)[off] = (char)mib;
        block[0] = head;
        head = block;
        printf("allocated %lu MiB\n", mib);
    }
}
