/* Tensors, views, broadcasting, dtype conversion, the tape, parameters, arena and RNG. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/params.h"
#include "autograd/recompute.h"
#include "gradcheck.h"

static kvf_tensor *iota(kvf_ctx *ctx, int ndim, const int64_t *shape) {
    kvf_tensor *t = kvf_tensor_new(ctx, KVF_DTYPE_F32, ndim, shape);
    for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t, i, (double)i);
    return t;
}

START_TEST(dtype_basics) {
    ck_assert_int_eq(kvf_dtype_size(KVF_DTYPE_F32), 4);
    ck_assert_int_eq(kvf_dtype_size(KVF_DTYPE_BF16), 2);
    ck_assert_int_eq(kvf_dtype_size(KVF_DTYPE_I64), 8);
    ck_assert_str_eq(kvf_dtype_name(KVF_DTYPE_F16), "f16");
    ck_assert(!kvf_dtype_is_float(KVF_DTYPE_I32));
}
END_TEST

START_TEST(bf16_rounding) {
    ck_assert_uint_eq(kvf_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(kvf_f32_to_bf16(-2.0f), 0xc000);
    float f;
    uint32_t u = 0x3f808000u; /* exactly halfway between 0x3f80 and 0x3f81: to even */
    memcpy(&f, &u, 4);
    ck_assert_uint_eq(kvf_f32_to_bf16(f), 0x3f80);
    u = 0x3f818000u; /* halfway between 0x3f81 and 0x3f82: to even */
    memcpy(&f, &u, 4);
    ck_assert_uint_eq(kvf_f32_to_bf16(f), 0x3f82);
    u = 0x3f808001u; /* just above halfway: up */
    memcpy(&f, &u, 4);
    ck_assert_uint_eq(kvf_f32_to_bf16(f), 0x3f81);
    ck_assert(isnan(kvf_bf16_to_f32(kvf_f32_to_bf16(NAN))));
    ck_assert(isinf(kvf_bf16_to_f32(kvf_f32_to_bf16(INFINITY))));
    ck_assert_float_eq(kvf_bf16_to_f32(0x4049), 3.140625f);
}
END_TEST

START_TEST(f16_roundtrip_exhaustive) {
    /* every finite f16 survives f16 → f32 → f16 exactly */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue; /* NaN payloads */
        ck_assert_msg(kvf_f32_to_f16(kvf_f16_to_f32((uint16_t)h)) == h, "f16 0x%04x", h);
    }
    ck_assert_uint_eq(kvf_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(kvf_f32_to_f16(65520.0f), 0x7c00); /* rounds to Inf */
    ck_assert_uint_eq(kvf_f32_to_f16(0.1f), 0x2e66);
    ck_assert_uint_eq(kvf_f32_to_f16(1e-8f), 0x0000);
    ck_assert_float_eq(kvf_f16_to_f32(0x0001), 5.960464477539063e-08f); /* smallest subnormal */
    ck_assert(isnan(kvf_f16_to_f32(kvf_f32_to_f16(NAN))));
}
END_TEST

