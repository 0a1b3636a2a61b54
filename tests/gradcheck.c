#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t gc_numel(const struct gc_input *in) {
    int64_t n = 1;
    for (int i = 0; i < in->ndim; i++) n *= in->shape[i];
    return n;
}

void gc_input_randn(struct gc_input *in, kvf_rng *r, double std, int ndim, const int64_t *shape) {
    memset(in, 0, sizeof *in);
    in->dtype = KVF_DTYPE_F64;
    in->ndim = ndim;
    memcpy(in->shape, shape, sizeof(int64_t) * (size_t)ndim);
    int64_t n = gc_numel(in);
    in->data = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) in->data[i] = std * kvf_rng_normal(r);
}

void gc_input_ids(struct gc_input *in, kvf_rng *r, int64_t vocab, int ndim, const int64_t *shape) {
    memset(in, 0, sizeof *in);
    in->dtype = KVF_DTYPE_I32;
    in->ndim = ndim;
    memcpy(in->shape, shape, sizeof(int64_t) * (size_t)ndim);
    int64_t n = gc_numel(in);
    in->ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) in->ids[i] = (int32_t)kvf_rng_below(r, (uint64_t)vocab);
}

void gc_inputs_free(int n, struct gc_input *in) {
    for (int i = 0; i < n; i++) {
        free(in[i].data);
        free(in[i].ids);
        in[i].data = NULL;
        in[i].ids = NULL;
    }
}

/* Make arena tensors for the inputs in dtype ft (float ones) and run f. */
static kvf_tensor *run(kvf_ctx *ctx, gc_fn f, void *ud, int n, struct gc_input *in, kvf_dtype ft,
                       bool grad, kvf_tensor **t) {
    for (int i = 0; i < n; i++) {
        if (in[i].dtype == KVF_DTYPE_I32) {
            t[i] = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, in[i].ndim, in[i].shape, in[i].ids);
        } else {
            t[i] = kvf_tensor_new(ctx, ft, in[i].ndim, in[i].shape);
            if (t[i])
                for (int64_t j = 0; j < gc_numel(&in[i]); j++) kvf_tensor_set_flat(t[i], j, in[i].data[j]);
        }
        if (!t[i]) return NULL;
        t[i]->requires_grad = grad && in[i].dtype != KVF_DTYPE_I32 && !in[i].no_grad;
    }
    kvf_tensor *args[GC_MAX_IN];
    memcpy(args, t, sizeof(kvf_tensor *) * (size_t)n);
    return f(ctx, args, ud);
}

/* Σ y·R in double, R drawn from a fixed seed for y's element count. */
static double weighted_sum(const kvf_tensor *y, const double *R) {
    double s = 0;
    int64_t n = kvf_tensor_numel(y);
    for (int64_t i = 0; i < n; i++) s += kvf_tensor_get_flat(y, i) * R[i];
    return s;
}

static kvf_tensor *loss_of(kvf_ctx *ctx, kvf_tensor *y, const double *R) {
    kvf_tensor *r = kvf_tensor_new(ctx, y->dtype, y->ndim, y->shape);
    if (!r) return NULL;
    for (int64_t i = 0; i < kvf_tensor_numel(y); i++) kvf_tensor_set_flat(r, i, R[i]);
    return kvf_sum(ctx, kvf_mul(ctx, y, r), KVF_ALL_AXES, false);
}

