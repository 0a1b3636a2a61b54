/* ops_rope.c — rotary position embedding and its frequency table.
 *
 * kvf_rope(x [B, T, H, D], pos i32 [T] or NULL, inv_freq [F] or [H, F], layout):
 * each head's first 2F dims are rotated pairwise by angle pos[t]·inv_freq[f] (per head
 * with an [H, F] table); the remaining D − 2F dims pass through. A zero frequency is an
 * exact identity. The backward rotates by −angle.
 *
 * inv_freq may be f32 or x's dtype; the op hands the kernel an f32 copy (the dtype HF
 * keeps its table in, and the one every backend takes), so an f64 run and an f32 run of
 * the same table rotate by the same angles; angles and cos/sin are then computed in
 * double. inv_freq and pos are not differentiated. A strided x (a slice of a fused
 * projection) is made contiguous first; gradients flow back through that copy.
 *
 * In place (kvf_rope_inplace, kvf_rope_inplace_at) only the rotated dims [d0, d0 + 2F) of
 * each head are touched (the kernels take that slice of every head as dense rows); the
 * backward then hands the output's gradient on with the same dims rotated back, in place
 * when it may take that buffer over (kvf_grad_share). */
#include <math.h>
#include <stdlib.h>

#include "ops_impl.h"

/* An f32, contiguous version of the frequency table, made without recording anything. */
static kvf_tensor *freq_f32(kvf_ctx *ctx, kvf_tensor *f) {
    if (f->dtype == KVF_DTYPE_F32 && kvf_tensor_is_contiguous(f)) return f;
    bool was = kvf_ctx_set_grad(ctx, false);
    kvf_tensor *c = kvf_cast(ctx, f, KVF_DTYPE_F32);
    kvf_ctx_set_grad(ctx, was);
    return c;
}

/* pos as a contiguous i32 [T]; NULL gives 0..T-1. */
static kvf_tensor *positions(kvf_ctx *ctx, kvf_tensor *pos, int64_t T) {
    if (pos) return kvf_contiguous(ctx, pos); /* ids: never recorded */
    int32_t *host = malloc(sizeof(int32_t) * (size_t)(T ? T : 1));
    KVF_CHECK_NULL(host, KVF_ERR_OOM, "rope: cannot allocate %lld positions", (long long)T);
    for (int64_t t = 0; t < T; t++) host[t] = (int32_t)t;
    kvf_tensor *p = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){T}, host);
    free(host);
    return p;
}

/* t's dims [d0, d0 + 2F) of every head as a [B, T, H, 2F] view (dense rows a head apart). */
static kvf_tensor rot_dims(const kvf_tensor *t, int64_t d0, int64_t F) {
    kvf_tensor v = *t;
    v.offset += d0 * t->stride[3];
    v.shape[3] = 2 * F;
    return v;
}

static kvf_tensor *rope(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq,
                        kvf_rope_layout layout, bool inplace, int64_t d0) {
    kvf_tensor *in[3] = {x, inv_freq, pos};
    if (!kvf_ops_check_inputs(ctx, "rope", pos ? 3 : 2, in)) return NULL;
    if (!kvf_ops_check_float("rope", x, "x") || !kvf_ops_check_float("rope", inv_freq, "inv_freq"))
        return NULL;
    if (pos && !kvf_ops_check_ids("rope", pos, "pos")) return NULL;
    KVF_CHECK_NULL(layout == KVF_ROPE_HALF || layout == KVF_ROPE_INTERLEAVED, KVF_ERR_ARG,
                   "rope: unknown layout %d for x %s", (int)layout, KVF_DESC(x));
    KVF_CHECK_NULL(x->ndim == 4, KVF_ERR_SHAPE, "rope: x %s must be [B, T, H, D]", KVF_DESC(x));
    const int64_t T = x->shape[1], H = x->shape[2], D = x->shape[3];
    const int64_t F = inv_freq->shape[inv_freq->ndim - 1];
    bool freq_ok = (inv_freq->ndim == 1 || (inv_freq->ndim == 2 && inv_freq->shape[0] == H)) &&
                   2 * F <= D;
    KVF_CHECK_NULL(freq_ok, KVF_ERR_SHAPE,
                   "rope: inv_freq %s must be [F] or [H, F] with 2F <= D for x %s [B, T, H, D]",
                   KVF_DESC(inv_freq), KVF_DESC(x));
    KVF_CHECK_NULL(inv_freq->dtype == KVF_DTYPE_F32 || inv_freq->dtype == x->dtype, KVF_ERR_DTYPE,
                   "rope: inv_freq %s must be f32 or x's dtype (x %s)", KVF_DESC(inv_freq),
                   KVF_DESC(x));
    KVF_CHECK_NULL(d0 >= 0 && d0 + 2 * F <= D && (d0 == 0 || inplace), KVF_ERR_SHAPE,
                   "rope: dims [%lld, %lld) are not inside the heads of x %s", (long long)d0,
                   (long long)(d0 + 2 * F), KVF_DESC(x));
    KVF_CHECK_NULL(!pos || (pos->ndim == 1 && pos->shape[0] == T), KVF_ERR_SHAPE,
                   "rope: pos %s must be [T] for x %s [B, T, H, D]", KVF_DESC(pos), KVF_DESC(x));
    /* in place works on any dense head rows (a slice of a fused q/k/v projection) */
    int64_t lt, lh;
    kvf_tensor *xc = inplace && kvf_tensor_head_rows(x, &lt, &lh) ? x : kvf_contiguous(ctx, x);
    kvf_tensor *p = xc ? positions(ctx, pos, T) : NULL;
    kvf_tensor *f = p ? freq_f32(ctx, inv_freq) : NULL;
    /* in place: the output is a new header over x's storage (the kernels read each pair
     * before writing it); the backward needs only the positions and frequencies */
    kvf_tensor *y = !f ? NULL : inplace ? kvf_tensor_view_header(ctx, xc) : kvf_ops_like(ctx, xc);
    if (!y) return NULL;
    if (inplace) {
        kvf_tensor r = rot_dims(xc, d0, F);
        KVF_OPS_CALL(kvf_ctx_backend(ctx)->rope(&r, &r, p, f, layout, false, false));
    } else {
        KVF_OPS_CALL(kvf_ctx_backend(ctx)->rope(y, xc, p, f, layout, false, false));
    }
    kvf_node *n = kvf_tape_record(ctx, KVF_OP_ROPE, y, 1, &xc);
    if (n) {
        n->saved[0] = p;
        n->saved[1] = f;
        n->iparam[0] = layout;
        n->iparam[1] = inplace;
        n->iparam[2] = d0;
    }
    return y;
}

