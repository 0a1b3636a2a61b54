/* Bad input to the core ops (matmul, arithmetic, reductions, views): each returns NULL or
 * an error status, names the op and the operand shapes, and never aborts. The other op
 * families test their own bad input beside their gradient checks. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static kvf_ctx *ctx;

static void setup(void) {
    ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_error_clear();
}
static void teardown(void) {
    kvf_ctx_free(ctx);
    kvf_error_clear();
}

static kvf_tensor *T(kvf_dtype dt, int nd, int64_t a, int64_t b, int64_t c) {
    int64_t sh[3] = {a, b, c};
    return kvf_tensor_zeros(ctx, dt, nd, sh);
}

#define EXPECT_ERR(expr, code, ...)                                                          \
    do {                                                                                     \
        kvf_error_clear();                                                                   \
        ck_assert_ptr_null(expr);                                                            \
        ck_assert_int_eq(kvf_error_code(), code);                                            \
        const char *want_[] = {__VA_ARGS__};                                                 \
        for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)                       \
            ck_assert_msg(strstr(kvf_error_message(), want_[i_]), "message '%s' lacks '%s'", \
                          kvf_error_message(), want_[i_]);                                   \
    } while (0)

START_TEST(matmul_errors) {
    kvf_tensor *a = T(KVF_DTYPE_F32, 2, 2, 3, 0), *b = T(KVF_DTYPE_F32, 2, 4, 5, 0);
    EXPECT_ERR(kvf_matmul(ctx, a, b, false, false), KVF_ERR_SHAPE, "matmul", "[2, 3] f32", "[4, 5] f32");
    kvf_tensor *d = T(KVF_DTYPE_F64, 2, 3, 5, 0);
    EXPECT_ERR(kvf_matmul(ctx, a, d, false, false), KVF_ERR_SHAPE, "matmul", "f64");
    kvf_tensor *ids = T(KVF_DTYPE_I32, 2, 3, 5, 0);
    EXPECT_ERR(kvf_matmul(ctx, a, ids, false, false), KVF_ERR_DTYPE, "matmul", "i32");
    kvf_tensor *b3 = T(KVF_DTYPE_F32, 3, 3, 3, 5);
    kvf_tensor *a3 = T(KVF_DTYPE_F32, 3, 2, 2, 3);
    EXPECT_ERR(kvf_matmul(ctx, a3, b3, false, false), KVF_ERR_SHAPE, "matmul", "[2, 2, 3]", "[3, 3, 5]");
    EXPECT_ERR(kvf_matmul(ctx, T(KVF_DTYPE_F32, 1, 3, 0, 0), b, false, false), KVF_ERR_SHAPE, "matmul");
}
END_TEST

START_TEST(arith_errors) {
    kvf_tensor *a = T(KVF_DTYPE_F32, 2, 2, 3, 0), *b = T(KVF_DTYPE_F32, 2, 4, 3, 0);
    EXPECT_ERR(kvf_add(ctx, a, b), KVF_ERR_SHAPE, "add", "[2, 3] f32", "[4, 3] f32");
    EXPECT_ERR(kvf_mul(ctx, a, T(KVF_DTYPE_F64, 2, 2, 3, 0)), KVF_ERR_DTYPE, "mul", "f64");
    EXPECT_ERR(kvf_div(ctx, T(KVF_DTYPE_I32, 1, 3, 0, 0), a), KVF_ERR_DTYPE, "div", "i32");
    EXPECT_ERR(kvf_exp(ctx, T(KVF_DTYPE_I64, 1, 3, 0, 0)), KVF_ERR_DTYPE, "exp", "i64");
    EXPECT_ERR(kvf_swiglu(ctx, a, b), KVF_ERR_SHAPE, "swiglu", "[2, 3]", "[4, 3]");
    EXPECT_ERR(kvf_sum(ctx, a, 2, false), KVF_ERR_ARG, "sum", "axis 2", "[2, 3]");
    EXPECT_ERR(kvf_mean(ctx, a, -3, false), KVF_ERR_ARG, "sum", "[2, 3]");
}
END_TEST

START_TEST(view_errors) {
    kvf_tensor *a = T(KVF_DTYPE_F32, 3, 2, 3, 4);
    EXPECT_ERR(kvf_reshape(ctx, a, 2, (int64_t[]){5, 5}), KVF_ERR_SHAPE, "reshape", "[2, 3, 4]", "[5, 5]");
    EXPECT_ERR(kvf_reshape(ctx, a, 5, (int64_t[]){1, 1, 1, 1, 24}), KVF_ERR_SHAPE, "reshape");
    EXPECT_ERR(kvf_permute(ctx, a, (int[]){0, 0, 1}), KVF_ERR_ARG, "permute", "[2, 3, 4]");
    EXPECT_ERR(kvf_transpose(ctx, a, 0, 3), KVF_ERR_ARG, "transpose");
    EXPECT_ERR(kvf_slice(ctx, a, 1, 2, 2), KVF_ERR_SHAPE, "slice", "[2, 4)", "[2, 3, 4]");
    EXPECT_ERR(kvf_slice(ctx, a, 3, 0, 1), KVF_ERR_ARG, "slice", "axis 3");
    EXPECT_ERR(kvf_expand(ctx, a, 3, (int64_t[]){2, 5, 4}), KVF_ERR_SHAPE, "expand", "[2, 3, 4]");
    kvf_tensor *xs[2] = {a, T(KVF_DTYPE_F32, 3, 2, 5, 5)};
    EXPECT_ERR(kvf_concat(ctx, xs, 2, 1), KVF_ERR_SHAPE, "concat", "[2, 5, 5]");
    kvf_tensor *out[2];
    kvf_error_clear();
    ck_assert_int_eq(kvf_split(ctx, a, 2, (int64_t[]){1, 2}, 2, out), KVF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "split"));
}
END_TEST

START_TEST(null_operands_keep_first_error) {
    kvf_tensor *a = T(KVF_DTYPE_F32, 2, 2, 3, 0);
    kvf_error_clear();
    kvf_tensor *bad = kvf_add(ctx, a, T(KVF_DTYPE_F32, 1, 4, 0, 0)); /* fails: names add */
    kvf_tensor *y = kvf_exp(ctx, kvf_matmul(ctx, bad, a, false, true));
    ck_assert_ptr_null(y);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "add"));
    ck_assert_ptr_null(strstr(kvf_error_message(), "matmul"));
    kvf_error_clear();
    EXPECT_ERR(kvf_exp(ctx, NULL), KVF_ERR_ARG, "exp", "NULL");
}
END_TEST

