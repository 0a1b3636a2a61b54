/* fuzz_corpus.c — corpus readers (data/corpus.c, data/shard.c) on arbitrary bytes with the
 * byte tokenizer. The first input byte picks how the rest is read:
 *   bits 0-2: the name's suffix: .bin (llm.c shard), .jsonl, .tar, .tar.gz, .zip, .txt,
 *             .jsonl.gz (one compressed file), .tar.xz
 *   bit 3:    max_tokens = 100 (else no limit)
 *   bit 4:    no tokenizer (shards need none; text must then fail cleanly)
 * and archives dispatch their entries by their own names, so nested formats are reached too. */
#include "fuzz_common.h"

#include "data/corpus.h"

static const char *const names[8] = {
    "fuzz.bin", "fuzz.jsonl", "fuzz.tar", "fuzz.tar.gz",
    "fuzz.zip", "fuzz.txt",   "fuzz.jsonl.gz", "fuzz.tar.xz",
};

static kvf_tokenizer *byte_tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    if (size < 1) return 0;
    if (!byte_tok && !(byte_tok = kvf_tokenizer_byte_init(true))) abort();
    unsigned sel = data[0];
    const char *name = names[sel & 7];
    kvf_corpus_opts opts = {.tok = (sel & 16) ? NULL : byte_tok,
                            .max_tokens = (sel & 8) ? 100 : 0};
    kvf_token_stream out = {0};
    kvf_status st = kvf_corpus_read_buffer(name, data + 1, size - 1, &opts, &out);
    if (st == KVF_OK) {
        fuzz_check_ok("kvf_corpus_read_buffer");
        if (opts.max_tokens)
            FUZZ_REQUIRE(out.count <= opts.max_tokens, "%lld tokens > max_tokens",
                         (long long)out.count);
        if (opts.tok)
            for (int64_t i = 0; i < out.count; i++)
                FUZZ_REQUIRE(out.data[i] >= 0 && out.data[i] < opts.tok->vocab_size,
                             "token %d at %lld outside the vocabulary", out.data[i], (long long)i);
    } else {
        fuzz_check_error(st, "fuzz.");
    }
    kvf_error_clear();
    kvf_ids_free(&out);
    return 0;
}
