/* cpu_impl.h — shared pieces of the CPU backend: the kernel entry points the table in
 * cpu_backend.c points at, and the strided 4-D walk the elementwise kernels use.
 * Kernels exist for f32 (the reference) and f64 (gradient checks, factorisations): each
 * family's body is written once in a .inc file and compiled for both types. */
#ifndef KVF_CPU_IMPL_H
#define KVF_CPU_IMPL_H

#include <stdint.h>

#include "../backend.h"

/* Operands padded to 4 dims (leading extents of 1) so loops are a fixed nest. */
struct kvf_cpu_view {
    char *base; /* address of element 0 */
    int64_t shape[4];
    int64_t stride[4]; /* elements */
};
void kvf_cpu_view_of(struct kvf_cpu_view *v, const kvf_tensor *t);

/* Work below this many elements stays on one thread (OpenMP start-up costs more). */
#define KVF_CPU_PAR_MIN 32768

/* Dispatch on a float dtype to fn##_f32 / fn##_f64; other dtypes are an error. */
#define KVF_CPU_DISPATCH(what, dtype, fn, ...)                                              \
    do {                                                                                    \
        switch (dtype) {                                                                    \
        case KVF_DTYPE_F32: return fn##_f32(__VA_ARGS__);                                   \
        case KVF_DTYPE_F64: return fn##_f64(__VA_ARGS__);                                   \
        default:                                                                            \
            return kvf_error_set(KVF_ERR_DTYPE, "%s: the CPU backend computes in f32 or "   \
                                 "f64, got %s", what, kvf_dtype_name(dtype));               \
        }                                                                                   \
    } while (0)

#define KVF_CPU_DECLARE(ret, name, ...) \
    ret name##_f32(__VA_ARGS__);        \
    ret name##_f64(__VA_ARGS__)

/* cpu_elementwise.inc */
KVF_CPU_DECLARE(kvf_status, kvf_cpu_binary, kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                const kvf_tensor *b);
KVF_CPU_DECLARE(kvf_status, kvf_cpu_unary, kvf_unop op, kvf_tensor *out, const kvf_tensor *x,
                double alpha);
KVF_CPU_DECLARE(kvf_status, kvf_cpu_unary_backward, kvf_unop op, kvf_tensor *dx,
                const kvf_tensor *x, const kvf_tensor *dy, double alpha);
KVF_CPU_DECLARE(kvf_status, kvf_cpu_reduce_sum, kvf_tensor *out, const kvf_tensor *x,
                bool accumulate);
KVF_CPU_DECLARE(kvf_status, kvf_cpu_swiglu, kvf_tensor *out, const kvf_tensor *gate,
                const kvf_tensor *up);
KVF_CPU_DECLARE(kvf_status, kvf_cpu_swiglu_backward, kvf_tensor *dgate, kvf_tensor *dup,
                const kvf_tensor *gate, const kvf_tensor *up, const kvf_tensor *dout);

/* Entry points of the other kernel families (one .c file each), dtype-dispatched. */
kvf_status kvf_cpu_softmax(kvf_tensor *y, const kvf_tensor *x);
kvf_status kvf_cpu_softmax_backward(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy);
kvf_status kvf_cpu_rmsnorm(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                           const kvf_tensor *w, double eps);
kvf_status kvf_cpu_rmsnorm_backward(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                                    const kvf_tensor *w, const kvf_tensor *rstd,
                                    const kvf_tensor *dy);
kvf_status kvf_cpu_layernorm(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                             const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                             double eps);
kvf_status kvf_cpu_layernorm_backward(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                      const kvf_tensor *x, const kvf_tensor *w,
                                      const kvf_tensor *mean, const kvf_tensor *rstd,
                                      const kvf_tensor *dy);
kvf_status kvf_cpu_rope(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                        const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                        bool accumulate);
kvf_status kvf_cpu_attention(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                             const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg);
kvf_status kvf_cpu_attention_backward(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                      const kvf_tensor *q, const kvf_tensor *k,
                                      const kvf_tensor *v, const kvf_tensor *out,
                                      const kvf_tensor *lse, const kvf_tensor *dout,
                                      const kvf_attn_cfg *cfg);
kvf_status kvf_cpu_cross_entropy(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                                 const kvf_tensor *targets, int64_t ignore_index);
kvf_status kvf_cpu_cross_entropy_backward(kvf_tensor *dlogits, const kvf_tensor *logits,
                                          const kvf_tensor *lse, const kvf_tensor *targets,
                                          const kvf_tensor *dloss, int64_t ignore_index);
kvf_status kvf_cpu_cross_entropy_backward_inplace(kvf_tensor *logits, const kvf_tensor *lse,
                                                  const kvf_tensor *targets,
                                                  const kvf_tensor *dloss, int64_t ignore_index);
kvf_status kvf_cpu_embedding(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids);
kvf_status kvf_cpu_embedding_backward(kvf_tensor *dweight, const kvf_tensor *ids,
                                      const kvf_tensor *dout);
kvf_status kvf_cpu_gemm(const kvf_gemm_args *g);

#endif
