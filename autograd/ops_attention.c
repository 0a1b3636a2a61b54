/* ops_attention.c — fused scaled-dot-product attention: MHA, GQA/MQA (query head h reads
 * kv head h / (Hq / Hkv), consecutive groups as in HF Llama), q/k dim != v dim (MLA),
 * causal masks with the queries aligned to the end of the keys, sliding windows.
 *
 * q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] → out [B, T, Hq, Dv], contiguous.
 * q/k/v may be strided views (slices of a fused projection) as long as their last dim is
 * dense and rows do not overlap; others are copied first. The op saves the softmax's
 * log-sum-exp lse [B, Hq, T] for the backward, in f32 — or f64 when q is f64, so that the
 * double-precision gradient checks are not limited by an f32 lse.
 *
 * Rejected: a window without causal (the window is defined from the causal position),
 * a negative window, T > S when causal (a query would precede every key), no keys at all
 * (S = 0 with T > 0), a non-finite scale. So no query row is ever empty. */
#include <math.h>

#include "ops_impl.h"

#define SHAPES "q %s, k %s, v %s"
#define SHAPES_ARGS KVF_DESC(q), KVF_DESC(k), KVF_DESC(v)

/* The kernels need a dense last dim and a row stride at least the row length. */
static kvf_tensor *kernel_layout(kvf_ctx *ctx, kvf_tensor *x) {
    bool ok = (x->shape[3] <= 1 || x->stride[3] == 1) &&
              (x->shape[1] <= 1 || x->stride[1] >= x->shape[3]);
    for (int i = 0; i < 3 && ok; i++) ok = x->stride[i] >= 0;
    return ok ? x : kvf_contiguous(ctx, x);
}

