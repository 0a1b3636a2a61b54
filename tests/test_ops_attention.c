/* Attention: gradient checks for MHA, GQA, MQA, q/k dim != v dim, sliding windows,
 * non-causal, T < S (queries at the end), odd sizes, strided q/k/v views and operands used
 * twice; forward, lse and gradients against a naive reference (materialised scores, masked
 * softmax) on sizes that span several query blocks and key chunks; thread-count
 * independence (bitwise); bad input. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static kvf_rng rng;

enum attn_form {
    FORM_PLAIN,   /* in = q, k, v */
    FORM_FUSED,   /* in[0] = [B, T, Hq + 2·Hkv, D]: q, k, v are head slices of it */
    FORM_KV,      /* in = q, kv: k and v are the same tensor */
    FORM_SELF,    /* in[0] used as q, k and v */
    FORM_PERMUTE, /* q, k, v given as [B, T, D, H]: views with stride[3] != 1 */
    FORM_TAIL,    /* q is the last T rows of a [B, S, Hq, Dk] tensor (a row-sliced view) */
};

struct attn_case {
    const char *name;
    int64_t B, T, S, Hq, Hkv, Dk, Dv;
    bool causal;
    int64_t window;
    enum attn_form form;
};

static kvf_attn_cfg cfg_of(const struct attn_case *c) {
    return (kvf_attn_cfg){.scale = (float)(1.0 / sqrt((double)c->Dk)), .causal = c->causal,
                          .window = c->window};
}

static kvf_tensor *f_attn(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct attn_case *c = ud;
    kvf_attn_cfg cfg = cfg_of(c);
    switch (c->form) {
    case FORM_FUSED: {
        kvf_tensor *q = kvf_slice(ctx, in[0], 2, 0, c->Hq);
        kvf_tensor *k = kvf_slice(ctx, in[0], 2, c->Hq, c->Hkv);
        kvf_tensor *v = kvf_slice(ctx, in[0], 2, c->Hq + c->Hkv, c->Hkv);
        return kvf_attention(ctx, q, k, v, &cfg);
    }
    case FORM_KV: return kvf_attention(ctx, in[0], in[1], in[1], &cfg);
    case FORM_SELF: return kvf_attention(ctx, in[0], in[0], in[0], &cfg);
    case FORM_PERMUTE: {
        int perm[4] = {0, 1, 3, 2};
        return kvf_attention(ctx, kvf_permute(ctx, in[0], perm), kvf_permute(ctx, in[1], perm),
                             kvf_permute(ctx, in[2], perm), &cfg);
    }
    case FORM_TAIL:
        return kvf_attention(ctx, kvf_slice(ctx, in[0], 1, c->S - c->T, c->T), in[1], in[2], &cfg);
    default: return kvf_attention(ctx, in[0], in[1], in[2], &cfg);
    }
}

static bool check_attn(const struct attn_case *c) {
    struct gc_input in[3];
    int n = 3;
    switch (c->form) {
    case FORM_FUSED:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->T, c->Hq + 2 * c->Hkv, c->Dk});
        n = 1;
        break;
    case FORM_KV:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->T, c->Hq, c->Dk});
        gc_input_randn(&in[1], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hkv, c->Dk});
        n = 2;
        break;
    case FORM_SELF:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->T, c->Hq, c->Dk});
        n = 1;
        break;
    case FORM_PERMUTE:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->T, c->Dk, c->Hq});
        gc_input_randn(&in[1], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Dk, c->Hkv});
        gc_input_randn(&in[2], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Dv, c->Hkv});
        break;
    case FORM_TAIL:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hq, c->Dk});
        gc_input_randn(&in[1], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hkv, c->Dk});
        gc_input_randn(&in[2], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hkv, c->Dv});
        break;
    default:
        gc_input_randn(&in[0], &rng, 1.0, 4, (int64_t[]){c->B, c->T, c->Hq, c->Dk});
        gc_input_randn(&in[1], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hkv, c->Dk});
        gc_input_randn(&in[2], &rng, 1.0, 4, (int64_t[]){c->B, c->S, c->Hkv, c->Dv});
    }
    bool ok = kvf_gradcheck(c->name, f_attn, (void *)c, n, in, NULL);
    gc_inputs_free(n, in);
    return ok;
}

