#include "tape.h"

#include <stdlib.h>
#include <string.h>

#include "ops_impl.h"
#include "tape_impl.h"

const struct kvf_op_rule kvf_op_rules[KVF_OP_COUNT] = {
    [KVF_OP_NONE] = {"none", NULL},
    [KVF_OP_RESHAPE] = {"reshape", kvf_reshape_backward},
    [KVF_OP_PERMUTE] = {"permute", kvf_permute_backward},
    [KVF_OP_SLICE] = {"slice", kvf_slice_backward},
    [KVF_OP_EXPAND] = {"expand", kvf_expand_backward},
    [KVF_OP_COPY] = {"copy", kvf_copy_backward},
    [KVF_OP_CONCAT] = {"concat", kvf_concat_backward},
    [KVF_OP_MATMUL] = {"matmul", kvf_matmul_backward},
    [KVF_OP_BINARY] = {"binary", kvf_binary_backward},
    [KVF_OP_UNARY] = {"unary", kvf_unary_backward},
    [KVF_OP_SUM] = {"sum", kvf_sum_backward},
    [KVF_OP_SOFTMAX] = {"softmax", kvf_softmax_backward},
    [KVF_OP_RMSNORM] = {"rmsnorm", kvf_rmsnorm_backward},
    [KVF_OP_LAYERNORM] = {"layernorm", kvf_layernorm_backward},
    [KVF_OP_ROPE] = {"rope", kvf_rope_backward},
    [KVF_OP_ATTENTION] = {"attention", kvf_attention_backward},
    [KVF_OP_CROSS_ENTROPY] = {"cross_entropy", kvf_cross_entropy_backward},
    [KVF_OP_EMBEDDING] = {"embedding", kvf_embedding_backward},
    [KVF_OP_SWIGLU] = {"swiglu", kvf_swiglu_backward},
    [KVF_OP_RECOMPUTE] = {"recompute", kvf_recompute_backward},
};

kvf_node *kvf_tape_record(kvf_ctx *ctx, kvf_op op, kvf_tensor *out, int n_src,
                          kvf_tensor *const *src) {
    if (!kvf_ctx_grad_enabled(ctx) || n_src > KVF_MAX_SRC) return NULL;
    bool need = false;
    for (int i = 0; i < n_src; i++) need |= src[i] && src[i]->requires_grad;
    if (!need) return NULL;
    kvf_node *n = kvf_tape_push(ctx, (int)op, out);
    if (!n) return NULL;
    n->n_src = n_src;
    int64_t now = out->born;
    for (int i = 0; i < n_src; i++) {
        n->src[i] = src[i];
        if (!src[i]) continue;
        n->src_prev_use[i] = src[i]->last_use;
        src[i]->last_use = now;
    }
    return n;
}

kvf_node *kvf_tape_push(kvf_ctx *ctx, int op, kvf_tensor *out) {
    struct kvf_tape *tape = kvf_ctx_tape(ctx);
    if (tape->n == tape->cap) {
        int cap = tape->cap ? tape->cap * 2 : 256;
        kvf_node *nodes = realloc(tape->nodes, sizeof(kvf_node) * (size_t)cap);
        if (!nodes) {
            kvf_error_set(KVF_ERR_OOM, "tape: out of host memory at %d nodes", tape->n);
            return NULL;
        }
        tape->nodes = nodes;
        tape->cap = cap;
    }
    kvf_node *n = &tape->nodes[tape->n];
    memset(n, 0, sizeof *n);
    n->op = (kvf_op)op;
    n->out = out;
    out->requires_grad = true;
    out->node = tape->n++;
    out->born = kvf_ctx_tick(ctx);
    return n;
}

int kvf_tape_size(const kvf_ctx *ctx) { return kvf_ctx_tape((kvf_ctx *)ctx)->n; }
kvf_node *kvf_tape_node(kvf_ctx *ctx, int i) { return &kvf_ctx_tape(ctx)->nodes[i]; }

kvf_tensor *kvf_grad_get(kvf_ctx *ctx, kvf_tensor *t) {
    if (!t || !t->requires_grad) return NULL;
    if (!t->grad) {
        t->grad = kvf_tensor_zeros(ctx, t->dtype, t->ndim, t->shape);
        kvf_grad_hold(t->grad);
    }
    return t->grad;
}

kvf_tensor *kvf_grad_fresh(kvf_ctx *ctx, kvf_tensor *t, bool *fresh) {
    *fresh = false;
    if (!t || !t->requires_grad) return NULL;
    if (t->grad) return t->grad;
    if (!(t->grad = kvf_tensor_new(ctx, t->dtype, t->ndim, t->shape))) return NULL;
    kvf_grad_hold(t->grad);
    *fresh = true;
    return t->grad;
}

kvf_tensor *kvf_grad_out(kvf_ctx *ctx, kvf_tensor *t, kvf_tensor **pending) {
    *pending = NULL;
    if (!t || !t->requires_grad) return NULL;
    if (t->grad) {
        *pending = t->grad;
        return kvf_tensor_new(ctx, t->dtype, t->ndim, t->shape);
    }
    bool fresh;
    return kvf_grad_fresh(ctx, t, &fresh);
}

kvf_status kvf_grad_finish(kvf_ctx *ctx, kvf_tensor *pending, const kvf_tensor *out) {
    return pending ? kvf_grad_accumulate(ctx, pending, out) : KVF_OK;
}

