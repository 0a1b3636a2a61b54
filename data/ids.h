/* ids.h — growable arrays used by the data module: kvf_ids (int32 token ids: a tokenizer's
 * output, a corpus token stream) and kvf_bytes (a tokenizer's decoded text).
 * Zero-initialised structs are valid empty arrays; kvf_ids_free / kvf_bytes_free release them
 * and leave them empty again. Appending functions record KVF_ERR_OOM on failure. */
#ifndef KVF_DATA_IDS_H
#define KVF_DATA_IDS_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"

struct kvf_ids {
    int32_t *data;
    int64_t count;
    int64_t cap;
};
typedef struct kvf_ids kvf_ids;

void       kvf_ids_init(kvf_ids *v);
void       kvf_ids_free(kvf_ids *v);
kvf_status kvf_ids_reserve(kvf_ids *v, int64_t extra); /* room for count + extra ids */
kvf_status kvf_ids_push(kvf_ids *v, int32_t id);
kvf_status kvf_ids_append(kvf_ids *v, const int32_t *ids, int64_t n);
void       kvf_ids_shrink(kvf_ids *v); /* capacity = count (best effort) */

struct kvf_bytes {
    char *data; /* NUL-terminated when non-NULL; the text itself may contain NUL bytes */
    size_t len;
    size_t cap;
};
typedef struct kvf_bytes kvf_bytes;

void       kvf_bytes_init(kvf_bytes *b);
void       kvf_bytes_free(kvf_bytes *b);
kvf_status kvf_bytes_reserve(kvf_bytes *b, size_t extra);
kvf_status kvf_bytes_append(kvf_bytes *b, const void *p, size_t n);

#endif
