/* Gradient checks for matmul, broadcasting arithmetic, unary functions, sums, SwiGLU and
 * the view ops, on odd shapes. */
#include <check.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>

#include "gradcheck.h"

static kvf_rng rng;

struct mm_case { bool ta, tb; };

static kvf_tensor *f_matmul(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    struct mm_case *c = ud;
    return kvf_matmul(ctx, in[0], in[1], c->ta, c->tb);
}

START_TEST(matmul_grad) {
    /* every transpose combination, batched with per-batch b, batched with shared 2-D b */
    for (int combo = 0; combo < 4; combo++) {
        struct mm_case c = {combo & 1, combo & 2};
        int64_t M = 3, K = 5, N = 7, B = 2;
        for (int shared = 0; shared < 2; shared++) {
            struct gc_input in[2];
            int64_t sa[3] = {B, c.ta ? K : M, c.ta ? M : K};
            int64_t sb3[3] = {B, c.tb ? N : K, c.tb ? K : N};
            gc_input_randn(&in[0], &rng, 1.0, 3, sa);
            if (shared) gc_input_randn(&in[1], &rng, 1.0, 2, sb3 + 1);
            else gc_input_randn(&in[1], &rng, 1.0, 3, sb3);
            ck_assert_msg(kvf_gradcheck("matmul", f_matmul, &c, 2, in, NULL),
                          "matmul ta=%d tb=%d shared=%d", c.ta, c.tb, shared);
            gc_inputs_free(2, in);
        }
    }
}
END_TEST

static kvf_tensor *f_matmul_view(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    /* a transposed view (non-contiguous) as operand: matmul copies it */
    return kvf_matmul(ctx, kvf_transpose(ctx, in[0], 0, 1), in[1], false, false);
}

START_TEST(matmul_noncontiguous) {
    struct gc_input in[2];
    gc_input_randn(&in[0], &rng, 1.0, 2, (int64_t[]){4, 3});
    gc_input_randn(&in[1], &rng, 1.0, 2, (int64_t[]){4, 6});
    ck_assert(kvf_gradcheck("matmul_view", f_matmul_view, NULL, 2, in, NULL));
    gc_inputs_free(2, in);
}
END_TEST

static kvf_tensor *f_binary(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    switch (*(int *)ud) {
    case 0: return kvf_add(ctx, in[0], in[1]);
    case 1: return kvf_sub(ctx, in[0], in[1]);
    case 2: return kvf_mul(ctx, in[0], in[1]);
    default: return kvf_div(ctx, in[0], in[1]);
    }
}

START_TEST(binary_broadcast_grad) {
    /* shapes broadcast in leading, middle and trailing dims, and a scalar */
    int64_t shapes[][2][4] = {
        {{2, 3, 5}, {2, 3, 5}},
        {{2, 3, 5}, {5}},
        {{2, 1, 5}, {3, 1}},
        {{4, 3}, {1}},
        {{1, 3, 1, 2}, {2, 1, 5, 1}},
    };
    int nd[][2] = {{3, 3}, {3, 1}, {3, 2}, {2, 1}, {4, 4}};
    for (int op = 0; op < 4; op++)
        for (size_t s = 0; s < sizeof nd / sizeof nd[0]; s++) {
            struct gc_input in[2];
            gc_input_randn(&in[0], &rng, 1.0, nd[s][0], shapes[s][0]);
            gc_input_randn(&in[1], &rng, 1.0, nd[s][1], shapes[s][1]);
            if (op == 3) /* keep divisors away from zero */
                for (int64_t i = 0; i < gc_numel(&in[1]); i++)
                    in[1].data[i] = (in[1].data[i] >= 0 ? 1.5 : -1.5) + 0.3 * in[1].data[i];
            ck_assert_msg(kvf_gradcheck("binary", f_binary, &op, 2, in, NULL), "op %d shapes %zu",
                          op, s);
            gc_inputs_free(2, in);
        }
}
END_TEST

static kvf_tensor *f_unary(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    switch (*(int *)ud) {
    case 0: return kvf_scale(ctx, in[0], -0.37);
    case 1: return kvf_exp(ctx, in[0]);
    case 2: return kvf_log(ctx, in[0]);
    case 3: return kvf_silu(ctx, in[0]);
    case 4: return kvf_gelu(ctx, in[0], KVF_GELU_TANH);
    default: return kvf_gelu(ctx, in[0], KVF_GELU_ERF);
    }
}

