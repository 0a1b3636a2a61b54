/* kvforge convert --model SRC --out DST --to gqa|mqa|mla|cla [options] — see the usage text in
 * main.c and docs/conversions.md. Thin: parse into kvf_convert_opts, call kvf_convert_run.
 * Option errors the library finds against the model (a --kv-heads that does not divide the
 * query heads, a bad producer list, …) exit 2 like the ones found here; runtime failures exit 1. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "convert/convert.h"

static bool copy_word(const char *flag, const char *s, char *dst, size_t n) {
    if (strlen(s) >= n) {
        kvf_cli_fail(KVF_EXIT_USAGE, "%s '%s' is too long", flag, s);
        return false;
    }
    snprintf(dst, n, "%s", s);
    return true;
}

static bool parse_int(const char *flag, const char *s, int64_t min, int *out) {
    int64_t v;
    if (!kvf_cli_parse_i64(flag, s, min, &v)) return false;
    if (v > 1 << 30) {
        kvf_cli_fail(KVF_EXIT_USAGE, "%s %s is too large", flag, s);
        return false;
    }
    *out = (int)v;
    return true;
}

int kvf_cmd_convert(int argc, char **argv) {
    enum {
        O_MODEL = 256, O_OUT, O_TO, O_KV_HEADS, O_METHOD, O_KV_RANK, O_ROPE_DIM, O_STYLE, O_ROPE_SELECT,
        O_FREQFOLD, O_Q_RANK, O_SHARE, O_PRODUCERS, O_CALIB, O_CALIB_TOKENS, O_CALIB_SEQ, O_EVAL, O_SEQ_LEN,
        O_EVAL_TOKENS, O_DEVICE, O_DTYPE, O_SEED
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},        {"out", required_argument, 0, O_OUT},
        {"to", required_argument, 0, O_TO},              {"kv-heads", required_argument, 0, O_KV_HEADS},
        {"method", required_argument, 0, O_METHOD},      {"kv-rank", required_argument, 0, O_KV_RANK},
        {"rope-dim", required_argument, 0, O_ROPE_DIM},  {"style", required_argument, 0, O_STYLE},
        {"rope-select", required_argument, 0, O_ROPE_SELECT}, {"freqfold", required_argument, 0, O_FREQFOLD},
        {"q-rank", required_argument, 0, O_Q_RANK},      {"share", required_argument, 0, O_SHARE},
        {"producers", required_argument, 0, O_PRODUCERS}, {"calib", required_argument, 0, O_CALIB},
        {"calib-tokens", required_argument, 0, O_CALIB_TOKENS}, {"calib-seq-len", required_argument, 0, O_CALIB_SEQ},
        {"eval", required_argument, 0, O_EVAL},          {"seq-len", required_argument, 0, O_SEQ_LEN},
        {"eval-tokens", required_argument, 0, O_EVAL_TOKENS}, {"device", required_argument, 0, O_DEVICE},
        {"dtype", required_argument, 0, O_DTYPE},        {"seed", required_argument, 0, O_SEED},
        {0, 0, 0, 0}};
    kvf_convert_opts o;
    kvf_convert_opts_defaults(&o);
    o.save_dtype = KVF_DTYPE_COUNT; /* the CLI writes the source's dtype unless --dtype says otherwise */
    const char *model = NULL, *out = NULL, *to = NULL;
    bool rope_dim_given = false;
    int64_t v;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_OUT: out = optarg; break;
        case O_TO: to = optarg; break;
        case O_KV_HEADS: if (!parse_int("--kv-heads", optarg, 1, &o.kv_heads)) return KVF_EXIT_USAGE; break;
        case O_METHOD: if (!copy_word("--method", optarg, o.method, sizeof o.method)) return KVF_EXIT_USAGE; break;
        case O_KV_RANK: if (!parse_int("--kv-rank", optarg, 1, &o.kv_rank)) return KVF_EXIT_USAGE; break;
        case O_ROPE_DIM:
            rope_dim_given = true;
            if (!strcmp(optarg, "all")) o.rope_dim = -1;
            else if (!parse_int("--rope-dim", optarg, 0, &o.rope_dim)) return KVF_EXIT_USAGE;
            break;
        case O_STYLE: if (!copy_word("--style", optarg, o.style, sizeof o.style)) return KVF_EXIT_USAGE; break;
        case O_ROPE_SELECT:
            if (!copy_word("--rope-select", optarg, o.rope_select, sizeof o.rope_select)) return KVF_EXIT_USAGE;
            break;
        case O_FREQFOLD: if (!parse_int("--freqfold", optarg, 1, &o.freqfold)) return KVF_EXIT_USAGE; break;
        case O_Q_RANK: if (!parse_int("--q-rank", optarg, 0, &o.q_rank)) return KVF_EXIT_USAGE; break;
        case O_SHARE: if (!parse_int("--share", optarg, 1, &o.share)) return KVF_EXIT_USAGE; break;
        case O_PRODUCERS:
            if (!*optarg) return kvf_cli_fail(KVF_EXIT_USAGE, "--producers needs a list of layers such as 0,2,5");
            if (!copy_word("--producers", optarg, o.producers, sizeof o.producers)) return KVF_EXIT_USAGE;
            break;
        case O_CALIB: o.calib_path = optarg; break;
        case O_CALIB_TOKENS: if (!kvf_cli_parse_i64("--calib-tokens", optarg, 1, &o.calib_tokens)) return KVF_EXIT_USAGE; break;
        case O_CALIB_SEQ: if (!kvf_cli_parse_i64("--calib-seq-len", optarg, 1, &o.calib_seq_len)) return KVF_EXIT_USAGE; break;
        case O_EVAL: o.eval_path = optarg; break;
        case O_SEQ_LEN: if (!kvf_cli_parse_i64("--seq-len", optarg, 1, &o.eval_seq_len)) return KVF_EXIT_USAGE; break;
        case O_EVAL_TOKENS: if (!kvf_cli_parse_i64("--eval-tokens", optarg, 2, &o.eval_tokens)) return KVF_EXIT_USAGE; break;
        case O_DEVICE: if (!kvf_cli_parse_device(optarg, &o.device)) return KVF_EXIT_USAGE; break;
        case O_DTYPE:
            if (!strcmp(optarg, "f32")) o.save_dtype = KVF_DTYPE_F32;
            else if (!strcmp(optarg, "bf16")) o.save_dtype = KVF_DTYPE_BF16;
            else if (!strcmp(optarg, "f16")) o.save_dtype = KVF_DTYPE_F16;
            else if (!strcmp(optarg, "source")) o.save_dtype = KVF_DTYPE_COUNT;
            else return kvf_cli_fail(KVF_EXIT_USAGE, "--dtype must be f32, bf16, f16 or source, got '%s'", optarg);
            break;
        case O_SEED:
            if (!kvf_cli_parse_i64("--seed", optarg, 0, &v)) return KVF_EXIT_USAGE;
            o.seed = (uint64_t)v;
            break;
        default:
            if (optopt >= O_MODEL)
                return kvf_cli_fail(KVF_EXIT_USAGE, "convert: %s needs a value (see kvforge convert --help)",
                                    argv[optind - 1]);
            return kvf_cli_fail(KVF_EXIT_USAGE, "convert: unknown option '%s' (see kvforge convert --help)",
                                argv[optind - 1]);
        }
    }
    if (optind != argc)
        return kvf_cli_fail(KVF_EXIT_USAGE, "convert: unexpected argument '%s' (see kvforge convert --help)",
                            argv[optind]);
    if (!model || !out || !to)
        return kvf_cli_fail(KVF_EXIT_USAGE, "convert: --model SRC, --out DST and --to gqa|mqa|mla|cla are required");
    if (!strcmp(to, "gqa")) o.to = KVF_CONVERT_GQA;
    else if (!strcmp(to, "mqa")) o.to = KVF_CONVERT_MQA;
    else if (!strcmp(to, "mla")) o.to = KVF_CONVERT_MLA;
    else if (!strcmp(to, "cla")) o.to = KVF_CONVERT_CLA;
    else return kvf_cli_fail(KVF_EXIT_USAGE, "--to must be gqa, mqa, mla or cla, got '%s'", to);
    if (o.to == KVF_CONVERT_MLA && !rope_dim_given)
        return kvf_cli_fail(KVF_EXIT_USAGE, "--to mla needs --rope-dim D (or --rope-dim all with --style partial-rope)");
    if (o.to != KVF_CONVERT_MLA && rope_dim_given)
        return kvf_cli_fail(KVF_EXIT_USAGE, "--rope-dim is a --to mla option, not --to %s", to);
    if (o.to != KVF_CONVERT_MLA && o.freqfold)
        return kvf_cli_fail(KVF_EXIT_USAGE, "--freqfold is a --to mla option, not --to %s", to);
    /* the log is progress (a line per calibration step and per layer, minutes apart on a
     * large model): show each line as it is written, also into a pipe or a file */
    setvbuf(stdout, NULL, _IOLBF, 0);
    kvf_status s = kvf_convert_run(model, out, &o, stdout);
    fflush(stdout);
    if (s == KVF_OK) return KVF_EXIT_OK;
    int rc = kvf_cli_fail_lib("convert");
    return s == KVF_ERR_ARG ? KVF_EXIT_USAGE : rc;
}