START_TEST(views_index_like_naive_loops) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t sh[3] = {2, 3, 4};
    kvf_tensor *x = iota(ctx, 3, sh);
    /* permute (2,0,1): y[a][b][c] = x[b][c][a] */
    kvf_tensor *y = kvf_permute(ctx, x, (int[]){2, 0, 1});
    ck_assert_int_eq(y->shape[0], 4);
    for (int64_t a = 0; a < 4; a++)
        for (int64_t b = 0; b < 2; b++)
            for (int64_t c = 0; c < 3; c++)
                ck_assert_double_eq(kvf_tensor_get(y, (int64_t[]){a, b, c}), (double)(b * 12 + c * 4 + a));
    ck_assert(!kvf_tensor_is_contiguous(y));
    ck_assert(y->storage == x->storage);
    /* slice along the middle axis */
    kvf_tensor *s = kvf_slice(ctx, x, 1, 1, 2);
    for (int64_t a = 0; a < 2; a++)
        for (int64_t b = 0; b < 2; b++)
            for (int64_t c = 0; c < 4; c++)
                ck_assert_double_eq(kvf_tensor_get(s, (int64_t[]){a, b, c}), (double)(a * 12 + (b + 1) * 4 + c));
    /* reshape of the non-contiguous permuted view copies in row-major order of the view */
    kvf_tensor *r = kvf_reshape(ctx, y, 2, (int64_t[]){4, -1});
    ck_assert(kvf_tensor_is_contiguous(r));
    ck_assert_int_eq(r->shape[1], 6);
    for (int64_t a = 0; a < 4; a++)
        for (int64_t j = 0; j < 6; j++)
            ck_assert_double_eq(kvf_tensor_get(r, (int64_t[]){a, j}),
                                kvf_tensor_get(y, (int64_t[]){a, j / 3, j % 3}));
    /* expand: stride 0 repeats */
    kvf_tensor *col = kvf_slice(ctx, x, 2, 3, 1); /* [2,3,1] */
    kvf_tensor *e = kvf_expand(ctx, col, 4, (int64_t[]){5, 2, 3, 7});
    ck_assert_int_eq(e->stride[0], 0);
    ck_assert_int_eq(e->stride[3], 0);
    ck_assert_double_eq(kvf_tensor_get(e, (int64_t[]){4, 1, 2, 6}), (double)(12 + 8 + 3));
    /* contiguous copy of a transposed view */
    kvf_tensor *t = kvf_contiguous(ctx, kvf_transpose(ctx, x, 0, 2));
    ck_assert(kvf_tensor_is_contiguous(t));
    ck_assert_double_eq(kvf_tensor_get(t, (int64_t[]){3, 2, 1}), (double)(1 * 12 + 2 * 4 + 3));
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(broadcast_like_naive_loops) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *a = iota(ctx, 3, (int64_t[]){2, 1, 4});
    kvf_tensor *b = iota(ctx, 2, (int64_t[]){3, 1});
    kvf_tensor *p = kvf_permute(ctx, iota(ctx, 3, (int64_t[]){4, 3, 2}), (int[]){2, 1, 0}); /* [2,3,4] */
    kvf_tensor *c = kvf_mul(ctx, kvf_sub(ctx, a, b), p);
    ck_assert_int_eq(c->ndim, 3);
    ck_assert_int_eq(c->shape[1], 3);
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 4; k++) {
                double want = ((double)(i * 4 + k) - (double)j) * (double)(k * 6 + j * 2 + i);
                ck_assert_double_eq(kvf_tensor_get(c, (int64_t[]){i, j, k}), want);
            }
    /* sums against loops */
    kvf_tensor *s = kvf_sum(ctx, c, 1, false);
    for (int64_t i = 0; i < 2; i++)
        for (int64_t k = 0; k < 4; k++) {
            double want = 0;
            for (int64_t j = 0; j < 3; j++) want += kvf_tensor_get(c, (int64_t[]){i, j, k});
            ck_assert_double_eq_tol(kvf_tensor_get(s, (int64_t[]){i, k}), want, 1e-3);
        }
    kvf_ctx_free(ctx);
}
END_TEST

/* The row layouts RoPE and SwiGLU kernels take: dense rows a stride apart (slices of the
 * last dim), head rows (slices of heads or head dims); transposed or broadcast views are not. */