/* name, B, T, S, Hq, Hkv, Dk, Dv, causal, window, form */
static const struct attn_case grad_cases[] = {
    {"mha causal", 2, 5, 5, 3, 3, 4, 4, true, 0, FORM_PLAIN},
    {"mha non-causal", 1, 4, 6, 2, 2, 3, 3, false, 0, FORM_PLAIN},
    {"non-causal T > S", 2, 7, 3, 2, 1, 3, 2, false, 0, FORM_PLAIN},
    {"gqa 6/2", 1, 7, 7, 6, 2, 5, 5, true, 0, FORM_PLAIN},
    {"gqa 6/3", 2, 4, 6, 6, 3, 3, 3, true, 0, FORM_PLAIN},
    {"mqa", 2, 5, 5, 4, 1, 4, 4, true, 0, FORM_PLAIN},
    {"mla dk 7 dv 5", 1, 6, 6, 2, 2, 7, 5, true, 0, FORM_PLAIN},
    {"gqa dk != dv, T < S", 2, 7, 9, 4, 2, 7, 5, true, 0, FORM_PLAIN},
    {"T < S causal", 1, 3, 8, 2, 1, 4, 4, true, 0, FORM_PLAIN},
    {"window 3", 2, 7, 7, 2, 1, 4, 3, true, 3, FORM_PLAIN},
    {"window 1", 1, 5, 5, 2, 2, 3, 3, true, 1, FORM_PLAIN},
    {"window 4, T < S", 1, 6, 9, 3, 1, 5, 4, true, 4, FORM_PLAIN},
    {"window wider than S", 1, 4, 5, 2, 2, 3, 3, true, 50, FORM_PLAIN},
    {"T = 1 decode step", 2, 1, 6, 4, 2, 4, 3, true, 0, FORM_PLAIN},
    {"fused qkv slices", 2, 6, 6, 4, 2, 4, 4, true, 0, FORM_FUSED},
    {"fused qkv slices, window", 1, 7, 7, 3, 3, 3, 3, true, 2, FORM_FUSED},
    {"k is v", 1, 5, 7, 4, 2, 4, 4, true, 0, FORM_KV},
    {"q is k is v", 2, 5, 5, 2, 2, 3, 3, false, 0, FORM_SELF},
    {"permuted (stride[3] != 1)", 1, 5, 6, 4, 2, 3, 2, true, 0, FORM_PERMUTE},
    {"q rows sliced, T < S", 2, 4, 7, 2, 1, 3, 3, true, 0, FORM_TAIL},
};

START_TEST(attention_grad) {
    const struct attn_case *c = &grad_cases[_i];
    ck_assert_msg(check_attn(c), "%s", c->name);
}
END_TEST

/* ---- naive reference in double: scores materialised, masked softmax ---------------- */

struct ref_out {
    double *out, *lse, *dq, *dk, *dv;
};

static double at(const double *x, int64_t H, int64_t D, int64_t L, int64_t b, int64_t t,
                 int64_t h, int64_t j) {
    return x[((b * L + t) * H + h) * D + j];
}

static void naive(const struct attn_case *c, const double *q, const double *k, const double *v,
                  const double *R, struct ref_out *r) {
    const int64_t B = c->B, T = c->T, S = c->S, Hq = c->Hq, Hkv = c->Hkv, Dk = c->Dk, Dv = c->Dv;
    const double scale = (double)cfg_of(c).scale;
    double *P = malloc(sizeof(double) * (size_t)S), *dP = malloc(sizeof(double) * (size_t)S);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t g = h / (Hq / Hkv);
            for (int64_t t = 0; t < T; t++) {
                int64_t p = t + S - T;
                double mx = -INFINITY;
                for (int64_t s = 0; s < S; s++) {
                    bool vis = !c->causal || (s <= p && (c->window == 0 || s > p - c->window));
                    double sc = 0;
                    for (int64_t j = 0; j < Dk; j++)
                        sc += at(q, Hq, Dk, T, b, t, h, j) * at(k, Hkv, Dk, S, b, s, g, j);
                    P[s] = vis ? sc * scale : -INFINITY;
                    mx = fmax(mx, P[s]);
                }
                double sum = 0;
                for (int64_t s = 0; s < S; s++) sum += (P[s] = exp(P[s] - mx));
                for (int64_t s = 0; s < S; s++) P[s] /= sum;
                r->lse[(b * Hq + h) * T + t] = mx + log(sum);
                double *o = r->out + ((b * T + t) * Hq + h) * Dv;
                const double *dO = R + ((b * T + t) * Hq + h) * Dv;
                for (int64_t j = 0; j < Dv; j++) {
                    o[j] = 0;
                    for (int64_t s = 0; s < S; s++) o[j] += P[s] * at(v, Hkv, Dv, S, b, s, g, j);
                }
                /* backward of loss = Σ out·R */
                double delta = 0;
                for (int64_t s = 0; s < S; s++) {
                    dP[s] = 0;
                    for (int64_t j = 0; j < Dv; j++) dP[s] += dO[j] * at(v, Hkv, Dv, S, b, s, g, j);
                    delta += P[s] * dP[s];
                }
                for (int64_t s = 0; s < S; s++) {
                    double ds = P[s] * (dP[s] - delta) * scale;
                    for (int64_t j = 0; j < Dk; j++) {
                        r->dq[((b * T + t) * Hq + h) * Dk + j] += ds * at(k, Hkv, Dk, S, b, s, g, j);
                        r->dk[((b * S + s) * Hkv + g) * Dk + j] += ds * at(q, Hq, Dk, T, b, t, h, j);
                    }
                    for (int64_t j = 0; j < Dv; j++)
                        r->dv[((b * S + s) * Hkv + g) * Dv + j] += P[s] * dO[j];
                }
            }
        }
    free(P);
    free(dP);
}

