/* ops_norm.c — softmax, RMSNorm and LayerNorm over the last dim.
 * Inputs are made contiguous and handed to the kernels as [N, C] (N = product of the
 * leading dims); statistics are saved in the compute dtype (f64 for f64 x, else f32). */
#include <math.h>

#include "ops_impl.h"

/* A 2-D header [N, C] over contiguous t (C = last dim); shares t's storage. */
static kvf_tensor rows_view(const kvf_tensor *t) {
    kvf_tensor v = *t;
    int64_t c = t->shape[t->ndim - 1];
    v.ndim = 2;
    v.shape[0] = c ? kvf_tensor_numel(t) / c : 0;
    v.shape[1] = c;
    v.stride[0] = c;
    v.stride[1] = 1;
    v.shape[2] = v.shape[3] = 1;
    v.stride[2] = v.stride[3] = 1;
    return v;
}

/* Common checks of x [..., C] and an optional per-channel parameter p [C]. */
static bool check_x(kvf_ctx *ctx, const char *op, kvf_tensor *x) {
    if (!kvf_ops_check_inputs(ctx, op, 1, &x) || !kvf_ops_check_float(op, x, "x")) return false;
    if (x->ndim < 1) {
        kvf_error_set(KVF_ERR_SHAPE, "%s: x %s needs at least one dim", op, KVF_DESC(x));
        return false;
    }
    return true;
}

static bool check_param(kvf_ctx *ctx, const char *op, const kvf_tensor *x, kvf_tensor *p,
                        const char *what) {
    if (!p) return true;
    if (!kvf_ops_check_inputs(ctx, op, 1, &p) || !kvf_ops_check_float(op, p, what)) return false;
    if (p->dtype != x->dtype) {
        kvf_error_set(KVF_ERR_DTYPE, "%s: %s %s and x %s differ in dtype", op, what, KVF_DESC(p),
                      KVF_DESC(x));
        return false;
    }
    if (p->ndim != 1 || p->shape[0] != x->shape[x->ndim - 1]) {
        kvf_error_set(KVF_ERR_SHAPE, "%s: %s %s must be [%lld] to match the last dim of x %s", op,
                      what, KVF_DESC(p), (long long)x->shape[x->ndim - 1], KVF_DESC(x));
        return false;
    }
    return true;
}

static bool check_eps(const char *op, double eps) {
    if (isfinite(eps) && eps >= 0.0) return true;
    kvf_error_set(KVF_ERR_ARG, "%s: eps %g must be finite and >= 0", op, eps);
    return false;
}

/* Statistics [N] for the rows of x, in the compute dtype (f64 for f64 x, else f32). */
static kvf_tensor *stats_for(kvf_ctx *ctx, const kvf_tensor *x) {
    kvf_tensor v = rows_view(x);
    return kvf_tensor_new(ctx, x->dtype == KVF_DTYPE_F64 ? KVF_DTYPE_F64 : KVF_DTYPE_F32, 1,
                          v.shape);
}

kvf_tensor *kvf_softmax(kvf_ctx *ctx, kvf_tensor *x) {
    if (!check_x(ctx, "softmax", x)) return NULL;
    x = kvf_contiguous(ctx, x);
    if (!x) return NULL;
    kvf_tensor *y = kvf_ops_like(ctx, x);
    if (!y) return NULL;
    kvf_tensor xv = rows_view(x), yv = rows_view(y);
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->softmax(&yv, &xv));
    kvf_tape_record(ctx, KVF_OP_SOFTMAX, y, 1, &x); /* the backward needs only y */
    return y;
}

kvf_status kvf_softmax_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *gx = kvf_grad_get(ctx, n->src[0]);
    if (!gx) return kvf_error_code();
    kvf_tensor dx = rows_view(gx), y = rows_view(n->out), dy = rows_view(n->out->grad);
    return kvf_ctx_backend(ctx)->softmax_backward(&dx, &y, &dy);
}

