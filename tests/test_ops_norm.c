/* Softmax, RMSNorm and LayerNorm: gradient checks on odd shapes for every option (weight
 * and bias present or not, 2-D / 3-D / strided inputs), forward values against naive
 * loops, bad inputs, and thread-count independence of the row-reduced gradients. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static kvf_rng rng;

/* ---- helpers ------------------------------------------------------------------------ */

static kvf_tensor *tensor_of(kvf_ctx *ctx, kvf_dtype dt, int nd, const int64_t *shape,
                             const double *v) {
    kvf_tensor *t = kvf_tensor_new(ctx, dt, nd, shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t, i, v[i]);
    return t;
}

static double *randn(int64_t n, double std) {
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = std * kvf_rng_normal(&rng);
    return v;
}

/* The op failed (NULL) with a message that names it. */
#define ASSERT_FAILS(expr, opname)                                                          \
    do {                                                                                    \
        kvf_tensor *r_ = (expr);                                                            \
        ck_assert_ptr_null(r_);                                                             \
        ck_assert_msg(strstr(kvf_error_message(), opname) != NULL,                          \
                      "message '%s' should name %s", kvf_error_message(), opname);          \
    } while (0)

/* ---- what the gradient checks run --------------------------------------------------- */

enum norm_op { OP_SOFTMAX, OP_RMSNORM, OP_LAYERNORM };

struct norm_case {
    enum norm_op op;
    bool w, b;       /* inputs in[1] (w) and in[1 or 2] (b) are present */
    const int *perm; /* permute x before the op (non-contiguous input), or NULL */
    double eps;
};

static kvf_tensor *f_norm(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    struct norm_case *c = ud;
    kvf_tensor *x = c->perm ? kvf_permute(ctx, in[0], c->perm) : in[0];
    kvf_tensor *w = c->w ? in[1] : NULL, *b = c->b ? in[c->w ? 2 : 1] : NULL;
    switch (c->op) {
    case OP_SOFTMAX: return kvf_softmax(ctx, x);
    case OP_RMSNORM: return kvf_rmsnorm(ctx, x, w, c->eps);
    default: return kvf_layernorm(ctx, x, w, b, c->eps);
    }
}

/* Gradcheck one case: x with shape xs (before the permutation), parameters of size C. */
static bool check_case(const char *name, struct norm_case *c, int nd, const int64_t *xs,
                       int64_t C, double std, bool x_no_grad) {
    struct gc_input in[3];
    int n = 1;
    gc_input_randn(&in[0], &rng, std, nd, xs);
    in[0].no_grad = x_no_grad;
    if (c->w) {
        gc_input_randn(&in[n], &rng, 1.0, 1, &C);
        for (int64_t i = 0; i < C; i++) in[n].data[i] += 1.0; /* weights around 1 */
        n++;
    }
    if (c->b) gc_input_randn(&in[n++], &rng, 1.0, 1, &C);
    bool ok = kvf_gradcheck(name, f_norm, c, n, in, NULL);
    gc_inputs_free(n, in);
    return ok;
}

/* ---- softmax ------------------------------------------------------------------------ */

START_TEST(softmax_grad) {
    static const int perm[3] = {1, 2, 0}; /* [5, 2, 3] → [2, 3, 5], last dim strided */
    struct norm_case c = {.op = OP_SOFTMAX};
    ck_assert(check_case("softmax 2-D", &c, 2, (int64_t[]){3, 7}, 7, 0.5, false));
    ck_assert(check_case("softmax 3-D", &c, 3, (int64_t[]){2, 3, 5}, 5, 0.5, false));
    ck_assert(check_case("softmax 1-D", &c, 1, (int64_t[]){11}, 11, 0.5, false));
    ck_assert(check_case("softmax single class", &c, 2, (int64_t[]){3, 1}, 1, 0.5, false));
    c.perm = perm;
    ck_assert(check_case("softmax strided", &c, 3, (int64_t[]){5, 2, 3}, 5, 0.5, false));
}
END_TEST

