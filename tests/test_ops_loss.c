/* Cross-entropy and embedding: gradient checks (ignored targets, all targets ignored,
 * 3-D and strided logits, repeated ids), forward values against naive loops, bad inputs
 * (dtypes, shapes, out-of-range targets and ids) and thread-count independence of the
 * embedding scatter-add. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static kvf_rng rng;

#define IGNORE (-100)

/* The op failed (NULL) with a message that names it. */
#define ASSERT_FAILS(expr, opname)                                                          \
    do {                                                                                    \
        kvf_tensor *r_ = (expr);                                                            \
        ck_assert_ptr_null(r_);                                                             \
        ck_assert_msg(strstr(kvf_error_message(), opname) != NULL,                          \
                      "message '%s' should name %s", kvf_error_message(), opname);          \
    } while (0)

#define ASSERT_MSG_HAS(text)                                                                \
    ck_assert_msg(strstr(kvf_error_message(), text) != NULL, "message '%s' should contain '%s'", \
                  kvf_error_message(), text)

static kvf_tensor *tensor_of(kvf_ctx *ctx, kvf_dtype dt, int nd, const int64_t *shape,
                             const double *v) {
    kvf_tensor *t = kvf_tensor_new(ctx, dt, nd, shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t, i, v[i]);
    return t;
}

static kvf_tensor *ids_of(kvf_ctx *ctx, int nd, const int64_t *shape, const int32_t *v) {
    kvf_tensor *t = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, nd, shape, v);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* ---- cross-entropy ------------------------------------------------------------------ */

struct ce_case {
    const int *perm; /* permute the logits input first, or NULL */
    int64_t ignore_index;
    bool inplace; /* kvf_cross_entropy_inplace */
};

static kvf_tensor *f_ce(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    struct ce_case *c = ud;
    kvf_tensor *logits = c->perm ? kvf_permute(ctx, in[0], c->perm) : in[0];
    return c->inplace ? kvf_cross_entropy_inplace(ctx, logits, in[1], c->ignore_index)
                      : kvf_cross_entropy(ctx, logits, in[1], c->ignore_index);
}

/* logits of shape ls (before the permutation), targets of shape ts over V classes; rows
 * listed in ignored get the ignore index. */
static bool check_ce(const char *name, struct ce_case *c, int lnd, const int64_t *ls, int tnd,
                     const int64_t *ts, int64_t V, const int *ignored, int n_ignored) {
    struct gc_input in[2];
    gc_input_randn(&in[0], &rng, 1.5, lnd, ls);
    gc_input_ids(&in[1], &rng, V, tnd, ts);
    for (int i = 0; i < n_ignored; i++) in[1].ids[ignored[i]] = (int32_t)c->ignore_index;
    bool ok = kvf_gradcheck(name, f_ce, c, 2, in, NULL); /* default tolerances */
    gc_inputs_free(2, in);
    return ok;
}

START_TEST(cross_entropy_grad) {
    for (int ip = 0; ip < 2; ip++) {
    struct ce_case c = {.ignore_index = IGNORE, .inplace = ip};
    ck_assert(check_ce("ce 2-D", &c, 2, (int64_t[]){5, 7}, 1, (int64_t[]){5}, 7, NULL, 0));
    ck_assert(check_ce("ce 2-D ignored rows", &c, 2, (int64_t[]){6, 11}, 1, (int64_t[]){6}, 11,
                       (int[]){1, 4}, 2));
    ck_assert(check_ce("ce all ignored", &c, 2, (int64_t[]){3, 5}, 1, (int64_t[]){3}, 5,
                       (int[]){0, 1, 2}, 3));
    ck_assert(check_ce("ce single row", &c, 2, (int64_t[]){1, 9}, 1, (int64_t[]){1}, 9, NULL, 0));
    ck_assert(check_ce("ce 3-D", &c, 3, (int64_t[]){2, 3, 13}, 2, (int64_t[]){2, 3}, 13,
                       (int[]){2}, 1));
    /* an ignore index that is also a valid class (a padding token) */
    c.ignore_index = 0;
    ck_assert(check_ce("ce ignore class 0", &c, 2, (int64_t[]){7, 3}, 1, (int64_t[]){7}, 3, NULL,
                       0));
    /* [V, B, T] stored, permuted to [B, T, V]: the class dim is strided */
    static const int perm[3] = {1, 2, 0};
    c.perm = perm;
    c.ignore_index = IGNORE;
    ck_assert(check_ce("ce strided", &c, 3, (int64_t[]){5, 2, 3}, 2, (int64_t[]){2, 3}, 5,
                       (int[]){4}, 1));
    }
}
END_TEST