static double *randn(int64_t n) {
    double *x = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = kvf_rng_normal(&rng);
    return x;
}

static kvf_tensor *leaf(kvf_ctx *ctx, kvf_dtype dt, const double *x, int64_t a, int64_t b,
                        int64_t c, int64_t d) {
    kvf_tensor *t = kvf_tensor_new(ctx, dt, 4, (int64_t[]){a, b, c, d});
    for (int64_t i = 0; i < a * b * c * d; i++) kvf_tensor_set_flat(t, i, x[i]);
    t->requires_grad = true;
    return t;
}

static double max_diff(const kvf_tensor *t, const double *ref, int64_t n, double *scale) {
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        m = fmax(m, fabs(kvf_tensor_get_flat(t, i) - ref[i]));
        s = fmax(s, fabs(ref[i]));
    }
    *scale = s;
    return m;
}

/* Forward, lse and all three gradients of loss = Σ out·R against the naive loops, in f64
 * and f32, on sizes that cross block and chunk boundaries. */
static const struct attn_case ref_cases[] = {
    {"ref causal window", 2, 100, 150, 4, 2, 16, 12, true, 37, FORM_PLAIN},
    {"ref causal long", 1, 300, 600, 2, 1, 8, 8, true, 0, FORM_PLAIN},
    {"ref non-causal", 1, 130, 600, 3, 3, 8, 5, false, 0, FORM_PLAIN},
    {"ref non-causal T > S", 2, 130, 70, 2, 1, 6, 9, false, 0, FORM_PLAIN},
    {"ref window 1", 1, 70, 70, 2, 2, 4, 4, true, 1, FORM_PLAIN},
};

START_TEST(attention_reference) {
    const struct attn_case *c = &ref_cases[_i];
    const int64_t nq = c->B * c->T * c->Hq * c->Dk, nk = c->B * c->S * c->Hkv * c->Dk;
    const int64_t nv = c->B * c->S * c->Hkv * c->Dv, no = c->B * c->T * c->Hq * c->Dv;
    const int64_t nl = c->B * c->Hq * c->T;
    double *q = randn(nq), *k = randn(nk), *v = randn(nv), *R = randn(no);
    struct ref_out r = {calloc((size_t)no, 8), calloc((size_t)nl, 8), calloc((size_t)nq, 8),
                        calloc((size_t)nk, 8), calloc((size_t)nv, 8)};
    naive(c, q, k, v, R, &r);
    for (int dt = 0; dt < 2; dt++) {
        kvf_dtype dtype = dt ? KVF_DTYPE_F32 : KVF_DTYPE_F64;
        double tol = dt ? 2e-5 : 1e-11;
        kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
        kvf_tensor *tq = leaf(ctx, dtype, q, c->B, c->T, c->Hq, c->Dk);
        kvf_tensor *tk = leaf(ctx, dtype, k, c->B, c->S, c->Hkv, c->Dk);
        kvf_tensor *tv = leaf(ctx, dtype, v, c->B, c->S, c->Hkv, c->Dv);
        kvf_tensor *tr = kvf_tensor_new(ctx, dtype, 4, (int64_t[]){c->B, c->T, c->Hq, c->Dv});
        for (int64_t i = 0; i < no; i++) kvf_tensor_set_flat(tr, i, R[i]);
        kvf_attn_cfg cfg = cfg_of(c);
        kvf_tensor *o = kvf_attention(ctx, tq, tk, tv, &cfg);
        ck_assert_msg(o, "%s", kvf_error_message());
        kvf_node *nd = kvf_tape_node(ctx, o->node);
        ck_assert_int_eq(nd->op, KVF_OP_ATTENTION);
        kvf_tensor *loss = kvf_sum(ctx, kvf_mul(ctx, o, tr), KVF_ALL_AXES, false);
        ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
        double s, d;
        d = max_diff(o, r.out, no, &s);
        ck_assert_msg(d <= tol * fmax(1, s), "%s dtype %d: out off by %g", c->name, dt, d);
        d = max_diff(nd->saved[0], r.lse, nl, &s);
        ck_assert_msg(d <= tol * fmax(1, s), "%s dtype %d: lse off by %g", c->name, dt, d);
        d = max_diff(tq->grad, r.dq, nq, &s);
        ck_assert_msg(d <= tol * fmax(1, s), "%s dtype %d: dq off by %g", c->name, dt, d);
        d = max_diff(tk->grad, r.dk, nk, &s);
        ck_assert_msg(d <= tol * fmax(1, s), "%s dtype %d: dk off by %g", c->name, dt, d);
        d = max_diff(tv->grad, r.dv, nv, &s);
        ck_assert_msg(d <= tol * fmax(1, s), "%s dtype %d: dv off by %g", c->name, dt, d);
        kvf_ctx_free(ctx);
    }
    free(q), free(k), free(v), free(R);
    free(r.out), free(r.lse), free(r.dq), free(r.dk), free(r.dv);
}
END_TEST

