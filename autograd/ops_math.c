/* ops_math.c — matmul, broadcasting arithmetic, unary functions, sums, SwiGLU. */
#include <string.h>

#include "ops_impl.h"

static kvf_status gemm_in(kvf_ctx *ctx, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                          int64_t batch, const kvf_tensor *a, int64_t sa, const kvf_tensor *b,
                          int64_t sb, kvf_tensor *c, int64_t sc, double beta,
                          const kvf_tensor *c_in) {
    kvf_gemm_args g = {
        .trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .batch = batch,
        .a = kvf_tensor_data(a), .b = kvf_tensor_data(b), .c = kvf_tensor_data(c),
        .lda = ta ? m : k, .ldb = tb ? k : n, .ldc = n,
        .stride_a = sa, .stride_b = sb, .stride_c = sc,
        .alpha = 1.0, .beta = beta, .dtype = a->dtype,
        .c_f32 = c->dtype == KVF_DTYPE_F32 && a->dtype != KVF_DTYPE_F32,
        .c_in = c_in ? kvf_tensor_data(c_in) : NULL,
    };
    return kvf_ctx_backend(ctx)->gemm(&g);
}

static kvf_status gemm(kvf_ctx *ctx, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                       int64_t batch, const kvf_tensor *a, int64_t sa, const kvf_tensor *b,
                       int64_t sb, kvf_tensor *c, int64_t sc, double beta) {
    return gemm_in(ctx, ta, tb, m, n, k, batch, a, sa, b, sb, c, sc, beta, NULL);
}

/* The tape entry both matmul ops share (src: a, b and, for kvf_matmul_add, the addend). */
static void record_matmul(kvf_ctx *ctx, kvf_tensor *c, int n_src, kvf_tensor **src, bool ta, bool tb,
                          int64_t m, int64_t n, int64_t k, int64_t batch) {
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_MATMUL, c, n_src, src);
    if (!nd) return;
    nd->iparam[0] = ta;
    nd->iparam[1] = tb;
    nd->iparam[2] = m;
    nd->iparam[3] = n;
    nd->iparam[4] = k;
    nd->iparam[5] = batch;
}

kvf_tensor *kvf_matmul(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b, bool trans_a, bool trans_b) {
    kvf_tensor *in[2] = {a, b};
    if (!kvf_ops_check_inputs(ctx, "matmul", 2, in)) return NULL;
    if (!kvf_ops_check_float("matmul", a, "a") || !kvf_ops_check_float("matmul", b, "b"))
        return NULL;
    bool ok = a->ndim >= 2 && b->ndim >= 2 && a->dtype == b->dtype &&
              (b->ndim == 2 || b->ndim == a->ndim);
    for (int i = 0; ok && b->ndim > 2 && i < a->ndim - 2; i++) ok = a->shape[i] == b->shape[i];
    int64_t m = trans_a ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
    int64_t k = trans_a ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
    int64_t kb = trans_b ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2];
    int64_t n = trans_b ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
    if (!ok || k != kb) {
        kvf_error_set(KVF_ERR_SHAPE, "matmul: a %s%s and b %s%s do not multiply", KVF_DESC(a),
                      trans_a ? "ᵀ" : "", KVF_DESC(b), trans_b ? "ᵀ" : "");
        return NULL;
    }
    a = kvf_contiguous(ctx, a);
    b = kvf_contiguous(ctx, b);
    if (!a || !b) return NULL;
    int64_t shape[KVF_MAX_DIMS], batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) batch *= (shape[i] = a->shape[i]);
    shape[a->ndim - 2] = m;
    shape[a->ndim - 1] = n;
    kvf_tensor *c = kvf_tensor_new(ctx, a->dtype, a->ndim, shape);
    if (!c) return NULL;
    bool shared_b = b->ndim == 2;
    if (shared_b && !trans_a) /* one tall GEMM over every batch's rows */
        KVF_OPS_CALL(gemm(ctx, false, trans_b, batch * m, n, k, 1, a, 0, b, 0, c, 0, 0.0));
    else
        KVF_OPS_CALL(gemm(ctx, trans_a, trans_b, m, n, k, batch, a, m * k, b, shared_b ? 0 : k * n,
                          c, m * n, 0.0));
    kvf_tensor *src[2] = {a, b};
    record_matmul(ctx, c, 2, src, trans_a, trans_b, m, n, k, batch);
    return c;
}

