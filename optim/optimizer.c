#include "optimizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "clip.h"

/* Parameters below this many elements are updated on one thread. */
#define OPTIM_PAR_MIN 32768

static const char *const kind_names[KVF_OPTIM_KIND_COUNT] = {"adamw", "sgd"};

/* One parameter's slice of the flat buffers and its group settings. */
struct param_slot {
    int64_t offset, numel;
    double wd, lr_mult;
};

struct rule {
    char *match;
    double wd, lr_mult;
};

struct kvf_optimizer {
    kvf_params *params;
    kvf_optim_config cfg;
    struct param_slot *slots;
    int n;
    struct rule *rules;
    int nrules;
    kvf_tensor *m, *v; /* NULL when the method keeps no such state */
    int64_t step;
};

kvf_optim_config kvf_optim_config_default(kvf_optim_kind kind) {
    kvf_optim_config c = {.kind = kind, .no_decay_defaults = true};
    if (kind == KVF_OPTIM_ADAMW) {
        c.weight_decay = 0.01;
        c.beta1 = 0.9;
        c.beta2 = 0.999;
        c.eps = 1e-8;
    }
    return c;
}

static kvf_status check_nonneg(const char *what, double x) {
    KVF_CHECK(isfinite(x) && x >= 0, KVF_ERR_ARG,
              "optimizer: %s must be a finite number >= 0, got %g", what, x);
    return KVF_OK;
}

kvf_status kvf_optim_config_validate(const kvf_optim_config *c) {
    KVF_CHECK(c, KVF_ERR_ARG, "optimizer: NULL config");
    KVF_CHECK((int)c->kind >= 0 && c->kind < KVF_OPTIM_KIND_COUNT, KVF_ERR_ARG,
              "optimizer: unknown kind %d", (int)c->kind);
    KVF_TRY(check_nonneg("weight_decay", c->weight_decay));
    if (c->kind == KVF_OPTIM_ADAMW) {
        KVF_CHECK(c->beta1 >= 0 && c->beta1 < 1, KVF_ERR_ARG,
                  "optimizer: beta1 must be in [0, 1), got %g", c->beta1);
        KVF_CHECK(c->beta2 >= 0 && c->beta2 < 1, KVF_ERR_ARG,
                  "optimizer: beta2 must be in [0, 1), got %g", c->beta2);
        KVF_TRY(check_nonneg("eps", c->eps));
    } else {
        KVF_TRY(check_nonneg("momentum", c->momentum));
        KVF_TRY(check_nonneg("dampening", c->dampening));
        KVF_CHECK(!c->nesterov || (c->momentum > 0 && c->dampening == 0), KVF_ERR_ARG,
                  "optimizer: nesterov needs momentum > 0 and dampening 0 (got momentum %g, "
                  "dampening %g)", c->momentum, c->dampening);
    }
    return KVF_OK;
}

kvf_status kvf_optim_kind_parse(const char *name, kvf_optim_kind *out) {
    for (int k = 0; name && k < KVF_OPTIM_KIND_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (kvf_optim_kind)k;
            return KVF_OK;
        }
    return kvf_error_set(KVF_ERR_ARG, "optimizer: unknown optimizer '%s' (choose adamw or sgd)",
                         name ? name : "(null)");
}

