/* ops_loss.c — cross-entropy over the last dim and embedding lookup.
 * Ids and targets are validated here (on the host, whatever the device), so kernels may
 * index with them unchecked: a bad id is an error naming its position, not a crash. */
#include <stdio.h>
#include <stdlib.h>

#include "ops_impl.h"

/* ids (contiguous i32) as host memory: the tensor's own data on the CPU, else a copy that
 * *owned receives (free it). NULL with the error set on failure. */
static const int32_t *ids_on_host(const kvf_tensor *ids, int32_t **owned) {
    *owned = NULL;
    if (kvf_tensor_device(ids) == KVF_DEVICE_CPU) return kvf_tensor_data(ids);
    if (ids->storage->host_ids && kvf_tensor_is_contiguous(ids))
        return (const int32_t *)ids->storage->host_ids + ids->offset;
    size_t nb = kvf_tensor_nbytes(ids);
    *owned = malloc(nb ? nb : 1);
    if (!*owned) {
        kvf_error_set(KVF_ERR_OOM, "cannot allocate %zu bytes to check ids", nb);
        return NULL;
    }
    if (kvf_tensor_to_host(ids, *owned, nb) != KVF_OK) {
        free(*owned);
        *owned = NULL;
        return NULL;
    }
    return *owned;
}

/* Multi-index of flat position i in shape (ndim dims) as "[a, b]" into buf. */
static const char *index_str(int64_t i, int ndim, const int64_t *shape, char *buf, size_t n) {
    int64_t idx[KVF_MAX_DIMS];
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = shape[d] ? i % shape[d] : 0;
        i = shape[d] ? i / shape[d] : 0;
    }
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)idx[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* Every id in [0, limit) unless it equals skip (when has_skip). */
static bool check_range(const char *op, const char *what, const kvf_tensor *ids, int64_t limit,
                        bool has_skip, int64_t skip) {
    int32_t *owned;
    const int32_t *p = ids_on_host(ids, &owned);
    if (!p) return false;
    int64_t n = kvf_tensor_numel(ids);
    bool ok = true;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = p[i];
        if ((has_skip && v == skip) || (v >= 0 && v < limit)) continue;
        char at[64];
        index_str(i, ids->ndim, ids->shape, at, sizeof at);
        if (has_skip)
            kvf_error_set(KVF_ERR_ARG, "%s: %s %s: row %lld (at %s) is %lld, outside [0, %lld) "
                          "and not ignore_index %lld", op, what, KVF_DESC(ids), (long long)i, at,
                          (long long)v, (long long)limit, (long long)skip);
        else
            kvf_error_set(KVF_ERR_ARG, "%s: %s %s: the id at %s (flat %lld) is %lld, outside "
                          "[0, %lld)", op, what, KVF_DESC(ids), at, (long long)i, (long long)v,
                          (long long)limit);
        ok = false;
        break;
    }
    free(owned);
    return ok;
}

/* A 2-D header [rows, cols] over contiguous t; shares t's storage. */
static kvf_tensor as_2d(const kvf_tensor *t, int64_t rows, int64_t cols) {
    kvf_tensor v = *t;
    v.ndim = 2;
    v.shape[0] = rows;
    v.shape[1] = cols;
    v.stride[0] = cols;
    v.stride[1] = 1;
    return v;
}

static kvf_tensor as_1d(const kvf_tensor *t) {
    kvf_tensor v = *t;
    v.ndim = 1;
    v.shape[0] = kvf_tensor_numel(t);
    v.stride[0] = 1;
    return v;
}

static kvf_tensor *cross_entropy(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets,
                                 int64_t ignore_index, bool inplace) {
    const char *op = inplace ? "cross_entropy_inplace" : "cross_entropy";
    kvf_tensor *in[2] = {logits, targets};
    if (!kvf_ops_check_inputs(ctx, op, 2, in)) return NULL;
    if (!kvf_ops_check_float(op, logits, "logits") || !kvf_ops_check_ids(op, targets, "targets"))
        return NULL;
    bool ok = logits->ndim >= 2 && targets->ndim == logits->ndim - 1;
    for (int i = 0; ok && i < targets->ndim; i++) ok = targets->shape[i] == logits->shape[i];
    KVF_CHECK_NULL(ok, KVF_ERR_SHAPE,
                   "cross_entropy: targets %s must have the leading shape of logits %s [..., V]",
                   KVF_DESC(targets), KVF_DESC(logits));
    int64_t V = logits->shape[logits->ndim - 1], N = kvf_tensor_numel(targets);
    KVF_CHECK_NULL(V > 0, KVF_ERR_SHAPE, "cross_entropy: logits %s have no classes",
                   KVF_DESC(logits));
    logits = kvf_contiguous(ctx, logits);
    targets = kvf_contiguous(ctx, targets);
    if (!logits || !targets) return NULL;
    if (!check_range(op, "targets", targets, V, true, ignore_index)) return NULL;
    /* loss and lse in the compute dtype: f64 for f64 logits, else f32 (bf16 logits too) */
    kvf_dtype st = logits->dtype == KVF_DTYPE_F64 ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
    kvf_tensor *loss = kvf_tensor_new(ctx, st, 1, (int64_t[]){1});
    kvf_tensor *lse = loss ? kvf_tensor_new(ctx, st, 1, &N) : NULL;
    if (!lse) return NULL;
    kvf_tensor lv = as_2d(logits, N, V), tv = as_1d(targets);
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->cross_entropy(loss, lse, &lv, &tv, ignore_index));
    kvf_tensor *src[2] = {logits, targets};
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_CROSS_ENTROPY, loss, 2, src);
    if (nd) {
        nd->saved[0] = lse;
        nd->iparam[0] = ignore_index;
        nd->iparam[1] = inplace;
    }
    return loss;
}