kvf_tensor *kvf_attention(kvf_ctx *ctx, kvf_tensor *q, kvf_tensor *k, kvf_tensor *v,
                          const kvf_attn_cfg *cfg) {
    kvf_tensor *in[3] = {q, k, v};
    if (!kvf_ops_check_inputs(ctx, "attention", 3, in)) return NULL;
    if (!kvf_ops_check_float("attention", q, "q") || !kvf_ops_check_float("attention", k, "k") ||
        !kvf_ops_check_float("attention", v, "v"))
        return NULL;
    KVF_CHECK_NULL(cfg, KVF_ERR_ARG, "attention: cfg is NULL (" SHAPES ")", SHAPES_ARGS);
    KVF_CHECK_NULL(q->dtype == k->dtype && q->dtype == v->dtype, KVF_ERR_DTYPE,
                   "attention: " SHAPES " must share one dtype", SHAPES_ARGS);
    KVF_CHECK_NULL(q->ndim == 4 && k->ndim == 4 && v->ndim == 4, KVF_ERR_SHAPE,
                   "attention: " SHAPES " must be [B, T, Hq, Dk], [B, S, Hkv, Dk], "
                   "[B, S, Hkv, Dv]", SHAPES_ARGS);
    const int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], Dk = q->shape[3];
    const int64_t S = k->shape[1], Hkv = k->shape[2], Dv = v->shape[3];
    KVF_CHECK_NULL(k->shape[0] == B && v->shape[0] == B && v->shape[1] == S, KVF_ERR_SHAPE,
                   "attention: " SHAPES ": batch sizes or key counts differ", SHAPES_ARGS);
    KVF_CHECK_NULL(k->shape[3] == Dk, KVF_ERR_SHAPE,
                   "attention: " SHAPES ": q and k head dims differ", SHAPES_ARGS);
    KVF_CHECK_NULL(v->shape[2] == Hkv, KVF_ERR_SHAPE,
                   "attention: " SHAPES ": k and v head counts differ", SHAPES_ARGS);
    KVF_CHECK_NULL(Hkv > 0 && Hq > 0 && Hq % Hkv == 0, KVF_ERR_SHAPE,
                   "attention: " SHAPES ": %lld query heads are not a multiple of %lld kv heads",
                   SHAPES_ARGS, (long long)Hq, (long long)Hkv);
    KVF_CHECK_NULL(Dk > 0 && Dv > 0, KVF_ERR_SHAPE, "attention: " SHAPES ": empty head dim",
                   SHAPES_ARGS);
    KVF_CHECK_NULL(isfinite(cfg->scale), KVF_ERR_ARG,
                   "attention: " SHAPES ": scale %g is not finite", SHAPES_ARGS, (double)cfg->scale);
    KVF_CHECK_NULL(cfg->window >= 0, KVF_ERR_ARG,
                   "attention: " SHAPES ": window %lld is negative (0 means none)", SHAPES_ARGS,
                   (long long)cfg->window);
    KVF_CHECK_NULL(cfg->causal || cfg->window == 0, KVF_ERR_ARG,
                   "attention: " SHAPES ": a sliding window (%lld) needs a causal mask",
                   SHAPES_ARGS, (long long)cfg->window);
    KVF_CHECK_NULL(!cfg->causal || T <= S, KVF_ERR_SHAPE,
                   "attention: " SHAPES ": causal attention needs T <= S (queries are the "
                   "last T of the S positions)", SHAPES_ARGS);
    KVF_CHECK_NULL(S > 0 || T == 0, KVF_ERR_SHAPE, "attention: " SHAPES ": no keys to attend to",
                   SHAPES_ARGS);

    in[0] = q = kernel_layout(ctx, q);
    in[1] = k = kernel_layout(ctx, k);
    in[2] = v = kernel_layout(ctx, v);
    if (!q || !k || !v) return NULL;
    kvf_tensor *out = kvf_tensor_new(ctx, q->dtype, 4, (int64_t[]){B, T, Hq, Dv});
    kvf_dtype ldt = q->dtype == KVF_DTYPE_F64 ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
    kvf_tensor *lse = out ? kvf_tensor_new(ctx, ldt, 3, (int64_t[]){B, Hq, T}) : NULL;
    if (!lse) return NULL;
    if (kvf_tensor_numel(out) > 0)
        KVF_OPS_CALL(kvf_ctx_backend(ctx)->attention(out, lse, q, k, v, cfg));
    kvf_node *n = kvf_tape_record(ctx, KVF_OP_ATTENTION, out, 3, in);
    if (n) {
        n->saved[0] = lse;
        n->attn = *cfg;
    }
    return out;
}

kvf_status kvf_attention_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *q = n->src[0], *k = n->src[1], *v = n->src[2];
    /* the kernels overwrite dq/dk/dv: a gradient that already holds a sum (K/V shared
     * across layers, or one tensor passed twice) gets a temporary, added in afterwards */
    kvf_tensor *pq, *pk, *pv;
    kvf_tensor *dq = kvf_grad_out(ctx, q, &pq), *dk = kvf_grad_out(ctx, k, &pk),
               *dv = kvf_grad_out(ctx, v, &pv);
    if ((q->requires_grad && !dq) || (k->requires_grad && !dk) || (v->requires_grad && !dv))
        return kvf_error_code();
    if (kvf_tensor_numel(n->out) > 0)
        KVF_TRY(kvf_ctx_backend(ctx)->attention_backward(dq, dk, dv, q, k, v, n->out,
                                                         n->saved[0], n->out->grad, &n->attn));
    else {
        const kvf_backend *be = kvf_ctx_backend(ctx);
        kvf_tensor *d[3] = {dq, dk, dv};
        for (int i = 0; i < 3; i++)
            if (d[i]) KVF_TRY(be->memset_zero(d[i]->storage->data, d[i]->storage->nbytes));
    }
    KVF_TRY(kvf_grad_finish(ctx, pq, dq));
    KVF_TRY(kvf_grad_finish(ctx, pk, dk));
    return kvf_grad_finish(ctx, pv, dv);
}
