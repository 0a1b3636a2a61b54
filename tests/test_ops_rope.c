/* RoPE: gradient checks for both pair layouts, partial rotation (2F < D), per-head
 * frequency tables with dropped (zeroed) frequencies, explicit positions and strided input;
 * the forward against the HF formulas; the frequency table; bad input. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static kvf_rng rng;

struct rope_case {
    kvf_rope_layout layout;
    bool explicit_pos; /* in[2] holds positions */
    bool fused;        /* in[0] is [B, T, H, D + 3]: rotate a strided slice of it */
    bool twice;        /* rope(x) + x: the backward must accumulate into dx */
    bool inplace;      /* kvf_rope_inplace on a fresh 1.5·x */
    int64_t at;        /* > 0: kvf_rope_inplace_at(.., at, ..) on a fresh 1.5·x */
    bool heads;        /* in place on heads [1, H − 1) of a fresh 1.5·x (a fused q/k/v's q) */
};

static kvf_tensor *f_rope(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    struct rope_case *c = ud;
    kvf_tensor *x = in[0];
    if (c->fused) x = kvf_slice(ctx, x, 3, 2, x->shape[3] - 3);
    if (c->heads) {
        kvf_tensor *sl = kvf_slice(ctx, kvf_scale(ctx, x, 1.5), 2, 1, x->shape[2] - 2);
        return kvf_rope_inplace(ctx, sl, c->explicit_pos ? in[2] : NULL, in[1], c->layout);
    }
    if (c->at)
        return kvf_rope_inplace_at(ctx, kvf_scale(ctx, x, 1.5), c->at, c->explicit_pos ? in[2] : NULL, in[1], c->layout);
    if (c->inplace)
        return kvf_rope_inplace(ctx, kvf_scale(ctx, x, 1.5), c->explicit_pos ? in[2] : NULL, in[1], c->layout);
    kvf_tensor *y = kvf_rope(ctx, x, c->explicit_pos ? in[2] : NULL, in[1], c->layout);
    return c->twice ? kvf_add(ctx, y, x) : y;
}

/* theta^(-2i/dim) for i < F into a no-grad input, optionally zeroing some (per head). */
static void freq_input(struct gc_input *in, int64_t H, int64_t F, int64_t dim, double theta,
                       bool per_head) {
    memset(in, 0, sizeof *in);
    in->dtype = KVF_DTYPE_F64;
    in->no_grad = true;
    in->ndim = per_head ? 2 : 1;
    if (per_head) {
        in->shape[0] = H;
        in->shape[1] = F;
    } else {
        in->shape[0] = F;
    }
    in->data = malloc(sizeof(double) * (size_t)gc_numel(in));
    for (int64_t h = 0; h < (per_head ? H : 1); h++)
        for (int64_t i = 0; i < F; i++) {
            double f = pow(theta, -2.0 * (double)i / (double)dim);
            if (per_head && (i + h) % 3 == 1) f = 0.0; /* a dropped frequency */
            in->data[h * F + i] = f;
        }
}

static bool check_rope(const char *name, struct rope_case c, int64_t B, int64_t T, int64_t H,
                       int64_t D, int64_t F, bool per_head) {
    struct gc_input in[3];
    int64_t shape[4] = {B, T, H, c.fused ? D + 3 : D};
    gc_input_randn(&in[0], &rng, 1.0, 4, shape);
    freq_input(&in[1], H, F, 2 * F, 10.0, per_head);
    int n = 2;
    if (c.explicit_pos) {
        gc_input_ids(&in[2], &rng, 40, 1, (int64_t[]){T});
        in[2].ids[0] = -3; /* negative positions rotate the other way */
        n = 3;
    }
    bool ok = kvf_gradcheck(name, f_rope, &c, n, in, NULL);
    gc_inputs_free(n, in);
    return ok;
}