bool kvf_grad_sole(const kvf_tensor *g) {
    return g && g->storage && g->storage->pooled && g->storage->refs == 1;
}

static bool grad_share(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g, bool again) {
    /* a block held by another tensor too (an add handed it to both operands) would make
     * t's gradient an alias of that one's as well */
    if (!again && g && g->storage && g->storage->pooled && g->storage->refs > 1) return false;
    if (!kvf_ctx_grad_sharing(ctx) || !t || !t->requires_grad || t->grad || !g ||
        g->dtype != t->dtype || kvf_tensor_numel(g) != kvf_tensor_numel(t) ||
        !kvf_tensor_is_contiguous(g))
        return false;
    kvf_tensor *v = kvf_tensor_view_header(ctx, g);
    if (!v) return false; /* out of header memory: the plain path fails and reports it */
    v->ndim = t->ndim;
    memcpy(v->shape, t->shape, sizeof v->shape);
    kvf_layout_contiguous(v->ndim, v->shape, v->stride);
    t->grad = v;
    kvf_grad_hold(v);
    return true;
}

bool kvf_grad_share(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g) {
    return grad_share(ctx, t, g, false);
}

bool kvf_grad_share_again(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g) {
    return grad_share(ctx, t, g, true);
}

/* dst (+)= src summed down to dst's shape */
static kvf_status grad_reduce(kvf_ctx *ctx, kvf_tensor *dst, const kvf_tensor *src, bool add) {
    const kvf_backend *be = kvf_ctx_backend(ctx);
    if (kvf_tensor_same_shape(dst, src))
        return add ? be->binary(KVF_BINOP_ADD, dst, dst, src) : be->copy(dst, src);
    /* src is larger: sum it down to dst's shape (leading dims dropped, size-1 dims summed) */
    KVF_CHECK(src->ndim >= dst->ndim, KVF_ERR_SHAPE, "grad: cannot reduce %s to %s",
              KVF_DESC(src), KVF_DESC(dst));
    kvf_tensor view = *dst;
    int lead = src->ndim - dst->ndim;
    view.ndim = src->ndim;
    for (int i = 0; i < src->ndim; i++) {
        view.shape[i] = i < lead ? 1 : dst->shape[i - lead];
        view.stride[i] = i < lead ? 0 : dst->stride[i - lead];
        KVF_CHECK(view.shape[i] == 1 || view.shape[i] == src->shape[i], KVF_ERR_SHAPE,
                  "grad: cannot reduce %s to %s", KVF_DESC(src), KVF_DESC(dst));
    }
    return be->reduce_sum(&view, src, add);
}

kvf_status kvf_grad_accumulate(kvf_ctx *ctx, kvf_tensor *dst, const kvf_tensor *src) {
    return grad_reduce(ctx, dst, src, true);
}

kvf_status kvf_grad_add(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g) {
    bool fresh;
    kvf_tensor *gt = kvf_grad_fresh(ctx, t, &fresh);
    if (!gt) return t && t->requires_grad ? kvf_error_code() : KVF_OK;
    return grad_reduce(ctx, gt, g, !fresh);
}

kvf_status kvf_backward(kvf_ctx *ctx, kvf_tensor *loss) {
    KVF_CHECK(loss, KVF_ERR_ARG, "backward: loss is NULL");
    KVF_CHECK(kvf_tensor_numel(loss) == 1, KVF_ERR_SHAPE,
              "backward: loss must have one element, got %s", KVF_DESC(loss));
    KVF_CHECK(loss->requires_grad, KVF_ERR_STATE,
              "backward: loss does not depend on anything that requires grad (was grad mode "
              "off, or no parameter marked?)");
    bool was = kvf_ctx_set_grad(ctx, false);
    /* gradients and temporaries as separate blocks, freed as soon as they are dead — part
     * of the memory-saving mode that grad sharing switches (off: the reference, keeping
     * every intermediate's ->grad after backward) */
    bool pool_was = kvf_ctx_pool(ctx, kvf_ctx_grad_sharing(ctx));
    kvf_status st = KVF_OK;
    kvf_tensor *g = kvf_grad_get(ctx, loss);
    if (!g) st = kvf_error_code();
    else {
        kvf_tensor *one = kvf_tensor_full(ctx, loss->dtype, loss->ndim, loss->shape, 1.0);
        st = one ? kvf_grad_accumulate(ctx, g, one) : kvf_error_code();
    }
    if (st == KVF_OK) st = kvf_tape_run(ctx, kvf_ctx_tape(ctx));
    kvf_ctx_pool(ctx, pool_was);
    kvf_ctx_set_grad(ctx, was);
    return st;
}

kvf_status kvf_tape_run(kvf_ctx *ctx, struct kvf_tape *tape) {
    kvf_status st = KVF_OK;
    for (int i = tape->n - 1; i >= 0 && st == KVF_OK; i--) {
        kvf_node *n = &tape->nodes[i];
        /* not on a path to the loss (a recompute node has several outputs: its rule looks) */
        if (!n->out->grad && n->op != KVF_OP_RECOMPUTE) continue;
        st = kvf_op_rules[n->op].backward(ctx, n);
        /* every consumer of n's output ran before n: its gradient is dead now (a recompute
         * node releases its outputs' itself), and so are the rule's temporaries */
        if (n->op != KVF_OP_RECOMPUTE) kvf_grad_release(ctx, n->out);
        kvf_ctx_pool_sweep(ctx);
    }
    return st;
}
