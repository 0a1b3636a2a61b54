/* cpu_norm.c — softmax, RMSNorm and LayerNorm over the last dim, for f32 and f64. */
#include <math.h>

#include "cpu_impl.h"

/* dW / db are reduced over rows per block of this many columns: each column's sum runs
 * over the rows in order on one thread, so the result does not depend on the thread count. */
#define KVF_NORM_COL_BLOCK 32

#define T float
#define SFX(name) name##_f32
#include "cpu_norm.inc"
#undef T
#undef SFX

#define T double
#define SFX(name) name##_f64
#include "cpu_norm.inc"
#undef T
#undef SFX

kvf_status kvf_cpu_softmax(kvf_tensor *y, const kvf_tensor *x) {
    KVF_CPU_DISPATCH("softmax", x->dtype, kvf_cpu_softmax, y, x);
}

kvf_status kvf_cpu_softmax_backward(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy) {
    KVF_CPU_DISPATCH("softmax_backward", y->dtype, kvf_cpu_softmax_backward, dx, y, dy);
}

kvf_status kvf_cpu_rmsnorm(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                           const kvf_tensor *w, double eps) {
    KVF_CPU_DISPATCH("rmsnorm", x->dtype, kvf_cpu_rmsnorm, y, rstd, x, w, eps);
}

kvf_status kvf_cpu_rmsnorm_backward(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                                    const kvf_tensor *w, const kvf_tensor *rstd,
                                    const kvf_tensor *dy) {
    KVF_CPU_DISPATCH("rmsnorm_backward", x->dtype, kvf_cpu_rmsnorm_backward, dx, dw, x, w, rstd,
                     dy);
}

kvf_status kvf_cpu_layernorm(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                             const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                             double eps) {
    KVF_CPU_DISPATCH("layernorm", x->dtype, kvf_cpu_layernorm, y, mean, rstd, x, w, b, eps);
}

kvf_status kvf_cpu_layernorm_backward(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                      const kvf_tensor *x, const kvf_tensor *w,
                                      const kvf_tensor *mean, const kvf_tensor *rstd,
                                      const kvf_tensor *dy) {
    KVF_CPU_DISPATCH("layernorm_backward", x->dtype, kvf_cpu_layernorm_backward, dx, dw, db, x,
                     w, mean, rstd, dy);
}