START_TEST(rope_grad_layouts) {
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF};
        ck_assert_msg(check_rope("rope full", c, 2, 5, 3, 8, 4, false), "layout %d", l);
        ck_assert_msg(check_rope("rope odd", c, 1, 7, 2, 6, 3, false), "layout %d", l);
    }
}
END_TEST

/* In place over a fresh tensor: the same gradients (the backward reads no values), on a
 * strided slice too (rotated in a contiguous copy). */
START_TEST(rope_grad_inplace) {
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF, .inplace = true};
        ck_assert_msg(check_rope("rope in place", c, 2, 5, 3, 8, 3, false), "layout %d", l);
        c.explicit_pos = c.fused = true;
        ck_assert_msg(check_rope("rope in place, slice", c, 1, 4, 2, 8, 4, true), "layout %d", l);
        struct rope_case h = {.layout = c.layout, .heads = true};
        ck_assert_msg(check_rope("rope in place, heads slice", h, 2, 4, 5, 8, 3, false), "layout %d", l);
    }
}
END_TEST

/* Dims [at, at + 2F) of each head rotated in place (MLA's q: RoPE part last), the others
 * untouched; per-head tables and positions too. */
START_TEST(rope_grad_inplace_at) {
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF, .at = 3};
        ck_assert_msg(check_rope("rope in place at 3", c, 2, 5, 3, 9, 2, false), "layout %d", l);
        c.at = 4;
        ck_assert_msg(check_rope("rope in place at 4 (the end)", c, 1, 4, 2, 8, 2, true), "layout %d", l);
        c.explicit_pos = c.fused = true;
        ck_assert_msg(check_rope("rope in place at 4, slice", c, 1, 4, 2, 10, 3, false), "layout %d", l);
    }
}
END_TEST

/* kvf_rope_inplace_at's output: kvf_rope of the rotated dims, the others x's, bit for bit. */
START_TEST(rope_inplace_at_matches_rope) {
    const int64_t B = 2, T = 5, H = 3, D = 12, F = 3, at = 5;
    for (int l = 0; l < 2; l++) {
        kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
        kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F32, 4, (int64_t[]){B, T, H, D});
        kvf_tensor *x2 = kvf_tensor_new(ctx, KVF_DTYPE_F32, 4, (int64_t[]){B, T, H, D});
        for (int64_t i = 0; i < B * T * H * D; i++) {
            double v = kvf_rng_normal(&rng);
            kvf_tensor_set_flat(x, i, v);
            kvf_tensor_set_flat(x2, i, v);
        }
        kvf_tensor *f = kvf_rope_inv_freq(ctx, 2 * F, 10.0);
        kvf_rope_layout lay = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF;
        kvf_tensor *want = kvf_rope(ctx, kvf_slice(ctx, x2, 3, at, 2 * F), NULL, f, lay);
        kvf_tensor *y = kvf_rope_inplace_at(ctx, x, at, NULL, f, lay);
        ck_assert_ptr_nonnull(y);
        for (int64_t r = 0; r < B * T * H; r++)
            for (int64_t d = 0; d < D; d++) {
                double got = kvf_tensor_get_flat(y, r * D + d);
                double exp = d >= at && d < at + 2 * F ? kvf_tensor_get_flat(want, r * 2 * F + d - at)
                                                       : kvf_tensor_get_flat(x2, r * D + d);
                ck_assert_msg(got == exp, "layout %d row %lld dim %lld: %g vs %g", l, (long long)r,
                              (long long)d, got, exp);
            }
        /* the range must lie inside the heads */
        ck_assert_ptr_null(kvf_rope_inplace_at(ctx, x, D - 2 * F + 1, NULL, f, lay));
        ck_assert_ptr_nonnull(strstr(kvf_error_message(), "not inside the heads"));
        kvf_error_clear();
        kvf_ctx_free(ctx);
    }
}
END_TEST