/* Same bits for out, dq, dk, dv whatever the thread count (no atomics, fixed orders). */
START_TEST(attention_thread_independent) {
    const struct attn_case c = {"threads", 2, 200, 260, 4, 2, 32, 24, true, 90, FORM_PLAIN};
    const int64_t nq = c.B * c.T * c.Hq * c.Dk, nk = c.B * c.S * c.Hkv * c.Dk;
    const int64_t nv = c.B * c.S * c.Hkv * c.Dv, no = c.B * c.T * c.Hq * c.Dv;
    double *q = randn(nq), *k = randn(nk), *v = randn(nv);
    float *res[2][4];
    int threads[2] = {1, 5};
    int saved = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(threads[run]);
        kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
        kvf_tensor *tq = leaf(ctx, KVF_DTYPE_F32, q, c.B, c.T, c.Hq, c.Dk);
        kvf_tensor *tk = leaf(ctx, KVF_DTYPE_F32, k, c.B, c.S, c.Hkv, c.Dk);
        kvf_tensor *tv = leaf(ctx, KVF_DTYPE_F32, v, c.B, c.S, c.Hkv, c.Dv);
        kvf_attn_cfg cfg = cfg_of(&c);
        kvf_tensor *o = kvf_attention(ctx, tq, tk, tv, &cfg);
        ck_assert_ptr_nonnull(o);
        ck_assert_int_eq(kvf_backward(ctx, kvf_sum(ctx, kvf_mul(ctx, o, o), KVF_ALL_AXES, false)),
                         KVF_OK);
        const kvf_tensor *ts[4] = {o, tq->grad, tk->grad, tv->grad};
        const int64_t ns[4] = {no, nq, nk, nv};
        for (int i = 0; i < 4; i++) {
            res[run][i] = malloc(sizeof(float) * (size_t)ns[i]);
            memcpy(res[run][i], kvf_tensor_data(ts[i]), sizeof(float) * (size_t)ns[i]);
        }
        kvf_ctx_free(ctx);
    }
    omp_set_num_threads(saved);
    const int64_t ns[4] = {no, nq, nk, nv};
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(memcmp(res[0][i], res[1][i], sizeof(float) * (size_t)ns[i]) == 0,
                      "tensor %d differs between 1 and 5 threads", i);
        free(res[0][i]);
        free(res[1][i]);
    }
    free(q), free(k), free(v);
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

static kvf_tensor *Z(kvf_ctx *ctx, kvf_dtype dt, int64_t a, int64_t b, int64_t c, int64_t d) {
    return kvf_tensor_zeros(ctx, dt, 4, (int64_t[]){a, b, c, d});
}