bool kvf_gradcheck(const char *name, gc_fn f, void *ud, int n, struct gc_input *in,
                   const struct gc_opts *opts) {
    struct gc_opts o = {1e-6, 1e-6, 1e-4, false};
    if (opts) {
        if (opts->fd_step > 0) o.fd_step = opts->fd_step;
        if (opts->tol > 0) o.tol = opts->tol;
        if (opts->tol_f32 > 0) o.tol_f32 = opts->tol_f32;
        o.skip_f32 = opts->skip_f32;
    }
    bool ok = true;
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_tensor *t[GC_MAX_IN];
    kvf_tensor *y = run(ctx, f, ud, n, in, KVF_DTYPE_F64, true, t);
    if (!y) {
        fprintf(stderr, "%s: forward failed: %s (%s)\n", name, kvf_error_message(), kvf_error_location());
        kvf_ctx_free(ctx);
        return false;
    }
    int64_t ny = kvf_tensor_numel(y);
    double *R = malloc(sizeof(double) * (size_t)(ny ? ny : 1));
    kvf_rng rr;
    kvf_rng_init(&rr, 12345);
    for (int64_t i = 0; i < ny; i++) R[i] = kvf_rng_normal(&rr);
    kvf_tensor *loss = loss_of(ctx, y, R);
    if (!loss || kvf_backward(ctx, loss) != KVF_OK) {
        fprintf(stderr, "%s: backward failed: %s (%s)\n", name, kvf_error_message(), kvf_error_location());
        free(R);
        kvf_ctx_free(ctx);
        return false;
    }
    /* keep the f64 results: analytic grads and the output */
    double *grads[GC_MAX_IN] = {0};
    for (int i = 0; i < n; i++) {
        if (!t[i]->requires_grad) continue;
        int64_t m = gc_numel(&in[i]);
        grads[i] = calloc((size_t)(m ? m : 1), sizeof(double));
        if (t[i]->grad)
            for (int64_t j = 0; j < m; j++) grads[i][j] = kvf_tensor_get_flat(t[i]->grad, j);
    }
    double *y64 = malloc(sizeof(double) * (size_t)(ny ? ny : 1));
    for (int64_t i = 0; i < ny; i++) y64[i] = kvf_tensor_get_flat(y, i);
    double yscale = 0;
    for (int64_t i = 0; i < ny; i++) yscale = fmax(yscale, fabs(y64[i]));

    /* finite differences, every element of every differentiable input */
    int fails = 0;
    for (int i = 0; i < n && fails < 5; i++) {
        if (!grads[i]) continue;
        double gscale = 0;
        for (int64_t j = 0; j < gc_numel(&in[i]); j++) gscale = fmax(gscale, fabs(grads[i][j]));
        for (int64_t j = 0; j < gc_numel(&in[i]) && fails < 5; j++) {
            double x0 = in[i].data[j], h = o.fd_step * fmax(1.0, fabs(x0)), lp, lm;
            kvf_ctx_set_grad(ctx, false);
            in[i].data[j] = x0 + h;
            kvf_ctx_reset(ctx);
            kvf_tensor *yp = run(ctx, f, ud, n, in, KVF_DTYPE_F64, false, t);
            lp = yp ? weighted_sum(yp, R) : NAN;
            in[i].data[j] = x0 - h;
            kvf_ctx_reset(ctx);
            kvf_tensor *ym = run(ctx, f, ud, n, in, KVF_DTYPE_F64, false, t);
            lm = ym ? weighted_sum(ym, R) : NAN;
            in[i].data[j] = x0;
            double fd = (lp - lm) / (2 * h), a = grads[i][j];
            double bound = o.tol * (1.0 + gscale);
            if (!(fabs(a - fd) <= bound)) {
                fprintf(stderr, "%s: input %d element %lld: analytic %.10g vs finite difference %.10g\n",
                        name, i, (long long)j, a, fd);
                fails++;
                ok = false;
            }
        }
    }

    if (ok && !o.skip_f32) {
        kvf_ctx_reset(ctx);
        kvf_ctx_set_grad(ctx, true);
        kvf_tensor *y32 = run(ctx, f, ud, n, in, KVF_DTYPE_F32, true, t);
        kvf_tensor *l32 = y32 ? loss_of(ctx, y32, R) : NULL;
        if (!l32 || kvf_backward(ctx, l32) != KVF_OK) {
            fprintf(stderr, "%s: f32 pass failed: %s (%s)\n", name, kvf_error_message(), kvf_error_location());
            ok = false;
        } else {
            for (int64_t k = 0; k < ny && ok; k++) {
                double d = fabs(kvf_tensor_get_flat(y32, k) - y64[k]);
                if (!(d <= o.tol_f32 * fmax(1.0, yscale))) {
                    fprintf(stderr, "%s: f32 output %lld = %.8g vs f64 %.8g\n", name, (long long)k,
                            kvf_tensor_get_flat(y32, k), y64[k]);
                    ok = false;
                }
            }
            for (int i = 0; i < n && ok; i++) {
                if (!grads[i]) continue;
                double gscale = 0;
                for (int64_t j = 0; j < gc_numel(&in[i]); j++) gscale = fmax(gscale, fabs(grads[i][j]));
                for (int64_t j = 0; j < gc_numel(&in[i]) && ok; j++) {
                    double g32 = t[i]->grad ? kvf_tensor_get_flat(t[i]->grad, j) : 0.0;
                    if (!(fabs(g32 - grads[i][j]) <= o.tol_f32 * fmax(1.0, gscale))) {
                        fprintf(stderr, "%s: f32 grad of input %d element %lld = %.8g vs f64 %.8g\n",
                                name, i, (long long)j, g32, grads[i][j]);
                        ok = false;
                    }
                }
            }
        }
    }
    for (int i = 0; i < n; i++) free(grads[i]);
    free(y64);
    free(R);
    kvf_ctx_free(ctx);
    return ok;
}