/* One backward of loss = CE(logits)·1 [+ Σ logits·w, recorded before or after the CE]
 * in dtype dt; the logits' gradient (N·V values) to out. inplace: kvf_cross_entropy_inplace
 * with gradient sharing on; else kvf_cross_entropy with sharing off (the plain path). */
enum ce_other { CE_ALONE, CE_OTHER_BEFORE, CE_OTHER_AFTER };
static void ce_grads(kvf_dtype dt, bool inplace, enum ce_other other, int64_t N, int64_t V,
                     const double *x, const double *w, const int32_t *tg, double *out) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad_sharing(ctx, inplace);
    kvf_tensor *lg = tensor_of(ctx, dt, 2, (int64_t[]){N, V}, x);
    lg->requires_grad = true;
    kvf_tensor *wt = tensor_of(ctx, dt, 2, (int64_t[]){N, V}, w);
    kvf_tensor *t = ids_of(ctx, 1, &N, tg);
    kvf_tensor *extra = other == CE_OTHER_BEFORE ? kvf_sum(ctx, kvf_mul(ctx, lg, wt), -1, false) : NULL;
    kvf_tensor *loss = inplace ? kvf_cross_entropy_inplace(ctx, lg, t, IGNORE)
                               : kvf_cross_entropy(ctx, lg, t, IGNORE);
    if (other == CE_OTHER_AFTER) extra = kvf_sum(ctx, kvf_mul(ctx, lg, wt), -1, false);
    ck_assert_ptr_nonnull(loss);
    if (extra) {
        extra = kvf_sum(ctx, extra, 0, false);
        loss = kvf_add(ctx, kvf_cast(ctx, loss, dt), kvf_reshape(ctx, extra, 1, (int64_t[]){1}));
    }
    ck_assert_msg(loss && kvf_backward(ctx, loss) == KVF_OK, "%s", kvf_error_message());
    ck_assert_ptr_nonnull(lg->grad);
    for (int64_t i = 0; i < N * V; i++) out[i] = kvf_tensor_get_flat(lg->grad, i);
    kvf_ctx_free(ctx);
}

/* The in-place backward writes exactly what the accumulating one adds into a zeroed
 * buffer (ignored rows 0, all-ignored all 0), and a second consumer of the logits still
 * gets its part, whether it ran before the CE's rule (then the CE accumulates) or after
 * (then it adds into the logits-turned-gradient). */
START_TEST(cross_entropy_inplace_bitwise) {
    enum { N = 6, V = 37 };
    double x[N * V], w[N * V], a[N * V], b[N * V];
    for (int i = 0; i < N * V; i++) {
        x[i] = 2.0 * kvf_rng_normal(&rng);
        w[i] = kvf_rng_normal(&rng);
    }
    int32_t tg[N] = {3, IGNORE, 36, 0, 17, 5}, none[N];
    for (int i = 0; i < N; i++) none[i] = IGNORE;
    kvf_dtype dts[2] = {KVF_DTYPE_F32, KVF_DTYPE_F64};
    for (int d = 0; d < 2; d++)
        for (int o = CE_ALONE; o <= CE_OTHER_AFTER; o++)
            for (int k = 0; k < 2; k++) {
                const int32_t *t = k ? none : tg;
                ce_grads(dts[d], false, (enum ce_other)o, N, V, x, w, t, a);
                ce_grads(dts[d], true, (enum ce_other)o, N, V, x, w, t, b);
                ck_assert_msg(memcmp(a, b, sizeof a) == 0, "%s other %d targets %d: in-place "
                              "gradient differs", kvf_dtype_name(dts[d]), o, k);
                if (o == CE_ALONE && k == 0)
                    for (int j = 0; j < V; j++) ck_assert(b[V + j] == 0.0); /* ignored row */
                if (o != CE_ALONE) /* the second consumer's part is there: not just the CE's */
                    ck_assert(b[V] == (d ? w[V] : (double)(float)w[V]));
            }
}
END_TEST

