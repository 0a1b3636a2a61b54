/* Optimizers (AdamW, SGD) against scalar double re-implementations of the PyTorch
 * formulas, parameter groups, LR schedules at hand-computed points, gradient norm and
 * clipping against naive sums, NaN/Inf detection, resume bit-exactness and bad input. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/params.h"
#include "optim/accum.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"

/* ---- fixtures ------------------------------------------------------------------------- */

#define NP 6
static const char *const names[NP] = {
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
};
static const int64_t shapes[NP][2] = {{5, 3}, {3, 0}, {4, 3}, {4, 0}, {3, 7}, {5, 3}};
static const int ndims[NP] = {2, 1, 2, 1, 2, 2};

static double init_value(int p, int64_t i) { return 0.5 * sin(1.3 * p + 0.7 * (double)i) + 0.1 * p; }
static double grad_value(int step, int p, int64_t i) {
    return 0.3 * cos(0.9 * step + 1.7 * p + 0.37 * (double)i) + 0.05 * (step - 2);
}

static kvf_params *make_params(kvf_dtype dt) {
    kvf_params *p = kvf_params_init();
    ck_assert_ptr_nonnull(p);
    if (dt != KVF_DTYPE_F32) ck_assert_int_eq(kvf_params_set_dtype(p, dt), KVF_OK);
    for (int k = 0; k < NP; k++) ck_assert_int_eq(kvf_params_add(p, names[k], ndims[k], shapes[k]), k);
    ck_assert_int_eq(kvf_params_alloc(p, KVF_DEVICE_CPU), KVF_OK);
    for (int k = 0; k < NP; k++) {
        kvf_tensor *t = kvf_params_at(p, k);
        for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t, i, init_value(k, i));
    }
    return p;
}

static void set_grads(kvf_params *p, int step) {
    for (int k = 0; k < NP; k++) {
        kvf_tensor *t = kvf_params_at(p, k);
        for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t->grad, i, grad_value(step, k, i));
    }
}

/* Reference state: one double array per parameter. */
struct ref {
    double p[NP][32], m[NP][32], v[NP][32];
    int64_t n[NP];
};

static void ref_init(struct ref *r, kvf_params *p) {
    memset(r, 0, sizeof *r);
    for (int k = 0; k < NP; k++) {
        r->n[k] = kvf_tensor_numel(kvf_params_at(p, k));
        ck_assert_int_le(r->n[k], 32);
        for (int64_t i = 0; i < r->n[k]; i++) r->p[k][i] = init_value(k, i);
    }
}

