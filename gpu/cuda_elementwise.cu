/* cuda_elementwise.cu — strided copy with dtype conversion, binary / unary ops and their
 * backward, reduce_sum and SwiGLU, for f32 and bf16 (copy: every dtype).
 *
 * Operands are 4-D strided views (kvf_view4: leading extents of 1, stride 0 for broadcast
 * dims); a flat row-major index over the output's shape is mapped to each operand's
 * offset. Contiguous, same-shape operands take a flat fast path. Math in f32; SCALE in
 * double so that f32 results round exactly like the CPU reference. */
#include <math.h>

#include "cuda_common.h"

#define EW_THREADS 256

static bool all_contig_same(const kvf_tensor *o, const kvf_tensor *a, const kvf_tensor *b) {
    if (!kvf_tensor_is_contiguous(o) || !kvf_tensor_is_contiguous(a)) return false;
    if (!kvf_tensor_same_shape(o, a)) return false;
    if (b && (!kvf_tensor_is_contiguous(b) || !kvf_tensor_same_shape(o, b))) return false;
    return true;
}

/* ---- copy ------------------------------------------------------------------------------------ */

/* Same-dtype strided copy, elements moved as raw words of type W. */
template <class W>
__global__ void k_copy_same(kvf_view4 d, kvf_view4 s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const W *sp = (const W *)s.base + kvf_offset4(e, s.shape, s.stride);
        W *dp = (W *)d.base + kvf_offset4(e, d.shape, d.stride);
        *dp = *sp;
    }
}

/* Loads and stores through double, exactly as the CPU's kvf_tensor_get/set: narrow float
 * dtypes round from f32 (so f64 → bf16 is f64 → f32 → bf16), ids truncate. */
__device__ __forceinline__ double cvt_load(const char *base, int64_t off, int dt) {
    switch (dt) {
    case KVF_DTYPE_F32: return ((const float *)base)[off];
    case KVF_DTYPE_F64: return ((const double *)base)[off];
    case KVF_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)base)[off]);
    case KVF_DTYPE_F16: return __half2float(((const __half *)base)[off]);
    case KVF_DTYPE_I32: return ((const int32_t *)base)[off];
    case KVF_DTYPE_I64: return (double)((const int64_t *)base)[off];
    default: return NAN;
    }
}
__device__ __forceinline__ void cvt_store(char *base, int64_t off, int dt, double v) {
    switch (dt) {
    case KVF_DTYPE_F32: ((float *)base)[off] = (float)v; break;
    case KVF_DTYPE_F64: ((double *)base)[off] = v; break;
    case KVF_DTYPE_BF16: ((__nv_bfloat16 *)base)[off] = __float2bfloat16_rn((float)v); break;
    case KVF_DTYPE_F16: ((__half *)base)[off] = __float2half_rn((float)v); break;
    case KVF_DTYPE_I32: ((int32_t *)base)[off] = (int32_t)v; break;
    case KVF_DTYPE_I64: ((int64_t *)base)[off] = (int64_t)v; break;
    default: break;
    }
}

__global__ void k_copy_convert(kvf_view4 d, int ddt, kvf_view4 s, int sdt, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        double v = cvt_load(s.base, kvf_offset4(e, s.shape, s.stride), sdt);
        cvt_store(d.base, kvf_offset4(e, d.shape, d.stride), ddt, v);
    }
}

/* Contiguous f32 <-> bf16 (mixed precision: weight casts, gradient casts back): flat, two
 * elements per thread step, the same rounding as k_copy_convert (bf16 → f32 is exact, f32
 * → bf16 rounds to nearest even). */
__global__ void k_f32_to_bf16(__nv_bfloat16 *d, const float *s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        d[e] = __float2bfloat16_rn(s[e]);
}
__global__ void k_bf16_to_f32(float *d, const __nv_bfloat16 *s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        d[e] = __bfloat162float(s[e]);
}