kvf_tensor *kvf_matmul_add(kvf_ctx *ctx, kvf_tensor *r, kvf_tensor *a, kvf_tensor *b, bool trans_b) {
    kvf_tensor *in[3] = {r, a, b};
    if (!kvf_ops_check_inputs(ctx, "matmul_add", 3, in)) return NULL;
    bool fused = b->ndim == 2 && a->ndim >= 2 && a->dtype == b->dtype && r->dtype == a->dtype &&
                 r->ndim == a->ndim && (trans_b ? b->shape[1] : b->shape[0]) == a->shape[a->ndim - 1];
    for (int i = 0; fused && i < a->ndim - 1; i++) fused = r->shape[i] == a->shape[i];
    fused = fused && r->shape[r->ndim - 1] == (trans_b ? b->shape[0] : b->shape[1]);
    if (!fused) return kvf_add(ctx, r, kvf_matmul(ctx, a, b, false, trans_b));
    if (!kvf_ops_check_float("matmul_add", a, "a")) return NULL;
    r = kvf_contiguous(ctx, r);
    a = kvf_contiguous(ctx, a);
    b = kvf_contiguous(ctx, b);
    if (!r || !a || !b) return NULL;
    int64_t k = a->shape[a->ndim - 1], n = r->shape[r->ndim - 1], m = kvf_tensor_numel(a) / (k ? k : 1);
    if (k == 0) m = kvf_tensor_numel(r) / (n ? n : 1);
    kvf_tensor *c = kvf_ops_like(ctx, r);
    if (!c) return NULL;
    KVF_OPS_CALL(gemm_in(ctx, false, trans_b, m, n, k, 1, a, 0, b, 0, c, 0, 1.0, r));
    kvf_tensor *src[3] = {a, b, r};
    record_matmul(ctx, c, 3, src, false, trans_b, m, n, k, 1);
    return c;
}

/* Where a mixed-precision weight's gradient goes: b is a bf16 cast of an f32 parameter
 * (the model's compute_w), and a backend with mixed GEMMs can write dW in f32 straight
 * into the master's gradient — no bf16 gradient buffer, no rounding of dW to bf16, no cast
 * back and add. The cast's own rule then finds no gradient on b and does nothing (or adds
 * what other consumers of b left there). NULL: the plain path. */
static kvf_tensor *master_grad(kvf_ctx *ctx, kvf_tensor *b) {
    if (b->dtype != KVF_DTYPE_BF16 || b->node < 0 || kvf_ctx_device(ctx) != KVF_DEVICE_CUDA ||
        b->node >= kvf_tape_size(ctx))
        return NULL;
    kvf_node *c = kvf_tape_node(ctx, b->node);
    if (c->out != b || c->op != KVF_OP_COPY || c->n_src != 1) return NULL;
    kvf_tensor *w = c->src[0];
    if (!w || w->dtype != KVF_DTYPE_F32 || !w->requires_grad || !kvf_tensor_same_shape(w, b) ||
        !kvf_tensor_is_contiguous(b))
        return NULL;
    kvf_tensor *g = kvf_grad_get(ctx, w);
    return g && kvf_tensor_is_contiguous(g) ? g : NULL;
}

/* The gradient buffer of t for a GEMM to write (beta 0: new, uninitialised) or add into
 * (beta 1: it holds a sum already). A GEMM whose batches share C adds batch by batch, so
 * a new buffer is zeroed for it instead. */
static kvf_tensor *grad_for_gemm(kvf_ctx *ctx, kvf_tensor *t, bool shared_c, double *beta) {
    bool fresh;
    kvf_tensor *g = kvf_grad_fresh(ctx, t, &fresh);
    if (!g) return NULL;
    *beta = 1.0;
    if (!fresh) return g;
    if (!shared_c) *beta = 0.0;
    else if (kvf_ctx_backend(ctx)->memset_zero(g->storage->data, g->storage->nbytes) != KVF_OK)
        return NULL;
    return g;
}

