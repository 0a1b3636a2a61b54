/* tokenizer.h — the tokenizer interface: text bytes → int32 ids and back.
 * A tokenizer is a struct with a vtable, so implementations (the built-in byte tokenizer in
 * tokenizer_byte.c, Hugging Face tokenizer.json BPE) plug in behind the same calls.
 *
 *   kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);   // or another implementation's init
 *   kvf_ids ids = {0};
 *   kvf_tokenizer_encode(tok, text, len, &ids);           // appends to ids
 *   kvf_tokenizer_free(tok);
 *
 * Encoding never adds BOS/EOS by itself: callers that need document boundaries (corpus.h)
 * insert eos_id between documents. Implementations are immutable after init, so one
 * tokenizer may be used from several threads at once. */
#ifndef KVF_DATA_TOKENIZER_H
#define KVF_DATA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"
#include "ids.h"

typedef struct kvf_tokenizer kvf_tokenizer;

struct kvf_tokenizer_vtable {
    /* Append the ids of text[0..len) to out. text need not be NUL-terminated. */
    kvf_status (*encode)(const kvf_tokenizer *tok, const char *text, size_t len, kvf_ids *out);
    /* Append the bytes of ids[0..n) to out; an id outside [0, vocab_size) is KVF_ERR_ARG. */
    kvf_status (*decode)(const kvf_tokenizer *tok, const int32_t *ids, int64_t n, kvf_bytes *out);
    /* Release impl (not the kvf_tokenizer itself). May be NULL. */
    void (*destroy)(kvf_tokenizer *tok);
};

struct kvf_tokenizer {
    const struct kvf_tokenizer_vtable *vt;
    const char *name;   /* short description for messages, e.g. "byte" */
    int32_t vocab_size; /* ids are in [0, vocab_size) */
    int32_t bos_id;     /* beginning-of-text id, or -1 */
    int32_t eos_id;     /* end-of-text id (the document separator), or -1 */
    void *impl;         /* implementation data */
};

/* Dispatch through the vtable (argument checks included). */
kvf_status kvf_tokenizer_encode(const kvf_tokenizer *tok, const char *text, size_t len,
                                kvf_ids *out);
kvf_status kvf_tokenizer_decode(const kvf_tokenizer *tok, const int32_t *ids, int64_t n,
                                kvf_bytes *out);
/* Calls vt->destroy and frees tok (allocated with malloc by the implementation's init).
 * NULL is allowed. */
void kvf_tokenizer_free(kvf_tokenizer *tok);

/* The built-in byte-level tokenizer (tokenizer_byte.c): id b = byte b for b in 0..255.
 *   with_eot = true:  name "byte",     vocab 257, eos_id 256 (end of text), bos_id -1
 *   with_eot = false: name "byte-raw", vocab 256, eos_id -1,  bos_id -1
 * decode is the exact inverse of encode for every byte string; the end-of-text id decodes to
 * nothing. Returns NULL (error recorded) only when out of memory. */
kvf_tokenizer *kvf_tokenizer_byte_init(bool with_eot);

#endif