START_TEST(rope_grad_partial) {
    /* 2F < D: dims from 2F on pass through (odd D too) */
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF};
        ck_assert_msg(check_rope("rope partial", c, 2, 4, 3, 9, 2, false), "layout %d", l);
        ck_assert_msg(check_rope("rope none", c, 1, 3, 2, 5, 0, false), "layout %d", l);
        c.twice = true;
        ck_assert_msg(check_rope("rope partial + x", c, 2, 3, 2, 7, 2, false), "layout %d", l);
    }
}
END_TEST

START_TEST(rope_grad_per_head) {
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF,
                              .explicit_pos = true};
        ck_assert_msg(check_rope("rope per-head", c, 2, 5, 3, 10, 4, true), "layout %d", l);
    }
}
END_TEST

START_TEST(rope_grad_positions_strided) {
    for (int l = 0; l < 2; l++) {
        struct rope_case c = {.layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF,
                              .explicit_pos = true};
        ck_assert_msg(check_rope("rope pos", c, 2, 6, 2, 8, 3, false), "layout %d", l);
        c.fused = true;
        ck_assert_msg(check_rope("rope strided", c, 2, 5, 3, 8, 4, false), "layout %d", l);
        c.explicit_pos = false;
        ck_assert_msg(check_rope("rope strided per-head", c, 1, 4, 3, 7, 3, true), "layout %d", l);
    }
}
END_TEST

/* HF Llama (rotate_half): y = x·cos + rotate_half(x)·sin with cos/sin repeated over both
 * halves; GPT-J / DeepSeek: the same on the pairs (2i, 2i+1). */
static double naive_rope(const double *x, int64_t D, int64_t F, const double *freq, double p,
                         kvf_rope_layout layout, int64_t i) {
    if (i >= 2 * F) return x[i];
    int64_t f, a, b;
    bool first;
    if (layout == KVF_ROPE_HALF) {
        f = i % F;
        first = i < F;
        a = f;
        b = f + F;
    } else {
        f = i / 2;
        first = i % 2 == 0;
        a = 2 * f;
        b = a + 1;
    }
    double ang = p * freq[f], c = cos(ang), s = sin(ang);
    (void)D;
    return first ? x[a] * c - x[b] * s : x[b] * c + x[a] * s;
}

START_TEST(rope_forward_reference) {
    const int64_t B = 2, T = 9, H = 3, D = 10, F = 4;
    for (int dt = 0; dt < 2; dt++)
        for (int l = 0; l < 2; l++)
            for (int ph = 0; ph < 2; ph++) {
                kvf_dtype dtype = dt ? KVF_DTYPE_F32 : KVF_DTYPE_F64;
                kvf_rope_layout layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF;
                kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
                kvf_tensor *x = kvf_tensor_new(ctx, dtype, 4, (int64_t[]){B, T, H, D});
                kvf_rng_fill_normal(&rng, x, 0, 1);
                kvf_tensor *freq = ph ? kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){H, F})
                                      : kvf_rope_inv_freq(ctx, 2 * F, 10000.0);
                if (ph) {
                    kvf_rng_fill_uniform(&rng, freq, 0, 1);
                    kvf_tensor_set(freq, (int64_t[]){1, 2}, 0.0);
                }
                int32_t ph_pos[T];
                for (int64_t t = 0; t < T; t++) ph_pos[t] = (int32_t)(1000 * t + 7);
                kvf_tensor *pos = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){T}, ph_pos);
                kvf_tensor *y = kvf_rope(ctx, x, l ? pos : NULL, freq, layout);
                ck_assert_msg(y, "%s", kvf_error_message());
                double xs[D], fr[F], maxerr = 0;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t h = 0; h < H; h++) {
                            for (int64_t i = 0; i < D; i++)
                                xs[i] = kvf_tensor_get(x, (int64_t[]){b, t, h, i});
                            for (int64_t f = 0; f < F; f++)
                                fr[f] = ph ? kvf_tensor_get(freq, (int64_t[]){h, f})
                                           : kvf_tensor_get(freq, (int64_t[]){f});
                            double p = l ? ph_pos[t] : (double)t;
                            for (int64_t i = 0; i < D; i++) {
                                double want = naive_rope(xs, D, F, fr, p, layout, i);
                                double got = kvf_tensor_get(y, (int64_t[]){b, t, h, i});
                                maxerr = fmax(maxerr, fabs(want - got));
                                /* pass-through dims and dropped frequencies are exact */
                                bool exact = i >= 2 * F ||
                                             (ph && h == 1 && (l ? i / 2 : i % F) == 2);
                                if (exact) ck_assert(got == xs[i]);
                            }
                        }
                ck_assert_msg(maxerr < (dt ? 1e-5 : 1e-12), "dtype %d layout %d per-head %d: %g",
                              dt, l, ph, maxerr);
                kvf_ctx_free(ctx);
            }
}
END_TEST