/* torch.optim.AdamW, one parameter tensor, step t (1-based). */
static void ref_adamw(struct ref *r, int k, int step, int t, double lr, double wd, double b1,
                      double b2, double eps) {
    for (int64_t i = 0; i < r->n[k]; i++) {
        double g = grad_value(step, k, i);
        r->p[k][i] -= lr * wd * r->p[k][i];
        r->m[k][i] = b1 * r->m[k][i] + (1 - b1) * g;
        r->v[k][i] = b2 * r->v[k][i] + (1 - b2) * g * g;
        double mhat = r->m[k][i] / (1 - pow(b1, t));
        double vhat = r->v[k][i] / (1 - pow(b2, t));
        r->p[k][i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

/* torch.optim.SGD, one parameter tensor; buf in r->m. */
static void ref_sgd(struct ref *r, int k, int step, bool first, double lr, double wd, double mu,
                    double damp, bool nesterov) {
    for (int64_t i = 0; i < r->n[k]; i++) {
        double d = grad_value(step, k, i) + wd * r->p[k][i];
        if (mu != 0) {
            r->m[k][i] = first ? d : mu * r->m[k][i] + (1 - damp) * d;
            d = nesterov ? d + mu * r->m[k][i] : r->m[k][i];
        }
        r->p[k][i] -= lr * d;
    }
}

static void assert_params_match(kvf_params *p, const struct ref *r, double tol, const char *what) {
    for (int k = 0; k < NP; k++) {
        kvf_tensor *t = kvf_params_at(p, k);
        for (int64_t i = 0; i < r->n[k]; i++) {
            double got = kvf_tensor_get_flat(t, i), want = r->p[k][i];
            ck_assert_msg(fabs(got - want) <= tol * (1 + fabs(want)), "%s: %s[%lld] = %.17g, want %.17g",
                          what, names[k], (long long)i, got, want);
        }
    }
}

/* The padding between parameter slots in the flat buffer stays untouched (zero). */
static void assert_padding_zero(kvf_params *p) {
    kvf_tensor *flat = kvf_params_values(p);
    int64_t total = kvf_params_numel(p);
    for (int64_t e = 0; e < total; e++) {
        bool inside = false;
        for (int k = 0; k < NP && !inside; k++) {
            kvf_tensor *t = kvf_params_at(p, k);
            inside = e >= t->offset && e < t->offset + kvf_tensor_numel(t);
        }
        if (!inside) ck_assert_double_eq(kvf_tensor_get_flat(flat, e), 0.0);
    }
}

/* wd the test expects for a name under the default groups: no decay on norm/bias/embed. */
static double expected_default_wd(const char *name, double wd) {
    size_t n = strlen(name);
    if (strstr(name, "norm") || strstr(name, "embed") || (n >= 5 && !strcmp(name + n - 5, ".bias")))
        return 0.0;
    return wd;
}

static const double lrs[] = {1e-2, 3e-2, 2e-2, 5e-3, 1e-2, 0.0, 2.5e-2};
#define NSTEPS (int)(sizeof lrs / sizeof lrs[0])

/* ---- AdamW ---------------------------------------------------------------------------- */

static void run_adamw_vs_reference(kvf_dtype dt, double tol) {
    kvf_params *p = make_params(dt);
    kvf_optim_config c = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    c.beta1 = 0.9;
    c.beta2 = 0.95;
    c.eps = 1e-8;
    c.weight_decay = 0.1;
    kvf_optimizer *o = kvf_optimizer_init(p, &c);
    ck_assert_ptr_nonnull(o);
    struct ref r;
    ref_init(&r, p);
    for (int s = 0; s < NSTEPS; s++) {
        set_grads(p, s);
        ck_assert_int_eq(kvf_optimizer_step(o, lrs[s]), KVF_OK);
        for (int k = 0; k < NP; k++)
            ref_adamw(&r, k, s, s + 1, lrs[s], expected_default_wd(names[k], 0.1), 0.9, 0.95, 1e-8);
        assert_params_match(p, &r, tol, "adamw");
    }
    ck_assert_int_eq(kvf_optimizer_step_count(o), NSTEPS);
    /* state exposes m and v like the reference */
    kvf_optim_state st = kvf_optimizer_state(o);
    ck_assert_str_eq(st.m_name, "exp_avg");
    ck_assert_str_eq(st.v_name, "exp_avg_sq");
    ck_assert_int_eq(st.step, NSTEPS);
    ck_assert_int_eq(kvf_tensor_numel(st.m), kvf_params_numel(p));
    for (int k = 0; k < NP; k++) {
        int64_t off = kvf_params_at(p, k)->offset;
        for (int64_t i = 0; i < r.n[k]; i++) {
            ck_assert(fabs(kvf_tensor_get_flat(st.m, off + i) - r.m[k][i]) <= tol);
            ck_assert(fabs(kvf_tensor_get_flat(st.v, off + i) - r.v[k][i]) <= tol);
        }
    }
    assert_padding_zero(p);
    kvf_optimizer_free(o);
    kvf_params_free(p);
}

START_TEST(adamw_matches_reference_f64) { run_adamw_vs_reference(KVF_DTYPE_F64, 1e-13); }
END_TEST

START_TEST(adamw_matches_reference_f32) { run_adamw_vs_reference(KVF_DTYPE_F32, 2e-6); }
END_TEST

START_TEST(adamw_default_groups) {
    kvf_params *p = make_params(KVF_DTYPE_F32);
    kvf_optim_config c = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    ck_assert_double_eq(c.beta1, 0.9);
    ck_assert_double_eq(c.beta2, 0.999);
    ck_assert_double_eq(c.eps, 1e-8);
    ck_assert_double_eq(c.weight_decay, 0.01);
    kvf_optimizer *o = kvf_optimizer_init(p, &c);
    const double want[NP] = {0, 0, 0.01, 0, 0.01, 0.01};
    for (int k = 0; k < NP; k++) {
        double wd, mult;
        ck_assert_int_eq(kvf_optimizer_param_settings(o, k, &wd, &mult), KVF_OK);
        ck_assert_msg(wd == want[k], "%s: wd %g", names[k], wd);
        ck_assert_double_eq(mult, 1.0);
    }
    kvf_optimizer_free(o);
    /* defaults off: every parameter decays */
    c.no_decay_defaults = false;
    o = kvf_optimizer_init(p, &c);
    for (int k = 0; k < NP; k++) {
        double wd;
        kvf_optimizer_param_settings(o, k, &wd, NULL);
        ck_assert_double_eq(wd, 0.01);
    }
    kvf_optimizer_free(o);
    kvf_params_free(p);
}
END_TEST

START_TEST(adamw_rules_override_groups) {
    kvf_params *p = make_params(KVF_DTYPE_F64);
    kvf_optim_config c = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    c.weight_decay = 0.1;
    kvf_optimizer *o = kvf_optimizer_init(p, &c);
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "layers.0", 0.3, 1.0), KVF_OK);
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "q_proj", 0.5, 2.0), KVF_OK);
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "lm_head", 0.0, 0.25), KVF_OK);
    /* rules apply after the defaults, later ones winning: the layernorm (default 0) gets
     * layers.0's 0.3; q_proj.bias gets layers.0's then q_proj's settings */
    const double want_wd[NP] = {0.0, 0.3, 0.5, 0.5, 0.3, 0.0};
    const double want_mult[NP] = {1.0, 1.0, 2.0, 2.0, 1.0, 0.25};
    for (int k = 0; k < NP; k++) {
        double wd, mult;
        kvf_optimizer_param_settings(o, k, &wd, &mult);
        ck_assert_msg(wd == want_wd[k] && mult == want_mult[k], "%s: wd %g mult %g", names[k], wd, mult);
    }
    struct ref r;
    ref_init(&r, p);
    for (int s = 0; s < 4; s++) {
        set_grads(p, s);
        ck_assert_int_eq(kvf_optimizer_step(o, lrs[s]), KVF_OK);
        for (int k = 0; k < NP; k++)
            ref_adamw(&r, k, s, s + 1, lrs[s] * want_mult[k], want_wd[k], 0.9, 0.999, 1e-8);
    }
    assert_params_match(p, &r, 1e-13, "adamw rules");
    ck_assert_int_ne(kvf_optimizer_param_settings(o, NP, NULL, NULL), KVF_OK);
    kvf_error_clear();
    kvf_optimizer_free(o);
    kvf_params_free(p);
}
END_TEST