kvf_tensor *kvf_rmsnorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, double eps) {
    if (!check_x(ctx, "rmsnorm", x) || !check_param(ctx, "rmsnorm", x, w, "w") ||
        !check_eps("rmsnorm", eps))
        return NULL;
    x = kvf_contiguous(ctx, x);
    kvf_tensor *wc = w ? kvf_contiguous(ctx, w) : NULL;
    if (!x || (w && !wc)) return NULL;
    w = wc;
    kvf_tensor *y = kvf_ops_like(ctx, x);
    kvf_tensor *rstd = y ? stats_for(ctx, x) : NULL;
    if (!rstd) return NULL;
    kvf_tensor xv = rows_view(x), yv = rows_view(y);
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->rmsnorm(&yv, rstd, &xv, w, eps));
    kvf_tensor *src[2] = {x, w};
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_RMSNORM, y, w ? 2 : 1, src);
    if (nd) {
        nd->saved[0] = rstd;
        nd->fparam[0] = eps;
    }
    return y;
}

kvf_status kvf_rmsnorm_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *x = n->src[0], *w = n->n_src > 1 ? n->src[1] : NULL;
    kvf_tensor *gx = kvf_grad_get(ctx, x), *gw = kvf_grad_get(ctx, w);
    if ((x->requires_grad && !gx) || (w && w->requires_grad && !gw)) return kvf_error_code();
    kvf_tensor xv = rows_view(x), dy = rows_view(n->out->grad), dx;
    if (gx) dx = rows_view(gx);
    return kvf_ctx_backend(ctx)->rmsnorm_backward(gx ? &dx : NULL, gw, &xv, w, n->saved[0], &dy);
}

kvf_tensor *kvf_layernorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, kvf_tensor *b, double eps) {
    if (!check_x(ctx, "layernorm", x) || !check_param(ctx, "layernorm", x, w, "w") ||
        !check_param(ctx, "layernorm", x, b, "b") || !check_eps("layernorm", eps))
        return NULL;
    x = kvf_contiguous(ctx, x);
    kvf_tensor *wc = w ? kvf_contiguous(ctx, w) : NULL, *bc = b ? kvf_contiguous(ctx, b) : NULL;
    if (!x || (w && !wc) || (b && !bc)) return NULL;
    w = wc;
    b = bc;
    kvf_tensor *y = kvf_ops_like(ctx, x);
    kvf_tensor *mean = y ? stats_for(ctx, x) : NULL;
    kvf_tensor *rstd = mean ? stats_for(ctx, x) : NULL;
    if (!rstd) return NULL;
    kvf_tensor xv = rows_view(x), yv = rows_view(y);
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->layernorm(&yv, mean, rstd, &xv, w, b, eps));
    /* sources x, then w and b where present (iparam[0], iparam[1] say which) */
    kvf_tensor *src[3] = {x, NULL, NULL};
    int ns = 1;
    if (w) src[ns++] = w;
    if (b) src[ns++] = b;
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_LAYERNORM, y, ns, src);
    if (nd) {
        nd->iparam[0] = w != NULL;
        nd->iparam[1] = b != NULL;
        nd->saved[0] = mean;
        nd->saved[1] = rstd;
        nd->fparam[0] = eps;
    }
    return y;
}

kvf_status kvf_layernorm_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *x = n->src[0];
    kvf_tensor *w = n->iparam[0] ? n->src[1] : NULL;
    kvf_tensor *b = n->iparam[1] ? n->src[1 + (int)n->iparam[0]] : NULL;
    kvf_tensor *gx = kvf_grad_get(ctx, x), *gw = kvf_grad_get(ctx, w), *gb = kvf_grad_get(ctx, b);
    if ((x->requires_grad && !gx) || (w && w->requires_grad && !gw) ||
        (b && b->requires_grad && !gb))
        return kvf_error_code();
    kvf_tensor xv = rows_view(x), dy = rows_view(n->out->grad), dx;
    if (gx) dx = rows_view(gx);
    return kvf_ctx_backend(ctx)->layernorm_backward(gx ? &dx : NULL, gw, gb, &xv, w, n->saved[0],
                                                    n->saved[1], &dy);
}