START_TEST(cross_entropy_forward) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t N = 7, V = 10;
    double x[70];
    int32_t t[7];
    for (int i = 0; i < N * V; i++) x[i] = 2.0 * kvf_rng_normal(&rng);
    for (int i = 0; i < N; i++) t[i] = (int32_t)kvf_rng_below(&rng, (uint64_t)V);
    t[2] = t[5] = IGNORE;
    x[3 * V + 1] = 500.0; /* large logits: the row max is subtracted */
    double want = 0;
    int cnt = 0;
    for (int i = 0; i < N; i++) {
        if (t[i] == IGNORE) continue;
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, x[i * V + j]);
        for (int j = 0; j < V; j++) s += exp(x[i * V + j] - m);
        want += m + log(s) - x[i * V + t[i]];
        cnt++;
    }
    want /= cnt;
    for (int d = 0; d < 2; d++) {
        kvf_dtype dt = d ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
        kvf_tensor *loss = kvf_cross_entropy(ctx, tensor_of(ctx, dt, 2, (int64_t[]){N, V}, x),
                                             ids_of(ctx, 1, &N, t), IGNORE);
        ck_assert_ptr_nonnull(loss);
        ck_assert_int_eq(loss->ndim, 1);
        ck_assert_int_eq(loss->shape[0], 1);
        ck_assert_int_eq(loss->dtype, dt);
        double got = kvf_tensor_get_flat(loss, 0);
        ck_assert_msg(fabs(got - want) <= (d ? 1e-12 : 1e-5) * (1 + fabs(want)),
                      "cross_entropy = %.10g, want %.10g", got, want);
    }
    /* every target ignored: the loss is 0 and the gradient too */
    int32_t all[7] = {IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE};
    kvf_tensor *lg = tensor_of(ctx, KVF_DTYPE_F32, 2, (int64_t[]){N, V}, x);
    lg->requires_grad = true;
    kvf_tensor *loss = kvf_cross_entropy(ctx, lg, ids_of(ctx, 1, &N, all), IGNORE);
    ck_assert_ptr_nonnull(loss);
    ck_assert(kvf_tensor_get_flat(loss, 0) == 0.0);
    ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
    for (int64_t i = 0; i < N * V; i++) ck_assert(kvf_tensor_get_flat(lg->grad, i) == 0.0);
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(cross_entropy_bad_inputs) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t N = 4, V = 5;
    kvf_tensor *lg = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){N, V});
    kvf_tensor *lg_i32 = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 2, (int64_t[]){N, V});
    kvf_tensor *lg_1d = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, &V);
    kvf_tensor *lg_empty = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){N, 0});
    kvf_tensor *t_ok = ids_of(ctx, 1, &N, (int32_t[]){0, 4, IGNORE, 2});
    kvf_tensor *t_f32 = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, &N);
    kvf_tensor *t_short = ids_of(ctx, 1, (int64_t[]){3}, (int32_t[]){0, 1, 2});
    kvf_tensor *t_2d = ids_of(ctx, 2, (int64_t[]){N, 1}, (int32_t[]){0, 1, 2, 3});

    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg_i32, t_ok, IGNORE), "cross_entropy");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    ASSERT_MSG_HAS("[4, 5] i32");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, t_f32, IGNORE), "cross_entropy");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, t_short, IGNORE), "cross_entropy");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_SHAPE);
    ASSERT_MSG_HAS("[3] i32");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, t_2d, IGNORE), "cross_entropy");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg_1d, t_ok, IGNORE), "cross_entropy");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg_empty, t_ok, IGNORE), "cross_entropy");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, NULL, t_ok, IGNORE), "cross_entropy");

    /* targets outside [0, V) that are not the ignore index: an error naming row and value */
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, ids_of(ctx, 1, &N, (int32_t[]){0, 1, 5, 2}), IGNORE),
                 "cross_entropy");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_ARG);
    ASSERT_MSG_HAS("row 2");
    ASSERT_MSG_HAS("is 5");
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, ids_of(ctx, 1, &N, (int32_t[]){0, -1, 1, 2}), IGNORE),
                 "cross_entropy");
    ASSERT_MSG_HAS("row 1");
    ASSERT_MSG_HAS("is -1");
    /* -100 is only special when it is the ignore index */
    kvf_error_clear();
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg, t_ok, -1), "cross_entropy");
    ASSERT_MSG_HAS("is -100");
    /* 3-D: the row is given as a multi-index too */
    kvf_error_clear();
    kvf_tensor *lg3 = kvf_tensor_zeros(ctx, KVF_DTYPE_F64, 3, (int64_t[]){2, 2, V});
    ASSERT_FAILS(kvf_cross_entropy(ctx, lg3, ids_of(ctx, 2, (int64_t[]){2, 2}, (int32_t[]){0, 1, 2, 99}),
                                   IGNORE),
                 "cross_entropy");
    ASSERT_MSG_HAS("[1, 1]");
    ASSERT_MSG_HAS("is 99");

    kvf_error_clear();
    ck_assert_ptr_nonnull(kvf_cross_entropy(ctx, lg, t_ok, IGNORE));
    ck_assert(!kvf_error_pending());
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- embedding ---------------------------------------------------------------------- */

