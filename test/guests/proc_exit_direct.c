/*
 * proc_exit_direct.c - ends the program by calling WASI proc_exit itself,
 * bypassing exit() and its stdio flush. The code is argv[1] (default 7).
 * It writes "before proc_exit\n" with write(), which is unbuffered, and
 * "buffered, never flushed" with printf into a full buffer that is never
 * flushed, so only the first line may appear on stdout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 7;
    static char fullbuf[4096];
    const char *msg = "before proc_exit\n";
    write(STDOUT_FILENO, msg, strlen(msg));
    setvbuf(stdout, fullbuf, _IOFBF, sizeof fullbuf);
    printf("buffered, never flushed\n");
    __wasi_proc_exit((__wasi_exitcode_t)code);
}
