/*
 * wasi_direct.c - calls WASI preview1 functions directly (through wasi-libc's
 * __wasi_* wrappers or a raw import), for the functions and error paths that
 * ordinary libc code rarely reaches: fd_renumber, fd_fdstat_set_rights,
 * fd_advise, the set_times pair (virtual timestamps: NOTSUP), proc_raise
 * (ENOSYS on purpose), fd_prestat_dir_name with a short buffer, bad
 * descriptors, bad pointers (FAULT), invalid clocks, poll_oneoff with no
 * subscriptions, sock_* on things that are not sockets, and a non-blocking
 * sock_accept with nobody connecting.
 *
 * Run with: --listen 127.0.0.1:0 (fd 3) --disk EMPTY (fd 4, /data)
 *           --dir EMPTY::/extra (fd 5). No client.
 */
#include <stdint.h>
#include <stdlib.h>
#include <wasi/api.h>

#include "check.h"

/* proc_raise is no longer declared by wasi-libc's headers; import it by hand. */
__attribute__((import_module("wasi_snapshot_preview1"), import_name("proc_raise"))) uint16_t
raw_proc_raise(uint32_t sig);

/* clock_time_get with a raw pointer, to hand the host an out-of-bounds address. */
__attribute__((import_module("wasi_snapshot_preview1"), import_name("clock_time_get"))) uint16_t
raw_clock_time_get(uint32_t id, uint64_t precision, uint32_t out_ptr);

#define LISTENER 3
#define DISK 4
#define EXTRA 5

static __wasi_fd_t open_file(const char *name, __wasi_oflags_t oflags) {
    __wasi_fd_t fd = 0;
    __wasi_errno_t e = __wasi_path_open(DISK, 0, name, oflags, ~(__wasi_rights_t)0, ~(__wasi_rights_t)0, 0, &fd);
    return e == 0 ? fd : (__wasi_fd_t)-1;
}