const char *kvf_optim_kind_name(kvf_optim_kind kind) {
    return ((int)kind >= 0 && kind < KVF_OPTIM_KIND_COUNT) ? kind_names[kind] : "unknown";
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Default groups, then the rules in order (later matches override earlier ones). */
static void assign_groups(kvf_optimizer *o) {
    for (int i = 0; i < o->n; i++) {
        const char *name = kvf_params_at(o->params, i)->name;
        struct param_slot *s = &o->slots[i];
        s->wd = o->cfg.weight_decay;
        s->lr_mult = 1.0;
        if (o->cfg.no_decay_defaults && name &&
            (strstr(name, "norm") || strstr(name, "embed") || ends_with(name, ".bias")))
            s->wd = 0.0;
        for (int r = 0; r < o->nrules; r++)
            if (name && strstr(name, o->rules[r].match)) {
                s->wd = o->rules[r].wd;
                s->lr_mult = o->rules[r].lr_mult;
            }
    }
}

void kvf_optimizer_free(kvf_optimizer *o) {
    if (!o) return;
    for (int r = 0; r < o->nrules; r++) free(o->rules[r].match);
    free(o->rules);
    free(o->slots);
    kvf_tensor_free_owned(o->m);
    kvf_tensor_free_owned(o->v);
    free(o);
}

kvf_optimizer *kvf_optimizer_init(kvf_params *params, const kvf_optim_config *cfg) {
    KVF_CHECK_NULL(params, KVF_ERR_ARG, "optimizer: NULL params");
    if (kvf_optim_config_validate(cfg) != KVF_OK) return NULL;
    kvf_tensor *values = kvf_params_values(params);
    KVF_CHECK_NULL(values, KVF_ERR_STATE, "optimizer: allocate the parameters (kvf_params_alloc) first");
    kvf_device dev = kvf_tensor_device(values);
    if (dev != KVF_DEVICE_CPU) {
        /* device parameters: the backend's fused AdamW over f32 masters and moments */
        const kvf_backend *be = kvf_backend_get(dev);
        if (!be) return NULL;
        KVF_CHECK_NULL(cfg->kind == KVF_OPTIM_ADAMW && be->adamw, KVF_ERR_UNSUPPORTED,
                       "optimizer: %s on %s parameters is not implemented (AdamW is; or train on "
                       "the CPU)", kind_names[cfg->kind], kvf_device_name(dev));
        KVF_CHECK_NULL(kvf_params_dtype(params) == KVF_DTYPE_F32, KVF_ERR_DTYPE,
                       "optimizer: %s parameters must be f32 masters, not %s",
                       kvf_device_name(dev), kvf_dtype_name(kvf_params_dtype(params)));
    }
    int n = kvf_params_count(params);
    int64_t numel = kvf_params_numel(params);
    KVF_CHECK_NULL(n > 0 && numel > 0, KVF_ERR_ARG, "optimizer: no parameters to optimise");

    kvf_optimizer *o = calloc(1, sizeof *o);
    KVF_CHECK_NULL(o, KVF_ERR_OOM, "optimizer: out of host memory");
    o->params = params;
    o->cfg = *cfg;
    o->n = n;
    o->slots = calloc((size_t)n, sizeof *o->slots);
    if (!o->slots) {
        kvf_optimizer_free(o);
        kvf_error_set(KVF_ERR_OOM, "optimizer: out of host memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const kvf_tensor *t = kvf_params_at(params, i);
        o->slots[i].offset = t->offset;
        o->slots[i].numel = kvf_tensor_numel(t);
    }
    assign_groups(o);

    kvf_dtype dt = kvf_params_dtype(params);
    int64_t shape[1] = {numel};
    bool need_m = cfg->kind == KVF_OPTIM_ADAMW || cfg->momentum != 0;
    bool need_v = cfg->kind == KVF_OPTIM_ADAMW;
    if ((need_m && !(o->m = kvf_tensor_init_owned_on(dev, dt, 1, shape))) ||
        (need_v && !(o->v = kvf_tensor_init_owned_on(dev, dt, 1, shape)))) {
        kvf_optimizer_free(o);
        return NULL; /* error set by kvf_tensor_init_owned_on */
    }
    return o;
}

kvf_status kvf_optimizer_add_rule(kvf_optimizer *o, const char *match, double weight_decay,
                                  double lr_mult) {
    KVF_CHECK(o && match && *match, KVF_ERR_ARG, "optimizer: a rule needs a non-empty name match");
    KVF_CHECK(isfinite(weight_decay) && weight_decay >= 0, KVF_ERR_ARG,
              "optimizer: rule '%s': weight_decay must be a finite number >= 0, got %g", match,
              weight_decay);
    KVF_CHECK(isfinite(lr_mult) && lr_mult >= 0, KVF_ERR_ARG,
              "optimizer: rule '%s': lr_mult must be a finite number >= 0, got %g", match, lr_mult);
    struct rule *r = realloc(o->rules, sizeof *r * (size_t)(o->nrules + 1));
    KVF_CHECK(r, KVF_ERR_OOM, "optimizer: out of host memory");
    o->rules = r;
    char *m = strdup(match);
    KVF_CHECK(m, KVF_ERR_OOM, "optimizer: out of host memory");
    o->rules[o->nrules++] = (struct rule){m, weight_decay, lr_mult};
    assign_groups(o);
    return KVF_OK;
}

kvf_status kvf_optimizer_param_settings(const kvf_optimizer *o, int i, double *weight_decay,
                                        double *lr_mult) {
    KVF_CHECK(o && i >= 0 && i < o->n, KVF_ERR_ARG, "optimizer: no parameter %d", i);
    if (weight_decay) *weight_decay = o->slots[i].wd;
    if (lr_mult) *lr_mult = o->slots[i].lr_mult;
    return KVF_OK;
}

/* The update loops, written once and compiled for f32 and f64 masters. Arithmetic is in
 * double; each element is independent, so any thread split gives the same bits. */
#define DEFINE_UPDATES(T, SFX)                                                                  \
    static void adamw_##SFX(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,  \
                            int64_t n, double lr, double wd, double b1, double b2, double eps,  \
                            double bc1, double bc2_sqrt) {                                      \
        double decay = 1.0 - lr * wd, step_size = lr / bc1;                                     \
        _Pragma("omp parallel for schedule(static) if (n >= OPTIM_PAR_MIN)")                    \
        for (int64_t i = 0; i < n; i++) {                                                       \
            double gi = (double)g[i];                                                           \
            double mi = b1 * (double)m[i] + (1.0 - b1) * gi;                                    \
            double vi = b2 * (double)v[i] + (1.0 - b2) * gi * gi;                               \
            double pi = (double)p[i] * decay;                                                   \
            pi -= step_size * mi / (sqrt(vi) / bc2_sqrt + eps);                                 \
            m[i] = (T)mi;                                                                       \
            v[i] = (T)vi;                                                                       \
            p[i] = (T)pi;                                                                       \
        }                                                                                       \
    }                                                                                           \
    static void sgd_##SFX(T *restrict p, const T *restrict g, T *restrict buf, int64_t n,      \
                          double lr, double wd, double mu, double damp, bool nesterov,          \
                          bool first) {                                                         \
        _Pragma("omp parallel for schedule(static) if (n >= OPTIM_PAR_MIN)")                    \
        for (int64_t i = 0; i < n; i++) {                                                       \
            double pi = (double)p[i];                                                           \
            double d = (double)g[i] + wd * pi;                                                  \
            if (buf) {                                                                          \
                double b = first ? d : mu * (double)buf[i] + (1.0 - damp) * d;                  \
                buf[i] = (T)b;                                                                  \
                d = nesterov ? d + mu * b : b;                                                  \
            }                                                                                   \
            p[i] = (T)(pi - lr * d);                                                            \
        }                                                                                       \
    }