START_TEST(rope_inv_freq_table) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *f = kvf_rope_inv_freq(ctx, 64, 500000.0);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(f->dtype, KVF_DTYPE_F32);
    ck_assert_int_eq(f->ndim, 1);
    ck_assert_int_eq(f->shape[0], 32);
    for (int64_t i = 0; i < 32; i++) {
        float want = (float)pow(500000.0, -(double)(2 * i) / 64.0);
        ck_assert_msg(kvf_tensor_get_flat(f, i) == (double)want, "i=%lld", (long long)i);
    }
    ck_assert(kvf_tensor_get_flat(f, 0) == 1.0);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_rope_inv_freq(ctx, 7, 10000.0));
    ck_assert(strstr(kvf_error_message(), "rope_inv_freq"));
    kvf_error_clear();
    ck_assert_ptr_null(kvf_rope_inv_freq(ctx, 8, -1.0));
    ck_assert(strstr(kvf_error_message(), "rope_inv_freq"));
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

/* Σ_i y[0, 0, 0, i]·y[0, 1, 0, i] for y = rope(x) with positions a, b, 0, 0, ... */
static double rel_dot(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *freq, kvf_rope_layout layout,
                      int32_t a, int32_t b) {
    int32_t p[16] = {a, b};
    ck_assert(x->shape[1] >= 2 && x->shape[1] <= 16);
    kvf_tensor *pos = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){x->shape[1]}, p);
    kvf_tensor *y = kvf_rope(ctx, x, pos, freq, layout);
    ck_assert_msg(y, "%s", kvf_error_message());
    double dot = 0;
    for (int64_t i = 0; i < x->shape[3]; i++)
        dot += kvf_tensor_get(y, (int64_t[]){0, 0, 0, i}) * kvf_tensor_get(y, (int64_t[]){0, 1, 0, i});
    return dot;
}

/* Rotating by pos then by −pos gives x back; q·k after RoPE depends on the relative
 * position only. */
START_TEST(rope_roundtrip_and_relative) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    const int64_t T = 6, H = 2, D = 8;
    kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F64, 4, (int64_t[]){1, T, H, D});
    kvf_rng_fill_normal(&rng, x, 0, 1);
    kvf_tensor *freq = kvf_rope_inv_freq(ctx, D, 10000.0);
    int32_t p[T], m[T];
    for (int t = 0; t < T; t++) {
        p[t] = 37 * t - 11;
        m[t] = -p[t];
    }
    kvf_tensor *pp = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){T}, p);
    kvf_tensor *pm = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){T}, m);
    for (int l = 0; l < 2; l++) {
        kvf_rope_layout layout = l ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF;
        kvf_tensor *y = kvf_rope(ctx, kvf_rope(ctx, x, pp, freq, layout), pm, freq, layout);
        ck_assert_ptr_nonnull(y);
        for (int64_t i = 0; i < kvf_tensor_numel(x); i++)
            ck_assert_double_eq_tol(kvf_tensor_get_flat(y, i), kvf_tensor_get_flat(x, i), 1e-12);
        /* relative positions: <R(a)·x[t=0], R(b)·x[t=1]> depends only on a − b */
        double ref = rel_dot(ctx, x, freq, layout, 5, 2);
        ck_assert_double_eq_tol(rel_dot(ctx, x, freq, layout, 20003, 20000), ref, 1e-9);
        ck_assert_double_eq_tol(rel_dot(ctx, x, freq, layout, -7, -10), ref, 1e-9);
    }
    kvf_ctx_free(ctx);
}
END_TEST

