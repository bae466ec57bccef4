/*
 * yield.c - calls sched_yield() (WASI sched_yield) a few times; each must
 * return 0. Prints "ok sched_yield_N" lines and exits 0.
 */
#include <sched.h>
#include <stdio.h>

#include "check.h"

int main(void) {
    check_init();
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "sched_yield_%d", i);
        CHECK_OK(name, sched_yield());
    }
    return finish();
}
