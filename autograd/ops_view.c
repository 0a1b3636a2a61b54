/* ops_view.c — views (reshape, permute, slice, expand), copies and casts, concat/split. */
#include <stdio.h>
#include <string.h>

#include "ops_impl.h"

static kvf_tensor *view_of(kvf_ctx *ctx, kvf_tensor *x) { return kvf_tensor_view_header(ctx, x); }

kvf_tensor *kvf_contiguous(kvf_ctx *ctx, kvf_tensor *x) {
    if (!kvf_ops_check_inputs(ctx, "contiguous", 1, &x)) return NULL;
    if (kvf_tensor_is_contiguous(x)) return x;
    return kvf_cast(ctx, x, x->dtype);
}

kvf_tensor *kvf_cast_view(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *y) {
    kvf_tensor *in[2] = {x, y};
    if (!kvf_ops_check_inputs(ctx, "cast_view", 2, in)) return NULL;
    KVF_CHECK_NULL(kvf_tensor_same_shape(x, y) && y->node < 0, KVF_ERR_SHAPE,
                   "cast_view: %s cannot stand for the cast of %s", KVF_DESC(y), KVF_DESC(x));
    if (kvf_dtype_is_float(y->dtype) && kvf_dtype_is_float(x->dtype))
        kvf_tape_record(ctx, KVF_OP_COPY, y, 1, &x);
    return y;
}

kvf_tensor *kvf_cast(kvf_ctx *ctx, kvf_tensor *x, kvf_dtype dtype) {
    if (!kvf_ops_check_inputs(ctx, "cast", 1, &x)) return NULL;
    kvf_tensor *y = kvf_tensor_new(ctx, dtype, x->ndim, x->shape);
    if (!y) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->copy(y, x));
    /* gradients flow only between float dtypes */
    if (kvf_dtype_is_float(dtype) && kvf_dtype_is_float(x->dtype))
        kvf_tape_record(ctx, KVF_OP_COPY, y, 1, &x);
    return y;
}

kvf_status kvf_copy_backward(kvf_ctx *ctx, kvf_node *n) {
    /* a same-dtype copy (contiguous) passes its gradient through unchanged; a cast does not */
    if (kvf_grad_share(ctx, n->src[0], n->out->grad)) return KVF_OK;
    /* a first gradient is written by the converting copy itself */
    if (!n->src[0]->grad) return kvf_grad_add(ctx, n->src[0], n->out->grad);
    kvf_tensor *gx = n->src[0]->grad;
    const kvf_tensor *g = n->out->grad;
    if (g->dtype != gx->dtype) {
        kvf_tensor *c = kvf_tensor_new(ctx, gx->dtype, g->ndim, g->shape);
        if (!c) return kvf_error_code();
        KVF_TRY(kvf_ctx_backend(ctx)->copy(c, g));
        g = c;
    }
    return kvf_grad_accumulate(ctx, gx, g);
}

kvf_tensor *kvf_reshape(kvf_ctx *ctx, kvf_tensor *x, int ndim, const int64_t *shape) {
    if (!kvf_ops_check_inputs(ctx, "reshape", 1, &x)) return NULL;
    KVF_CHECK_NULL(ndim >= 1 && ndim <= KVF_MAX_DIMS, KVF_ERR_SHAPE,
                   "reshape: %s to %d dims (1..%d allowed)", KVF_DESC(x), ndim, KVF_MAX_DIMS);
    int64_t sh[KVF_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (sh[i] == -1 && infer < 0) infer = i;
        else if (sh[i] < 0) {
            kvf_error_set(KVF_ERR_SHAPE, "reshape: %s to a shape with extent %lld", KVF_DESC(x),
                          (long long)sh[i]);
            return NULL;
        } else known *= sh[i];
    }
    int64_t n = kvf_tensor_numel(x);
    if (infer >= 0) sh[infer] = known ? n / known : 0;
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) total *= sh[i];
    if (total != n) {
        char want[96] = "[";
        size_t k = 1;
        for (int i = 0; i < ndim; i++)
            k += (size_t)snprintf(want + k, sizeof want - k, i ? ", %lld" : "%lld", (long long)shape[i]);
        kvf_error_set(KVF_ERR_SHAPE, "reshape: %s (%lld elements) cannot become %s]", KVF_DESC(x),
                      (long long)n, want);
        return NULL;
    }
    kvf_tensor *src = kvf_contiguous(ctx, x);
    if (!src) return NULL;
    kvf_tensor *y = view_of(ctx, src);
    if (!y) return NULL;
    y->ndim = ndim;
    memcpy(y->shape, sh, sizeof(int64_t) * (size_t)ndim);
    kvf_layout_contiguous(ndim, sh, y->stride);
    kvf_tape_record(ctx, KVF_OP_RESHAPE, y, 1, &src);
    return y;
}