kvf_status kvf_cuda_copy(kvf_tensor *dst, const kvf_tensor *src) {
    if (!kvf_tensor_same_shape(dst, src))
        return kvf_error_set(KVF_ERR_SHAPE, "copy: %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
    if (kvf_tensor_device(dst) != KVF_DEVICE_CUDA || kvf_tensor_device(src) != KVF_DEVICE_CUDA)
        return kvf_error_set(KVF_ERR_DEVICE, "copy: %s on %s into %s on %s: the CUDA copy moves "
                             "device tensors only (use upload/download for host memory)",
                             KVF_CDESC(src), kvf_device_name(kvf_tensor_device(src)),
                             KVF_CDESC(dst), kvf_device_name(kvf_tensor_device(dst)));
    int64_t n = kvf_tensor_numel(dst);
    if (n == 0) return KVF_OK;
    if (dst->dtype == src->dtype && kvf_tensor_is_contiguous(dst) &&
        kvf_tensor_is_contiguous(src)) {
        size_t nb = kvf_tensor_nbytes(dst);
        KVF_CU(cudaMemcpyAsync(kvf_tensor_data(dst), kvf_tensor_data(src), nb,
                               cudaMemcpyDeviceToDevice, KVF_STREAM),
               "copy %s", KVF_CDESC(src));
        return KVF_OK;
    }
    unsigned blocks = kvf_cuda_blocks(n, EW_THREADS);
    if (kvf_tensor_is_contiguous(dst) && kvf_tensor_is_contiguous(src)) {
        if (dst->dtype == KVF_DTYPE_BF16 && src->dtype == KVF_DTYPE_F32) {
            k_f32_to_bf16<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(
                (__nv_bfloat16 *)kvf_tensor_data(dst), (const float *)kvf_tensor_data(src), n);
            KVF_LAUNCH("f32_to_bf16", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
            return KVF_OK;
        }
        if (dst->dtype == KVF_DTYPE_F32 && src->dtype == KVF_DTYPE_BF16) {
            k_bf16_to_f32<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(
                (float *)kvf_tensor_data(dst), (const __nv_bfloat16 *)kvf_tensor_data(src), n);
            KVF_LAUNCH("bf16_to_f32", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
            return KVF_OK;
        }
    }
    kvf_view4 d = kvf_cuda_view(dst), s = kvf_cuda_view(src);
    if (dst->dtype == src->dtype) {
        switch (kvf_dtype_size(dst->dtype)) {
        case 2: k_copy_same<uint16_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        case 4: k_copy_same<uint32_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        case 8: k_copy_same<uint64_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        default:
            return kvf_error_set(KVF_ERR_DTYPE, "copy: unsupported dtype of %s", KVF_CDESC(src));
        }
    } else {
        k_copy_convert<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, (int)dst->dtype, s,
                                                             (int)src->dtype, n);
    }
    KVF_LAUNCH("copy", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
    return KVF_OK;
}

/* ---- binary ---------------------------------------------------------------------------------- */

__device__ __forceinline__ float binop_apply(int op, float a, float b) {
    switch (op) {
    case KVF_BINOP_ADD: return a + b;
    case KVF_BINOP_SUB: return a - b;
    case KVF_BINOP_MUL: return a * b;
    case KVF_BINOP_DIV: return a / b;
    default: return NAN;
    }
}

template <class T>
__global__ void k_binary_flat(int op, T *o, const T *a, const T *b, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        kvf_st(o + e, binop_apply(op, kvf_ld(a + e), kvf_ld(b + e)));
}

template <class T>
__global__ void k_binary_strided(int op, kvf_view4 o, kvf_view4 a, kvf_view4 b, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld((const T *)a.base + kvf_offset4(e, o.shape, a.stride));
        float y = kvf_ld((const T *)b.base + kvf_offset4(e, o.shape, b.stride));
        kvf_st((T *)o.base + kvf_offset4(e, o.shape, o.stride), binop_apply(op, x, y));
    }
}

template <class T>
static kvf_status binary_t(kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                           const kvf_tensor *b) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    unsigned blocks = kvf_cuda_blocks(n, EW_THREADS);
    if (all_contig_same(out, a, b)) {
        k_binary_flat<T><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(
            (int)op, (T *)kvf_tensor_data(out), (const T *)kvf_tensor_data(a),
            (const T *)kvf_tensor_data(b), n);
    } else {
        k_binary_strided<T><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(
            (int)op, kvf_cuda_view(out), kvf_cuda_view(a), kvf_cuda_view(b), n);
    }
    KVF_LAUNCH("binary", "binary op %d on %s", (int)op, KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_binary(kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                           const kvf_tensor *b) {
    if (a->dtype != out->dtype || b->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "binary: a %s, b %s and out %s must share a dtype",
                             KVF_CDESC(a), KVF_CDESC(b), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("binary", out->dtype, binary_t, op, out, a, b);
}

/* ---- unary ----------------------------------------------------------------------------------- */

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* f(x); SCALE is done by the caller in double. */
__device__ __forceinline__ float unop_apply(int op, float x) {
    switch (op) {
    case KVF_UNOP_EXP: return expf(x);
    case KVF_UNOP_LOG: return logf(x);
    case KVF_UNOP_SILU: return x * sigmoidf_(x);
    case KVF_UNOP_GELU_TANH: return 0.5f * x * (1.0f + tanhf(GELU_C * (x + GELU_A * x * x * x)));
    case KVF_UNOP_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    default: return NAN;
    }
}

__device__ __forceinline__ float unop_deriv(int op, float x) {
    switch (op) {
    case KVF_UNOP_EXP: return expf(x);
    case KVF_UNOP_LOG: return 1.0f / x;
    case KVF_UNOP_SILU: {
        float s = sigmoidf_(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case KVF_UNOP_GELU_TANH: {
        float t = tanhf(GELU_C * (x + GELU_A * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x * x);
    }
    case KVF_UNOP_GELU_ERF:
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
               x * expf(-0.5f * x * x) * 0.3989422804014327f;
    default: return NAN;
    }
}

template <class T>
__global__ void k_unary(int op, double alpha, kvf_view4 o, kvf_view4 x, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float v = kvf_ld((const T *)x.base + kvf_offset4(e, o.shape, x.stride));
        float r = op == KVF_UNOP_SCALE ? (float)(alpha * (double)v) : unop_apply(op, v);
        kvf_st((T *)o.base + kvf_offset4(e, o.shape, o.stride), r);
    }
}

template <class T>
__global__ void k_unary_flat(int op, double alpha, T *o, const T *x, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float v = kvf_ld(x + e);
        kvf_st(o + e, op == KVF_UNOP_SCALE ? (float)(alpha * (double)v) : unop_apply(op, v));
    }
}

/* dx += f'(x)·dy; x unused for SCALE. */
template <class T>
__global__ void k_unary_bw(int op, double alpha, kvf_view4 dx, kvf_view4 x, kvf_view4 dy,
                           int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float g = kvf_ld((const T *)dy.base + kvf_offset4(e, dx.shape, dy.stride));
        float c;
        if (op == KVF_UNOP_SCALE) {
            c = (float)(alpha * (double)g);
        } else {
            float v = kvf_ld((const T *)x.base + kvf_offset4(e, dx.shape, x.stride));
            c = unop_deriv(op, v) * g;
        }
        T *p = (T *)dx.base + kvf_offset4(e, dx.shape, dx.stride);
        kvf_st(p, kvf_ld(p) + c);
    }
}

template <class T>
static kvf_status unary_t(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    if (all_contig_same(out, x, NULL)) /* e.g. gradient clipping over the flat buffer */
        k_unary_flat<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            (int)op, alpha, (T *)kvf_tensor_data(out), (const T *)kvf_tensor_data(x), n);
    else
        k_unary<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            (int)op, alpha, kvf_cuda_view(out), kvf_cuda_view(x), n);
    KVF_LAUNCH("unary", "unary op %d on %s", (int)op, KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_unary(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha) {
    if (x->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "unary: x %s and out %s must share a dtype",
                             KVF_CDESC(x), KVF_CDESC(out));
    if ((int)op < 0 || op >= KVF_UNOP_COUNT)
        return kvf_error_set(KVF_ERR_ARG, "unary: unknown op %d", (int)op);
    KVF_CUDA_DISPATCH("unary", out->dtype, unary_t, op, out, x, alpha);
}

template <class T>
static kvf_status unary_bw_t(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                             const kvf_tensor *dy, double alpha) {
    int64_t n = kvf_tensor_numel(dx);
    if (n == 0) return KVF_OK;
    kvf_view4 xv = kvf_cuda_view(x ? x : dy);
    k_unary_bw<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        (int)op, alpha, kvf_cuda_view(dx), xv, kvf_cuda_view(dy), n);
    KVF_LAUNCH("unary_backward", "unary_backward op %d on %s", (int)op, KVF_CDESC(dx));
    return KVF_OK;
}

kvf_status kvf_cuda_unary_backward(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                                   const kvf_tensor *dy, double alpha) {
    if (dy->dtype != dx->dtype || (x && x->dtype != dx->dtype))
        return kvf_error_set(KVF_ERR_DTYPE, "unary_backward: dx %s, dy %s must share a dtype",
                             KVF_CDESC(dx), KVF_CDESC(dy));
    if (!x && op != KVF_UNOP_SCALE)
        return kvf_error_set(KVF_ERR_ARG, "unary_backward: op %d needs x", (int)op);
    KVF_CUDA_DISPATCH("unary_backward", dx->dtype, unary_bw_t, op, dx, x, dy, alpha);
}

/* ---- reduce_sum ------------------------------------------------------------------------------ */
/* out (+)= Σ x over the dims where out has extent 1 and x does not. Output element e (flat
 * over out's shape) starts at x offset Σ idx_d·xs_d over kept dims; reduced element r (flat
 * over ext) adds Σ ridx_d·xs_d over reduced dims. Two layouts:
 *  - rows: the innermost dim is reduced and dense in x: one block per (output, chunk of r),
 *    threads stride over r (coalesced), a block tree sum;
 *  - cols: otherwise: a thread per output (consecutive outputs are usually adjacent in
 *    memory), 8 threads × chunks over r, combined in a fixed order.
 * With more than one chunk, partial sums go to scratch and a second kernel adds them in
 * chunk order. Chunk counts depend only on the shapes, so the result is reproducible. */

struct red_plan {
    kvf_view4 o, x;
    int64_t ext[4];
    int64_t n_out, R;
};

__device__ __forceinline__ int64_t red_xoff_out(const red_plan &p, int64_t e) {
    return kvf_offset4(e, p.o.shape, p.x.stride);
}
__device__ __forceinline__ int64_t red_xoff_r(const red_plan &p, int64_t r) {
    return kvf_offset4(r, p.ext, p.x.stride);
}

template <class T>
__global__ void k_reduce_rows(red_plan p, int64_t chunk_len, int nchunk, float *partial,
                              bool accumulate) {
    __shared__ float sh[33];
    const int64_t e = blockIdx.x;
    const int c = blockIdx.y;
    const int64_t r0 = c * chunk_len, r1 = r0 + chunk_len < p.R ? r0 + chunk_len : p.R;
    const T *base = (const T *)p.x.base + red_xoff_out(p, e);
    float acc = 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) acc += kvf_ld(base + red_xoff_r(p, r));
    acc = kvf_block_sum(acc, sh);
    if (threadIdx.x == 0) {
        if (nchunk == 1) {
            T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
            kvf_st(po, accumulate ? kvf_ld(po) + acc : acc);
        } else {
            partial[e * nchunk + c] = acc;
        }
    }
}

template <class T>
__global__ void k_reduce_cols(red_plan p, int64_t chunk_len, int nchunk, float *partial,
                              bool accumulate) {
    __shared__ float sh[8][33];
    const int64_t e = blockIdx.x * 32 + threadIdx.x;
    const int c = blockIdx.y;
    float acc = 0.0f;
    if (e < p.n_out) {
        const int64_t r0 = c * chunk_len, r1 = r0 + chunk_len < p.R ? r0 + chunk_len : p.R;
        const T *base = (const T *)p.x.base + red_xoff_out(p, e);
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += kvf_ld(base + red_xoff_r(p, r));
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && e < p.n_out) {
        float s = sh[0][threadIdx.x];
        for (int t = 1; t < 8; t++) s += sh[t][threadIdx.x];
        if (nchunk == 1) {
            T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
            kvf_st(po, accumulate ? kvf_ld(po) + s : s);
        } else {
            partial[(int64_t)c * p.n_out + e] = s;
        }
    }
}

/* out[e] (+)= Σ_c partial[e·es + c·cs], c in order. */
template <class T>
__global__ void k_reduce_finish(red_plan p, const float *partial, int nchunk, int64_t es,
                                int64_t cs, bool accumulate) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < p.n_out;
         e += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int c = 0; c < nchunk; c++) s += partial[e * es + c * cs];
        T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
        kvf_st(po, accumulate ? kvf_ld(po) + s : s);
    }
}