/* ---- SGD ------------------------------------------------------------------------------ */

static void run_sgd_vs_reference(double mu, double damp, bool nesterov, double wd) {
    kvf_params *p = make_params(KVF_DTYPE_F64);
    kvf_optim_config c = kvf_optim_config_default(KVF_OPTIM_SGD);
    c.momentum = mu;
    c.dampening = damp;
    c.nesterov = nesterov;
    c.weight_decay = wd;
    kvf_optimizer *o = kvf_optimizer_init(p, &c);
    ck_assert_ptr_nonnull(o);
    kvf_optim_state st = kvf_optimizer_state(o);
    ck_assert_ptr_null(st.v);
    if (mu == 0) ck_assert_ptr_null(st.m);
    else ck_assert_str_eq(st.m_name, "momentum_buffer");
    struct ref r;
    ref_init(&r, p);
    for (int s = 0; s < NSTEPS; s++) {
        set_grads(p, s);
        ck_assert_int_eq(kvf_optimizer_step(o, lrs[s] * 10), KVF_OK);
        for (int k = 0; k < NP; k++)
            ref_sgd(&r, k, s, s == 0, lrs[s] * 10, expected_default_wd(names[k], wd), mu, damp, nesterov);
        assert_params_match(p, &r, 1e-13, "sgd");
    }
    assert_padding_zero(p);
    kvf_optimizer_free(o);
    kvf_params_free(p);
}

START_TEST(sgd_momentum_matches_reference) { run_sgd_vs_reference(0.9, 0.1, false, 0.01); }
END_TEST

START_TEST(sgd_nesterov_matches_reference) { run_sgd_vs_reference(0.8, 0.0, true, 0.05); }
END_TEST

START_TEST(sgd_plain_matches_reference) { run_sgd_vs_reference(0.0, 0.0, false, 0.0); }
END_TEST

/* ---- resume and determinism ----------------------------------------------------------- */

static void copy_flat(kvf_tensor *dst, const kvf_tensor *src) {
    ck_assert_int_eq(kvf_tensor_numel(dst), kvf_tensor_numel(src));
    memcpy(kvf_tensor_data(dst), kvf_tensor_data(src), kvf_tensor_nbytes(src));
}

