#include "context.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "tape_impl.h"

/* The arena is a list of chunks on the ctx's device; tensor headers live in a separate
 * host arena. Reset rewinds both without freeing, so steady-state steps allocate nothing. */
#define ARENA_ALIGN 64
#define ARENA_CHUNK ((size_t)64 << 20)
#define HEADER_CHUNK ((size_t)1 << 20)

struct arena_chunk {
    struct arena_chunk *next;
    char *base;
    size_t cap, used;
};

struct arena {
    struct arena_chunk *head, *cur;
    size_t chunk_size;
    const kvf_backend *be; /* NULL: host malloc */
};

static void *arena_alloc(struct arena *a, size_t n) {
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    for (struct arena_chunk *c = a->cur; c; c = c->next) {
        if (c->cap - c->used >= n) {
            void *p = c->base + c->used;
            c->used += n;
            a->cur = c;
            return p;
        }
        /* chunk too small for this request: later chunks may fit, this one stays partly
         * used until the next reset */
    }
    size_t cap = n > a->chunk_size ? n : a->chunk_size;
    struct arena_chunk *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base = a->be ? a->be->alloc(cap) : aligned_alloc(ARENA_ALIGN, cap);
    if (!c->base) {
        free(c);
        return NULL;
    }
    c->cap = cap;
    c->used = n;
    /* append so that reset walks chunks in allocation order */
    struct arena_chunk **pp = &a->head;
    while (*pp) pp = &(*pp)->next;
    *pp = c;
    a->cur = c;
    return c->base;
}

static void arena_reset(struct arena *a) {
    for (struct arena_chunk *c = a->head; c; c = c->next) c->used = 0;
    a->cur = a->head;
}

static void arena_free(struct arena *a) {
    struct arena_chunk *c = a->head;
    while (c) {
        struct arena_chunk *n = c->next;
        if (a->be) a->be->free(c->base);
        else free(c->base);
        free(c);
        c = n;
    }
    a->head = a->cur = NULL;
}

struct kvf_ctx {
    const kvf_backend *be;
    struct arena data;    /* tensor contents, on the device */
    struct arena headers; /* kvf_tensor + kvf_storage structs, host */
    bool grad_enabled;
    struct kvf_tape tape;
};

kvf_ctx *kvf_ctx_init(kvf_device device) {
    const kvf_backend *be = kvf_backend_get(device);
    if (!be) return NULL;
    kvf_ctx *ctx = calloc(1, sizeof *ctx);
    KVF_CHECK_NULL(ctx, KVF_ERR_OOM, "ctx: out of host memory");
    ctx->be = be;
    ctx->data.be = be;
    ctx->data.chunk_size = ARENA_CHUNK;
    ctx->headers.chunk_size = HEADER_CHUNK;
    ctx->grad_enabled = true;
    return ctx;
}

void kvf_ctx_free(kvf_ctx *ctx) {
    if (!ctx) return;
    arena_free(&ctx->data);
    arena_free(&ctx->headers);
    free(ctx->tape.nodes);
    free(ctx);
}

void kvf_ctx_reset(kvf_ctx *ctx) {
    arena_reset(&ctx->data);
    arena_reset(&ctx->headers);
    ctx->tape.n = 0;
}

const kvf_backend *kvf_ctx_backend(const kvf_ctx *ctx) { return ctx->be; }
kvf_device kvf_ctx_device(const kvf_ctx *ctx) { return ctx->be->device; }

