/*
 * send_and_exit.c - accepts one connection on fd 3, sends "hi\n" and exits
 * with 0 without closing it. The client keeps its end open: Lockstep must
 * still deliver the bytes and exit (a regression test for a stop that waited
 * on the client forever).
 */
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    int c = accept(3, 0, 0);
    if (c < 0) return 1;
    if (send(c, "hi\n", 3, 0) != 3) return 2;
    return 0;
}