START_TEST(resume_is_bit_exact) {
    for (int kind = 0; kind < 2; kind++) {
        kvf_optim_config c = kvf_optim_config_default(kind ? KVF_OPTIM_SGD : KVF_OPTIM_ADAMW);
        if (kind) c.momentum = 0.9;
        kvf_params *a = make_params(KVF_DTYPE_F32);
        kvf_optimizer *oa = kvf_optimizer_init(a, &c);
        for (int s = 0; s < 6; s++) {
            set_grads(a, s);
            kvf_optimizer_step(oa, lrs[s]);
        }
        /* run b for 3 steps, "checkpoint", continue in a fresh params + optimizer */
        kvf_params *b = make_params(KVF_DTYPE_F32);
        kvf_optimizer *ob = kvf_optimizer_init(b, &c);
        for (int s = 0; s < 3; s++) {
            set_grads(b, s);
            kvf_optimizer_step(ob, lrs[s]);
        }
        kvf_params *b2 = make_params(KVF_DTYPE_F32);
        kvf_optimizer *ob2 = kvf_optimizer_init(b2, &c);
        copy_flat(kvf_params_values(b2), kvf_params_values(b));
        kvf_optim_state from = kvf_optimizer_state(ob), to = kvf_optimizer_state(ob2);
        copy_flat(to.m, from.m);
        if (from.v) copy_flat(to.v, from.v);
        ck_assert_int_eq(kvf_optimizer_set_step(ob2, from.step), KVF_OK);
        for (int s = 3; s < 6; s++) {
            set_grads(b2, s);
            kvf_optimizer_step(ob2, lrs[s]);
        }
        ck_assert(memcmp(kvf_tensor_data(kvf_params_values(a)), kvf_tensor_data(kvf_params_values(b2)),
                         kvf_tensor_nbytes(kvf_params_values(a))) == 0);
        ck_assert(memcmp(kvf_tensor_data(kvf_optimizer_state(oa).m), kvf_tensor_data(to.m),
                         kvf_tensor_nbytes(to.m)) == 0);
        ck_assert_int_eq(kvf_optimizer_step_count(ob2), 6);
        kvf_optimizer_free(oa);
        kvf_optimizer_free(ob);
        kvf_optimizer_free(ob2);
        kvf_params_free(a);
        kvf_params_free(b);
        kvf_params_free(b2);
    }
}
END_TEST

/* A parameter large enough for the threaded paths: same bits on 1 and 4 threads. */
static void big_run(int threads, float *out, int64_t n, double *norm) {
    omp_set_num_threads(threads);
    kvf_params *p = kvf_params_init();
    kvf_params_add(p, "model.layers.0.mlp.up_proj.weight", 2, (int64_t[]){n / 100, 100});
    kvf_params_alloc(p, KVF_DEVICE_CPU);
    float *w = kvf_tensor_data(kvf_params_values(p)), *g = kvf_tensor_data(kvf_params_grads(p));
    for (int64_t i = 0; i < n; i++) w[i] = (float)sin(0.001 * (double)i);
    kvf_optim_config c = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    kvf_optimizer *o = kvf_optimizer_init(p, &c);
    for (int s = 0; s < 3; s++) {
        for (int64_t i = 0; i < n; i++) g[i] = (float)cos(0.013 * (double)i + s);
        kvf_clip_info ci;
        ck_assert_int_eq(kvf_clip_grad_norm(p, 1.0, &ci), KVF_OK);
        ck_assert(ci.clipped);
        if (s == 0) *norm = ci.norm;
        kvf_optimizer_step(o, 1e-3);
    }
    memcpy(out, w, sizeof(float) * (size_t)n);
    kvf_optimizer_free(o);
    kvf_params_free(p);
}

START_TEST(threads_do_not_change_bits) {
    int64_t n = 200000;
    float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    double na, nb;
    int saved = omp_get_max_threads();
    big_run(1, a, n, &na);
    big_run(4, b, n, &nb);
    omp_set_num_threads(saved);
    ck_assert(na == nb);
    ck_assert(memcmp(a, b, sizeof(float) * (size_t)n) == 0);
    free(a);
    free(b);
}
END_TEST

/* ---- schedules ------------------------------------------------------------------------ */

#define LR_EQ(got, want) ck_assert_msg(fabs((got) - (want)) <= 1e-15, "lr %.17g, want %.17g", (got), (want))

START_TEST(schedule_constant_with_warmup) {
    kvf_lr_schedule s = kvf_lr_schedule_default(KVF_LR_CONSTANT);
    s.lr = 1e-3;
    s.warmup_steps = 10;
    ck_assert_int_eq(kvf_lr_schedule_validate(&s), KVF_OK); /* total 0: unbounded */
    LR_EQ(kvf_lr_at(&s, 0), 1e-4);   /* (0+1)/10 · lr */
    LR_EQ(kvf_lr_at(&s, 4), 5e-4);
    LR_EQ(kvf_lr_at(&s, 9), 1e-3);   /* last warmup step reaches lr */
    LR_EQ(kvf_lr_at(&s, 10), 1e-3);
    LR_EQ(kvf_lr_at(&s, 123456), 1e-3);
    s.warmup_steps = 0;
    LR_EQ(kvf_lr_at(&s, 0), 1e-3);
}
END_TEST