kvf_status kvf_matmul_backward(kvf_ctx *ctx, kvf_node *nd) {
    kvf_tensor *a = nd->src[0], *b = nd->src[1], *gc = nd->out->grad;
    bool ta = nd->iparam[0], tb = nd->iparam[1], shared_b = b->ndim == 2;
    int64_t m = nd->iparam[2], n = nd->iparam[3], k = nd->iparam[4], batch = nd->iparam[5];
    int64_t sb = shared_b ? 0 : k * n;
    double beta;
    if (a->requires_grad) {
        kvf_tensor *ga = grad_for_gemm(ctx, a, false, &beta);
        if (!ga) return kvf_error_code();
        if (!ta) /* dA = dC · op(B)ᵀ */
            KVF_TRY(gemm(ctx, false, !tb, m, k, n, batch, gc, m * n, b, sb, ga, m * k, beta));
        else /* A stored k×m: dA = op(B) · dCᵀ */
            KVF_TRY(gemm(ctx, tb, true, k, m, n, batch, b, sb, gc, m * n, ga, m * k, beta));
    }
    if (b->requires_grad) {
        bool tall = shared_b && !ta, shared_c = shared_b && !tall && batch > 1;
        kvf_tensor *gb = tall ? master_grad(ctx, b) : NULL;
        if (gb) beta = 1.0;
        else if (!(gb = grad_for_gemm(ctx, b, shared_c, &beta)))
            return kvf_error_code();
        if (tall) { /* rows of every batch at once */
            if (!tb) KVF_TRY(gemm(ctx, true, false, k, n, batch * m, 1, a, 0, gc, 0, gb, 0, beta));
            else KVF_TRY(gemm(ctx, true, false, n, k, batch * m, 1, gc, 0, a, 0, gb, 0, beta));
        } else if (!tb) { /* dB = op(A)ᵀ · dC */
            KVF_TRY(gemm(ctx, !ta, false, k, n, m, batch, a, m * k, gc, m * n, gb, sb, beta));
        } else { /* B stored n×k: dB = dCᵀ · op(A) */
            KVF_TRY(gemm(ctx, true, ta, n, k, m, batch, gc, m * n, a, m * k, gb, sb, beta));
        }
    }
    kvf_tensor *r = nd->n_src > 2 ? nd->src[2] : NULL; /* kvf_matmul_add's addend */
    if (r && r->requires_grad && !kvf_grad_share(ctx, r, gc)) {
        /* after the GEMMs: a later write into r's gradient may then land in gc's block */
        bool fresh;
        kvf_tensor *gr = kvf_grad_fresh(ctx, r, &fresh);
        if (!gr) return kvf_error_code();
        KVF_TRY(fresh ? kvf_ctx_backend(ctx)->copy(gr, gc) : kvf_grad_accumulate(ctx, gr, gc));
    }
    return KVF_OK;
}

/* NumPy broadcasting of a and b into out's shape; fills expanded views of both. */
static bool broadcast(const char *op, const kvf_tensor *a, const kvf_tensor *b, int *ndim,
                      int64_t *shape, kvf_tensor *va, kvf_tensor *vb) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    *va = *a;
    *vb = *b;
    va->ndim = vb->ndim = nd;
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        int64_t ea = ia >= 0 ? a->shape[ia] : 1, eb = ib >= 0 ? b->shape[ib] : 1;
        if (ea != eb && ea != 1 && eb != 1) {
            kvf_error_set(KVF_ERR_SHAPE, "%s: shapes %s and %s do not broadcast (dim %d)", op,
                          KVF_DESC(a), KVF_DESC(b), i);
            return false;
        }
        shape[i] = ea > eb ? ea : eb;
        if (ea == 0 || eb == 0) shape[i] = 0;
        va->shape[i] = vb->shape[i] = shape[i];
        va->stride[i] = (ia >= 0 && ea == shape[i]) ? a->stride[ia] : 0;
        vb->stride[i] = (ib >= 0 && eb == shape[i]) ? b->stride[ib] : 0;
    }
    *ndim = nd;
    return true;
}

static const char *binop_names[KVF_BINOP_COUNT] = {"add", "sub", "mul", "div"};

static kvf_tensor *binary(kvf_ctx *ctx, kvf_binop op, kvf_tensor *a, kvf_tensor *b) {
    const char *name = binop_names[op];
    kvf_tensor *in[2] = {a, b};
    if (!kvf_ops_check_inputs(ctx, name, 2, in)) return NULL;
    if (!kvf_ops_check_float(name, a, "a") || !kvf_ops_check_float(name, b, "b")) return NULL;
    KVF_CHECK_NULL(a->dtype == b->dtype, KVF_ERR_DTYPE, "%s: a %s and b %s differ in dtype", name,
                   KVF_DESC(a), KVF_DESC(b));
    int nd;
    int64_t shape[KVF_MAX_DIMS];
    kvf_tensor va, vb;
    if (!broadcast(name, a, b, &nd, shape, &va, &vb)) return NULL;
    kvf_tensor *c = kvf_tensor_new(ctx, a->dtype, nd, shape);
    if (!c) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->binary(op, c, &va, &vb));
    kvf_node *n = kvf_tape_record(ctx, KVF_OP_BINARY, c, 2, in);
    if (n) n->iparam[0] = op;
    return c;
}