int main(void) {
    check_init();
    __wasi_errno_t e;

    /* proc_raise: ENOSYS on purpose. */
    CHECK("proc_raise_enosys", raw_proc_raise(6) == __WASI_ERRNO_NOSYS, "got %u", raw_proc_raise(6));

    /* Bad pointers are FAULT, not a crash. */
    uint16_t f = raw_clock_time_get(__WASI_CLOCKID_MONOTONIC, 0, 0xfffffff0u);
    CHECK("clock_time_get_fault", f == __WASI_ERRNO_FAULT, "got %u", f);

    /* Invalid clock ids. */
    __wasi_timestamp_t t;
    e = __wasi_clock_time_get(99, 0, &t);
    CHECK("clock_time_get_inval", e == __WASI_ERRNO_INVAL, "got %u", e);
    e = __wasi_clock_res_get(99, &t);
    CHECK("clock_res_get_inval", e == __WASI_ERRNO_INVAL, "got %u", e);
    e = __wasi_clock_res_get(__WASI_CLOCKID_REALTIME, &t);
    CHECK("clock_res_get_realtime", e == 0 && t > 0 && t <= 1000000000ull, "e=%u t=%llu", e, (unsigned long long)t);

    /* random_get of zero bytes succeeds and touches nothing. */
    uint8_t rb[4] = {1, 2, 3, 4};
    e = __wasi_random_get(rb, 0);
    CHECK("random_get_zero", e == 0 && rb[0] == 1 && rb[3] == 4, "e=%u", e);

    /* poll_oneoff with no subscriptions is INVAL. */
    __wasi_subscription_t sub;
    __wasi_event_t ev;
    __wasi_size_t nev = 99;
    e = __wasi_poll_oneoff(&sub, &ev, 0, &nev);
    CHECK("poll_oneoff_zero_inval", e == __WASI_ERRNO_INVAL, "got %u", e);

    /* poll_oneoff on a bad descriptor reports BADF in the event, not as the call's result. */
    memset(&sub, 0, sizeof sub);
    sub.userdata = 77;
    sub.u.tag = __WASI_EVENTTYPE_FD_READ;
    sub.u.u.fd_read.file_descriptor = 999;
    e = __wasi_poll_oneoff(&sub, &ev, 1, &nev);
    CHECK("poll_oneoff_badf_event", e == 0 && nev == 1 && ev.userdata == 77 && ev.error == __WASI_ERRNO_BADF,
          "e=%u nev=%lu err=%u", e, (unsigned long)nev, ev.error);

    /* fd_prestat_dir_name with a short buffer. */
    char name[16];
    e = __wasi_fd_prestat_dir_name(DISK, (uint8_t *)name, 2);
    CHECK("prestat_dir_name_short", e == __WASI_ERRNO_NAMETOOLONG, "got %u", e);
    e = __wasi_fd_prestat_dir_name(DISK, (uint8_t *)name, 5);
    CHECK("prestat_dir_name", e == 0 && memcmp(name, "/data", 5) == 0, "got %u", e);
    __wasi_prestat_t ps;
    e = __wasi_fd_prestat_get(LISTENER, &ps);
    CHECK("prestat_listener_not_dir", e == 0 && ps.tag != __WASI_PREOPENTYPE_DIR, "e=%u tag=%u", e, ps.tag);
    e = __wasi_fd_prestat_get(1, &ps);
    CHECK("prestat_stdout_badf", e == __WASI_ERRNO_BADF, "got %u", e);

    /* Bad descriptors everywhere. */
    __wasi_fdstat_t st;
    CHECK("fdstat_badf", __wasi_fd_fdstat_get(1234, &st) == __WASI_ERRNO_BADF, "");
    CHECK("close_badf", __wasi_fd_close(1234) == __WASI_ERRNO_BADF, "");
    CHECK("renumber_badf", __wasi_fd_renumber(1234, 1) == __WASI_ERRNO_BADF, "");

    /* fdstat of stdio, a listener and a directory. */
    e = __wasi_fd_fdstat_get(1, &st);
    CHECK("fdstat_stdout", e == 0 && st.fs_filetype == __WASI_FILETYPE_CHARACTER_DEVICE &&
                               (st.fs_rights_base & __WASI_RIGHTS_FD_SEEK) == 0,
          "e=%u type=%u", e, st.fs_filetype);
    e = __wasi_fd_fdstat_get(LISTENER, &st);
    CHECK("fdstat_listener", e == 0 && st.fs_filetype == __WASI_FILETYPE_SOCKET_STREAM &&
                                 (st.fs_rights_base & __WASI_RIGHTS_SOCK_ACCEPT) != 0,
          "e=%u type=%u", e, st.fs_filetype);
    e = __wasi_fd_fdstat_get(DISK, &st);
    CHECK("fdstat_dir", e == 0 && st.fs_filetype == __WASI_FILETYPE_DIRECTORY, "e=%u", e);

    /* A non-blocking accept with nobody connecting is AGAIN; sock_* on non-sockets. */
    e = __wasi_fd_fdstat_set_flags(LISTENER, __WASI_FDFLAGS_NONBLOCK);
    CHECK("listener_set_nonblock", e == 0, "got %u", e);
    __wasi_fd_t conn;
    e = __wasi_sock_accept(LISTENER, 0, &conn);
    CHECK("sock_accept_again", e == __WASI_ERRNO_AGAIN, "got %u", e);
    e = __wasi_sock_accept(DISK, 0, &conn);
    CHECK("sock_accept_notsock", e == __WASI_ERRNO_NOTSOCK, "got %u", e);
    e = __wasi_sock_shutdown(DISK, __WASI_SDFLAGS_WR);
    CHECK("sock_shutdown_notsock", e == __WASI_ERRNO_NOTSOCK, "got %u", e);

    /* A file to work on. */
    __wasi_fd_t a = open_file("a.txt", __WASI_OFLAGS_CREAT);
    CHECK("open_a", a != (__wasi_fd_t)-1, "");
    __wasi_ciovec_t iov = {(const uint8_t *)"abcdef", 6};
    __wasi_size_t n;
    e = __wasi_fd_write(a, &iov, 1, &n);
    CHECK("write_a", e == 0 && n == 6, "e=%u n=%lu", e, (unsigned long)n);

    /* fd_advise is advisory: valid advice succeeds, invalid advice is INVAL. */
    e = __wasi_fd_advise(a, 0, 6, __WASI_ADVICE_SEQUENTIAL);
    CHECK("fd_advise", e == 0, "got %u", e);
    e = __wasi_fd_advise(a, 0, 6, 77);
    CHECK("fd_advise_inval", e == __WASI_ERRNO_INVAL, "got %u", e);
    e = __wasi_fd_advise(1, 0, 6, __WASI_ADVICE_NORMAL);
    CHECK("fd_advise_stdout_spipe", e == __WASI_ERRNO_SPIPE, "got %u", e);

    /* Timestamps are virtual (always 0): setting them is refused on purpose, reading gives 0. */
    e = __wasi_fd_filestat_set_times(a, 1, 2, __WASI_FSTFLAGS_ATIM | __WASI_FSTFLAGS_MTIM);
    CHECK("fd_filestat_set_times_notsup", e == __WASI_ERRNO_NOTSUP, "got %u", e);
    e = __wasi_fd_filestat_set_times(a, 0, 0, 0);
    CHECK("fd_filestat_set_times_nothing", e == 0, "got %u", e);
    e = __wasi_path_filestat_set_times(DISK, 0, "a.txt", 1, 2, __WASI_FSTFLAGS_MTIM);
    CHECK("path_filestat_set_times_notsup", e == __WASI_ERRNO_NOTSUP, "got %u", e);
    e = __wasi_path_filestat_set_times(DISK, 0, "a.txt", 0, 0, 0);
    CHECK("path_filestat_set_times_nothing", e == 0, "got %u", e);
    __wasi_filestat_t fst;
    e = __wasi_fd_filestat_get(a, &fst);
    CHECK("filestat_virtual_times", e == 0 && fst.mtim == 0 && fst.atim == 0 && fst.size == 6 && fst.dev != 0,
          "e=%u mtim=%llu size=%llu", e, (unsigned long long)fst.mtim, (unsigned long long)fst.size);

    /* fd_fdstat_set_rights: dropping works, and a dropped right is enforced; adding is refused. */
    e = __wasi_fd_fdstat_set_rights(a, __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_SEEK | __WASI_RIGHTS_FD_TELL, 0);
    CHECK("set_rights_drop", e == 0, "got %u", e);
    e = __wasi_fd_write(a, &iov, 1, &n);
    CHECK("set_rights_enforced", e == __WASI_ERRNO_NOTCAPABLE || e == __WASI_ERRNO_BADF, "got %u", e);
    e = __wasi_fd_fdstat_set_rights(a, __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_WRITE, 0);
    CHECK("set_rights_add_refused", e == __WASI_ERRNO_NOTCAPABLE, "got %u", e);

    /* fd_renumber: b takes a's place; a's old number is free afterwards. */
    __wasi_fd_t b = open_file("b.txt", __WASI_OFLAGS_CREAT);
    CHECK("open_b", b != (__wasi_fd_t)-1, "");
    e = __wasi_fd_renumber(b, a);
    CHECK("renumber", e == 0, "got %u", e);
    e = __wasi_fd_write(a, &iov, 1, &n); /* a now names b.txt, which has full rights */
    CHECK("renumber_target_is_b", e == 0 && n == 6, "e=%u", e);
    CHECK("renumber_source_closed", __wasi_fd_close(b) == __WASI_ERRNO_BADF, "");
    e = __wasi_fd_filestat_get(a, &fst);
    CHECK("renumber_b_size", e == 0 && fst.size == 6, "e=%u", e);
    CHECK("close_a", __wasi_fd_close(a) == 0, "");

    /* Listing the second preopen (empty): only "." and "..". */
    __wasi_fd_t x;
    __wasi_rights_t dir_rights = __WASI_RIGHTS_FD_READDIR | __WASI_RIGHTS_PATH_OPEN | __WASI_RIGHTS_FD_FILESTAT_GET;
    e = __wasi_path_open(EXTRA, 0, ".", __WASI_OFLAGS_DIRECTORY, dir_rights, ~(__wasi_rights_t)0, 0, &x);
    CHECK("open_extra_dot", e == 0, "got %u", e);
    uint8_t dbuf[256];
    __wasi_size_t used = 0;
    e = __wasi_fd_readdir(x, dbuf, sizeof dbuf, 0, &used);
    CHECK("readdir_empty", e == 0 && used == 2 * sizeof(__wasi_dirent_t) + 1 + 2, "e=%u used=%lu", e, (unsigned long)used);
    CHECK("close_x", __wasi_fd_close(x) == 0, "");

    /* sched_yield and an invalid sock_shutdown mode on a non-socket. */
    CHECK("sched_yield", __wasi_sched_yield() == 0, "");
    return finish();
}
