/*
 * sandbox.c - checks that a guest cannot reach files outside its preopens.
 *
 * Preopens: the disk at /data (empty at start), and a second folder given
 * as --dir HOST::/extra that holds hello.txt containing "hello\n".
 *
 * Every escape attempt must fail. The exact errno is the host's choice
 * among "not allowed" answers: ENOTCAPABLE (what wasmtime returns and
 * wasi-libc passes through), EPERM, EACCES, or ENOENT/EXDEV where the path
 * simply does not resolve inside a preopen. What must never happen is a
 * success, or an EEXIST/ENOTDIR/... that proves the host looked at a real
 * file outside. Paths with ".." that stay inside a preopen must work.
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static int denied(int e) {
    return e == ENOTCAPABLE || e == EPERM || e == EACCES || e == ENOENT || e == EXDEV;
}

/* The call must fail with a "not allowed" errno. */
#define CHECK_DENIED(name, expr)                                                                   \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long r_ = (long)(expr);                                                                    \
        int e_ = errno;                                                                            \
        CHECK(name, r_ == -1 && denied(e_), "%s returned %ld, errno %d (%s)", #expr, r_, e_,      \
              strerror(e_));                                                                       \
    } while (0)

static int open_rd(const char *p) { return open(p, O_RDONLY); }

static int create(const char *p) { return open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644); }

static long read_all(const char *p, char *buf, size_t cap) {
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return (long)n;
}

static int opendir_ok(const char *p) {
    DIR *d = opendir(p);
    if (!d) return -1;
    closedir(d);
    return 0;
}

int main(void) {
    check_init();
    char buf[256];
    struct stat st;

    /* The legitimate folders work. */
    CHECK("extra_hello", read_all("/extra/hello.txt", buf, sizeof buf) == 6 &&
                             strcmp(buf, "hello\n") == 0,
          "read /extra/hello.txt: %s", strerror(errno));
    int fd = create("/data/b.txt");
    CHECK("data_create", fd >= 0, "create /data/b.txt: %s", strerror(errno));
    if (fd >= 0) {
        write(fd, "bee", 3);
        close(fd);
    }
    CHECK_OK("data_mkdir", mkdir("/data/a", 0755));

    /* Escapes through "..". */
    CHECK_DENIED("dotdot_etc_passwd", open_rd("/data/../etc/passwd"));
    CHECK_DENIED("dotdot_deep", open_rd("/data/a/../../etc/passwd"));
    CHECK_DENIED("dotdot_many", open_rd("/data/../../../../../../etc/passwd"));
    CHECK_DENIED("relative_dotdot", open_rd("../etc/passwd"));
    CHECK_DENIED("relative_dotdot_dir", opendir_ok(".."));
    CHECK_DENIED("dotdot_stat", stat("/data/../etc/passwd", &st));
    CHECK_DENIED("dotdot_create", create("/data/../escaped.txt"));
    CHECK_DENIED("dotdot_mkdir", mkdir("/data/../escaped-dir", 0755));
    CHECK_DENIED("dotdot_opendir", opendir_ok("/data/.."));
    CHECK_DENIED("extra_dotdot_to_data", open_rd("/extra/../data/b.txt"));

    /* Absolute paths outside every preopen. */
    CHECK_DENIED("abs_etc_passwd", open_rd("/etc/passwd"));
    CHECK_DENIED("abs_stat", stat("/etc/passwd", &st));
    CHECK_DENIED("abs_create_tmp", create("/tmp/lockstep-sandbox-escape"));
    CHECK_DENIED("abs_root_dir", opendir_ok("/"));
    CHECK_DENIED("abs_proc", open_rd("/proc/self/environ"));

    /* Symlinks that point outside: creating them may be refused; if they
     * exist, following them must fail. */
    int s1 = symlink("/etc", "/data/abs-link");
    printf("# symlink(/etc) %s\n", s1 == 0 ? "was created" : strerror(errno));
    CHECK_DENIED("follow_abs_symlink", open_rd("/data/abs-link/passwd"));
    CHECK_DENIED("follow_abs_symlink_stat", stat("/data/abs-link/passwd", &st));
    CHECK_DENIED("follow_abs_symlink_dir", opendir_ok("/data/abs-link"));
    int s2 = symlink("../../..", "/data/up-link");
    printf("# symlink(../../..) %s\n", s2 == 0 ? "was created" : strerror(errno));
    CHECK_DENIED("follow_up_symlink", open_rd("/data/up-link/etc/passwd"));
    CHECK_DENIED("follow_up_symlink_create", create("/data/up-link/tmp/lockstep-escape"));
    int s3 = symlink("..", "/data/a/parent");
    printf("# symlink(..) in /data/a %s\n", s3 == 0 ? "was created" : strerror(errno));
    CHECK_DENIED("follow_nested_up_symlink", open_rd("/data/a/parent/../etc/passwd"));

    /* Renames and links out of the preopen. */
    CHECK_DENIED("rename_out", rename("/data/b.txt", "/data/../b-escaped.txt"));
    CHECK("rename_out_left_file", stat("/data/b.txt", &st) == 0, "b.txt vanished");
    CHECK_DENIED("rename_in_from_outside", rename("/etc/hostname", "/data/hostname"));
    CHECK_DENIED("link_out", link("/data/b.txt", "/data/../b-link.txt"));
    CHECK_DENIED("link_in_from_outside", link("/etc/passwd", "/data/passwd"));
    CHECK_DENIED("symlink_out_path", symlink("b.txt", "/data/../outside-link"));

    /* ".." and "." that stay inside /data are fine. */
    CHECK("dotdot_inside", read_all("/data/a/../b.txt", buf, sizeof buf) == 3,
          "open /data/a/../b.txt: %s", strerror(errno));
    CHECK("dot_inside", read_all("/data/./b.txt", buf, sizeof buf) == 3,
          "open /data/./b.txt: %s", strerror(errno));
    CHECK_OK("mkdir_via_dotdot_inside", mkdir("/data/a/../c", 0755));
    CHECK_OK("stat_via_dotdot_inside", stat("/data/c/../a", &st));
    CHECK_OK("symlink_inside", symlink("b.txt", "/data/ok-link"));
    CHECK("follow_inside_symlink", read_all("/data/ok-link", buf, sizeof buf) == 3,
          "open /data/ok-link: %s", strerror(errno));
    return finish();
}
