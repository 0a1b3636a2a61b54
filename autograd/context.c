#include "context.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "tape_impl.h"

/* The arena is a list of chunks on the ctx's device; tensor headers live in a separate
 * host arena. Reset rewinds both without freeing, so steady-state steps allocate nothing.
 * A ctx has two such regions: main (the step's tensors) and scratch, which activation
 * recomputation (recompute.c) fills with one block's intermediates and rewinds to a mark
 * when the block is done, so that its memory serves the next block. */
#define ARENA_ALIGN 64
#define ARENA_CHUNK ((size_t)64 << 20)
#define HEADER_CHUNK ((size_t)1 << 20)

/* struct kvf_arena_mark (tape_impl.h) holds a struct arena_chunk * as void * */
struct arena_chunk {
    struct arena_chunk *next;
    char *base;
    size_t cap, used;
};

struct arena {
    struct arena_chunk *head, *cur;
    size_t chunk_size;
    size_t used; /* sum of the chunks' used bytes, kept as we go for the peak */
    size_t high; /* the most bytes used since the last reset */
    const kvf_backend *be; /* NULL: host malloc */
};

static void *arena_alloc(struct arena *a, size_t n) {
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    for (struct arena_chunk *c = a->cur; c; c = c->next) {
        if (c->cap - c->used >= n) {
            void *p = c->base + c->used;
            c->used += n;
            a->used += n;
            if (a->used > a->high) a->high = a->used;
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
    a->used += n;
    if (a->used > a->high) a->high = a->used;
    /* append so that reset walks chunks in allocation order */
    struct arena_chunk **pp = &a->head;
    while (*pp) pp = &(*pp)->next;
    *pp = c;
    a->cur = c;
    return c->base;
}

static void arena_free(struct arena *a);

/* A step that needed several chunks leaves the rest of each chunk that the next request
 * did not fit in unused (on a GPU step of GB-sized activations, a quarter of the arena).
 * Steps repeat their allocations, so the reset swaps the chunks for one of the step's
 * high-water size: the next steps bump through it without a gap. */
static void arena_reset(struct arena *a) {
    if (a->head && (a->head->next || a->head->cap < a->high)) {
        size_t want = (a->high + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
        arena_free(a);
        struct arena_chunk *c = calloc(1, sizeof *c);
        if (c) {
            c->base = a->be ? a->be->alloc(want) : aligned_alloc(ARENA_ALIGN, want);
            if (c->base) {
                c->cap = want;
                a->head = c;
            } else {
                free(c); /* chunks come on demand again; the error is not the caller's */
                kvf_error_clear();
            }
        }
    }
    for (struct arena_chunk *c = a->head; c; c = c->next) c->used = 0;
    a->cur = a->head;
    a->used = 0;
    a->high = 0;
}

/* Marks remember the current chunk and its fill; rewinding empties everything after. */
static void arena_mark(const struct arena *a, struct kvf_arena_mark *m) {
    m->chunk = a->cur;
    m->chunk_used = a->cur ? a->cur->used : 0;
    m->used = a->used;
}

static void arena_rewind(struct arena *a, const struct kvf_arena_mark *m) {
    struct arena_chunk *c = m->chunk;
    if (!c) {
        arena_reset(a);
        return;
    }
    c->used = m->chunk_used;
    for (struct arena_chunk *n = c->next; n; n = n->next) n->used = 0;
    a->cur = c;
    a->used = m->used;
}

/* Whether p was handed out after mark m (and is still live). */
static bool arena_since(const struct arena *a, const struct kvf_arena_mark *m, const void *p) {
    const char *q = p;
    struct arena_chunk *c = m->chunk ? m->chunk : a->head;
    size_t from = m->chunk ? m->chunk_used : 0;
    for (; c; c = c->next, from = 0)
        if (q >= c->base + from && q < c->base + c->used) return true;
    return false;
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

struct region {
    struct arena data;    /* tensor contents, on the device */
    struct arena headers; /* kvf_tensor + kvf_storage structs, host */
};

/* The backward's blocks: gradients and rule temporaries of the main region, allocated
 * one by one (backend alloc_temp) while a backward runs and freed as soon as nothing needs
 * them — a temporary when its rule returns, a gradient when the rule of the tensor it
 * belongs to has run (tape.c) — so the backward needs little beyond the forward's arena. */
struct pool {
    struct kvf_storage **live;
    int n, cap;
    size_t used;
};

struct kvf_ctx {
    const kvf_backend *be;
    uint64_t generation; /* new at init and at every reset (unique in the process) */
    struct pool pool;
    bool pool_on;       /* main-region tensors come from the pool (during backward) */
    struct region main, scratch;
    struct region *cur; /* where allocations go: main, or scratch during a recompute */
    size_t peak;        /* most device bytes in use at once (main + scratch) */
    bool grad_enabled;
    bool grad_sharing;  /* tape.h: kvf_grad_share and in-place loss gradients allowed */
    int recomputing;    /* > 0 while a recompute rule re-runs a forward */
    int64_t clock;      /* ticks once per recorded node, never rewound (tensor.h: born) */
    struct kvf_tape main_tape;
    struct kvf_tape *tape; /* where ops record: main_tape, or a recompute's own */
};

static void region_init(struct region *r, const kvf_backend *be) {
    r->data.be = be;
    r->data.chunk_size = ARENA_CHUNK;
    r->headers.chunk_size = HEADER_CHUNK;
}

static void region_free(struct region *r) {
    arena_free(&r->data);
    arena_free(&r->headers);
}

/* Generations are unique across every ctx of the process, so a cache keyed on one can
 * never match a later ctx that happens to reuse a freed one's address. */
static uint64_t generation_next(void) {
    static uint64_t g;
    return __atomic_add_fetch(&g, 1, __ATOMIC_RELAXED);
}

kvf_ctx *kvf_ctx_init(kvf_device device) {
    const kvf_backend *be = kvf_backend_get(device);
    if (!be) return NULL;
    kvf_ctx *ctx = calloc(1, sizeof *ctx);
    KVF_CHECK_NULL(ctx, KVF_ERR_OOM, "ctx: out of host memory");
    ctx->be = be;
    ctx->generation = generation_next();
    region_init(&ctx->main, be);
    region_init(&ctx->scratch, be);
    ctx->cur = &ctx->main;
    ctx->tape = &ctx->main_tape;
    ctx->grad_enabled = true;
    ctx->grad_sharing = true;
    return ctx;
}

static void pool_free_block(kvf_ctx *ctx, struct kvf_storage *s) {
    struct pool *p = &ctx->pool;
    int i = s->slot;
    p->live[i] = p->live[--p->n];
    p->live[i]->slot = i;
    p->used -= s->nbytes;
    if (ctx->be->free_temp) ctx->be->free_temp(s->data);
    else ctx->be->free(s->data);
    s->data = NULL;
    s->pooled = false;
}

static void pool_clear(kvf_ctx *ctx) {
    while (ctx->pool.n) pool_free_block(ctx, ctx->pool.live[ctx->pool.n - 1]);
}

static void *pool_alloc(kvf_ctx *ctx, struct kvf_storage *s) {
    struct pool *p = &ctx->pool;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 256;
        struct kvf_storage **l = realloc(p->live, sizeof *l * (size_t)cap);
        KVF_CHECK_NULL(l, KVF_ERR_OOM, "backward pool: out of host memory");
        p->live = l;
        p->cap = cap;
    }
    void *d = ctx->be->alloc_temp ? ctx->be->alloc_temp(s->nbytes ? s->nbytes : 1)
                                  : ctx->be->alloc(s->nbytes ? s->nbytes : 1);
    if (!d) return NULL;
    s->pooled = true;
    s->refs = 0;
    s->slot = p->n;
    p->live[p->n++] = s;
    p->used += s->nbytes;
    size_t used = kvf_ctx_arena_used(ctx);
    if (used > ctx->peak) ctx->peak = used;
    return d;
}

bool kvf_ctx_pool(kvf_ctx *ctx, bool on) {
    bool old = ctx->pool_on;
    ctx->pool_on = on;
    return old;
}

void kvf_ctx_pool_sweep(kvf_ctx *ctx) {
    struct pool *p = &ctx->pool;
    for (int i = p->n - 1; i >= 0; i--)
        if (i < p->n && p->live[i]->refs <= 0) pool_free_block(ctx, p->live[i]);
}

void kvf_grad_hold(kvf_tensor *g) {
    if (g && g->storage && g->storage->pooled) g->storage->refs++;
}

void kvf_grad_release(kvf_ctx *ctx, kvf_tensor *t) {
    if (!t || !t->grad) return;
    struct kvf_storage *s = t->grad->storage;
    if (!s || !s->pooled) return; /* arena or parameter storage: kept */
    t->grad = NULL;
    if (--s->refs <= 0) pool_free_block(ctx, s);
}

void kvf_ctx_free(kvf_ctx *ctx) {
    if (!ctx) return;
    pool_clear(ctx);
    free(ctx->pool.live);
    region_free(&ctx->main);
    region_free(&ctx->scratch);
    free(ctx->main_tape.nodes);
    free(ctx);
}

uint64_t kvf_ctx_generation(const kvf_ctx *ctx) { return ctx->generation; }

void kvf_ctx_reset(kvf_ctx *ctx) {
    ctx->generation = generation_next();
    pool_clear(ctx); /* gradients of leaves that no rule released */
    ctx->pool_on = false;
    arena_reset(&ctx->main.data);
    arena_reset(&ctx->main.headers);
    arena_reset(&ctx->scratch.data);
    arena_reset(&ctx->scratch.headers);
    /* a recompute that failed half-way leaves nothing behind either */
    ctx->cur = &ctx->main;
    ctx->tape = &ctx->main_tape;
    ctx->recomputing = 0;
    ctx->main_tape.n = 0;
}

const kvf_backend *kvf_ctx_backend(const kvf_ctx *ctx) { return ctx->be; }
kvf_device kvf_ctx_device(const kvf_ctx *ctx) { return ctx->be->device; }

bool kvf_ctx_set_grad(kvf_ctx *ctx, bool enabled) {
    bool old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

bool kvf_ctx_grad_enabled(const kvf_ctx *ctx) { return ctx->grad_enabled; }

bool kvf_ctx_set_grad_sharing(kvf_ctx *ctx, bool enabled) {
    bool old = ctx->grad_sharing;
    ctx->grad_sharing = enabled;
    return old;
}

bool kvf_ctx_grad_sharing(const kvf_ctx *ctx) { return ctx->grad_sharing; }

struct kvf_tape *kvf_ctx_tape(kvf_ctx *ctx) { return ctx->tape; }

struct kvf_tape *kvf_ctx_swap_tape(kvf_ctx *ctx, struct kvf_tape *tape) {
    struct kvf_tape *old = ctx->tape;
    ctx->tape = tape ? tape : &ctx->main_tape;
    return old;
}

bool kvf_ctx_use_scratch(kvf_ctx *ctx, bool on) {
    bool old = ctx->cur == &ctx->scratch;
    ctx->cur = on ? &ctx->scratch : &ctx->main;
    return old;
}

void kvf_ctx_scratch_mark(const kvf_ctx *ctx, struct kvf_scratch_mark *m) {
    arena_mark(&ctx->scratch.data, &m->data);
    arena_mark(&ctx->scratch.headers, &m->headers);
}

void kvf_ctx_scratch_rewind(kvf_ctx *ctx, const struct kvf_scratch_mark *m) {
    arena_rewind(&ctx->scratch.data, &m->data);
    arena_rewind(&ctx->scratch.headers, &m->headers);
}

bool kvf_ctx_scratch_since(const kvf_ctx *ctx, const struct kvf_scratch_mark *m, const void *host) {
    return arena_since(&ctx->scratch.headers, &m->headers, host);
}

int64_t kvf_ctx_tick(kvf_ctx *ctx) { return ++ctx->clock; }

int kvf_ctx_recompute_enter(kvf_ctx *ctx, int delta) { return ctx->recomputing += delta; }
bool kvf_ctx_recomputing(const kvf_ctx *ctx) { return ctx->recomputing > 0; }

size_t kvf_ctx_arena_used(const kvf_ctx *ctx) {
    return ctx->main.data.used + ctx->scratch.data.used + ctx->pool.used;
}

static size_t arena_reserved(const struct arena *a) {
    size_t n = 0;
    for (struct arena_chunk *c = a->head; c; c = c->next) n += c->cap;
    return n;
}

size_t kvf_ctx_arena_reserved(const kvf_ctx *ctx) {
    return arena_reserved(&ctx->main.data) + arena_reserved(&ctx->scratch.data);
}

size_t kvf_ctx_arena_peak(const kvf_ctx *ctx) { return ctx->peak; }
void kvf_ctx_arena_peak_reset(kvf_ctx *ctx) { ctx->peak = kvf_ctx_arena_used(ctx); }

void *kvf_ctx_alloc(kvf_ctx *ctx, size_t nbytes) {
    void *p = arena_alloc(&ctx->cur->data, nbytes ? nbytes : 1);
    KVF_CHECK_NULL(p, KVF_ERR_OOM, "arena: cannot allocate %zu bytes on %s (arena holds %zu)",
                   nbytes, kvf_device_name(ctx->be->device), kvf_ctx_arena_reserved(ctx));
    size_t used = kvf_ctx_arena_used(ctx);
    if (used > ctx->peak) ctx->peak = used;
    return p;
}

void *kvf_ctx_alloc_host(kvf_ctx *ctx, size_t nbytes) {
    void *p = arena_alloc(&ctx->cur->headers, nbytes ? nbytes : 1);
    KVF_CHECK_NULL(p, KVF_ERR_OOM, "arena: cannot allocate %zu bytes of host memory", nbytes);
    return p;
}

static kvf_tensor *header_new(kvf_ctx *ctx) {
    kvf_tensor *t = arena_alloc(&ctx->cur->headers, sizeof(kvf_tensor) + sizeof(struct kvf_storage));
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
    s->data = ctx->pool_on && ctx->cur == &ctx->main ? pool_alloc(ctx, s) : kvf_ctx_alloc(ctx, s->nbytes);
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
    struct kvf_storage hs = {.data = host, .nbytes = (size_t)n * es, .device = KVF_DEVICE_CPU};
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
    if (dtype == KVF_DTYPE_I32 && ctx->be->device != KVF_DEVICE_CPU) {
        void *mirror = kvf_ctx_alloc_host(ctx, t->storage->nbytes);
        if (mirror) {
            memcpy(mirror, host, t->storage->nbytes);
            t->storage->host_ids = mirror;
        } else {
            kvf_error_clear(); /* no mirror: the ids are downloaded when checked */
        }
    }
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
    struct kvf_storage hs = {.data = host, .nbytes = nbytes, .device = KVF_DEVICE_CPU};
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
    struct kvf_storage hs = {.data = &raw, .nbytes = sizeof raw, .device = KVF_DEVICE_CPU};
    kvf_tensor h = *t;
    h.storage = &hs;
    h.offset = 0;
    *value = kvf_tensor_get_flat(&h, 0);
    return KVF_OK;
}