kvf_status kvf_reshape_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *x = n->src[0];
    if (kvf_grad_share(ctx, x, n->out->grad)) return KVF_OK; /* x is contiguous, like g */
    kvf_tensor g = *n->out->grad; /* contiguous: reinterpret with x's shape */
    g.ndim = x->ndim;
    memcpy(g.shape, x->shape, sizeof g.shape);
    kvf_layout_contiguous(g.ndim, g.shape, g.stride);
    return kvf_grad_add(ctx, x, &g);
}

kvf_tensor *kvf_permute(kvf_ctx *ctx, kvf_tensor *x, const int *perm) {
    if (!kvf_ops_check_inputs(ctx, "permute", 1, &x)) return NULL;
    bool seen[KVF_MAX_DIMS] = {0};
    for (int i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || seen[perm[i]]) {
            kvf_error_set(KVF_ERR_ARG, "permute: %s: entry %d (%d) is not a permutation of 0..%d",
                          KVF_DESC(x), i, perm[i], x->ndim - 1);
            return NULL;
        }
        seen[perm[i]] = true;
    }
    kvf_tensor *y = view_of(ctx, x);
    if (!y) return NULL;
    for (int i = 0; i < x->ndim; i++) {
        y->shape[i] = x->shape[perm[i]];
        y->stride[i] = x->stride[perm[i]];
    }
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_PERMUTE, y, 1, &x);
    if (nd)
        for (int i = 0; i < x->ndim; i++) nd->iparam[i] = perm[i];
    return y;
}

kvf_status kvf_permute_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *x = n->src[0];
    /* view the contiguous out-grad in x's index order: dim perm[i] of x is dim i of out */
    const kvf_tensor *go = n->out->grad;
    kvf_tensor g = *go;
    for (int i = 0; i < x->ndim; i++) {
        int d = (int)n->iparam[i];
        g.shape[d] = go->shape[i];
        g.stride[d] = go->stride[i];
    }
    return kvf_grad_add(ctx, x, &g);
}

kvf_tensor *kvf_transpose(kvf_ctx *ctx, kvf_tensor *x, int d0, int d1) {
    if (!kvf_ops_check_inputs(ctx, "transpose", 1, &x)) return NULL;
    int a = kvf_ops_axis(d0, x->ndim), b = kvf_ops_axis(d1, x->ndim);
    KVF_CHECK_NULL(a >= 0 && b >= 0, KVF_ERR_ARG, "transpose: dims %d, %d out of range for %s",
                   d0, d1, KVF_DESC(x));
    int perm[KVF_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[a] = b;
    perm[b] = a;
    return kvf_permute(ctx, x, perm);
}

kvf_tensor *kvf_slice(kvf_ctx *ctx, kvf_tensor *x, int axis, int64_t start, int64_t len) {
    if (!kvf_ops_check_inputs(ctx, "slice", 1, &x)) return NULL;
    int a = kvf_ops_axis(axis, x->ndim);
    KVF_CHECK_NULL(a >= 0, KVF_ERR_ARG, "slice: axis %d out of range for %s", axis, KVF_DESC(x));
    KVF_CHECK_NULL(start >= 0 && len >= 0 && start + len <= x->shape[a], KVF_ERR_SHAPE,
                   "slice: [%lld, %lld) of axis %d is outside %s", (long long)start,
                   (long long)(start + len), a, KVF_DESC(x));
    kvf_tensor *y = view_of(ctx, x);
    if (!y) return NULL;
    y->offset += start * x->stride[a];
    y->shape[a] = len;
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_SLICE, y, 1, &x);
    if (nd) {
        nd->iparam[0] = a;
        nd->iparam[1] = start;
    }
    return y;
}

