/* kvforge plot METRICS.jsonl... -o OUT.svg */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "train/plot.h"

int kvf_cmd_plot(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'}, {0, 0, 0, 0}};
    const char *out = NULL;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        if (c == 'o') out = optarg;
        else return kvf_cli_fail(KVF_EXIT_USAGE, "plot: see kvforge plot --help");
    }
    if (!out || optind >= argc)
        return kvf_cli_fail(KVF_EXIT_USAGE, "plot: give METRICS.jsonl files and -o OUT.svg");
    if (kvf_plot_svg((const char *const *)argv + optind, argc - optind, out) != KVF_OK)
        return kvf_cli_fail_lib("plot");
    if (kvf_plot_summary((const char *const *)argv + optind, argc - optind, stdout) != KVF_OK)
        return kvf_cli_fail_lib("plot");
    printf("\nwrote %s (%d runs)\n", out, argc - optind);
    return KVF_EXIT_OK;
}
