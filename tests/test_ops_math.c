/* Gradient checks for matmul, broadcasting arithmetic, unary functions, sums, SwiGLU and
 * the view ops, on odd shapes. */
#include <check.h>
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
    tcase_add_test(tc, views_grad);
    tcase_add_test(tc, cast_grad);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
