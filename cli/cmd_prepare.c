/* kvforge prepare --tokenizer FILE --out DIR INPUT... : corpora → llm.c token shards */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "cli_util.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer_load.h"
#include "data/fsutil.h"

int kvf_cmd_prepare(int argc, char **argv) {
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"out", required_argument, 0, 'o'},
                                         {"shard-tokens", required_argument, 0, 's'},
                                         {"name", required_argument, 0, 'n'},
                                         {0, 0, 0, 0}};
    const char *spec = NULL, *out = NULL, *name = "shard";
    int64_t shard_tokens = 100000000;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 't') spec = optarg;
        else if (c == 'o') out = optarg;
        else if (c == 'n') name = optarg;
        else if (c == 's') {
            if (!kvf_cli_parse_i64("--shard-tokens", optarg, 1, &shard_tokens)) return KVF_EXIT_USAGE;
        } else return kvf_cli_fail(KVF_EXIT_USAGE, "prepare: see kvforge prepare --help");
    }
    if (!spec || !out || optind >= argc)
        return kvf_cli_fail(KVF_EXIT_USAGE, "prepare: --tokenizer FILE, --out DIR and at least one INPUT are required");
    kvf_tokenizer *tok = kvf_tokenizer_open(spec);
    if (!tok) return kvf_cli_fail_lib("prepare");
    int rc = KVF_EXIT_OK;
    kvf_token_stream ts = {0};
    kvf_corpus_opts co = {.tok = tok};
    char prefix[4096];
    snprintf(prefix, sizeof prefix, "%s/%s", out, name);
    kvf_shard_writer *w = NULL;
    if (kvf_fs_mkdirs(out) != KVF_OK ||
        kvf_corpus_read_paths((const char *const *)argv + optind, (size_t)(argc - optind), &co, &ts) != KVF_OK ||
        !(w = kvf_shard_writer_init(prefix, tok->vocab_size, shard_tokens)) ||
        kvf_shard_writer_add(w, ts.data, ts.count) != KVF_OK || kvf_shard_writer_finish(w) != KVF_OK) {
        rc = kvf_cli_fail_lib("prepare");
    } else {
        printf("wrote %d shard(s), %lld tokens, to %s_*.bin\n", kvf_shard_writer_shards(w),
               (long long)kvf_shard_writer_tokens(w), prefix);
    }
    kvf_shard_writer_free(w);
    kvf_ids_free(&ts);
    kvf_tokenizer_free(tok);
    return rc;
}