START_TEST(schedule_cosine_points) {
    kvf_lr_schedule s = kvf_lr_schedule_default(KVF_LR_COSINE);
    s.lr = 1e-3;
    s.min_lr = 1e-4;
    s.warmup_steps = 10;
    s.total_steps = 110;
    ck_assert_int_eq(kvf_lr_schedule_validate(&s), KVF_OK);
    LR_EQ(kvf_lr_at(&s, 0), 1e-4);
    LR_EQ(kvf_lr_at(&s, 9), 1e-3);
    LR_EQ(kvf_lr_at(&s, 10), 1e-3);     /* decay progress 0 */
    LR_EQ(kvf_lr_at(&s, 60), 5.5e-4);   /* progress 1/2: halfway between lr and min_lr */
    /* progress 1/4: min + (1 + cos(pi/4))/2 · (lr − min) */
    LR_EQ(kvf_lr_at(&s, 35), 1e-4 + 0.5 * (1 + sqrt(0.5)) * 9e-4);
    LR_EQ(kvf_lr_at(&s, 110), 1e-4);    /* end */
    LR_EQ(kvf_lr_at(&s, 5000), 1e-4);
    /* no warmup: step 0 is the peak */
    s.warmup_steps = 0;
    s.total_steps = 100;
    LR_EQ(kvf_lr_at(&s, 0), 1e-3);
    LR_EQ(kvf_lr_at(&s, 50), 5.5e-4);
}
END_TEST

START_TEST(schedule_wsd_points) {
    kvf_lr_schedule s = kvf_lr_schedule_default(KVF_LR_WSD);
    s.lr = 1e-3;
    s.min_lr = 0;
    s.warmup_steps = 10;
    s.total_steps = 100;
    s.decay_fraction = 0.2; /* decay over steps 80..99 */
    ck_assert_int_eq(kvf_lr_schedule_validate(&s), KVF_OK);
    ck_assert_int_eq(kvf_lr_wsd_decay_start(&s), 80);
    LR_EQ(kvf_lr_at(&s, 0), 1e-4);
    LR_EQ(kvf_lr_at(&s, 9), 1e-3);
    LR_EQ(kvf_lr_at(&s, 50), 1e-3);  /* stable */
    LR_EQ(kvf_lr_at(&s, 79), 1e-3);
    LR_EQ(kvf_lr_at(&s, 80), 1e-3);  /* decay start, progress 0 */
    LR_EQ(kvf_lr_at(&s, 85), 7.5e-4); /* linear, progress 1/4 */
    LR_EQ(kvf_lr_at(&s, 90), 5e-4);
    LR_EQ(kvf_lr_at(&s, 99), 5e-5);
    LR_EQ(kvf_lr_at(&s, 100), 0.0);
    s.decay = KVF_LR_DECAY_COSINE;
    s.min_lr = 1e-5;
    LR_EQ(kvf_lr_at(&s, 80), 1e-3);
    LR_EQ(kvf_lr_at(&s, 85), 1e-5 + 0.5 * (1 + sqrt(0.5)) * (1e-3 - 1e-5));
    LR_EQ(kvf_lr_at(&s, 90), 0.5 * (1e-3 + 1e-5));
    LR_EQ(kvf_lr_at(&s, 100), 1e-5);
}
END_TEST

START_TEST(schedule_names) {
    kvf_lr_kind k;
    ck_assert_int_eq(kvf_lr_kind_parse("constant", &k), KVF_OK);
    ck_assert_int_eq(k, KVF_LR_CONSTANT);
    ck_assert_int_eq(kvf_lr_kind_parse("cosine", &k), KVF_OK);
    ck_assert_int_eq(k, KVF_LR_COSINE);
    ck_assert_int_eq(kvf_lr_kind_parse("wsd", &k), KVF_OK);
    ck_assert_int_eq(k, KVF_LR_WSD);
    ck_assert_str_eq(kvf_lr_kind_name(KVF_LR_WSD), "wsd");
    kvf_error_clear();
    ck_assert_int_eq(kvf_lr_kind_parse("cosin", &k), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "'cosin'"));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "constant, cosine or wsd"));
    kvf_error_clear();
    kvf_lr_decay d;
    ck_assert_int_eq(kvf_lr_decay_parse("cosine", &d), KVF_OK);
    ck_assert_int_eq(d, KVF_LR_DECAY_COSINE);
    ck_assert_int_eq(kvf_lr_decay_parse("exp", &d), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "'exp'"));
    kvf_error_clear();
}
END_TEST

/* Validation must fail with KVF_ERR_ARG and a message containing `needle`. */
static void expect_bad_schedule(kvf_lr_schedule s, const char *needle) {
    kvf_error_clear();
    ck_assert_int_eq(kvf_lr_schedule_validate(&s), KVF_ERR_ARG);
    ck_assert_msg(strstr(kvf_error_message(), needle), "message '%s' lacks '%s'", kvf_error_message(), needle);
    kvf_error_clear();
}

