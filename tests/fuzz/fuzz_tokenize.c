/* fuzz_tokenize.c — HF tokenizer encode / decode (data/tokenizer_hf.c) on arbitrary text, with
 * three small fixed tokenizers (fuzz_tokenize_tokenizers.h, the seeds of fuzz_tokenizer_json):
 *   0 bytelevel  GPT-2 ByteLevel + regex, every byte in the vocab, no normalizer
 *   1 metaspace  SentencePiece style: NFKC, Metaspace, byte fallback, unk, lstrip/rstrip and
 *                single_word added tokens, decoder chain
 *   2 split      NFD + Lowercase + Replace regex + Strip + Prepend, Split regex with \w \s,
 *                Digits, Punctuation, WhitespaceSplit, subword prefix / word suffix, fused unk
 * The first input byte picks the tokenizer (mod 3), the rest is the text. Invalid UTF-8 must be
 * an error; otherwise every id is in range, decoding works, and for the byte-level tokenizer
 * decode_ex(..., skip_special_tokens = false) gives the text back exactly. */
#include "fuzz_common.h"

#include "data/tokenizer_hf.h"
#include "fuzz_tokenize_tokenizers.h"

#define N_TOK (int)(sizeof fuzz_tokenizers / sizeof fuzz_tokenizers[0])

static kvf_tokenizer *toks[N_TOK];

static bool valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        else return false;
        if (n - i <= k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    if (size < 1) return 0;
    int which = data[0] % N_TOK;
    if (!toks[which]) {
        toks[which] = kvf_tokenizer_hf_load_buffer("fuzz_tokenize.json", fuzz_tokenizers[which],
                                                   strlen(fuzz_tokenizers[which]));
        FUZZ_REQUIRE(toks[which], "built-in tokenizer %d does not load", which);
    }
    const kvf_tokenizer *tok = toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    bool valid = valid_utf8((const unsigned char *)text, len);
    kvf_ids ids = {0};
    kvf_status st = kvf_tokenizer_encode(tok, text, len, &ids);
    if (!valid) {
        FUZZ_REQUIRE(st == KVF_ERR_ARG, "invalid UTF-8 was %s", kvf_status_name(st));
        fuzz_check_error(st, NULL);
        kvf_error_clear();
        kvf_ids_free(&ids);
        return 0;
    }
    /* the split tokenizer's unk is in its vocab and the others cover every byte */
    FUZZ_REQUIRE(st == KVF_OK, "valid text failed to encode");
    fuzz_check_ok("encode");
    for (int64_t i = 0; i < ids.count; i++)
        FUZZ_REQUIRE(ids.data[i] >= 0 && ids.data[i] < tok->vocab_size, "id %d out of range",
                     ids.data[i]);
    kvf_bytes out = {0};
    st = kvf_tokenizer_decode(tok, ids.data, ids.count, &out);
    FUZZ_REQUIRE(st == KVF_OK, "decode of encoded ids failed");
    kvf_bytes_free(&out);
    st = kvf_tokenizer_hf_decode_ex(tok, ids.data, ids.count, false, &out);
    FUZZ_REQUIRE(st == KVF_OK, "decode_ex of encoded ids failed");
    if (which == 0)
        FUZZ_REQUIRE(out.len == len && (len == 0 || memcmp(out.data, text, len) == 0),
                     "byte-level round trip differs (%zu bytes in, %zu out)", len, out.len);
    kvf_bytes_free(&out);
    kvf_ids_free(&ids);
    return 0;
}