/* The pieces of a kvf_split are consecutive slice nodes (iparam[2] pieces, this one
 * iparam[3]); the last runs first in the backward, after every consumer of every piece. When
 * x has no gradient yet and every piece has one, x's gradient is written piece by piece
 * (the concat of theirs) and the other pieces' nodes are marked done (iparam[4]: their rule
 * clears the mark and returns); otherwise each piece adds its part, as a lone slice does. */
static bool split_backward(kvf_ctx *ctx, kvf_node *n, kvf_status *st) {
    const int64_t np = n->iparam[2], last = np - 1;
    kvf_tensor *x = n->src[0];
    if (np < 2 || n->iparam[3] != last || x->grad || n->out->node < last) return false;
    for (int64_t i = 0; i < np; i++) {
        const kvf_node *s = n - (last - i);
        if (s->op != KVF_OP_SLICE || s->src[0] != x || s->iparam[2] != np || s->iparam[3] != i ||
            !s->out->grad)
            return false;
    }
    bool fresh;
    kvf_tensor *gx = kvf_grad_fresh(ctx, x, &fresh);
    if (!gx) {
        *st = kvf_error_code();
        return true;
    }
    *st = KVF_OK;
    for (int64_t i = 0; i < np && *st == KVF_OK; i++) {
        kvf_node *s = n - (last - i);
        const int a = (int)s->iparam[0];
        kvf_tensor region = *gx;
        region.offset += s->iparam[1] * gx->stride[a];
        region.shape[a] = s->out->shape[a];
        *st = kvf_ctx_backend(ctx)->copy(&region, s->out->grad);
        if (i != last) s->iparam[4] = 1;
    }
    return true;
}

kvf_status kvf_slice_backward(kvf_ctx *ctx, kvf_node *n) {
    if (n->iparam[4]) { /* written by its split's last piece */
        n->iparam[4] = 0;
        return KVF_OK;
    }
    kvf_status st;
    if (split_backward(ctx, n, &st)) return st;
    kvf_tensor *gx = kvf_grad_get(ctx, n->src[0]);
    if (!gx) return kvf_error_code();
    int a = (int)n->iparam[0];
    kvf_tensor region = *gx; /* the sliced part of x's gradient */
    region.offset += n->iparam[1] * gx->stride[a];
    region.shape[a] = n->out->shape[a];
    return kvf_grad_accumulate(ctx, &region, n->out->grad);
}

kvf_tensor *kvf_expand(kvf_ctx *ctx, kvf_tensor *x, int ndim, const int64_t *shape) {
    if (!kvf_ops_check_inputs(ctx, "expand", 1, &x)) return NULL;
    KVF_CHECK_NULL(ndim >= x->ndim && ndim <= KVF_MAX_DIMS, KVF_ERR_SHAPE,
                   "expand: %s to %d dims", KVF_DESC(x), ndim);
    kvf_tensor *y = view_of(ctx, x);
    if (!y) return NULL;
    int lead = ndim - x->ndim;
    y->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        int64_t xs = i < lead ? 1 : x->shape[i - lead];
        int64_t st = i < lead ? 0 : x->stride[i - lead];
        if (xs != shape[i] && xs != 1) {
            kvf_error_set(KVF_ERR_SHAPE, "expand: %s cannot broadcast to extent %lld in dim %d",
                          KVF_DESC(x), (long long)shape[i], i);
            return NULL;
        }
        y->shape[i] = shape[i];
        y->stride[i] = (xs == shape[i]) ? st : 0;
    }
    kvf_tape_record(ctx, KVF_OP_EXPAND, y, 1, &x);
    return y;
}