#define EXPECT_ERR(expr, ...)                                                                \
    do {                                                                                     \
        kvf_error_clear();                                                                   \
        ck_assert_ptr_null(expr);                                                            \
        const char *want_[] = {__VA_ARGS__};                                                 \
        for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)                       \
            ck_assert_msg(strstr(kvf_error_message(), want_[i_]), "message '%s' lacks '%s'", \
                          kvf_error_message(), want_[i_]);                                   \
    } while (0)

START_TEST(rope_errors) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 4, (int64_t[]){2, 5, 3, 8});
    kvf_tensor *f4 = kvf_rope_inv_freq(ctx, 8, 10000.0);
    kvf_tensor *f5 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, (int64_t[]){5});
    kvf_tensor *fh = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){2, 4});
    kvf_tensor *f64 = kvf_tensor_zeros(ctx, KVF_DTYPE_F64, 1, (int64_t[]){4});
    kvf_tensor *fid = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 1, (int64_t[]){4});
    kvf_tensor *pos4 = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 1, (int64_t[]){4});
    kvf_tensor *posf = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, (int64_t[]){5});
    kvf_tensor *x3 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 3, (int64_t[]){5, 3, 8});
    kvf_tensor *xi = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 4, (int64_t[]){2, 5, 3, 8});
    EXPECT_ERR(kvf_rope(ctx, x3, NULL, f4, KVF_ROPE_HALF), "rope", "[5, 3, 8] f32");
    EXPECT_ERR(kvf_rope(ctx, x, NULL, f5, KVF_ROPE_HALF), "rope", "[5] f32", "[2, 5, 3, 8] f32");
    EXPECT_ERR(kvf_rope(ctx, x, NULL, fh, KVF_ROPE_HALF), "rope", "[2, 4] f32");
    EXPECT_ERR(kvf_rope(ctx, x, NULL, f64, KVF_ROPE_HALF), "rope", "f64");
    EXPECT_ERR(kvf_rope(ctx, x, NULL, fid, KVF_ROPE_HALF), "rope", "inv_freq", "i32");
    EXPECT_ERR(kvf_rope(ctx, x, pos4, f4, KVF_ROPE_HALF), "rope", "pos", "[4] i32");
    EXPECT_ERR(kvf_rope(ctx, x, posf, f4, KVF_ROPE_HALF), "rope", "pos", "f32");
    EXPECT_ERR(kvf_rope(ctx, xi, NULL, f4, KVF_ROPE_HALF), "rope", "i32");
    EXPECT_ERR(kvf_rope(ctx, x, NULL, f4, (kvf_rope_layout)7), "rope", "layout");
    EXPECT_ERR(kvf_rope(ctx, NULL, NULL, f4, KVF_ROPE_HALF), "rope");
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

int main(void) {
    kvf_rng_init(&rng, 7);
    Suite *s = suite_create("ops_rope");
    TCase *tc = tcase_create("rope");
    tcase_add_test(tc, rope_grad_layouts);
    tcase_add_test(tc, rope_grad_inplace);
    tcase_add_test(tc, rope_grad_inplace_at);
    tcase_add_test(tc, rope_inplace_at_matches_rope);
    tcase_add_test(tc, rope_grad_partial);
    tcase_add_test(tc, rope_grad_per_head);
    tcase_add_test(tc, rope_grad_positions_strided);
    tcase_add_test(tc, rope_forward_reference);
    tcase_add_test(tc, rope_inv_freq_table);
    tcase_add_test(tc, rope_roundtrip_and_relative);
    tcase_add_test(tc, rope_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