START_TEST(row_layouts) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 4, (int64_t[]){2, 3, 5, 8});
    int64_t ld, lt, lh;
    ck_assert(kvf_tensor_rows(x, &ld) && ld == 8);
    ck_assert(kvf_tensor_head_rows(x, &lt, &lh) && lt == 40 && lh == 8);
    kvf_tensor *dims = kvf_slice(ctx, x, 3, 2, 4); /* [2, 3, 5, 4] of rows 8 apart */
    ck_assert(kvf_tensor_rows(dims, &ld) && ld == 8);
    ck_assert(kvf_tensor_head_rows(dims, &lt, &lh) && lt == 40 && lh == 8);
    kvf_tensor *hs = kvf_slice(ctx, x, 2, 1, 3); /* heads 1..3: rows not evenly spaced */
    ck_assert(!kvf_tensor_rows(hs, &ld));
    ck_assert(kvf_tensor_head_rows(hs, &lt, &lh) && lt == 40 && lh == 8);
    ck_assert(!kvf_tensor_head_rows(kvf_transpose(ctx, x, 1, 2), &lt, &lh));
    ck_assert(!kvf_tensor_rows(kvf_transpose(ctx, x, 2, 3), &ld));
    kvf_tensor *b = kvf_expand(ctx, kvf_slice(ctx, x, 2, 0, 1), 4, (int64_t[]){2, 3, 5, 8});
    ck_assert(!kvf_tensor_head_rows(b, &lt, &lh));
    ck_assert(!kvf_tensor_rows(b, &ld));
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(tape_fan_out) {
    /* y = Σ (x·x + x) · x: x feeds four uses; dy/dx = 3x² + 2x exactly */
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F64, 1, (int64_t[]){5});
    for (int i = 0; i < 5; i++) kvf_tensor_set_flat(x, i, i - 2.0);
    x->requires_grad = true;
    kvf_tensor *y = kvf_sum(ctx, kvf_mul(ctx, kvf_add(ctx, kvf_mul(ctx, x, x), x), x), KVF_ALL_AXES, false);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(kvf_tape_size(ctx), 4);
    ck_assert_int_eq(kvf_backward(ctx, y), KVF_OK);
    for (int i = 0; i < 5; i++) {
        double v = i - 2.0;
        ck_assert_double_eq(kvf_tensor_get_flat(x->grad, i), 3 * v * v + 2 * v);
    }
    /* a branch that does not reach the loss gets no gradient buffer */
    kvf_ctx_reset(ctx);
    x = kvf_tensor_full(ctx, KVF_DTYPE_F64, 1, (int64_t[]){3}, 2.0);
    x->requires_grad = true;
    kvf_tensor *dead = kvf_exp(ctx, x);
    kvf_tensor *live = kvf_sum(ctx, kvf_scale(ctx, x, 3.0), KVF_ALL_AXES, false);
    ck_assert_int_eq(kvf_backward(ctx, live), KVF_OK);
    ck_assert_ptr_null(dead->grad);
    ck_assert_double_eq(kvf_tensor_get_flat(x->grad, 2), 3.0);
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(no_grad_mode) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_full(ctx, KVF_DTYPE_F32, 1, (int64_t[]){3}, 1.0);
    x->requires_grad = true;
    bool was = kvf_ctx_set_grad(ctx, false);
    ck_assert(was);
    kvf_tensor *y = kvf_sum(ctx, kvf_exp(ctx, x), KVF_ALL_AXES, false);
    ck_assert_int_eq(kvf_tape_size(ctx), 0);
    kvf_error_clear();
    ck_assert_int_eq(kvf_backward(ctx, y), KVF_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "backward"));
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(arena_reuse) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    for (int step = 0; step < 3; step++) {
        kvf_ctx_reset(ctx);
        ck_assert_uint_eq(kvf_ctx_arena_used(ctx), 0);
        for (int i = 0; i < 10; i++) ck_assert_ptr_nonnull(kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){100, 1000}));
    }
    size_t reserved = kvf_ctx_arena_reserved(ctx);
    kvf_ctx_reset(ctx);
    for (int i = 0; i < 10; i++) kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){100, 1000});
    ck_assert_uint_eq(kvf_ctx_arena_reserved(ctx), reserved); /* steady state: no growth */
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(params_registry) {
    kvf_params *p = kvf_params_init();
    ck_assert_int_eq(kvf_params_add(p, "w", 2, (int64_t[]){3, 5}), 0);
    ck_assert_int_eq(kvf_params_add(p, "b", 1, (int64_t[]){5}), 1);
    kvf_error_clear();
    ck_assert_int_eq(kvf_params_add(p, "w", 1, (int64_t[]){2}), -1);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "duplicate"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_params_alloc(p, KVF_DEVICE_CPU), KVF_OK);
    kvf_tensor *w = kvf_params_get(p, "w"), *b = kvf_params_get(p, "b");
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_null(kvf_params_get(p, "nope"));
    /* one contiguous buffer: b follows w (64-byte aligned slots) */
    ck_assert(w->storage == b->storage);
    ck_assert_int_eq(b->offset, 16);
    for (int i = 0; i < 15; i++) kvf_tensor_set_flat(w, i, 0.1 * i);
    for (int i = 0; i < 5; i++) kvf_tensor_set_flat(b, i, 1.0);
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    for (int pass = 1; pass <= 2; pass++) { /* gradients accumulate across passes */
        kvf_ctx_reset(ctx);
        kvf_tensor *x = kvf_tensor_full(ctx, KVF_DTYPE_F32, 2, (int64_t[]){2, 3}, 1.0);
        kvf_tensor *y = kvf_sum(ctx, kvf_add(ctx, kvf_matmul(ctx, x, w, false, false), b), KVF_ALL_AXES, false);
        ck_assert_int_eq(kvf_backward(ctx, y), KVF_OK);
        ck_assert_double_eq(kvf_tensor_get_flat(b->grad, 4), 2.0 * pass);
        ck_assert_double_eq(kvf_tensor_get_flat(w->grad, 7), 2.0 * pass);
    }
    ck_assert_int_eq(kvf_params_zero_grad(p), KVF_OK);
    ck_assert_double_eq(kvf_tensor_get_flat(w->grad, 7), 0.0);
    ck_assert_int_eq(kvf_params_numel(p), 32);
    kvf_ctx_free(ctx);
    kvf_params_free(p);
}
END_TEST