kvf_tensor *kvf_add(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b) { return binary(ctx, KVF_BINOP_ADD, a, b); }
kvf_tensor *kvf_sub(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b) { return binary(ctx, KVF_BINOP_SUB, a, b); }
kvf_tensor *kvf_mul(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b) { return binary(ctx, KVF_BINOP_MUL, a, b); }
kvf_tensor *kvf_div(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b) { return binary(ctx, KVF_BINOP_DIV, a, b); }

/* t's gradient gets g (same shape): written into a new buffer, or added to the sum. */
static kvf_status write_or_add(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g) {
    bool fresh;
    kvf_tensor *d = kvf_grad_fresh(ctx, t, &fresh);
    if (!d) return kvf_error_code();
    return fresh ? kvf_ctx_backend(ctx)->copy(d, g) : kvf_grad_accumulate(ctx, d, g);
}

kvf_status kvf_binary_backward(kvf_ctx *ctx, kvf_node *n) {
    const kvf_backend *be = kvf_ctx_backend(ctx);
    kvf_binop op = (kvf_binop)n->iparam[0];
    kvf_tensor *a = n->src[0], *b = n->src[1], *g = n->out->grad;
    int nd;
    int64_t shape[KVF_MAX_DIMS];
    kvf_tensor va, vb;
    if (!broadcast("backward", a, b, &nd, shape, &va, &vb)) return kvf_error_code();
    if (op == KVF_BINOP_ADD && kvf_tensor_same_shape(a, g) && kvf_tensor_same_shape(b, g)) {
        /* g is final and only this rule reads it: one operand may take it as its gradient
         * (kvf_grad_share). Both may — a residual add — when every later write into one
         * operand's gradient lands after the other's producer has read its own: so when
         * one (say b) had no other reader and every other reader of a came before b was
         * made, for those run later in the backward than b's producer. */
        int64_t ua = n->src_prev_use[0], ub = n->src_prev_use[1];
        bool both = a != b && kvf_grad_sole(g) && ((ub == 0 && ua < b->born) || (ua == 0 && ub < a->born));
        bool took = false;
        if (a->requires_grad && !(took = kvf_grad_share(ctx, a, g))) KVF_TRY(write_or_add(ctx, a, g));
        if (b->requires_grad && !(took ? both && kvf_grad_share_again(ctx, b, g) : kvf_grad_share(ctx, b, g)))
            KVF_TRY(write_or_add(ctx, b, g));
        return KVF_OK;
    }
    kvf_tensor *t = kvf_ops_like(ctx, g); /* full-shape scratch */
    if (!t) return kvf_error_code();
    if (a->requires_grad) {
        kvf_tensor *ga = kvf_grad_get(ctx, a);
        if (!ga) return kvf_error_code();
        const kvf_tensor *contrib = g;
        if (op == KVF_BINOP_MUL || op == KVF_BINOP_DIV) {
            KVF_TRY(be->binary(op, t, g, &vb)); /* g·b or g/b */
            contrib = t;
        }
        KVF_TRY(kvf_grad_accumulate(ctx, ga, contrib));
    }
    if (b->requires_grad) {
        kvf_tensor *gb = kvf_grad_get(ctx, b);
        if (!gb) return kvf_error_code();
        switch (op) {
        case KVF_BINOP_ADD: return kvf_grad_accumulate(ctx, gb, g);
        case KVF_BINOP_SUB: KVF_TRY(be->unary(KVF_UNOP_SCALE, t, g, -1.0)); break;
        case KVF_BINOP_MUL: KVF_TRY(be->binary(KVF_BINOP_MUL, t, g, &va)); break;
        case KVF_BINOP_DIV: /* −g·a/b² = −(g/b)·out */
            KVF_TRY(be->binary(KVF_BINOP_DIV, t, g, &vb));
            KVF_TRY(be->binary(KVF_BINOP_MUL, t, t, n->out));
            KVF_TRY(be->unary(KVF_UNOP_SCALE, t, t, -1.0));
            break;
        default: break;
        }
        KVF_TRY(kvf_grad_accumulate(ctx, gb, t));
    }
    return KVF_OK;
}

