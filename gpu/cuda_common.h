/* cuda_common.h — shared pieces of the CUDA backend (the gpu/ sources): the error-recording check
 * macros, device state, the scratch buffer, dtype helpers, block reductions and the kernel
 * entry points the table in cuda_backend.cu points at.
 *
 * Conventions (the contract is autograd/backend.h; the CPU f32 kernels are the reference):
 *  - kernels compute in f32 for f32 and bf16 tensors (bf16 is loaded and widened, results
 *    rounded once on store); statistics (rstd, mean, lse) are f32; f64 tensors are
 *    CPU-only (KVF_ERR_DTYPE), except in copy().
 *  - everything runs on one stream (the legacy default stream), so calls are ordered and
 *    the scratch buffer can be reused by the next call without synchronising.
 *  - no float atomics: every reduction has a fixed order (per-block partials, then a
 *    second pass in index order), so results are bitwise reproducible run to run.
 *  - errors never abort: a failing CUDA / cuBLAS call records "<op ...>: <call> failed:
 *    <reason>" through kvf_error_set and the kernel returns its status. */
#ifndef KVF_CUDA_COMMON_H
#define KVF_CUDA_COMMON_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "autograd/backend.h"
}

/* ---- errors ------------------------------------------------------------------------------ */

/* Records "<what>: <call> failed: <reason>" (what formatted from fmt) and returns
 * KVF_ERR_BACKEND (KVF_ERR_OOM for cudaErrorMemoryAllocation). */