START_TEST(softmax_forward) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    for (int d = 0; d < 2; d++) {
        kvf_dtype dt = d ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
        int64_t N = 4, C = 9;
        double *x = randn(N * C, 3.0);
        x[5] = 800.0; /* a huge logit: the max is subtracted, so no overflow */
        x[C + 2] = -900.0;
        kvf_tensor *y = kvf_softmax(ctx, tensor_of(ctx, dt, 2, (int64_t[]){N, C}, x));
        ck_assert_ptr_nonnull(y);
        for (int64_t i = 0; i < N; i++) {
            double m = -INFINITY, s = 0;
            for (int64_t j = 0; j < C; j++) m = fmax(m, x[i * C + j]);
            for (int64_t j = 0; j < C; j++) s += exp(x[i * C + j] - m);
            for (int64_t j = 0; j < C; j++) {
                double want = exp(x[i * C + j] - m) / s, got = kvf_tensor_get_flat(y, i * C + j);
                ck_assert_msg(isfinite(got) && fabs(got - want) <= (d ? 1e-14 : 1e-6),
                              "softmax[%lld,%lld] = %g, want %g", (long long)i, (long long)j, got,
                              want);
            }
        }
        free(x);
    }
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- RMSNorm ------------------------------------------------------------------------ */

START_TEST(rmsnorm_grad) {
    static const int perm[3] = {1, 2, 0};
    for (int w = 0; w < 2; w++) {
        struct norm_case c = {.op = OP_RMSNORM, .w = w, .eps = 1e-5};
        ck_assert_msg(check_case("rmsnorm 2-D", &c, 2, (int64_t[]){4, 7}, 7, 1.0, false),
                      "w=%d", w);
        ck_assert_msg(check_case("rmsnorm 3-D", &c, 3, (int64_t[]){2, 3, 9}, 9, 1.0, false),
                      "w=%d", w);
        c.perm = perm;
        ck_assert_msg(check_case("rmsnorm strided", &c, 3, (int64_t[]){5, 2, 3}, 5, 1.0, false),
                      "w=%d", w);
    }
    /* only the weight is differentiated (x is data) */
    struct norm_case c = {.op = OP_RMSNORM, .w = true, .eps = 1e-6};
    ck_assert(check_case("rmsnorm dw only", &c, 2, (int64_t[]){6, 5}, 5, 1.0, true));
    /* a large eps makes the rstd term matter */
    c.eps = 0.5;
    ck_assert(check_case("rmsnorm eps 0.5", &c, 2, (int64_t[]){3, 5}, 5, 1.0, false));
}
END_TEST

START_TEST(rmsnorm_forward) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t N = 5, C = 13;
    double eps = 1e-5, *x = randn(N * C, 2.0), *w = randn(C, 1.0);
    for (int d = 0; d < 2; d++)
        for (int hw = 0; hw < 2; hw++) {
            kvf_dtype dt = d ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
            kvf_tensor *y = kvf_rmsnorm(ctx, tensor_of(ctx, dt, 2, (int64_t[]){N, C}, x),
                                        hw ? tensor_of(ctx, dt, 1, &C, w) : NULL, eps);
            ck_assert_ptr_nonnull(y);
            ck_assert_int_eq(y->dtype, dt);
            for (int64_t i = 0; i < N; i++) {
                double ss = 0;
                for (int64_t j = 0; j < C; j++) ss += x[i * C + j] * x[i * C + j];
                double r = 1.0 / sqrt(ss / C + eps);
                for (int64_t j = 0; j < C; j++) {
                    double want = x[i * C + j] * r * (hw ? w[j] : 1.0);
                    double got = kvf_tensor_get_flat(y, i * C + j);
                    ck_assert_msg(fabs(got - want) <= (d ? 1e-13 : 1e-5) * (1 + fabs(want)),
                                  "rmsnorm[%lld,%lld] = %g, want %g", (long long)i, (long long)j,
                                  got, want);
                }
            }
        }
    free(x);
    free(w);
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- LayerNorm ---------------------------------------------------------------------- */