START_TEST(schedule_bad_input) {
    kvf_lr_schedule ok = kvf_lr_schedule_default(KVF_LR_WSD);
    ok.total_steps = 100;
    ok.warmup_steps = 10;
    ck_assert_int_eq(kvf_lr_schedule_validate(&ok), KVF_OK);
    kvf_lr_schedule s = ok;
    s.lr = -1e-3;
    expect_bad_schedule(s, "lr must be");
    s = ok;
    s.lr = NAN;
    expect_bad_schedule(s, "lr must be");
    s = ok;
    s.min_lr = -1;
    expect_bad_schedule(s, "min_lr");
    s = ok;
    s.min_lr = 1.0;
    expect_bad_schedule(s, "min_lr (1) exceeds lr");
    s = ok;
    s.warmup_steps = 200;
    expect_bad_schedule(s, "warmup_steps (200) exceeds total_steps (100)");
    s = ok;
    s.warmup_steps = -5;
    expect_bad_schedule(s, "warmup_steps");
    s = ok;
    s.total_steps = 0;
    expect_bad_schedule(s, "total_steps");
    s = ok;
    s.decay_fraction = 1.5;
    expect_bad_schedule(s, "decay_fraction");
    s = ok;
    s.decay_fraction = 0.95; /* decay would start at step 5, inside the 10-step warmup */
    expect_bad_schedule(s, "decay_fraction");
    s = ok;
    s.kind = KVF_LR_COSINE;
    s.total_steps = 0;
    expect_bad_schedule(s, "total_steps");
}
END_TEST

/* ---- optimizer bad input -------------------------------------------------------------- */

static void expect_bad_config(kvf_optim_config c, const char *needle) {
    kvf_error_clear();
    ck_assert_int_eq(kvf_optim_config_validate(&c), KVF_ERR_ARG);
    ck_assert_msg(strstr(kvf_error_message(), needle), "message '%s' lacks '%s'", kvf_error_message(), needle);
    kvf_error_clear();
}

START_TEST(optimizer_bad_input) {
    kvf_optim_config ok = kvf_optim_config_default(KVF_OPTIM_ADAMW), c;
    c = ok, c.beta1 = 1.0;
    expect_bad_config(c, "beta1 must be in [0, 1)");
    c = ok, c.beta1 = -0.1;
    expect_bad_config(c, "beta1");
    c = ok, c.beta2 = 1.0;
    expect_bad_config(c, "beta2 must be in [0, 1)");
    c = ok, c.beta2 = NAN;
    expect_bad_config(c, "beta2");
    c = ok, c.eps = -1e-8;
    expect_bad_config(c, "eps");
    c = ok, c.weight_decay = -0.1;
    expect_bad_config(c, "weight_decay");
    kvf_optim_config sgd = kvf_optim_config_default(KVF_OPTIM_SGD);
    c = sgd, c.momentum = -0.9;
    expect_bad_config(c, "momentum");
    c = sgd, c.nesterov = true;
    expect_bad_config(c, "nesterov");

    kvf_optim_kind k;
    ck_assert_int_eq(kvf_optim_kind_parse("sgd", &k), KVF_OK);
    ck_assert_int_eq(k, KVF_OPTIM_SGD);
    ck_assert_int_eq(kvf_optim_kind_parse("adamw", &k), KVF_OK);
    ck_assert_int_eq(k, KVF_OPTIM_ADAMW);
    ck_assert_int_eq(kvf_optim_kind_parse("adam", &k), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "'adam'"));
    kvf_error_clear();

    /* init refuses a bad config and unallocated parameters */
    kvf_params *p = make_params(KVF_DTYPE_F32);
    c = ok, c.beta2 = 1.5;
    ck_assert_ptr_null(kvf_optimizer_init(p, &c));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "beta2"));
    kvf_error_clear();
    kvf_params *raw = kvf_params_init();
    kvf_params_add(raw, "w", 1, (int64_t[]){3});
    ck_assert_ptr_null(kvf_optimizer_init(raw, &ok));
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_STATE);
    kvf_error_clear();
    kvf_params_free(raw);

    /* step with a negative or NaN lr, bad rules, bad step count */
    kvf_optimizer *o = kvf_optimizer_init(p, &ok);
    ck_assert_int_eq(kvf_optimizer_step(o, -1e-3), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "lr must be"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_optimizer_step(o, NAN), KVF_ERR_ARG);
    kvf_error_clear();
    ck_assert_int_eq(kvf_optimizer_step_count(o), 0); /* refused steps do not count */
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "norm", 0.0, -1.0), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "lr_mult"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "norm", -0.1, 1.0), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "weight_decay"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_optimizer_add_rule(o, "", 0.0, 1.0), KVF_ERR_ARG);
    kvf_error_clear();
    ck_assert_int_eq(kvf_optimizer_set_step(o, -1), KVF_ERR_ARG);
    kvf_error_clear();
    kvf_optimizer_free(o);
    kvf_params_free(p);
}
END_TEST