struct emb_case {
    bool transposed; /* weight stored [C, V] and transposed to [V, C] */
};

static kvf_tensor *f_emb(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    struct emb_case *c = ud;
    kvf_tensor *w = c->transposed ? kvf_transpose(ctx, in[0], 0, 1) : in[0];
    return kvf_embedding(ctx, w, in[1]);
}

static bool check_emb(const char *name, struct emb_case *c, int64_t V, int64_t C, int nd,
                      const int64_t *ids_shape, int64_t id_range) {
    struct gc_input in[2];
    gc_input_randn(&in[0], &rng, 1.0, 2, c->transposed ? (int64_t[]){C, V} : (int64_t[]){V, C});
    gc_input_ids(&in[1], &rng, id_range, nd, ids_shape);
    bool ok = kvf_gradcheck(name, f_emb, c, 2, in, NULL);
    gc_inputs_free(2, in);
    return ok;
}

static kvf_tensor *f_emb_twice(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    /* the same weight used by two lookups and by a product: contributions accumulate */
    kvf_tensor *a = kvf_embedding(ctx, in[0], in[1]);
    kvf_tensor *b = kvf_embedding(ctx, in[0], in[2]);
    return kvf_mul(ctx, a, b);
}

START_TEST(embedding_grad) {
    struct emb_case c = {false};
    /* ids drawn from 3 of 7 rows: many repeats, so the scatter-add accumulates */
    ck_assert(check_emb("embedding repeats", &c, 7, 5, 2, (int64_t[]){2, 6}, 3));
    ck_assert(check_emb("embedding 1-D", &c, 9, 3, 1, (int64_t[]){11}, 9));
    ck_assert(check_emb("embedding 3-D", &c, 6, 4, 3, (int64_t[]){2, 2, 3}, 6));
    c.transposed = true;
    ck_assert(check_emb("embedding strided weight", &c, 7, 5, 2, (int64_t[]){3, 4}, 7));

    struct gc_input in[3];
    gc_input_randn(&in[0], &rng, 1.0, 2, (int64_t[]){5, 3});
    gc_input_ids(&in[1], &rng, 5, 1, (int64_t[]){7});
    gc_input_ids(&in[2], &rng, 2, 1, (int64_t[]){7});
    ck_assert(kvf_gradcheck("embedding twice", f_emb_twice, NULL, 3, in, NULL));
    gc_inputs_free(3, in);
}
END_TEST

START_TEST(embedding_forward_backward_values) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t V = 6, C = 5;
    double w[30], g[3 * 4 * 5];
    int32_t ids[12] = {1, 5, 1, 0, 3, 3, 3, 1, 0, 5, 2, 1};
    for (int i = 0; i < V * C; i++) w[i] = kvf_rng_normal(&rng);
    for (int i = 0; i < 60; i++) g[i] = kvf_rng_normal(&rng);
    for (int d = 0; d < 2; d++) {
        kvf_dtype dt = d ? KVF_DTYPE_F64 : KVF_DTYPE_F32;
        kvf_tensor *wt = tensor_of(ctx, dt, 2, (int64_t[]){V, C}, w);
        wt->requires_grad = true;
        kvf_tensor *y = kvf_embedding(ctx, wt, ids_of(ctx, 2, (int64_t[]){3, 4}, ids));
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 3);
        ck_assert_int_eq(y->shape[0], 3);
        ck_assert_int_eq(y->shape[1], 4);
        ck_assert_int_eq(y->shape[2], C);
        for (int n = 0; n < 12; n++)
            for (int j = 0; j < C; j++)
                ck_assert(kvf_tensor_get_flat(y, n * C + j) == (double)(d ? w[ids[n] * C + j]
                                                                        : (float)w[ids[n] * C + j]));
        /* loss = Σ y·g: dW[v] = Σ_{n: ids[n] = v} g[n] */
        kvf_tensor *loss = kvf_sum(ctx, kvf_mul(ctx, y, tensor_of(ctx, dt, 3, y->shape, g)),
                                   KVF_ALL_AXES, false);
        ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
        for (int v = 0; v < V; v++)
            for (int j = 0; j < C; j++) {
                double want = 0;
                for (int n = 0; n < 12; n++)
                    if (ids[n] == v) want += g[n * C + j];
                double got = kvf_tensor_get_flat(wt->grad, v * C + j);
                ck_assert_msg(fabs(got - want) <= (d ? 1e-14 : 1e-6) * (1 + fabs(want)),
                              "dW[%d,%d] = %g, want %g", v, j, got, want);
            }
        kvf_ctx_reset(ctx);
    }
    kvf_ctx_free(ctx);
}
END_TEST