kvf_status kvf_cuda_report(const char *file, int line, const char *call, int is_oom,
                           const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Check a CUDA runtime call; the variadic part is a printf format naming the op and sizes. */
#define KVF_CU(call, ...)                                                                     \
    do {                                                                                      \
        cudaError_t kvf_e_ = (call);                                                          \
        if (kvf_e_ != cudaSuccess) {                                                          \
            (void)cudaGetLastError(); /* clear a non-sticky error */                          \
            return kvf_cuda_report(__FILE__, __LINE__, #call,                                 \
                                   kvf_e_ == cudaErrorMemoryAllocation, cudaGetErrorString(kvf_e_), \
                                   __VA_ARGS__);                                              \
        }                                                                                     \
    } while (0)

/* After a kernel launch: a bad launch configuration (or an earlier asynchronous fault). */
#define KVF_LAUNCH(kernel, ...)                                                               \
    do {                                                                                      \
        cudaError_t kvf_e_ = cudaGetLastError();                                             \
        if (kvf_e_ != cudaSuccess)                                                            \
            return kvf_cuda_report(__FILE__, __LINE__, "launch of kernel " kernel, 0,         \
                                   cudaGetErrorString(kvf_e_), __VA_ARGS__);                  \
    } while (0)

/* Same, for a function returning a pointer (NULL on failure). */
#define KVF_CU_NULL(call, ...)                                                                \
    do {                                                                                      \
        cudaError_t kvf_e_ = (call);                                                          \
        if (kvf_e_ != cudaSuccess) {                                                          \
            (void)cudaGetLastError();                                                         \
            kvf_cuda_report(__FILE__, __LINE__, #call, kvf_e_ == cudaErrorMemoryAllocation,   \
                            cudaGetErrorString(kvf_e_), __VA_ARGS__);                         \
            return NULL;                                                                      \
        }                                                                                     \
    } while (0)

/* "f64 is CPU-only" / "not a compute dtype" for a kernel family. */
kvf_status kvf_cuda_bad_dtype(const char *what, kvf_dtype dt);

/* Dispatch a templated host function on a compute dtype (f32 or bf16). */
#define KVF_CUDA_DISPATCH(what, dtype, fn, ...)                                               \
    do {                                                                                      \
        switch (dtype) {                                                                      \
        case KVF_DTYPE_F32: return fn<float>(__VA_ARGS__);                                    \
        case KVF_DTYPE_BF16: return fn<__nv_bfloat16>(__VA_ARGS__);                           \
        default: return kvf_cuda_bad_dtype(what, dtype);                                      \
        }                                                                                     \
    } while (0)

/* "[2, 3, 4] bf16" into buf (KVF_DESC uses a C compound literal, not valid C++). */
const char *kvf_cuda_desc(const kvf_tensor *t, char *buf, size_t n);
struct kvf_cuda_descbuf {
    char s[96];
};
#define KVF_CDESC(t) kvf_cuda_desc((t), kvf_cuda_descbuf().s, 96)

/* ---- device state ------------------------------------------------------------------------ */

struct kvf_cuda_device {
    int id;
    int sm_count;
    size_t smem_optin; /* max dynamic shared memory per block after opting in */
    int cc_major, cc_minor;
};
const struct kvf_cuda_device *kvf_cuda_dev(void);

/* The stream every kernel runs on (the legacy default stream). */
#define KVF_STREAM ((cudaStream_t)0)

/* Scratch device memory for one backend call (partials, tables, sort buffers): a cached
 * buffer that grows on demand and is never freed in steady state. The pointer is valid
 * until the next kvf_cuda_scratch call; stream order makes reuse by the next op safe.
 * Returns NULL with the error set. */
void *kvf_cuda_scratch(size_t nbytes, const char *what);

/* Host → device copy ordered on KVF_STREAM; small ones return before the copy is done
 * (staged through pinned memory: the host buffer may be reused at once). */
kvf_status kvf_cuda_upload(void *dst, const void *host, size_t n);

/* Blocks for a grid-stride loop over n items with `threads` threads per block. */
static inline unsigned kvf_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    int64_t cap = (int64_t)kvf_cuda_dev()->sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

/* ---- dtype helpers (device) ---------------------------------------------------------------- */

__device__ __forceinline__ float kvf_ld(const float *p) { return *p; }
__device__ __forceinline__ float kvf_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void kvf_st(float *p, float v) { *p = v; }
__device__ __forceinline__ void kvf_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

/* A tensor as 4 dims (leading extents of 1), element strides; base = element 0. */
struct kvf_view4 {
    char *base;
    int64_t shape[4];
    int64_t stride[4];
};
kvf_view4 kvf_cuda_view(const kvf_tensor *t);

/* Offset of flat row-major index e of shape sh in a view with strides st. */
__device__ __forceinline__ int64_t kvf_offset4(int64_t e, const int64_t *sh, const int64_t *st) {
    int64_t i3 = e % sh[3];
    e /= sh[3];
    int64_t i2 = e % sh[2];
    e /= sh[2];
    int64_t i1 = e % sh[1];
    int64_t i0 = e / sh[1];
    return i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
}

/* ---- reductions (device) ----------------------------------------------------------------- */
/* The xor butterfly leaves the same value in every lane (a+b == b+a exactly), and the
 * block versions combine warps in index order: deterministic for a given blockDim. */

__device__ __forceinline__ float kvf_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float kvf_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
 * sh: 33 floats of shared memory; the call ends with a barrier, so sh may be reused. */
__device__ __forceinline__ float kvf_block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kvf_warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? sh[lane] : 0.0f;
        w = kvf_warp_sum(w);
        if (lane == 0) sh[32] = w;
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}
__device__ __forceinline__ float kvf_block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kvf_warp_max(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? sh[lane] : -INFINITY;
        w = kvf_warp_max(w);
        if (lane == 0) sh[32] = w;
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}

/* Threads per block for a kernel that gives one block to a row of C elements. */
static inline int kvf_row_threads(int64_t C) {
    if (C <= 256) return 32;
    if (C <= 1024) return 128;
    if (C <= 4096) return 256;
    if (C <= 16384) return 512;
    return 1024;
}

/* ---- kernel entry points ----------------------------------------------------------------- */