static kvf_tensor *unary(kvf_ctx *ctx, const char *name, kvf_unop op, kvf_tensor *x, double alpha) {
    if (!kvf_ops_check_inputs(ctx, name, 1, &x) || !kvf_ops_check_float(name, x, "x")) return NULL;
    kvf_tensor *y = kvf_ops_like(ctx, x);
    if (!y) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->unary(op, y, x, alpha));
    kvf_node *n = kvf_tape_record(ctx, KVF_OP_UNARY, y, 1, &x);
    if (n) {
        n->iparam[0] = op;
        n->fparam[0] = alpha;
    }
    return y;
}

kvf_tensor *kvf_scale(kvf_ctx *ctx, kvf_tensor *x, double s) { return unary(ctx, "scale", KVF_UNOP_SCALE, x, s); }
kvf_tensor *kvf_exp(kvf_ctx *ctx, kvf_tensor *x) { return unary(ctx, "exp", KVF_UNOP_EXP, x, 0); }
kvf_tensor *kvf_log(kvf_ctx *ctx, kvf_tensor *x) { return unary(ctx, "log", KVF_UNOP_LOG, x, 0); }
kvf_tensor *kvf_silu(kvf_ctx *ctx, kvf_tensor *x) { return unary(ctx, "silu", KVF_UNOP_SILU, x, 0); }
kvf_tensor *kvf_gelu(kvf_ctx *ctx, kvf_tensor *x, enum kvf_gelu approx) {
    return unary(ctx, "gelu", approx == KVF_GELU_TANH ? KVF_UNOP_GELU_TANH : KVF_UNOP_GELU_ERF, x, 0);
}

kvf_status kvf_unary_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *gx = kvf_grad_get(ctx, n->src[0]);
    if (!gx) return kvf_error_code();
    return kvf_ctx_backend(ctx)->unary_backward((kvf_unop)n->iparam[0], gx, n->src[0],
                                                n->out->grad, n->fparam[0]);
}

kvf_tensor *kvf_sum(kvf_ctx *ctx, kvf_tensor *x, int axis, bool keepdim) {
    if (!kvf_ops_check_inputs(ctx, "sum", 1, &x) || !kvf_ops_check_float("sum", x, "x")) return NULL;
    bool all = axis == KVF_ALL_AXES;
    int a = all ? 0 : kvf_ops_axis(axis, x->ndim);
    KVF_CHECK_NULL(a >= 0, KVF_ERR_ARG, "sum: axis %d out of range for %s", axis, KVF_DESC(x));
    int64_t shape[KVF_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = (all || i == a) ? 1 : x->shape[i];
    kvf_tensor *y = kvf_tensor_new(ctx, x->dtype, x->ndim, shape);
    if (!y) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->reduce_sum(y, x, false));
    if (all) { /* a single element: shape [1] */
        y->ndim = 1;
        y->shape[0] = 1;
        y->stride[0] = 1;
    } else if (!keepdim && x->ndim > 1) {
        for (int i = a; i < x->ndim - 1; i++) y->shape[i] = y->shape[i + 1];
        y->ndim--;
        kvf_layout_contiguous(y->ndim, y->shape, y->stride);
    }
    kvf_node *n = kvf_tape_record(ctx, KVF_OP_SUM, y, 1, &x);
    if (n) {
        n->iparam[0] = all;
        n->iparam[1] = a;
    }
    return y;
}

kvf_status kvf_sum_backward(kvf_ctx *ctx, kvf_node *n) {
    kvf_tensor *x = n->src[0];
    kvf_tensor *gx = kvf_grad_get(ctx, x);
    if (!gx) return kvf_error_code();
    /* view the (contiguous) output grad with x's rank, stride 0 along the summed dims */
    kvf_tensor g = *n->out->grad;
    g.ndim = x->ndim;
    int64_t st = 1;
    for (int i = x->ndim - 1; i >= 0; i--) {
        bool summed = n->iparam[0] || i == n->iparam[1];
        g.shape[i] = x->shape[i];
        g.stride[i] = summed ? 0 : st;
        if (!summed) st *= x->shape[i];
    }
    return kvf_ctx_backend(ctx)->binary(KVF_BINOP_ADD, gx, gx, &g);
}