START_TEST(unary_grad) {
    for (int op = 0; op < 6; op++) {
        struct gc_input in[1];
        gc_input_randn(&in[0], &rng, 1.5, 3, (int64_t[]){3, 1, 7});
        if (op == 2)
            for (int64_t i = 0; i < gc_numel(&in[0]); i++) in[0].data[i] = 0.2 + fabs(in[0].data[i]);
        ck_assert_msg(kvf_gradcheck("unary", f_unary, &op, 1, in, NULL), "unary op %d", op);
        gc_inputs_free(1, in);
    }
}
END_TEST

static kvf_tensor *f_unary_strided(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    return kvf_silu(ctx, kvf_permute(ctx, in[0], (int[]){2, 0, 1}));
}

START_TEST(unary_strided_input) {
    struct gc_input in[1];
    gc_input_randn(&in[0], &rng, 1.0, 3, (int64_t[]){2, 3, 5});
    ck_assert(kvf_gradcheck("silu(permute)", f_unary_strided, NULL, 1, in, NULL));
    gc_inputs_free(1, in);
}
END_TEST

static kvf_tensor *f_reduce(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    int c = *(int *)ud;
    switch (c) {
    case 0: return kvf_sum(ctx, in[0], 0, false);
    case 1: return kvf_sum(ctx, in[0], -1, true);
    case 2: return kvf_mean(ctx, in[0], 1, false);
    case 3: return kvf_sum(ctx, in[0], KVF_ALL_AXES, false);
    default: return kvf_mean(ctx, kvf_transpose(ctx, in[0], 0, 2), 1, true);
    }
}

START_TEST(reduce_grad) {
    for (int c = 0; c < 5; c++) {
        struct gc_input in[1];
        gc_input_randn(&in[0], &rng, 1.0, 3, (int64_t[]){3, 4, 5});
        ck_assert_msg(kvf_gradcheck("reduce", f_reduce, &c, 1, in, NULL), "reduce case %d", c);
        gc_inputs_free(1, in);
    }
}
END_TEST

static kvf_tensor *f_swiglu(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    return kvf_swiglu(ctx, in[0], in[1]);
}

START_TEST(swiglu_grad) {
    struct gc_input in[2];
    gc_input_randn(&in[0], &rng, 1.5, 2, (int64_t[]){3, 11});
    gc_input_randn(&in[1], &rng, 1.0, 2, (int64_t[]){3, 11});
    ck_assert(kvf_gradcheck("swiglu", f_swiglu, NULL, 2, in, NULL));
    gc_inputs_free(2, in);
}
END_TEST

/* The packed form of a fused gate/up projection: the same values and gradients as
 * kvf_swiglu of its halves (checked bit for bit below), and a gradcheck of its own, also
 * with gu read again (its gradient then holds a sum when the rule runs). */
static kvf_tensor *f_swiglu_packed(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    kvf_tensor *y = kvf_swiglu_packed(ctx, in[0]);
    if (ud) y = kvf_add(ctx, y, kvf_slice(ctx, kvf_mul(ctx, in[0], in[0]), 1, 3, 7));
    return y;
}

START_TEST(swiglu_packed_grad) {
    struct gc_input in[1];
    gc_input_randn(&in[0], &rng, 1.5, 2, (int64_t[]){3, 14});
    ck_assert(kvf_gradcheck("swiglu_packed", f_swiglu_packed, NULL, 1, in, NULL));
    int twice = 1;
    ck_assert(kvf_gradcheck("swiglu_packed, gu reused", f_swiglu_packed, &twice, 1, in, NULL));
    gc_inputs_free(1, in);
    /* odd last dim: no halves */
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    ck_assert_ptr_null(kvf_swiglu_packed(ctx, kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){2, 5})));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "swiglu_packed"));
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(swiglu_packed_bitwise) {
    double v[4 * 12], r[2][4 * 6 + 4 * 12];
    for (int i = 0; i < 48; i++) v[i] = 1.5 * kvf_rng_normal(&rng);
    for (int packed = 0; packed < 2; packed++) {
        kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
        kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){4, 12});
        for (int i = 0; i < 48; i++) kvf_tensor_set_flat(x, i, v[i]);
        x->requires_grad = true;
        kvf_tensor *y = packed ? kvf_swiglu_packed(ctx, x)
                               : kvf_swiglu(ctx, kvf_slice(ctx, x, 1, 0, 6), kvf_slice(ctx, x, 1, 6, 6));
        ck_assert_int_eq(kvf_backward(ctx, kvf_sum(ctx, kvf_mul(ctx, y, y), KVF_ALL_AXES, false)), KVF_OK);
        for (int i = 0; i < 24; i++) r[packed][i] = kvf_tensor_get_flat(y, i);
        for (int i = 0; i < 48; i++) r[packed][24 + i] = kvf_tensor_get_flat(x->grad, i);
        kvf_ctx_free(ctx);
    }
    ck_assert_msg(memcmp(r[0], r[1], sizeof r[0]) == 0, "swiglu_packed differs from swiglu of the halves");
}
END_TEST

