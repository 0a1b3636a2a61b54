#include "ids.h"

#include <stdlib.h>
#include <string.h>

void kvf_ids_init(kvf_ids *v) { *v = (kvf_ids){0}; }

void kvf_ids_free(kvf_ids *v) {
    free(v->data);
    *v = (kvf_ids){0};
}

kvf_status kvf_ids_reserve(kvf_ids *v, int64_t extra) {
    KVF_CHECK(extra >= 0 && v->count <= INT64_MAX / 2 - extra, KVF_ERR_ARG,
              "token array: cannot hold %lld more ids", (long long)extra);
    int64_t need = v->count + extra;
    if (need <= v->cap) return KVF_OK;
    int64_t cap = v->cap ? v->cap : 1024;
    while (cap < need) cap *= 2;
    KVF_CHECK((uint64_t)cap <= SIZE_MAX / sizeof(int32_t), KVF_ERR_OOM,
              "token array: %lld ids do not fit in memory", (long long)cap);
    int32_t *p = realloc(v->data, (size_t)cap * sizeof(int32_t));
    KVF_CHECK(p, KVF_ERR_OOM, "token array: out of memory growing to %lld ids", (long long)cap);
    v->data = p;
    v->cap = cap;
    return KVF_OK;
}

kvf_status kvf_ids_push(kvf_ids *v, int32_t id) {
    if (v->count == v->cap) KVF_TRY(kvf_ids_reserve(v, 1));
    v->data[v->count++] = id;
    return KVF_OK;
}

kvf_status kvf_ids_append(kvf_ids *v, const int32_t *ids, int64_t n) {
    if (n <= 0) return KVF_OK;
    KVF_TRY(kvf_ids_reserve(v, n));
    memcpy(v->data + v->count, ids, (size_t)n * sizeof(int32_t));
    v->count += n;
    return KVF_OK;
}

void kvf_ids_shrink(kvf_ids *v) {
    if (v->cap == v->count) return;
    if (v->count == 0) {
        free(v->data);
        v->data = NULL;
        v->cap = 0;
        return;
    }
    int32_t *p = realloc(v->data, (size_t)v->count * sizeof(int32_t));
    if (p) {
        v->data = p;
        v->cap = v->count;
    }
}

void kvf_bytes_init(kvf_bytes *b) { *b = (kvf_bytes){0}; }

void kvf_bytes_free(kvf_bytes *b) {
    free(b->data);
    *b = (kvf_bytes){0};
}

kvf_status kvf_bytes_reserve(kvf_bytes *b, size_t extra) {
    KVF_CHECK(extra < SIZE_MAX / 2 - b->len, KVF_ERR_ARG, "byte buffer: cannot hold %zu more bytes",
              extra);
    size_t need = b->len + extra + 1; /* + NUL */
    if (need <= b->cap) return KVF_OK;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) cap *= 2;
    char *p = realloc(b->data, cap);
    KVF_CHECK(p, KVF_ERR_OOM, "byte buffer: out of memory growing to %zu bytes", cap);
    b->data = p;
    b->cap = cap;
    return KVF_OK;
}

kvf_status kvf_bytes_append(kvf_bytes *b, const void *p, size_t n) {
    KVF_TRY(kvf_bytes_reserve(b, n));
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KVF_OK;
}
