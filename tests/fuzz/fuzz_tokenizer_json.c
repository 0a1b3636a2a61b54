/* fuzz_tokenizer_json.c — Hugging Face tokenizer.json loading (data/tokenizer_hf.c) on
 * arbitrary bytes: JSON, model / normalizer / pre_tokenizer / decoder / added_tokens, PCRE2
 * patterns. A tokenizer that loads then encodes and decodes a fixed probe and the input itself
 * (as text), and decodes ids in and out of range. */
#include "fuzz_common.h"

#include "data/tokenizer_hf.h"

#define NAME "fuzz/tokenizer.json"

static void round_trip(const kvf_tokenizer *tok, const char *text, size_t len) {
    kvf_ids ids = {0};
    kvf_status st = kvf_tokenizer_encode(tok, text, len, &ids);
    if (st == KVF_OK) {
        fuzz_check_ok("encode");
        for (int64_t i = 0; i < ids.count; i++)
            FUZZ_REQUIRE(ids.data[i] >= 0 && ids.data[i] < tok->vocab_size,
                         "encode gave id %d outside [0, %d)", ids.data[i], tok->vocab_size);
        kvf_bytes out = {0};
        st = kvf_tokenizer_decode(tok, ids.data, ids.count, &out);
        if (st == KVF_OK) fuzz_check_ok("decode");
        else fuzz_check_error(st, NULL);
        kvf_error_clear();
        kvf_bytes_free(&out);
        st = kvf_tokenizer_hf_decode_ex(tok, ids.data, ids.count, false, &out);
        if (st == KVF_OK) fuzz_check_ok("decode_ex");
        else fuzz_check_error(st, NULL);
        kvf_bytes_free(&out);
    } else {
        fuzz_check_error(st, NULL);
    }
    kvf_error_clear();
    kvf_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    kvf_tokenizer *tok = kvf_tokenizer_hf_load_buffer(NAME, (const char *)data, size);
    if (!tok) {
        fuzz_check_error(kvf_error_code(), NAME);
        kvf_error_clear();
        return 0;
    }
    fuzz_check_ok("kvf_tokenizer_hf_load_buffer");
    FUZZ_REQUIRE(tok->vocab_size >= 0, "vocab_size %d", tok->vocab_size);
    static const char probe[] = "Hello, world! <s> caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 12345\n\t  x";
    round_trip(tok, probe, sizeof probe - 1);
    round_trip(tok, (const char *)data, size < 4096 ? size : 4096);
    /* ids: every small one, the edges, and out-of-range ones (errors, not crashes) */
    int32_t ids[40];
    int n = 0;
    for (int32_t i = 0; i < 32 && i < tok->vocab_size; i++) ids[n++] = i;
    if (tok->vocab_size > 0) ids[n++] = tok->vocab_size - 1;
    kvf_bytes out = {0};
    kvf_status st = kvf_tokenizer_decode(tok, ids, n, &out);
    if (st == KVF_OK) fuzz_check_ok("decode");
    else fuzz_check_error(st, NULL);
    kvf_error_clear();
    kvf_bytes_free(&out);
    int32_t bad[2] = {tok->vocab_size, -1};
    for (int k = 0; k < 2; k++) {
        st = kvf_tokenizer_decode(tok, &bad[k], 1, &out);
        FUZZ_REQUIRE(st != KVF_OK, "id %d decoded", bad[k]);
        kvf_error_clear();
        kvf_bytes_free(&out);
    }
    for (int32_t i = 0; i < 8 && i < tok->vocab_size; i++) {
        size_t len = 0;
        const char *s = kvf_tokenizer_hf_id_to_token(tok, i, &len);
        if (s) (void)kvf_tokenizer_hf_token_to_id(tok, s, len);
    }
    kvf_tokenizer_free(tok);
    return 0;
}