/* cuda_elementwise.cu */
kvf_status kvf_cuda_copy(kvf_tensor *dst, const kvf_tensor *src);
kvf_status kvf_cuda_binary(kvf_binop op, kvf_tensor *out, const kvf_tensor *a, const kvf_tensor *b);
kvf_status kvf_cuda_unary(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha);
kvf_status kvf_cuda_unary_backward(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                                   const kvf_tensor *dy, double alpha);
kvf_status kvf_cuda_reduce_sum(kvf_tensor *out, const kvf_tensor *x, bool accumulate);
kvf_status kvf_cuda_swiglu(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up);
kvf_status kvf_cuda_swiglu_backward(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                                    const kvf_tensor *up, const kvf_tensor *dout);
/* c[i] = beta·c[i] for n contiguous elements of dtype dt (gemm with k = 0). */
kvf_status kvf_cuda_scale_inplace(void *c, int64_t rows, int64_t cols, int64_t ld, double beta,
                                  kvf_dtype dt);

/* cuda_gemm.cu */
kvf_status kvf_cuda_gemm(const kvf_gemm_args *g);
kvf_status kvf_cuda_gemm_init(void);

/* cuda_norm.cu */
kvf_status kvf_cuda_softmax(kvf_tensor *y, const kvf_tensor *x);
kvf_status kvf_cuda_softmax_backward(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy);
kvf_status kvf_cuda_rmsnorm(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                            const kvf_tensor *w, double eps);
kvf_status kvf_cuda_rmsnorm_backward(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                                     const kvf_tensor *w, const kvf_tensor *rstd,
                                     const kvf_tensor *dy);
kvf_status kvf_cuda_layernorm(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                              const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                              double eps);
kvf_status kvf_cuda_layernorm_backward(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                       const kvf_tensor *x, const kvf_tensor *w,
                                       const kvf_tensor *mean, const kvf_tensor *rstd,
                                       const kvf_tensor *dy);
kvf_status kvf_cuda_rope(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                         const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                         bool accumulate);

/* cuda_loss.cu */
kvf_status kvf_cuda_cross_entropy(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                                  const kvf_tensor *targets, int64_t ignore_index);
kvf_status kvf_cuda_cross_entropy_backward(kvf_tensor *dlogits, const kvf_tensor *logits,
                                           const kvf_tensor *lse, const kvf_tensor *targets,
                                           const kvf_tensor *dloss, int64_t ignore_index);
kvf_status kvf_cuda_cross_entropy_backward_inplace(kvf_tensor *logits, const kvf_tensor *lse,
                                                   const kvf_tensor *targets,
                                                   const kvf_tensor *dloss, int64_t ignore_index);
kvf_status kvf_cuda_embedding(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids);
kvf_status kvf_cuda_embedding_backward(kvf_tensor *dweight, const kvf_tensor *ids,
                                       const kvf_tensor *dout);

/* cuda_optim.cu */
kvf_status kvf_cuda_adamw(const kvf_adamw_args *a);
kvf_status kvf_cuda_sum_squares(const kvf_tensor *x, double *out);

/* cuda_linalg.cu (the conversions' f64 work; backend.h describes the contract) */
kvf_status kvf_cuda_gram_f64(double *acc, const kvf_tensor *x, const kvf_tensor *y);
kvf_status kvf_cuda_eigh_f64(int n, const double *A, double *w, double *V);
kvf_status kvf_cuda_svd_f64(int m, int n, const double *A, double *U, double *s, double *Vt);
kvf_status kvf_cuda_dgemm_f64(bool ta, bool tb, int m, int n, int k, const double *A, const double *B,
                              double *C);

/* cuda_attention.cu */
kvf_status kvf_cuda_attention(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                              const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg);
kvf_status kvf_cuda_attention_backward(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                       const kvf_tensor *q, const kvf_tensor *k,
                                       const kvf_tensor *v, const kvf_tensor *out,
                                       const kvf_tensor *lse, const kvf_tensor *dout,
                                       const kvf_attn_cfg *cfg);

#endif