static kvf_tensor *f_views(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    /* reshape → permute → slice → expand → contiguous → concat with a split part */
    kvf_tensor *x = kvf_reshape(ctx, in[0], 3, (int64_t[]){2, 3, -1}); /* [2,3,4] */
    x = kvf_permute(ctx, x, (int[]){2, 0, 1});                         /* [4,2,3] */
    x = kvf_slice(ctx, x, 0, 1, 3);                                    /* [3,2,3] */
    kvf_tensor *parts[2];
    if (kvf_split(ctx, x, 2, (int64_t[]){1, 2}, 2, parts) != KVF_OK) return NULL;
    kvf_tensor *e = kvf_expand(ctx, parts[0], 4, (int64_t[]){2, 3, 2, 2}); /* [2,3,2,2] */
    kvf_tensor *c = kvf_contiguous(ctx, e);
    kvf_tensor *p1 = kvf_expand(ctx, parts[1], 4, (int64_t[]){2, 3, 2, 2});
    kvf_tensor *cat[3] = {c, p1, kvf_mul(ctx, c, c)}; /* x used several times */
    return kvf_concat(ctx, cat, 3, 3);
}

START_TEST(views_grad) {
    struct gc_input in[1];
    gc_input_randn(&in[0], &rng, 1.0, 2, (int64_t[]){6, 4});
    ck_assert(kvf_gradcheck("views", f_views, NULL, 1, in, NULL));
    gc_inputs_free(1, in);
}
END_TEST

/* Σ (view of x)·w over several consumers of x: reshapes (one of them chained, one whose
 * output feeds two ops), a same-dtype contiguous copy of a permutation, and x itself,
 * recorded between the views so gradients reach x both before and after a view's rule
 * has handed its gradient over. Returns x's gradient (24 values) in out. */
static void views_share_grads(kvf_dtype dt, bool share, const double *w, double *out) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad_sharing(ctx, share);
    kvf_tensor *x = kvf_tensor_new(ctx, dt, 2, (int64_t[]){6, 4});
    kvf_tensor *wt[6];
    for (int k = 0; k < 6; k++) {
        wt[k] = kvf_tensor_new(ctx, dt, 1, (int64_t[]){24});
        for (int i = 0; i < 24; i++) kvf_tensor_set_flat(wt[k], i, w[24 * (k + 1) + i]);
    }
    for (int i = 0; i < 24; i++) kvf_tensor_set_flat(x, i, w[i]);
    x->requires_grad = true;
#define TERM(t, k) kvf_sum(ctx, kvf_mul(ctx, kvf_reshape(ctx, (t), 1, (int64_t[]){24}), wt[k]), 0, true)
    kvf_tensor *y = kvf_reshape(ctx, x, 2, (int64_t[]){2, 12});
    kvf_tensor *s[6];
    s[0] = TERM(y, 0);
    s[1] = TERM(x, 1);
    s[2] = TERM(kvf_reshape(ctx, kvf_reshape(ctx, y, 2, (int64_t[]){3, 8}), 3, (int64_t[]){2, 2, 6}), 2);
    s[3] = TERM(kvf_contiguous(ctx, kvf_permute(ctx, x, (int[]){1, 0})), 3);
    s[4] = TERM(kvf_exp(ctx, x), 4);
    s[5] = TERM(kvf_reshape(ctx, x, 3, (int64_t[]){4, 3, 2}), 5);
#undef TERM
    kvf_tensor *loss = s[0];
    for (int k = 1; k < 6; k++) loss = kvf_add(ctx, loss, s[k]);
    ck_assert_msg(loss && kvf_backward(ctx, loss) == KVF_OK, "%s", kvf_error_message());
    for (int i = 0; i < 24; i++) out[i] = kvf_tensor_get_flat(x->grad, i);
    kvf_ctx_free(ctx);
}

/* Views hand their gradient to their input (tape.h: kvf_grad_share) instead of adding it
 * into a zeroed buffer: the same bits as without sharing, every consumer still counted. */
