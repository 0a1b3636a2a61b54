#include "clip.h"

#include <math.h>

#include "autograd/backend.h"

/* Fixed chunk count: the partial sums (and their order) depend only on the buffer size. */
#define NORM_CHUNKS 256
#define CLIP_PAR_MIN 32768

/* The flat gradient buffer; on a device, also its backend (NULL on the CPU). */
static kvf_status grads_of(const kvf_params *p, const char *what, kvf_tensor **out,
                           const kvf_backend **dev_be) {
    KVF_CHECK(p, KVF_ERR_ARG, "%s: NULL params", what);
    kvf_tensor *g = kvf_params_grads(p);
    KVF_CHECK(g, KVF_ERR_STATE, "%s: the parameters are not allocated", what);
    KVF_CHECK(g->dtype == KVF_DTYPE_F32 || g->dtype == KVF_DTYPE_F64, KVF_ERR_DTYPE,
              "%s: gradients are f32 or f64, not %s", what, kvf_dtype_name(g->dtype));
    *dev_be = NULL;
    if (kvf_tensor_device(g) != KVF_DEVICE_CPU) {
        const kvf_backend *be = kvf_backend_get(kvf_tensor_device(g));
        if (!be) return kvf_error_code();
        KVF_CHECK(be->sum_squares && g->dtype == KVF_DTYPE_F32, KVF_ERR_UNSUPPORTED,
                  "%s: %s gradients %s: the backend has no f32 norm kernel", what,
                  kvf_device_name(kvf_tensor_device(g)), KVF_DESC(g));
        *dev_be = be;
    }
    *out = g;
    return KVF_OK;
}

#define DEFINE_SUMSQ(T, SFX)                                                                   \
    static double sumsq_##SFX(const T *x, int64_t n) {                                         \
        double part[NORM_CHUNKS];                                                              \
        int64_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;                                   \
        _Pragma("omp parallel for schedule(static) if (n >= CLIP_PAR_MIN)")                    \
        for (int c = 0; c < NORM_CHUNKS; c++) {                                                \
            int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;                      \
            double s = 0.0;                                                                    \
            for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];                \
            part[c] = s;                                                                       \
        }                                                                                      \
        double total = 0.0;                                                                    \
        for (int c = 0; c < NORM_CHUNKS; c++) total += part[c];                                \
        return total;                                                                          \
    }                                                                                          \
    static void scale_##SFX(T *x, int64_t n, double f) {                                       \
        _Pragma("omp parallel for schedule(static) if (n >= CLIP_PAR_MIN)")                    \
        for (int64_t i = 0; i < n; i++) x[i] = (T)((double)x[i] * f);                          \
    }

DEFINE_SUMSQ(float, f32)
DEFINE_SUMSQ(double, f64)

kvf_status kvf_grad_norm(const kvf_params *p, double *norm) {
    kvf_tensor *g = NULL;
    const kvf_backend *be = NULL;
    KVF_TRY(grads_of(p, "grad norm", &g, &be));
    if (be) {
        double ss = 0;
        KVF_TRY(be->sum_squares(g, &ss));
        *norm = sqrt(ss);
        return KVF_OK;
    }
    int64_t n = kvf_tensor_numel(g);
    const void *x = kvf_tensor_data(g);
    double ss = g->dtype == KVF_DTYPE_F64 ? sumsq_f64(x, n) : sumsq_f32(x, n);
    *norm = sqrt(ss);
    return KVF_OK;
}

kvf_status kvf_grads_scale(kvf_params *p, double factor) {
    kvf_tensor *g = NULL;
    const kvf_backend *be = NULL;
    KVF_TRY(grads_of(p, "grad scale", &g, &be));
    KVF_CHECK(isfinite(factor), KVF_ERR_ARG, "grad scale: factor must be finite, got %g", factor);
    if (be) return be->unary(KVF_UNOP_SCALE, g, g, factor); /* elementwise, in place */
    int64_t n = kvf_tensor_numel(g);
    if (g->dtype == KVF_DTYPE_F64)
        scale_f64(kvf_tensor_data(g), n, factor);
    else
        scale_f32(kvf_tensor_data(g), n, factor);
    return KVF_OK;
}

static kvf_status clip(kvf_params *p, double max_norm, kvf_clip_info *info, bool apply) {
    KVF_CHECK(info, KVF_ERR_ARG, "grad clip: NULL info");
    KVF_CHECK(isfinite(max_norm) && max_norm >= 0, KVF_ERR_ARG,
              "grad clip: max_norm must be a finite number >= 0 (0 disables), got %g", max_norm);
    *info = (kvf_clip_info){.norm = 0, .finite = true, .clipped = false, .scale = 1.0};
    KVF_TRY(kvf_grad_norm(p, &info->norm));
    info->finite = isfinite(info->norm);
    if (!info->finite || max_norm == 0) return KVF_OK;
    double coef = max_norm / (info->norm + 1e-6);
    if (coef < 1.0) {
        if (apply) KVF_TRY(kvf_grads_scale(p, coef));
        info->clipped = true;
        info->scale = coef;
    }
    return KVF_OK;
}

kvf_status kvf_clip_grad_norm(kvf_params *p, double max_norm, kvf_clip_info *info) {
    return clip(p, max_norm, info, true);
}

kvf_status kvf_clip_grad_norm_deferred(kvf_params *p, double max_norm, kvf_clip_info *info) {
    return clip(p, max_norm, info, false);
}