/* ---- gradient norm, clipping, accumulation -------------------------------------------- */

static double naive_norm(kvf_params *p) {
    double s = 0;
    for (int k = 0; k < kvf_params_count(p); k++) {
        kvf_tensor *g = kvf_params_at(p, k)->grad;
        for (int64_t i = 0; i < kvf_tensor_numel(g); i++) s += kvf_tensor_get_flat(g, i) * kvf_tensor_get_flat(g, i);
    }
    return sqrt(s);
}

/* Deferred clipping: kvf_optimizer_step_scaled with the clip factor gives the bits of
 * clipping the buffer and then stepping, for AdamW and SGD. */
START_TEST(step_scaled_matches_clip_then_step) {
    kvf_optim_kind kinds[2] = {KVF_OPTIM_ADAMW, KVF_OPTIM_SGD};
    for (int k = 0; k < 2; k++) {
        kvf_params *pa = make_params(KVF_DTYPE_F32), *pb = make_params(KVF_DTYPE_F32);
        kvf_optim_config oc = kvf_optim_config_default(kinds[k]);
        kvf_optimizer *oa = kvf_optimizer_init(pa, &oc), *ob = kvf_optimizer_init(pb, &oc);
        ck_assert(oa && ob);
        for (int step = 0; step < 3; step++) {
            set_grads(pa, step + 1);
            set_grads(pb, step + 1);
            kvf_clip_info ca, cb;
            ck_assert_int_eq(kvf_clip_grad_norm(pa, 0.5, &ca), KVF_OK);
            ck_assert_int_eq(kvf_optimizer_step(oa, 1e-2), KVF_OK);
            ck_assert_int_eq(kvf_clip_grad_norm_deferred(pb, 0.5, &cb), KVF_OK);
            ck_assert(cb.clipped && cb.scale == ca.scale);
            uint64_t ver = kvf_params_version(pb); /* caches of the values compare it */
            ck_assert_int_eq(kvf_optimizer_step_scaled(ob, 1e-2, cb.scale), KVF_OK);
            ck_assert(kvf_params_version(pb) != ver);
        }
        kvf_tensor *va = kvf_params_values(pa), *vb = kvf_params_values(pb);
        ck_assert(memcmp(kvf_tensor_data(va), kvf_tensor_data(vb), kvf_tensor_nbytes(va)) == 0);
        ck_assert_int_eq(kvf_optimizer_step_scaled(ob, 1e-2, 0.0), KVF_ERR_ARG);
        ck_assert_ptr_nonnull(strstr(kvf_error_message(), "grad_scale"));
        kvf_error_clear();
        kvf_optimizer_free(oa);
        kvf_optimizer_free(ob);
        kvf_params_free(pa);
        kvf_params_free(pb);
    }
}
END_TEST