kvf_tensor *kvf_rope(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq,
                     kvf_rope_layout layout) {
    return rope(ctx, x, pos, inv_freq, layout, false, 0);
}

kvf_tensor *kvf_rope_inplace(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq,
                             kvf_rope_layout layout) {
    return rope(ctx, x, pos, inv_freq, layout, true, 0);
}

kvf_tensor *kvf_rope_inplace_at(kvf_ctx *ctx, kvf_tensor *x, int64_t d0, kvf_tensor *pos,
                                kvf_tensor *inv_freq, kvf_rope_layout layout) {
    return rope(ctx, x, pos, inv_freq, layout, true, d0);
}

kvf_status kvf_rope_backward(kvf_ctx *ctx, kvf_node *n) {
    const kvf_backend *be = kvf_ctx_backend(ctx);
    kvf_tensor *x = n->src[0];
    const kvf_tensor *f = n->saved[1];
    const kvf_rope_layout layout = (kvf_rope_layout)n->iparam[0];
    if (n->iparam[1]) { /* in place: dy with the rotated dims turned back, the rest as it is */
        const int64_t F = f->shape[f->ndim - 1], d0 = n->iparam[2];
        kvf_tensor *g = NULL;
        if (kvf_grad_share(ctx, x, n->out->grad)) g = x->grad;
        else if (!(g = kvf_tensor_new(ctx, x->dtype, x->ndim, x->shape)) ||
                 be->copy(g, n->out->grad) != KVF_OK)
            return kvf_error_code();
        kvf_tensor r = rot_dims(g, d0, F);
        KVF_TRY(be->rope(&r, &r, n->saved[0], f, layout, true, false));
        return g == x->grad ? KVF_OK : kvf_grad_add(ctx, x, g);
    }
    bool fresh;
    kvf_tensor *gx = kvf_grad_fresh(ctx, n->src[0], &fresh);
    if (!gx) return kvf_error_code();
    /* R is orthogonal: dx (+)= R(−angle)·dy */
    return kvf_ctx_backend(ctx)->rope(gx, n->out->grad, n->saved[0], n->saved[1],
                                      (kvf_rope_layout)n->iparam[0], true, !fresh);
}

kvf_tensor *kvf_rope_inv_freq(kvf_ctx *ctx, int64_t dim, double theta) {
    KVF_CHECK_NULL(ctx, KVF_ERR_ARG, "rope_inv_freq: ctx is NULL");
    KVF_CHECK_NULL(dim > 0 && dim % 2 == 0, KVF_ERR_ARG,
                   "rope_inv_freq: dim must be positive and even, got %lld", (long long)dim);
    KVF_CHECK_NULL(isfinite(theta) && theta > 0, KVF_ERR_ARG,
                   "rope_inv_freq: theta must be positive and finite, got %g", theta);
    const int64_t F = dim / 2;
    float *host = malloc(sizeof(float) * (size_t)F);
    KVF_CHECK_NULL(host, KVF_ERR_OOM, "rope_inv_freq: cannot allocate %lld floats", (long long)F);
    for (int64_t i = 0; i < F; i++) host[i] = (float)pow(theta, -(double)(2 * i) / (double)dim);
    kvf_tensor *t = kvf_tensor_from_host(ctx, KVF_DTYPE_F32, 1, (int64_t[]){F}, host);
    free(host);
    return t;
}