kvf_tensor *kvf_mean(kvf_ctx *ctx, kvf_tensor *x, int axis, bool keepdim) {
    kvf_tensor *s = kvf_sum(ctx, x, axis, keepdim);
    if (!s) return NULL;
    int64_t cnt = axis == KVF_ALL_AXES ? kvf_tensor_numel(x) : x->shape[kvf_ops_axis(axis, x->ndim)];
    return kvf_scale(ctx, s, cnt ? 1.0 / (double)cnt : 0.0);
}

kvf_tensor *kvf_swiglu(kvf_ctx *ctx, kvf_tensor *gate, kvf_tensor *up) {
    kvf_tensor *in[2] = {gate, up};
    if (!kvf_ops_check_inputs(ctx, "swiglu", 2, in)) return NULL;
    if (!kvf_ops_check_float("swiglu", gate, "gate")) return NULL;
    KVF_CHECK_NULL(kvf_tensor_same_shape(gate, up) && gate->dtype == up->dtype, KVF_ERR_SHAPE,
                   "swiglu: gate %s and up %s must match", KVF_DESC(gate), KVF_DESC(up));
    in[0] = gate = kvf_contiguous(ctx, gate);
    in[1] = up = kvf_contiguous(ctx, up);
    if (!gate || !up) return NULL;
    kvf_tensor *y = kvf_ops_like(ctx, gate);
    if (!y) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->swiglu(y, gate, up));
    kvf_tape_record(ctx, KVF_OP_SWIGLU, y, 2, in);
    return y;
}

/* gu's halves [..., :F] and [..., F:] as views */
static void packed_halves(const kvf_tensor *gu, kvf_tensor *gate, kvf_tensor *up) {
    const int a = gu->ndim - 1;
    *gate = *up = *gu;
    gate->shape[a] = up->shape[a] = gu->shape[a] / 2;
    up->offset += up->shape[a] * gu->stride[a];
}

kvf_tensor *kvf_swiglu_packed(kvf_ctx *ctx, kvf_tensor *gu) {
    if (!kvf_ops_check_inputs(ctx, "swiglu_packed", 1, &gu)) return NULL;
    if (!kvf_ops_check_float("swiglu_packed", gu, "gu")) return NULL;
    KVF_CHECK_NULL(gu->ndim >= 1 && gu->shape[gu->ndim - 1] % 2 == 0, KVF_ERR_SHAPE,
                   "swiglu_packed: gu %s must be [..., 2F] (gate and up halves)", KVF_DESC(gu));
    if (!(gu = kvf_contiguous(ctx, gu))) return NULL;
    kvf_tensor gate, up;
    packed_halves(gu, &gate, &up);
    kvf_tensor *y = kvf_tensor_new(ctx, gu->dtype, gate.ndim, gate.shape);
    if (!y) return NULL;
    KVF_OPS_CALL(kvf_ctx_backend(ctx)->swiglu(y, &gate, &up));
    kvf_node *nd = kvf_tape_record(ctx, KVF_OP_SWIGLU, y, 1, &gu);
    if (nd) nd->iparam[0] = 1; /* packed */
    return y;
}

kvf_status kvf_swiglu_backward(kvf_ctx *ctx, kvf_node *n) {
    if (n->iparam[0]) { /* packed: one gradient for both halves */
        kvf_tensor *pending, gate, up, dg, du;
        kvf_tensor *g = kvf_grad_out(ctx, n->src[0], &pending);
        if (!g) return kvf_error_code();
        packed_halves(n->src[0], &gate, &up);
        packed_halves(g, &dg, &du);
        KVF_TRY(kvf_ctx_backend(ctx)->swiglu_backward(&dg, &du, &gate, &up, n->out->grad));
        return kvf_grad_finish(ctx, pending, g);
    }
    /* the kernel writes; a gradient holding a sum already gets a temporary added in */
    kvf_tensor *pg, *pu;
    kvf_tensor *gg = kvf_grad_out(ctx, n->src[0], &pg), *gu = kvf_grad_out(ctx, n->src[1], &pu);
    if ((n->src[0]->requires_grad && !gg) || (n->src[1]->requires_grad && !gu))
        return kvf_error_code();
    KVF_TRY(kvf_ctx_backend(ctx)->swiglu_backward(gg, gu, n->src[0], n->src[1], n->out->grad));
    KVF_TRY(kvf_grad_finish(ctx, pg, gg));
    return kvf_grad_finish(ctx, pu, gu);
}