START_TEST(grad_norm_and_clip) {
    kvf_dtype dts[2] = {KVF_DTYPE_F32, KVF_DTYPE_F64};
    for (int d = 0; d < 2; d++) {
        kvf_params *p = make_params(dts[d]);
        set_grads(p, 1);
        double want = naive_norm(p), norm;
        ck_assert_int_eq(kvf_grad_norm(p, &norm), KVF_OK);
        ck_assert(fabs(norm - want) <= 1e-12 * want);

        /* max_norm above the norm: untouched */
        kvf_tensor *g = kvf_params_grads(p);
        size_t nb = kvf_tensor_nbytes(g);
        void *before = malloc(nb);
        memcpy(before, kvf_tensor_data(g), nb);
        kvf_clip_info ci;
        ck_assert_int_eq(kvf_clip_grad_norm(p, want * 2, &ci), KVF_OK);
        ck_assert(ci.finite && !ci.clipped && ci.scale == 1.0);
        ck_assert(memcmp(before, kvf_tensor_data(g), nb) == 0);
        ck_assert_int_eq(kvf_clip_grad_norm(p, 0.0, &ci), KVF_OK); /* 0: norm only */
        ck_assert(!ci.clipped && fabs(ci.norm - want) <= 1e-12 * want);
        ck_assert(memcmp(before, kvf_tensor_data(g), nb) == 0);

        /* max_norm below: every gradient times max_norm / (norm + 1e-6); deferred, the
         * same decision with the gradients left as they are */
        double max_norm = want / 3, coef = max_norm / (want + 1e-6);
        kvf_clip_info cd;
        ck_assert_int_eq(kvf_clip_grad_norm_deferred(p, max_norm, &cd), KVF_OK);
        ck_assert(cd.finite && cd.clipped && cd.scale == coef && cd.norm == want);
        ck_assert(memcmp(before, kvf_tensor_data(g), nb) == 0);
        ck_assert_int_eq(kvf_clip_grad_norm(p, max_norm, &ci), KVF_OK);
        ck_assert(ci.finite && ci.clipped);
        ck_assert(fabs(ci.norm - want) <= 1e-12 * want);
        ck_assert(fabs(ci.scale - coef) <= 1e-15);
        double tol = d ? 1e-15 : 1e-7;
        for (int k = 0; k < NP; k++) {
            kvf_tensor *gk = kvf_params_at(p, k)->grad;
            for (int64_t i = 0; i < kvf_tensor_numel(gk); i++)
                ck_assert(fabs(kvf_tensor_get_flat(gk, i) - grad_value(1, k, i) * coef) <= tol);
        }
        /* = max_norm · norm / (norm + 1e-6), just under max_norm as in torch */
        ck_assert(fabs(naive_norm(p) - want * coef) <= (d ? 1e-12 : 1e-6) * max_norm);
        ck_assert(naive_norm(p) <= max_norm * (1 + 1e-7));

        /* gradient accumulation: average over 4 micro-batches */
        set_grads(p, 2);
        ck_assert_int_eq(kvf_grad_accum_average(p, 4), KVF_OK);
        for (int k = 0; k < NP; k++) {
            kvf_tensor *gk = kvf_params_at(p, k)->grad;
            for (int64_t i = 0; i < kvf_tensor_numel(gk); i++)
                ck_assert(fabs(kvf_tensor_get_flat(gk, i) - grad_value(2, k, i) / 4) <= tol);
        }
        ck_assert_int_eq(kvf_grad_accum_average(p, 0), KVF_ERR_ARG);
        ck_assert_ptr_nonnull(strstr(kvf_error_message(), "accum_steps"));
        kvf_error_clear();
        ck_assert_int_eq(kvf_clip_grad_norm(p, -1.0, &ci), KVF_ERR_ARG);
        ck_assert_ptr_nonnull(strstr(kvf_error_message(), "max_norm"));
        kvf_error_clear();
        free(before);
        kvf_params_free(p);
    }
}
END_TEST

START_TEST(nonfinite_gradients_reported) {
    double bad[3] = {NAN, INFINITY, -INFINITY};
    for (int b = 0; b < 3; b++) {
        kvf_params *p = make_params(KVF_DTYPE_F32);
        set_grads(p, 0);
        kvf_tensor_set_flat(kvf_params_at(p, 4)->grad, 5, bad[b]);
        kvf_clip_info ci;
        ck_assert_int_eq(kvf_clip_grad_norm(p, 1e-3, &ci), KVF_OK);
        ck_assert(!ci.finite);
        ck_assert(!isfinite(ci.norm));
        ck_assert(!ci.clipped);
        /* grads left alone so the trainer can inspect, zero and skip */
        ck_assert(kvf_tensor_get_flat(kvf_params_at(p, 2)->grad, 1) == (double)(float)grad_value(0, 2, 1));
        double n;
        kvf_grad_norm(p, &n);
        ck_assert(b == 0 ? isnan(n) : isinf(n));
        kvf_params_free(p);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, adamw_matches_reference_f64);
    tcase_add_test(tc, adamw_matches_reference_f32);
    tcase_add_test(tc, adamw_default_groups);
    tcase_add_test(tc, adamw_rules_override_groups);
    tcase_add_test(tc, sgd_momentum_matches_reference);
    tcase_add_test(tc, sgd_nesterov_matches_reference);
    tcase_add_test(tc, sgd_plain_matches_reference);
    tcase_add_test(tc, resume_is_bit_exact);
    tcase_add_test(tc, threads_do_not_change_bits);
    tcase_add_test(tc, schedule_constant_with_warmup);
    tcase_add_test(tc, schedule_cosine_points);
    tcase_add_test(tc, schedule_wsd_points);
    tcase_add_test(tc, schedule_names);
    tcase_add_test(tc, schedule_bad_input);
    tcase_add_test(tc, optimizer_bad_input);
    tcase_add_test(tc, grad_norm_and_clip);
    tcase_add_test(tc, step_scaled_matches_clip_then_step);
    tcase_add_test(tc, nonfinite_gradients_reported);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