START_TEST(rng_determinism) {
    kvf_rng a, b;
    kvf_rng_init(&a, 7);
    kvf_rng_init(&b, 7);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(kvf_rng_next(&a), kvf_rng_next(&b));
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double z = kvf_rng_normal(&a);
        s += z;
        s2 += z * z;
    }
    ck_assert_double_le(fabs(s / n), 0.01);
    ck_assert_double_le(fabs(s2 / n - 1.0), 0.02);
    for (int i = 0; i < 1000; i++) ck_assert_uint_lt(kvf_rng_below(&a, 17), 17);
}
END_TEST

/* A checkpointed block's first run allocates in the scratch region, rewound after the
 * block; a cache that must outlive it (the model's one-pass weight cast) switches to the
 * main region around its allocation. Later blocks' scratch must not overwrite it. */
struct keep_ud {
    kvf_tensor **kept;
    double fill;
};

static kvf_status keep_fn(kvf_ctx *ctx, const void *ud_, kvf_tensor *const *in, kvf_tensor **out) {
    const struct keep_ud *ud = ud_;
    if (!*ud->kept) {
        bool scratch = kvf_ctx_use_scratch(ctx, false);
        ck_assert(scratch); /* the first run is in scratch */
        *ud->kept = kvf_tensor_full(ctx, KVF_DTYPE_F32, 1, (int64_t[]){4096}, 7.0);
        kvf_ctx_use_scratch(ctx, scratch);
    }
    /* scratch garbage of the kept tensor's size */
    kvf_tensor *junk = kvf_tensor_full(ctx, KVF_DTYPE_F32, 1, (int64_t[]){4096}, ud->fill);
    out[0] = kvf_add(ctx, kvf_scale(ctx, in[0], 2.0), kvf_sum(ctx, junk, 0, true));
    return out[0] ? KVF_OK : kvf_error_code();
}

START_TEST(scratch_switch_keeps_main) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_full(ctx, KVF_DTYPE_F32, 1, (int64_t[]){1}, 1.0);
    x->requires_grad = true;
    kvf_tensor *kept = NULL, *y = x;
    for (int b = 0; b < 3; b++) {
        struct keep_ud ud = {&kept, -1.0 - b};
        kvf_tensor *out[1];
        ck_assert_int_eq(kvf_recompute(ctx, keep_fn, &ud, sizeof ud, 1, &y, 1, out), KVF_OK);
        y = out[0];
    }
    ck_assert_ptr_nonnull(kept);
    for (int64_t i = 0; i < 4096; i++) ck_assert(kvf_tensor_get_flat(kept, i) == 7.0);
    kvf_ctx_free(ctx);
}
END_TEST

/* Generations: new at every reset and never shared by two contexts, even one made where
 * a freed one lived (caches keyed on them, model/transformer.c). */
START_TEST(ctx_generation_unique) {
    kvf_ctx *a = kvf_ctx_init(KVF_DEVICE_CPU);
    uint64_t ga = kvf_ctx_generation(a);
    kvf_ctx_reset(a);
    uint64_t ga2 = kvf_ctx_generation(a);
    ck_assert(ga2 != ga);
    kvf_ctx_free(a);
    kvf_ctx *b = kvf_ctx_init(KVF_DEVICE_CPU);
    ck_assert(kvf_ctx_generation(b) != ga && kvf_ctx_generation(b) != ga2);
    kvf_ctx_free(b);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, dtype_basics);
    tcase_add_test(tc, bf16_rounding);
    tcase_add_test(tc, f16_roundtrip_exhaustive);
    tcase_add_test(tc, views_index_like_naive_loops);
    tcase_add_test(tc, broadcast_like_naive_loops);
    tcase_add_test(tc, row_layouts);
    tcase_add_test(tc, tape_fan_out);
    tcase_add_test(tc, no_grad_mode);
    tcase_add_test(tc, arena_reuse);
    tcase_add_test(tc, params_registry);
    tcase_add_test(tc, rng_determinism);
    tcase_add_test(tc, ctx_generation_unique);
    tcase_add_test(tc, scratch_switch_keeps_main);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
