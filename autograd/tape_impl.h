/* tape_impl.h — the tape's storage inside kvf_ctx and the ctx internals that activation
 * recomputation (recompute.c) needs; private to autograd/. */
#ifndef KVF_TAPE_IMPL_H
#define KVF_TAPE_IMPL_H

#include "context.h"

struct kvf_node;
struct kvf_tape {
    struct kvf_node *nodes;
    int n, cap;
};

/* The tape ops record into now. */
struct kvf_tape *kvf_ctx_tape(kvf_ctx *ctx);
/* Makes tape (NULL: the ctx's own) the one ops record into; returns the previous one. */
struct kvf_tape *kvf_ctx_swap_tape(kvf_ctx *ctx, struct kvf_tape *tape);

/* Appends a node for out without looking at the inputs (recompute records one node for a
 * whole function); marks out as requiring grad. NULL (error set) when out of host memory. */
struct kvf_node *kvf_tape_push(kvf_ctx *ctx, int op, kvf_tensor *out);
/* Runs the rules of tape's nodes in reverse (gradient recording must be off). */
kvf_status kvf_tape_run(kvf_ctx *ctx, struct kvf_tape *tape);

/* The scratch region: allocations go there instead of the main region while on (returns
 * the previous setting); a mark remembers its fill, rewinding drops what came after. */
struct kvf_arena_mark {
    void *chunk;
    size_t chunk_used, used;
};
struct kvf_scratch_mark {
    struct kvf_arena_mark data, headers;
};
/* kvf_ctx_use_scratch: context.h */
void kvf_ctx_scratch_mark(const kvf_ctx *ctx, struct kvf_scratch_mark *m);
void kvf_ctx_scratch_rewind(kvf_ctx *ctx, const struct kvf_scratch_mark *m);
/* Whether a host pointer (a tensor header) was allocated in scratch after mark m. */
bool kvf_ctx_scratch_since(const kvf_ctx *ctx, const struct kvf_scratch_mark *m, const void *host);
/* Adds delta to the recompute depth (kvf_ctx_recomputing is depth > 0); returns the new one. */
int kvf_ctx_recompute_enter(kvf_ctx *ctx, int delta);

/* The next value of the ctx's clock (1, 2, ...; never rewound). */
int64_t kvf_ctx_tick(kvf_ctx *ctx);

/* The backward pool (context.c): while on, new main-region tensors are separate blocks.
 * A block held by no tensor's ->grad is garbage once the rule that made it returns
 * (sweep frees those); kvf_grad_hold / kvf_grad_release count the holders. Returns the
 * previous setting. */
bool kvf_ctx_pool(kvf_ctx *ctx, bool on);
void kvf_ctx_pool_sweep(kvf_ctx *ctx);
/* g became some tensor's ->grad: one more holder (pooled blocks only). */
void kvf_grad_hold(kvf_tensor *g);
/* t's gradient is no longer needed (the rule of t's producer has run): t->grad = NULL and
 * its block is freed when it was the last holder. Arena and parameter gradients stay. */
void kvf_grad_release(kvf_ctx *ctx, kvf_tensor *t);

#endif
