/* kvforge — one binary, one subcommand per job (DESIGN.md §8). Thin: parse, call, print. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/error.h"
#include "cli.h"
#include "commands.h"

#define KVF_VERSION "0.1.0"

static const struct kvf_command commands[] = {
    {"train", "train a model from a YAML run config (from scratch or --resume)",
     "usage: kvforge train CONFIG.yaml [--set key=value]... [--resume RUN_DIR] [--stop-after N]\n"
     "  Trains from scratch or continues RUN_DIR; writes HF-layout checkpoints, metrics JSONL\n"
     "  and a progress line (step, loss, lr, grad norm, tokens/s, ETA). Keys: docs/config.md.\n"
     "  --stop-after N: save and stop after N steps of this call (continue with --resume).\n",
     kvf_cmd_train},
    {"eval", "mean next-token loss and perplexity of a model on a text, JSONL or .bin file",
     "usage: kvforge eval --model DIR --data PATH [--seq-len W] [--max-tokens N]\n"
     "                    [--device cpu|cuda] [--dtype f32|bf16] [--json]\n"
     "  --dtype: compute dtype (default bf16 on cuda, f32 on the CPU; weights load as f32).\n"
     "  Windows of W input tokens start at 0, W, 2W, ... while start + W + 1 <= N; each\n"
     "  predicts its next W tokens. Prints loss (nats), ppl = exp(loss) and tokens.\n",
     kvf_cmd_eval},
    {"convert", "convert a checkpoint to GQA/MQA, MLA or cross-layer KV sharing",
     "usage: kvforge convert --model SRC --out DST --to gqa|mqa|mla|cla [options]\n"
     "  --to gqa --kv-heads N [--method mean|first|random|calib]   (--to mqa: one KV head)\n"
     "           query head i uses KV head i/(heads/N); mean (default) averages each group's\n"
     "           K/V heads, calib fits them by PCA on --calib text and folds the maps into\n"
     "           q_proj/o_proj (exact under RoPE); random is seeded by --seed S\n"
     "  --to mla --kv-rank R --rope-dim D|all [--style deepseek|partial-rope]\n"
     "           [--rope-select norm|high|low|uniform] [--freqfold F] [--q-rank RQ]\n"
     "  --to cla --share K | --producers 0,2,5 [--method producer|mean|calib]\n"
     "           a producer every K layers (or the listed ones, starting at 0); the other\n"
     "           layers reuse its K/V; calib fits the producer's K/V by least squares\n"
     "  --calib PATH [--calib-tokens N] [--calib-seq-len T]   calibration text (default\n"
     "           65536 tokens in windows of 256), needed by the calib methods and --to mla\n"
     "  --eval PATH [--seq-len W] [--eval-tokens N]   validation loss before and after\n"
     "  --device cpu|cuda   where the model runs (calibration, evaluation)\n"
     "  --dtype f32|bf16|f16|source   weights written (default: the source's dtype)\n"
     "  Prints the KV cache bytes per token before and after. DST must not exist (or be\n"
     "  empty); it appears only when everything is written. Conversions that need no data\n"
     "  (gqa/mqa mean|first|random, cla producer|mean, no --eval) stream the checkpoint tensor\n"
     "  by tensor, so models larger than memory convert. Details: docs/conversions.md.\n",
     kvf_cmd_convert},
    {"uptrain", "convert, train (optionally distilling from the source) and evaluate, from a recipe",
     "usage: kvforge uptrain RECIPE.yaml [--set key=value]...\n"
     "  RECIPE: a run config without a model section (docs/config.md), plus\n"
     "    convert: {source: DIR, to: gqa|mqa|mla|cla, ...}   kvforge convert's options, '-' as '_'\n"
     "    eval:    {data: PATH, seq_len: W, max_tokens: N}   optional: the val loss report\n"
     "  Converts source into RUN_DIR/converted, trains it (model.init_from) in RUN_DIR, and\n"
     "  prints KV bytes per token and val loss of the source, the converted and the uptrained\n"
     "  model. Distillation from the source is not built yet. Details: docs/conversions.md.\n",
     kvf_cmd_uptrain},
    {"info", "architecture, parameters, FLOPs per token and KV-cache bytes per token",
     "usage: kvforge info --model DIR [--json]\n", kvf_cmd_info},
    {"tokenize", "text on stdin to token ids, or ids to text with --decode",
     "usage: kvforge tokenize --tokenizer FILE [--decode] [--json]\n", kvf_cmd_tokenize},
    {"prepare", "text, JSONL or archives to llm.c token shards",
     "usage: kvforge prepare --tokenizer FILE --out DIR INPUT...\n", kvf_cmd_prepare},
    {"generate", "sample text from a model",
     "usage: kvforge generate --model DIR --prompt TEXT [--max-new N] [--temperature T]\n"
     "                        [--top-k K] [--seed S] [--device cpu|cuda] [--dtype f32|bf16]\n",
     kvf_cmd_generate},
    {"plot", "loss curves of several runs in one SVG",
     "usage: kvforge plot METRICS.jsonl... -o OUT.svg\n", kvf_cmd_plot},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

int kvf_cli_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("kvforge: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int kvf_cli_fail_lib(const char *context) {
    const char *msg = kvf_error_pending() ? kvf_error_message() : "unknown failure";
    /* library messages often name the command already ("convert --to mla: …") */
    size_t n = context ? strlen(context) : 0;
    if (n && !strncmp(msg, context, n) && (msg[n] == ':' || msg[n] == ' ')) context = NULL;
    if (getenv("KVF_DEBUG"))
        fprintf(stderr, "kvforge: error: %s%s%s [%s]\n", context ? context : "",
                context ? ": " : "", msg, kvf_error_location());
    else
        fprintf(stderr, "kvforge: error: %s%s%s\n", context ? context : "", context ? ": " : "",
                msg);
    return KVF_EXIT_RUNTIME; /* bad files, bad data, numerical failures */
}

