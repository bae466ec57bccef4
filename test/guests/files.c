/*
 * files.c - checks file and directory calls on the VM's disk, preopened as
 * /data (empty at start; anything left from an earlier run is removed
 * first). It uses paths under /data only and removes what it made at the
 * end, so it can run again on the same disk.
 *
 * Expected semantics are WASI preview1's as wasi-libc exposes them, plus
 * Lockstep's determinism rule: directory listings come sorted by name in
 * byte order. (Node's node:wasi lists in host order, so readdir_sorted
 * can fail there; Lockstep must pass it.) Timestamps are virtual, so they
 * are not compared with the wall clock.
 */
#define _DEFAULT_SOURCE /* symlink, readlink, link, fsync, ... */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

#define D "/data"

static int write_file(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    ssize_t n = write(fd, s, strlen(s));
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

/* Reads a whole small file into buf (NUL-terminated); returns its length. */
static long read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (long)len;
}

static off_t size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Removes a tree; used to clear leftovers and to clean up. */
static void rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char sub[512];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(void) {
    check_init();
    char buf[4096];
    struct stat st;
    int fd;

    /* Start from a clean disk: remove what an earlier run may have left. */
    DIR *root = opendir(D);
    CHECK("opendir_data", root != NULL, "opendir(/data): %s", strerror(errno));
    if (root) {
        struct dirent *e;
        while ((e = readdir(root))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[512];
            snprintf(sub, sizeof sub, D "/%s", e->d_name);
            rm_rf(sub);
        }
        closedir(root);
    }

    /* --- create, write, read -------------------------------------------- */
    fd = open(D "/a.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK("create", fd >= 0, "open: %s", strerror(errno));
    CHECK("write", write(fd, "hello world", 11) == 11, "write: %s", strerror(errno));
    CHECK_OK("close", close(fd));
    CHECK_ERR("close_twice_ebadf", close(fd), EBADF);

    fd = open(D "/a.txt", O_RDONLY);
    CHECK("open_rdonly", fd >= 0, "open: %s", strerror(errno));
    memset(buf, 0, sizeof buf);
    CHECK("read", read(fd, buf, sizeof buf) == 11 && memcmp(buf, "hello world", 11) == 0,
          "read got \"%s\"", buf);
    CHECK("read_eof", read(fd, buf, sizeof buf) == 0, "read at EOF did not return 0");
    CHECK("lseek_cur_after_read", lseek(fd, 0, SEEK_CUR) == 11, "position %lld",
          (long long)lseek(fd, 0, SEEK_CUR));
    memset(buf, 0, sizeof buf);
    CHECK("pread", pread(fd, buf, 5, 6) == 5 && memcmp(buf, "world", 5) == 0, "pread got \"%s\"",
          buf);
    CHECK("pread_keeps_offset", lseek(fd, 0, SEEK_CUR) == 11, "position moved");
    CHECK_ERR2("write_on_rdonly", write(fd, "x", 1), EBADF, ENOTCAPABLE);
    close(fd);

    /* --- pwrite, lseek, holes ------------------------------------------- */
    fd = open(D "/a.txt", O_RDWR);
    CHECK("open_rdwr", fd >= 0, "open: %s", strerror(errno));
    CHECK("pwrite", pwrite(fd, "HELLO", 5, 0) == 5, "pwrite: %s", strerror(errno));
    CHECK("pwrite_keeps_offset", lseek(fd, 0, SEEK_CUR) == 0, "position moved");
    CHECK("lseek_end", lseek(fd, 0, SEEK_END) == 11, "SEEK_END gave %lld",
          (long long)lseek(fd, 0, SEEK_END));
    CHECK("lseek_set", lseek(fd, 2, SEEK_SET) == 2, "SEEK_SET failed");
    CHECK("lseek_cur", lseek(fd, 3, SEEK_CUR) == 5, "SEEK_CUR failed");
    CHECK_ERR("lseek_negative_einval", lseek(fd, -100, SEEK_SET), EINVAL);
    CHECK("lseek_past_end", lseek(fd, 20, SEEK_SET) == 20, "seek past end failed");
    CHECK("write_past_end", write(fd, "!", 1) == 1, "write: %s", strerror(errno));
    CHECK_OK("fstat", fstat(fd, &st));
    CHECK("fstat_size_after_hole", st.st_size == 21, "size %lld", (long long)st.st_size);
    CHECK("fstat_is_reg", S_ISREG(st.st_mode), "mode %o", (unsigned)st.st_mode);
    memset(buf, 'z', 32);
    CHECK("pread_hole", pread(fd, buf, 21, 0) == 21 && memcmp(buf, "HELLO world", 11) == 0 &&
                            buf[11] == 0 && buf[19] == 0 && buf[20] == '!',
          "content wrong");
    CHECK_OK("fsync", fsync(fd));
    CHECK_OK("fdatasync", fdatasync(fd));

    /* --- ftruncate, posix_fallocate ------------------------------------- */
    CHECK_OK("ftruncate_grow", ftruncate(fd, 100));
    fstat(fd, &st);
    CHECK("ftruncate_grow_size", st.st_size == 100, "size %lld", (long long)st.st_size);
    CHECK_OK("ftruncate_shrink", ftruncate(fd, 3));
    fstat(fd, &st);
    CHECK("ftruncate_shrink_size", st.st_size == 3, "size %lld", (long long)st.st_size);
    int fa = posix_fallocate(fd, 0, 4096);
    CHECK("posix_fallocate", fa == 0, "returned %d (%s)", fa, strerror(fa));
    fstat(fd, &st);
    CHECK("posix_fallocate_size", st.st_size >= 4096, "size %lld", (long long)st.st_size);
    CHECK("posix_fallocate_keeps_data", pread(fd, buf, 3, 0) == 3 && memcmp(buf, "HEL", 3) == 0,
          "data changed");
    close(fd);

    /* --- stdio: fopen, fseek, ftell -------------------------------------- */
    FILE *f = fopen(D "/b.txt", "w+");
    CHECK("fopen_w+", f != NULL, "fopen: %s", strerror(errno));
    if (f) {
        fputs("line one\nline two\n", f);
        CHECK("ftell_after_write", ftell(f) == 18, "ftell %ld", ftell(f));
        rewind(f);
        CHECK("fgets", fgets(buf, sizeof buf, f) && strcmp(buf, "line one\n") == 0, "got %s", buf);
        CHECK("ftell_after_fgets", ftell(f) == 9, "ftell %ld", ftell(f));
        fseek(f, -4, SEEK_END);
        CHECK("fseek_end", fgets(buf, sizeof buf, f) && strcmp(buf, "two\n") == 0, "got %s", buf);
        CHECK_OK("fclose", fclose(f));
    }
    f = fopen(D "/b.txt", "a");
    if (f) {
        fputs("line three\n", f);
        fclose(f);
    }
    CHECK("fopen_append", size_of(D "/b.txt") == 29, "size %lld",
          (long long)size_of(D "/b.txt"));

    /* --- O_APPEND, O_EXCL, O_TRUNC --------------------------------------- */
    write_file(D "/c.txt", "abc");
    fd = open(D "/c.txt", O_WRONLY | O_APPEND);
    CHECK("open_append", fd >= 0, "open: %s", strerror(errno));
    lseek(fd, 0, SEEK_SET);
    CHECK("append_write", write(fd, "def", 3) == 3, "write: %s", strerror(errno));
    close(fd);
    read_file(D "/c.txt", buf, sizeof buf);
    CHECK("append_goes_to_end", strcmp(buf, "abcdef") == 0, "content \"%s\"", buf);
    CHECK_ERR("o_excl_eexist", open(D "/c.txt", O_WRONLY | O_CREAT | O_EXCL, 0644), EEXIST);
    fd = open(D "/new-excl.txt", O_WRONLY | O_CREAT | O_EXCL, 0644);
    CHECK("o_excl_creates", fd >= 0, "open: %s", strerror(errno));
    close(fd);
    fd = open(D "/c.txt", O_WRONLY | O_TRUNC);
    CHECK("o_trunc_open", fd >= 0, "open: %s", strerror(errno));
    close(fd);
    CHECK("o_trunc_empties", size_of(D "/c.txt") == 0, "size %lld",
          (long long)size_of(D "/c.txt"));

    /* --- a larger file --------------------------------------------------- */
    fd = open(D "/big.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
    static unsigned char blk[65536];
    uint32_t sum_w = 0, sum_r = 0;
    for (int i = 0; i < 16; i++) {
        for (size_t j = 0; j < sizeof blk; j++) blk[j] = (unsigned char)(i * 131 + j * 7);
        for (size_t j = 0; j < sizeof blk; j++) sum_w = sum_w * 31 + blk[j];
        if (write(fd, blk, sizeof blk) != (ssize_t)sizeof blk) break;
    }
    lseek(fd, 0, SEEK_SET);
    ssize_t n;
    size_t total = 0;
    while ((n = read(fd, blk, sizeof blk)) > 0) {
        for (ssize_t j = 0; j < n; j++) sum_r = sum_r * 31 + blk[j];
        total += (size_t)n;
    }
    close(fd);
    CHECK("big_file_roundtrip", total == 16 * sizeof blk && sum_r == sum_w,
          "read %zu bytes, checksum %08x vs %08x", total, sum_r, sum_w);

    /* --- directories ------------------------------------------------------ */
    CHECK_OK("mkdir", mkdir(D "/dir", 0755));
    CHECK_ERR("mkdir_eexist", mkdir(D "/dir", 0755), EEXIST);
    CHECK_OK("stat_dir", stat(D "/dir", &st));
    CHECK("stat_dir_is_dir", S_ISDIR(st.st_mode), "mode %o", (unsigned)st.st_mode);
    write_file(D "/dir/inner.txt", "inner");
    CHECK_ERR("rmdir_enotempty", rmdir(D "/dir"), ENOTEMPTY);
    CHECK_ERR2("unlink_dir", unlink(D "/dir"), EISDIR, EPERM);
    CHECK_ERR("rmdir_file_enotdir", rmdir(D "/a.txt"), ENOTDIR);
    CHECK_ERR("open_under_file_enotdir", open(D "/a.txt/x", O_RDONLY), ENOTDIR);
    CHECK_ERR("open_dir_for_write_eisdir", open(D "/dir", O_WRONLY), EISDIR);
    CHECK_ERR("open_missing_enoent", open(D "/missing.txt", O_RDONLY), ENOENT);
    CHECK_ERR("open_missing_dir_enoent", open(D "/nodir/x.txt", O_WRONLY | O_CREAT, 0644),
              ENOENT);
    CHECK_ERR("stat_missing_enoent", stat(D "/missing.txt", &st), ENOENT);
    CHECK_ERR("unlink_missing_enoent", unlink(D "/missing.txt"), ENOENT);
    CHECK_ERR("mkdir_missing_parent_enoent", mkdir(D "/nodir/sub", 0755), ENOENT);
    CHECK("opendir_file_enotdir", opendir(D "/a.txt") == NULL && errno == ENOTDIR,
          "errno %d (%s)", errno, strerror(errno));
    CHECK_ERR("read_bad_fd_ebadf", read(1234, buf, 1), EBADF);
    CHECK_ERR("fstat_bad_fd_ebadf", fstat(1234, &st), EBADF);
    CHECK_ERR("close_bad_fd_ebadf", close(1234), EBADF);
    CHECK_OK("mkdir_empty", mkdir(D "/empty", 0755));
    CHECK_OK("rmdir", rmdir(D "/empty"));
    CHECK_ERR("rmdir_gone_enoent", rmdir(D "/empty"), ENOENT);

    /* --- readdir: Lockstep lists in byte order of names ----------------- */
    mkdir(D "/sorted", 0755);
    const char *names[] = {"zeta", "alpha", "Mid", "beta", "_under", "10", "9", "a.b", "aa", "a"};
    const size_t nnames = sizeof names / sizeof names[0];
    for (size_t i = 0; i < nnames; i++) {
        char p[256];
        snprintf(p, sizeof p, D "/sorted/%s", names[i]);
        if (i == 3)
            mkdir(p, 0755);
        else
            write_file(p, names[i]);
    }
    char *got[32];
    size_t ngot = 0;
    int saw_dot = 0, saw_dotdot = 0;
    DIR *dir = opendir(D "/sorted");
    CHECK("opendir", dir != NULL, "opendir: %s", strerror(errno));
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) && ngot < 32) {
            if (!strcmp(e->d_name, ".")) {
                saw_dot = 1;
                continue;
            }
            if (!strcmp(e->d_name, "..")) {
                saw_dotdot = 1;
                continue;
            }
            got[ngot++] = strdup(e->d_name);
            if (!strcmp(e->d_name, "beta"))
                CHECK("readdir_d_type_dir", e->d_type == DT_DIR, "d_type %d", e->d_type);
            if (!strcmp(e->d_name, "zeta"))
                CHECK("readdir_d_type_reg", e->d_type == DT_REG, "d_type %d", e->d_type);
        }
        closedir(dir);
    }
    printf("# readdir order:");
    for (size_t i = 0; i < ngot; i++) printf(" %s", got[i]);
    printf(" (dot %d, dotdot %d)\n", saw_dot, saw_dotdot);
    CHECK("readdir_count", ngot == nnames, "listed %zu names, want %zu", ngot, nnames);
    int sorted = 1;
    for (size_t i = 1; i < ngot; i++)
        if (strcmp(got[i - 1], got[i]) >= 0) sorted = 0;
    CHECK("readdir_sorted", sorted, "names are not in byte order");
    qsort(got, ngot, sizeof *got, cmp_str);
    int all = ngot == nnames;
    const char *want_sorted[] = {"10", "9", "Mid", "_under", "a", "a.b", "aa", "alpha", "beta",
                                 "zeta"};
    for (size_t i = 0; all && i < nnames; i++)
        if (strcmp(got[i], want_sorted[i]) != 0) all = 0;
    CHECK("readdir_names", all, "names differ from the created ones");
    for (size_t i = 0; i < ngot; i++) free(got[i]);

    /* --- rename ----------------------------------------------------------- */
    write_file(D "/r1.txt", "one");
    write_file(D "/r2.txt", "two");
    CHECK_OK("rename_file", rename(D "/r1.txt", D "/r3.txt"));
    CHECK_ERR("rename_source_gone", stat(D "/r1.txt", &st), ENOENT);
    CHECK_OK("rename_replaces_file", rename(D "/r3.txt", D "/r2.txt"));
    read_file(D "/r2.txt", buf, sizeof buf);
    CHECK("rename_replaced_content", strcmp(buf, "one") == 0, "content \"%s\"", buf);
    CHECK_OK("rename_dir", rename(D "/dir", D "/dir2"));
    CHECK("rename_dir_moves_contents", read_file(D "/dir2/inner.txt", buf, sizeof buf) == 5,
          "inner file missing");
    mkdir(D "/emptydir", 0755);
    CHECK_OK("rename_dir_over_empty_dir", rename(D "/dir2", D "/emptydir"));
    CHECK("rename_dir_over_empty_dir_result",
          read_file(D "/emptydir/inner.txt", buf, sizeof buf) == 5, "inner file missing");
    mkdir(D "/full", 0755);
    write_file(D "/full/f", "f");
    CHECK_ERR2("rename_dir_over_nonempty", rename(D "/emptydir", D "/full"), ENOTEMPTY, EEXIST);
    CHECK_ERR("rename_file_over_dir_eisdir", rename(D "/r2.txt", D "/full"), EISDIR);
    CHECK_ERR("rename_dir_over_file_enotdir", rename(D "/full", D "/r2.txt"), ENOTDIR);
    CHECK_ERR("rename_missing_enoent", rename(D "/missing", D "/x"), ENOENT);
    CHECK_OK("rename_into_subdir", rename(D "/r2.txt", D "/full/r2.txt"));

    /* --- symlinks and hard links ---------------------------------------- */
    write_file(D "/target.txt", "target");
    CHECK_OK("symlink", symlink("target.txt", D "/link"));
    memset(buf, 0, sizeof buf);
    ssize_t rl = readlink(D "/link", buf, sizeof buf - 1);
    CHECK("readlink", rl == 10 && memcmp(buf, "target.txt", 10) == 0, "readlink gave %zd \"%s\"",
          rl, buf);
    CHECK_OK("lstat_link", lstat(D "/link", &st));
    CHECK("lstat_is_link", S_ISLNK(st.st_mode), "mode %o", (unsigned)st.st_mode);
    CHECK_OK("stat_through_link", stat(D "/link", &st));
    CHECK("stat_through_link_is_reg", S_ISREG(st.st_mode) && st.st_size == 6, "mode %o size %lld",
          (unsigned)st.st_mode, (long long)st.st_size);
    CHECK("open_through_link", read_file(D "/link", buf, sizeof buf) == 6 &&
                                   strcmp(buf, "target") == 0,
          "content \"%s\"", buf);
    CHECK_OK("symlink_into_subdir", symlink("full/f", D "/link2"));
    CHECK("open_through_link_subdir", read_file(D "/link2", buf, sizeof buf) == 1, "failed");
    mkdir(D "/sub", 0755);
    CHECK_OK("symlink_dotdot_inside", symlink("../target.txt", D "/sub/up"));
    CHECK("open_through_dotdot_link", read_file(D "/sub/up", buf, sizeof buf) == 6,
          "cannot read through ../target.txt: %s", strerror(errno));
    CHECK_ERR("symlink_eexist", symlink("x", D "/link"), EEXIST);
    CHECK_ERR("readlink_not_link_einval", readlink(D "/target.txt", buf, sizeof buf), EINVAL);
    CHECK_OK("symlink_dangling", symlink("nowhere", D "/dangling"));
    CHECK_ERR("open_dangling_enoent", open(D "/dangling", O_RDONLY), ENOENT);
    CHECK_OK("unlink_link", unlink(D "/link"));
    CHECK("unlink_link_keeps_target", size_of(D "/target.txt") == 6, "target gone");

    CHECK_OK("link", link(D "/target.txt", D "/hard.txt"));
    CHECK_OK("stat_hard", stat(D "/hard.txt", &st));
    CHECK("link_nlink_2", st.st_nlink == 2, "nlink %llu", (unsigned long long)st.st_nlink);
    fd = open(D "/hard.txt", O_WRONLY | O_APPEND);
    if (fd >= 0) {
        write(fd, "+", 1);
        close(fd);
    }
    read_file(D "/target.txt", buf, sizeof buf);
    CHECK("link_shares_data", strcmp(buf, "target+") == 0, "content \"%s\"", buf);
    CHECK_ERR("link_eexist", link(D "/target.txt", D "/hard.txt"), EEXIST);
    CHECK_OK("unlink_hard", unlink(D "/hard.txt"));
    CHECK("unlink_hard_keeps_other", size_of(D "/target.txt") == 7, "size %lld",
          (long long)size_of(D "/target.txt"));

    /* --- cleanup, and the disk is empty again -------------------------- */
    root = opendir(D);
    if (root) {
        struct dirent *e;
        while ((e = readdir(root))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[512];
            snprintf(sub, sizeof sub, D "/%s", e->d_name);
            rm_rf(sub);
        }
        closedir(root);
    }
    int left = 0;
    root = opendir(D);
    if (root) {
        struct dirent *e;
        while ((e = readdir(root)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) left++;
        closedir(root);
    }
    CHECK("cleanup", left == 0, "%d entries left in /data", left);
    return finish();
}