bool kvf_ctx_set_grad(kvf_ctx *ctx, bool enabled) {
    bool old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

bool kvf_ctx_grad_enabled(const kvf_ctx *ctx) { return ctx->grad_enabled; }

struct kvf_tape *kvf_ctx_tape(kvf_ctx *ctx) { return &ctx->tape; }

size_t kvf_ctx_arena_used(const kvf_ctx *ctx) {
    size_t n = 0;
    for (struct arena_chunk *c = ctx->data.head; c; c = c->next) n += c->used;
    return n;
}

size_t kvf_ctx_arena_reserved(const kvf_ctx *ctx) {
    size_t n = 0;
    for (struct arena_chunk *c = ctx->data.head; c; c = c->next) n += c->cap;
    return n;
}

void *kvf_ctx_alloc(kvf_ctx *ctx, size_t nbytes) {
    void *p = arena_alloc(&ctx->data, nbytes ? nbytes : 1);
    KVF_CHECK_NULL(p, KVF_ERR_OOM, "arena: cannot allocate %zu bytes on %s (arena holds %zu)",
                   nbytes, kvf_device_name(ctx->be->device), kvf_ctx_arena_reserved(ctx));
    return p;
}

void *kvf_ctx_alloc_host(kvf_ctx *ctx, size_t nbytes) {
    void *p = arena_alloc(&ctx->headers, nbytes ? nbytes : 1);
    KVF_CHECK_NULL(p, KVF_ERR_OOM, "arena: cannot allocate %zu bytes of host memory", nbytes);
    return p;
}

static kvf_tensor *header_new(kvf_ctx *ctx) {
    kvf_tensor *t = arena_alloc(&ctx->headers, sizeof(kvf_tensor) + sizeof(struct kvf_storage));
    KVF_CHECK_NULL(t, KVF_ERR_OOM, "arena: out of host memory for tensor headers");
    memset(t, 0, sizeof(kvf_tensor) + sizeof(struct kvf_storage));
    t->node = -1;
    return t;
}

kvf_tensor *kvf_tensor_new(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape) {
    KVF_CHECK_NULL(dtype >= 0 && dtype < KVF_DTYPE_COUNT, KVF_ERR_DTYPE, "tensor: bad dtype %d",
                   (int)dtype);
    kvf_tensor *t = header_new(ctx);
    if (!t) return NULL;
    if (!kvf_layout_contiguous(ndim, shape, t->stride)) {
        kvf_error_set(KVF_ERR_SHAPE, "tensor: bad shape (ndim %d)", ndim);
        return NULL;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    struct kvf_storage *s = (struct kvf_storage *)(t + 1);
    s->nbytes = kvf_tensor_nbytes(t);
    s->device = ctx->be->device;
    s->data = kvf_ctx_alloc(ctx, s->nbytes);
    if (!s->data) return NULL;
    t->storage = s;
    return t;
}

kvf_tensor *kvf_tensor_zeros(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape) {
    kvf_tensor *t = kvf_tensor_new(ctx, dtype, ndim, shape);
    if (!t) return NULL;
    if (ctx->be->memset_zero(t->storage->data, t->storage->nbytes) != KVF_OK) return NULL;
    return t;
}

kvf_tensor *kvf_tensor_full(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape,
                            double v) {
    kvf_tensor *t = kvf_tensor_new(ctx, dtype, ndim, shape);
    if (!t) return NULL;
    /* fill on the host and upload: simple, and full() is not on any hot path */
    int64_t n = kvf_tensor_numel(t);
    size_t es = kvf_dtype_size(dtype);
    char *host = malloc((size_t)n * es + 1);
    KVF_CHECK_NULL(host, KVF_ERR_OOM, "tensor: out of host memory");
    struct kvf_storage hs = {host, (size_t)n * es, KVF_DEVICE_CPU, false};
    kvf_tensor h = *t;
    h.storage = &hs;
    h.offset = 0;
    for (int64_t i = 0; i < n; i++) kvf_tensor_set_flat(&h, i, v);
    kvf_status st = ctx->be->upload(t->storage->data, host, (size_t)n * es);
    free(host);
    return st == KVF_OK ? t : NULL;
}

kvf_tensor *kvf_tensor_from_host(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape,
                                 const void *host) {
    kvf_tensor *t = kvf_tensor_new(ctx, dtype, ndim, shape);
    if (!t) return NULL;
    if (ctx->be->upload(t->storage->data, host, t->storage->nbytes) != KVF_OK) return NULL;
    return t;
}

kvf_tensor *kvf_tensor_view_header(kvf_ctx *ctx, const kvf_tensor *t) {
    kvf_tensor *v = header_new(ctx);
    if (!v) return NULL;
    v->storage = t->storage;
    v->offset = t->offset;
    v->dtype = t->dtype;
    v->ndim = t->ndim;
    memcpy(v->shape, t->shape, sizeof v->shape);
    memcpy(v->stride, t->stride, sizeof v->stride);
    return v;
}

kvf_status kvf_tensor_to_host(const kvf_tensor *t, void *host, size_t nbytes) {
    KVF_CHECK(nbytes == kvf_tensor_nbytes(t), KVF_ERR_ARG,
              "to_host: buffer of %zu bytes for tensor %s of %zu bytes", nbytes, KVF_DESC(t),
              kvf_tensor_nbytes(t));
    const kvf_backend *be = kvf_backend_get(kvf_tensor_device(t));
    if (!be) return kvf_error_code();
    if (kvf_tensor_is_contiguous(t)) return be->download(host, kvf_tensor_data(t), nbytes);
    KVF_CHECK(kvf_tensor_device(t) == KVF_DEVICE_CPU, KVF_ERR_ARG,
              "to_host: make the device tensor contiguous first");
    struct kvf_storage hs = {host, nbytes, KVF_DEVICE_CPU, false};
    kvf_tensor h = *t;
    h.storage = &hs;
    h.offset = 0;
    kvf_layout_contiguous(h.ndim, h.shape, h.stride);
    return be->copy(&h, t);
}

kvf_status kvf_tensor_item(const kvf_tensor *t, double *value) {
    KVF_CHECK(t && kvf_tensor_numel(t) == 1, KVF_ERR_SHAPE, "item: need a one-element tensor, got %s",
              KVF_DESC(t));
    const kvf_backend *be = kvf_backend_get(kvf_tensor_device(t));
    if (!be) return kvf_error_code();
    uint64_t raw = 0;
    KVF_TRY(be->download(&raw, kvf_tensor_data(t), kvf_dtype_size(t->dtype)));
    struct kvf_storage hs = {&raw, sizeof raw, KVF_DEVICE_CPU, false};
    kvf_tensor h = *t;
    h.storage = &hs;
    h.offset = 0;
    *value = kvf_tensor_get_flat(&h, 0);
    return KVF_OK;
}
