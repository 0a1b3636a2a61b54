/* tokenizer.c — vtable dispatch for kvf_tokenizer (tokenizer.h). */
#include "tokenizer.h"

#include <stdlib.h>

kvf_status kvf_tokenizer_encode(const kvf_tokenizer *tok, const char *text, size_t len,
                                kvf_ids *out) {
    KVF_CHECK(tok && tok->vt && tok->vt->encode, KVF_ERR_ARG, "tokenizer: encode without a tokenizer");
    KVF_CHECK(out && (text || len == 0), KVF_ERR_ARG, "tokenizer %s: encode of a NULL text",
              tok->name ? tok->name : "?");
    return tok->vt->encode(tok, text, len, out);
}

kvf_status kvf_tokenizer_decode(const kvf_tokenizer *tok, const int32_t *ids, int64_t n,
                                kvf_bytes *out) {
    KVF_CHECK(tok && tok->vt && tok->vt->decode, KVF_ERR_ARG, "tokenizer: decode without a tokenizer");
    KVF_CHECK(out && n >= 0 && (ids || n == 0), KVF_ERR_ARG, "tokenizer %s: decode of a NULL id array",
              tok->name ? tok->name : "?");
    return tok->vt->decode(tok, ids, n, out);
}

void kvf_tokenizer_free(kvf_tokenizer *tok) {
    if (!tok) return;
    if (tok->vt && tok->vt->destroy) tok->vt->destroy(tok);
    free(tok);
}
