/* kvforge generate --model DIR --prompt TEXT [--max-new N] [--temperature T] [--top-k K] [--seed S]
 *                  [--device cpu|cuda] [--dtype f32|bf16] */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "cli_util.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "train/generate.h"

int kvf_cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"prompt", required_argument, 0, 'p'},
        {"max-new", required_argument, 0, 'n'},     {"temperature", required_argument, 0, 't'},
        {"top-k", required_argument, 0, 'k'},       {"seed", required_argument, 0, 's'},
        {"device", required_argument, 0, 'D'},      {"dtype", required_argument, 0, 'T'},
        {0, 0, 0, 0}};
    const char *dir = NULL, *prompt = NULL, *device = "cpu", *dtype = NULL;
    kvf_generate_opts o = {.max_new = 200, .temperature = 0.8, .top_k = 0, .seed = 1};
    int64_t seed = 1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': if (!kvf_cli_parse_i64("--max-new", optarg, 0, &o.max_new)) return KVF_EXIT_USAGE; break;
        case 't': if (!kvf_cli_parse_double("--temperature", optarg, &o.temperature)) return KVF_EXIT_USAGE; break;
        case 'k': if (!kvf_cli_parse_i64("--top-k", optarg, 0, &o.top_k)) return KVF_EXIT_USAGE; break;
        case 's': if (!kvf_cli_parse_i64("--seed", optarg, 0, &seed)) return KVF_EXIT_USAGE; break;
        case 'D': device = optarg; break;
        case 'T': dtype = optarg; break;
        default: return kvf_cli_fail(KVF_EXIT_USAGE, "generate: see kvforge generate --help");
        }
    }
    if (!dir || !prompt || optind != argc)
        return kvf_cli_fail(KVF_EXIT_USAGE, "generate: --model DIR and --prompt TEXT are required");
    if (o.temperature < 0) return kvf_cli_fail(KVF_EXIT_USAGE, "--temperature must be >= 0");
    o.seed = (uint64_t)seed;
    kvf_device dev;
    if (!kvf_cli_parse_device(device, &dev)) return KVF_EXIT_USAGE;
    kvf_dtype cdt;
    if (!kvf_cli_parse_compute_dtype(dtype, dev, &cdt)) return KVF_EXIT_USAGE;
    kvf_tokenizer *tok = kvf_tokenizer_open(dir);
    if (!tok) return kvf_cli_fail_lib("generate");
    kvf_model *m = kvf_checkpoint_load(dir, dev);
    if (m && kvf_model_set_compute_dtype(m, cdt) != KVF_OK) {
        kvf_model_free(m);
        m = NULL;
    }
    int rc = KVF_EXIT_OK;
    if (!m) rc = kvf_cli_fail_lib("generate");
    else {
        fputs(prompt, stdout);
        if (kvf_generate(m, tok, prompt, &o, stdout) != KVF_OK) rc = kvf_cli_fail_lib("generate");
    }
    kvf_model_free(m);
    kvf_tokenizer_free(tok);
    return rc;
}