START_TEST(views_share_gradient_bitwise) {
    double w[7 * 24], off[24], on[24];
    for (int i = 0; i < 7 * 24; i++) w[i] = kvf_rng_normal(&rng);
    kvf_dtype dts[2] = {KVF_DTYPE_F32, KVF_DTYPE_F64};
    for (int d = 0; d < 2; d++) {
        views_share_grads(dts[d], false, w, off);
        views_share_grads(dts[d], true, w, on);
        ck_assert_msg(memcmp(off, on, sizeof on) == 0, "%s: shared view gradients differ",
                      kvf_dtype_name(dts[d]));
        for (int i = 0; i < 24; i++) { /* x is [6, 4]: the permuted copy reads x[r][c] at c·6 + r */
            int r = i / 4, c = i % 4;
            double want = w[24 + i] + w[48 + i] + w[72 + i] + w[96 + c * 6 + r] +
                          exp(w[i]) * w[120 + i] + w[144 + i];
            ck_assert_msg(fabs(on[i] - want) <= 1e-5 * (1 + fabs(want)), "%s: x grad %d = %g, "
                          "want %g", kvf_dtype_name(dts[d]), i, on[i], want);
        }
    }
}
END_TEST

/* Adds whose operands may share the output's gradient (ops_math.c): residual chains,
 * where both operands take it, and orders where sharing both would let a later reader of
 * x add into b's gradient before b's producer reads it (c = 3x recorded after b). */
static kvf_tensor *f_adds(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    kvf_tensor *x = in[0], *z = in[1], *h = x;
    for (int i = 0; i < 3; i++) h = kvf_add(ctx, h, kvf_exp(ctx, kvf_scale(ctx, h, 0.3)));
    kvf_tensor *b = kvf_exp(ctx, z);
    kvf_tensor *c = kvf_scale(ctx, x, 3.0);
    kvf_tensor *y = kvf_add(ctx, x, b), *y2 = kvf_add(ctx, kvf_exp(ctx, c), x);
    kvf_tensor *twice = kvf_add(ctx, b, b);
    return kvf_add(ctx, kvf_add(ctx, kvf_add(ctx, h, y), kvf_add(ctx, c, y2)), twice);
}

START_TEST(add_shares_gradient) {
    struct gc_input in[2];
    gc_input_randn(&in[0], &rng, 0.5, 2, (int64_t[]){5, 4});
    gc_input_randn(&in[1], &rng, 0.5, 2, (int64_t[]){5, 4});
    ck_assert(kvf_gradcheck("adds", f_adds, NULL, 2, in, NULL));
    gc_inputs_free(2, in);
}
END_TEST

/* kvf_matmul_add: a residual chain of projections (the addend takes the product's
 * gradient as its own), an addend read again later, the addend as the left operand too,
 * and an addend the epilogue does not take (broadcast: the two-op path). */
static kvf_tensor *f_matmul_add(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    (void)ud;
    kvf_tensor *x = in[0], *w = in[1], *w2 = in[2], *rb = in[3];
    kvf_tensor *h = x;
    for (int i = 0; i < 2; i++) h = kvf_matmul_add(ctx, h, kvf_exp(ctx, kvf_scale(ctx, h, 0.3)), w, true);
    kvf_tensor *y = kvf_matmul_add(ctx, x, h, w2, false);
    kvf_tensor *z = kvf_matmul_add(ctx, y, y, w, true);
    kvf_tensor *u = kvf_matmul_add(ctx, rb, z, w2, false);
    return kvf_add(ctx, u, kvf_scale(ctx, x, 2.0));
}

START_TEST(matmul_add_grad) {
    struct gc_input in[4];
    gc_input_randn(&in[0], &rng, 0.5, 3, (int64_t[]){2, 3, 4});
    gc_input_randn(&in[1], &rng, 0.3, 2, (int64_t[]){4, 4});
    gc_input_randn(&in[2], &rng, 0.3, 2, (int64_t[]){4, 4});
    gc_input_randn(&in[3], &rng, 0.5, 1, (int64_t[]){4});
    ck_assert(kvf_gradcheck("matmul_add", f_matmul_add, NULL, 4, in, NULL));
    gc_inputs_free(4, in);
}
END_TEST

/* On the CPU (the reference) the fused op gives the bits of a matmul followed by an add:
 * output and every gradient, in f32 and f64. */
