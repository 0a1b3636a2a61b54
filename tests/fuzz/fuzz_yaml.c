/* fuzz_yaml.c — YAML run configs (train/yaml_tree.c, train/run_config.c) on arbitrary text:
 * kvf_run_config_load then, when it loads, kvf_run_config_finish (cross-field checks, attention
 * variants, kv_producers / window lists, match_params); and the input as one --set assignment. */
#include "fuzz_common.h"

#include "train/run_config.h"

#define NAME "fuzz/run.yaml"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    char *text = fuzz_strdup(data, size);
    kvf_run_config *c = malloc(sizeof *c);
    if (!c) abort();
    kvf_run_config_defaults(c);
    kvf_status st = kvf_run_config_load(c, NAME, text);
    if (st == KVF_OK) {
        fuzz_check_ok("kvf_run_config_load");
        st = kvf_run_config_finish(c, NAME);
        if (st == KVF_OK) fuzz_check_ok("kvf_run_config_finish");
    }
    if (st != KVF_OK) fuzz_check_error(st, NAME);
    kvf_error_clear();

    /* the whole input (up to its first NUL) as "section.key=value" */
    kvf_run_config_defaults(c);
    st = kvf_run_config_set(c, text);
    if (st == KVF_OK) {
        fuzz_check_ok("kvf_run_config_set");
        st = kvf_run_config_finish(c, "--set");
        if (st == KVF_OK) fuzz_check_ok("kvf_run_config_finish");
    }
    if (st != KVF_OK) fuzz_check_error(st, NULL);
    kvf_error_clear();
    free(c);
    free(text);
    return 0;
}