START_TEST(embedding_bad_inputs) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *w = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){6, 4});
    kvf_tensor *w_i32 = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 2, (int64_t[]){6, 4});
    kvf_tensor *w_3d = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 3, (int64_t[]){6, 4, 1});
    kvf_tensor *ids = ids_of(ctx, 1, (int64_t[]){3}, (int32_t[]){0, 5, 2});
    kvf_tensor *ids_f = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 1, (int64_t[]){3});
    kvf_tensor *ids_4d = kvf_tensor_zeros(ctx, KVF_DTYPE_I32, 4, (int64_t[]){1, 1, 1, 2});

    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w_i32, ids), "embedding");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w, ids_f), "embedding");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w_3d, ids), "embedding");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_SHAPE);
    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w, ids_4d), "embedding"); /* output would be 5-D */
    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, NULL, ids), "embedding");

    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w, ids_of(ctx, 2, (int64_t[]){2, 2}, (int32_t[]){0, 1, 6, 2})),
                 "embedding");
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_ARG);
    ASSERT_MSG_HAS("[1, 0]");
    ASSERT_MSG_HAS("is 6");
    kvf_error_clear();
    ASSERT_FAILS(kvf_embedding(ctx, w, ids_of(ctx, 1, (int64_t[]){2}, (int32_t[]){-3, 1})),
                 "embedding");
    ASSERT_MSG_HAS("is -3");

    kvf_error_clear();
    ck_assert_ptr_nonnull(kvf_embedding(ctx, w, ids));
    ck_assert(!kvf_error_pending());
    kvf_ctx_free(ctx);
}
END_TEST

/* ---- parallel kernels: results do not depend on the thread count -------------------- */

/* Embedding + cross-entropy on shapes large enough for the OpenMP paths, ids with many
 * repeats; returns dW and the loss (malloc'd). */
static double *run_large(int threads, int64_t *n_out) {
    omp_set_num_threads(threads);
    kvf_rng r;
    kvf_rng_init(&r, 11);
    int64_t V = 50, C = 200, N = 400;
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *w = kvf_tensor_new(ctx, KVF_DTYPE_F32, 2, (int64_t[]){V, C});
    kvf_rng_fill_normal(&r, w, 0.0, 1.0);
    w->requires_grad = true;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N), *tg = malloc(sizeof(int32_t) * (size_t)N);
    for (int64_t i = 0; i < N; i++) {
        ids[i] = (int32_t)kvf_rng_below(&r, 7); /* 7 distinct rows: heavy repeats */
        tg[i] = i % 13 == 0 ? IGNORE : (int32_t)kvf_rng_below(&r, (uint64_t)C);
    }
    kvf_tensor *x = kvf_embedding(ctx, w, ids_of(ctx, 2, (int64_t[]){20, 20}, ids));
    kvf_tensor *loss = kvf_cross_entropy(ctx, x, ids_of(ctx, 2, (int64_t[]){20, 20}, tg), IGNORE);
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
    *n_out = V * C + 1;
    double *out = malloc(sizeof(double) * (size_t)*n_out);
    for (int64_t i = 0; i < V * C; i++) out[i] = kvf_tensor_get_flat(w->grad, i);
    out[V * C] = kvf_tensor_get_flat(loss, 0);
    free(ids);
    free(tg);
    kvf_ctx_free(ctx);
    return out;
}

START_TEST(thread_count_independent) {
    int saved = omp_get_max_threads();
    int64_t n1, n5;
    double *one = run_large(1, &n1), *many = run_large(5, &n5);
    ck_assert_int_eq(n1, n5);
    ck_assert_msg(memcmp(one, many, sizeof(double) * (size_t)n1) == 0,
                  "embedding/cross-entropy results differ between 1 and 5 threads");
    free(one);
    free(many);
    omp_set_num_threads(saved);
}
END_TEST

int main(void) {
    kvf_rng_init(&rng, 777);
    Suite *s = suite_create("ops_loss");
    TCase *tc = tcase_create("loss");
    tcase_add_test(tc, cross_entropy_grad);
    tcase_add_test(tc, cross_entropy_inplace_bitwise);
    tcase_add_test(tc, cross_entropy_forward);
    tcase_add_test(tc, cross_entropy_bad_inputs);
    tcase_add_test(tc, embedding_grad);
    tcase_add_test(tc, embedding_forward_backward_values);
    tcase_add_test(tc, embedding_bad_inputs);
    tcase_add_test(tc, thread_count_independent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