START_TEST(wrong_device) {
    /* a header that claims to live on the GPU: the CPU context refuses it by name */
    kvf_tensor *a = T(KVF_DTYPE_F32, 2, 2, 3, 0);
    struct kvf_storage fake = *a->storage;
    fake.device = KVF_DEVICE_CUDA;
    kvf_tensor g = *a;
    g.storage = &fake;
    EXPECT_ERR(kvf_add(ctx, a, &g), KVF_ERR_DEVICE, "add", "cuda", "[2, 3] f32");
    EXPECT_ERR(kvf_matmul(ctx, &g, a, false, true), KVF_ERR_DEVICE, "matmul", "cuda");
}
END_TEST

START_TEST(backward_errors) {
    kvf_tensor *a = T(KVF_DTYPE_F32, 2, 2, 3, 0);
    a->requires_grad = true;
    kvf_error_clear();
    ck_assert_int_eq(kvf_backward(ctx, kvf_exp(ctx, a)), KVF_ERR_SHAPE); /* not a scalar */
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "[2, 3]"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_backward(ctx, NULL), KVF_ERR_ARG);
    kvf_error_clear();
#ifndef KVF_WITH_CUDA
    ck_assert_ptr_null(kvf_ctx_init(KVF_DEVICE_CUDA));
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DEVICE);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "without CUDA"));
#endif
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_errors");
    TCase *tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, matmul_errors);
    tcase_add_test(tc, arith_errors);
    tcase_add_test(tc, view_errors);
    tcase_add_test(tc, null_operands_keep_first_error);
    tcase_add_test(tc, wrong_device);
    tcase_add_test(tc, backward_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
