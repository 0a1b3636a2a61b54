/* kvforge train CONFIG.yaml [--set key=value]... [--resume RUN_DIR] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "train/trainer.h"

int kvf_cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"set", required_argument, 0, 's'},
                                         {"resume", required_argument, 0, 'r'},
                                         {"stop-after", required_argument, 0, 'S'},
                                         {0, 0, 0, 0}};
    const char *sets[64];
    int n_sets = 0;
    const char *resume = NULL;
    long long stop_after = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's') {
            if (n_sets == 64) return kvf_cli_fail(KVF_EXIT_USAGE, "train: at most 64 --set options");
            sets[n_sets++] = optarg;
        } else if (c == 'r') {
            resume = optarg;
        } else if (c == 'S') {
            char *end;
            stop_after = strtoll(optarg, &end, 10);
            if (*end || stop_after < 1)
                return kvf_cli_fail(KVF_EXIT_USAGE, "train: --stop-after needs a step count >= 1");
        } else {
            return kvf_cli_fail(KVF_EXIT_USAGE, "train: see kvforge train --help");
        }
    }
    if (optind != argc - 1)
        return kvf_cli_fail(KVF_EXIT_USAGE, "train: give exactly one CONFIG.yaml (see kvforge train --help)");
    const char *path = argv[optind];
    kvf_run_config cfg;
    kvf_run_config_defaults(&cfg);
    if (kvf_run_config_load(&cfg, path, NULL) != KVF_OK) return kvf_cli_fail_lib(NULL);
    for (int i = 0; i < n_sets; i++)
        if (kvf_run_config_set(&cfg, sets[i]) != KVF_OK) return kvf_cli_fail_lib(NULL);
    if (kvf_run_config_finish(&cfg, path) != KVF_OK) return kvf_cli_fail_lib(NULL);
    kvf_train_opts o = {.config_path = path, .resume_dir = resume, .log = stderr,
                         .stop_after = stop_after};
    kvf_train_result res;
    if (kvf_train(&cfg, &o, &res) != KVF_OK) return kvf_cli_fail_lib("train");
    printf("done: %lld steps, last loss %.4f", (long long)res.steps_done, res.last_loss);
    if (res.val_loss == res.val_loss) printf(", val loss %.4f", res.val_loss);
    if (res.skipped) printf(", %lld skipped", (long long)res.skipped);
    printf("; checkpoint %s/checkpoint\n", res.run_dir);
    return KVF_EXIT_OK;
}