START_TEST(layernorm_grad) {
    static const int perm[3] = {1, 2, 0};
    for (int opt = 0; opt < 4; opt++) {
        struct norm_case c = {.op = OP_LAYERNORM, .w = opt & 1, .b = opt & 2, .eps = 1e-5};
        ck_assert_msg(check_case("layernorm 2-D", &c, 2, (int64_t[]){4, 7}, 7, 1.0, false),
                      "w=%d b=%d", c.w, c.b);
        ck_assert_msg(check_case("layernorm 3-D", &c, 3, (int64_t[]){2, 3, 9}, 9, 1.0, false),
                      "w=%d b=%d", c.w, c.b);
        c.perm = perm;
        ck_assert_msg(check_case("layernorm strided", &c, 3, (int64_t[]){5, 2, 3}, 5, 1.0, false),
                      "w=%d b=%d", c.w, c.b);
    }
    /* only the parameters are differentiated */
    struct norm_case c = {.op = OP_LAYERNORM, .w = true, .b = true, .eps = 1e-5};
    ck_assert(check_case("layernorm dw db only", &c, 2, (int64_t[]){6, 5}, 5, 1.0, true));
    c.eps = 0.5;
    ck_assert(check_case("layernorm eps 0.5", &c, 2, (int64_t[]){3, 5}, 5, 1.0, false));
}
END_TEST

START_TEST(layernorm_forward) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t N = 6, C = 11;
    double eps = 1e-5, *x = randn(N * C, 2.0), *w = randn(C, 1.0), *b = randn(C, 1.0);
    for (int i = 0; i < N * C; i++) x[i] += 3.0; /* a mean far from zero */
    for (int d = 0; d < 2; d++)
        for (int opt = 0; opt < 4; opt++) {
            kvf_dtype dt = d ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
            bool hw = opt & 1, hb = opt & 2;
            kvf_tensor *y = kvf_layernorm(ctx, tensor_of(ctx, dt, 2, (int64_t[]){N, C}, x),
                                          hw ? tensor_of(ctx, dt, 1, &C, w) : NULL,
                                          hb ? tensor_of(ctx, dt, 1, &C, b) : NULL, eps);
            ck_assert_ptr_nonnull(y);
            for (int64_t i = 0; i < N; i++) {
                double mu = 0, var = 0;
                for (int64_t j = 0; j < C; j++) mu += x[i * C + j] / C;
                for (int64_t j = 0; j < C; j++) var += (x[i * C + j] - mu) * (x[i * C + j] - mu) / C;
                for (int64_t j = 0; j < C; j++) {
                    double want = (x[i * C + j] - mu) / sqrt(var + eps) * (hw ? w[j] : 1.0) +
                                  (hb ? b[j] : 0.0);
                    double got = kvf_tensor_get_flat(y, i * C + j);
                    ck_assert_msg(fabs(got - want) <= (d ? 1e-12 : 1e-5) * (1 + fabs(want)),
                                  "layernorm[%lld,%lld] w=%d b=%d = %g, want %g", (long long)i,
                                  (long long)j, hw, hb, got, want);
                }
            }
        }
    free(x);
    free(w);
    free(b);
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- bad inputs --------------------------------------------------------------------- */

START_TEST(bad_inputs) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t xs[2] = {3, 5};
    kvf_tensor *x = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, xs);
    kvf_tensor *x64 = kvf_tensor_zeros(ctx, KVF_DTYPE_F64, 2, xs);
    kvf_tensor *xi = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 2, xs);
    kvf_tensor *w5 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, (int64_t[]){5});
    kvf_tensor *w4 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, (int64_t[]){4});
    kvf_tensor *w15 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){1, 5});

    kvf_error_clear();
    ASSERT_FAILS(kvf_softmax(ctx, xi), "softmax");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_softmax(ctx, NULL), "softmax");

    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, x, w4, 1e-5), "rmsnorm"); /* w does not match C */
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "[4] f32"));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "[3, 5] f32"));
    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, x, w15, 1e-5), "rmsnorm"); /* w must be 1-D */
    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, x64, w5, 1e-5), "rmsnorm"); /* dtypes differ */
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, xi, NULL, 1e-5), "rmsnorm");
    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, x, NULL, -1.0), "rmsnorm");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_ARG);
    kvf_error_clear();
    ASSERT_FAILS(kvf_rmsnorm(ctx, x, NULL, NAN), "rmsnorm");

    kvf_error_clear();
    ASSERT_FAILS(kvf_layernorm(ctx, x, w5, w4, 1e-5), "layernorm"); /* b does not match */
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_SHAPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_layernorm(ctx, x, w4, NULL, 1e-5), "layernorm");
    kvf_error_clear();
    ASSERT_FAILS(kvf_layernorm(ctx, x, NULL, xi, 1e-5), "layernorm"); /* i32 bias */
    kvf_error_clear();
    ASSERT_FAILS(kvf_layernorm(ctx, xi, NULL, NULL, 1e-5), "layernorm");
    kvf_error_clear();
    ASSERT_FAILS(kvf_layernorm(ctx, x, NULL, NULL, INFINITY), "layernorm");

    /* a failed op leaves the context usable */
    kvf_error_clear();
    ck_assert_ptr_nonnull(kvf_layernorm(ctx, x, w5, w5, 1e-5));
    ck_assert(!kvf_error_pending());
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- parallel kernels: results do not depend on the thread count -------------------- */