kvf_status kvf_expand_backward(kvf_ctx *ctx, kvf_node *n) {
    return kvf_grad_add(ctx, n->src[0], n->out->grad);
}

kvf_tensor *kvf_concat(kvf_ctx *ctx, kvf_tensor *const *xs, int n, int axis) {
    KVF_CHECK_NULL(n >= 1 && n <= KVF_MAX_SRC, KVF_ERR_ARG, "concat: %d operands (1..%d allowed)",
                   n, KVF_MAX_SRC);
    if (!kvf_ops_check_inputs(ctx, "concat", n, xs)) return NULL;
    int a = kvf_ops_axis(axis, xs[0]->ndim);
    KVF_CHECK_NULL(a >= 0, KVF_ERR_ARG, "concat: axis %d out of range for %s", axis,
                   KVF_DESC(xs[0]));
    int64_t shape[KVF_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    shape[a] = 0;
    for (int i = 0; i < n; i++) {
        bool ok = xs[i]->ndim == xs[0]->ndim && xs[i]->dtype == xs[0]->dtype;
        for (int d = 0; ok && d < xs[0]->ndim; d++)
            ok = d == a || xs[i]->shape[d] == xs[0]->shape[d];
        if (!ok) {
            kvf_error_set(KVF_ERR_SHAPE, "concat: operand %d %s does not match operand 0 %s "
                          "outside axis %d", i, KVF_DESC(xs[i]), KVF_DESC(xs[0]), a);
            return NULL;
        }
        shape[a] += xs[i]->shape[a];
    }
    kvf_tensor *y = kvf_tensor_new(ctx, xs[0]->dtype, xs[0]->ndim, shape);
    if (!y) return NULL;
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        kvf_tensor part = *y;
        part.offset += at * y->stride[a];
        part.shape[a] = xs[i]->shape[a];
        KVF_OPS_CALL(kvf_ctx_backend(ctx)->copy(&part, xs[i]));
        at += xs[i]->shape[a];
    }
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_CONCAT, y, n, xs);
    if (nd) nd->iparam[0] = a;
    return y;
}

kvf_status kvf_concat_backward(kvf_ctx *ctx, kvf_node *n) {
    int a = (int)n->iparam[0];
    int64_t at = 0;
    for (int i = 0; i < n->n_src; i++) {
        kvf_tensor *x = n->src[i];
        kvf_tensor part = *n->out->grad;
        part.offset += at * part.stride[a];
        part.shape[a] = x->shape[a];
        at += x->shape[a];
        if (x->requires_grad) KVF_TRY(kvf_grad_add(ctx, x, &part));
    }
    return KVF_OK;
}

kvf_status kvf_split(kvf_ctx *ctx, kvf_tensor *x, int axis, const int64_t *sizes, int n,
                     kvf_tensor **out) {
    if (!kvf_ops_check_inputs(ctx, "split", 1, &x)) return kvf_error_code();
    int a = kvf_ops_axis(axis, x->ndim);
    KVF_CHECK(a >= 0, KVF_ERR_ARG, "split: axis %d out of range for %s", axis, KVF_DESC(x));
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    KVF_CHECK(total == x->shape[a], KVF_ERR_SHAPE,
              "split: sizes sum to %lld but axis %d of %s has %lld", (long long)total, a,
              KVF_DESC(x), (long long)x->shape[a]);
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        out[i] = kvf_slice(ctx, x, a, at, sizes[i]);
        if (!out[i]) return kvf_error_code();
        at += sizes[i];
        /* recorded as a group (see split_backward) */
        if (out[i]->node >= 0 && kvf_tape_size(ctx) == out[i]->node + 1) {
            kvf_node *nd = kvf_tape_node(ctx, out[i]->node);
            if (nd->out == out[i]) {
                nd->iparam[2] = n;
                nd->iparam[3] = i;
            }
        }
    }
    return KVF_OK;
}