bool kvf_cli_is_help(const char *arg) { return !strcmp(arg, "--help") || !strcmp(arg, "-h"); }

static void print_help(FILE *f) {
    fprintf(f, "kvforge %s — train, convert and evaluate attention architectures\n\n"
               "usage: kvforge COMMAND [options]   (kvforge COMMAND --help for details)\n\n"
               "commands:\n", KVF_VERSION);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-9s %s%s\n", commands[i].name, commands[i].synopsis,
                commands[i].run ? "" : " [not built yet]");
    fprintf(f, "\nErrors go to stderr as 'kvforge: error: ...'; exit status 0 on success, 1 on a\n"
               "runtime error (bad file, bad data, numerical failure), 2 on a usage error.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help(stderr);
        return KVF_EXIT_USAGE;
    }
    if (kvf_cli_is_help(argv[1])) {
        print_help(stdout);
        return KVF_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvforge %s\n", KVF_VERSION);
        return KVF_EXIT_OK;
    }
    for (int i = 0; i < N_COMMANDS; i++) {
        const struct kvf_command *c = &commands[i];
        if (strcmp(argv[1], c->name) != 0) continue;
        for (int a = 2; a < argc; a++)
            if (kvf_cli_is_help(argv[a])) {
                fputs(c->usage, stdout);
                if (!c->run) printf("\n(this command is not built yet in kvforge %s)\n", KVF_VERSION);
                return KVF_EXIT_OK;
            }
        if (!c->run)
            return kvf_cli_fail(KVF_EXIT_USAGE, "'%s' is not built yet in kvforge %s", c->name,
                                KVF_VERSION);
        return c->run(argc - 1, argv + 1);
    }
    return kvf_cli_fail(KVF_EXIT_USAGE, "unknown command '%s' (see kvforge --help)", argv[1]);
}