template <class T>
static kvf_status reduce_t(kvf_tensor *out, const kvf_tensor *x, bool accumulate) {
    red_plan p;
    p.o = kvf_cuda_view(out);
    p.x = kvf_cuda_view(x);
    p.n_out = 1;
    p.R = 1;
    for (int d = 0; d < 4; d++) {
        if (p.o.shape[d] != 1 && p.o.shape[d] != p.x.shape[d])
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s into %s", KVF_CDESC(x),
                                 KVF_CDESC(out));
        p.ext[d] = p.o.shape[d] == 1 ? p.x.shape[d] : 1;
        p.n_out *= p.o.shape[d];
        p.R *= p.ext[d];
    }
    if (p.n_out == 0) return KVF_OK;
    if (p.R == 0) { /* an empty sum: 0, or out unchanged */
        if (accumulate) return KVF_OK;
        k_reduce_finish<T><<<kvf_cuda_blocks(p.n_out, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            p, NULL, 0, 0, 0, false);
        KVF_LAUNCH("reduce_finish", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
        return KVF_OK;
    }
    const bool rows = p.ext[3] > 1 && p.x.stride[3] == 1 && p.ext[3] >= 32;
    int64_t chunk_len, nchunk;
    if (rows) {
        /* a chunk of at least 8192 elements per block; at most 1024 chunks */
        nchunk = (p.R + 8191) / 8192;
        if (p.n_out >= 1024) nchunk = 1;
        if (nchunk > 1024) nchunk = 1024;
    } else {
        int64_t bx = (p.n_out + 31) / 32;
        nchunk = (2048 + bx - 1) / bx;            /* enough blocks to fill the GPU */
        int64_t maxc = (p.R + 63) / 64;           /* but at least 64 elements per chunk */
        if (nchunk > maxc) nchunk = maxc;
        if (nchunk > 65535) nchunk = 65535;
        if (nchunk < 1) nchunk = 1;
    }
    chunk_len = (p.R + nchunk - 1) / nchunk;
    nchunk = (p.R + chunk_len - 1) / chunk_len;
    float *partial = NULL;
    if (nchunk > 1) {
        partial = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)(nchunk * p.n_out), "reduce_sum");
        if (!partial) return kvf_error_code();
    }
    if (rows) {
        int threads = kvf_row_threads(chunk_len);
        if (p.n_out > 0x7fffffff)
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s: too many outputs", KVF_CDESC(out));
        k_reduce_rows<T><<<dim3((unsigned)p.n_out, (unsigned)nchunk), threads, 0, KVF_STREAM>>>(
            p, chunk_len, (int)nchunk, partial, accumulate);
    } else {
        int64_t bx = (p.n_out + 31) / 32;
        if (bx > 0x7fffffff)
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s: too many outputs", KVF_CDESC(out));
        k_reduce_cols<T><<<dim3((unsigned)bx, (unsigned)nchunk), dim3(32, 8), 0, KVF_STREAM>>>(
            p, chunk_len, (int)nchunk, partial, accumulate);
    }
    KVF_LAUNCH("reduce_sum", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
    if (nchunk > 1) {
        int64_t es = rows ? nchunk : 1, cs = rows ? 1 : p.n_out;
        k_reduce_finish<T><<<kvf_cuda_blocks(p.n_out, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            p, partial, (int)nchunk, es, cs, accumulate);
        KVF_LAUNCH("reduce_finish", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
    }
    return KVF_OK;
}

kvf_status kvf_cuda_reduce_sum(kvf_tensor *out, const kvf_tensor *x, bool accumulate) {
    if (x->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "reduce_sum: x %s and out %s must share a dtype",
                             KVF_CDESC(x), KVF_CDESC(out));
    if (x->ndim != out->ndim)
        return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: x %s and out %s differ in rank",
                             KVF_CDESC(x), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("reduce_sum", out->dtype, reduce_t, out, x, accumulate);
}

/* ---- SwiGLU ---------------------------------------------------------------------------------- */

template <class T>
__global__ void k_swiglu(T *o, const T *g, const T *u, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld(g + e);
        kvf_st(o + e, x * sigmoidf_(x) * kvf_ld(u + e));
    }
}