/* Forward and backward of a norm on a shape large enough for the OpenMP paths; returns
 * y, dx, dw, db (flattened, malloc'd) for comparison. */
static void run_large(enum norm_op op, int threads, double **out) {
    omp_set_num_threads(threads);
    kvf_rng r;
    kvf_rng_init(&r, 7);
    int64_t N = 301, C = 133; /* N·C > KVF_CPU_PAR_MIN, C not a multiple of the block */
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *x = kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){N, C});
    kvf_tensor *w = kvf_tensor_new(ctx, KVF_DTYPE_F32, 1, &C);
    kvf_tensor *b = kvf_tensor_new(ctx, KVF_DTYPE_F32, 1, &C);
    kvf_tensor *R = kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){N, C});
    kvf_rng_fill_normal(&r, x, 0.5, 1.0);
    kvf_rng_fill_normal(&r, w, 1.0, 0.3);
    kvf_rng_fill_normal(&r, b, 0.0, 0.3);
    kvf_rng_fill_normal(&r, R, 0.0, 1.0);
    x->requires_grad = w->requires_grad = b->requires_grad = true;
    kvf_tensor *y = op == OP_SOFTMAX   ? kvf_softmax(ctx, x)
                    : op == OP_RMSNORM ? kvf_rmsnorm(ctx, x, w, 1e-5)
                                       : kvf_layernorm(ctx, x, w, b, 1e-5);
    kvf_tensor *loss = kvf_sum(ctx, kvf_mul(ctx, y, R), KVF_ALL_AXES, false);
    ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
    kvf_tensor *res[4] = {y, x->grad, w->grad, b->grad};
    for (int k = 0; k < 4; k++) {
        out[k] = NULL;
        if (!res[k]) continue;
        int64_t n = kvf_tensor_numel(res[k]);
        out[k] = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) out[k][i] = kvf_tensor_get_flat(res[k], i);
    }
    kvf_ctx_free(ctx);
}

START_TEST(thread_count_independent) {
    int saved = omp_get_max_threads();
    for (int op = 0; op < 3; op++) {
        double *one[4], *many[4];
        run_large((enum norm_op)op, 1, one);
        run_large((enum norm_op)op, 5, many);
        int64_t sizes[4] = {301 * 133, 301 * 133, 133, 133};
        for (int k = 0; k < 4; k++) {
            ck_assert_msg((one[k] == NULL) == (many[k] == NULL), "op %d result %d", op, k);
            if (one[k])
                ck_assert_msg(memcmp(one[k], many[k], sizeof(double) * (size_t)sizes[k]) == 0,
                              "op %d result %d differs between 1 and 5 threads", op, k);
            free(one[k]);
            free(many[k]);
        }
    }
    omp_set_num_threads(saved);
}
END_TEST

int main(void) {
    kvf_rng_init(&rng, 4242);
    Suite *s = suite_create("ops_norm");
    TCase *tc = tcase_create("norm");
    tcase_add_test(tc, softmax_grad);
    tcase_add_test(tc, softmax_forward);
    tcase_add_test(tc, rmsnorm_grad);
    tcase_add_test(tc, rmsnorm_forward);
    tcase_add_test(tc, layernorm_grad);
    tcase_add_test(tc, layernorm_forward);
    tcase_add_test(tc, bad_inputs);
    tcase_add_test(tc, thread_count_independent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
