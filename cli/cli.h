/* cli.h — what the subcommands share: error printing with the kvforge exit-code
 * convention (0 ok, 1 runtime error, 2 usage error) and the command table. */
#ifndef KVF_CLI_H
#define KVF_CLI_H

#include <stdbool.h>

enum kvf_exit { KVF_EXIT_OK = 0, KVF_EXIT_RUNTIME = 1, KVF_EXIT_USAGE = 2 };

struct kvf_command {
    const char *name;
    const char *synopsis; /* one line for `kvforge --help` */
    const char *usage;    /* the full `kvforge NAME --help` text */
    int (*run)(int argc, char **argv); /* NULL: not built yet */
};

/* Prints "kvforge: error: ..." to stderr and returns code. */
int kvf_cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the pending library error (with its source location when KVF_DEBUG is set). */
int kvf_cli_fail_lib(const char *context);
bool kvf_cli_is_help(const char *arg);

#endif