START_TEST(attention_errors) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    const kvf_dtype f = KVF_DTYPE_F32;
    kvf_tensor *q = Z(ctx, f, 2, 5, 6, 8), *k = Z(ctx, f, 2, 7, 2, 8), *v = Z(ctx, f, 2, 7, 2, 4);
    kvf_attn_cfg cfg = {.scale = 0.35f, .causal = true, .window = 0};
    kvf_tensor *ok = kvf_attention(ctx, q, k, v, &cfg);
    ck_assert_msg(ok, "%s", kvf_error_message());
    ck_assert_int_eq(ok->shape[3], 4);
    /* Hq not a multiple of Hkv */
    kvf_tensor *k4 = Z(ctx, f, 2, 7, 4, 8), *v4 = Z(ctx, f, 2, 7, 4, 4);
    EXPECT_ERR(kvf_attention(ctx, q, k4, v4, &cfg), "attention", "[2, 5, 6, 8] f32",
               "[2, 7, 4, 8] f32", "[2, 7, 4, 4] f32", "multiple");
    /* Dk mismatch */
    EXPECT_ERR(kvf_attention(ctx, q, Z(ctx, f, 2, 7, 2, 9), v, &cfg), "attention",
               "[2, 7, 2, 9] f32", "head dims");
    /* k / v disagree in S, heads or batch */
    EXPECT_ERR(kvf_attention(ctx, q, k, Z(ctx, f, 2, 6, 2, 4), &cfg), "attention", "[2, 6, 2, 4]");
    EXPECT_ERR(kvf_attention(ctx, q, k, Z(ctx, f, 2, 7, 3, 4), &cfg), "attention", "[2, 7, 3, 4]");
    EXPECT_ERR(kvf_attention(ctx, Z(ctx, f, 3, 5, 6, 8), k, v, &cfg), "attention", "[3, 5, 6, 8]");
    /* T > S when causal (fine when not) */
    kvf_tensor *qlong = Z(ctx, f, 2, 9, 6, 8);
    EXPECT_ERR(kvf_attention(ctx, qlong, k, v, &cfg), "attention", "[2, 9, 6, 8] f32", "T <= S");
    kvf_attn_cfg nc = {.scale = 0.35f, .causal = false};
    kvf_error_clear();
    ck_assert_ptr_nonnull(kvf_attention(ctx, qlong, k, v, &nc));
    /* dtypes */
    EXPECT_ERR(kvf_attention(ctx, q, Z(ctx, KVF_DTYPE_F64, 2, 7, 2, 8), v, &cfg), "attention",
               "f64", "dtype");
    EXPECT_ERR(kvf_attention(ctx, Z(ctx, KVF_DTYPE_I32, 2, 5, 6, 8), k, v, &cfg), "attention",
               "i32");
    /* window: negative, or without causal */
    kvf_attn_cfg neg = {.scale = 0.35f, .causal = true, .window = -2};
    EXPECT_ERR(kvf_attention(ctx, q, k, v, &neg), "attention", "window", "[2, 5, 6, 8] f32");
    kvf_attn_cfg wnc = {.scale = 0.35f, .causal = false, .window = 3};
    EXPECT_ERR(kvf_attention(ctx, q, k, v, &wnc), "attention", "window", "causal");
    /* scale, rank, missing cfg, no keys */
    kvf_attn_cfg bad_scale = {.scale = INFINITY, .causal = true};
    EXPECT_ERR(kvf_attention(ctx, q, k, v, &bad_scale), "attention", "scale");
    kvf_tensor *q3 = kvf_tensor_zeros(ctx, f, 3, (int64_t[]){5, 6, 8});
    EXPECT_ERR(kvf_attention(ctx, q3, k, v, &cfg), "attention", "[5, 6, 8] f32");
    EXPECT_ERR(kvf_attention(ctx, q, k, v, NULL), "attention", "cfg");
    EXPECT_ERR(kvf_attention(ctx, q, Z(ctx, f, 2, 0, 2, 8), Z(ctx, f, 2, 0, 2, 4), &nc),
               "attention", "no keys");
    EXPECT_ERR(kvf_attention(ctx, NULL, k, v, &cfg), "attention");
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

int main(void) {
    kvf_rng_init(&rng, 11);
    Suite *s = suite_create("ops_attention");
    TCase *tc = tcase_create("attention");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, attention_grad, 0, (int)(sizeof grad_cases / sizeof grad_cases[0]));
    tcase_add_loop_test(tc, attention_reference, 0, (int)(sizeof ref_cases / sizeof ref_cases[0]));
    tcase_add_test(tc, attention_thread_independent);
    tcase_add_test(tc, attention_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
