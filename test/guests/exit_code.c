/*
 * exit_code.c - exits through exit() with the code given in argv[1]
 * (default 0), after printing "exiting with N". exit() flushes stdio and
 * ends in WASI proc_exit(N).
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    printf("exiting with %d\n", code);
    exit(code);
}
