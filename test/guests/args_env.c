/*
 * args_env.c - checks argc/argv and the environment as WASI args_get and
 * environ_get deliver them, including non-ASCII and empty strings.
 *
 * Run it with exactly these arguments (argv[0] may be any name containing
 * "args_env") and environment:
 *   args: ["args_env", "héllo", "日本語", "", "🚀x"]
 *   env:  A=1, UNICODE=ñandú, EMPTY=   (in this order)
 * Expected values are written as UTF-8 byte escapes below, so the check
 * does not depend on how this source file is decoded.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"

extern char **environ;

static void dump(const char *label, const char *s) {
    printf("# %s = \"%s\" hex=", label, s);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) printf("%02x", *p);
    printf("\n");
}

static int find_env(const char *entry) {
    for (int i = 0; environ && environ[i]; i++)
        if (strcmp(environ[i], entry) == 0) return i;
    return -1;
}

int main(int argc, char **argv) {
    check_init();
    static const char *const want[] = {
        NULL,                                 /* argv[0]: checked loosely */
        "h\xc3\xa9llo",                       /* héllo */
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", /* 日本語 */
        "",                                   /* empty argument */
        "\xf0\x9f\x9a\x80x",                  /* 🚀x */
    };
    for (int i = 0; i < argc; i++) {
        char label[32];
        snprintf(label, sizeof label, "argv[%d]", i);
        dump(label, argv[i]);
    }
    CHECK("argc", argc == 5, "argc is %d, want 5", argc);
    CHECK("argv_null_terminated", argv[argc] == NULL, "argv[argc] is not NULL");
    CHECK("argv0", argc > 0 && argv[0] && strstr(argv[0], "args_env") != NULL,
          "argv[0] is \"%s\", want a name containing args_env", argc > 0 ? argv[0] : "(none)");
    for (int i = 1; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "argv%d", i);
        CHECK(name, i < argc && strcmp(argv[i], want[i]) == 0, "argv[%d] is \"%s\"", i,
              i < argc ? argv[i] : "(missing)");
    }
    CHECK("argv3_empty", argc > 3 && argv[3][0] == '\0', "argv[3] is not empty");

    int n = 0;
    for (; environ && environ[n]; n++) dump("environ", environ[n]);
    printf("# environ has %d entries\n", n);

    const char *a = getenv("A");
    const char *u = getenv("UNICODE");
    const char *e = getenv("EMPTY");
    CHECK("env_A", a && strcmp(a, "1") == 0, "A is %s", a ? a : "(unset)");
    CHECK("env_UNICODE", u && strcmp(u, "\xc3\xb1" "and\xc3\xba") == 0, "UNICODE is %s",
          u ? u : "(unset)");
    CHECK("env_EMPTY_set", e != NULL, "EMPTY is unset");
    CHECK("env_EMPTY_empty", e && e[0] == '\0', "EMPTY is \"%s\"", e ? e : "(unset)");
    CHECK("env_missing", getenv("NOT_SET_ANYWHERE") == NULL, "NOT_SET_ANYWHERE is set");

    int ia = find_env("A=1"), iu = find_env("UNICODE=\xc3\xb1" "and\xc3\xba"), ie = find_env("EMPTY=");
    CHECK("env_order", ia >= 0 && iu > ia && ie > iu, "positions A=%d UNICODE=%d EMPTY=%d", ia, iu,
          ie);
    return finish();
}