kvf_tensor *kvf_cross_entropy(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets,
                              int64_t ignore_index) {
    return cross_entropy(ctx, logits, targets, ignore_index, false);
}

kvf_tensor *kvf_cross_entropy_inplace(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets,
                                      int64_t ignore_index) {
    return cross_entropy(ctx, logits, targets, ignore_index, true);
}

kvf_status kvf_cross_entropy_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *logits = n->src[0], *targets = n->src[1];
    int64_t V = logits->shape[logits->ndim - 1], N = kvf_tensor_numel(targets);
    const kvf_backend *be = kvf_ctx_backend(ctx);
    /* in place: only while the logits have no gradient yet (a consumer recorded later
     * would have made one; its part must not be overwritten) — the logits (contiguous,
     * made so by the op) then become their own gradient buffer */
    if (n->iparam[1] && kvf_ctx_grad_sharing(ctx) && logits->requires_grad && !logits->grad &&
        be->cross_entropy_backward_inplace && kvf_tensor_is_contiguous(logits)) {
        kvf_tensor *g = kvf_tensor_view_header(ctx, logits);
        if (!g) return kvf_error_code();
        kvf_tensor lv = as_2d(logits, N, V), tv = as_1d(targets);
        KVF_TRY(be->cross_entropy_backward_inplace(&lv, n->saved[0], &tv, n->out->grad,
                                                   n->iparam[0]));
        logits->grad = g;
        return KVF_OK;
    }
    kvf_tensor *g = kvf_grad_get(ctx, logits);
    if (!g) return kvf_error_code();
    kvf_tensor gv = as_2d(g, N, V), lv = as_2d(logits, N, V), tv = as_1d(targets);
    return be->cross_entropy_backward(&gv, &lv, n->saved[0], &tv, n->out->grad, n->iparam[0]);
}

kvf_tensor *kvf_embedding(kvf_ctx *ctx, kvf_tensor *weight, kvf_tensor *ids) {
    const char *op = "embedding";
    kvf_tensor *in[2] = {weight, ids};
    if (!kvf_ops_check_inputs(ctx, op, 2, in)) return NULL;
    if (!kvf_ops_check_float(op, weight, "weight") || !kvf_ops_check_ids(op, ids, "ids"))
        return NULL;
    KVF_CHECK_NULL(weight->ndim == 2 && ids->ndim >= 1 && ids->ndim < KVF_MAX_DIMS,
                   KVF_ERR_SHAPE, "embedding: weight %s must be [V, C] and ids %s have 1 to %d "
                   "dims", KVF_DESC(weight), KVF_DESC(ids), KVF_MAX_DIMS - 1);
    int64_t V = weight->shape[0], C = weight->shape[1], N = kvf_tensor_numel(ids);
    weight = kvf_contiguous(ctx, weight);
    ids = kvf_contiguous(ctx, ids);
    if (!weight || !ids) return NULL;
    if (!check_range(op, "ids", ids, V, false, 0)) return NULL;
    int64_t shape[KVF_MAX_DIMS];
    for (int i = 0; i < ids->ndim; i++) shape[i] = ids->shape[i];
    shape[ids->ndim] = C;
    kvf_tensor *y = kvf_tensor_new(ctx, weight->dtype, ids->ndim + 1, shape);
    if (!y) return NULL;
    kvf_tensor yv = as_2d(y, N, C), iv = as_1d(ids);
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->embedding(&yv, weight, &iv));
    kvf_tensor *src[2] = {weight, ids};
    kvf_tape_record(ctx, KVF_OP_EMBEDDING, y, 2, src);
    return y;
}

kvf_status kvf_embedding_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *weight = n->src[0], *ids = n->src[1];
    kvf_tensor *g = kvf_grad_get(ctx, weight);
    if (!g) return kvf_error_code();
    int64_t N = kvf_tensor_numel(ids), C = weight->shape[1];
    kvf_tensor dv = as_2d(n->out->grad, N, C), iv = as_1d(ids);
    return kvf_ctx_backend(ctx)->embedding_backward(g, &iv, &dv);
}