DEFINE_UPDATES(float, f32)
DEFINE_UPDATES(double, f64)

kvf_status kvf_optimizer_step(kvf_optimizer *o, double lr) {
    return kvf_optimizer_step_scaled(o, lr, 1.0);
}

kvf_status kvf_optimizer_step_scaled(kvf_optimizer *o, double lr, double grad_scale) {
    KVF_CHECK(o, KVF_ERR_ARG, "optimizer: NULL optimizer");
    KVF_CHECK(isfinite(lr) && lr >= 0, KVF_ERR_ARG,
              "optimizer: lr must be a finite number >= 0, got %g", lr);
    KVF_CHECK(isfinite(grad_scale) && grad_scale > 0, KVF_ERR_ARG,
              "optimizer: grad_scale must be a finite number > 0, got %g", grad_scale);
    kvf_tensor *pv = kvf_params_values(o->params), *gv = kvf_params_grads(o->params);
    bool f64 = pv->dtype == KVF_DTYPE_F64;
    char *P = kvf_tensor_data(pv), *G = kvf_tensor_data(gv);
    char *M = o->m ? kvf_tensor_data(o->m) : NULL, *V = o->v ? kvf_tensor_data(o->v) : NULL;
    size_t es = kvf_dtype_size(pv->dtype);
    const kvf_optim_config *c = &o->cfg;
    int64_t t = o->step + 1;
    double bc1 = 1.0 - pow(c->beta1, (double)t), bc2_sqrt = sqrt(1.0 - pow(c->beta2, (double)t));
    if (kvf_tensor_device(pv) != KVF_DEVICE_CPU) {
        /* one fused launch over every parameter (kvf_optimizer_init checked AdamW + f32) */
        const kvf_backend *be = kvf_backend_get(kvf_tensor_device(pv));
        if (!be) return kvf_error_code();
        struct kvf_adamw_seg *segs = malloc(sizeof *segs * (size_t)o->n);
        KVF_CHECK(segs, KVF_ERR_OOM, "optimizer: out of host memory");
        for (int i = 0; i < o->n; i++)
            segs[i] = (struct kvf_adamw_seg){o->slots[i].offset, o->slots[i].numel,
                                             lr * o->slots[i].lr_mult, o->slots[i].wd};
        kvf_adamw_args a = {.p = (float *)P, .m = (float *)M, .v = (float *)V, .g = (const float *)G,
                            .segs = segs, .n_segs = o->n, .beta1 = c->beta1, .beta2 = c->beta2,
                            .eps = c->eps, .bc1 = bc1, .bc2_sqrt = bc2_sqrt, .grad_scale = grad_scale};
        kvf_status st = be->adamw(&a);
        free(segs);
        kvf_params_touch(o->params);
        if (st == KVF_OK) o->step = t;
        return st;
    }
    /* the CPU loops read the gradients as they are: scale the buffer first (same bits) */
    if (grad_scale != 1.0) KVF_TRY(kvf_grads_scale(o->params, grad_scale));
    for (int i = 0; i < o->n; i++) {
        const struct param_slot *s = &o->slots[i];
        size_t off = (size_t)s->offset * es;
        double lr_i = lr * s->lr_mult;
        if (c->kind == KVF_OPTIM_ADAMW) {
            if (f64)
                adamw_f64((double *)(P + off), (const double *)(G + off), (double *)(M + off),
                          (double *)(V + off), s->numel, lr_i, s->wd, c->beta1, c->beta2, c->eps,
                          bc1, bc2_sqrt);
            else
                adamw_f32((float *)(P + off), (const float *)(G + off), (float *)(M + off),
                          (float *)(V + off), s->numel, lr_i, s->wd, c->beta1, c->beta2, c->eps,
                          bc1, bc2_sqrt);
        } else {
            bool first = o->step == 0;
            if (f64)
                sgd_f64((double *)(P + off), (const double *)(G + off),
                        M ? (double *)(M + off) : NULL, s->numel, lr_i, s->wd, c->momentum,
                        c->dampening, c->nesterov, first);
            else
                sgd_f32((float *)(P + off), (const float *)(G + off),
                        M ? (float *)(M + off) : NULL, s->numel, lr_i, s->wd, c->momentum,
                        c->dampening, c->nesterov, first);
        }
    }
    kvf_params_touch(o->params);
    o->step = t;
    return KVF_OK;
}

kvf_optim_state kvf_optimizer_state(const kvf_optimizer *o) {
    kvf_optim_state s = {0};
    if (!o) return s;
    s.m = o->m;
    s.v = o->v;
    s.m_name = o->m ? (o->cfg.kind == KVF_OPTIM_ADAMW ? "exp_avg" : "momentum_buffer") : NULL;
    s.v_name = o->v ? "exp_avg_sq" : NULL;
    s.step = o->step;
    return s;
}

int64_t kvf_optimizer_step_count(const kvf_optimizer *o) { return o ? o->step : 0; }

kvf_status kvf_optimizer_set_step(kvf_optimizer *o, int64_t step) {
    KVF_CHECK(o, KVF_ERR_ARG, "optimizer: NULL optimizer");
    KVF_CHECK(step >= 0, KVF_ERR_ARG, "optimizer: step must be >= 0, got %lld", (long long)step);
    o->step = step;
    return KVF_OK;
}

const kvf_optim_config *kvf_optimizer_config(const kvf_optimizer *o) { return o ? &o->cfg : NULL; }
