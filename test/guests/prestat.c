/*
 * prestat.c - walks the preopened fds the way wasi-libc and Rust std do:
 * fd_prestat_get from fd 3 upward until EBADF. It prints one line per fd,
 * "# fd N: tag T dir NAME" or "# fd N: tag T (not a directory)", and then
 * proves that the preopen scan at start-up skipped the listener fds by
 * writing and reading /data/x with fopen.
 *
 * Argument argv[1] is the expected layout, one letter per fd from 3: L for
 * a listener (fd_prestat_get succeeds with a tag that is not "dir"), D for
 * a directory. Default "LLD": run with two --listen and a disk. The last
 * D must be named /data. (If the host answered fd_prestat_get on a
 * listener with an error other than EBADF, wasi-libc would have exited
 * with code 71 before main.)
 */
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

#include "check.h"

int main(int argc, char **argv) {
    check_init();
    const char *want = argc > 1 ? argv[1] : "LLD";
    char got[64] = "";
    char last_dir[256] = "";
    int fd = 3;
    __wasi_errno_t err = 0;
    for (; fd < 3 + 60; fd++) {
        __wasi_prestat_t ps;
        err = __wasi_fd_prestat_get(fd, &ps);
        if (err != 0) break;
        if (ps.tag == __WASI_PREOPENTYPE_DIR) {
            char name[256] = "";
            size_t len = ps.u.dir.pr_name_len;
            if (len >= sizeof name) len = sizeof name - 1;
            __wasi_errno_t e2 = __wasi_fd_prestat_dir_name(fd, (uint8_t *)name, len);
            name[len] = '\0';
            printf("# fd %d: tag %d dir %s%s\n", fd, ps.tag, name, e2 ? " (name error)" : "");
            strcpy(last_dir, name);
            strcat(got, "D");
        } else {
            printf("# fd %d: tag %d (not a directory)\n", fd, ps.tag);
            strcat(got, "L");
        }
    }
    printf("# scan ended at fd %d with errno %d\n", fd, err);
    CHECK("scan_ends_with_ebadf", err == __WASI_ERRNO_BADF, "errno %d", err);
    CHECK("layout", strcmp(got, want) == 0, "layout %s, want %s", got, want);
    CHECK("disk_named_data", strcmp(last_dir, "/data") == 0, "last directory is \"%s\"",
          last_dir);

    FILE *f = fopen("/data/x", "w");
    CHECK("fopen_data_x_write", f != NULL, "fopen: %s", strerror(errno));
    if (f) {
        fputs("preopen ok\n", f);
        fclose(f);
    }
    char buf[64] = "";
    f = fopen("/data/x", "r");
    CHECK("fopen_data_x_read", f && fgets(buf, sizeof buf, f) && strcmp(buf, "preopen ok\n") == 0,
          "read back \"%s\"", buf);
    if (f) fclose(f);
    return finish();
}
