/* kvforge eval --model DIR --data PATH [--seq-len W] [--max-tokens N] [--device cpu|cuda]
 *              [--dtype f32|bf16] [--json] */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "data/corpus.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "train/eval.h"

int kvf_cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"data", required_argument, 0, 'd'},
        {"seq-len", required_argument, 0, 'w'}, {"max-tokens", required_argument, 0, 'n'},
        {"device", required_argument, 0, 'D'}, {"batch-size", required_argument, 0, 'b'},
        {"json", no_argument, 0, 'j'},         {"dtype", required_argument, 0, 'T'},
        {0, 0, 0, 0}};
    const char *model = NULL, *data = NULL, *device = "cpu", *dtype = NULL;
    int64_t W = 0, max_tokens = 0, batch = 8;
    bool json = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'd': data = optarg; break;
        case 'w': if (!kvf_cli_parse_i64("--seq-len", optarg, 1, &W)) return KVF_EXIT_USAGE; break;
        case 'n': if (!kvf_cli_parse_i64("--max-tokens", optarg, 2, &max_tokens)) return KVF_EXIT_USAGE; break;
        case 'b': if (!kvf_cli_parse_i64("--batch-size", optarg, 1, &batch)) return KVF_EXIT_USAGE; break;
        case 'D': device = optarg; break;
        case 'T': dtype = optarg; break;
        case 'j': json = true; break;
        default: return kvf_cli_fail(KVF_EXIT_USAGE, "eval: see kvforge eval --help");
        }
    }
    if (!model || !data || optind != argc)
        return kvf_cli_fail(KVF_EXIT_USAGE, "eval: --model DIR and --data PATH are required");
    kvf_device dev;
    if (!kvf_cli_parse_device(device, &dev)) return KVF_EXIT_USAGE;
    kvf_dtype cdt;
    if (!kvf_cli_parse_compute_dtype(dtype, dev, &cdt)) return KVF_EXIT_USAGE;
    kvf_eval_result r;
    if (kvf_eval_dir(model, data, W, max_tokens, batch, dev, cdt, &r) != KVF_OK) return kvf_cli_fail_lib("eval");
    if (json)
        printf("{\"loss\": %.9g, \"ppl\": %.9g, \"tokens\": %lld}\n", r.loss, r.ppl, (long long)r.tokens);
    else
        printf("loss %.6f  ppl %.4f  tokens %lld  (windows of %lld)\n", r.loss, r.ppl, (long long)r.tokens,
               (long long)r.window);
    return KVF_EXIT_OK;
}