template <class T>
__global__ void k_swiglu_bw(T *dg, T *du, const T *g, const T *u, const T *d, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld(g + e), s = sigmoidf_(x), dy = kvf_ld(d + e);
        if (dg) kvf_st(dg + e, kvf_ld(dg + e) + dy * kvf_ld(u + e) * s * (1.0f + x * (1.0f - s)));
        if (du) kvf_st(du + e, kvf_ld(du + e) + dy * x * s);
    }
}

template <class T>
static kvf_status swiglu_t(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    k_swiglu<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(out), (const T *)kvf_tensor_data(gate),
        (const T *)kvf_tensor_data(up), n);
    KVF_LAUNCH("swiglu", "swiglu %s", KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_swiglu(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up) {
    if (gate->dtype != out->dtype || up->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "swiglu: gate %s, up %s, out %s must share a dtype",
                             KVF_CDESC(gate), KVF_CDESC(up), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("swiglu", out->dtype, swiglu_t, out, gate, up);
}

template <class T>
static kvf_status swiglu_bw_t(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                              const kvf_tensor *up, const kvf_tensor *dout) {
    int64_t n = kvf_tensor_numel(dout);
    if (n == 0 || (!dgate && !dup)) return KVF_OK;
    k_swiglu_bw<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        dgate ? (T *)kvf_tensor_data(dgate) : NULL, dup ? (T *)kvf_tensor_data(dup) : NULL,
        (const T *)kvf_tensor_data(gate), (const T *)kvf_tensor_data(up),
        (const T *)kvf_tensor_data(dout), n);
    KVF_LAUNCH("swiglu_backward", "swiglu_backward %s", KVF_CDESC(dout));
    return KVF_OK;
}

kvf_status kvf_cuda_swiglu_backward(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                                    const kvf_tensor *up, const kvf_tensor *dout) {
    KVF_CUDA_DISPATCH("swiglu_backward", dout->dtype, swiglu_bw_t, dgate, dup, gate, up, dout);
}

/* ---- c = beta·c (gemm with k = 0) ----------------------------------------------------------- */

template <class T>
__global__ void k_scale_rows(T *c, int64_t rows, int64_t cols, int64_t ld, double beta) {
    int64_t n = rows * cols;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        T *p = c + (e / cols) * ld + e % cols;
        kvf_st(p, beta == 0.0 ? 0.0f : (float)(beta * (double)kvf_ld(p)));
    }
}

template <class T>
static kvf_status scale_t(void *c, int64_t rows, int64_t cols, int64_t ld, double beta) {
    if (rows * cols == 0) return KVF_OK;
    k_scale_rows<T><<<kvf_cuda_blocks(rows * cols, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        (T *)c, rows, cols, ld, beta);
    KVF_LAUNCH("scale_rows", "gemm with k = 0: scaling %lldx%lld by beta", (long long)rows,
               (long long)cols);
    return KVF_OK;
}

kvf_status kvf_cuda_scale_inplace(void *c, int64_t rows, int64_t cols, int64_t ld, double beta,
                                  kvf_dtype dt) {
    KVF_CUDA_DISPATCH("gemm", dt, scale_t, c, rows, cols, ld, beta);
}
