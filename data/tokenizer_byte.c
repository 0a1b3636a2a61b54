/* tokenizer_byte.c — the built-in byte-level tokenizer (see kvf_tokenizer_byte_init in
 * tokenizer.h): id b is byte b; with the end-of-text option, id 256 separates documents. */
#include <stdlib.h>

#include "tokenizer.h"

#define BYTE_EOT 256

static kvf_status byte_encode(const kvf_tokenizer *tok, const char *text, size_t len,
                              kvf_ids *out) {
    KVF_CHECK(len <= (size_t)INT64_MAX / 8, KVF_ERR_ARG, "tokenizer %s: text too long", tok->name);
    if (len == 0) return KVF_OK; /* out->data may still be NULL: no arithmetic on it */
    KVF_TRY(kvf_ids_reserve(out, (int64_t)len));
    const unsigned char *p = (const unsigned char *)text;
    int32_t *dst = out->data + out->count;
    for (size_t i = 0; i < len; i++) dst[i] = p[i];
    out->count += (int64_t)len;
    return KVF_OK;
}

static kvf_status byte_decode(const kvf_tokenizer *tok, const int32_t *ids, int64_t n,
                              kvf_bytes *out) {
    KVF_TRY(kvf_bytes_reserve(out, (size_t)n));
    size_t len = out->len;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id >= 0 && id < 256) {
            out->data[len++] = (char)id;
        } else if (id == tok->eos_id) {
            continue; /* end of text: a control id, no bytes */
        } else {
            out->len = len;
            out->data[len] = '\0';
            return kvf_error_set(KVF_ERR_ARG,
                                 "tokenizer %s: id %d at position %lld is outside the vocabulary "
                                 "[0, %d)", tok->name, (int)id, (long long)i, (int)tok->vocab_size);
        }
    }
    out->len = len;
    out->data[len] = '\0';
    return KVF_OK;
}

static const struct kvf_tokenizer_vtable byte_vtable = {
    .encode = byte_encode,
    .decode = byte_decode,
    .destroy = NULL,
};

kvf_tokenizer *kvf_tokenizer_byte_init(bool with_eot) {
    kvf_tokenizer *tok = malloc(sizeof *tok);
    KVF_CHECK_NULL(tok, KVF_ERR_OOM, "byte tokenizer: out of memory");
    *tok = (kvf_tokenizer){
        .vt = &byte_vtable,
        .name = with_eot ? "byte" : "byte-raw",
        .vocab_size = with_eot ? 257 : 256,
        .bos_id = -1,
        .eos_id = with_eot ? BYTE_EOT : -1,
        .impl = NULL,
    };
    return tok;
}