static void matmul_add_run(kvf_dtype dt, bool fused, const double *v, double *out) {
    enum { M = 6, K = 5, N = 7 };
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *r = kvf_tensor_new(ctx, dt, 2, (int64_t[]){M, N});
    kvf_tensor *a = kvf_tensor_new(ctx, dt, 2, (int64_t[]){M, K});
    kvf_tensor *w = kvf_tensor_new(ctx, dt, 2, (int64_t[]){N, K});
    kvf_tensor *g = kvf_tensor_new(ctx, dt, 2, (int64_t[]){M, N});
    kvf_tensor *t[4] = {r, a, w, g};
    const double *p = v;
    for (int k = 0; k < 4; k++)
        for (int64_t i = 0; i < kvf_tensor_numel(t[k]); i++) kvf_tensor_set_flat(t[k], i, *p++);
    r->requires_grad = a->requires_grad = w->requires_grad = true;
    kvf_tensor *y = fused ? kvf_matmul_add(ctx, r, a, w, true)
                          : kvf_add(ctx, r, kvf_matmul(ctx, a, w, false, true));
    /* r is read again after the fused op, so its gradient is a sum */
#define FLAT_SUM(t) kvf_sum(ctx, kvf_reshape(ctx, (t), 1, (int64_t[]){M * N}), 0, true)
    kvf_tensor *loss = kvf_add(ctx, FLAT_SUM(kvf_mul(ctx, y, g)), FLAT_SUM(kvf_exp(ctx, r)));
#undef FLAT_SUM
    ck_assert_msg(loss && kvf_backward(ctx, loss) == KVF_OK, "%s", kvf_error_message());
    for (int64_t i = 0; i < M * N; i++) *out++ = kvf_tensor_get_flat(y, i);
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < kvf_tensor_numel(t[k]); i++) *out++ = kvf_tensor_get_flat(t[k]->grad, i);
    kvf_ctx_free(ctx);
}

START_TEST(matmul_add_bitwise) {
    double v[42 + 30 + 35 + 42], two[2][42 + 42 + 30 + 35];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) v[i] = kvf_rng_normal(&rng);
    kvf_dtype dts[2] = {KVF_DTYPE_F32, KVF_DTYPE_F64};
    for (int d = 0; d < 2; d++) {
        matmul_add_run(dts[d], false, v, two[0]);
        matmul_add_run(dts[d], true, v, two[1]);
        ck_assert_msg(memcmp(two[0], two[1], sizeof two[0]) == 0, "%s: matmul_add differs from "
                      "matmul + add", kvf_dtype_name(dts[d]));
    }
}
END_TEST

/* kvf_split's backward: every piece used (x's gradient written piece by piece by the last
 * piece's rule), a piece unused (each piece adds its part), x also read after the split (its
 * gradient exists when the pieces' rules run). ud: the case. */
static kvf_tensor *f_split(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const int c = *(const int *)ud;
    kvf_tensor *p[3];
    if (kvf_split(ctx, in[0], 1, (int64_t[]){2, 3, 1}, 3, p) != KVF_OK) return NULL;
    kvf_tensor *cat[3] = {kvf_exp(ctx, p[2]), kvf_mul(ctx, p[0], p[0]), kvf_exp(ctx, p[1])};
    kvf_tensor *y = kvf_concat(ctx, cat, c == 1 ? 2 : 3, 1);
    if (c == 2) y = kvf_add(ctx, y, kvf_mul(ctx, in[0], in[0]));
    return y;
}

START_TEST(split_grad) {
    for (int c = 0; c < 3; c++) {
        struct gc_input in[1];
        gc_input_randn(&in[0], &rng, 1.0, 3, (int64_t[]){2, 6, 3});
        ck_assert_msg(kvf_gradcheck("split", f_split, &c, 1, in, NULL), "split case %d", c);
        gc_inputs_free(1, in);
    }
}
END_TEST

/* The same gradient through kvf_split as through separate kvf_slice calls (which add their
 * parts into a zeroed gradient one by one), bit for bit, with and without gradient sharing. */
static void split_run(bool grouped, bool share, const double *v, double *out) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad_sharing(ctx, share);
    kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){4, 7});
    for (int i = 0; i < 28; i++) kvf_tensor_set_flat(x, i, v[i]);
    x->requires_grad = true;
    kvf_tensor *p[2];
    if (grouped) {
        ck_assert_int_eq(kvf_split(ctx, x, 1, (int64_t[]){3, 4}, 2, p), KVF_OK);
    } else {
        p[0] = kvf_slice(ctx, x, 1, 0, 3);
        p[1] = kvf_slice(ctx, x, 1, 3, 4);
    }
    kvf_tensor *y = kvf_add(ctx, kvf_sum(ctx, kvf_exp(ctx, p[0]), -1, false),
                            kvf_sum(ctx, kvf_mul(ctx, p[1], p[1]), -1, false));
    ck_assert_int_eq(kvf_backward(ctx, kvf_sum(ctx, y, 0, false)), KVF_OK);
    for (int i = 0; i < 28; i++) out[i] = kvf_tensor_get_flat(x->grad, i);
    kvf_ctx_free(ctx);
}

START_TEST(split_grouped_bitwise) {
    double v[28], a[28], b[28];
    for (int i = 0; i < 28; i++) v[i] = kvf_rng_normal(&rng);
    for (int share = 0; share < 2; share++) {
        split_run(false, share, v, a);
        split_run(true, share, v, b);
        ck_assert_msg(memcmp(a, b, sizeof a) == 0, "split differs from slices (sharing %d)", share);
    }
}
END_TEST

static kvf_tensor *f_cast(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    /* f64 → f32 → back: gradients cross dtypes */
    kvf_dtype other = in[0]->dtype == KVF_DTYPE_F64 ? KVF_DTYPE_F32 : KVF_DTYPE_F64;
    return kvf_cast(ctx, kvf_exp(ctx, kvf_cast(ctx, in[0], other)), in[0]->dtype);
}

START_TEST(cast_grad) {
    struct gc_input in[1];
    gc_input_randn(&in[0], &rng, 0.5, 1, (int64_t[]){9});
    struct gc_opts o = {.fd_step = 1e-3, .tol = 1e-4}; /* the f32 middle rounds at 1e-7 */
    ck_assert(kvf_gradcheck("cast", f_cast, NULL, 1, in, &o));
    gc_inputs_free(1, in);
}
END_TEST

/* kvf_cast_view: the cast made beforehand without recording (the model's one pass over
 * all weights), recorded per use: the same gradients as kvf_cast. */
static kvf_tensor *f_cast_view(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    (void)ud;
    kvf_dtype other = in[0]->dtype == KVF_DTYPE_F64 ? KVF_DTYPE_F32 : KVF_DTYPE_F64;
    bool was = kvf_ctx_set_grad(ctx, false);
    kvf_tensor *pre = kvf_cast(ctx, in[0], other);
    kvf_ctx_set_grad(ctx, was);
    kvf_tensor *y = kvf_cast_view(ctx, in[0], pre);
    return kvf_cast(ctx, kvf_add(ctx, kvf_exp(ctx, y), y), in[0]->dtype);
}

START_TEST(cast_view_grad) {
    struct gc_input in[1];
    gc_input_randn(&in[0], &rng, 0.5, 2, (int64_t[]){3, 5});
    struct gc_opts o = {.fd_step = 1e-3, .tol = 1e-4};
    ck_assert(kvf_gradcheck("cast_view", f_cast_view, NULL, 1, in, &o));
    gc_inputs_free(1, in);
    /* a tensor of another shape cannot stand for the cast */
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){3, 5});
    kvf_tensor *y = kvf_tensor_zeros(ctx, KVF_DTYPE_F64, 2, (int64_t[]){5, 3});
    ck_assert_ptr_null(kvf_cast_view(ctx, x, y));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "cast_view"));
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

int main(void) {
    kvf_rng_init(&rng, 42);
    Suite *s = suite_create("ops_math");
    TCase *tc = tcase_create("grad");
    tcase_add_test(tc, matmul_grad);
    tcase_add_test(tc, matmul_noncontiguous);
    tcase_add_test(tc, binary_broadcast_grad);
    tcase_add_test(tc, unary_grad);
    tcase_add_test(tc, unary_strided_input);
    tcase_add_test(tc, reduce_grad);
    tcase_add_test(tc, swiglu_grad);
    tcase_add_test(tc, swiglu_packed_grad);
    tcase_add_test(tc, swiglu_packed_bitwise);
    tcase_add_test(tc, views_grad);
    tcase_add_test(tc, split_grad);
    tcase_add_test(tc, split_grouped_bitwise);
    tcase_add_test(tc, views_share_gradient_bitwise);
    tcase_add_test(tc, add_shares_gradient);
    tcase_add_test(tc, cast_grad);
    tcase_add_test(tc, matmul_add_grad);
    tcase_add_test(tc, matmul_add_bitwise);
    tcase_add_test(tc, cast_view_grad);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
